"""A Slack reply's tool steps: one line per call whatever is replayed, the caps Slack's limits need, buttons."""

from __future__ import annotations

import json

from dispatcher.channels.slack_steps import MAX_DECISIONS, MAX_LINES, Step, apply, blocks, line


def test_replayed_events_update_the_same_step() -> None:
    steps: dict[str, Step] = {}
    call = {"call_id": "c1", "tool": "t.close", "arguments": {"id": 4}}
    assert not apply(steps, "tool.call", call)
    assert apply(steps, "tool.approval_required", call), "an approval request is shown at once"
    assert line(steps["c1"]) == ':raised_hand: `t.close` {"id":4} waits for your approval'
    apply(steps, "tool.call", {**call, "replayed": True})
    apply(steps, "tool.result", {**call, "ok": True, "output": "closed"})
    apply(steps, "tool.call", {**call, "replayed": True})  # a later attempt's replay keeps the result
    assert list(steps) == ["c1"] and line(steps["c1"]) == ':wrench: `t.close` {"id":4} → closed'
    apply(steps, "tool.result", {**call, "ok": False, "error": "<b>&</b>"})
    assert line(steps["c1"]) == ':warning: `t.close` {"id":4} failed: &lt;b&gt;&amp;&lt;/b&gt;'


def test_long_outputs_and_many_steps_fit_slack() -> None:
    steps: dict[str, Step] = {}
    for n in range(MAX_LINES + 5):
        apply(steps, "tool.result", {"call_id": f"c{n}", "tool": "t.big", "ok": True, "output": "y" * 5000})
    out = blocks(steps, "r1", open_=True)
    assert len(out) == MAX_LINES + 1 and out[0]["elements"][0]["text"] == "… 5 earlier tool steps"
    assert all(len(b["elements"][0]["text"]) < 300 for b in out)


def test_buttons_only_while_open_and_capped() -> None:
    steps: dict[str, Step] = {}
    for n in range(MAX_DECISIONS + 3):
        apply(steps, "tool.approval_required", {"call_id": f"c{n}", "tool": "t.close", "arguments": {}})
    actions = [b for b in blocks(steps, "r1", open_=True) if b["type"] == "actions"]
    assert len(actions) == MAX_DECISIONS
    approve, deny = actions[0]["elements"]
    assert (approve["action_id"], deny["action_id"]) == ("rg_approve", "rg_deny")
    assert json.loads(approve["value"]) == {"request_id": "r1", "call_id": "c0"} == json.loads(deny["value"])
    assert not [b for b in blocks(steps, "r1", open_=False) if b["type"] == "actions"]
