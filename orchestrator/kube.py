"""Create-or-patch and delete of the orchestrator's objects through kubernetes_asyncio."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"
KEDA = ("keda.sh", "v1alpha1", "scaledobjects")


class KubeError(Exception):
    """A Kubernetes API call failed for a reason other than 404/409."""

    def __init__(self, verb: str, kind: str, name: str, exc: ApiException) -> None:
        super().__init__(f"{verb} {kind}/{name}: HTTP {exc.status} {exc.reason}")


async def connect(host: str | None = None) -> client.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG), else `host` (tests)."""
    if host:
        cfg = client.Configuration(host=host)
        return client.ApiClient(cfg)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config()
    return client.ApiClient()


def _without_replicas(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "replicas"}}


class Kube:
    """The three kinds of object a feature owns, each with create/patch/delete/list."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        # Any: the client's stubs omit the `_content_type` keyword and accept no plain dicts.
        self.apps: Any = client.AppsV1Api(api)
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.namespace = namespace

    async def apply(self, obj: dict[str, Any]) -> str:
        """Create `obj`, or merge-patch it when it exists: 'created' or 'updated'."""
        kind, name, ns = obj["kind"], obj["metadata"]["name"], self.namespace
        # Replicas are set only on creation: afterwards they belong to the autoscaler.
        patch_body = _without_replicas(obj) if kind == "Deployment" else obj
        create: Callable[[], Awaitable[Any]]
        patch: Callable[[], Awaitable[Any]]
        if kind == "Deployment":
            create = partial(self.apps.create_namespaced_deployment, ns, obj)
            patch = partial(self.apps.patch_namespaced_deployment, name, ns, patch_body, _content_type=MERGE_PATCH)
        elif kind == "Service":
            create = partial(self.core.create_namespaced_service, ns, obj)
            patch = partial(self.core.patch_namespaced_service, name, ns, obj, _content_type=MERGE_PATCH)
        elif kind == "ScaledObject":
            create = partial(self.custom.create_namespaced_custom_object, *KEDA[:2], ns, KEDA[2], obj)
            patch = partial(
                self.custom.patch_namespaced_custom_object, *KEDA[:2], ns, KEDA[2], name, obj, _content_type=MERGE_PATCH
            )
        else:
            raise ValueError(f"unsupported kind {kind}")
        try:
            await create()
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise KubeError("create", kind, name, exc) from None
        try:
            await patch()
        except ApiException as exc:
            raise KubeError("patch", kind, name, exc) from None
        return "updated"

    async def delete(self, kind: str, name: str) -> str:
        """'deleted', or 'absent' when there was nothing to delete."""
        ns = self.namespace
        try:
            if kind == "Deployment":
                await self.apps.delete_namespaced_deployment(name, ns)
            elif kind == "Service":
                await self.core.delete_namespaced_service(name, ns)
            elif kind == "ScaledObject":
                await self.custom.delete_namespaced_custom_object(*KEDA[:2], ns, KEDA[2], name)
            else:
                raise ValueError(f"unsupported kind {kind}")
        except ApiException as exc:
            if exc.status == 404:
                return "absent"
            raise KubeError("delete", kind, name, exc) from None
        return "deleted"

    async def deployments(self, selector: str) -> list[dict[str, Any]]:
        """Deployments matching a label selector, as plain dicts."""
        try:
            result = await self.apps.list_namespaced_deployment(self.namespace, label_selector=selector)
        except ApiException as exc:
            raise KubeError("list", "Deployment", selector, exc) from None
        return [self.api.sanitize_for_serialization(d) for d in result.items]

    async def annotate(self, name: str, annotations: dict[str, str]) -> None:
        body = {"metadata": {"annotations": annotations}}
        try:
            await self.apps.patch_namespaced_deployment(name, self.namespace, body, _content_type=MERGE_PATCH)
        except ApiException as exc:
            raise KubeError("patch", "Deployment", name, exc) from None
