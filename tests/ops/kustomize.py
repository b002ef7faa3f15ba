"""A small kustomize renderer for the subset `k8s/` uses, so tests need no kubectl.

Supported: `resources` (files and directories), `namespace`, `images`, `labels` (pairs on
metadata only) and JSON 6902 `patches` with a kind/name target. Anything else fails loudly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "labels", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` prints, in resource order."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not support: {unknown}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(o for o in yaml.safe_load_all(path.read_text()) if o)
    objects = [copy.deepcopy(o) for o in objects]
    for patch in spec.get("patches", []):
        target = patch["target"]
        matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if not matches:
            raise ValueError(f"{directory}: patch target {target} matches nothing")
        ops = yaml.safe_load(patch["patch"])
        for i, obj in enumerate(objects):
            if obj in matches:
                objects[i] = jsonpatch.apply_patch(obj, ops)
    for image in spec.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    for label in spec.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise ValueError("labels with includeSelectors/includeTemplates are not supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
            for subject in obj.get("subjects", []) if obj["kind"] == "RoleBinding" else []:
                if subject["kind"] == "ServiceAccount":
                    subject["namespace"] = spec["namespace"]
    return objects


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec:
        return [spec["template"]["spec"]]
    return []


def _set_image(obj: dict[str, Any], image: dict[str, str]) -> None:
    for pod in _pod_specs(obj):
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name = container["image"].split(":")[0]
            if name == image["name"]:
                tag = image.get("newTag") or (container["image"].split(":")[1] if ":" in container["image"] else "")
                container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
