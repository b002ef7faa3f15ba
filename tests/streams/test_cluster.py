"""Session streams on a Redis Cluster (STREAM_REDIS_CLUSTER=true), the job queue on its own server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from common.platform.keys import stream_key
from tests.conftest import Stack
from tests.support.cluster import EmbeddedValkeyCluster
from tests.support.streams import done_for, offline, read_until, text_of, wait_status
from workers.offline_model import compose_reply


@pytest.fixture
def cluster_stack(new_stack: Stack, valkey_cluster: EmbeddedValkeyCluster) -> Iterator[Stack]:
    streams = {"STREAM_REDIS_URL": valkey_cluster.url, "STREAM_REDIS_CLUSTER": "true"}
    new_stack.start_gateway(**streams)
    # Its own feature queue: the shared stack's workers write streams to the single server.
    new_stack.start_worker("cluster", **streams)
    yield new_stack


def test_replies_stream_resume_and_cancel_on_a_cluster(
    cluster_stack: Stack, valkey_cluster: EmbeddedValkeyCluster
) -> None:
    with cluster_stack.client() as c:
        sessions = []
        for text in ("first on the cluster", "second on the cluster", "third on the cluster"):
            r = c.post(
                "/api/v1/requests/web",
                json={"content": text, "new_session": True, "agent_id": "cluster", "metadata": offline(40, 400)},
            )
            assert r.status_code == 202, r.text
            sessions.append((text, r.json()))
        for text, r in sessions:
            full = read_until(c, r["stream_url"], done_for(r["request_id"]))
            assert [e.event for e in full][-3:] == ["message", "run.completed", "done"]
            assert text_of(full, r["request_id"]) == "".join(compose_reply(text, 40))
            assert wait_status(c, r["request_id"], {"completed"})["response"] == text_of(full, r["request_id"])
            cut = len(full) // 2
            resumed = read_until(c, r["stream_url"], done_for(r["request_id"]), last_event_id=full[cut - 1].id)
            assert [e.id for e in resumed] == [e.id for e in full[cut:]]
        keys = [stream_key(r["session_id"], 256) for _, r in sessions]
        with RedisCluster.from_url(valkey_cluster.url) as cluster, Redis.from_url(cluster_stack.infra.redis_url) as q:
            assert all(cluster.exists(k) for k in keys)
            assert not any(q.exists(k) for k in keys)

        slow = c.post(
            "/api/v1/requests/web",
            json={"content": "cancel me", "new_session": True, "agent_id": "cluster", "metadata": offline(500, 50)},
        ).json()
        wait_status(c, slow["request_id"], {"running"})
        assert c.post(f"/api/v1/requests/{slow['request_id']}/cancel").status_code == 202
        events = read_until(c, slow["stream_url"], done_for(slow["request_id"]))
        assert [e.event for e in events][-2:] == ["run.cancelled", "done"]
    assert "Traceback" not in cluster_stack.logs()
