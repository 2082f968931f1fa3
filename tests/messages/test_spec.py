"""Loading, defaulting, helpers and round trips of the Katib Experiment model."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import yaml

from natib.messages.spec import (
    Experiment,
    FieldError,
    SpecError,
    apply_defaults,
    dump_yaml,
    load_experiment,
    load_experiments,
    search_space,
    to_builtins,
)

DATA = Path(__file__).parent / "data"
VALID = sorted((DATA / "valid").iterdir())

MINIMAL = """
apiVersion: kubeflow.org/v1beta1
kind: Experiment
metadata:
  name: demo
spec:
  objective:
    type: minimize
    objectiveMetricName: loss
  algorithm:
    algorithmName: random
  parameters:
    - name: lr
      parameterType: double
      feasibleSpace:
        min: 0.01
        max: 5
  trialTemplate:
    primaryContainerName: main
    trialParameters:
      - name: lr
        reference: lr
    trialSpec:
      apiVersion: batch/v1
      kind: Job
      spec:
        template:
          spec:
            containers:
              - name: main
                image: python:3.12
                command: ["train", "--lr=${trialParameters.lr}"]
"""


def minimal(**spec_changes: object) -> dict:
    """The minimal experiment as builtins, with top-level spec keys replaced (None deletes a key)."""
    doc = yaml.safe_load(MINIMAL)
    for key, value in spec_changes.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixtures_load_and_round_trip(path: Path) -> None:
    exp = load_experiment(path.read_text())
    assert exp.kind == "Experiment" and exp.name
    assert msgspec.json.decode(msgspec.json.encode(exp), type=Experiment) == exp
    assert load_experiment(dump_yaml(exp)) == exp
    assert load_experiment(json.dumps(to_builtins(exp)), fmt="json") == exp
    assert apply_defaults(exp) == exp


def test_yaml_and_json_give_the_same_experiment() -> None:
    from_yaml = load_experiment(MINIMAL)
    from_json = load_experiment(json.dumps(yaml.safe_load(MINIMAL)))
    from_bytes = load_experiment(MINIMAL.encode())
    from_dict = load_experiment(yaml.safe_load(MINIMAL))
    assert from_yaml == from_json == from_bytes == from_dict


def test_unquoted_numbers_become_katib_strings() -> None:
    doc = minimal(
        algorithm={"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": 7}]}
    )
    doc["spec"]["parameters"].append(
        {"name": "units", "parameterType": "discrete", "feasibleSpace": {"list": [16, 32.5, True]}}
    )
    exp = load_experiment(yaml.safe_dump(doc).replace("min: 0.01", "min: 0.010"))
    fs = exp.spec.parameters[0].feasible_space
    assert (fs.min, fs.max) == ("0.010", "5")
    assert exp.spec.parameters[1].feasible_space.list_ == ["16", "32.5", "true"]
    assert exp.spec.algorithm.algorithm_settings[0].value == "7"


def test_json_numbers_keep_their_text() -> None:
    doc = minimal()
    text = json.dumps(doc).replace('"min": 0.01', '"min": 0.0100')
    assert load_experiment(text).spec.parameters[0].feasible_space.min == "0.0100"


def test_unknown_fields_are_ignored() -> None:
    doc = minimal(futureField={"x": 1})
    doc["spec"]["objective"]["newKnob"] = True
    doc["metadata"]["generation"] = 4
    exp = load_experiment(doc)
    assert "futureField" not in to_builtins(exp)["spec"]
    assert exp.spec.objective.objective_metric_name == "loss"


def test_list_field_is_called_list_on_the_wire() -> None:
    doc = minimal()
    doc["spec"]["parameters"] = [
        {"name": "opt", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam"]}}
    ]
    exp = load_experiment(doc)
    assert exp.spec.parameters[0].feasible_space.list_ == ["sgd", "adam"]
    assert to_builtins(exp)["spec"]["parameters"][0]["feasibleSpace"]["list"] == ["sgd", "adam"]


def test_structural_errors_are_all_collected_with_paths() -> None:
    doc = minimal(maxTrialCount="12", parallelTrialCount=2.5)
    doc["apiVersion"] = "kubeflow.org/v1"
    doc["metadata"]["name"] = 7
    doc["spec"]["parameters"][0]["parameterType"] = ["double"]
    doc["spec"]["parameters"].append({"parameterType": "int"})
    doc["spec"]["trialTemplate"]["retain"] = "yes"
    with pytest.raises(SpecError) as info:
        load_experiment(doc)
    assert [str(e) for e in info.value.errors] == [
        'apiVersion: expected "kubeflow.org/v1beta1", got "kubeflow.org/v1"',
        "metadata.name: expected string, got integer",
        "spec.parameters[0].parameterType: expected string, got list",
        "spec.parameters[1].name: required field is missing",
        "spec.trialTemplate.retain: expected boolean, got string",
        "spec.parallelTrialCount: expected integer, got number",
        "spec.maxTrialCount: expected integer, got string",
    ]


def test_missing_top_level_keys() -> None:
    with pytest.raises(SpecError) as info:
        load_experiment("kind: Experiment\n")
    assert [str(e) for e in info.value.errors] == [
        "apiVersion: required field is missing",
        "metadata: required field is missing",
        "spec: required field is missing",
    ]


def test_wrong_kind_and_non_object() -> None:
    with pytest.raises(SpecError, match='kind: expected "Experiment", got "Trial"'):
        load_experiment(MINIMAL.replace("kind: Experiment", "kind: Trial"))
    with pytest.raises(SpecError, match="expected an object, got list"):
        load_experiment("- 1\n- 2\n")


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(SpecError) as info:
        load_experiment("apiVersion: kubeflow.org/v1beta1\nspec: [1, 2\n")
    (err,) = info.value.errors
    assert err.path == "" and err.message.startswith("invalid YAML:") and "line 3" in err.message


def test_json_syntax_error() -> None:
    with pytest.raises(SpecError, match=r"invalid JSON: .* line 1"):
        load_experiment('{"apiVersion": ', fmt="json")


def test_single_loader_rejects_several_documents() -> None:
    with pytest.raises(SpecError, match="expected one document, found 2"):
        load_experiment(MINIMAL + "\n---\n" + MINIMAL)


def test_multi_document_stream() -> None:
    second = MINIMAL.replace("name: demo", "name: demo-2")
    exps = load_experiments(MINIMAL + "\n---\n" + second + "\n---\n")
    assert [e.name for e in exps] == ["demo", "demo-2"]


def test_multi_document_errors_carry_the_document_index() -> None:
    broken = MINIMAL.replace("maxTrialCount", "x").replace("name: demo", "name: [demo]")
    with pytest.raises(SpecError) as info:
        load_experiments(MINIMAL + "\n---\n" + broken)
    (err,) = info.value.errors
    assert err == FieldError(path="metadata.name", message="expected string, got list", document=1)
    assert str(err) == "document 1: metadata.name: expected string, got list"


# ---------------------------------------------------------------- defaults


def test_top_level_defaults() -> None:
    spec = load_experiment(MINIMAL).spec
    assert spec.parallel_trial_count == 3
    assert spec.resume_policy == "Never"
    assert spec.max_trial_count is None and spec.max_failed_trial_count is None
    assert spec.metrics_collector_spec.collector.kind == "StdOut"
    assert spec.metrics_collector_spec.source is None
    assert spec.parameters[0].feasible_space.distribution == "uniform"


def test_explicit_values_are_kept() -> None:
    doc = minimal(parallelTrialCount=7, resumePolicy="LongRunning")
    doc["spec"]["parameters"][0]["feasibleSpace"]["distribution"] = "logUniform"
    spec = load_experiment(doc).spec
    assert (spec.parallel_trial_count, spec.resume_policy) == (7, "LongRunning")
    assert spec.parameters[0].feasible_space.distribution == "logUniform"


@pytest.mark.parametrize(
    ("objective_type", "explicit", "expected"),
    [
        ("minimize", [], [("loss", "min"), ("acc", "min"), ("f1", "min")]),
        ("maximize", [], [("loss", "max"), ("acc", "max"), ("f1", "max")]),
        ("minimize", [("acc", "latest")], [("acc", "latest"), ("loss", "min"), ("f1", "min")]),
        ("", [], [("loss", "latest"), ("acc", "latest"), ("f1", "latest")]),
    ],
)
def test_metric_strategy_defaults(objective_type: str, explicit: list, expected: list) -> None:
    doc = minimal()
    doc["spec"]["objective"] = {
        "type": objective_type,
        "objectiveMetricName": "loss",
        "additionalMetricNames": ["acc", "f1"],
        "metricStrategies": [{"name": n, "value": v} for n, v in explicit],
    }
    spec = load_experiment(doc).spec
    assert [(s.name, s.value) for s in spec.objective.metric_strategies] == expected
    assert spec.metric_names() == ["loss", "acc", "f1"]
    assert [spec.metric_strategy(n) for n, _ in expected] == [v for _, v in expected]


def test_metric_strategy_of_unknown_metric() -> None:
    with pytest.raises(KeyError):
        load_experiment(MINIMAL).spec.metric_strategy("nope")


@pytest.mark.parametrize(
    ("collector", "source"),
    [
        (
            {"kind": "File"},
            {"fileSystemPath": {"path": "/var/log/katib/metrics.log", "kind": "File", "format": "TEXT"}},
        ),
        (
            {"kind": "TensorFlowEvent"},
            {"fileSystemPath": {"path": "/var/log/katib/tfevent/", "kind": "Directory"}},
        ),
        ({"kind": "PrometheusMetric"}, {"httpGet": {"path": "/metrics", "port": 8080}}),
        ({"kind": "Push"}, None),
        ({"kind": "StdOut"}, None),
    ],
)
def test_metrics_collector_defaults(collector: dict, source: dict | None) -> None:
    exp = load_experiment(minimal(metricsCollectorSpec={"collector": collector}))
    mc = to_builtins(exp)["spec"]["metricsCollectorSpec"]
    assert mc["collector"] == collector
    assert mc.get("source") == source


def test_file_collector_keeps_given_path_and_fills_format() -> None:
    mc = {"collector": {"kind": "File"}, "source": {"fileSystemPath": {"path": "/out/m.log", "kind": "File"}}}
    fsp = load_experiment(
        minimal(metricsCollectorSpec=mc)
    ).spec.metrics_collector_spec.source.file_system_path
    assert (fsp.path, fsp.kind, fsp.format) == ("/out/m.log", "File", "TEXT")


JOB_OK = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAIL = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
KF_OK = 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
MASTER = {"training.kubeflow.org/job-role": "master"}
TRAINJOB_LABELS = {
    "jobset.sigs.k8s.io/replicatedjob-name": "node",
    "batch.kubernetes.io/job-completion-index": "0",
}


@pytest.mark.parametrize(
    ("api_version", "kind", "success", "failure", "labels"),
    [
        ("batch/v1", "Job", JOB_OK, JOB_FAIL, None),
        ("kubeflow.org/v1", "TFJob", KF_OK, JOB_FAIL, MASTER),
        ("kubeflow.org/v1", "PyTorchJob", KF_OK, JOB_FAIL, MASTER),
        ("kubeflow.org/v1", "XGBoostJob", KF_OK, JOB_FAIL, MASTER),
        ("kubeflow.org/v1", "MPIJob", KF_OK, JOB_FAIL, MASTER),
        ("trainer.kubeflow.org/v1alpha1", "TrainJob", JOB_OK, JOB_FAIL, TRAINJOB_LABELS),
        ("argoproj.io/v1alpha1", "Workflow", "", "", None),
    ],
)
def test_trial_template_defaults(
    api_version: str, kind: str, success: str, failure: str, labels: dict | None
) -> None:
    doc = minimal()
    doc["spec"]["trialTemplate"]["trialSpec"].update(apiVersion=api_version, kind=kind)
    t = load_experiment(doc).spec.trial_template
    assert (t.success_condition, t.failure_condition, t.primary_pod_labels) == (success, failure, labels)


def test_trial_template_explicit_values_win() -> None:
    doc = minimal()
    doc["spec"]["trialTemplate"]["trialSpec"].update(apiVersion="kubeflow.org/v1", kind="TFJob")
    doc["spec"]["trialTemplate"].update(
        successCondition="status.ok", primaryPodLabels={"training.kubeflow.org/replica-type": "worker"}
    )
    t = load_experiment(doc).spec.trial_template
    assert t.success_condition == "status.ok"
    assert t.failure_condition == JOB_FAIL
    assert t.primary_pod_labels == {"training.kubeflow.org/replica-type": "worker"}


def test_defaults_are_idempotent_and_apply_to_bare_structs() -> None:
    doc = minimal()
    doc["spec"]["parameters"][0]["feasibleSpace"] = {"min": "0.01", "max": "5"}
    bare = msgspec.convert(doc, Experiment)
    assert bare.spec.parallel_trial_count is None
    once = apply_defaults(bare)
    assert once.spec.parallel_trial_count == 3
    assert apply_defaults(once) == once


# ---------------------------------------------------------------- helpers


def test_search_space_parses_numbers() -> None:
    doc = minimal()
    doc["spec"]["parameters"] += [
        {
            "name": "n",
            "parameterType": "int",
            "feasibleSpace": {"min": "1", "max": "8", "distribution": "logUniform"},
        },
        {"name": "s", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "step": "0.25"}},
        {"name": "opt", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam"]}},
    ]
    space = search_space(load_experiment(doc).spec)
    assert space.names() == ["lr", "n", "s", "opt"]
    lr, n, s, opt = space.parameters
    assert (lr.type, lr.min, lr.max, lr.step) == ("double", 0.01, 5.0, None)
    assert (n.type, n.min, n.max, n.step, n.distribution) == ("int", 1.0, 8.0, None, "logUniform")
    assert s.step == 0.25
    assert (opt.type, opt.values) == ("categorical", ("sgd", "adam"))


def test_search_space_rejects_unparsable_bound() -> None:
    doc = minimal()
    doc["spec"]["parameters"][0]["feasibleSpace"]["max"] = "lots"
    with pytest.raises(SpecError) as info:
        search_space(load_experiment(doc).spec)
    assert info.value.errors[0].path == "spec.parameters[0].feasibleSpace"


def test_to_builtins_is_katib_shaped() -> None:
    data = to_builtins(load_experiment(MINIMAL))
    assert data["apiVersion"] == "kubeflow.org/v1beta1" and data["kind"] == "Experiment"
    assert data["spec"]["trialTemplate"]["primaryContainerName"] == "main"
    assert data["spec"]["objective"]["objectiveMetricName"] == "loss"
    assert "status" not in data


def test_dump_yaml_reloads() -> None:
    exp = load_experiment(MINIMAL)
    text = dump_yaml(exp)
    assert text.startswith("apiVersion: kubeflow.org/v1beta1\nkind: Experiment\n")
    assert load_experiment(text) == exp


def test_status_is_carried_through() -> None:
    doc = minimal()
    doc["status"] = {"trials": 3, "conditions": [{"type": "Created", "status": "True"}]}
    exp = load_experiment(doc)
    assert exp.status == doc["status"]
    assert msgspec.json.decode(msgspec.json.encode(exp), type=Experiment) == exp


def test_yaml_timestamps_stay_strings() -> None:
    doc = MINIMAL.replace("image: python:3.12", "image: python:3.12\n                args: [2024-01-02]")
    exp = load_experiment(doc)
    container = exp.spec.trial_template.trial_spec["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["2024-01-02"]
    assert msgspec.json.decode(msgspec.json.encode(exp), type=Experiment) == exp
