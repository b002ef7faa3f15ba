"""Agents' tool configuration, provider-safe tool names, the result cap, the offline model's `/tool` lines
and the CLI's line per tool step."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.agents.registry import AgentTools, ToolServer, load_agents
from workers.mcp_client import capped
from workers.offline_model import quote_results, requested_tools
from workers.tool_names import provider_name, provider_names


def test_tools_config_parses_and_defaults() -> None:
    tools = AgentTools.model_validate(
        {
            "servers": [
                {"name": "clock", "url": "http://127.0.0.1:9100/mcp"},
                {"name": "tickets", "command": ["python", "-m", "tickets_server"]},
            ],
            "allow": ["clock.now", "tickets.create"],
            "approval": ["tickets.create"],
            "idempotent": ["clock.now"],
        }
    )
    assert [s.name for s in tools.servers] == ["clock", "tickets"]
    assert tools.allows("clock.now") and not tools.allows("tickets.close")
    assert AgentTools.model_validate({"servers": [{"name": "a", "url": "http://x/mcp"}]}).allows("a.anything")
    demo = load_agents().get("tools-demo")
    assert demo is not None and demo.tools is not None and demo.max_steps == 8
    assert load_agents().get("assistant").max_steps == 8  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "config",
    [
        {"servers": [{"name": "a"}]},  # neither url nor command
        {"servers": [{"name": "a", "url": "http://x/mcp", "command": ["x"]}]},  # both
        {"servers": [{"name": "a.b", "url": "http://x/mcp"}]},  # a dot in a server name
        {"servers": [{"name": "a", "url": "http://x/mcp"}, {"name": "a", "command": ["x"]}]},
        {"servers": [{"name": "a", "url": "http://x/mcp"}], "allow": ["b.tool"]},  # unknown server
        {"servers": [{"name": "a", "url": "http://x/mcp"}], "approval": ["tool"]},  # not server.tool
        {"servers": []},
    ],
)
def test_bad_tools_config_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AgentTools.model_validate(config)


def test_headers_expand_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ToolServer(name="s", url="http://x/mcp", headers={"Authorization": "Bearer ${RG_T_KEY}", "X": "plain"})
    monkeypatch.setenv("RG_T_KEY", "k123")
    assert server.resolved_headers() == {"Authorization": "Bearer k123", "X": "plain"}
    monkeypatch.delenv("RG_T_KEY")
    with pytest.raises(KeyError, match="RG_T_KEY"):
        server.resolved_headers()


def test_provider_names_are_safe_and_reversible() -> None:
    assert provider_name("clock.now") == "clock__now"
    assert provider_name("a.b.c d") == "a__b_c_d"
    mapping = provider_names(["s.x.y", "s.x_y", "s." + "n" * 80])
    assert all(len(n) <= 64 and n.replace("_", "").replace("-", "").isalnum() for n in mapping)
    assert sorted(mapping.values()) == sorted(["s.x.y", "s.x_y", "s." + "n" * 80])


def test_results_are_capped_with_a_marker() -> None:
    assert capped("short", 10) == "short"
    assert capped("y" * 25, 10) == "y" * 10 + "\n[truncated: 15 more characters]"


def test_offline_model_reads_tool_lines_and_quotes_results() -> None:
    prompt = 'please\n/tool demo.calculate {"expression": "1+1"}\n/tool demo.now\n/tool other.x {}'
    assert requested_tools(prompt, {"demo__calculate", "demo__now"}) == [
        ("demo__calculate", '{"expression": "1+1"}'),
        ("demo__now", "{}"),
    ]
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "demo__calculate"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ]
    assert "".join(quote_results(prompt, messages)) == "[offline model] demo.calculate returned: 2"


def test_cli_prints_a_compact_line_per_step() -> None:
    from cli.main import _tool_line

    assert _tool_line("tool.call", {"tool": "demo.calculate", "arguments": {"expression": "6*7"}}) == (
        '[tool demo.calculate {"expression":"6*7"}]'
    )
    assert _tool_line("tool.result", {"tool": "demo.calculate", "ok": True, "output": "42"}) == (
        "[tool demo.calculate -> 42]"
    )
    assert _tool_line("tool.result", {"tool": "t.x", "ok": False, "error": "down", "replayed": True}) == (
        "[tool t.x failed: down] (replayed)"
    )
    assert len(_tool_line("tool.result", {"tool": "t.big", "ok": True, "output": "y" * 5000})) == 200
    assert _tool_line("tool.approval_required", {"tool": "t.close", "call_id": "c1"}) == (
        "[tool t.close waits for approval of call c1]"
    )


def test_cli_approval_answers() -> None:
    from cli.approvals import parse, question

    assert question({"tool": "t.close", "arguments": {"id": 4}}) == 'approve t.close {"id":4}? [y/N/reason]'
    assert parse("y") == parse(" YES ") == (True, "")
    assert parse("") == parse("n") == parse("No") == (False, "")
    assert parse(" wrong ticket ") == (False, "wrong ticket")
