"""The pod calls of `heldMissing` (kdp_host.held_actions), over kdp_host.kubeapi's client:
read a pod (its uid, labels and node), record an Event about it, delete it.

Three calls, each needing one RBAC verb (the chart grants each only when the config uses it):

- `GET /api/v1/namespaces/NS/pods/NAME` (get pods): an Event must name the pod's uid to
  show in `kubectl describe pod`, and a pod is deleted only if it is the one on this node
  (`spec.nodeName`, so the full object, not only its metadata) and its labels match;
- `POST /api/v1/namespaces/NS/events` (create events): a core v1 Event. Why core v1 and not
  events.k8s.io/v1: both land in one store and `kubectl describe` shows either, but the
  core form is what kubectl and kubelet-era tooling read field for field (count, first and
  last timestamps, source component and host), with no `eventTime`/`action`/series that
  kdp-host would not use: it sends each Event once (`held_actions`), never updates one;
- `DELETE /api/v1/namespaces/NS/pods/NAME` (delete pods) with `preconditions.uid`: the API
  server refuses it (409) if a pod of that name is another pod by then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from .files import Offload
from .kubeapi import ApiError, ApiServer, call, failure

FULL_OBJECT = "application/json"
COMPONENT = "kdp-host"
"""The Event's source component (kubectl's `From` column)."""


@dataclass(frozen=True)
class Pod:
    """What the pod calls need of a pod object."""

    uid: str
    labels: Mapping[str, str]
    node: str
    """`spec.nodeName` ("" while not scheduled)."""


class PodCalls(Protocol):
    """The calls `held_actions` makes (`PodApi`; tests pass a fake)."""

    async def pod(self, namespace: str, name: str) -> Pod | None:
        """The pod now, or None when there is none of that name."""

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Record `event` (a core v1 Event) in `namespace`."""

    async def delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the pod if it is still `uid`; False when it is gone or another pod."""


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


def _pod_of(document: Any) -> Pod:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    spec = document.get("spec") if isinstance(document, dict) else None
    if not isinstance(metadata, dict):
        raise ApiError("pod answer without metadata")
    uid, labels = metadata.get("uid"), metadata.get("labels") or {}
    node = spec.get("nodeName", "") if isinstance(spec, dict) else ""
    if not isinstance(uid, str) or not uid or not isinstance(node, str):
        raise ApiError("pod answer without a uid or with a malformed nodeName")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError("pod labels are not a map of strings")
    return Pod(uid, labels, node)


@dataclass(frozen=True)
class PodApi:
    """`PodCalls` against the API server, with the pod's service account."""

    api: ApiServer
    offload: Offload

    async def pod(self, namespace: str, name: str) -> Pod | None:
        path = _pod_path(namespace, name)
        status, body = await call(self.api, "GET", path, self.offload, accept=FULL_OBJECT)
        if status == 404:
            return None
        if status != 200:
            raise failure(status, body, "get pods")
        try:
            return _pod_of(json.loads(body))
        except ValueError:
            raise ApiError("pod answer is not JSON") from None

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        status, body = await call(self.api, "POST", path, self.offload, dict(event))
        if status not in (200, 201):
            raise failure(status, body, "create events")

    async def delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        path = _pod_path(namespace, name)
        status, body = await call(self.api, "DELETE", path, self.offload, options)
        if status in (200, 202):
            return True
        if status in (404, 409):  # gone, or another pod of that name (the uid precondition)
            return False
        raise failure(status, body, "delete pods")


def pod_event(
    namespace: str,
    pod: str,
    uid: str,
    *,
    reason: str,
    message: str,
    node: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A Warning core v1 Event about the pod (`involvedObject` with its uid, so `kubectl
    describe pod` lists it), from `COMPONENT` on `node`."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod[:200]}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": pod,
            "uid": uid,
        },
        "type": "Warning",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT, "host": node},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
