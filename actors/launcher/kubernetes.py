"""The Kubernetes trial launcher: each trial is an object of its run spec's own kind in the experiment's namespace.

It takes the same LaunchTrial / StopTrial commands as the local launcher and ships the same NATIB_LOGS
messages, so the collector, early stopping and every view work unchanged:

- the run spec (already rendered by the controller) is created as is, named after the trial, labelled
  ``katib.kubeflow.org/experiment`` and ``katib.kubeflow.org/trial`` on the object and on every pod template;
  a create that fails and is retried and then answers 409 adopts the object when its trial label is this
  trial's;
- the trial ends when the experiment's ``failureCondition`` (checked first) or ``successCondition`` (GJSON,
  see gjson.py) matches the object, as seen through a watch that is re-opened whenever it ends;
- the primary container's log (of the pod matching the trial label and ``primaryPodLabels``) is followed and
  shipped as the trial's output (``out``); a Custom collector container's log becomes ``custom``;
  PrometheusMetric is scraped at the pod's IP; File and TensorFlowEvent are shipped by a ``natib sidecar``
  container added to the primary pod, sharing an emptyDir mounted at the metrics directory; Push gets
  ``NATS_URL``, ``NATIB_EXPERIMENT``, ``NATIB_TRIAL_NAME`` in the primary container's environment;
- StopTrial records why on the object (annotations ``natib.io/stop-reason``, ``natib.io/stop-message``) and
  deletes it with propagationPolicy Foreground; ``retain: false`` deletes it after the trial ends too.

`LauncherRouter` picks the backend per experiment: the Experiment annotation ``natib.io/launcher``
(``kubernetes`` or ``local``), else NATIB_LAUNCHER.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import ApiClient, ApiException

from natib.actors.base import Context
from natib.actors.launcher import gjson
from natib.actors.launcher.actor import (
    H_ATTEMPT,
    H_CHUNK,
    H_EOF,
    H_EXIT,
    H_OFFSET,
    H_STOP,
    H_STOP_MESSAGE,
    KIND,
    LocalLauncher,
    Position,
    dispatch,
)
from natib.actors.launcher.sources import Chunk, PrometheusSource, collector_kind, mount_path
from natib.actors.launcher.template import TemplateError, find_primary_container
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.commands import LaunchTrial, StopTrial
from natib.messages.spec import (
    JOB_FAILURE_CONDITION,
    JOB_SUCCESS_CONDITION,
    KUBEFLOW_JOB_FAILURE_CONDITION,
    KUBEFLOW_JOB_KINDS,
    KUBEFLOW_JOB_SUCCESS_CONDITION,
    KUBEFLOW_PRIMARY_POD_LABELS,
    TRAINJOB_KIND,
    TRAINJOB_PRIMARY_POD_LABELS,
    Experiment,
)
from natib.messages.validation import LAUNCHER_ANNOTATION, TRIAL_BACKENDS
from natib.runtime.bus import RawMessage
from natib.runtime.errors import ConfigError, PermanentError, RetryableError
from natib.runtime.kube import (
    EXPERIMENT_LABEL,
    TRIAL_LABEL,
    KubeResource,
    api_client,
    api_status,
    foreground_delete,
    is_conflict,
    is_gone,
    is_not_found,
    resource_for,
)
from natib.runtime.logging import get_logger

log = get_logger("natib.launcher.kubernetes")

STOP_REASON_ANNOTATION = "natib.io/stop-reason"
STOP_MESSAGE_ANNOTATION = "natib.io/stop-message"
SIDECAR_CONTAINER = "natib-metrics-sidecar"
METRICS_VOLUME = "natib-metrics"
#: Header on the natib sidecar's last message: everything the sidecar saw has been shipped.
H_SIDECAR_END = "Natib-Sidecar-End"
BACKENDS = TRIAL_BACKENDS

_KUBEFLOW_PRIMARY_REPLICAS = ("Master", "Chief", "Launcher")


def default_conditions(kind: str) -> tuple[str, str] | None:
    """Katib's (successCondition, failureCondition) for a job kind, or None when the kind has no default."""
    if kind in ("Job", TRAINJOB_KIND):
        return JOB_SUCCESS_CONDITION, JOB_FAILURE_CONDITION
    if kind in KUBEFLOW_JOB_KINDS:
        return KUBEFLOW_JOB_SUCCESS_CONDITION, KUBEFLOW_JOB_FAILURE_CONDITION
    return None


def default_primary_pod_labels(kind: str) -> dict[str, str]:
    """Katib's primaryPodLabels default for a job kind ({} for a Job or a custom kind)."""
    if kind in KUBEFLOW_JOB_KINDS:
        return dict(KUBEFLOW_PRIMARY_POD_LABELS)
    if kind == TRAINJOB_KIND:
        return dict(TRAINJOB_PRIMARY_POD_LABELS)
    return {}


def pod_templates(run_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every pod template of a run spec: a Job's ``spec.template``, each Kubeflow replica's ``template``, or any
    ``template`` mapping whose ``spec`` has containers (other kinds)."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "template" and isinstance(value, dict) and isinstance(value.get("spec"), dict) \
                        and isinstance(value["spec"].get("containers"), list):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(run_spec.get("spec"))
    return found


def primary_template(run_spec: Mapping[str, Any], container_name: str) -> dict[str, Any] | None:
    """The pod template holding the primary container, preferring the replica Katib picks for Kubeflow jobs."""
    spec = run_spec.get("spec")
    if isinstance(spec, dict):
        for key, replicas in spec.items():
            if key.endswith("ReplicaSpecs") and isinstance(replicas, dict):
                ordered = [r for r in _KUBEFLOW_PRIMARY_REPLICAS if r in replicas] + list(replicas)
                for role in ordered:
                    template = (replicas.get(role) or {}).get("template")
                    if isinstance(template, dict) and _container(template, container_name) is not None:
                        return template
    return next((t for t in pod_templates(run_spec) if _container(t, container_name) is not None), None)


def _container(template: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for c in ((template.get("spec") or {}).get("containers") or []):
        if isinstance(c, dict) and c.get("name") == name:
            return c
    return None


def _set_env(container: dict[str, Any], values: Mapping[str, str]) -> None:
    """Add environment variables the container does not set itself."""
    env = container.setdefault("env", [])
    have = {e.get("name") for e in env if isinstance(e, dict)}
    env.extend({"name": k, "value": v} for k, v in values.items() if k not in have)


@dataclass
class TrialPlan:
    """Everything the launcher needs to run and follow one trial on Kubernetes."""

    manifest: dict[str, Any]
    resource: KubeResource
    namespace: str
    name: str
    success: str
    failure: str
    primary_labels: dict[str, str]
    primary_container: str
    retain: bool
    collector: str
    sidecar_source: str | None = None  # "file" or "tfevent" when a natib sidecar ships the metrics
    custom_container: str | None = None
    prometheus: dict[str, Any] | None = None

    @property
    def pod_selector(self) -> str:
        """The label selector of the trial's primary pod."""
        labels = {TRIAL_LABEL: self.name, **self.primary_labels}
        return ",".join(f"{k}={v}" for k, v in labels.items())


def build_plan(exp: Experiment, cmd: LaunchTrial, *, experiment: str, nats_url: str | None,
               sidecar_image: str) -> TrialPlan:
    """The object to create for a trial and how to follow it; TemplateError names the field that is wrong."""
    manifest = copy.deepcopy(cmd.run_spec)
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    try:
        resource = resource_for(str(api_version or ""), str(kind or ""))
    except ValueError as exc:
        raise TemplateError(f"spec.trialTemplate.trialSpec.{exc}") from exc
    if not resource.group:
        raise TemplateError(f"spec.trialTemplate.trialSpec.apiVersion: a {resource.kind} of the core API group "
                            f"cannot be a trial on Kubernetes (use a batch/v1 Job)")
    template = exp.spec.trial_template
    namespace = exp.metadata.namespace or str((manifest.get("metadata") or {}).get("namespace") or "default")
    meta = manifest.setdefault("metadata", {})
    meta["name"], meta["namespace"] = cmd.trial, namespace
    own = {EXPERIMENT_LABEL: experiment, TRIAL_LABEL: cmd.trial}
    meta["labels"] = {**(meta.get("labels") or {}), **own}
    for pod in pod_templates(manifest):
        pmeta = pod.setdefault("metadata", {})
        pmeta["labels"] = {**(pmeta.get("labels") or {}), **own}

    defaults = default_conditions(resource.kind)
    success = (template.success_condition if template else "") or (defaults[0] if defaults else "")
    failure = (template.failure_condition if template else "") or (defaults[1] if defaults else "")
    for field_name, text in (("successCondition", success), ("failureCondition", failure)):
        if not text:
            raise TemplateError(f"spec.trialTemplate.{field_name}: required for kind {resource.kind}")
        try:
            gjson.compile_path(text)
        except gjson.GJSONError as exc:
            raise TemplateError(f"spec.trialTemplate.{field_name}: {exc}") from exc
    labels = dict(template.primary_pod_labels) if template and template.primary_pod_labels is not None \
        else default_primary_pod_labels(resource.kind)

    primary_name = cmd.primary_container_name
    if not primary_name:
        raise TemplateError("spec.trialTemplate.primaryContainerName: required")
    pod = primary_template(manifest, primary_name)
    # Outside a pod template (an Argo step, say) the container still gets the environment, but nothing is added.
    container = _container(pod, primary_name) if pod is not None else find_primary_container(manifest, primary_name)
    assert container is not None
    env = {"KATIB_TRIAL_NAME": cmd.trial, "NATIB_TRIAL_NAME": cmd.trial, "NATIB_EXPERIMENT": experiment,
           "NATIB_ATTEMPT": "1"}
    if nats_url:
        env["NATS_URL"] = nats_url
    _set_env(container, env)

    kind_name = collector_kind(cmd.metrics_collector)
    plan = TrialPlan(manifest=manifest, resource=resource, namespace=namespace, name=cmd.trial, success=success,
                     failure=failure, primary_labels=labels, primary_container=primary_name,
                     retain=bool(template.retain) if template else False, collector=kind_name)
    mount = mount_path(cmd.metrics_collector)
    if pod is None:
        if kind_name in ("File", "TensorFlowEvent", "Custom"):
            raise TemplateError(f"spec.metricsCollectorSpec.collector.kind: {kind_name} needs the primary container "
                                f"{primary_name} in a pod template (spec.template.spec.containers), "
                                f"and {resource.kind} has none")
        if kind_name == "PrometheusMetric":
            plan.prometheus = copy.deepcopy(dict(cmd.metrics_collector or {}))
        return plan
    pod_spec = pod.setdefault("spec", {})
    if mount is not None:
        path, path_kind = mount
        directory = path.rstrip("/") if path_kind == "Directory" else (path.rstrip("/").rsplit("/", 1)[0] or "/")
        volumes = pod_spec.setdefault("volumes", [])
        if not any(v.get("name") == METRICS_VOLUME for v in volumes):
            volumes.append({"name": METRICS_VOLUME, "emptyDir": {}})
        volume_mount = {"name": METRICS_VOLUME, "mountPath": directory}
        mounts = container.setdefault("volumeMounts", [])
        if not any(m.get("name") == METRICS_VOLUME for m in mounts):
            mounts.append(dict(volume_mount))
        if kind_name in ("File", "TensorFlowEvent"):
            plan.sidecar_source = "file" if kind_name == "File" else "tfevent"
            args = ["sidecar", "--experiment", experiment, "--trial", cmd.trial, "--collector", kind_name,
                    "--path", path, "--path-kind", path_kind]
            for name in cmd.metric_names:
                args += ["--metric", name]
            sidecar: dict[str, Any] = {
                "name": SIDECAR_CONTAINER, "image": sidecar_image, "command": ["natib"], "args": args,
                "restartPolicy": "Always", "volumeMounts": [dict(volume_mount)],
                "env": [{"name": "NATS_URL", "value": nats_url}] if nats_url else [],
            }
            pod_spec.setdefault("initContainers", []).append(sidecar)
    if kind_name == "Custom":
        custom = copy.deepcopy(((cmd.metrics_collector or {}).get("collector") or {}).get("customCollector") or {})
        if not custom.get("name") or not custom.get("image"):
            raise TemplateError("spec.metricsCollectorSpec.collector.customCollector: needs a name and an image")
        custom["restartPolicy"] = "Always"
        if mount is not None:
            custom.setdefault("volumeMounts", []).append(dict(volume_mount))
        pod_spec.setdefault("initContainers", []).append(custom)
        plan.custom_container = str(custom["name"])
    if kind_name == "PrometheusMetric":
        plan.prometheus = copy.deepcopy(dict(cmd.metrics_collector or {}))
    return plan


@dataclass
class _Follow:
    """One followed trial: shipping position, the lock that serialises publishing, the end once known."""

    experiment: str
    plan: TrialPlan
    pos: Position
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pod: dict[str, Any] | None = None  # the newest started primary pod
    pods: list[dict[str, Any]] = field(default_factory=list)  # every started primary pod, oldest first
    pod_seen: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class KubernetesLauncher:
    """Runs trials as Kubernetes objects and streams their output and metrics to NATIB_LOGS."""

    kind = KIND
    #: seconds each watch request lasts before it is re-opened (the server ends it)
    watch_seconds = 60
    #: seconds between looks for the primary pod, and for its log after it ended
    pod_poll_seconds = 0.5
    #: seconds the launcher waits for the sidecar's last metrics after the trial ended
    sidecar_grace_seconds = 10.0
    #: seconds a finished trial's log streams get to deliver their last bytes
    log_grace_seconds = 5.0
    create_attempts = 5

    def __init__(self, ctx: Context, host: str | None = None) -> None:
        self.ctx = ctx
        self.host = host
        self._api: ApiClient | None = None
        self._specs: dict[str, Experiment] = {}
        self._following: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def api(self) -> ApiClient:
        """The API client, made on first use."""
        if self._api is None:
            self._api = await api_client(self.host)
        return self._api

    async def close(self) -> None:
        """Close the API client."""
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def run(self) -> None:
        """Consume launcher commands until stopped."""
        try:
            await self.ctx.bus.consume(
                subjects.COMMANDS_STREAM, KIND, subjects.commands_for(KIND), self.on_command, stop=self.ctx.stop,
                concurrency=512, ack_wait=self.ctx.settings.ack_wait, drain_timeout=self.ctx.settings.drain_timeout,
            )
        finally:
            await self.close()

    async def on_command(self, raw: RawMessage) -> None:
        """Dispatch one command."""
        await dispatch(raw, self.launch, self.stop)

    async def experiment(self, name: str) -> Experiment | None:
        """The experiment's spec, read once from its creation event."""
        if name not in self._specs:
            exp = await experiment_spec(self.ctx, name)
            if exp is None:
                return None
            self._specs[name] = exp
        return self._specs[name]

    def _nats_url(self) -> str | None:
        url = self.ctx.settings.trial_nats_url or self.ctx.settings.nats_url
        if url:
            return url
        connected = getattr(self.ctx.bus.nc, "connected_url", None)
        return connected.geturl() if connected is not None else None

    async def _ended(self, experiment: str, trial: str) -> bool:
        """The trial's end marker is published, or its launch failed."""
        last = await self.ctx.bus.get_last(subjects.LOGS_STREAM, subjects.trial_log(experiment, trial))
        if last is not None and last.headers.get(H_EOF):
            return True
        failed = await self.ctx.bus.get_last(subjects.EVENTS_STREAM,
                                             subjects.trial_event(experiment, trial, "trial.failed"))
        return failed is not None

    # -- launch --------------------------------------------------------------------------------

    async def launch(self, experiment: str, cmd: LaunchTrial) -> None:
        """Create (or adopt) the trial's object, follow it to its end and publish its output and end marker."""
        if await self._ended(experiment, cmd.trial):
            await self._cleanup(experiment, cmd)
            return
        lock = self._locks.setdefault(cmd.trial, asyncio.Lock())
        async with lock:
            following = self._following.get(cmd.trial)
            if following is None:
                if await self._ended(experiment, cmd.trial):
                    return
                plan = await self._plan(experiment, cmd)
                if plan is None or not await self._create(experiment, plan):
                    return
                if await self._ended(experiment, cmd.trial):  # stopped while it was being created
                    await self._delete(plan)
                    return
                done = self._following[cmd.trial] = asyncio.Event()
        if following is not None:
            await following.wait()
            return
        try:
            await self._announce_start(experiment, plan)
            pos = await self._published_position(experiment, cmd.trial)
            await self._follow(_Follow(experiment, plan, pos))
        finally:
            self._following.pop(cmd.trial, None)
            self._locks.pop(cmd.trial, None)
            done.set()

    async def _cleanup(self, experiment: str, cmd: LaunchTrial) -> None:
        """A launch of a trial that has ended: delete its object unless retained (a launcher may have died
        between publishing the end and deleting)."""
        exp = await self.experiment(experiment)
        if exp is None or (exp.spec.trial_template is not None and exp.spec.trial_template.retain):
            return
        try:
            res = resource_for(str(cmd.run_spec.get("apiVersion") or ""), str(cmd.run_spec.get("kind") or ""))
            await self._stop_object(experiment, StopTrial(trial=cmd.trial, reason="Finished"), res,
                                    exp.metadata.namespace or "default", annotate=False)
        except (ValueError, ConfigError, RetryableError) as exc:
            log.warning("trial_cleanup_failed", trial=cmd.trial, error=str(exc))

    async def _plan(self, experiment: str, cmd: LaunchTrial) -> TrialPlan | None:
        exp = await self.experiment(experiment)
        if exp is None:
            raise RetryableError(f"experiment {experiment} has no creation event yet")
        try:
            return build_plan(exp, cmd, experiment=experiment, nats_url=self._nats_url(),
                              sidecar_image=self.ctx.settings.sidecar_image)
        except TemplateError as exc:
            await self._fail(experiment, cmd.trial, str(exc))
            return None

    async def _create(self, experiment: str, plan: TrialPlan) -> bool:
        """Create the object, or adopt the one a retried create already made; False if the trial failed."""
        try:
            api = await self.api()
        except ConfigError as exc:
            await self._fail(experiment, plan.name, str(exc))
            return False
        custom = client.CustomObjectsApi(api)
        res = plan.resource
        delay = 0.2
        retried = False
        for attempt in range(1, self.create_attempts + 1):
            try:
                await custom.create_namespaced_custom_object(res.group, res.version, plan.namespace, res.plural,
                                                             plan.manifest)
                log.info("trial_object_created", experiment=experiment, trial=plan.name, kind=res.kind,
                         namespace=plan.namespace)
                return True
            except ApiException as exc:
                if is_conflict(exc):
                    return await self._adopt(experiment, plan, retried)
                status = api_status(exc) or 0
                if status < 500 and status != 429:
                    await self._fail(experiment, plan.name, f"cannot create {res.kind} {plan.namespace}/{plan.name}: "
                                                            f"{_api_message(exc)}")
                    return False
                log.warning("trial_create_retry", trial=plan.name, attempt=attempt, status=status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("trial_create_retry", trial=plan.name, attempt=attempt, error=str(exc))
            retried = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise RetryableError(f"cannot create {res.kind} {plan.namespace}/{plan.name}: the API server keeps failing")

    async def _adopt(self, experiment: str, plan: TrialPlan, retried: bool) -> bool:
        """A 409: the object is this trial's (from an earlier try or launcher) unless its trial label says not."""
        api = await self.api()
        try:
            existing = await _get_object(client.CustomObjectsApi(api), plan.resource, plan.namespace, plan.name)
        except ApiException as exc:
            if is_not_found(exc):  # deleted in between: the next delivery creates it again
                raise RetryableError(f"{plan.resource.kind} {plan.namespace}/{plan.name} vanished after 409") from exc
            raise
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if labels.get(TRIAL_LABEL) != plan.name or labels.get(EXPERIMENT_LABEL) != experiment:
            await self._fail(experiment, plan.name,
                             f"cannot create {plan.resource.kind} {plan.namespace}/{plan.name}: an object of that "
                             f"name already exists and is not this trial's (label {TRIAL_LABEL}="
                             f"{labels.get(TRIAL_LABEL)!r})")
            return False
        log.info("trial_object_adopted", experiment=experiment, trial=plan.name, after_retry=retried)
        return True

    async def _announce_start(self, experiment: str, plan: TrialPlan) -> None:
        await self.ctx.store.append_fact(
            experiment, subjects.trial_event(experiment, plan.name, "trial.started"),
            ev.TrialStarted(trial=plan.name, attempt=1, host=f"{plan.resource.kind}/{plan.namespace}/{plan.name}"),
            msg_id=f"{plan.name}:started:1",
        )

    async def _published_position(self, experiment: str, trial: str) -> Position:
        pos = Position()
        for source in ("out", "prom", "custom"):
            last = await self.ctx.bus.get_last(subjects.LOGS_STREAM, subjects.trial_log(experiment, trial, source))
            if last is None or last.headers.get(H_CHUNK) is None:
                continue
            pos.chunk = max(pos.chunk, int(last.headers.get(H_CHUNK, "-1")) + 1)
            if not last.headers.get(H_EOF):
                pos.offsets[source] = int(last.headers.get(H_OFFSET, "0"))
        return pos

    async def _fail(self, experiment: str, trial: str, message: str) -> None:
        log.warning("trial_launch_failed", experiment=experiment, trial=trial, error=message)
        await self.ctx.store.append_fact(
            experiment, subjects.trial_event(experiment, trial, "trial.failed"),
            ev.TrialFailed(trial=trial, reason="LaunchFailed", message=message),
            msg_id=f"{trial}:launch-failed",
        )

    # -- follow --------------------------------------------------------------------------------

    async def _follow(self, f: _Follow) -> None:
        plan = f.plan
        tasks = [asyncio.create_task(self._follow_pods(f))]
        logs = [asyncio.create_task(self._follow_log(f, plan.primary_container, "out"))]
        if plan.custom_container:
            logs.append(asyncio.create_task(self._follow_log(f, plan.custom_container, "custom")))
        prom = None
        if plan.prometheus is not None:
            prom = asyncio.create_task(self._scrape(f))
        try:
            verdict, obj, detail = await self._await_end(plan)
            f.ended.set()
            if f.pod is None:  # it may have run between two looks
                await self._look_for_pod(f)
            log.info("trial_object_ended", experiment=f.experiment, trial=plan.name, verdict=verdict,
                     reason=detail.get("reason"))
            await _wait_then_cancel(logs, self.log_grace_seconds if f.pod is not None else 0.0)
            if prom is not None:
                prom.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prom
                if f.pod is not None:
                    await self._scrape_once(f, force=True)
            if plan.sidecar_source and f.pod is not None and verdict in ("succeeded", "failed"):
                await self._await_sidecar(f)
            exit_code: int | None
            stop = _stop_annotation(obj)
            if verdict == "succeeded":
                exit_code = 0
            elif verdict == "failed":
                exit_code = _exit_code(f.pod, plan.primary_container) or 1
            else:
                exit_code = None
            await self._publish_end(f, exit_code, stop)
        finally:
            for task in [*tasks, *logs] + ([prom] if prom else []):
                task.cancel()
            for task in [*tasks, *logs] + ([prom] if prom else []):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not plan.retain and verdict != "deleted":
            await self._delete(plan)

    async def _await_end(self, plan: TrialPlan) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
        """Watch the object until a condition matches, it is stopped, or it is gone: (verdict, object, match)."""
        api = await self.api()
        custom = client.CustomObjectsApi(api)
        res = plan.resource
        backoff = 0.2
        while True:
            try:
                obj = await _get_object(custom, res, plan.namespace, plan.name)
            except ApiException as exc:
                if is_not_found(exc):
                    return "deleted", None, {}
                log.warning("trial_object_read_failed", trial=plan.name, status=api_status(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("trial_object_read_failed", trial=plan.name, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            verdict = judge(plan, obj)
            if verdict is not None:
                return verdict
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            w = watch.Watch()
            try:
                kwargs: dict[str, Any] = {
                    "field_selector": f"metadata.name={plan.name}", "timeout_seconds": self.watch_seconds,
                    "_request_timeout": self.watch_seconds + 30,
                }
                if rv:
                    kwargs["resource_version"] = rv
                async for event in w.stream(custom.list_namespaced_custom_object, res.group, res.version,
                                            plan.namespace, res.plural, **kwargs):
                    seen = event.get("raw_object") or {}
                    if (seen.get("metadata") or {}).get("name") != plan.name:
                        continue
                    if event.get("type") == "DELETED":
                        verdict = judge(plan, seen)
                        return verdict if verdict is not None else ("deleted", seen, {})
                    verdict = judge(plan, seen)
                    if verdict is not None:
                        return verdict
                backoff = 0.2
            except ApiException as exc:
                if not is_gone(exc):
                    log.warning("trial_watch_failed", trial=plan.name, status=api_status(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                log.warning("trial_watch_failed", trial=plan.name, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                w.stop()
                with contextlib.suppress(Exception):
                    await w.close()

    async def _follow_pods(self, f: _Follow) -> None:
        """Keep ``f.pod`` up to date with the primary pod (its IP and container states)."""
        while True:
            await self._look_for_pod(f)
            await asyncio.sleep(self.pod_poll_seconds)

    async def _look_for_pod(self, f: _Follow) -> None:
        """Set ``f.pod`` to the newest started pod matching the trial label and primaryPodLabels, if any."""
        core = client.CoreV1Api(await self.api())
        try:
            pods = await core.list_namespaced_pod(f.plan.namespace, label_selector=f.plan.pod_selector,
                                                  _preload_content=False)
            items = json.loads(await pods.read()).get("items") or []
        except (TimeoutError, ApiException, aiohttp.ClientError, ValueError) as exc:
            log.debug("trial_pods_unreadable", trial=f.plan.name, error=str(exc))
            return
        started = [p for p in items if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
        if started:
            started.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
            known = {(p.get("metadata") or {}).get("name") for p in f.pods}
            f.pods.extend(p for p in started if (p.get("metadata") or {}).get("name") not in known)
            f.pod = started[-1]
            f.pod_seen.set()

    async def _follow_log(self, f: _Follow, container: str, source: str) -> None:
        """Ship one container's log, from every pod the trial gets in turn, as ``source``."""
        core = client.CoreV1Api(await self.api())
        followed: set[str] = set()
        failures: dict[str, int] = {}
        skip = f.pos.offsets.get(source, 0)  # after a restart: what was shipped already, across the pods in order
        shipped = 0
        while True:
            await f.pod_seen.wait()
            name = next((n for p in f.pods if (n := (p.get("metadata") or {}).get("name")) and n not in followed),
                        None)
            if name is None:
                if f.ended.is_set():
                    return
                await asyncio.sleep(self.pod_poll_seconds)
                continue
            try:
                resp = await core.read_namespaced_pod_log(name, f.plan.namespace, container=container, follow=True,
                                                          _preload_content=False)
            except ApiException as exc:
                log.debug("trial_log_unavailable", trial=f.plan.name, pod=name, status=api_status(exc))
                failures[name] = failures.get(name, 0) + 1
                if failures[name] >= 5 or f.ended.is_set():  # e.g. a pod that failed before the container ran
                    followed.add(name)
                await asyncio.sleep(self.pod_poll_seconds)
                continue
            followed.add(name)
            pod_start = shipped
            try:
                async for data in resp.content.iter_any():
                    if skip:
                        drop = min(skip, len(data))
                        data, skip, shipped = data[drop:], skip - drop, shipped + drop
                    if data:
                        shipped += len(data)
                        await self._publish(f, Chunk(source, bytes(data), {H_OFFSET: str(shipped)}))
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.debug("trial_log_interrupted", trial=f.plan.name, pod=name, error=str(exc))
                followed.discard(name)  # the stream broke: read this pod's log again, skipping what was shipped
                skip, shipped = shipped - pod_start, pod_start
            finally:
                resp.release()

    async def _scrape(self, f: _Follow) -> None:
        await f.pod_seen.wait()
        while True:
            await self._scrape_once(f)
            await asyncio.sleep(0.25)

    async def _scrape_once(self, f: _Follow, *, force: bool = False) -> None:
        ip = ((f.pod or {}).get("status") or {}).get("podIP")
        if not ip or f.plan.prometheus is None:
            return
        source = getattr(f, "_prom", None)
        if source is None:
            spec = copy.deepcopy(f.plan.prometheus)
            spec.setdefault("source", {}).setdefault("httpGet", {})["host"] = ip
            source = PrometheusSource(spec, self._metric_names(f))
            f._prom = source  # type: ignore[attr-defined]
        for chunk in await asyncio.to_thread(source.poll, force=force):
            await self._publish(f, chunk)

    def _metric_names(self, f: _Follow) -> list[str]:
        exp = self._specs.get(f.experiment)
        return exp.spec.metric_names() if exp is not None else []

    async def _await_sidecar(self, f: _Follow) -> None:
        """Wait (a bounded time) for the natib sidecar's last message, so the end marker comes after it."""
        assert f.plan.sidecar_source is not None
        subject = subjects.trial_log(f.experiment, f.plan.name, f.plan.sidecar_source)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sidecar_grace_seconds
        while loop.time() < deadline:
            last = await self.ctx.bus.get_last(subjects.LOGS_STREAM, subject)
            if last is not None and last.headers.get(H_SIDECAR_END):
                return
            await asyncio.sleep(0.1)
        log.warning("trial_sidecar_silent", trial=f.plan.name,
                    detail=f"no end marker from {SIDECAR_CONTAINER} within {self.sidecar_grace_seconds} s")

    async def _publish(self, f: _Follow, chunk: Chunk) -> None:
        async with f.lock:
            await self.ctx.bus.publish(
                subjects.trial_log(f.experiment, f.plan.name, chunk.source), chunk.data,
                msg_id=f"{f.plan.name}:1:{f.pos.chunk}",
                headers={H_ATTEMPT: "1", H_CHUNK: str(f.pos.chunk), **chunk.headers},
            )
            f.pos.chunk += 1
            if H_OFFSET in chunk.headers:
                f.pos.offsets[chunk.source] = int(chunk.headers[H_OFFSET])

    async def _publish_end(self, f: _Follow, exit_code: int | None, stop: tuple[str, str] | None) -> None:
        async with f.lock:
            await self._end_marker(f.experiment, f.plan.name, f.pos.chunk, exit_code, stop)

    async def _end_marker(self, experiment: str, trial: str, chunk: int, exit_code: int | None,
                          stop: tuple[str, str] | None) -> None:
        headers = {H_ATTEMPT: "1", H_CHUNK: str(chunk), H_EOF: "1", H_OFFSET: "0"}
        if exit_code is not None:
            headers[H_EXIT] = str(exit_code)
        if stop is not None:
            headers[H_STOP], headers[H_STOP_MESSAGE] = stop[0], stop[1][:500]
        await self.ctx.bus.publish(subjects.trial_log(experiment, trial), b"", headers=headers,
                                   msg_id=f"{trial}:1:{chunk}:eof")

    async def _delete(self, plan: TrialPlan) -> None:
        """Delete the trial's object and, first, its pods (propagationPolicy Foreground); gone already is fine."""
        custom = client.CustomObjectsApi(await self.api())
        res = plan.resource
        try:
            await custom.delete_namespaced_custom_object(res.group, res.version, plan.namespace, res.plural,
                                                         plan.name, body=foreground_delete())
            log.info("trial_object_deleted", trial=plan.name, kind=res.kind)
        except ApiException as exc:
            if not is_not_found(exc):
                raise RetryableError(f"cannot delete {res.kind} {plan.namespace}/{plan.name}: "
                                     f"{_api_message(exc)}") from exc

    # -- stop ----------------------------------------------------------------------------------

    async def stop(self, experiment: str, cmd: StopTrial) -> None:
        """Record why on the object, delete it (Foreground), and make sure the trial's end is published."""
        exp = await self.experiment(experiment)
        trial_spec = (exp.spec.trial_template.trial_spec if exp and exp.spec.trial_template else None) or {}
        try:
            res = resource_for(str(trial_spec.get("apiVersion") or ""), str(trial_spec.get("kind") or ""))
        except ValueError:
            res = None
        namespace = (exp.metadata.namespace if exp else None) or "default"
        ended = await self._ended(experiment, cmd.trial)
        if res is not None and (not ended or cmd.reason == "Deleted"):
            await self._stop_object(experiment, cmd, res, namespace, annotate=not ended)
        if ended:
            return
        following = self._following.get(cmd.trial)
        if following is not None:
            await following.wait()  # the follower sees the annotation and publishes the end itself
            return
        chunk = (await self._published_position(experiment, cmd.trial)).chunk
        await self._end_marker(experiment, cmd.trial, chunk, None, (cmd.reason, cmd.message))

    async def _stop_object(self, experiment: str, cmd: StopTrial, res: KubeResource, namespace: str, *,
                           annotate: bool) -> None:
        """Annotate the trial's object with the stop reason and delete it (Foreground), if it is this trial's."""
        custom = client.CustomObjectsApi(await self.api())
        try:
            existing = await _get_object(custom, res, namespace, cmd.trial)
            labels = (existing.get("metadata") or {}).get("labels") or {}
            if labels.get(TRIAL_LABEL) != cmd.trial or labels.get(EXPERIMENT_LABEL) != experiment:
                log.warning("trial_object_not_ours", trial=cmd.trial, kind=res.kind, namespace=namespace,
                            detail=f"left alone: its {TRIAL_LABEL} label is {labels.get(TRIAL_LABEL)!r}")
                return
            if annotate:
                patch = {"metadata": {"annotations": {STOP_REASON_ANNOTATION: cmd.reason,
                                                      STOP_MESSAGE_ANNOTATION: cmd.message[:500]}}}
                await custom.patch_namespaced_custom_object(res.group, res.version, namespace, res.plural,
                                                            cmd.trial, patch)
            await custom.delete_namespaced_custom_object(res.group, res.version, namespace, res.plural, cmd.trial,
                                                         body=foreground_delete())
            log.info("trial_stopping", experiment=experiment, trial=cmd.trial, reason=cmd.reason)
        except ApiException as exc:
            if not is_not_found(exc):
                raise RetryableError(f"cannot stop {res.kind} {namespace}/{cmd.trial}: {_api_message(exc)}") from exc


def judge(plan: TrialPlan, obj: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """Katib's order: failureCondition first, then successCondition; then a stop recorded by natib."""
    failed = gjson.matches(obj, plan.failure)
    if failed is not None:
        return "failed", dict(obj), failed
    succeeded = gjson.matches(obj, plan.success)
    if succeeded is not None:
        return "succeeded", dict(obj), succeeded
    if _stop_annotation(obj) is not None:
        return "stopped", dict(obj), {}
    return None


def _stop_annotation(obj: Mapping[str, Any] | None) -> tuple[str, str] | None:
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    reason = annotations.get(STOP_REASON_ANNOTATION)
    return (str(reason), str(annotations.get(STOP_MESSAGE_ANNOTATION, ""))) if reason else None


def _exit_code(pod: Mapping[str, Any] | None, container: str) -> int | None:
    """The primary container's exit code from the pod's status, when it has terminated."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            terminated = (status.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            return int(code) if isinstance(code, int) else None
    return None


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"{exc.status} {exc.reason or ''}".strip() + (f": {message}" if message else "")


async def _get_object(custom: client.CustomObjectsApi, res: KubeResource, namespace: str,
                      name: str) -> dict[str, Any]:
    return await custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
        res.group, res.version, namespace, res.plural, name)


async def _wait_then_cancel(tasks: list[asyncio.Task[None]], grace: float) -> None:
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()


async def experiment_spec(ctx: Context, name: str) -> Experiment | None:
    """An experiment's defaulted spec from its creation event, or None when it has none."""
    raw = await ctx.bus.get_next(subjects.EVENTS_STREAM, 1, subjects.controller_event(name, "experiment.created"))
    env = codec.decode(raw.data) if raw is not None else None
    if env is None or not isinstance(env.body, ev.ExperimentCreated):
        return None
    return env.body.experiment


class LauncherRouter:
    """The launcher actor: sends each experiment's commands to its backend (annotation natib.io/launcher,
    else NATIB_LAUNCHER)."""

    kind = KIND

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.local = LocalLauncher(ctx)
        self._kube: KubernetesLauncher | None = None
        self._backends: dict[str, str] = {}

    @property
    def kubernetes(self) -> KubernetesLauncher:
        """The Kubernetes backend (made on first use)."""
        if self._kube is None:
            self._kube = KubernetesLauncher(self.ctx)
        return self._kube

    async def run(self) -> None:
        """Consume launcher commands until stopped."""
        try:
            await self.ctx.bus.consume(
                subjects.COMMANDS_STREAM, KIND, subjects.commands_for(KIND), self.on_command, stop=self.ctx.stop,
                concurrency=512, ack_wait=self.ctx.settings.ack_wait, drain_timeout=self.ctx.settings.drain_timeout,
            )
        finally:
            if self._kube is not None:
                await self._kube.close()

    async def backend(self, experiment: str) -> str:
        """``local`` or ``kubernetes`` for this experiment; PermanentError names a bad annotation."""
        if experiment not in self._backends:
            exp = await experiment_spec(self.ctx, experiment)
            annotations = (exp.metadata.annotations or {}) if exp is not None else {}
            raw = annotations.get(LAUNCHER_ANNOTATION)
            if raw is None:
                choice = self.ctx.settings.launcher
            elif raw.strip().lower() in BACKENDS:
                choice = raw.strip().lower()
            else:
                raise PermanentError(f"metadata.annotations[{LAUNCHER_ANNOTATION}]: expected one of "
                                     f"{', '.join(BACKENDS)}, got {raw!r}")
            if exp is None:
                return choice  # not cached: the creation event may just not be readable yet
            self._backends[experiment] = choice
        return self._backends[experiment]

    async def on_command(self, raw: RawMessage) -> None:
        """Route one command to its experiment's backend."""
        await dispatch(raw, self.launch, self.stop)

    async def launch(self, experiment: str, cmd: LaunchTrial) -> None:
        """Run the trial on its experiment's backend (a bad annotation fails the trial, naming it)."""
        try:
            choice = await self.backend(experiment)
        except PermanentError as exc:
            await self.kubernetes._fail(experiment, cmd.trial, str(exc))
            return
        await (self.kubernetes if choice == "kubernetes" else self.local).launch(experiment, cmd)

    async def stop(self, experiment: str, cmd: StopTrial) -> None:
        """Stop the trial on its experiment's backend."""
        try:
            choice = await self.backend(experiment)
        except PermanentError:
            choice = self.ctx.settings.launcher
        await (self.kubernetes if choice == "kubernetes" else self.local).stop(experiment, cmd)


__all__ = [
    "LAUNCHER_ANNOTATION",
    "SIDECAR_CONTAINER",
    "KubernetesLauncher",
    "LauncherRouter",
    "TrialPlan",
    "build_plan",
    "default_conditions",
    "judge",
    "pod_templates",
]
