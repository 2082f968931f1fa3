"""The k8s-controller actor: Katib's ``kubeflow.org/v1beta1`` Experiment resources, run by natib.

It watches Experiment objects in the chosen namespaces (``NATIB_K8S_NAMESPACES``, default all) and turns
each into a natib experiment through natib's own request API (``natib.api.create``, ``patch``, ``delete``),
exactly as the CLI does. It resolves ``trialTemplate.configMap`` by reading the ConfigMap, adds a finalizer
so that deleting the object deletes the natib experiment, passes edits of the three budget fields on as a
patch, and writes natib's view of each experiment back: the Experiment's status subresource (conditions,
counts, trial lists, currentOptimalTrial) and one ``Trial`` object per trial with its conditions and
observation. The Kubernetes objects are only a mirror: the event log stays the truth, so a restarted
controller re-lists everything and converges without duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import yaml
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import CoreV1Api, CustomObjectsApi

from natib.actors.base import Context
from natib.messages import subjects
from natib.messages.state import ExperimentState, TrialState
from natib.runtime.bus import NoResponders
from natib.runtime.errors import RetryableError
from natib.runtime.kube import EXPERIMENT_LABEL, TRIAL_LABEL, api_client, api_status, is_conflict, is_not_found
from natib.runtime.logging import get_logger

log = get_logger("natib.k8s_controller")

KIND = "k8s-controller"
GROUP, VERSION = "kubeflow.org", "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = "natib.io/experiment"
#: Reason of the Failed condition of an Experiment natib refused (Katib's webhook would have rejected it).
REFUSED_REASON = "ValidationFailed"
#: Status fields natib may leave out; a merge patch sets the absent ones to null so stale values vanish.
OPTIONAL_STATUS = (
    "startTime", "completionTime", "runningTrialList", "pendingTrialList", "failedTrialList",
    "succeededTrialList", "killedTrialList", "earlyStoppedTrialList", "metricsUnavailableTrialList",
    "trials", "trialsSucceeded", "trialsFailed", "trialsKilled", "trialsPending", "trialsRunning",
    "trialsEarlyStopped", "trialMetricsUnavailable",
)
#: Seconds any one Kubernetes API call may take (a watch ends by itself after WATCH_SECONDS).
API_TIMEOUT = 30
BUDGETS = (("maxTrialCount", "max_trial_count"), ("parallelTrialCount", "parallel_trial_count"),
           ("maxFailedTrialCount", "max_failed_trial_count"))


class Refused(Exception):
    """An Experiment object natib cannot run, with the messages to show on its status."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def sdk_compat(doc: dict[str, Any]) -> list[str]:
    """Repair the Katib SDK's categorical bug in place: ``search.categorical`` puts the list of values in
    ``feasibleSpace.distribution``. Returns a note per repaired parameter."""
    notes = []
    for i, p in enumerate((doc.get("spec") or {}).get("parameters") or []):
        space = p.get("feasibleSpace") if isinstance(p, dict) else None
        if isinstance(space, dict) and isinstance(space.get("distribution"), list) and not space.get("list"):
            space["list"] = [str(v) for v in space.pop("distribution")]
            notes.append(f"spec.parameters[{i}].feasibleSpace: values moved from distribution to list")
    return notes


def spec_digest(obj: dict[str, Any]) -> str:
    """A digest of an object's spec, to recognise one that was already refused."""
    return hashlib.sha256(json.dumps(obj.get("spec"), sort_keys=True, default=str).encode()).hexdigest()[:16]


def refused_status(errors: list[str], when: str) -> dict[str, Any]:
    """The status of an Experiment natib refused: a Failed condition carrying every validation message."""
    return {"conditions": [{
        "type": "Failed", "status": "True", "reason": REFUSED_REASON, "message": "; ".join(errors),
        "lastUpdateTime": when, "lastTransitionTime": when,
    }]}


def trial_object(state: ExperimentState, t: TrialState, namespace: str, owner_uid: str) -> dict[str, Any]:
    """The Katib ``Trial`` object of a natib trial, owned by its Experiment."""
    assert state.experiment is not None
    spec = state.experiment.spec
    template = spec.trial_template
    trial_spec: dict[str, Any] = {
        "objective": msgspec.to_builtins(spec.objective),
        "parameterAssignments": [{"name": k, "value": v} for k, v in t.assignment.items()],
        "runSpec": t.run_spec,
        "retainRun": bool(template.retain) if template else False,
        "primaryContainerName": template.primary_container_name if template else "",
    }
    if spec.metrics_collector_spec is not None:
        trial_spec["metricsCollector"] = msgspec.to_builtins(spec.metrics_collector_spec)
    if t.labels:
        trial_spec["labels"] = dict(t.labels)
    return {
        "apiVersion": API_VERSION, "kind": "Trial",
        "metadata": {
            "name": t.name, "namespace": namespace,
            "labels": {EXPERIMENT_LABEL: state.name, TRIAL_LABEL: t.name},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "Experiment", "name": state.name,
                                 "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": trial_spec,
    }


def describe(exc: BaseException) -> str:
    """An error as one log field: the HTTP status and reason of an API error, else its repr."""
    status = api_status(exc)
    if status is None:
        return repr(exc)
    return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()


def status_patch(status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that makes the status exactly ``status`` (optional fields it lacks become null)."""
    body = {key: None for key in OPTIONAL_STATUS if key not in status}
    body.update(status)
    return {"status": body}


class KubeController:
    """Mirrors Kubernetes Experiment objects into natib and natib's state back into them."""

    kind = KIND

    #: Seconds a watch runs before the controller re-lists (a full re-sync) and watches again.
    WATCH_SECONDS = 60
    #: Seconds between two status passes over every experiment that no event triggered.
    RESYNC_SECONDS = 5.0
    #: Seconds to wait after a failed list or watch before trying again.
    BACKOFF_SECONDS = 1.0

    def __init__(self, ctx: Context, *, host: str | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self.namespaces: tuple[str, ...] = tuple(ctx.settings.k8s_namespaces)
        self.custom: CustomObjectsApi
        self.core: CoreV1Api
        self._owned: dict[str, tuple[str, str]] = {}  # natib experiment -> (namespace, Experiment uid)
        self._status: dict[str, dict[str, Any]] = {}
        self._trials: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._refused: dict[tuple[str, str], str] = {}
        self._patch_refused: dict[str, dict[str, Any]] = {}  # experiment -> refused edits
        self._seen: dict[str, tuple[Any, ...]] = {}  # experiment -> what its object looked like when in sync
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._listed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def ready(self) -> str | None:
        """None once every watched namespace has been listed once."""
        want = self.namespaces or ("",)
        missing = [ns or "(all namespaces)" for ns in want if ns not in self._listed]
        return f"Experiments not listed yet in {', '.join(missing)}" if missing else None

    async def run(self) -> None:
        """Watch Experiments and mirror natib's state until the stop signal."""
        async with await api_client(self.host) as api:
            self.custom, self.core = CustomObjectsApi(api), CoreV1Api(api)
            unsubscribe = await self.ctx.bus.watch_subjects(subjects.EVENTS_ALL, self._on_event)
            tasks = [asyncio.create_task(self._watch(ns)) for ns in (self.namespaces or ("",))]
            tasks.append(asyncio.create_task(self._status_loop()))
            log.info("k8s_controller_started", namespaces=list(self.namespaces) or "all")
            try:
                await self.ctx.stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                with contextlib.suppress(Exception):
                    await unsubscribe()

    # -- Kubernetes -> natib ---------------------------------------------------------------------

    async def _list(self, namespace: str) -> list[dict[str, Any]]:
        if namespace:
            result = await self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "experiments", _request_timeout=API_TIMEOUT)
        else:
            result = await self.custom.list_cluster_custom_object(
                GROUP, VERSION, "experiments", _request_timeout=API_TIMEOUT)
        return list(result.get("items") or [])

    async def _watch(self, namespace: str) -> None:
        """List (a full re-sync), then follow the watch until it ends; again, until stopped."""
        while not self.ctx.stop.is_set():
            try:
                for obj in await self._list(namespace):
                    await self.sync(obj)
                self._listed.add(namespace)
                # The server ends the watch after WATCH_SECONDS; the client gives up a little later.
                limits = {"timeout_seconds": self.WATCH_SECONDS, "_request_timeout": self.WATCH_SECONDS + API_TIMEOUT}
                if namespace:
                    stream = watch.Watch().stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                                  namespace, "experiments", **limits)
                else:
                    stream = watch.Watch().stream(self.custom.list_cluster_custom_object, GROUP, VERSION,
                                                  "experiments", **limits)
                async with stream:
                    async for event in stream:
                        kind, obj = event.get("type"), event.get("object")
                        if kind == "ERROR" or not isinstance(obj, dict):
                            break  # e.g. 410 Gone: list again
                        if kind == "DELETED":
                            self._forget((obj.get("metadata") or {}).get("name", ""))
                        else:
                            await self.sync(obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("experiment_watch_failed", namespace=namespace or "all", error=describe(exc))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.ctx.stop.wait(), self.BACKOFF_SECONDS)

    async def sync(self, obj: dict[str, Any]) -> None:
        """Bring natib in line with one Experiment object; errors are logged, never raised."""
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            try:
                await self._sync(obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("experiment_sync_failed", experiment=name, namespace=meta.get("namespace"),
                            error=describe(exc))

    async def _sync(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, namespace, uid = meta.get("name", ""), meta.get("namespace") or "default", meta.get("uid") or ""
        finalizers = list(meta.get("finalizers") or [])
        # Most events are the controller's own status writes: nothing to do unless the object itself changed.
        seen = (uid, spec_digest(obj), meta.get("deletionTimestamp"), FINALIZER in finalizers)
        if name in self._owned and self._seen.get(name) == seen:
            return
        if meta.get("deletionTimestamp"):
            if FINALIZER in finalizers:
                await self._finalize(obj)
            return
        try:
            subjects.check_token(name, "metadata.name")
        except ValueError as exc:
            await self._refuse(obj, [str(exc)])
            return
        if FINALIZER not in finalizers:
            await self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "experiments", name, {"metadata": {"finalizers": [*finalizers, FINALIZER]}},
                _request_timeout=API_TIMEOUT)
        state = await self.ctx.store.load(name, fresh=True)
        if state.experiment is not None and not state.deleted:
            owner = state.experiment.metadata.uid
            if owner == uid:
                self._adopt(name, namespace, uid)
                await self._sync_budgets(obj, state)
                if not self._patch_refused.get(name):
                    self._seen[name] = (uid, spec_digest(obj), None, True)
                return
            if not owner:
                await self._refuse(obj, [f"metadata.name: natib experiment {name} already exists and was not "
                                         "created from a Kubernetes Experiment; delete it or rename this one"])
                return
            other_ns = state.experiment.metadata.namespace or "default"
            if await self._exists(other_ns, name, owner):
                await self._refuse(obj, [f"metadata.name: natib experiment names are cluster-wide, and {name} is "
                                         f"taken by the Experiment in namespace {other_ns}"])
                return
            # Left over from an Experiment object of the same name that is gone: this one replaces it.
            log.info("stale_experiment_replaced", experiment=name, old_uid=owner, uid=uid)
            await self._request("delete", {"name": name})
        if self._refused.get((name, uid)) == spec_digest(obj):
            return
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in conditions):
            return  # finished (or refused) before natib lost its record of it: not run again
        await self._create(obj)

    async def _exists(self, namespace: str, name: str, uid: str) -> bool:
        """Whether the Experiment object with this uid still exists."""
        found = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "experiments", field_selector=f"metadata.name={name}",
            _request_timeout=API_TIMEOUT)
        return any((o.get("metadata") or {}).get("uid") == uid for o in found.get("items") or [])

    async def _create(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name, namespace, uid = meta["name"], meta.get("namespace") or "default", meta.get("uid") or ""
        doc = {
            "apiVersion": API_VERSION, "kind": "Experiment",
            "metadata": {k: v for k, v in {
                "name": name, "namespace": namespace, "uid": uid,
                "labels": meta.get("labels"), "annotations": meta.get("annotations"),
            }.items() if v},
            "spec": json.loads(json.dumps(obj.get("spec") or {})),
        }
        for note in sdk_compat(doc):
            log.warning("sdk_categorical_repaired", experiment=name, detail=note)
        try:
            await self._resolve_config_map(doc, namespace)
        except Refused as exc:
            await self._refuse(obj, exc.errors)
            return
        reply = await self._request("create", {"experiment": doc})
        if not reply.get("ok"):
            await self._refuse(obj, list(reply.get("errors") or [str(reply.get("error"))]))
            return
        log.info("experiment_submitted", experiment=name, namespace=namespace, uid=uid)
        self._adopt(name, namespace, uid)

    async def _resolve_config_map(self, doc: dict[str, Any], namespace: str) -> None:
        """Inline ``trialTemplate.configMap`` as ``trialSpec`` (an incomplete reference is left to validation)."""
        template = doc["spec"].get("trialTemplate")
        if not isinstance(template, dict) or template.get("trialSpec") is not None:
            return
        ref = template.get("configMap")
        if not isinstance(ref, dict) or not all(ref.get(k) for k in ("configMapName", "configMapNamespace",
                                                                     "templatePath")):
            return
        cm_name, cm_namespace, path = ref["configMapName"], ref["configMapNamespace"], ref["templatePath"]
        where = "spec.trialTemplate.configMap"
        try:
            cm = await self.core.read_namespaced_config_map(cm_name, cm_namespace, _request_timeout=API_TIMEOUT)
        except Exception as exc:
            if is_not_found(exc):
                raise Refused([f"{where}: ConfigMap {cm_namespace}/{cm_name} not found"]) from None
            raise
        data = cm.data or {}
        if path not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise Refused([f"{where}.templatePath: ConfigMap {cm_namespace}/{cm_name} has no key {path!r} "
                           f"(keys: {keys})"])
        try:
            spec = yaml.safe_load(data[path])
        except yaml.YAMLError as exc:
            raise Refused([f"{where}: {cm_namespace}/{cm_name} key {path!r} is not YAML: {exc}"]) from None
        if not isinstance(spec, dict):
            raise Refused([f"{where}: {cm_namespace}/{cm_name} key {path!r} must hold one object, "
                           f"got {type(spec).__name__}"])
        template.pop("configMap")
        template["trialSpec"] = spec

    async def _refuse(self, obj: dict[str, Any], errors: list[str]) -> None:
        meta = obj["metadata"]
        name, namespace = meta.get("name", ""), meta.get("namespace") or "default"
        log.warning("experiment_refused", experiment=name, namespace=namespace, errors=errors)
        self._refused[(name, meta.get("uid") or "")] = spec_digest(obj)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "experiments", name, status_patch(refused_status(errors, now)),
                _request_timeout=API_TIMEOUT)
        except Exception as exc:
            log.warning("status_write_failed", experiment=name, error=describe(exc))

    async def _sync_budgets(self, obj: dict[str, Any], state: ExperimentState) -> None:
        """Pass an edit of maxTrialCount, parallelTrialCount or maxFailedTrialCount on as a natib patch."""
        assert state.experiment is not None
        spec = obj.get("spec") or {}
        refused = self._patch_refused.setdefault(state.name, {})
        for field, attr in BUDGETS:
            value = spec.get(field)
            current = getattr(state.experiment.spec, attr)
            if value is None or value == current or refused.get(attr) == value:
                continue
            # One field at a time, so that a refused edit (Katib's webhook would reject it) holds back no other.
            reply = await self._request("patch", {"name": state.name, attr: value})
            if reply.get("ok"):
                refused.pop(attr, None)
                log.info("experiment_budget_patched", experiment=state.name, field=field, value=value)
                self._mark(state.name)
                state = await self.ctx.store.load(state.name, fresh=True)
                if state.experiment is None:
                    return
            else:
                refused[attr] = value
                log.warning("experiment_budget_refused", experiment=state.name, field=field, value=value,
                            errors=reply.get("errors"))

    async def _finalize(self, obj: dict[str, Any]) -> None:
        """The Experiment is being deleted: delete the natib experiment and its Trials, then let it go."""
        meta = obj["metadata"]
        name, namespace, uid = meta["name"], meta.get("namespace") or "default", meta.get("uid") or ""
        state = await self.ctx.store.load(name, fresh=True)
        if state.experiment is not None and state.experiment.metadata.uid == uid:
            await self._request("delete", {"name": name})
            log.info("experiment_deleted", experiment=name, namespace=namespace)
        trials = await self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "trials", label_selector=f"{EXPERIMENT_LABEL}={name}",
            _request_timeout=API_TIMEOUT)
        for trial in trials.get("items") or []:
            try:
                await self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, "trials", trial["metadata"]["name"], _request_timeout=API_TIMEOUT)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
        self._forget(name)
        finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        try:
            await self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "experiments", name, {"metadata": {"finalizers": finalizers}},
                _request_timeout=API_TIMEOUT)
        except Exception as exc:
            if not is_not_found(exc):
                raise

    async def _request(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Call natib's request API (served by the experiment controller)."""
        try:
            data = await self.ctx.bus.request(subjects.api(endpoint), msgspec.json.encode(payload),
                                              timeout=self.ctx.settings.request_timeout)
        except NoResponders as exc:
            raise RetryableError(f"no natib controller answers natib.api.{endpoint}; is `natib actor "
                                 "controller` running?") from exc
        reply: dict[str, Any] = msgspec.json.decode(data)
        return reply

    def _adopt(self, name: str, namespace: str, uid: str) -> None:
        if self._owned.get(name) != (namespace, uid):
            self._owned[name] = (namespace, uid)
            self._status.pop(name, None)
        self._mark(name)

    def _forget(self, name: str) -> None:
        self._owned.pop(name, None)
        self._seen.pop(name, None)
        self._status.pop(name, None)
        self._patch_refused.pop(name, None)
        for key in [k for k in self._trials if k[0] == name]:
            del self._trials[key]

    # -- natib -> Kubernetes ---------------------------------------------------------------------

    def _on_event(self, subject: str) -> None:
        name = subjects.experiment_of(subject)
        if name is not None and name in self._owned:
            self._mark(name)

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._wake.set()

    async def _status_loop(self) -> None:
        """Write the status of every experiment that changed, a few times a second at most."""
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while not self.ctx.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.RESYNC_SECONDS)
            self._wake.clear()
            if loop.time() - last_full >= self.RESYNC_SECONDS:
                self._dirty.update(self._owned)
                last_full = loop.time()
            await asyncio.sleep(0.1)  # let a burst of events collapse into one write
            dirty, self._dirty = self._dirty, set()
            for name in sorted(dirty):
                lock = self._locks.setdefault(name, asyncio.Lock())
                async with lock:
                    try:
                        await self.write_status(name)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("status_write_failed", experiment=name, error=describe(exc))
                        self._dirty.add(name)

    async def write_status(self, name: str) -> None:
        """Write the Experiment's status and its Trial objects from natib's state, where they changed."""
        owned = self._owned.get(name)
        if owned is None:
            return
        namespace, uid = owned
        state = await self.ctx.store.load(name)
        if state.experiment is None or state.deleted or state.experiment.metadata.uid != uid:
            return
        for t in sorted(state.trials.values(), key=lambda t: t.index):
            await self._write_trial(state, t, namespace, uid)
        status = state.katib_status()
        if self._status.get(name) == status:
            return
        try:
            await self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "experiments", name, status_patch(status), _request_timeout=API_TIMEOUT)
        except Exception as exc:
            if is_not_found(exc):
                self._forget(name)
                return
            raise
        self._status[name] = status

    async def _write_trial(self, state: ExperimentState, t: TrialState, namespace: str, uid: str) -> None:
        key = (state.name, t.name)
        status = state.trial_status(t)["status"]
        if key in self._trials and self._trials[key] == status:
            return
        if key not in self._trials:
            try:
                await self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "trials", trial_object(state, t, namespace, uid),
                    _request_timeout=API_TIMEOUT)
            except Exception as exc:
                if not is_conflict(exc):
                    raise
            self._trials[key] = None
        assert isinstance(status, dict)
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "trials", t.name, {"status": {"startTime": None, "completionTime": None,
                                                                     **status}}, _request_timeout=API_TIMEOUT)
        self._trials[key] = status


__all__ = ["FINALIZER", "REFUSED_REASON", "KubeController", "sdk_compat", "trial_object"]
