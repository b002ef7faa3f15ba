"""`relaygate chat`'s answer to `tool.approval_required`: ask the person, then post their decision."""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

YES = {"y", "yes"}
NO = {"", "n", "no"}


def question(data: dict[str, Any]) -> str:
    """The prompt for one call awaiting approval: the tool and its arguments, compact."""
    arguments = json.dumps(data.get("arguments"), separators=(",", ":"))
    return f"approve {data.get('tool')} {arguments}? [y/N/reason]"


def parse(answer: str) -> tuple[bool, str]:
    """(approve, reason): y or yes approves; Enter, n or no denies; any other text denies with it as the reason."""
    text = answer.strip()
    if text.lower() in YES:
        return True, ""
    return False, "" if text.lower() in NO else text


def ask(url: str, token: str, request_id: str, data: dict[str, Any]) -> None:
    """Prompt on the terminal and post the decision; with no answer (stdin closed) the call keeps waiting."""
    call_id = str(data.get("call_id"))
    path = f"/api/v1/requests/{request_id}/approvals/{call_id}"
    try:
        answer = click.prompt(question(data), default="", show_default=False, prompt_suffix=" ", err=True)
    except click.Abort:
        click.echo(f"\n[no answer: the call waits; decide with POST {path}]", err=True)
        return
    approve, reason = parse(answer)
    try:
        response = httpx.post(
            f"{url}{path}",
            json={"approve": approve, "reason": reason},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        click.echo(f"[could not send the decision: {exc}; the call waits: POST {path}]", err=True)
        return
    if response.status_code != 200:
        click.echo(f"[decision refused: HTTP {response.status_code} {response.text[:200]}]", err=True)
        return
    click.echo(f"[{'approved' if approve else 'denied'}{': ' + reason if reason else ''}]", err=True)
