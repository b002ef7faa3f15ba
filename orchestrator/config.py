"""The orchestrator's settings (ORCHESTRATOR_* environment variables) beside relaygate's own."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="ignore", case_sensitive=False)

    # Empty: the pod's own namespace in a cluster, else "default".
    namespace: str = ""
    worker_image: str = "relaygate-worker:latest"
    # ConfigMap and Secret the workers read their settings from (k8s/base).
    config_map: str = "relaygate"
    secret: str = "relaygate"  # noqa: S105 (the Secret object's name)
    # A feature with nothing queued or running for this long is removed by `cleanup`.
    idle_seconds: int = 3600
    # KEDA redis trigger listLength: queued + running jobs per replica (ZCARD counts both).
    jobs_per_replica: int = 50
    min_replicas: int = 1
    max_replicas: int = 5
    cooldown_seconds: int = 300
    # Where KEDA finds the queue Redis (host:port), read from the worker container's env.
    redis_address_env: str = "REDIS_ADDRESS"

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        if IN_CLUSTER_NAMESPACE.exists():
            return IN_CLUSTER_NAMESPACE.read_text().strip()
        return "default"
