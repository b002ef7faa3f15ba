"""What the ops tests read: rendered k8s overlays, the KEDA CRD schema, relaygate's commands."""

from __future__ import annotations

import functools
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
