"""Tests for trial template rendering and primary container lookup."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml

from natib.actors.launcher.template import (
    LocalCommand,
    TemplateError,
    find_primary_container,
    local_command,
    render_trial_spec,
)

JOB = yaml.safe_load(
    """
apiVersion: batch/v1
kind: Job
metadata:
  labels:
    custom-key: label-value
  annotations:
    custom-key: annotation-value
spec:
  template:
    spec:
      containers:
        - name: training-container
          image: docker.io/kubeflowkatib/pytorch-mnist-cpu:latest
          command:
            - python3
            - /opt/pytorch-mnist/mnist.py
            - "--epochs=1"
            - "--lr=${trialParameters.learningRate}"
            - "--momentum=${trialParameters.momentum}"
          env:
            - name: TRIAL_NAME
              value: "${trialParameters.trialName}"
      restartPolicy: Never
"""
)

PARAMS = [
    {"name": "learningRate", "description": "Learning rate", "reference": "lr"},
    {"name": "momentum", "description": "Momentum", "reference": "momentum"},
    {"name": "trialName", "reference": "${trialSpec.Name}"},
]


def render(spec: dict[str, Any], params: list[dict[str, str]], assignment: dict[str, str]) -> dict[str, Any]:
    """Render `spec` as trial exp-a1b2c3 in namespace team."""
    return render_trial_spec(spec, params, assignment, trial_name="exp-a1b2c3", namespace="team")


def test_job_parameters_and_trial_name() -> None:
    run_spec = render(JOB, PARAMS, {"lr": "0.01", "momentum": "0.9"})
    container = find_primary_container(run_spec, "training-container")
    assert container["command"][3:] == ["--lr=0.01", "--momentum=0.9"]
    assert container["env"] == [{"name": "TRIAL_NAME", "value": "exp-a1b2c3"}]
    assert run_spec["metadata"]["name"] == "exp-a1b2c3"
    assert run_spec["metadata"]["namespace"] == "team"
    assert run_spec["metadata"]["labels"] == {"custom-key": "label-value"}


def test_render_does_not_mutate_the_template() -> None:
    before = yaml.safe_dump(JOB)
    render(JOB, PARAMS, {"lr": "0.01", "momentum": "0.9"})
    assert yaml.safe_dump(JOB) == before


def test_all_metadata_references() -> None:
    spec = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {"custom-key": "L"}, "annotations": {"custom-key": "A"}},
        "spec": {"values": [f"${{trialParameters.{k}}}" for k in ("n", "ns", "k", "v", "l", "a")]},
    }
    params = [
        {"name": "n", "reference": "${trialSpec.Name}"},
        {"name": "ns", "reference": "${trialSpec.Namespace}"},
        {"name": "k", "reference": "${trialSpec.Kind}"},
        {"name": "v", "reference": "${trialSpec.APIVersion}"},
        {"name": "l", "reference": "${trialSpec.Labels[custom-key]}"},
        {"name": "a", "reference": "${trialSpec.Annotations[custom-key]}"},
    ]
    assert render(spec, params, {})["spec"]["values"] == ["exp-a1b2c3", "team", "Job", "batch/v1", "L", "A"]


def test_missing_label_and_unknown_metadata_key() -> None:
    spec = {"kind": "Job", "metadata": {}, "spec": {"x": "${trialParameters.l}"}}
    with pytest.raises(TemplateError, match="label missing not found"):
        render(spec, [{"name": "l", "reference": "${trialSpec.Labels[missing]}"}], {})
    with pytest.raises(TemplateError, match=r"unknown trialSpec metadata reference \$\{trialSpec.Uid\}"):
        render(spec, [{"name": "l", "reference": "${trialSpec.Uid}"}], {})


def test_assignment_wins_over_metadata_reference() -> None:
    spec = {"spec": {"x": "${trialParameters.p}"}}
    params = [{"name": "p", "reference": "${trialSpec.Name}"}]
    assert render(spec, params, {"${trialSpec.Name}": "assigned"})["spec"]["x"] == "assigned"


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "back\\slash\\n", "two\nlines\ttab", "$HOME ${trialParameters.lr} $(VAR) $$", "", "ünï ☃"],
)
def test_values_cannot_break_the_document(value: str) -> None:
    spec = {"spec": {"arg": "--opt=${trialParameters.p}", "same": "${trialParameters.p}"}}
    rendered = render(spec, [{"name": "p", "reference": "p"}, {"name": "lr", "reference": "lr"}],
                      {"p": value, "lr": "0.1"})
    assert rendered["spec"] == {"arg": f"--opt={value}", "same": value}


def test_placeholder_used_as_a_whole_scalar_becomes_a_string() -> None:
    spec = yaml.safe_load("spec:\n  replicas: ${trialParameters.n}\n")
    assert render(spec, [{"name": "n", "reference": "n"}], {"n": "3"})["spec"]["replicas"] == "3"


def test_placeholder_in_a_key_is_replaced() -> None:
    spec = {"spec": {"${trialParameters.k}": "v"}}
    assert render(spec, [{"name": "k", "reference": "k"}], {"k": "key"})["spec"] == {"key": "v"}


def test_missing_reference_in_assignment() -> None:
    with pytest.raises(TemplateError, match="parameter momentum not found in parameter assignments"):
        render(JOB, PARAMS, {"lr": "0.01"})


def test_unresolved_placeholders_are_named() -> None:
    spec = {"spec": {"a": "${trialParameters.lr} ${trialParameters.batch} ${trialParameters.depth}"}}
    with pytest.raises(TemplateError, match=r"\$\{trialParameters.batch\}, \$\{trialParameters.depth\}$"):
        render(spec, [{"name": "lr", "reference": "lr"}], {"lr": "0.1"})


def test_trial_parameter_without_reference() -> None:
    with pytest.raises(TemplateError, match="needs a name and a reference"):
        render(JOB, [{"name": "lr"}], {"lr": "0.1"})


def test_template_without_metadata_gets_one() -> None:
    assert render({"kind": "Job"}, [], {})["metadata"] == {"name": "exp-a1b2c3", "namespace": "team"}


def test_non_json_template_is_rejected() -> None:
    with pytest.raises(TemplateError, match="not plain JSON data"):
        render({"spec": {"when": object()}}, [], {})


# primary container


def _pod(*names: str) -> dict[str, Any]:
    """Build a Kubeflow replica spec whose pod runs containers with these names."""
    return {"replicas": 1, "template": {"spec": {"containers": [{"name": n, "image": n} for n in names]}}}


def test_pytorchjob_prefers_master() -> None:
    spec = {"kind": "PyTorchJob", "spec": {"pytorchReplicaSpecs": {"Worker": _pod("pytorch"),
                                                                     "Master": _pod("pytorch")}}}
    spec["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] = "master"
    assert find_primary_container(spec, "pytorch")["image"] == "master"


def test_pytorchjob_without_master_uses_first_replica() -> None:
    spec = {"kind": "PyTorchJob", "spec": {"pytorchReplicaSpecs": {"Worker": _pod("pytorch")}}}
    assert find_primary_container(spec, "pytorch")["name"] == "pytorch"


@pytest.mark.parametrize(
    ("roles", "expected"),
    [(("Worker", "PS", "Chief"), "Chief"), (("Worker", "Master"), "Master"), (("PS", "Worker"), "Worker"),
     (("PS",), "PS")],
)
def test_tfjob_replica_preference(roles: tuple[str, ...], expected: str) -> None:
    replicas = {}
    for role in roles:
        replicas[role] = _pod("tensorflow")
        replicas[role]["template"]["spec"]["containers"][0]["image"] = role
    spec = {"kind": "TFJob", "spec": {"tfReplicaSpecs": replicas}}
    assert find_primary_container(spec, "tensorflow")["image"] == expected


def test_xgboost_and_mpi_replicas() -> None:
    xgb = {"kind": "XGBoostJob", "spec": {"xgbReplicaSpecs": {"Worker": _pod("xgb"), "Master": _pod("xgb")}}}
    xgb["spec"]["xgbReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] = "master"
    assert find_primary_container(xgb, "xgb")["image"] == "master"
    mpi = {"kind": "MPIJob", "spec": {"mpiReplicaSpecs": {"Worker": _pod("mpi"), "Launcher": _pod("mpi")}}}
    mpi["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["image"] = "launcher"
    assert find_primary_container(mpi, "mpi")["image"] == "launcher"


def test_container_only_in_another_replica_is_still_found() -> None:
    spec = {"kind": "TFJob", "spec": {"tfReplicaSpecs": {"Chief": _pod("sidecar"), "Worker": _pod("tensorflow")}}}
    assert find_primary_container(spec, "tensorflow")["name"] == "tensorflow"


def test_unknown_kind_is_searched_depth_first() -> None:
    workflow = yaml.safe_load(
        """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
spec:
  entrypoint: steps
  templates:
    - name: steps
      steps: [[{name: train, template: train}]]
    - name: train
      metadata:
        labels: {katib.kubeflow.org/model-training: "true"}
      container:
        image: python:3.11
        command: [python, -c, "print('loss=1')"]
"""
    )
    assert find_primary_container(workflow, "main")["image"] == "python:3.11"
    nested = {"kind": "TrainJob", "spec": {"a": [{"b": {"containers": [{"name": "other"}, {"name": "node"}]}}]}}
    assert find_primary_container(nested, "node") == {"name": "node"}


def test_missing_primary_container_names_container_and_kind() -> None:
    with pytest.raises(TemplateError, match="primary container nope not found in Job"):
        find_primary_container(JOB, "nope")
    with pytest.raises(TemplateError, match="primary container x not found in PyTorchJob"):
        find_primary_container({"kind": "PyTorchJob", "spec": {}}, "x")


# local command


def test_local_command_from_rendered_job() -> None:
    run_spec = render(JOB, PARAMS, {"lr": "0.01", "momentum": "0.9"})
    command = local_command(find_primary_container(run_spec, "training-container"))
    assert command == LocalCommand(
        argv=["python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1", "--lr=0.01", "--momentum=0.9"],
        env={"TRIAL_NAME": "exp-a1b2c3"},
        working_dir=None,
        image="docker.io/kubeflowkatib/pytorch-mnist-cpu:latest",
    )


def test_command_plus_args_and_working_dir() -> None:
    container = {"name": "c", "command": ["python"], "args": ["train.py", "--x=1"], "workingDir": "/src"}
    command = local_command(container)
    assert command.argv == ["python", "train.py", "--x=1"]
    assert command.working_dir == "/src"
    assert command.image is None


def test_no_command() -> None:
    with pytest.raises(TemplateError, match="container c has no command; the local backend cannot read an image's "
                                            "entrypoint, so set command in the trial template"):
        local_command({"name": "c", "image": "busybox", "args": ["--x"]})


def test_non_string_argument_is_rejected() -> None:
    with pytest.raises(TemplateError, match=r"container c args\[1\] must be a string"):
        local_command({"name": "c", "command": ["python"], "args": ["--epochs", 3]})


def test_env_value_from_is_skipped_and_listed() -> None:
    container = {
        "name": "c",
        "command": ["run"],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "EMPTY"},
        ],
        "envFrom": [{"configMapRef": {"name": "cfg"}}],
    }
    command = local_command(container)
    assert command.env == {"A": "1", "EMPTY": ""}
    assert command.skipped_env == ["POD_IP", "envFrom[0]"]


def test_kubernetes_variable_expansion() -> None:
    container = {
        "name": "c",
        "command": ["sh", "-c", "echo $(A) $(B) $(MISSING) $$(A) $$ $HOME $(unclosed"],
        "env": [{"name": "A", "value": "a"}, {"name": "B", "value": "$(A)-b $(C)"}, {"name": "C", "value": "c"}],
    }
    command = local_command(container)
    # B is defined before C, so $(C) inside B stays unexpanded, as in Kubernetes.
    assert command.env == {"A": "a", "B": "a-b $(C)", "C": "c"}
    assert command.argv[2] == "echo a a-b $(C) $(MISSING) $(A) $ $HOME $(unclosed"


SCRIPT_JOB = yaml.safe_load(
    """
apiVersion: batch/v1
kind: Job
spec:
  template:
    spec:
      containers:
        - name: training
          image: python:3.11
          command:
            - python
            - -c
            - |
              lr = float("${trialParameters.lr}")
              opt = "${trialParameters.opt}"
              print(f"opt={len(opt)} loss={1 - lr:.3f}")
"""
)


def test_python_dash_c_script_runs_with_awkward_values() -> None:
    opt = 'a "quoted" \\ value\nwith newline'
    run_spec = render(SCRIPT_JOB, [{"name": "lr", "reference": "lr"}, {"name": "opt", "reference": "optimizer"}],
                      {"lr": "0.25", "optimizer": opt})
    argv = local_command(find_primary_container(run_spec, "training")).argv
    assert argv[:2] == ["python", "-c"]
    assert 'lr = float("0.25")' in argv[2]
    # The value lands verbatim in the script text; only the document's escaping protects it.
    assert opt in argv[2]
    ok = render(SCRIPT_JOB, [{"name": "lr", "reference": "lr"}, {"name": "opt", "reference": "optimizer"}],
                {"lr": "0.25", "optimizer": "sgd"})
    script = local_command(find_primary_container(ok, "training")).argv[2]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=10)
    assert result.stdout.strip() == "opt=3 loss=0.750"


def test_sh_dash_c_form() -> None:
    spec = {
        "kind": "Job",
        "spec": {"template": {"spec": {"containers": [{
            "name": "training",
            "command": ["sh", "-c"],
            "args": ["echo lr=${trialParameters.lr} name=${trialParameters.name} && echo done"],
        }]}}},
    }
    params = [{"name": "lr", "reference": "lr"}, {"name": "name", "reference": "${trialSpec.Name}"}]
    run_spec = render(spec, params, {"lr": "1e-05"})
    argv = local_command(find_primary_container(run_spec, "training")).argv
    assert argv == ["sh", "-c", "echo lr=1e-05 name=exp-a1b2c3 && echo done"]
    assert shlex.split(argv[2])[:3] == ["echo", "lr=1e-05", "name=exp-a1b2c3"]
