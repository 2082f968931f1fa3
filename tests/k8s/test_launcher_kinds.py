"""Trial kinds (Kubeflow jobs, custom resources) and metrics collectors on Kubernetes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from aiohttp import web

from natib.actors.launcher.kubernetes import (
    LAUNCHER_ANNOTATION,
    SIDECAR_CONTAINER,
    LauncherRouter,
    build_plan,
    default_conditions,
    pod_templates,
)
from natib.actors.launcher.template import TemplateError
from natib.messages import events as ev
from natib.messages.spec import apply_defaults, load_experiment
from natib.runtime.kube import EXPERIMENT_LABEL, TRIAL_LABEL
from tests.conftest import eventually
from tests.k8s.conftest import LauncherHarness, job_experiment, launch_command
from tests.k8s.emulator import Emulator, JobController

NS = "default"
NATIB = str(Path(sys.executable).parent / "natib")
K8S_VERSION = "1.33"  # native sidecars (initContainers with restartPolicy: Always) are GA since 1.33


def _container(name: str = "training-container") -> dict[str, Any]:
    return {"name": name, "image": "docker.io/example/train:1", "command": ["python", "train.py"]}


def pytorchjob() -> dict[str, Any]:
    def replica(n: int) -> dict[str, Any]:
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [_container()]}}}

    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(2)}}}


def tfjob() -> dict[str, Any]:
    def replica(n: int) -> dict[str, Any]:
        return {"replicas": n, "template": {"spec": {"containers": [_container()]}}}

    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "spec": {"tfReplicaSpecs": {"Chief": replica(1), "Worker": replica(2), "PS": replica(1)}}}


@pytest.mark.parametrize("maker", [pytorchjob, tfjob], ids=["PyTorchJob", "TFJob"])
async def test_kubeflow_job_succeeds_on_its_own_condition(harness: LauncherHarness, kube: Emulator,
                                                          jobs: JobController, maker: Any) -> None:
    spec = maker()
    plural = spec["kind"].lower() + "s"
    exp = await harness.create_experiment(job_experiment("kflow", trial_spec=spec))
    task = harness.launch(exp, "kflow-t1")
    obj = await jobs.wait_for("kubeflow.org/v1", spec["kind"], NS, "kflow-t1")
    assert obj["metadata"]["labels"][TRIAL_LABEL] == "kflow-t1"
    templates = pod_templates(obj)
    assert len(templates) == len(next(iter(obj["spec"].values())))
    for template in templates:
        assert template["metadata"]["labels"] == {EXPERIMENT_LABEL: "kflow", TRIAL_LABEL: "kflow-t1"}

    pod = await jobs.start(obj)  # the master replica's pod, labelled training.kubeflow.org/job-role=master
    # A worker pod with the same trial label must not be mistaken for the primary pod.
    worker = dict(pod, metadata={**pod["metadata"], "name": "kflow-t1-worker-0",
                                 "labels": {**pod["metadata"]["labels"], "training.kubeflow.org/job-role": "worker"}})
    worker.pop("status", None)
    await jobs._call("POST", f"/api/v1/namespaces/{NS}/pods", worker)
    kube.log(NS, "kflow-t1-worker-0", "training-container").write("accuracy=0.01\n")
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.88\n")
    await jobs.set_status(obj, {"conditions": [{"type": "Complete", "status": "True"}]})
    await asyncio.sleep(0.5)
    assert not task.done(), "Complete is a Job condition, not a Kubeflow one"
    await jobs.succeed(obj)  # Succeeded
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kflow", "kflow-t1")
    assert isinstance(outcome, ev.TrialSucceeded), outcome
    assert [m.latest for m in outcome.observation if m.name == "accuracy"] == ["0.88"]
    assert ("kflow-t1" not in {n for (r, _ns, n), o in kube.objects.items() if r.plural == plural and not o.deleted})


async def test_custom_kind_with_its_own_conditions(harness: LauncherHarness, kube: Emulator,
                                                   jobs: JobController) -> None:
    kube.register("example.com/v1", "trainruns", "TrainRun")
    spec = {"apiVersion": "example.com/v1", "kind": "TrainRun",
            "spec": {"template": {"spec": {"containers": [_container()]}}}}
    exp = await harness.create_experiment(job_experiment(
        "kcustom", trial_spec=spec, successCondition='status.[@this].#(phase=="Succeeded")#',
        failureCondition='status.[@this].#(phase=="Failed")#'))
    task = harness.launch(exp, "kcustom-t1")
    obj = await jobs.wait_for("example.com/v1", "TrainRun", NS, "kcustom-t1")
    assert obj["spec"]["template"]["metadata"]["labels"][TRIAL_LABEL] == "kcustom-t1"
    await jobs.start(obj)
    await jobs.set_status(obj, {"conditions": [{"type": "Complete", "status": "True"}], "phase": "Running"})
    await asyncio.sleep(0.5)
    assert not task.done()
    await jobs.set_status(obj, {"phase": "Succeeded"})
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kcustom", "kcustom-t1")
    assert isinstance(outcome, ev.TrialMetricsUnavailable), "succeeded, but the pod printed no metrics"


async def test_custom_kind_failure_condition(harness: LauncherHarness, kube: Emulator, jobs: JobController) -> None:
    kube.register("example.com/v1", "trainruns", "TrainRun")
    spec = {"apiVersion": "example.com/v1", "kind": "TrainRun",
            "spec": {"template": {"spec": {"containers": [_container()]}}}}
    exp = await harness.create_experiment(job_experiment(
        "kcfail", trial_spec=spec, successCondition='status.[@this].#(phase=="Succeeded")#',
        failureCondition='status.[@this].#(phase=="Failed")#'))
    task = harness.launch(exp, "kcfail-t1")
    obj = await jobs.wait_for("example.com/v1", "TrainRun", NS, "kcfail-t1")
    await jobs.set_status(obj, {"phase": "Failed"})
    await asyncio.wait_for(task, 15)
    assert isinstance(await harness.outcome("kcfail", "kcfail-t1"), ev.TrialFailed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_prometheus_metrics_are_scraped_at_the_pod_ip(harness: LauncherHarness, kube: Emulator,
                                                            jobs: JobController) -> None:
    port = _free_port()
    value = {"accuracy": "0.5"}

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=f"# TYPE accuracy gauge\naccuracy {value['accuracy']}\nloss 0.2\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        exp = await harness.create_experiment(job_experiment("kprom", collector={
            "collector": {"kind": "PrometheusMetric"}, "source": {"httpGet": {"port": port, "path": "/metrics"}}}))
        task = harness.launch(exp, "kprom-t1")
        job = await jobs.wait_for("batch/v1", "Job", NS, "kprom-t1")
        await jobs.start(job, pod_ip="127.0.0.1")

        async def reported(v: str) -> bool:
            return any(isinstance(e, ev.MetricReported) and e.name == "accuracy" and e.value == v
                       for e in await harness.trial_events("kprom", "kprom-t1"))

        await eventually(lambda: reported("0.5"), timeout=10)
        value["accuracy"] = "0.75"
        await eventually(lambda: reported("0.75"), timeout=10)
        await jobs.succeed(job)
        await asyncio.wait_for(task, 15)
    finally:
        await runner.cleanup()
    outcome = await harness.outcome("kprom", "kprom-t1")
    assert isinstance(outcome, ev.TrialSucceeded)
    assert {m.name: m.max for m in outcome.observation}["accuracy"] == "0.75"


async def test_file_metrics_through_the_natib_sidecar(harness: LauncherHarness, kube: Emulator, jobs: JobController,
                                                      tmp_path: Path, nats_server: Any) -> None:
    metrics = tmp_path / "mnt" / "metrics.log"
    metrics.parent.mkdir()
    exp = await harness.create_experiment(job_experiment("kfile", collector={
        "collector": {"kind": "File"},
        "source": {"fileSystemPath": {"path": str(metrics), "kind": "File", "format": "TEXT"}}}))
    task = harness.launch(exp, "kfile-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kfile-t1")
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["volumes"] == [{"name": "natib-metrics", "emptyDir": {}}]
    primary = pod_spec["containers"][0]
    assert primary["volumeMounts"] == [{"name": "natib-metrics", "mountPath": str(metrics.parent)}]
    (sidecar,) = pod_spec["initContainers"]
    assert sidecar["name"] == SIDECAR_CONTAINER and sidecar["restartPolicy"] == "Always"
    assert sidecar["volumeMounts"] == primary["volumeMounts"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["NATS_URL"] == nats_server.url

    # Play the kubelet: run the sidecar container's command here, with its environment.
    argv = [NATIB if sidecar["command"][0] == "natib" else sidecar["command"][0], *sidecar["args"], "--interval", "0.1"]
    proc = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    try:
        await jobs.start(job)
        metrics.write_text("accuracy=0.61\n")
        await eventually(lambda: _reported(harness, "kfile", "kfile-t1", "0.61"), timeout=15)
        with metrics.open("a") as fh:
            fh.write("accuracy=0.92\n")
        await jobs.succeed(job)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # the trial container ended: the kubelet stops the sidecar
        await asyncio.wait_for(task, 20)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 10))[0].decode()
    assert proc.returncode == 0, output
    outcome = await harness.outcome("kfile", "kfile-t1")
    assert isinstance(outcome, ev.TrialSucceeded), outcome
    assert [m.latest for m in outcome.observation if m.name == "accuracy"] == ["0.92"]


async def _reported(harness: LauncherHarness, experiment: str, trial: str, value: str) -> bool:
    return any(isinstance(e, ev.MetricReported) and e.value == value
               for e in await harness.trial_events(experiment, trial))


async def test_push_collector_env_on_the_primary_container(harness: LauncherHarness, jobs: JobController,
                                                           nats_server: Any) -> None:
    exp = await harness.create_experiment(job_experiment("kpush", collector={"collector": {"kind": "Push"}}))
    task = harness.launch(exp, "kpush-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kpush-t1")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"KATIB_TRIAL_NAME": "kpush-t1", "NATIB_TRIAL_NAME": "kpush-t1", "NATIB_EXPERIMENT": "kpush",
                   "NATIB_ATTEMPT": "1", "NATS_URL": nats_server.url}
    assert "initContainers" not in job["spec"]["template"]["spec"]
    # The trial program reports with natib.report_metrics, as in local mode.
    code = "import natib; natib.report_metrics({'accuracy': 0.77})"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env={**os.environ, **env})
    assert await proc.wait() == 0
    await jobs.succeed(job)
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kpush", "kpush-t1")
    assert isinstance(outcome, ev.TrialSucceeded), outcome


# -- manifests ----------------------------------------------------------------------------------------


def _plan(doc: dict[str, Any], trial: str = "v-t1") -> Any:
    exp = apply_defaults(load_experiment(doc))
    cmd = launch_command(exp, trial)
    return build_plan(exp, cmd, experiment=exp.metadata.name, nats_url="nats://natib-nats.natib:4222",
                      sidecar_image="natib:0.1.0")


@pytest.mark.parametrize("collector", [
    None,
    {"collector": {"kind": "File"}, "source": {"fileSystemPath": {"path": "/var/log/katib/m.log", "kind": "File"}}},
    {"collector": {"kind": "TensorFlowEvent"}},
    {"collector": {"kind": "Push"}},
    {"collector": {"kind": "Custom", "customCollector": {"name": "my-collector", "image": "example/c:1",
                                                         "args": ["-path", "/katib/m.log"]}},
     "source": {"fileSystemPath": {"path": "/katib/m.log", "kind": "File"}}},
], ids=["StdOut", "File", "TensorFlowEvent", "Push", "Custom"])
def test_job_manifests_validate_offline(collector: dict[str, Any] | None) -> None:
    plan = _plan(job_experiment("v", collector=collector))
    kubernetes_validate.validate(plan.manifest, K8S_VERSION, strict=True)


def test_a_misspelt_field_fails_validation() -> None:
    plan = _plan(job_experiment("v"))
    plan.manifest["spec"]["backofLimit"] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimit"):
        kubernetes_validate.validate(plan.manifest, K8S_VERSION, strict=True)


@pytest.mark.parametrize("maker", [pytorchjob, tfjob], ids=["PyTorchJob", "TFJob"])
def test_kubeflow_pod_templates_validate_offline(maker: Any) -> None:
    plan = _plan(job_experiment("v", trial_spec=maker(), collector={"collector": {"kind": "TensorFlowEvent"}}))
    assert plan.success == default_conditions(plan.resource.kind)[0]  # type: ignore[index]
    assert plan.primary_labels == {"training.kubeflow.org/job-role": "master"}
    for template in pod_templates(plan.manifest):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    with_sidecar = [t for t in pod_templates(plan.manifest) if t["spec"].get("initContainers")]
    assert len(with_sidecar) == 1, "only the primary replica gets the sidecar"
    replicas = next(iter(plan.manifest["spec"].values()))
    primary = "Master" if "Master" in replicas else "Chief"
    assert replicas[primary]["template"] is with_sidecar[0]


def test_plan_errors_name_the_field() -> None:
    doc = job_experiment("v", collector={"collector": {"kind": "Custom", "customCollector": {"name": "c"}}})
    with pytest.raises(TemplateError, match=r"^spec.metricsCollectorSpec.collector.customCollector: needs a name"):
        _plan(doc)
    argo = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "spec": {"entrypoint": "main", "templates": [
        {"name": "main", "container": _container()}]}}
    doc = job_experiment("v", trial_spec=argo, successCondition='status.[@this].#(phase=="Succeeded")#',
                         failureCondition='status.[@this].#(phase=="Failed")#',
                         collector={"collector": {"kind": "File"}})
    with pytest.raises(TemplateError, match=r"^spec.metricsCollectorSpec.collector.kind: File needs the primary"):
        _plan(doc)
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [_container()]}}
    with pytest.raises(TemplateError, match=r"^spec.trialTemplate.trialSpec.apiVersion: a Pod of the core API group"):
        _plan(job_experiment("v", trial_spec=pod, successCondition="status.x", failureCondition="status.y"))
    nokind = {"apiVersion": "batch/v1", "spec": {}}
    with pytest.raises(TemplateError, match=r"^spec.trialTemplate.trialSpec.kind: required"):
        _plan(job_experiment("v", trial_spec=nokind, successCondition="status.x", failureCondition="status.y"))
    doc["spec"].pop("metricsCollectorSpec")
    plan = _plan(doc)  # StdOut: fine, and the container still gets the trial's environment
    env = {e["name"] for e in plan.manifest["spec"]["templates"][0]["container"]["env"]}
    assert {"KATIB_TRIAL_NAME", "NATS_URL"} <= env


# -- choosing the backend -----------------------------------------------------------------------------


async def test_annotation_routes_an_experiment_to_kubernetes(harness: LauncherHarness, kube: Emulator,
                                                             jobs: JobController) -> None:
    from dataclasses import replace

    from natib.actors.base import Context

    ctx = Context(bus=harness.bus, store=harness.ctx.store, settings=replace(harness.ctx.settings, launcher="local"),
                  stop=harness.ctx.stop)
    router = LauncherRouter(ctx)
    router._kube = harness.launcher
    doc = job_experiment("kroute")
    doc["metadata"]["annotations"] = {LAUNCHER_ANNOTATION: "kubernetes"}
    await harness.create_experiment(doc)
    plain = await harness.create_experiment(job_experiment("klocal"))
    assert await router.backend("kroute") == "kubernetes"
    assert await router.backend("klocal") == "local"
    bad = job_experiment("kbadroute")
    bad["metadata"]["annotations"] = {LAUNCHER_ANNOTATION: "slurm"}
    exp = await harness.create_experiment(bad)
    from natib.messages import codec
    from natib.runtime.bus import RawMessage

    cmd = harness.launch_command(exp, "kbadroute-t1")
    raw = RawMessage(subject="natib.cmd.launcher.kbadroute", data=codec.encode(codec.wrap("kbadroute", cmd, id="x")),
                     headers={}, seq=1)
    await router.on_command(raw)
    outcome = await harness.outcome("kbadroute", "kbadroute-t1")
    assert isinstance(outcome, ev.TrialFailed)
    assert outcome.message == f"metadata.annotations[{LAUNCHER_ANNOTATION}]: expected one of local, kubernetes, " \
                              "got 'slurm'"
    assert plain.metadata.annotations is None


async def test_custom_collector_container_log_is_parsed(harness: LauncherHarness, kube: Emulator,
                                                        jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kcoll", collector={
        "collector": {"kind": "Custom", "customCollector": {"name": "my-collector", "image": "example/c:1"}}}))
    task = harness.launch(exp, "kcoll-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kcoll-t1")
    (custom,) = job["spec"]["template"]["spec"]["initContainers"]
    assert custom == {"name": "my-collector", "image": "example/c:1", "restartPolicy": "Always"}
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.1 (not the collector's)\n")
    kube.log(NS, pod["metadata"]["name"], "my-collector").write("accuracy=0.66\n")
    await eventually(lambda: _reported(harness, "kcoll", "kcoll-t1", "0.66"), timeout=10)
    await jobs.succeed(job)
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kcoll", "kcoll-t1")
    assert isinstance(outcome, ev.TrialSucceeded), outcome
    assert [m.latest for m in outcome.observation if m.name == "accuracy"] == ["0.66"]
    custom_msgs = [m for m in await harness.logs("kcoll", "kcoll-t1") if m.subject.endswith(".custom")]
    assert b"".join(m.data for m in custom_msgs) == b"accuracy=0.66\n"
