"""The k8s-controller against an emulated API server, driven as kubectl would with the real kubernetes_asyncio client.

natib's actors, NATS and the trials are real; only the Kubernetes API server is emulated (tests/k8s/emulator.py).
"""

from __future__ import annotations

import asyncio
import copy
import signal
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kubernetes_asyncio.client import ApiClient, ApiException, CoreV1Api, CustomObjectsApi

from natib.actors.k8s_controller import FINALIZER, REFUSED_REASON, sdk_compat, status_patch
from natib.messages import codec, subjects
from natib.messages import events as ev
from natib.messages.spec import SpecError, load_experiment
from natib.messages.validation import validate_experiment
from natib.runtime.bus import Bus
from natib.runtime.server import TestServer
from tests.conftest import NATIB, eventually
from tests.k8s.controller_support import experiment, k8s_controller, natib_actors, natib_request, natib_state
from tests.k8s.emulator import Emulator

G, V = "kubeflow.org", "v1beta1"


class Kubectl:
    """The few kubectl verbs these tests need, through the real client."""

    def __init__(self, api: ApiClient) -> None:
        self.custom = CustomObjectsApi(api)
        self.core = CoreV1Api(api)

    async def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        ns = doc["metadata"].get("namespace", "default")
        created: dict[str, Any] = await self.custom.create_namespaced_custom_object(G, V, ns, "experiments", doc)
        return created

    async def get(self, name: str, ns: str = "default", plural: str = "experiments") -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.custom.get_namespaced_custom_object(G, V, ns, plural, name)
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def trials(self, experiment: str, ns: str = "default") -> list[dict[str, Any]]:
        res = await self.custom.list_namespaced_custom_object(
            G, V, ns, "trials", label_selector=f"katib.kubeflow.org/experiment={experiment}")
        return sorted(res["items"], key=lambda t: t["metadata"]["name"])

    async def patch_spec(self, name: str, spec: dict[str, Any], ns: str = "default") -> None:
        await self.custom.patch_namespaced_custom_object(G, V, ns, "experiments", name, {"spec": spec})

    async def delete(self, name: str, ns: str = "default") -> None:
        await self.custom.delete_namespaced_custom_object(G, V, ns, "experiments", name)

    async def condition(self, name: str, type_: str, ns: str = "default", timeout: float = 30) -> dict[str, Any]:
        async def find() -> dict[str, Any] | None:
            obj = await self.get(name, ns)
            for c in ((obj or {}).get("status") or {}).get("conditions") or []:
                if c["type"] == type_ and c["status"] == "True":
                    return obj
            return None

        found: dict[str, Any] = await eventually(find, timeout=timeout, interval=0.1)  # type: ignore[assignment]
        return found


@pytest.fixture
def kubectl(kube_client: ApiClient) -> Kubectl:
    return Kubectl(kube_client)


def conditions(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["type"], c["status"], c["reason"]) for c in obj["status"]["conditions"]]


async def event_counts(url: str, name: str) -> dict[str, int]:
    bus = await Bus.connect(url)
    counts: dict[str, int] = {}
    try:
        async for raw in bus.read(subjects.EVENTS_STREAM, subjects.experiment_events(name)):
            env = codec.decode(raw.data)
            if env is not None:
                key = ev.event_type(env.body)
                counts[key] = counts.get(key, 0) + 1
    finally:
        await bus.close()
    return counts


async def test_applied_experiment_runs_and_status_and_trials_are_written(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
        created = await kubectl.apply(experiment("mirror", trials=3, parallel=2))
        obj = await kubectl.condition("mirror", "Succeeded")
        status = obj["status"]
        assert FINALIZER in obj["metadata"]["finalizers"]
        assert conditions(obj) == [("Created", "True", "ExperimentCreated"), ("Running", "False", "ExperimentRunning"),
                                   ("Succeeded", "True", "ExperimentMaxTrialsReached")]
        state = await natib_state(nats_server.url, "mirror")
        assert state.experiment.metadata.uid == created["metadata"]["uid"]

        async def settled() -> bool:
            obj = await kubectl.get("mirror")
            return {k: v for k, v in obj["status"].items() if v is not None} == state.katib_status()

        await eventually(settled, timeout=10, interval=0.1)
        status = (await kubectl.get("mirror"))["status"]
        assert status["trials"] == 3 and status["trialsSucceeded"] == 3
        assert sorted(status["succeededTrialList"]) == sorted(state.trials)
        assert status.get("runningTrialList") is None and status.get("trialsRunning") is None
        assert status["startTime"] and status["completionTime"]
        best = status["currentOptimalTrial"]
        assert best["bestTrialName"] == state.best_trial().name
        assert [m["name"] for m in best["observation"]["metrics"]] == ["score"]
        assert set(best["observation"]["metrics"][0]) == {"name", "min", "max", "latest"}
        assert best["parameterAssignments"][0]["name"] == "x"

        async def three_trials() -> list[dict[str, Any]]:
            trials = await kubectl.trials("mirror")
            done = [t for t in trials if any(c["type"] == "Succeeded" for c in (t.get("status") or {})
                                              .get("conditions") or [])]
            return trials if len(done) == 3 else []

        trials = await eventually(three_trials, timeout=10, interval=0.1)
        assert [t["metadata"]["name"] for t in trials] == sorted(state.trials)
        for t in trials:
            name = t["metadata"]["name"]
            assert t["metadata"]["labels"] == {"katib.kubeflow.org/experiment": "mirror",
                                               "katib.kubeflow.org/trial": name}
            owner = t["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
                "Experiment", "mirror", created["metadata"]["uid"], True)
            assert t["spec"]["parameterAssignments"] == [{"name": "x", "value": state.trials[name].assignment["x"]}]
            assert t["spec"]["primaryContainerName"] == "main"
            assert t["spec"]["runSpec"]["kind"] == "Job"
            assert t["status"]["observation"]["metrics"][0]["latest"] == state.trials[name].assignment["x"]
            assert [c["type"] for c in t["status"]["conditions"]] == ["Created", "Running", "Succeeded"]
            assert t["status"]["startTime"] and t["status"]["completionTime"]


async def test_invalid_spec_gets_a_failed_condition_with_the_message(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    bad = experiment("invalid", extra_spec={"algorithm": {"algorithmName": "nope"}, "maxTrialCount": 0})
    expected = [str(e) for e in validate_experiment(load_experiment(copy.deepcopy(bad)))]
    assert expected
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")) as ctl:
        await kubectl.apply(bad)
        obj = await kubectl.condition("invalid", "Failed")
        cond = obj["status"]["conditions"][0]
        assert (cond["type"], cond["reason"]) == ("Failed", REFUSED_REASON)
        assert cond["message"] == "; ".join(expected)
        assert (await natib_state(nats_server.url, "invalid")).experiment is None
        # The controller lives on, runs the next one, and does not retry the refused spec on a re-list.
        await kubectl.apply(experiment("valid-next", trials=1, parallel=1))
        await kubectl.condition("valid-next", "Succeeded")
        await ctl.sync(await kubectl.get("invalid"))
        assert (await natib_state(nats_server.url, "invalid")).experiment is None
        # A spec that is no Experiment at all is refused with the reader's message.
        garbage = experiment("garbage")
        garbage["spec"]["parameters"] = "lr"
        await kubectl.apply(garbage)
        obj = await kubectl.condition("garbage", "Failed")
        assert "spec.parameters" in obj["status"]["conditions"][0]["message"]
        # A name that is no natib name (and so no NATS token) is refused by name, not crashed on.
        await kubectl.apply(experiment("has.dot", trials=1))
        obj = await kubectl.condition("has.dot", "Failed")
        assert "metadata.name 'has.dot' is not a DNS-1123 label" in obj["status"]["conditions"][0]["message"]


async def test_name_taken_by_a_natib_experiment_is_refused(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    go = tmp_path / "go"
    doc = experiment("taken", trials=1, parallel=1, command=f"while [ ! -f {go} ]; do sleep 0.05; done")
    async with natib_actors(nats_server.url, tmp_path / "home"):
        assert (await natib_request(nats_server.url, "create", {"experiment": doc}))["ok"]
        async with k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
            await kubectl.apply(experiment("taken"))
            obj = await kubectl.condition("taken", "Failed")
            assert obj["status"]["conditions"][0]["message"] == (
                "metadata.name: natib experiment taken already exists and was not created from a Kubernetes "
                "Experiment; delete it or rename this one")
            assert (await natib_state(nats_server.url, "taken")).experiment.metadata.uid is None
        go.write_text("")


async def test_budget_edits_are_passed_on_and_restart_a_resumable_experiment(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    go = tmp_path / "go"
    doc = experiment("budget", trials=2, parallel=1, command=f"while [ ! -f {go} ]; do sleep 0.05; done; echo score=$X",
                     extra_spec={"resumePolicy": "LongRunning"})
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")) as ctl:
        await kubectl.apply(doc)
        await kubectl.condition("budget", "Running")
        await kubectl.patch_spec("budget", {"parallelTrialCount": 2, "maxFailedTrialCount": 1})

        async def patched() -> bool:
            spec = (await natib_state(nats_server.url, "budget")).experiment.spec
            return spec.parallel_trial_count == 2 and spec.max_failed_trial_count == 1

        await eventually(patched, timeout=10, interval=0.1)
        await eventually(lambda: _count(kubectl, "budget", "trialsRunning", 2), timeout=10, interval=0.1)
        go.write_text("")
        await kubectl.condition("budget", "Succeeded")
        # Raising maxTrialCount of an experiment that reached it restarts it (resumePolicy LongRunning).
        go.unlink()  # the next trial waits, so the Restarting condition stays to be seen
        await kubectl.patch_spec("budget", {"maxTrialCount": 3})
        await kubectl.condition("budget", "Restarting")
        go.write_text("")
        await eventually(lambda: _count(kubectl, "budget", "trialsSucceeded", 3), timeout=20, interval=0.1)
        obj = await kubectl.condition("budget", "Succeeded")
        assert obj["status"]["trials"] == 3
        assert len(await kubectl.trials("budget")) == 3
        # An edit natib refuses (below the trials already run) changes nothing and blocks no later edit.
        await kubectl.patch_spec("budget", {"maxTrialCount": 1})
        await eventually(lambda: ctl._patch_refused.get("budget", {}).get("max_trial_count") == 1, timeout=10)
        assert (await natib_state(nats_server.url, "budget")).experiment.spec.max_trial_count == 3
        await kubectl.patch_spec("budget", {"maxTrialCount": 4})
        await eventually(lambda: _count(kubectl, "budget", "trialsSucceeded", 4), timeout=20, interval=0.1)
        assert (await natib_state(nats_server.url, "budget")).experiment.spec.max_trial_count == 4


async def _count(kubectl: Kubectl, name: str, key: str, want: int) -> bool:
    obj = await kubectl.get(name)
    return ((obj or {}).get("status") or {}).get(key) == want


async def test_delete_goes_through_the_finalizer(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    go = tmp_path / "go"
    doc = experiment("doomed", trials=3, parallel=2, command=f"while [ ! -f {go} ]; do sleep 0.05; done")
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
        await kubectl.apply(doc)
        await eventually(lambda: _count(kubectl, "doomed", "trialsRunning", 2), timeout=20, interval=0.1)
        await eventually(lambda: _trial_count(kubectl, "doomed", 2), timeout=10, interval=0.1)
        await kubectl.delete("doomed")

        async def gone() -> bool:
            return await kubectl.get("doomed") is None

        await eventually(gone, timeout=20, interval=0.1)
        assert await kubectl.trials("doomed") == []
        state = await natib_state(nats_server.url, "doomed")
        assert state.experiment is None
        # Deleting and re-creating the same name starts afresh.
        await kubectl.apply(experiment("doomed", trials=1, parallel=1))
        await kubectl.condition("doomed", "Succeeded")
        assert len(await kubectl.trials("doomed")) == 1


async def _trial_count(kubectl: Kubectl, name: str, want: int) -> bool:
    return len(await kubectl.trials(name)) == want


TEMPLATE = """
apiVersion: batch/v1
kind: Job
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: busybox
          command: [sh, -c, "echo from-configmap; echo score=${trialParameters.x}"]
"""


async def test_config_map_template_is_inlined(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    await kubectl.core.create_namespaced_config_map("kubeflow", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "trial-templates", "namespace": "kubeflow"},
        "data": {"job.yaml": TEMPLATE, "list.yaml": "- a\n- b\n", "broken.yaml": "a: [b"}})

    def from_cm(name: str, path: str, cm: str = "trial-templates") -> dict[str, Any]:
        doc = experiment(name, trials=2, parallel=2)
        template = doc["spec"]["trialTemplate"]
        del template["trialSpec"]
        template["configMap"] = {"configMapName": cm, "configMapNamespace": "kubeflow", "templatePath": path}
        return doc

    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
        await kubectl.apply(from_cm("from-cm", "job.yaml"))
        await kubectl.condition("from-cm", "Succeeded")
        trials = await kubectl.trials("from-cm")
        assert len(trials) == 2
        command = trials[0]["spec"]["runSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[2].startswith("echo from-configmap; echo score=0.")
        for name, path, cm, message in [
            ("cm-missing", "job.yaml", "nope", "spec.trialTemplate.configMap: ConfigMap kubeflow/nope not found"),
            ("cm-no-key", "other.yaml", "trial-templates",
             "spec.trialTemplate.configMap.templatePath: ConfigMap kubeflow/trial-templates has no key 'other.yaml' "
             "(keys: broken.yaml, job.yaml, list.yaml)"),
            ("cm-list", "list.yaml", "trial-templates",
             "spec.trialTemplate.configMap: kubeflow/trial-templates key 'list.yaml' must hold one object, got list"),
            ("cm-broken", "broken.yaml", "trial-templates",
             "spec.trialTemplate.configMap: kubeflow/trial-templates key 'broken.yaml' is not YAML"),
        ]:
            await kubectl.apply(from_cm(name, path, cm))
            obj = await kubectl.condition(name, "Failed")
            assert obj["status"]["conditions"][0]["message"].startswith(message), obj["status"]
        # An incomplete reference is left to natib's validation, which names it as Katib does.
        doc = from_cm("cm-partial", "job.yaml")
        del doc["spec"]["trialTemplate"]["configMap"]["configMapNamespace"]
        await kubectl.apply(doc)
        obj = await kubectl.condition("cm-partial", "Failed")
        assert "configMapName, configMapNamespace and templatePath must be specified" in (
            obj["status"]["conditions"][0]["message"])


async def test_restart_resyncs_without_duplicates(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    kube_url = str(kube.url).rstrip("/")
    async with natib_actors(nats_server.url, tmp_path / "home"):
        async with k8s_controller(nats_server.url, tmp_path, kube_url):
            await kubectl.apply(experiment("first", trials=2, parallel=2))
            await kubectl.apply(experiment("second", trials=1, parallel=1))
            await kubectl.condition("first", "Succeeded")
            await kubectl.condition("second", "Succeeded")
            await eventually(lambda: _trial_count(kubectl, "first", 2), timeout=10, interval=0.1)
        before = await kubectl.get("first")
        # While no controller runs: one experiment is deleted (held by the finalizer), one is added.
        await kubectl.delete("second")
        assert (await kubectl.get("second"))["metadata"]["deletionTimestamp"]
        await kubectl.apply(experiment("third", trials=1, parallel=1))
        async with k8s_controller(nats_server.url, tmp_path, kube_url):
            await kubectl.condition("third", "Succeeded")

            async def second_gone() -> bool:
                return await kubectl.get("second") is None

            await eventually(second_gone, timeout=10, interval=0.1)
            kube.end_watches()  # the API server drops the watch: the controller re-lists and carries on
            await kubectl.apply(experiment("fourth", trials=1, parallel=1))
            await kubectl.condition("fourth", "Succeeded")
        after = await kubectl.get("first")
        assert after["status"] == before["status"]
        assert len(await kubectl.trials("first")) == 2
        counts = await event_counts(nats_server.url, "first")
        assert counts["experiment.created"] == 1 and counts["trial.created"] == 2
        assert (await natib_state(nats_server.url, "second")).experiment is None


async def test_sdk_categorical_list_in_distribution_is_repaired(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    doc = experiment("sdk-cat", trials=2, parallel=2, command="echo score=1 # $X $OPT")
    doc["spec"]["parameters"].append({"name": "opt", "parameterType": "categorical",
                                      "feasibleSpace": {"distribution": ["sgd", "adam"]}})
    doc["spec"]["trialTemplate"]["trialParameters"].append({"name": "opt", "reference": "opt"})
    container = doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "OPT", "value": "${trialParameters.opt}"})
    with pytest.raises(SpecError, match="distribution"):
        load_experiment(copy.deepcopy(doc))  # what `natib validate` and `natib run` say, as Katib's webhook does
    repaired = copy.deepcopy(doc)
    assert sdk_compat(repaired) == ["spec.parameters[1].feasibleSpace: values moved from distribution to list"]
    assert repaired["spec"]["parameters"][1]["feasibleSpace"] == {"list": ["sgd", "adam"]}
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
        await kubectl.apply(doc)
        await kubectl.condition("sdk-cat", "Succeeded")
        state = await natib_state(nats_server.url, "sdk-cat")
        assert {t.assignment["opt"] for t in state.trials.values()} <= {"sgd", "adam"}


def test_status_patch_nulls_what_is_gone() -> None:
    body = status_patch({"conditions": [], "trials": 2})["status"]
    assert body["trials"] == 2 and body["runningTrialList"] is None and body["completionTime"] is None
    assert "currentOptimalTrial" not in body
    assert msgspec.json.decode(msgspec.json.encode(body))["conditions"] == []


async def test_natib_actor_k8s_controller_runs_from_the_cli(
        tmp_path: Path, nats_server: TestServer, natib_env: dict[str, str], kube: Emulator, kubectl: Kubectl) -> None:
    env = {**natib_env, "NATIB_KUBE_HOST": str(kube.url).rstrip("/"), "NATIB_K8S_NAMESPACES": "team-a"}
    proc = await asyncio.create_subprocess_exec(NATIB, "actor", "k8s-controller", env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with natib_actors(nats_server.url, tmp_path / "home"):
            await kubectl.apply(experiment("cli-run", trials=1, parallel=1, namespace="team-a"))
            await kubectl.apply(experiment("elsewhere", trials=1, parallel=1, namespace="team-b"))
            obj = await kubectl.condition("cli-run", "Succeeded", ns="team-a")
            assert obj["status"]["trialsSucceeded"] == 1
            assert len(await kubectl.trials("cli-run", ns="team-a")) == 1
            # Namespaces outside NATIB_K8S_NAMESPACES are left alone.
            other = await kubectl.get("elsewhere", ns="team-b")
            assert "status" not in other or not other["status"]
            assert FINALIZER not in (other["metadata"].get("finalizers") or [])
            assert (await natib_state(nats_server.url, "elsewhere")).experiment is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"experiment_submitted" in out


async def test_outages_of_natib_and_the_api_server_are_retried(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    # The API server refuses the first lists (as it does before RBAC is in place), and no natib controller
    # answers yet: the k8s-controller logs, waits and tries again instead of crashing.
    kube["get /apis/kubeflow.org/v1beta1/experiments"][:2] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "experiments.kubeflow.org is forbidden"}
    await kubectl.apply(experiment("patient", trials=1, parallel=1))
    async with k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")) as ctl:
        obj = await kubectl.get("patient")
        assert not (obj.get("status") or {}).get("conditions")
        assert "patient" not in ctl._owned
        async with natib_actors(nats_server.url, tmp_path / "home"):
            obj = await kubectl.condition("patient", "Succeeded", timeout=30)
            assert obj["status"]["trialsSucceeded"] == 1


def test_namespaces_setting() -> None:
    from natib.runtime.errors import ConfigError
    from natib.runtime.settings import Settings

    assert Settings.from_env({}).k8s_namespaces == ()
    assert Settings.from_env({"NATIB_K8S_NAMESPACES": " team-a, team-b ,"}).k8s_namespaces == ("team-a", "team-b")
    with pytest.raises(ConfigError, match="NATIB_K8S_NAMESPACES: Team_A is not a Kubernetes namespace name"):
        Settings.from_env({"NATIB_K8S_NAMESPACES": "Team_A"})


def test_sdk_compat_leaves_proper_specs_alone() -> None:
    doc = experiment("plain")
    doc["spec"]["parameters"].append({"name": "opt", "parameterType": "categorical",
                                      "feasibleSpace": {"list": ["a"], "distribution": "uniform"}})
    before = copy.deepcopy(doc)
    assert sdk_compat(doc) == [] and doc == before


async def test_one_name_in_two_namespaces(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    go = tmp_path / "go"
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
        first = await kubectl.apply(experiment("twin", trials=1, parallel=1, namespace="team-a",
                                               command=f"while [ ! -f {go} ]; do sleep 0.05; done; echo score=$X"))
        await kubectl.condition("twin", "Running", ns="team-a")
        await kubectl.apply(experiment("twin", trials=1, parallel=1, namespace="team-b"))
        obj = await kubectl.condition("twin", "Failed", ns="team-b")
        assert obj["status"]["conditions"][0]["message"] == (
            "metadata.name: natib experiment names are cluster-wide, and twin is taken by the Experiment in "
            "namespace team-a")
        go.write_text("")
        await kubectl.condition("twin", "Succeeded", ns="team-a")
        assert (await natib_state(nats_server.url, "twin")).experiment.metadata.uid == first["metadata"]["uid"]


async def test_failing_trials_fail_the_experiment_with_katibs_reason(
        tmp_path: Path, nats_server: TestServer, kube: Emulator, kubectl: Kubectl) -> None:
    async with natib_actors(nats_server.url, tmp_path / "home"), \
            k8s_controller(nats_server.url, tmp_path, str(kube.url).rstrip("/")):
        await kubectl.apply(experiment("failing", trials=3, parallel=1, command="echo broken >&2; exit 3",
                                       extra_spec={"maxFailedTrialCount": 1}))
        obj = await kubectl.condition("failing", "Failed")
        cond = obj["status"]["conditions"][-1]
        assert (cond["reason"], cond["message"]) == (
            "ExperimentFailed", "Experiment has failed because max failed count has reached")

        async def failed_trial() -> list[dict[str, Any]]:
            trials = await kubectl.trials("failing")
            return [t for t in trials if any(c["type"] == "Failed" for c in (t.get("status") or {})
                                             .get("conditions") or [])]

        trial = (await eventually(failed_trial, timeout=10, interval=0.1))[0]  # type: ignore[index]
        status = (await kubectl.get("failing"))["status"]
        assert status["trialsFailed"] == 1 and status["failedTrialList"] == [trial["metadata"]["name"]]
        failed = trial["status"]["conditions"][-1]
        assert failed["reason"] == "TrialFailed"
        assert "exit code 3" in failed["message"] and "broken" in failed["message"]
