"""k8s/: every rendered manifest is valid offline and keeps the operational rules."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common.platform.keys import queue_name
from orchestrator import objects
from tests.ops.manifests import (
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    containers,
    egress_allowed,
    is_relaygate_command,
    rendered,
    scaledobject_schema,
)

NAMES = list(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", NAMES)
def test_manifests_validate_against_kubernetes_schemas(name: str) -> None:
    checked = 0
    for obj in rendered(name):
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("name", NAMES)
def test_keda_objects_validate_against_the_vendored_crd(name: str) -> None:
    scaled = [o for o in rendered(name) if o["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        jsonschema.validate(obj, scaledobject_schema())


def test_the_crd_schema_rejects_a_broken_scaledobject() -> None:
    obj = next(o for o in rendered("base") if o["kind"] == "ScaledObject")
    broken = {**obj, "spec": {**obj["spec"], "minReplicaCount": "one"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, scaledobject_schema())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", NAMES)
def test_the_python_renderer_matches_kubectl_kustomize(name: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True, check=True
    ).stdout
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted([o for o in yaml.safe_load_all(out) if o], key=key) == sorted(rendered(name), key=key)


@pytest.mark.parametrize("name", NAMES)
def test_workloads_are_locked_down(name: str) -> None:
    workloads = [o for o in rendered(name) if o["kind"] in {"Deployment", "Job", "CronJob"}]
    assert {o["metadata"]["name"] for o in workloads} >= {
        "relaygate-api",
        "relaygate-worker-default",
        "relaygate-migrate",
    }
    for obj in workloads:
        spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in containers(obj):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
            if obj["kind"] == "Deployment":
                assert c["readinessProbe"] and c["livenessProbe"]


@pytest.mark.parametrize("name", NAMES)
def test_every_command_is_a_relaygate_entry_point(name: str) -> None:
    commands = [c["command"] for o in rendered(name) for c in containers(o) if "command" in c]
    assert len(commands) >= 3
    for argv in commands:
        assert is_relaygate_command(argv), argv


def test_entry_point_check_rejects_unknown_commands() -> None:
    assert not is_relaygate_command(["relaygate", "no-such-command"])
    assert not is_relaygate_command(["uvicorn", "api.main:app"])
    assert is_relaygate_command(["relaygate", "worker", "--feature", "x"])


@pytest.mark.parametrize("name", NAMES)
def test_autoscaling_never_doubles_up_and_keeps_the_original_bounds(name: str) -> None:
    objects = rendered(name)
    hpa_targets = {o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    assert hpa_targets == {"relaygate-api"}
    assert not hpa_targets & {o["spec"]["scaleTargetRef"]["name"] for o in scaled}
    for obj in scaled:
        spec = obj["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (1, 5, 300)
        feature = obj["metadata"]["labels"]["feature"]
        types = {t["type"]: t for t in spec["triggers"]}
        assert set(types) == {"redis", "cpu", "memory"}
        assert types["redis"]["metadata"]["listName"] == queue_name(feature)


@pytest.mark.parametrize("name", NAMES)
def test_only_the_gateway_is_reachable_from_outside(name: str) -> None:
    policies = [o for o in rendered(name) if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny, "no default-deny ingress policy"
    open_to_all: list[Any] = []
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if "from" not in rule:
                open_to_all.append(p["spec"]["podSelector"])
    assert open_to_all == [{"matchLabels": {"app": "relaygate-api"}}]
    ingress = next(o for o in rendered(name) if o["kind"] == "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


# Pods that call URLs users choose: the base's workers, a feature's workers made by the orchestrator, dispatchers.
OUTBOUND_PODS = [
    {"app": "relaygate-worker", "feature": "default"},
    objects.labels("billing"),
    {"app": "relaygate-dispatcher"},
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pod", OUTBOUND_PODS, ids=lambda p: "-".join(p.values()))
def test_workers_and_dispatchers_reach_only_dns_the_stores_and_the_public_internet(
    name: str, pod: dict[str, str]
) -> None:
    objs = rendered(name)
    allowed = [
        ("8.8.8.8", 443, "TCP", False),
        ("93.184.215.14", 8443, "TCP", False),
        ("2606:4700::1111", 443, "TCP", False),
        ("10.96.0.10", 53, "UDP", False),
        ("169.254.20.10", 53, "UDP", False),  # kube-dns, node-local cache
        ("10.244.1.7", 5432, "TCP", True),
        ("10.244.1.8", 6379, "TCP", True),  # in-cluster Postgres, Valkey
        ("10.20.0.5", 5432, "TCP", False),
        ("192.168.4.4", 6379, "TCP", False),
    ]  # managed, in the VPC
    refused = [
        ("169.254.169.254", 80, "TCP", False),  # cloud metadata
        ("10.96.0.1", 443, "TCP", False),  # the Kubernetes API's service address
        ("10.244.1.9", 8000, "TCP", True),  # another pod, e.g. the gateway
        ("10.20.0.5", 80, "TCP", False),
        ("172.16.0.1", 443, "TCP", False),
        ("192.168.1.1", 80, "TCP", False),
        ("100.64.0.1", 443, "TCP", False),
        ("127.0.0.1", 8000, "TCP", False),
        ("0.0.0.0", 80, "TCP", False),
        ("fd00::1", 443, "TCP", False),
        ("fe80::1", 80, "TCP", False),
        ("::ffff:10.0.0.1", 80, "TCP", False),
    ]
    for address, port, protocol, in_cluster in allowed:
        assert egress_allowed(objs, pod, address, port, protocol, in_cluster), (address, port)
    for address, port, protocol, in_cluster in refused:
        assert not egress_allowed(objs, pod, address, port, protocol, in_cluster), (address, port)


def test_the_egress_check_sees_a_policy_that_opens_everything() -> None:
    pod = OUTBOUND_PODS[0]
    assert not egress_allowed(rendered("base"), pod, "169.254.169.254", 80)
    wide = {"kind": "NetworkPolicy", "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
    assert egress_allowed([*rendered("base"), wide], pod, "169.254.169.254", 80)
    assert egress_allowed([], pod, "169.254.169.254", 80)  # no egress policy at all: nothing is restricted


def test_secret_template_holds_no_secret() -> None:
    for name in NAMES:
        for obj in rendered(name):
            if obj["kind"] == "Secret":
                assert set(obj.get("stringData", {}).values()) <= {""} and "data" not in obj


def test_api_grace_period_covers_uvicorn_drain() -> None:
    from tests.ops.test_images import dockerfile_cmd

    cmd = dockerfile_cmd("Dockerfile.api")
    drain = int(cmd[cmd.index("--timeout-graceful-shutdown") + 1])
    api = next(o for o in rendered("prod") if o["kind"] == "Deployment" and o["metadata"]["name"] == "relaygate-api")
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
