"""A Kubernetes API server for tests: kmock 0.8's emulator with the fixes natib's code needs.

API (everything else is kmock's own ``KubernetesEmulator``):

- ``Emulator()``: an in-memory API server; run it with ``async with Emulator() as em, kmock.Server(em) as srv``
  (the ``kube`` fixture in conftest.py does this; ``em.url`` is then its http:// address). Compared to kmock
  it answers 201 to a create, fills ``metadata.uid``, ``resourceVersion``, ``creationTimestamp`` and the
  namespace from the URL, bumps ``resourceVersion`` on every patch, filters lists and watches by
  ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-separated) and ``fieldSelector``
  (``metadata.name=``/``metadata.namespace=``), ends a watch after ``timeoutSeconds``, and serves
  ``GET .../pods/{name}/log`` (``container``, ``follow``) from logs the test writes; a resource that was not
  registered answers 404, as a kind without its CRD does.
- ``em.register_defaults()``: declares batch/v1 jobs, v1 pods and configmaps, kubeflow.org/v1 tfjobs,
  pytorchjobs, mpijobs, xgboostjobs and kubeflow.org/v1beta1 experiments, trials, suggestions (all
  namespaced, with a status subresource); ``em.register(api_version, plural, kind)`` adds another.
- ``em.log(namespace, pod, container)``: the ``PodLog`` of a container; ``write(text)`` appends, ``close()``
  ends every follower's stream (the container terminated).
- ``em.end_watches()``: ends every open watch stream, as an API server restart would.
- ``em.deletions``: ``(plural, namespace, name, propagationPolicy)`` for every DELETE of one object;
  ``em.requests``: every request served (kmock ``Request`` objects: method, params, resource, data).
- ``JobController(api)``: plays the controllers of a job kind over HTTP with a real client: ``wait_for``,
  ``start`` (creates the primary pod from the job's pod template, Running with an IP, and marks the job
  active), ``succeed``, ``fail`` and ``set_status``.
- ``install_shims()``: makes kmock recognise kubernetes_asyncio's ``watch=True`` (it only knows ``true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import parsing, rendering
from kmock._internal.k8s import KubernetesObjectNotFoundError, KubernetesResourceNotFoundError

from natib.runtime.kube import KubeResource, resource_for

__all__ = ["DEFAULT_RESOURCES", "Emulator", "JobController", "PodLog", "install_shims", "selector_matches"]

DEFAULT_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("batch/v1", "jobs", "Job"),
    ("v1", "pods", "Pod"),
    ("v1", "configmaps", "ConfigMap"),
    ("kubeflow.org/v1", "tfjobs", "TFJob"),
    ("kubeflow.org/v1", "pytorchjobs", "PyTorchJob"),
    ("kubeflow.org/v1", "mpijobs", "MPIJob"),
    ("kubeflow.org/v1", "xgboostjobs", "XGBoostJob"),
    ("kubeflow.org/v1beta1", "experiments", "Experiment"),
    ("kubeflow.org/v1beta1", "trials", "Trial"),
    ("kubeflow.org/v1beta1", "suggestions", "Suggestion"),
)

_shimmed = False


def install_shims() -> None:
    """Let kmock see ``watch=True`` (as kubernetes_asyncio sends it) as a watch request. Idempotent."""
    global _shimmed
    if _shimmed:
        return
    original = parsing.guess_k8s

    def guess(k8s: Any, method: Any, query: dict[str, str]) -> Any:
        q = dict(query)
        if str(q.get("watch", "")).lower() in ("true", "1"):
            q["watch"] = "true"
        return original(k8s, method, q)

    parsing.guess_k8s = guess
    _shimmed = True


def selector_matches(selector: str | None, labels: dict[str, str] | None) -> bool:
    """Whether ``labels`` satisfy a Kubernetes equality/existence label selector."""
    labels = labels or {}
    for term in (t.strip() for t in (selector or "").split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(selector: str | None, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    for term in (t.strip() for t in (selector or "").split(",")):
        if not term:
            continue
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        actual = meta.get(key.removeprefix("metadata.")) if key.startswith("metadata.") else None
        if (actual == value) == negate:
            return False
    return True


@dataclass
class PodLog:
    """One container's log: what was written so far, and whether the container has ended."""

    data: bytearray = field(default_factory=bytearray)
    closed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, text: str | bytes) -> None:
        """Append output, waking every follower."""
        self.data += text.encode() if isinstance(text, str) else text
        self.changed.set()
        self.changed = asyncio.Event()

    def close(self) -> None:
        """The container terminated: followers get the rest and their stream ends."""
        self.closed = True
        self.changed.set()


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with real-server behaviour natib depends on (see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        install_shims()
        self._versions = itertools.count(1)
        self._logs: dict[tuple[str, str, str], PodLog] = {}
        self._watch_stops: set[asyncio.Event] = set()
        self.deletions: list[tuple[str, str | None, str | None, str | None]] = []

    def register(self, api_version: str, plural: str, kind: str) -> None:
        """Declare a namespaced resource with a status subresource."""
        self.resources[f"{api_version}/{plural}"] = kmock.ResourceInfo(
            kind=kind, namespaced=True, subresources={"status"},
        )

    def register_defaults(self) -> None:
        """Declare every resource in DEFAULT_RESOURCES."""
        for api_version, plural, kind in DEFAULT_RESOURCES:
            self.register(api_version, plural, kind)

    def log(self, namespace: str, pod: str, container: str) -> PodLog:
        """The log of one container (created empty on first use)."""
        return self._logs.setdefault((namespace, pod, container), PodLog())

    @property
    def requests(self) -> list[rendering.Request]:
        """Every request served so far, in order."""
        return list(self._requests)

    def end_watches(self) -> None:
        """End every open watch stream (clients must reconnect)."""
        for stop in list(self._watch_stops):
            stop.set()

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is not None and resource.plural == "pods" and request.subresource == "log":
            return await self._serve_log(request)
        if resource is not None and resource.plural and resource not in self.resources:
            raise KubernetesResourceNotFoundError()  # a kind the cluster does not serve (no CRD)
        data = request.data
        if resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                meta["resourceVersion"] = str(next(self._versions))
            elif request.action == kmock.action.UPDATE:
                meta["resourceVersion"] = str(next(self._versions))
        if resource is not None and request.action == kmock.action.DELETE and request.name is not None:
            policy = data.get("propagationPolicy") if isinstance(data, dict) else None
            self.deletions.append((str(resource.plural), request.namespace, request.name, policy))
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)
        return response

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result = await super()._serve_list(request)
        assert isinstance(result, dict)
        labels, fields = request.params.get("labelSelector"), request.params.get("fieldSelector")
        result["items"] = [
            o for o in result["items"]
            if selector_matches(labels, (o.get("metadata") or {}).get("labels")) and _fields_match(fields, o)
        ]
        result["metadata"] = {"resourceVersion": str(next(self._versions))}
        return result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        labels, fields = request.params.get("labelSelector"), request.params.get("fieldSelector")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        stop = asyncio.Event()
        self._watch_stops.add(stop)
        events = super()._serve_watch(request)
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(events.__anext__())
                stopped = asyncio.ensure_future(stop.wait())
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({step, stopped}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    return
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                if not isinstance(event, dict):
                    yield event
                    continue
                obj = event.get("object") or {}
                if selector_matches(labels, (obj.get("metadata") or {}).get("labels")) and _fields_match(fields, obj):
                    yield event
        finally:
            self._watch_stops.discard(stop)
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
            with contextlib.suppress(RuntimeError, StopAsyncIteration):
                await events.aclose()

    async def _serve_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        namespace, pod = request.namespace or "", request.name or ""
        if not any(r.plural == "pods" and ns == namespace and n == pod for r, ns, n in self.objects):
            raise KubernetesObjectNotFoundError()
        container = request.params.get("container")
        if not container:
            owned = [c for (ns, p, c) in self._logs if ns == namespace and p == pod]
            container = owned[0] if owned else ""
        podlog = self.log(namespace, pod, container)
        follow = str(request.params.get("follow", "")).lower() in ("true", "1")
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        sent = 0
        while True:
            waiter = podlog.changed
            if len(podlog.data) > sent:
                chunk = bytes(podlog.data[sent:])
                sent += len(chunk)
                await response.write(chunk)
            if not follow or podlog.closed:
                break
            await waiter.wait()
        await response.write_eof()
        return response


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_PRIMARY_REPLICAS = ("Master", "Chief", "Launcher", "Worker")


def pod_template(obj: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The pod template a job's primary pod is made from, and its Kubeflow replica type (None for a Job)."""
    spec = obj.get("spec") or {}
    if isinstance(spec.get("template"), dict):
        return spec["template"], None
    for key, value in spec.items():
        if key.endswith("ReplicaSpecs") and isinstance(value, dict) and value:
            replica = next((r for r in _PRIMARY_REPLICAS if r in value), next(iter(value)))
            return value[replica].get("template") or {}, replica
    return {}, None


class JobController:
    """Plays a job kind's controller against the emulator, over HTTP, with a real kubernetes_asyncio client."""

    def __init__(self, api: Any) -> None:
        self.api = api

    async def _call(self, method: str, path: str, body: Any = None, query: list[tuple[str, Any]] | None = None,
                    content_type: str = "application/json") -> Any:
        return await self.api.call_api(
            path, method, query_params=query or [], body=body,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            response_types_map={200: "object", 201: "object"}, _return_http_data_only=True,
        )

    @staticmethod
    def _resource(obj: dict[str, Any]) -> KubeResource:
        return resource_for(obj["apiVersion"], obj["kind"])

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        from kubernetes_asyncio.client import ApiException

        try:
            return await self._call("GET", resource_for(api_version, kind).path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def wait_for(self, api_version: str, kind: str, namespace: str, name: str,
                       timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the object exists; AssertionError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            obj = await self.get(api_version, kind, namespace, name)
            if obj is not None:
                return obj
            if loop.time() > deadline:
                raise AssertionError(f"{kind} {namespace}/{name} was not created within {timeout} s")
            await asyncio.sleep(0.05)

    async def start(self, obj: dict[str, Any], *, pod_ip: str = "127.0.0.1",
                    pod_name: str | None = None) -> dict[str, Any]:
        """Create the job's primary pod (Running, with an IP) and mark the job active; returns the pod."""
        meta = obj["metadata"]
        template, replica = pod_template(obj)
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels["job-name"] = meta["name"]
        if replica is not None:
            labels.setdefault("training.kubeflow.org/job-name", meta["name"])
            labels.setdefault("training.kubeflow.org/replica-type", replica.lower())
            if replica in ("Master", "Chief", "Launcher"):
                labels.setdefault("training.kubeflow.org/job-role", "master")
        name = pod_name or f"{meta['name']}-{replica.lower() if replica else 'pod'}-0"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "ownerReferences": [{"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                              "name": meta["name"], "uid": meta.get("uid", "")}]},
            "spec": template.get("spec") or {},
        }
        await self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", pod)
        pod = await self._call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{name}/status",
                               {"status": {"phase": "Running", "podIP": pod_ip}},
                               content_type="application/merge-patch+json")
        if replica is None:
            await self.set_status(obj, {"active": 1, "startTime": _now()})
        else:
            await self.set_status(obj, {"conditions": [
                {"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]})
        return pod

    async def set_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the object's /status."""
        res = self._resource(obj)
        return await self._call("PATCH", res.path(obj["metadata"]["namespace"], obj["metadata"]["name"], "status"),
                                {"status": status}, content_type="application/merge-patch+json")

    async def succeed(self, obj: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
        """Finish the job successfully: ``Complete`` for a Job, ``Succeeded`` for a Kubeflow job, or ``condition``."""
        kind_condition = "Complete" if obj.get("kind") == "Job" else "Succeeded"
        conditions = [{"type": condition or kind_condition, "status": "True", "reason": "JobSucceeded",
                       "message": "the job finished", "lastTransitionTime": _now()}]
        status: dict[str, Any] = {"conditions": conditions}
        if obj.get("kind") == "Job":
            status.update({"active": 0, "succeeded": 1, "completionTime": _now()})
        return await self.set_status(obj, status)

    async def fail(self, obj: dict[str, Any], reason: str = "BackoffLimitExceeded",
                   message: str = "Job has reached the specified backoff limit") -> dict[str, Any]:
        """Finish the job with a ``Failed`` condition."""
        status: dict[str, Any] = {"conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                                   "message": message, "lastTransitionTime": _now()}]}
        if obj.get("kind") == "Job":
            status.update({"active": 0, "failed": 1})
        return await self.set_status(obj, status)
