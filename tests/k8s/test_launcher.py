"""The Kubernetes launcher against the emulated API server over HTTP, with real NATS and the real collector."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from natib.messages import events as ev
from natib.runtime.kube import EXPERIMENT_LABEL, TRIAL_LABEL
from tests.conftest import eventually
from tests.k8s.conftest import LauncherHarness, job_experiment
from tests.k8s.emulator import Emulator, JobController

NS = "default"


def _objects(kube: Emulator, plural: str) -> dict[str, dict[str, Any]]:
    """Live objects of one resource, by name."""
    return {name: dict(obj.raw) for (res, ns, name), obj in kube.objects.items()
            if res.plural == plural and not obj.deleted}


def _metrics(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.name, e.value) for e in events if isinstance(e, ev.MetricReported)]


async def test_job_trial_runs_reports_metrics_and_is_deleted(harness: LauncherHarness, kube: Emulator,
                                                             jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kjob"))
    task = harness.launch(exp, "kjob-t1", {"lr": "0.05"})
    job = await jobs.wait_for("batch/v1", "Job", NS, "kjob-t1")

    labels = job["metadata"]["labels"]
    assert labels[EXPERIMENT_LABEL] == "kjob" and labels[TRIAL_LABEL] == "kjob-t1"
    template = job["spec"]["template"]
    assert template["metadata"]["labels"] == {EXPERIMENT_LABEL: "kjob", TRIAL_LABEL: "kjob-t1"}
    container = template["spec"]["containers"][0]
    assert container["command"] == ["python", "train.py", "--lr=0.05"], "the command is not rewritten"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KATIB_TRIAL_NAME"] == "kjob-t1" and env["NATIB_EXPERIMENT"] == "kjob"
    assert "initContainers" not in template["spec"], "StdOut needs no sidecar"

    pod = await jobs.start(job)
    log = kube.log(NS, pod["metadata"]["name"], "training-container")
    log.write("epoch 1: accuracy=0.71 loss=0.9\n")
    await eventually(lambda: harness.trial_events("kjob", "kjob-t1"), timeout=10)
    log.write("epoch 2: accuracy=0.83 loss=0.4\n")
    await jobs.succeed(job)
    log.close()
    await asyncio.wait_for(task, 15)

    outcome = await harness.outcome("kjob", "kjob-t1")
    assert isinstance(outcome, ev.TrialSucceeded), outcome
    assert {m.name: m.latest for m in outcome.observation} == {"accuracy": "0.83", "loss": "0.4"}
    events = await harness.trial_events("kjob", "kjob-t1")
    assert isinstance(events[0], ev.TrialStarted)
    assert _metrics(events) == [("accuracy", "0.71"), ("loss", "0.9"), ("accuracy", "0.83"), ("loss", "0.4")]
    assert "kjob-t1" not in _objects(kube, "jobs"), "retain: false deletes the job"
    assert ("jobs", NS, "kjob-t1", "Foreground") in kube.deletions
    out = b"".join(m.data for m in await harness.logs("kjob", "kjob-t1") if m.subject.endswith(".out"))
    assert out == b"epoch 1: accuracy=0.71 loss=0.9\nepoch 2: accuracy=0.83 loss=0.4\n"


async def test_retain_keeps_the_job(harness: LauncherHarness, kube: Emulator, jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kret", retain=True))
    task = harness.launch(exp, "kret-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kret-t1")
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.5\n")
    await jobs.succeed(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").close()
    await asyncio.wait_for(task, 15)
    assert isinstance(await harness.outcome("kret", "kret-t1"), ev.TrialSucceeded)
    assert "kret-t1" in _objects(kube, "jobs")
    assert not [d for d in kube.deletions if d[2] == "kret-t1"]
    from natib.messages.commands import StopTrial

    await harness.launcher.stop("kret", StopTrial(trial="kret-t1", reason="Deleted"))  # the experiment is deleted
    assert "kret-t1" not in _objects(kube, "jobs")
    assert ("jobs", NS, "kret-t1", "Foreground") in kube.deletions
    outcomes = [e for e in await harness.trial_events("kret", "kret-t1") if isinstance(e, ev.TRIAL_OUTCOMES)]
    assert len(outcomes) == 1 and isinstance(outcomes[0], ev.TrialSucceeded)


async def test_failure_condition_fails_the_trial(harness: LauncherHarness, kube: Emulator,
                                                 jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kfail"))
    task = harness.launch(exp, "kfail-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kfail-t1")
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.2\nTraceback: boom\n")
    await jobs.fail(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").close()
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kfail", "kfail-t1")
    assert isinstance(outcome, ev.TrialFailed), outcome
    assert "Traceback: boom" in outcome.message
    assert "kfail-t1" not in _objects(kube, "jobs")


async def test_failure_condition_wins_over_success(harness: LauncherHarness, kube: Emulator,
                                                   jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kboth"))
    task = harness.launch(exp, "kboth-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kboth-t1")
    await jobs.set_status(job, {"conditions": [{"type": "Complete", "status": "True"},
                                               {"type": "Failed", "status": "True"}]})
    await asyncio.wait_for(task, 15)
    assert isinstance(await harness.outcome("kboth", "kboth-t1"), ev.TrialFailed)


async def test_a_false_condition_does_not_end_the_trial(harness: LauncherHarness, kube: Emulator,
                                                        jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kfalse"))
    task = harness.launch(exp, "kfalse-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kfalse-t1")
    pod = await jobs.start(job)
    await jobs.set_status(job, {"conditions": [{"type": "Complete", "status": "False"}]})
    await asyncio.sleep(0.5)
    assert not task.done(), "status False is no match"
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.9\n")
    await jobs.succeed(job)
    await asyncio.wait_for(task, 15)
    assert isinstance(await harness.outcome("kfalse", "kfalse-t1"), ev.TrialSucceeded)


async def test_watch_is_reopened_when_it_ends(harness: LauncherHarness, kube: Emulator,
                                              jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kwatch"))
    task = harness.launch(exp, "kwatch-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kwatch-t1")
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.6\n")
    watches_before = sum(1 for r in kube.requests if r.params.get("watch") and r.resource
                         and r.resource.plural == "jobs")
    kube.end_watches()  # as an API server restart would
    await asyncio.sleep(2.5)  # and the server-side timeout ends the next one as well
    watches = sum(1 for r in kube.requests if r.params.get("watch") and r.resource and r.resource.plural == "jobs")
    assert watches >= watches_before + 2, "the launcher re-opens its watch"
    assert not task.done()
    await jobs.succeed(job)
    await asyncio.wait_for(task, 15)
    assert isinstance(await harness.outcome("kwatch", "kwatch-t1"), ev.TrialSucceeded)
    lists = [r for r in kube.requests if r.resource and r.resource.plural == "jobs" and r.method == "GET"
             and not r.params.get("watch")]
    assert len(lists) < 15, "the launcher watches rather than polls"


async def test_stop_deletes_with_foreground_and_reports_early_stop(harness: LauncherHarness, kube: Emulator,
                                                                   jobs: JobController) -> None:
    from natib.messages.commands import StopTrial

    exp = await harness.create_experiment(job_experiment("kstop"))
    task = harness.launch(exp, "kstop-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kstop-t1")
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.3\n")
    await eventually(lambda: _has_metric(harness, "kstop", "kstop-t1"), timeout=10)
    await asyncio.wait_for(harness.launcher.stop("kstop", StopTrial(trial="kstop-t1", reason="EarlyStopped",
                                                                    message="median rule")), 15)
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kstop", "kstop-t1")
    assert isinstance(outcome, ev.TrialEarlyStopped), outcome
    assert outcome.message == "median rule"
    assert ("jobs", NS, "kstop-t1", "Foreground") in kube.deletions
    assert "kstop-t1" not in _objects(kube, "jobs")


async def _has_metric(harness: LauncherHarness, experiment: str, trial: str) -> bool:
    return any(isinstance(e, ev.MetricReported) for e in await harness.trial_events(experiment, trial))


async def test_stop_of_a_trial_no_one_follows(harness: LauncherHarness, kube: Emulator) -> None:
    from natib.messages.commands import StopTrial

    exp = await harness.create_experiment(job_experiment("kstop2"))
    cmd = harness.launch_command(exp, "kstop2-t1")
    await harness.launcher.stop("kstop2", StopTrial(trial="kstop2-t1", reason="Killed", message="experiment ended"))
    outcome = await harness.outcome("kstop2", "kstop2-t1")
    assert isinstance(outcome, ev.TrialKilled)
    await asyncio.wait_for(harness.launcher.launch("kstop2", cmd), 5)  # a late launch does nothing
    assert "kstop2-t1" not in _objects(kube, "jobs")


async def test_500_then_409_on_create_adopts_the_job(harness: LauncherHarness, kube: Emulator,
                                                     jobs: JobController) -> None:
    kube[f"post /apis/batch/v1/namespaces/{NS}/jobs"][:1] << 500 << {"message": "etcd timeout"}
    exp = await harness.create_experiment(job_experiment("kadopt"))
    task = harness.launch(exp, "kadopt-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kadopt-t1")
    await eventually(lambda: sum(1 for r in kube.requests if r.method == "POST" and r.resource
                                 and r.resource.plural == "jobs") >= 2, timeout=10)
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.7\n")
    await jobs.succeed(job)
    await asyncio.wait_for(task, 15)
    assert isinstance(await harness.outcome("kadopt", "kadopt-t1"), ev.TrialSucceeded)


async def test_409_for_someone_elses_object_fails_the_trial(harness: LauncherHarness, kube: Emulator,
                                                            jobs: JobController) -> None:
    foreign = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "kother-t1", "namespace": NS, "labels": {TRIAL_LABEL: "someone-else"}},
               "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    await jobs._call("POST", f"/apis/batch/v1/namespaces/{NS}/jobs", foreign)
    exp = await harness.create_experiment(job_experiment("kother"))
    await asyncio.wait_for(harness.launch(exp, "kother-t1"), 10)
    outcome = await harness.outcome("kother", "kother-t1")
    assert isinstance(outcome, ev.TrialFailed)
    assert outcome.reason == "LaunchFailed"
    assert "already exists and is not this trial's" in outcome.message
    assert _objects(kube, "jobs")["kother-t1"]["metadata"]["labels"][TRIAL_LABEL] == "someone-else"
    from natib.messages.commands import StopTrial

    await harness.launcher.stop("kother", StopTrial(trial="kother-t1", reason="Deleted"))  # experiment deleted
    assert "kother-t1" in _objects(kube, "jobs"), "an object that is not the trial's is left alone"
    assert not kube.deletions


async def test_redelivered_launch_adopts_and_follows_once(harness: LauncherHarness, kube: Emulator,
                                                          jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kredo"))
    first = harness.launch(exp, "kredo-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kredo-t1")
    second = harness.launch(exp, "kredo-t1")
    pod = await jobs.start(job)
    kube.log(NS, pod["metadata"]["name"], "training-container").write("accuracy=0.4\n")
    await jobs.succeed(job)
    await asyncio.wait_for(asyncio.gather(first, second), 15)
    assert isinstance(await harness.outcome("kredo", "kredo-t1"), ev.TrialSucceeded)
    eofs = [m for m in await harness.logs("kredo", "kredo-t1") if m.headers.get("Natib-Eof")]
    assert len(eofs) == 1
    posts = [r for r in kube.requests if r.method == "POST" and r.resource and r.resource.plural == "jobs"]
    assert len(posts) == 1


async def test_kind_the_cluster_lacks_fails_the_trial(harness: LauncherHarness, kube: Emulator) -> None:
    spec = {"apiVersion": "example.com/v1", "kind": "Unknown", "spec": {"template": {"spec": {"containers": [
        {"name": "training-container", "image": "x"}]}}}}
    exp = await harness.create_experiment(job_experiment(
        "knokind", trial_spec=spec, successCondition='status.conditions.#(type=="Done")#',
        failureCondition='status.conditions.#(type=="Failed")#'))
    await asyncio.wait_for(harness.launch(exp, "knokind-t1"), 10)
    outcome = await harness.outcome("knokind", "knokind-t1")
    assert isinstance(outcome, ev.TrialFailed) and outcome.reason == "LaunchFailed"
    assert outcome.message.startswith("cannot create Unknown default/knokind-t1: 404")


async def test_bad_success_condition_names_the_field(harness: LauncherHarness, kube: Emulator) -> None:
    exp = await harness.create_experiment(job_experiment("kbadcond", successCondition="status.conditions.#(type==)"))
    await asyncio.wait_for(harness.launch(exp, "kbadcond-t1"), 10)
    outcome = await harness.outcome("kbadcond", "kbadcond-t1")
    assert isinstance(outcome, ev.TrialFailed)
    assert outcome.message.startswith("spec.trialTemplate.successCondition: ")
    assert not _objects(kube, "jobs")


async def test_no_api_server_fails_the_trial_with_the_reason(harness: LauncherHarness, monkeypatch: Any,
                                                             tmp_path: Any) -> None:
    monkeypatch.delenv("NATIB_KUBE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    harness.launcher.host = None
    exp = await harness.create_experiment(job_experiment("knoapi"))
    await asyncio.wait_for(harness.launch(exp, "knoapi-t1"), 10)
    outcome = await harness.outcome("knoapi", "knoapi-t1")
    assert isinstance(outcome, ev.TrialFailed)
    assert "no Kubernetes API server: set NATIB_KUBE_HOST" in outcome.message


async def test_a_replacement_pod_is_followed_too(harness: LauncherHarness, kube: Emulator,
                                                 jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kretry"))
    task = harness.launch(exp, "kretry-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kretry-t1")
    first = await jobs.start(job, pod_name="kretry-t1-a")
    kube.log(NS, "kretry-t1-a", "training-container").write("accuracy=0.2\nOOMKilled\n")
    kube.log(NS, "kretry-t1-a", "training-container").close()
    await jobs._call("PATCH", f"/api/v1/namespaces/{NS}/pods/kretry-t1-a/status", {"status": {"phase": "Failed"}},
                     content_type="application/merge-patch+json")
    assert first["metadata"]["name"] == "kretry-t1-a"
    await jobs.start(job, pod_name="kretry-t1-b")  # the Job controller's retry (backoffLimit)
    kube.log(NS, "kretry-t1-b", "training-container").write("accuracy=0.9\n")
    await eventually(lambda: _reported_value(harness, "kretry", "kretry-t1", "0.9"), timeout=10)
    await jobs.succeed(job)
    kube.log(NS, "kretry-t1-b", "training-container").close()
    await asyncio.wait_for(task, 15)
    outcome = await harness.outcome("kretry", "kretry-t1")
    assert isinstance(outcome, ev.TrialSucceeded)
    out = b"".join(m.data for m in await harness.logs("kretry", "kretry-t1") if m.subject.endswith(".out"))
    assert out == b"accuracy=0.2\nOOMKilled\naccuracy=0.9\n"


async def _reported_value(harness: LauncherHarness, experiment: str, trial: str, value: str) -> bool:
    return any(isinstance(e, ev.MetricReported) and e.value == value
               for e in await harness.trial_events(experiment, trial))


async def test_a_new_launcher_resumes_a_running_trial_without_repeating_output(
        harness: LauncherHarness, kube: Emulator, jobs: JobController) -> None:
    from natib.actors.launcher.kubernetes import KubernetesLauncher

    exp = await harness.create_experiment(job_experiment("kresume"))
    first = harness.launch(exp, "kresume-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kresume-t1")
    pod = await jobs.start(job)
    log = kube.log(NS, pod["metadata"]["name"], "training-container")
    log.write("accuracy=0.3\n")
    await eventually(lambda: _reported_value(harness, "kresume", "kresume-t1", "0.3"), timeout=10)
    first.cancel()  # the launcher process dies; NATS redelivers its LaunchTrial to another one
    with contextlib.suppress(asyncio.CancelledError):
        await first
    second = KubernetesLauncher(harness.ctx, host=harness.launcher.host)
    second.pod_poll_seconds, second.watch_seconds, second.log_grace_seconds = 0.05, 2, 2.0
    try:
        task = asyncio.create_task(second.launch("kresume", harness.launch_command(exp, "kresume-t1")))
        log.write("accuracy=0.8\n")
        await eventually(lambda: _reported_value(harness, "kresume", "kresume-t1", "0.8"), timeout=10)
        await jobs.succeed(job)
        log.close()
        await asyncio.wait_for(task, 15)
    finally:
        await second.close()
    outcome = await harness.outcome("kresume", "kresume-t1")
    assert isinstance(outcome, ev.TrialSucceeded)
    out = b"".join(m.data for m in await harness.logs("kresume", "kresume-t1") if m.subject.endswith(".out"))
    assert out == b"accuracy=0.3\naccuracy=0.8\n"
    events = await harness.trial_events("kresume", "kresume-t1")
    assert _metrics(events) == [("accuracy", "0.3"), ("accuracy", "0.8")]
    assert sum(isinstance(e, ev.TrialStarted) for e in events) == 1


async def test_stop_during_create_deletes_the_new_job(harness: LauncherHarness, kube: Emulator) -> None:
    from natib.messages.commands import StopTrial

    exp = await harness.create_experiment(job_experiment("krace"))
    create = harness.launcher._create

    async def stopped_then_created(experiment: str, plan: Any) -> bool:
        # The stop finds no job yet (404), so it publishes the trial's end itself; the create then succeeds.
        await harness.launcher.stop(experiment, StopTrial(trial=plan.name, reason="Killed", message="ended"))
        return await create(experiment, plan)

    harness.launcher._create = stopped_then_created  # type: ignore[method-assign]
    await asyncio.wait_for(harness.launch(exp, "krace-t1"), 10)
    assert isinstance(await harness.outcome("krace", "krace-t1"), ev.TrialKilled)
    assert "krace-t1" not in _objects(kube, "jobs")
    assert ("jobs", NS, "krace-t1", "Foreground") in kube.deletions


async def test_a_late_launch_of_an_ended_trial_deletes_its_leftover_job(harness: LauncherHarness, kube: Emulator,
                                                                        jobs: JobController) -> None:
    exp = await harness.create_experiment(job_experiment("kleft"))
    harness.launcher._delete = _no_delete  # type: ignore[method-assign]  # dies before deleting
    task = harness.launch(exp, "kleft-t1")
    job = await jobs.wait_for("batch/v1", "Job", NS, "kleft-t1")
    await jobs.succeed(job)
    await asyncio.wait_for(task, 15)
    assert "kleft-t1" in _objects(kube, "jobs")
    del harness.launcher._delete  # type: ignore[method-assign]
    await asyncio.wait_for(harness.launcher.launch("kleft", harness.launch_command(exp, "kleft-t1")), 10)
    assert "kleft-t1" not in _objects(kube, "jobs")
    assert len([e for e in await harness.trial_events("kleft", "kleft-t1") if isinstance(e, ev.TRIAL_OUTCOMES)]) == 1


async def _no_delete(plan: Any) -> None:
    return None
