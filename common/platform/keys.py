"""Every Redis key name relaygate uses, in one place.

Keys that belong to a session (or a flow run) carry the `{b<bucket>}` hash tag of its id,
so on a Redis Cluster every key of one session lives in one slot (DESIGN §2).
"""

from __future__ import annotations

import zlib

PREFIX = "rg:"


def bucket(name: str, buckets: int) -> int:
    """Stable bucket of a session (or run) id; the Redis Cluster hash tag of its keys."""
    return zlib.crc32(name.encode()) % buckets


def _tagged(owner: str, buckets: int) -> str:
    return f"{PREFIX}{bucket_tag(owner, buckets)}:"


def stream_key(session_id: str, buckets: int) -> str:
    """The session's event stream."""
    return f"{_tagged(session_id, buckets)}{session_id}"


def cancel_key(session_id: str, request_id: str, buckets: int) -> str:
    """Set when a request must stop; its worker checks it between token flushes."""
    return f"{_tagged(session_id, buckets)}cancel:{request_id}"


def fence_key(session_id: str, request_id: str, buckets: int) -> str:
    """The request's write fence: its newest attempt number, or `done` once its `done` is written.

    The append scripts check it, so a superseded attempt writes nothing and no request ends twice.
    """
    return f"{_tagged(session_id, buckets)}fence:{request_id}"


def start_key(session_id: str, buckets: int) -> str:
    """The compat `/stream` route's claim on starting a chat's generation."""
    return f"{_tagged(session_id, buckets)}start:{session_id}"


def run_stream_key(run_id: str, buckets: int) -> str:
    """A flow run's event stream: tagged like a session's, so the hub and resume treat it alike."""
    return f"{_tagged(run_id, buckets)}run:{run_id}"


def run_cancel_key(run_id: str, buckets: int) -> str:
    """Set when a flow run must stop; its executor checks it between steps."""
    return f"{_tagged(run_id, buckets)}run-cancel:{run_id}"


def run_cache_key(run_id: str, buckets: int) -> str:
    """The cached status document of a flow run (`GET /v1/runs/{id}`)."""
    return f"{_tagged(run_id, buckets)}run-status:{run_id}"


def bucket_tag(owner: str, buckets: int) -> str:
    """The `{b<n>}` hash tag of a session's (or run's) keys."""
    return f"{{b{bucket(owner, buckets)}}}"


NOTICE_WINDOW_MS = 10_000  # how long a notice stays on its notice stream (common.streams.hub says why)


def notify_key(tag: str | None) -> str:
    """The notice stream every append also writes the stream keys it touched to, read by the hubs:
    one per bucket on a cluster (`tag` is its `{b<n>}`, so a notice stays in its streams' slot), one
    for all streams on a single server (`tag` None)."""
    return f"{PREFIX}{tag}:notify" if tag else f"{PREFIX}notify"


def hub_wake_key(tag: str | None, process: str) -> str:
    """A hub reader's private wake stream, in the slot of the notice stream it reads (`tag` as there)."""
    return f"{PREFIX}{tag}:wake:{process}" if tag else f"{PREFIX}wake:{process}"


def queue_name(feature: str) -> str:
    """The ARQ queue (a sorted set) of one feature's agent workers."""
    return f"{PREFIX}queue:{feature}"


def _tenant_tagged(tenant_id: str) -> str:
    """Every limit key of one tenant shares a hash tag, so one script checks them all on a cluster."""
    return f"{PREFIX}{{t:{tenant_id}}}:"


def rate_key(tenant_id: str, scope: str, name: str) -> str:
    """A rate limit's GCRA state (theoretical arrival time, ms): scope `user`, `tenant` or `integration`."""
    return f"{_tenant_tagged(tenant_id)}rate:{scope}:{name}"


def running_key(tenant_id: str, user_id: str) -> str:
    """The user's unfinished requests (a sorted set of request ids scored by deadline, ms)."""
    return f"{_tenant_tagged(tenant_id)}running:{user_id}"


def budget_key(tenant_id: str, scope: str, user_id: str, period_id: str) -> str:
    """A budget's usage in one period (a hash: `tokens`, `cost`, and the limits `tl`, `cl` last checked);
    scope `tenant` (user_id '') or `user`, period_id `2026-12-06` or `2026-12`."""
    return f"{_tenant_tagged(tenant_id)}budget:{scope}:{user_id}:{period_id}"


def open_streams_key(tenant_id: str, user_id: str) -> str:
    """The user's open SSE streams (a sorted set of stream ids scored by lease expiry, ms)."""
    return f"{_tenant_tagged(tenant_id)}sse:{user_id}"


def presence_key(holder: int) -> str:
    """A worker process's presence in Redis (common/platform/presence.py): refreshed every heartbeat, it expires
    two heartbeats after the last. One hash tag for all, so a reaper reads any set of them in one MGET."""
    return f"{PREFIX}{{presence}}:{holder}"


def queue_wake_key(queue: str) -> str:
    """A list an enqueue pushes to; idle workers of `queue` block on it instead of polling."""
    return f"{queue}:wake"


def dispatcher_queue() -> str:
    """The dispatcher's ARQ queue (outside the `queue:<feature>` names, so no feature can take it)."""
    return f"{PREFIX}dispatch:queue"


def slack_event_key(team_id: str, event_id: str) -> str:
    """Claimed with SET NX EX by the first delivery of a Slack event; its retries find it taken."""
    return f"{PREFIX}slack:event:{team_id}:{event_id}"


def slack_replay_key(timestamp: str, signature: str) -> str:
    """Claimed with SET NX EX by a signed Slack request until its timestamp leaves the window; a replay finds it."""
    return f"{PREFIX}slack:signed:{timestamp}:{signature}"


def slack_edit_budget_key(team_id: str, window: int) -> str:
    """Per-workspace count of `chat.update` calls in one minute window, shared by every dispatcher."""
    return f"{PREFIX}slack:edits:{team_id}:{window}"


def slack_dm_session_key(team_id: str, user_id: str) -> str:
    """The user's active DM session, continued by a DM outside a thread."""
    return f"{PREFIX}slack:dm:{team_id}:{user_id}"


def slack_thread_session_key(team_id: str, channel_id: str, thread_ts: str, user_id: str) -> str:
    """The session of one Slack user's conversation in a thread (or a channel's top level, thread '')."""
    return f"{PREFIX}slack:thread:{team_id}:{channel_id}:{thread_ts}:{user_id}"


def intake_key(session_id: str, buckets: int) -> str:
    """Requests announced on a stream of this bucket whose row may not be stored yet (a sorted set by time, ms).

    A gateway that dies between the announcement and the insert leaves its entry here; a
    worker's sweep ends such a request's stream. It shares the session's slot on a cluster.
    """
    return f"{_tagged(session_id, buckets)}intake"


def intake_keys(buckets: int) -> list[str]:
    """Every bucket's intake set."""
    return [f"{PREFIX}{{b{n}}}:intake" for n in range(buckets)]
