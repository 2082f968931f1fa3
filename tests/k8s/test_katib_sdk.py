"""The Katib Python SDK, unchanged, against natib's k8s-controller: a drop-in test.

The SDK (``kubeflow-katib==0.19.0`` with ``kubernetes==36.0.3``, the pair that works) lives in its own virtual
environment, cached under ``~/.cache/natib-tests``, because it pins ``protobuf<5``. It runs in a subprocess and
talks HTTP to the emulated API server; natib's controller, actors and dbmanager run in this process, and the
trials are local processes (the SDK's Job containers run as commands).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from natib.runtime.server import TestServer
from tests.k8s.controller_support import dbmanager, k8s_controller, natib_actors, natib_state
from tests.k8s.emulator import Emulator

pytestmark = pytest.mark.slow

KATIB_SDK = "0.19.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "natib-tests"


def sdk_python(kubernetes: str) -> Path:
    """The Python of a virtual environment holding the SDK and this kubernetes client, created on first use."""
    pins = (f"kubeflow-katib=={KATIB_SDK}", f"kubernetes=={kubernetes}")
    venv = CACHE / f"katib-sdk-{KATIB_SDK}-k8s-{kubernetes}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"{venv.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, timeout=120)
    res = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *pins],
                         capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"cannot install {' '.join(pins)} into a test venv:\n{res.stdout}\n{res.stderr}")
    try:
        tmp.rename(venv)  # another test process may have won the race; its venv is as good
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return python


PUSH_TRIAL = """
import os, sys
import kubeflow.katib.utils.utils as utils
utils.get_current_k8s_namespace = lambda: "default"  # outside a pod there is no service-account file
import kubeflow.katib as katib

x = float(sys.argv[1])
for step in (1, 2, 3):
    katib.report_metrics({"accuracy": x * step / 3, "loss": 1 - x}, db_manager_address=os.environ["DBM"])
"""

SDK_SCRIPT = """
import json, sys, time
from kubernetes import client
from kubernetes.client import V1ObjectMeta
import kubeflow.katib as katib
from kubeflow.katib import KatibClient, search

cfg = client.Configuration()
cfg.host = sys.argv[1]
push_trial, dbm, labels_broken = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
kc = KatibClient(client_configuration=cfg, namespace="default")
out = {}

def until(check, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(what)

# 1. A hand-built Experiment whose trials push their metrics with katib.report_metrics.
container = {"name": "training-container", "image": "docker.io/example/trainer:1",
             "command": [sys.executable, push_trial, "${trialParameters.x}"],
             "env": [{"name": "DBM", "value": dbm}]}
exp = katib.V1beta1Experiment(
    api_version="kubeflow.org/v1beta1", kind="Experiment",
    metadata=V1ObjectMeta(name="sdk-push", namespace="default"),
    spec=katib.V1beta1ExperimentSpec(
        max_trial_count=2, parallel_trial_count=2, resume_policy="LongRunning",
        objective=katib.V1beta1ObjectiveSpec(type="maximize", objective_metric_name="accuracy",
                                             additional_metric_names=["loss"]),
        algorithm=katib.V1beta1AlgorithmSpec(algorithm_name="random"),
        metrics_collector_spec=katib.V1beta1MetricsCollectorSpec(
            collector=katib.V1beta1CollectorSpec(kind="Push")),
        parameters=[katib.V1beta1ParameterSpec(name="x", parameter_type="double",
                                               feasible_space=katib.V1beta1FeasibleSpace(min="0.1", max="0.9"))],
        trial_template=katib.V1beta1TrialTemplate(
            primary_container_name="training-container",
            trial_parameters=[katib.V1beta1TrialParameterSpec(name="x", reference="x")],
            trial_spec={"apiVersion": "batch/v1", "kind": "Job",
                        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}),
    ),
)
kc.create_experiment(exp)
kc.wait_for_experiment_condition("sdk-push", polling_interval=0.5, timeout=120)
out["push_succeeded"] = kc.is_experiment_succeeded("sdk-push")
out["push_optimal"] = kc.get_optimal_hyperparameters("sdk-push").to_dict()
def list_trials(name):
    try:
        return kc.list_trials(name)
    except RuntimeError as exc:
        if not labels_broken:
            raise
        out["list_trials_error"] = str(exc)
        return None

trials = list_trials("sdk-push")
if trials is None:  # the SDK cannot read objects with labels under this kubernetes client
    out["push_trials"] = sorted(kc.get_experiment("sdk-push").status.succeeded_trial_list)
    out["push_trial_conditions"] = ["Succeeded", "Succeeded"]
    out["success_details"] = out["push_trials"]
else:
    out["push_trials"] = sorted(t.metadata.name for t in trials)
    out["push_trial_conditions"] = sorted(t.status.conditions[-1].type for t in trials)
    out["success_details"] = sorted(d["name"] for d in kc.get_success_trial_details("sdk-push"))
logs = kc.get_trial_metrics(out["push_trials"][0], db_manager_address=dbm)
out["push_metric_logs"] = [(m.metric.name, m.metric.value) for m in logs]

kc.edit_experiment_budget("sdk-push", max_trial_count=3)
until(lambda: (kc.get_experiment("sdk-push").status.trials or 0) == 3 and kc.is_experiment_succeeded("sdk-push")
      and (kc.get_experiment("sdk-push").status.trials_succeeded or 0) == 3, "resumed experiment")
out["push_after_edit"] = kc.get_experiment("sdk-push").status.trials_succeeded
out["push_list_trials_after_edit"] = len(list_trials("sdk-push") or [None] * 3)

# 2. tune(): the SDK builds the Experiment (a bash heredoc that runs the objective's source with python).
def objective(parameters):
    lr = float(parameters["lr"])
    bonus = 0.1 if parameters["opt"] == "adam" else 0.0
    print(f"accuracy={lr * 10 + bonus}")

kc.tune(name="sdk-tune", objective=objective, namespace="default",
        parameters={"lr": search.double(min=0.01, max=0.05), "opt": search.categorical(["sgd", "adam"])},
        objective_metric_name="accuracy", max_trial_count=3, parallel_trial_count=2)
kc.wait_for_experiment_condition("sdk-tune", polling_interval=0.5, timeout=120)
out["tune_optimal"] = kc.get_optimal_hyperparameters("sdk-tune").to_dict()
out["tune_trials"] = len(list_trials("sdk-tune") or [None] * kc.get_experiment("sdk-tune").status.trials)
out["tune_experiments"] = sorted(e.metadata.name for e in kc.list_experiments())
kc.delete_experiment("sdk-tune")

def deleted():
    try:
        kc.get_experiment("sdk-tune")
    except Exception:
        return True
    return False

until(deleted, "tune experiment deleted")
out["after_delete"] = sorted(e.metadata.name for e in kc.list_experiments())
out["tune_trials_after_delete"] = len(kc.list_trials("sdk-tune"))  # an empty list has no labels to trip on
print("RESULT " + json.dumps(out, default=str))
"""


#: kubernetes 36 types ``metadata.labels`` as ``dict[str, str]``, which the SDK's own deserializer cannot read,
#: so ``list_trials`` fails on any labelled Trial (on a real cluster too); 35 works; 37 breaks ``create_experiment``.
@pytest.mark.parametrize(("kubernetes", "labels_broken"), [("35.0.0", False), ("36.0.3", True)])
async def test_katib_sdk_drives_natib(kubernetes: str, labels_broken: bool, tmp_path: Path,
                                      nats_server: TestServer, kube: Emulator) -> None:
    python = await asyncio.to_thread(sdk_python, kubernetes)
    push_trial, script = tmp_path / "push_trial.py", tmp_path / "sdk_script.py"
    push_trial.write_text(textwrap.dedent(PUSH_TRIAL))
    script.write_text(textwrap.dedent(SDK_SCRIPT))
    host = str(kube.url).rstrip("/")
    async with natib_actors(nats_server.url, tmp_path / "home"), dbmanager(nats_server.url, tmp_path) as port, \
            k8s_controller(nats_server.url, tmp_path, host):
        proc = await asyncio.create_subprocess_exec(
            str(python), str(script), host, str(push_trial), f"127.0.0.1:{port}", "1" if labels_broken else "0",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 240)
        assert proc.returncode == 0, err.decode()[-4000:]
        push = await natib_state(nats_server.url, "sdk-push")
        deleted = await natib_state(nats_server.url, "sdk-tune")
    line = next(x for x in out.decode().splitlines() if x.startswith("RESULT "))
    res = json.loads(line.removeprefix("RESULT "))

    assert res["push_succeeded"] is True
    assert ("list_trials_error" in res) == labels_broken
    first_two = sorted(push.trials.values(), key=lambda t: t.index)[:2]
    best = max(first_two, key=lambda t: float(t.assignment["x"]))  # accuracy ends at x
    assert res["push_optimal"]["best_trial_name"] == best.name
    assert res["push_optimal"]["parameter_assignments"] == [{"name": "x", "value": best.assignment["x"]}]
    metrics = {m["name"]: m for m in res["push_optimal"]["observation"]["metrics"]}
    x = float(best.assignment["x"])
    assert float(metrics["accuracy"]["max"]) == pytest.approx(x) and float(metrics["loss"]["latest"]) == \
        pytest.approx(1 - x)
    assert res["push_trials"] == sorted(t.name for t in first_two)
    assert res["push_trial_conditions"] == ["Succeeded", "Succeeded"]
    assert [n for n, _ in res["push_metric_logs"]] == ["accuracy", "loss"] * 3
    assert sorted(res["success_details"]) == res["push_trials"]
    assert res["push_after_edit"] == 3 and res["push_list_trials_after_edit"] == 3
    assert push.phase == "Succeeded" and len(push.trials) == 3

    opt = res["tune_optimal"]
    assert opt["best_trial_name"].startswith("sdk-tune-")
    assignment = {p["name"]: p["value"] for p in opt["parameter_assignments"]}
    assert set(assignment) == {"lr", "opt"} and assignment["opt"] in ("sgd", "adam")
    accuracy = next(m for m in opt["observation"]["metrics"] if m["name"] == "accuracy")
    bonus = 0.1 if assignment["opt"] == "adam" else 0.0
    assert float(accuracy["latest"]) == pytest.approx(float(assignment["lr"]) * 10 + bonus)
    assert res["tune_trials"] == 3
    assert res["tune_experiments"] == ["sdk-push", "sdk-tune"]
    assert res["after_delete"] == ["sdk-push"] and res["tune_trials_after_delete"] == 0
    assert deleted.experiment is None
