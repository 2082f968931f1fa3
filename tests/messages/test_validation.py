"""Every admission rule: Katib's own with its exact messages and paths, and the checks natib adds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from natib.algorithms.early_stopping import KNOWN_EARLY_STOPPING
from natib.algorithms.registry import KNOWN_ALGORITHMS
from natib.messages.spec import load_experiment
from natib.messages.validation import NAME_MESSAGE, RESTART_MESSAGE, validate_experiment, validate_update

KNOWN = ", ".join(sorted(KNOWN_ALGORITHMS))
KNOWN_ES = ", ".join(sorted(KNOWN_EARLY_STOPPING))

DATA = Path(__file__).parent / "data"

BASE = """
apiVersion: kubeflow.org/v1beta1
kind: Experiment
metadata:
  name: demo
spec:
  maxTrialCount: 6
  objective:
    type: minimize
    objectiveMetricName: loss
  algorithm:
    algorithmName: random
  parameters:
    - name: lr
      parameterType: double
      feasibleSpace: {min: "0.01", max: "0.05"}
    - name: opt
      parameterType: categorical
      feasibleSpace: {list: [sgd, adam]}
  trialTemplate:
    primaryContainerName: main
    trialParameters:
      - name: lr
        reference: lr
      - name: optimizer
        reference: opt
    trialSpec:
      apiVersion: batch/v1
      kind: Job
      spec:
        template:
          spec:
            containers:
              - name: main
                image: python:3.12
                command: ["train", "--lr=${trialParameters.lr}", "--opt=${trialParameters.optimizer}"]
            restartPolicy: Never
"""

Doc = dict[str, Any]


def errors_of(mutate: Callable[[Doc], object], check_settings: bool = True) -> list[tuple[str, str]]:
    doc = yaml.safe_load(BASE)
    mutate(doc)
    return [
        (e.path, e.message) for e in validate_experiment(load_experiment(doc), check_settings=check_settings)
    ]


def spec_set(**values: object) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["spec"].update(values)

    return mutate


def at(path: str, value: object) -> Callable[[Doc], None]:
    """Set a dotted path (numbers index lists); a value of ... deletes the key."""

    def mutate(doc: Doc) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = doc
        for k in keys[:-1]:
            node = node[k]
        if value is ...:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return mutate


def both(*mutations: Callable[[Doc], object]) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        for m in mutations:
            m(doc)

    return mutate


def test_base_is_valid() -> None:
    assert errors_of(lambda d: None) == []


TP = "spec.trialTemplate.trialParameters"
TPS_GO = "[{lr  lr} {optimizer  opt}]"

KATIB_RULES = [
    # top level
    ("name-uppercase", at("metadata.name", "Demo"), [("metadata.name", NAME_MESSAGE)]),
    ("name-trailing-dash", at("metadata.name", "demo-"), [("metadata.name", NAME_MESSAGE)]),
    ("name-underscore-inside", at("metadata.name", "de_mo"), [("metadata.name", NAME_MESSAGE)]),
    ("name-too-long", at("metadata.name", "a" * 41), [("metadata.name", NAME_MESSAGE)]),
    ("name-empty", at("metadata.name", ""), [("metadata.name", NAME_MESSAGE)]),
    (
        "failed-negative",
        spec_set(maxFailedTrialCount=-1),
        [("spec.maxFailedTrialCount", "should not be less than 0")],
    ),
    (
        "max-zero",
        spec_set(maxTrialCount=0, parallelTrialCount=0),
        [
            ("spec.parallelTrialCount", "must be greater than 0"),
            ("spec.maxTrialCount", "must be greater than 0"),
        ],
    ),
    (
        "failed-over-max",
        spec_set(maxFailedTrialCount=7),
        [("spec.maxFailedTrialCount", "should be less than or equal to spec.maxTrialCount")],
    ),
    (
        "parallel-over-max",
        spec_set(parallelTrialCount=7),
        [("spec.parallelTrialCount", "should be less than or equal to spec.maxTrialCount")],
    ),
    ("objective-missing", spec_set(objective=None), [("spec.objective", "must be specified")]),
    (
        "objective-type",
        at("spec.objective.type", "lowest"),
        [("spec.objective.type", "must be minimize or maximize")],
    ),
    (
        "objective-metric-empty",
        at("spec.objective.objectiveMetricName", ""),
        [("spec.objective.objectiveMetricName", "must be specified")],
    ),
    (
        "additional-contains-objective",
        at("spec.objective.additionalMetricNames", ["acc", "loss"]),
        [("spec.objective.additionalMetricNames", "should not contain spec.objective.objectiveMetricName")],
    ),
    (
        "algorithm-name-empty",
        at("spec.algorithm.algorithmName", ""),
        [("spec.algorithm.algorithmName", "must be specified")],
    ),
    (
        "early-stopping-name-empty",
        spec_set(earlyStopping={"algorithmSettings": []}),
        [("spec.earlyStopping.algorithmName", "must be specified")],
    ),
    ("resume-policy", spec_set(resumePolicy="Always"), [("spec.resumePolicy", "invalid ResumePolicyType")]),
    (
        "no-parameters-no-nas",
        both(spec_set(parameters=[]), at("spec.trialTemplate.trialParameters", [])),
        [
            ("spec", "spec.parameters or spec.nasConfig must be specified"),
            (
                "spec.trialTemplate",
                "parameters: [${trialParameters.lr} ${trialParameters.optimizer}] in spec.trialTemplate "
                "not found in spec.trialParameters: []",
            ),
        ],
    ),
    (
        "parameters-and-nas",
        spec_set(nasConfig={"graphConfig": {"numLayers": 1}}),
        [("spec", "only one of spec.parameters and spec.nasConfig can be specified")],
    ),
    # parameters
    (
        "parameter-type",
        at("spec.parameters.0.parameterType", "real"),
        [("spec.parameters[0].parameterType", "parameterType: real is not supported")],
    ),
    (
        "distribution",
        at("spec.parameters.0.feasibleSpace.distribution", "cauchy"),
        [("spec.parameters[0].feasibleSpace.distribution", "distribution: cauchy is not supported")],
    ),
    (
        "feasible-space-empty",
        at("spec.parameters.0.feasibleSpace", {}),
        [("spec.parameters[0].feasibleSpace", "feasibleSpace must be specified")],
    ),
    (
        "double-with-list",
        at("spec.parameters.0.feasibleSpace.list", ["0.1"]),
        [
            (
                "spec.parameters[0].feasibleSpace.list",
                "feasibleSpace.list is not supported for parameterType: double",
            )
        ],
    ),
    (
        "double-without-bounds",
        at("spec.parameters.0.feasibleSpace", {"step": "0.01"}),
        [
            (
                "spec.parameters[0].feasibleSpace.max",
                "feasibleSpace.max or feasibleSpace.min must be specified for parameterType: double",
            )
        ],
    ),
    (
        "categorical-with-min",
        at("spec.parameters.1.feasibleSpace.min", "1"),
        [
            (
                "spec.parameters[1].feasibleSpace",
                "feasibleSpace .max, .min and .step is not supported for parameterType: categorical",
            )
        ],
    ),
    # trial template
    ("template-missing", spec_set(trialTemplate=None), [("spec.trialTemplate", "must be specified")]),
    (
        "primary-container-empty",
        at("spec.trialTemplate.primaryContainerName", ""),
        [("spec.trialTemplate.primaryContainerName", "must be specified")],
    ),
    (
        "conditions-missing",
        at("spec.trialTemplate.trialSpec.kind", "Workflow"),
        [("spec.trialTemplate", "successCondition and failureCondition must be specified")],
    ),
    ("trial-parameters-missing", at("spec.trialTemplate.trialParameters", ...), [(TP, "must be specified")]),
    (
        "no-source",
        at("spec.trialTemplate.trialSpec", ...),
        [
            ("spec.trialTemplate", "successCondition and failureCondition must be specified"),
            (
                "spec.trialTemplate.TrialSource",
                "spec.trialTemplate.trialSpec or spec.trialTemplate.configMap must be specified",
            ),
        ],
    ),
    (
        "two-sources",
        at(
            "spec.trialTemplate.configMap",
            {"configMapName": "t", "configMapNamespace": "n", "templatePath": "p"},
        ),
        [
            (
                "spec.trialTemplate",
                "only one of spec.trialTemplate.trialSpec or spec.trialTemplate.configMap can be specified",
            )
        ],
    ),
    (
        "configmap-incomplete",
        both(
            at("spec.trialTemplate.trialSpec", ...),
            at("spec.trialTemplate.configMap", {"configMapName": "t"}),
        ),
        [
            ("spec.trialTemplate", "successCondition and failureCondition must be specified"),
            (
                "spec.trialTemplate.configMap",
                "configMapName, configMapNamespace and templatePath must be specified",
            ),
        ],
    ),
    (
        "trial-parameter-without-reference",
        at("spec.trialTemplate.trialParameters.1.reference", ""),
        [
            (
                "spec.trialTemplate",
                "parameters: [${trialParameters.optimizer}] in spec.trialTemplate not found in "
                "spec.trialParameters: [{lr  lr} {optimizer  }]",
            ),
            (f"{TP}[1]", "name and reference must be specified and name must not contain '{' or '}'"),
        ],
    ),
    (
        "trial-parameter-name-with-brace",
        at("spec.trialTemplate.trialParameters.1.name", "opt}"),
        [
            (
                "spec.trialTemplate",
                "parameters: [${trialParameters.optimizer}] in spec.trialTemplate not found in "
                "spec.trialParameters: [{lr  lr} {opt}  opt}]",
            ),
            (f"{TP}[1]", "name and reference must be specified and name must not contain '{' or '}'"),
        ],
    ),
    (
        "trial-parameter-name-duplicated",
        at("spec.trialTemplate.trialParameters.1.name", "lr"),
        [
            (
                "spec.trialTemplate",
                "parameters: [${trialParameters.optimizer}] in spec.trialTemplate not found in "
                "spec.trialParameters: [{lr  lr} {lr  opt}]",
            ),
            (
                f"{TP}[1].name",
                "parameter name lr can't be duplicated in spec.trialTemplate.trialParameters: "
                "[{lr  lr} {lr  opt}]",
            ),
        ],
    ),
    (
        "trial-parameter-reference-duplicated",
        at("spec.trialTemplate.trialParameters.1.reference", "lr"),
        [
            (
                "spec.trialTemplate",
                "parameters: [${trialParameters.optimizer}] in spec.trialTemplate not found in "
                "spec.trialParameters: [{lr  lr} {optimizer  lr}]",
            ),
            (
                f"{TP}[1].reference",
                "parameter reference lr can't be duplicated in spec.trialTemplate.trialParameters: "
                "[{lr  lr} {optimizer  lr}]",
            ),
        ],
    ),
    (
        "trial-parameter-reference-unknown",
        at("spec.trialTemplate.trialParameters.1.reference", "optim"),
        [
            (
                f"{TP}[1].reference",
                "parameter reference optim does not exist in spec.parameters: "
                "[{lr double {0.05 0.01 []  uniform}} {opt categorical {  [sgd adam]  uniform}}]",
            )
        ],
    ),
    (
        "trial-parameter-not-in-template",
        at(
            "spec.trialTemplate.trialSpec.spec.template.spec.containers.0.command",
            ["train", "${trialParameters.lr}"],
        ),
        [
            (
                f"{TP}[1].name",
                "parameter name: optimizer in spec.trialParameters not found in spec.trialTemplate: "
                '{"apiVersion":"batch/v1","kind":"Job","spec":{"template":{"spec":{"containers":[{"command":'
                '["train","test-value"],"image":"python:3.12","name":"main"}],"restartPolicy":"Never"}}}}',
            )
        ],
    ),
    (
        "template-placeholder-unknown",
        at(
            "spec.trialTemplate.trialSpec.spec.template.spec.containers.0.args", ["${trialParameters.epochs}"]
        ),
        [
            (
                "spec.trialTemplate",
                "parameters: [${trialParameters.epochs}] in spec.trialTemplate not found in "
                "spec.trialParameters: " + TPS_GO,
            )
        ],
    ),
    (
        "template-metadata-name",
        at("spec.trialTemplate.trialSpec.metadata", {"namespace": "x"}),
        [
            (
                "spec.trialTemplate",
                "metadata.name and metadata.namespace in spec.trialTemplate must be omitted",
            )
        ],
    ),
    (
        "template-without-api-version",
        at("spec.trialTemplate.trialSpec.apiVersion", ...),
        [("spec.trialTemplate", "APIVersion and Kind in spec.trialTemplate must be specified")],
    ),
    # metrics collector
    (
        "collector-unknown",
        spec_set(metricsCollectorSpec={"collector": {"kind": "None"}}),
        [("spec.metricsCollectorSpec.collector.kind", "invalid metrics collector kind: None")],
    ),
    (
        "file-relative-path",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "File"},
                "source": {"fileSystemPath": {"path": "out.log", "kind": "File"}},
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.source.fileSystemPath.path",
                "file path where metrics file exists is required",
            )
        ],
    ),
    (
        "file-format",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "File"},
                "source": {"fileSystemPath": {"path": "/out.log", "kind": "File", "format": "CSV"}},
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.source.fileSystemPath.format",
                "format of metrics file is required for metrics collector",
            )
        ],
    ),
    (
        "file-json-with-filter",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "File"},
                "source": {
                    "fileSystemPath": {"path": "/out.json", "kind": "File", "format": "JSON"},
                    "filter": {"metricsFormat": []},
                },
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.source.filter",
                "filter must be nil when format of metrics file is json",
            )
        ],
    ),
    (
        "tfevent-file-kind",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "TensorFlowEvent"},
                "source": {"fileSystemPath": {"path": "/logs", "kind": "File", "format": "TEXT"}},
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.source",
                "directory path where tensorflow event files exist is required by "
                ".spec.metricsCollectorSpec.source.fileSystemPath.path",
            ),
            ("spec.metricsCollectorSpec.source.fileSystemPath.format", "must be empty"),
        ],
    ),
    (
        "prometheus-port-and-path",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "PrometheusMetric"},
                "source": {"httpGet": {"port": "http", "path": "metrics"}},
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.source.httpGet.port",
                "must be a positive integer value for metrics collector kind: PrometheusMetric",
            ),
            (
                "spec.metricsCollectorSpec.source.httpGet.path",
                "path is invalid for metrics collector kind: PrometheusMetric",
            ),
        ],
    ),
    (
        "prometheus-port-zero",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "PrometheusMetric"},
                "source": {"httpGet": {"port": 0}},
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.source.httpGet.port",
                "must be a positive integer value for metrics collector kind: PrometheusMetric",
            )
        ],
    ),
    (
        "custom-without-container",
        spec_set(
            metricsCollectorSpec={
                "collector": {"kind": "Custom"},
                "source": {"fileSystemPath": {"path": "rel", "kind": "File"}},
            }
        ),
        [
            (
                "spec.metricsCollectorSpec.collector.customCollector",
                "metrics collector kind: Custom is required",
            ),
            (
                "spec.metricsCollectorSpec.source.fileSystemPath",
                ".spec.metricsCollectorSpec.source is invalid",
            ),
        ],
    ),
    (
        "filter-does-not-compile",
        spec_set(metricsCollectorSpec={"source": {"filter": {"metricsFormat": ["(a)(b"]}}}),
        [
            (
                "spec.metricsCollectorSpec.source.filter.metricsFormat[0]",
                "invalid filter: missing ), unterminated subpattern at position 3",
            )
        ],
    ),
    (
        "filter-one-group",
        spec_set(metricsCollectorSpec={"source": {"filter": {"metricsFormat": [r"(\w+)=\d+"]}}}),
        [("spec.metricsCollectorSpec.source.filter.metricsFormat[0]", "two top subexpressions are required")],
    ),
    (
        "filter-escaped-parens",
        spec_set(metricsCollectorSpec={"source": {"filter": {"metricsFormat": [r"\(\w+\)=\(\d+\)"]}}}),
        [("spec.metricsCollectorSpec.source.filter.metricsFormat[0]", "two top subexpressions are required")],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in KATIB_RULES], ids=[c[0] for c in KATIB_RULES]
)
def test_katib_rule(mutate: Callable[[Doc], object], expected: list[tuple[str, str]]) -> None:
    assert errors_of(mutate) == expected


PS = "spec.parameters[0].feasibleSpace"

NATIB_RULES = [
    ("name-unanchored-end", at("metadata.name", "demo_"), [("metadata.name", NAME_MESSAGE)]),
    (
        "int-fractional-bound",
        both(at("spec.parameters.0.parameterType", "int"), at("spec.parameters.0.feasibleSpace.max", "2.5")),
        [
            (f"{PS}.min", "feasibleSpace.min: 0.01 must be an integer for parameterType: int"),
            (f"{PS}.max", "feasibleSpace.max: 2.5 must be an integer for parameterType: int"),
        ],
    ),
    (
        "double-not-a-number",
        at("spec.parameters.0.feasibleSpace.min", "tiny"),
        [(f"{PS}.min", "feasibleSpace.min: tiny must be a number for parameterType: double")],
    ),
    (
        "double-infinite",
        at("spec.parameters.0.feasibleSpace.max", "inf"),
        [(f"{PS}.max", "feasibleSpace.max: inf must be a number for parameterType: double")],
    ),
    (
        "min-over-max",
        at("spec.parameters.0.feasibleSpace.min", "0.5"),
        [(f"{PS}.min", "feasibleSpace.min: 0.5 must not be greater than feasibleSpace.max: 0.05")],
    ),
    (
        "only-min",
        at("spec.parameters.0.feasibleSpace.max", ...),
        [(f"{PS}.max", "feasibleSpace.max must be specified for parameterType: double")],
    ),
    (
        "step-zero",
        at("spec.parameters.0.feasibleSpace.step", "0"),
        [(f"{PS}.step", "feasibleSpace.step: 0 must be greater than 0")],
    ),
    (
        "step-too-large",
        at("spec.parameters.0.feasibleSpace.step", "0.1"),
        [
            (
                f"{PS}.step",
                "feasibleSpace.step: 0.1 must not be larger than "
                "feasibleSpace.max - feasibleSpace.min (0.05 - 0.01)",
            )
        ],
    ),
    (
        "log-uniform-min-zero",
        both(
            at("spec.parameters.0.feasibleSpace.min", "0"),
            at("spec.parameters.0.feasibleSpace.distribution", "logUniform"),
        ),
        [(f"{PS}.min", "feasibleSpace.min: 0 must be greater than 0 for distribution: logUniform")],
    ),
    (
        "log-normal-min-negative",
        both(
            at("spec.parameters.0.feasibleSpace.min", "-1"),
            at("spec.parameters.0.feasibleSpace.distribution", "logNormal"),
        ),
        [(f"{PS}.min", "feasibleSpace.min: -1 must be greater than 0 for distribution: logNormal")],
    ),
    (
        "categorical-empty-list",
        at("spec.parameters.1.feasibleSpace.list", []),
        [
            (
                "spec.parameters[1].feasibleSpace.list",
                "feasibleSpace.list must not be empty for parameterType: categorical",
            )
        ],
    ),
    (
        "categorical-duplicate",
        at("spec.parameters.1.feasibleSpace.list", ["sgd", "adam", "sgd"]),
        [("spec.parameters[1].feasibleSpace.list[2]", "feasibleSpace.list item sgd is duplicated")],
    ),
    (
        "discrete-not-numeric",
        both(
            at("spec.parameters.1.parameterType", "discrete"),
            at("spec.parameters.1.feasibleSpace.list", ["1", "two"]),
        ),
        [
            (
                "spec.parameters[1].feasibleSpace.list[1]",
                "feasibleSpace.list item two must be a number for parameterType: discrete",
            )
        ],
    ),
    (
        "discrete-numeric-duplicate",
        both(
            at("spec.parameters.1.parameterType", "discrete"),
            at("spec.parameters.1.feasibleSpace.list", ["1", "1.0"]),
        ),
        [("spec.parameters[1].feasibleSpace.list[1]", "feasibleSpace.list item 1.0 is duplicated")],
    ),
    (
        "parameter-name-duplicate",
        at("spec.parameters.1.name", "lr"),
        [
            ("spec.parameters[1].name", "parameter name lr is duplicated in spec.parameters"),
            (
                f"{TP}[1].reference",
                "parameter reference opt does not exist in spec.parameters: "
                "[{lr double {0.05 0.01 []  uniform}} {lr categorical {  [sgd adam]  uniform}}]",
            ),
        ],
    ),
    (
        "parameter-type-unknown",
        at("spec.parameters.1.parameterType", "unknown"),
        [
            (
                "spec.parameters[1].parameterType",
                "parameterType: unknown cannot be searched; use double, int, discrete or categorical",
            )
        ],
    ),
    (
        "metric-strategy-value",
        at("spec.objective.metricStrategies", [{"name": "loss", "value": "mean"}]),
        [
            (
                "spec.objective.metricStrategies[0].value",
                "metric strategy: mean is not supported, must be min, max or latest",
            )
        ],
    ),
    (
        "metric-strategy-name",
        at("spec.objective.metricStrategies", [{"name": "acc", "value": "max"}]),
        [
            (
                "spec.objective.metricStrategies[0].name",
                "metric acc is neither spec.objective.objectiveMetricName nor one of "
                "spec.objective.additionalMetricNames",
            )
        ],
    ),
    (
        "metric-strategy-twice",
        at(
            "spec.objective.metricStrategies",
            [{"name": "loss", "value": "max"}, {"name": "loss", "value": "min"}],
        ),
        [
            (
                "spec.objective.metricStrategies[1].name",
                "metric loss has more than one strategy in spec.objective.metricStrategies",
            )
        ],
    ),
    (
        "additional-metric-duplicate",
        at("spec.objective.additionalMetricNames", ["acc", "acc"]),
        [
            (
                "spec.objective.additionalMetricNames[1]",
                "metric name acc is duplicated in spec.objective.additionalMetricNames",
            )
        ],
    ),
    (
        "job-container-without-name",
        at("spec.trialTemplate.trialSpec.spec.template.spec.containers.0.name", ...),
        [
            (
                "spec.trialTemplate",
                "invalid spec.trialTemplate: a batch/v1 Job needs spec.template.spec.containers, "
                "a non-empty list of containers that each have a name and an image",
            )
        ],
    ),
    (
        "job-container-without-image",
        at("spec.trialTemplate.trialSpec.spec.template.spec.containers.0.image", ...),
        [
            (
                "spec.trialTemplate",
                "invalid spec.trialTemplate: a batch/v1 Job needs spec.template.spec.containers, "
                "a non-empty list of containers that each have a name and an image",
            )
        ],
    ),
    (
        "primary-container-not-in-job",
        at("spec.trialTemplate.primaryContainerName", "trainer"),
        [
            (
                "spec.trialTemplate.primaryContainerName",
                "primaryContainerName: trainer is not a container of the trial template (containers: main)",
            )
        ],
    ),
    (
        "primary-container-not-in-pytorchjob",
        at(
            "spec.trialTemplate.trialSpec",
            {
                "apiVersion": "kubeflow.org/v1",
                "kind": "PyTorchJob",
                "spec": {
                    "pytorchReplicaSpecs": {
                        "Master": {
                            "template": {
                                "spec": {
                                    "containers": [
                                        {
                                            "name": "pytorch",
                                            "image": "x",
                                            "args": ["${trialParameters.lr}", "${trialParameters.optimizer}"],
                                        }
                                    ]
                                }
                            }
                        }
                    }
                },
            },
        ),
        [
            (
                "spec.trialTemplate.primaryContainerName",
                "primaryContainerName: main is not a container of the trial template (containers: pytorch)",
            )
        ],
    ),
    (
        "meta-reference-label-missing",
        both(
            at(
                "spec.trialTemplate.trialParameters.1",
                {"name": "optimizer", "reference": "${trialSpec.Labels[team]}"},
            ),
        ),
        [
            (
                f"{TP}[1].reference",
                "parameter reference ${trialSpec.Labels[team]} names label team, which "
                "spec.trialTemplate.trialSpec.metadata.labels does not set",
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in NATIB_RULES], ids=[c[0] for c in NATIB_RULES]
)
def test_natib_rule(mutate: Callable[[Doc], object], expected: list[tuple[str, str]]) -> None:
    assert errors_of(mutate) == expected


@pytest.mark.parametrize(
    "reference",
    ["${trialSpec.Name}", "${trialSpec.Namespace}", "${trialSpec.Kind}", "${trialSpec.APIVersion}"],
)
def test_metadata_references_are_not_parameters(reference: str) -> None:
    assert errors_of(at("spec.trialTemplate.trialParameters.1.reference", reference)) == []


@pytest.mark.parametrize("value", ["local", "kubernetes", " Kubernetes "])
def test_launcher_annotation_accepts_the_backends(value: str) -> None:
    assert errors_of(at("metadata.annotations", {"natib.io/launcher": value})) == []


def test_launcher_annotation_names_a_backend() -> None:
    assert errors_of(at("metadata.annotations", {"natib.io/launcher": "slurm"})) == [
        ("metadata.annotations[natib.io/launcher]", "expected one of local, kubernetes, got 'slurm'")
    ]


def test_references_are_free_when_there_are_no_parameters() -> None:
    def nas(doc: Doc) -> None:
        doc["spec"].pop("parameters")
        doc["spec"]["nasConfig"] = {
            "graphConfig": {"numLayers": 1},
            "operations": [{"operationType": "conv"}],
        }
        doc["spec"]["trialTemplate"]["trialParameters"][0]["reference"] = "architecture"

    assert errors_of(nas, check_settings=False) == []


def test_nas_operation_parameters_are_checked() -> None:
    def nas(doc: Doc) -> None:
        doc["spec"].pop("parameters")
        op = {"operationType": "conv", "parameters": [{"name": "size", "parameterType": "categorical"}]}
        doc["spec"]["nasConfig"] = {"operations": [op]}

    assert errors_of(nas, check_settings=False) == [
        ("spec.nasConfig.operations[0].parameters[0].feasibleSpace", "feasibleSpace must be specified")
    ]


# ---------------------------------------------------------------- algorithm settings


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            at("spec.algorithm.algorithmName", "annealing"),
            [
                (
                    "spec.algorithm.algorithmName",
                    "unable to get Suggestion config data for algorithm annealing: "
                    f"natib has no algorithm called 'annealing' (known: {KNOWN})",
                )
            ],
        ),
        (
            at("spec.earlyStopping", {"algorithmName": "hyperstop"}),
            [
                (
                    "spec.earlyStopping.algorithmName",
                    "unable to get EarlyStopping config data for algorithm hyperstop: "
                    f"natib has no early stopping algorithm called 'hyperstop' (known: {KNOWN_ES})",
                )
            ],
        ),
        (
            at(
                "spec.earlyStopping",
                {"algorithmName": "medianstop", "algorithmSettings": [{"name": "start_step", "value": 0}]},
            ),
            [("spec.earlyStopping.algorithmSettings", "start_step must be greater or equal than one (>=1)")],
        ),
        (
            at("spec.algorithm.algorithmSettings", [{"name": "temperature", "value": "1"}]),
            [("spec.algorithm.algorithmSettings", "unknown setting temperature for algorithm random")],
        ),
        (
            both(
                at("spec.algorithm.algorithmName", "grid"), at("spec.parameters.0.feasibleSpace.step", "0.04")
            ),
            [
                (
                    "spec.algorithm.algorithmSettings",
                    "Max Trial Count: 6 > all possible search combinations: 4",
                )
            ],
        ),
        (
            at("spec.algorithm.algorithmName", "grid"),
            [
                (
                    "spec.algorithm.algorithmSettings",
                    "Param lr step is nil; For discrete search space, all parameters must include step",
                )
            ],
        ),
    ],
    ids=[
        "unknown-algorithm",
        "unknown-early-stopping",
        "medianstop-setting",
        "random-setting",
        "grid-size",
        "grid-step",
    ],
)
def test_algorithm_settings(mutate: Callable[[Doc], object], expected: list[tuple[str, str]]) -> None:
    assert errors_of(mutate) == expected
    assert errors_of(mutate, check_settings=False) == []


def test_settings_are_not_checked_when_the_space_is_broken() -> None:
    mutate = both(at("spec.algorithm.algorithmName", "grid"), at("spec.parameters.0.feasibleSpace.min", "x"))
    assert errors_of(mutate) == [
        (f"{PS}.min", "feasibleSpace.min: x must be a number for parameterType: double")
    ]


# ---------------------------------------------------------------- fixtures and ordering


def _algorithm_known(name: str) -> bool:
    from natib.algorithms.registry import UnknownAlgorithm, get_algorithm

    try:
        get_algorithm(name)
    except UnknownAlgorithm:
        return False
    return True


@pytest.mark.parametrize("path", sorted((DATA / "valid").iterdir()), ids=lambda p: p.name)
def test_valid_fixture_is_clean(path: Path) -> None:
    exp = load_experiment(path.read_text())
    known = _algorithm_known(exp.spec.algorithm.algorithm_name)
    assert [str(e) for e in validate_experiment(exp, check_settings=known)] == []


@pytest.mark.parametrize("path", sorted((DATA / "invalid").glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_fixture_reports_expected_errors(path: Path) -> None:
    text = path.with_suffix(".errors").read_text()
    expected = text.replace("{known}", KNOWN).replace("{known_es}", KNOWN_ES).splitlines()
    assert [str(e) for e in validate_experiment(load_experiment(path.read_text()))] == expected


def test_errors_follow_document_order() -> None:
    mutate = both(
        spec_set(
            resumePolicy="Sometimes",
            maxFailedTrialCount=-2,
            metricsCollectorSpec={"collector": {"kind": "X"}},
        ),
        at("spec.parameters.1.feasibleSpace.list", []),
        at("spec.parameters.0.parameterType", "real"),
        at("metadata.name", "X"),
    )
    assert [p for p, _ in errors_of(mutate)] == [
        "metadata.name",
        "spec.parameters[0].parameterType",
        "spec.parameters[1].feasibleSpace.list",
        "spec.maxFailedTrialCount",
        "spec.metricsCollectorSpec.collector.kind",
        "spec.resumePolicy",
    ]


# ---------------------------------------------------------------- updates


def _exp(**spec_values: object):  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(BASE)
    doc["spec"].update(spec_values)
    return load_experiment(doc)


def test_update_of_budgets_is_allowed() -> None:
    assert (
        validate_update(
            _exp(), _exp(maxTrialCount=9, parallelTrialCount=4), status_trials=6, restartable=True
        )
        == []
    )


def test_update_of_anything_else_is_forbidden() -> None:
    errors = validate_update(_exp(), _exp(resumePolicy="LongRunning"), status_trials=0, restartable=True)
    assert [(e.path, e.message) for e in errors] == [
        ("spec", "only spec.parallelTrialCount, spec.maxTrialCount and spec.maxFailedTrialCount are editable")
    ]


def test_update_budget_must_exceed_trials_so_far() -> None:
    errors = validate_update(_exp(), _exp(maxTrialCount=5), status_trials=6, restartable=True)
    assert [(e.path, e.message) for e in errors] == [
        ("spec.maxTrialCount", "must be greater than status.trials count")
    ]


def test_update_of_a_finished_experiment_that_cannot_restart() -> None:
    errors = validate_update(_exp(), _exp(maxTrialCount=9), status_trials=6, restartable=False)
    assert [(e.path, e.message) for e in errors] == [("spec.resumePolicy", RESTART_MESSAGE)]


def test_unchanged_spec_is_always_accepted() -> None:
    assert validate_update(_exp(), _exp(), status_trials=100, restartable=False) == []


def test_an_omitted_algorithm_means_auto() -> None:
    # natib picks an algorithm for the space where Katib rejects the experiment ("must be specified").
    assert errors_of(spec_set(algorithm=None)) == []


def test_file_collector_also_accepts_a_directory() -> None:
    # natib follows every file of a Directory; Katib accepts only kind File here.
    assert errors_of(spec_set(metricsCollectorSpec={
        "collector": {"kind": "File"},
        "source": {"fileSystemPath": {"path": "/out", "kind": "Directory", "format": "TEXT"}},
    })) == []
