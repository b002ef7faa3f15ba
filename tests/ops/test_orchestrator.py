"""The orchestrator against kmock's KubernetesEmulator (a real HTTP Kubernetes API, driven by
kubernetes_asyncio) and the real embedded Valkey for queue depth."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kmock
import kubernetes_validate
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from cli.main import main as cli_main
from common.platform.keys import queue_name
from common.platform.settings import Settings
from orchestrator import objects
from orchestrator.config import OrchestratorSettings
from orchestrator.handler import handle
from tests.conftest import Infra
from tests.ops.manifests import KUBERNETES_VERSION, scaledobject_schema

NS = "relaygate"
RESOURCES = {
    "apps/v1/deployments": "Deployment",
    "v1/services": "Service",
    "keda.sh/v1alpha1/scaledobjects": "ScaledObject",
}
AGENTS = """
agents:
  - {id: assistant, feature: default, default: true}
  - {id: billing-bot, feature: billing}
  - {id: invoices, feature: billing}
  - {id: searcher, feature: search}
"""


@pytest.fixture
async def k8s(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    for resource, kind in RESOURCES.items():
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=True, verbs={"get", "list", "create", "patch", "delete"}
        )
    return kmock


@pytest.fixture
def settings(infra: Infra, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS)
    return Settings(redis_url=infra.redis_url, agents_file=agents)


@pytest.fixture
async def redis(redis: Redis) -> AsyncIterator[Redis]:
    """The suite's client, with this module's queues emptied before and after."""
    await redis.delete(queue_name("billing"), queue_name("search"))
    yield redis
    await redis.delete(queue_name("billing"), queue_name("search"))


CFG = OrchestratorSettings(namespace=NS, worker_image="registry.example.com/relaygate-worker:1.0", idle_seconds=600)


async def run(
    k8s: kmock.KubernetesEmulator, settings: Settings, cfg: OrchestratorSettings = CFG, **event: Any
) -> dict[str, Any]:
    return await handle(event, kube_host=str(k8s.url).rstrip("/"), settings=settings, cfg=cfg)


async def fetch(k8s: kmock.KubernetesEmulator, path: str) -> dict[str, Any] | None:
    async with aiohttp.ClientSession() as session, session.get(f"{str(k8s.url).rstrip('/')}{path}") as resp:
        if resp.status == 404:
            return None
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def scale(k8s: kmock.KubernetesEmulator, feature: str, replicas: int) -> None:
    """What KEDA's HPA does to a feature's Deployment."""
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"{str(k8s.url).rstrip('/')}{paths(feature)['Deployment']}",
            json={"spec": {"replicas": replicas}},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


def paths(feature: str) -> dict[str, str]:
    name = objects.deployment_name(feature)
    return {
        "Deployment": f"/apis/apps/v1/namespaces/{NS}/deployments/{name}",
        "ScaledObject": f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/{name}",
        "Service": f"/api/v1/namespaces/{NS}/services/{objects.service_name(feature)}",
    }


async def test_create_makes_the_three_objects_and_reruns_converge(k8s: Any, settings: Settings, redis: Redis) -> None:
    first = await run(k8s, settings, action="create", feature_id="billing")
    assert first["agents"] == ["billing-bot", "invoices"]
    assert [(o["kind"], o["result"]) for o in first["objects"]] == [
        ("Deployment", "created"),
        ("ScaledObject", "created"),
        ("Service", "created"),
    ]

    found = {kind: await fetch(k8s, path) for kind, path in paths("billing").items()}
    deployment, scaled, service = found["Deployment"], found["ScaledObject"], found["Service"]
    assert deployment and scaled and service
    assert deployment["metadata"]["labels"]["app"] == "relaygate-worker"
    assert deployment["metadata"]["labels"]["feature"] == "billing"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["relaygate", "worker", "--feature", "billing"]
    assert container["image"] == CFG.worker_image
    assert service["metadata"]["name"] == "feature-billing-service"
    redis_trigger = next(t for t in scaled["spec"]["triggers"] if t["type"] == "redis")
    assert redis_trigger["metadata"]["listName"] == "rg:queue:billing"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 5)

    await scale(k8s, "billing", 4)
    newer = OrchestratorSettings(**{**CFG.model_dump(), "worker_image": "registry.example.com/relaygate-worker:1.1"})
    again = await run(k8s, settings, newer, action="create", feature_id="billing")
    assert [o["result"] for o in again["objects"]] == ["updated", "updated", "updated"]
    deployment = await fetch(k8s, paths("billing")["Deployment"])
    assert deployment and deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.1")
    assert deployment["spec"]["replicas"] == 4, "a re-run must not undo the autoscaler's replicas"
    posts, patches = list(k8s["post"]), list(k8s["patch"])
    assert (len(posts), len(patches)) == (6, 4)
    assert all(r.headers["Content-Type"].startswith("application/merge-patch+json") for r in patches)


async def test_created_objects_are_valid_kubernetes_and_keda() -> None:
    for feature in ("billing", "a-b-3"):
        kubernetes_validate.validate(
            objects.deployment(feature, CFG, NS, "2026-01-01T00:00:00+00:00"), KUBERNETES_VERSION, strict=True
        )
        kubernetes_validate.validate(objects.service(feature, NS), KUBERNETES_VERSION, strict=True)
        jsonschema.validate(objects.scaled_object(feature, CFG, NS), scaledobject_schema())


async def test_delete_removes_them_and_is_idempotent(k8s: Any, settings: Settings, redis: Redis) -> None:
    await run(k8s, settings, action="create", feature_id="billing")
    await run(k8s, settings, action="create", feature_id="search")
    gone = await run(k8s, settings, action="delete", feature_id="billing")
    assert [(o["kind"], o["result"]) for o in gone["objects"]] == [
        ("ScaledObject", "deleted"),
        ("Deployment", "deleted"),
        ("Service", "deleted"),
    ]
    for path in paths("billing").values():
        assert await fetch(k8s, path) is None
    for path in paths("search").values():
        assert await fetch(k8s, path) is not None
    again = await run(k8s, settings, action="delete", feature_id="billing")
    assert [o["result"] for o in again["objects"]] == ["absent", "absent", "absent"]


async def test_a_create_that_fails_half_way_is_completed_by_a_retry(k8s: Any, settings: Settings, redis: Redis) -> None:
    failures: list[object] = []

    def fail_first_scaledobject(request: Any) -> None:
        if not failures:
            failures.append(request)
            raise RuntimeError("the API server fell over")

    k8s["post", kmock.resource("keda.sh/v1alpha1/scaledobjects")] << fail_first_scaledobject
    broken = await run(k8s, settings, action="create", feature_id="billing")
    assert broken["error"] == "kubernetes_error" and "ScaledObject" in broken["detail"]
    assert failures
    assert await fetch(k8s, paths("billing")["Deployment"]) is not None
    assert await fetch(k8s, paths("billing")["Service"]) is None

    retried = await run(k8s, settings, action="create", feature_id="billing")
    assert "error" not in retried
    for path in paths("billing").values():
        assert await fetch(k8s, path) is not None
    listed = await run(k8s, settings, action="list")
    assert [f["feature_id"] for f in listed["features"]] == ["billing"]


async def test_list_reports_replicas_and_queue_depth(k8s: Any, settings: Settings, redis: Redis) -> None:
    await run(k8s, settings, action="create", feature_id="billing")
    await run(k8s, settings, action="create", feature_id="search")
    await redis.zadd(queue_name("search"), {"job-1": 1, "job-2": 2, "job-3": 3})
    listed = await run(k8s, settings, action="list")
    by_id = {f["feature_id"]: f for f in listed["features"]}
    assert set(by_id) == {"billing", "search"}
    assert (by_id["search"]["queue_depth"], by_id["billing"]["queue_depth"]) == (3, 0)
    assert by_id["search"]["replicas"] == 1 and by_id["search"]["agents"] == ["searcher"]


async def test_cleanup_removes_idle_features_and_spares_one_with_queued_work(
    k8s: Any, settings: Settings, redis: Redis
) -> None:
    await run(k8s, settings, action="create", feature_id="billing")
    await run(k8s, settings, action="create", feature_id="search")
    await redis.zadd(queue_name("search"), {"job-1": 1})

    fresh = await run(k8s, settings, action="cleanup")
    assert fresh["removed"] == []

    swept = await run(k8s, settings, action="cleanup", idle_seconds=0)
    assert swept["removed"] == ["billing"]
    assert swept["kept"] == [{"feature_id": "search", "reason": "1 jobs queued or running"}]
    for path in paths("billing").values():
        assert await fetch(k8s, path) is None
    for path in paths("search").values():
        assert await fetch(k8s, path) is not None


async def test_bad_events_answer_a_clear_error(k8s: Any, settings: Settings, redis: Redis) -> None:
    assert (await run(k8s, settings, action="explode"))["error"] == "invalid_event"
    assert (await run(k8s, settings, action="create"))["error"] == "invalid_event"
    assert (await run(k8s, settings, action="create", feature_id="Billing_1"))["error"] == "invalid_event"
    unknown = await run(k8s, settings, action="create", feature_id="nobody")
    assert unknown["error"] == "unknown_feature"
    assert not list(k8s["post"])


def test_cli_runs_the_handler(infra: Infra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", infra.redis_url)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    from common.platform.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_main, ["orchestrator", "delete", "Not_A_Label"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert json.loads(result.output)["error"] == "invalid_event"
    result = CliRunner().invoke(cli_main, ["orchestrator", "list"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"] == "not_configured"
