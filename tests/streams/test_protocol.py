"""The stream protocol, agent routing, the offline model's reply and the SSE parser."""

from __future__ import annotations

import orjson
import pytest

from cli.sse import SseParser
from common.agents.registry import load_agents
from common.platform.keys import bucket, stream_key
from common.streams.protocol import Event, event_json, id_before, parse_id, valid_id
from tests.conftest import ROOT
from workers.offline_model import compose_reply


def test_ids_compare_as_numbers() -> None:
    assert parse_id("1700000000000-10") > parse_id("1700000000000-9")
    assert parse_id(b"1700000000001-0") > parse_id("1700000000000-99")
    assert id_before((5, 0)) < (5, 0) < (5, 1)
    assert id_before((5, 3)) == (5, 2)
    assert valid_id("0-0") and valid_id("12") and not valid_id("x-1") and not valid_id("-1-2")


def test_stream_keys_carry_a_stable_bucket_hash_tag() -> None:
    sid = "8b0f5a4e-9a63-4c5e-9a57-6f6f3d2b1c11"
    assert bucket(sid, 256) == bucket(sid, 256) < 256
    key = stream_key(sid, 256)
    assert key == f"rg:{{b{bucket(sid, 256)}}}:{sid}"


def test_event_fields_round_trip_and_render_without_reparsing_data() -> None:
    event = Event(type="token", request_id="r1", attempt=2, seq=7, data={"text": 'héllo "x"'})
    fields = {k.encode(): v.encode() for k, v in event.fields().items()}
    assert Event.from_fields(fields).model_dump(exclude={"ts"}) == event.model_dump(exclude={"ts"})
    rendered = orjson.loads(event_json(fields))
    assert rendered == {
        "type": "token",
        "request_id": "r1",
        "attempt": 2,
        "seq": 7,
        "ts": pytest.approx(event.ts),
        "data": {"text": 'héllo "x"'},
    }


def test_routing_explicit_then_rules_then_default() -> None:
    agents = load_agents(ROOT / "tests" / "agents.yaml")
    assert agents.route("my LAPTOP broke", "web").id == "it-support"
    assert agents.route("hello", "web").id == "assistant"
    assert agents.route("my laptop", "web", "chaos").id == "chaos"
    with pytest.raises(KeyError):
        agents.route("x", "web", "nobody")
    assert load_agents().default.id == "assistant"


def test_offline_reply_is_deterministic_and_labelled() -> None:
    reply = compose_reply("  what   is this? ", 25)
    assert len(reply) == 25
    assert reply == compose_reply("what is this?", 25)
    text = "".join(reply)
    assert text.startswith("[offline model]") and "offline model" in text and "what is this?" in text
    assert len(compose_reply("hi", 1)) == 1


def test_sse_parser_handles_ids_events_comments_and_multiline_data() -> None:
    parser = SseParser()
    lines = [": keepalive", "", "id: 1-0", "event: token", 'data: {"a":', "data: 1}", "", "data: [DONE]", ""]
    events = [e for line in lines if (e := parser.feed(line))]
    assert [(e.id, e.event, e.data) for e in events] == [("1-0", "token", '{"a":\n1}'), (None, "message", "[DONE]")]
