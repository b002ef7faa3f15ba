"""The Kubernetes objects of one feature's workers: Deployment, Service and KEDA ScaledObject."""

from __future__ import annotations

import re
from typing import Any

from common.platform.keys import queue_name
from orchestrator.config import OrchestratorSettings

MANAGED_BY = "relaygate.io/managed-by"
LAST_ACTIVE = "relaygate.io/last-active"
FEATURE_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
WORKER_LABELS = {"app": "relaygate-worker"}


def deployment_name(feature: str) -> str:
    return f"relaygate-worker-{feature}"


def service_name(feature: str) -> str:
    return f"feature-{feature}-service"


def labels(feature: str) -> dict[str, str]:
    return {**WORKER_LABELS, "feature": feature}


def _metadata(name: str, feature: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**labels(feature), MANAGED_BY: "orchestrator"}}


def deployment(feature: str, cfg: OrchestratorSettings, namespace: str, last_active: str) -> dict[str, Any]:
    """Workers consuming `rg:queue:<feature>`, locked down like k8s/base's default workers."""
    meta = _metadata(deployment_name(feature), feature, namespace)
    meta["annotations"] = {LAST_ACTIVE: last_active}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": cfg.min_replicas,
            "selector": {"matchLabels": labels(feature)},
            "template": {
                "metadata": {"labels": labels(feature)},
                "spec": {
                    "terminationGracePeriodSeconds": 60,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "worker",
                            "image": cfg.worker_image,
                            "command": ["relaygate", "worker", "--feature", feature],
                            "env": [{"name": "FEATURE", "value": feature}],
                            "envFrom": [
                                {"configMapRef": {"name": cfg.config_map}},
                                {"secretRef": {"name": cfg.secret}},
                            ],
                            "ports": [{"name": "metrics", "containerPort": 9100}],
                            "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10},
                            "livenessProbe": {
                                "httpGet": {"path": "/metrics", "port": "metrics"},
                                "initialDelaySeconds": 15,
                                "periodSeconds": 15,
                                "failureThreshold": 3,
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "384Mi"},
                                "limits": {"cpu": "1", "memory": "1Gi"},
                            },
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(feature: str, namespace: str) -> dict[str, Any]:
    """`feature-<id>-service`: the feature's workers by name (their metrics port)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service_name(feature), feature, namespace),
        "spec": {"selector": labels(feature), "ports": [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]},
    }


def scaled_object(feature: str, cfg: OrchestratorSettings, namespace: str) -> dict[str, Any]:
    """KEDA scaling on the feature queue's ZCARD (waiting + running jobs), CPU and memory."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(deployment_name(feature), feature, namespace),
        "spec": {
            "scaleTargetRef": {"name": deployment_name(feature)},
            "minReplicaCount": cfg.min_replicas,
            "maxReplicaCount": cfg.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": cfg.cooldown_seconds,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": cfg.cooldown_seconds}}
                }
            },
            "triggers": [
                {
                    "type": "redis",
                    "metadata": {
                        "addressFromEnv": cfg.redis_address_env,
                        "listName": queue_name(feature),
                        "listLength": str(cfg.jobs_per_replica),
                        "activationListLength": "0",
                    },
                },
                {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}},
                {"type": "memory", "metricType": "Utilization", "metadata": {"value": "80"}},
            ],
        },
    }
