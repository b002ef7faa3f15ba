"""What the ops tests read: rendered k8s overlays, the KEDA CRD schema, relaygate's commands."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any

import click
import yaml

from cli.main import main as cli_main
from tests.ops.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
KUBERNETES_VERSION = "1.33"


@functools.cache
def rendered(name: str) -> list[dict[str, Any]]:
    return render(KUSTOMIZATIONS[name])


@functools.cache
def scaledobject_schema() -> dict[str, Any]:
    """openAPIV3Schema of KEDA's ScaledObject CRD (k8s/schema, version in its VERSION file)."""
    crd = yaml.safe_load((K8S / "schema" / "keda.sh_scaledobjects.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def is_relaygate_command(argv: list[str]) -> bool:
    """True when argv is `relaygate SUBCOMMAND ...` and click knows that subcommand."""
    if not argv or argv[0] != "relaygate":
        return False
    group: click.Command = cli_main
    for word in argv[1:]:
        if word.startswith("-"):
            break
        if not isinstance(group, click.Group):
            break
        sub = group.commands.get(word)
        if sub is None:
            return False
        group = sub
    return group is not cli_main


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return list(pod.get("containers", []))


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def egress_allowed(
    objects: list[dict[str, Any]],
    pod: dict[str, str],
    address: str,
    port: int,
    protocol: str = "TCP",
    in_cluster: bool = False,
) -> bool:
    """Whether the NetworkPolicies let a pod with these labels connect to address:port, as Kubernetes
    decides it: unrestricted unless a policy with Egress selects the pod, then allowed when any rule of
    any such policy allows it. `in_cluster` says the address is a pod's (namespace/pod selectors match)."""
    policies = [
        o["spec"]
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and _selects(o["spec"]["podSelector"], pod)
        and "Egress" in o["spec"].get("policyTypes", ["Egress"] if "egress" in o["spec"] else [])
    ]
    if not policies:
        return True
    ip = ipaddress.ip_address(address)

    def peer_matches(peer: dict[str, Any]) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            inside = ip in ipaddress.ip_network(block["cidr"])
            return inside and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
        return in_cluster

    for spec in policies:
        for rule in spec.get("egress", []):
            ports = rule.get("ports")
            if ports is not None and not any(
                p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports
            ):
                continue
            if "to" not in rule or any(peer_matches(peer) for peer in rule["to"]):
                return True
    return False
