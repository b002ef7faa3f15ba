"""The orchestrator's events (`create`, `delete`, `cleanup`, `list`), for the CLI and for a
serverless runtime (`lambda_handler`): each answers a JSON-able dict, `{"error", "detail"}` on failure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.config import ConfigException
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.agents.registry import AgentRegistry, load_agents
from common.platform.keys import queue_name
from common.platform.settings import Settings, get_settings
from orchestrator import objects
from orchestrator.config import OrchestratorSettings
from orchestrator.kube import Kube, KubeError, connect

ACTIONS = ("create", "delete", "cleanup", "list")
KINDS = ("Deployment", "ScaledObject", "Service")


class EventError(Exception):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


def _now() -> datetime:
    return datetime.now(UTC)


def _features(agents: AgentRegistry) -> dict[str, list[str]]:
    """Feature id -> the agents it serves, from agents.yaml."""
    out: dict[str, list[str]] = {}
    for agent in agents.agents:
        out.setdefault(agent.feature, []).append(agent.id)
    return out


class Orchestrator:
    """One event's worth of work against one namespace and the queue Redis."""

    def __init__(self, kube: Kube, redis: Redis, cfg: OrchestratorSettings, agents: AgentRegistry) -> None:
        self.kube, self.redis, self.cfg = kube, redis, cfg
        self.features = _features(agents)

    def _check(self, feature: str | None) -> str:
        if not feature or not objects.FEATURE_ID.match(feature):
            raise EventError("invalid_event", "feature_id must be a DNS label: a-z, 0-9 and '-', at most 40")
        return feature

    async def queue_depth(self, feature: str) -> int:
        """Jobs queued, deferred or running on the feature's ARQ queue (its sorted set)."""
        try:
            return int(await self.redis.zcard(queue_name(feature)))
        except RedisError as exc:
            raise EventError("redis_unavailable", f"cannot read {queue_name(feature)}: {type(exc).__name__}") from None

    async def create(self, feature: str | None) -> dict[str, Any]:
        """Make or update the feature's Deployment, then its ScaledObject and Service; re-runs converge."""
        feature = self._check(feature)
        if feature not in self.features:
            raise EventError("unknown_feature", f"no agent in agents.yaml serves feature {feature!r}")
        ns = self.kube.namespace
        wanted = [
            objects.deployment(feature, self.cfg, ns, _now().isoformat()),
            objects.scaled_object(feature, self.cfg, ns),
            objects.service(feature, ns),
        ]
        done = [{"kind": o["kind"], "name": o["metadata"]["name"], "result": await self.kube.apply(o)} for o in wanted]
        return {"action": "create", "feature_id": feature, "agents": self.features[feature], "objects": done}

    async def delete(self, feature: str | None) -> dict[str, Any]:
        """Remove the ScaledObject first (so KEDA stops scaling), then the Deployment and Service."""
        feature = self._check(feature)
        names = {
            "Deployment": objects.deployment_name(feature),
            "ScaledObject": objects.deployment_name(feature),
            "Service": objects.service_name(feature),
        }
        done = [
            {"kind": k, "name": names[k], "result": await self.kube.delete(k, names[k])}
            for k in ("ScaledObject", "Deployment", "Service")
        ]
        return {"action": "delete", "feature_id": feature, "objects": done}

    async def _managed(self) -> list[dict[str, Any]]:
        selector = f"app=relaygate-worker,{objects.MANAGED_BY}=orchestrator"
        found = await self.kube.deployments(selector)
        return [
            d
            for d in found
            if d["metadata"].get("labels", {}).get(objects.MANAGED_BY) == "orchestrator"
            and d["metadata"].get("labels", {}).get("app") == "relaygate-worker"
        ]

    async def list(self) -> dict[str, Any]:
        """Each feature the orchestrator runs: replicas, ready replicas, queue depth, last activity."""
        features = []
        for d in await self._managed():
            feature = d["metadata"]["labels"]["feature"]
            status = d.get("status") or {}
            features.append(
                {
                    "feature_id": feature,
                    "agents": self.features.get(feature, []),
                    "replicas": (d.get("spec") or {}).get("replicas", 0),
                    "ready_replicas": status.get("readyReplicas", 0),
                    "queue_depth": await self.queue_depth(feature),
                    "last_active": (d["metadata"].get("annotations") or {}).get(objects.LAST_ACTIVE),
                }
            )
        return {"action": "list", "features": sorted(features, key=lambda f: f["feature_id"])}

    async def cleanup(self, idle_seconds: int | None = None) -> dict[str, Any]:
        """Delete features with nothing queued or running and no activity for `idle_seconds`.

        A feature with jobs has its last-active mark refreshed, so idleness counts from the
        last cleanup (or create) that saw work.
        """
        idle = self.cfg.idle_seconds if idle_seconds is None else idle_seconds
        now = _now()
        removed, kept = [], []
        for d in await self._managed():
            feature, name = d["metadata"]["labels"]["feature"], d["metadata"]["name"]
            depth = await self.queue_depth(feature)
            if depth:
                await self.kube.annotate(name, {objects.LAST_ACTIVE: now.isoformat()})
                kept.append({"feature_id": feature, "reason": f"{depth} jobs queued or running"})
                continue
            mark = (d["metadata"].get("annotations") or {}).get(objects.LAST_ACTIVE)
            last = datetime.fromisoformat(mark) if mark else now
            idle_for = (now - last).total_seconds()
            if mark is None or idle_for < idle:
                if mark is None:
                    await self.kube.annotate(name, {objects.LAST_ACTIVE: now.isoformat()})
                kept.append({"feature_id": feature, "reason": f"active {int(idle_for)}s ago"})
                continue
            await self.delete(feature)
            removed.append(feature)
        return {"action": "cleanup", "idle_seconds": idle, "removed": removed, "kept": kept}


async def handle(
    event: dict[str, Any],
    *,
    kube_host: str | None = None,
    settings: Settings | None = None,
    cfg: OrchestratorSettings | None = None,
) -> dict[str, Any]:
    """Run one event: `{"action": "create"|"delete"|"cleanup"|"list", "feature_id": ..., "idle_seconds": ...}`."""
    settings = settings or get_settings()
    cfg = cfg or OrchestratorSettings()
    action = event.get("action") or event.get("event")
    if action not in ACTIONS:
        return {"error": "invalid_event", "detail": f"action must be one of {', '.join(ACTIONS)}"}
    feature = event.get("feature_id")
    if action in ("create", "delete") and not (isinstance(feature, str) and objects.FEATURE_ID.match(feature)):
        return {"error": "invalid_event", "detail": "feature_id must be a DNS label: a-z, 0-9 and '-', at most 40"}
    if not settings.queue_redis_url:
        return {"error": "not_configured", "detail": "REDIS_URL (the queue Redis) must be set"}
    try:
        api = await connect(kube_host)
    except ConfigException as exc:
        return {"error": "not_configured", "detail": f"no Kubernetes credentials: {exc}"}
    redis = Redis.from_url(settings.queue_redis_url)
    try:
        orch = Orchestrator(Kube(api, cfg.resolved_namespace()), redis, cfg, load_agents(settings.agents_file))
        if action == "create":
            return await orch.create(feature)
        if action == "delete":
            return await orch.delete(feature)
        if action == "cleanup":
            return await orch.cleanup(event.get("idle_seconds"))
        return await orch.list()
    except EventError as exc:
        return {"error": exc.error, "detail": exc.detail}
    except KubeError as exc:
        return {"error": "kubernetes_error", "detail": str(exc)}
    finally:
        await redis.aclose()
        await api.close()


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Entry point for a serverless runtime (AWS Lambda style: event dict in, dict out)."""
    return asyncio.run(handle(event))
