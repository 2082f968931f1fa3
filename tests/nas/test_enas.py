"""ENAS: settings and nasConfig validation with Katib's messages, Katib's assignment format, a controller that
learns, deterministic replays, and the child-network trial program."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from natib.algorithms.nas import NasSpace, get_nas_algorithm
from natib.algorithms.nas.enas import (
    ROUND_LABEL,
    Enas,
    EnasSettings,
    build_controller,
    decode,
    format_assignment,
    results,
    setting_errors,
)
from natib.algorithms.space import Trial
from natib.messages.spec import load_experiment
from natib.messages.validation import validate_experiment

pytest.importorskip("torch", reason="the NAS algorithms and trial programs need the nas extra")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "enas.yaml"

#: Katib's enas-cpu operations (examples/v1beta1/nas/enas-cpu.yaml), which number 106 operation ids.
KATIB_CPU_OPERATIONS: list[dict[str, Any]] = [
    {"operationType": "convolution", "parameters": [
        {"name": "filter_size", "parameterType": "categorical", "feasibleSpace": {"list": ["3", "5", "7"]}},
        {"name": "num_filter", "parameterType": "categorical",
         "feasibleSpace": {"list": ["32", "48", "64", "96", "128"]}},
        {"name": "stride", "parameterType": "categorical", "feasibleSpace": {"list": ["1", "2"]}}]},
    {"operationType": "separable_convolution", "parameters": [
        {"name": "filter_size", "parameterType": "categorical", "feasibleSpace": {"list": ["3", "5", "7"]}},
        {"name": "num_filter", "parameterType": "categorical",
         "feasibleSpace": {"list": ["32", "48", "64", "96", "128"]}},
        {"name": "stride", "parameterType": "categorical", "feasibleSpace": {"list": ["1", "2"]}},
        {"name": "depth_multiplier", "parameterType": "categorical", "feasibleSpace": {"list": ["1", "2"]}}]},
    {"operationType": "depthwise_convolution", "parameters": [
        {"name": "filter_size", "parameterType": "categorical", "feasibleSpace": {"list": ["3", "5", "7"]}},
        {"name": "stride", "parameterType": "categorical", "feasibleSpace": {"list": ["1", "2"]}},
        {"name": "depth_multiplier", "parameterType": "categorical", "feasibleSpace": {"list": ["1", "2"]}}]},
    {"operationType": "reduction", "parameters": [
        {"name": "reduction_type", "parameterType": "categorical",
         "feasibleSpace": {"list": ["max_pooling", "avg_pooling"]}},
        {"name": "pool_size", "parameterType": "int", "feasibleSpace": {"min": "2", "max": "3", "step": "1"}}]},
]


def katib_space(layers: int = 1) -> NasSpace:
    return NasSpace.from_katib({"graphConfig": {"numLayers": layers, "inputSizes": [32, 32, 3],
                                                "outputSizes": [10]}, "operations": KATIB_CPU_OPERATIONS})


def example_doc() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in validate_experiment(load_experiment(doc))]


# ---------------------------------------------------------------- validation


def test_the_example_is_valid() -> None:
    assert errors_of(example_doc()) == []


@pytest.mark.parametrize(("name", "value", "message"), [
    ("controller_hidden_size", "0", "Algorithm Setting controller_hidden_size: 0 with int type must be in range "
                                    "[1, inf)"),
    ("controller_hidden_size", "x", "Algorithm Setting controller_hidden_size must be int type"),
    ("controller_temperature", "0", "Algorithm Setting controller_temperature: 0.0 with float type must be in "
                                    "range (0, inf]"),
    ("controller_tanh_const", "-1", "Algorithm Setting controller_tanh_const: -1.0 with float type must be in "
                                    "range (0, inf]"),
    ("controller_entropy_weight", "0", "Algorithm Setting controller_entropy_weight: 0.0 with float type must "
                                       "be in range (0.0, inf]"),
    ("controller_baseline_decay", "1.5", "Algorithm Setting controller_baseline_decay: 1.5 with float type must "
                                         "be in range (0.0, 1.0]"),
    ("controller_learning_rate", "0", "Algorithm Setting controller_learning_rate: 0.0 with float type must be "
                                      "in range (0.0, 1.0]"),
    ("controller_skip_target", "abc", "Algorithm Setting controller_skip_target must be float type"),
    ("controller_skip_weight", "-0.1", "Algorithm Setting controller_skip_weight: -0.1 with float type must be "
                                       "in range (0.0, inf]"),
    ("controller_train_steps", "0", "Algorithm Setting controller_train_steps: 0 with int type must be in range "
                                    "[1, inf)"),
    ("controller_log_every_steps", "1.5", "Algorithm Setting controller_log_every_steps must be int type"),
    ("controller_temperature", "nan", "Algorithm Setting controller_temperature: nan with float type must be a "
                                      "finite number"),
    ("max_layers", "3", "Unknown Algorithm Setting name: max_layers"),
])
def test_bad_settings_get_katibs_messages(name: str, value: str, message: str) -> None:
    assert setting_errors({name: value}) == [message]
    doc = example_doc()
    doc["spec"]["algorithm"]["algorithmSettings"] = [{"name": name, "value": value}]
    assert errors_of(doc) == [("spec.algorithm.algorithmSettings", message)]


def test_none_turns_a_term_off_and_defaults_are_katibs() -> None:
    assert EnasSettings.parse({}) == EnasSettings(64, 5.0, 2.25, 1e-5, 0.999, 5e-5, 0.4, 0.8, 50, 10)
    off = EnasSettings.parse({n: "None" for n in ("controller_temperature", "controller_tanh_const",
                                                  "controller_entropy_weight", "controller_skip_weight")})
    assert (off.temperature, off.tanh_const, off.entropy_weight, off.skip_weight) == (None, None, None, None)
    assert setting_errors({"controller_hidden_size": "None"}) == [
        "Algorithm Setting controller_hidden_size must be int type"]


@pytest.mark.parametrize(("path", "value", "error"), [
    ("inputSizes", None, ("spec.nasConfig.graphConfig.inputSizes", "Missing InputSizes in GraphConfig")),
    ("outputSizes", None, ("spec.nasConfig.graphConfig.outputSizes", "Missing OutputSizes in GraphConfig")),
    ("numLayers", None, ("spec.nasConfig.graphConfig.numLayers", "Missing NumLayers in GraphConfig")),
    ("numLayers", 0, ("spec.nasConfig.graphConfig.numLayers", "Missing NumLayers in GraphConfig")),
    ("numLayers", -2, ("spec.nasConfig.graphConfig.numLayers", "numLayers must be greater than 0, got -2")),
    ("inputSizes", [8, 0, 1], ("spec.nasConfig.graphConfig.inputSizes[1]",
                               "inputSizes must hold positive integers, got 0")),
])
def test_graph_config_is_checked(path: str, value: Any, error: tuple[str, str]) -> None:
    doc = example_doc()
    graph = doc["spec"]["nasConfig"]["graphConfig"]
    if value is None:
        graph.pop(path)
    else:
        graph[path] = value
    assert errors_of(doc) == [error]


def test_operations_are_checked_with_katibs_messages() -> None:
    doc = example_doc()
    ops = doc["spec"]["nasConfig"]["operations"]
    ops[0]["operationType"] = ""
    ops[1].pop("parameters")
    ops[2]["parameters"][0] = {"name": "filter_size", "parameterType": "double",
                               "feasibleSpace": {"min": "1", "max": "3"}}
    ops[3]["parameters"][1]["feasibleSpace"] = {"step": "1", "min": "", "max": ""}
    assert errors_of(doc) == [
        ("spec.nasConfig.operations[0].operationType", "Missing operationType in Operation"),
        ("spec.nasConfig.operations[1].parameters", "Missing ParameterConfigs in Operation"),
        ("spec.nasConfig.operations[2].parameters[0].feasibleSpace.step",
         "Step parameter should be > 0 in ParameterConfig.feasibleSpace"),
        # Katib's webhook message for a range parameter without bounds says it first, and only once.
        ("spec.nasConfig.operations[3].parameters[1].feasibleSpace.max",
         "feasibleSpace.max or feasibleSpace.min must be specified for parameterType: int"),
    ]


def test_no_operations_is_an_error() -> None:
    doc = example_doc()
    doc["spec"]["nasConfig"]["operations"] = []
    assert errors_of(doc) == [("spec.nasConfig.operations",
                               "must be specified: at least one operation to choose from")]


def test_a_hyperparameter_algorithm_cannot_search_a_nas_config() -> None:
    doc = example_doc()
    doc["spec"]["algorithm"] = {"algorithmName": "random"}
    [(path, message)] = errors_of(doc)
    assert path == "spec.algorithm.algorithmName"
    assert "natib has no neural architecture search algorithm called 'random'" in message
    assert "darts, enas" in message


def test_enas_needs_a_nas_config() -> None:
    doc = yaml.safe_load((REPO / "examples" / "random.yaml").read_text())
    doc["spec"]["algorithm"] = {"algorithmName": "enas"}
    assert errors_of(doc) == [("spec.algorithm.algorithmName",
                               "algorithm enas searches spec.nasConfig, which this experiment does not set")]


def test_trial_parameters_may_reference_nas_assignments() -> None:
    doc = example_doc()
    doc["spec"]["trialTemplate"]["trialParameters"][0]["reference"] = "architecture"
    assert errors_of(doc) == []


def test_without_torch_the_registry_imports_and_enas_names_the_extra() -> None:
    code = (
        "import importlib.machinery, sys, yaml\n"
        "class Hide(importlib.machinery.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        return None if name.split('.')[0] == 'torch' else super().find_spec(name, path, target)\n"
        "sys.meta_path = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]\n"
        "import natib.algorithms.registry, natib.algorithms.nas\n"
        "from natib.messages.spec import load_experiment\n"
        "from natib.messages.validation import validate_experiment\n"
        f"doc = yaml.safe_load(open({str(EXAMPLE)!r}))\n"
        "for e in validate_experiment(load_experiment(doc)): print(e.path, '|', e.message)\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == (
        "spec.algorithm.algorithmName | algorithm enas needs PyTorch, which is not installed; install natib "
        "with the nas extra: pip install 'natib[nas]'")


# ---------------------------------------------------------------- Katib's format


def test_operations_are_numbered_as_katib_does() -> None:
    ops = katib_space().expanded()
    assert len(ops) == 30 + 60 + 12 + 4
    assert ops[0].to_dict() == {"opt_id": 0, "opt_type": "convolution",
                                "opt_params": {"filter_size": "3", "num_filter": "32", "stride": "1"}}
    assert ops[1].opt_params == {"filter_size": "3", "num_filter": "32", "stride": "2"}
    assert ops[30].opt_type == "separable_convolution"
    assert ops[102].to_dict() == {"opt_id": 102, "opt_type": "reduction",
                                  "opt_params": {"reduction_type": "max_pooling", "pool_size": 2}}
    assert ops[105].opt_params == {"reduction_type": "avg_pooling", "pool_size": 3}


def test_double_parameters_expand_by_step() -> None:
    space = NasSpace.from_katib({"graphConfig": {"numLayers": 1}, "operations": [{"operationType": "drop",
        "parameters": [{"name": "rate", "parameterType": "double",
                        "feasibleSpace": {"min": "0.1", "max": "0.3", "step": "0.1"}}]}]})
    assert [round(op.opt_params["rate"], 9) for op in space.expanded()] == [0.1, 0.2, 0.3]


def test_assignment_is_formatted_exactly_as_katib() -> None:
    space = katib_space(layers=2)
    out = format_assignment(space, [102, 3, 1])
    assert out["architecture"] == "[[102], [3, 1]]"
    assert out["nn_config"] == (
        "{'num_layers': 2, 'input_sizes': [32, 32, 3], 'output_sizes': [10], 'embedding': "
        "{'102': {'opt_id': 102, 'opt_type': 'reduction', 'opt_params': {'reduction_type': 'max_pooling', "
        "'pool_size': 2}}, '3': {'opt_id': 3, 'opt_type': 'convolution', 'opt_params': {'filter_size': '3', "
        "'num_filter': '48', 'stride': '2'}}}}")
    # What Katib's own trial program does with it: swap the quotes back and load the JSON.
    config = json.loads(out["nn_config"].replace("'", '"'))
    assert config["embedding"]["3"]["opt_type"] == "convolution"
    assert decode(out["architecture"], 2, 106) == [102, 3, 1]


@pytest.mark.parametrize("text", ["[[1]]", "[[1], [2]]", "[[1], [2, 2]]", "[[106], [1, 0]]", "nope",
                                  "[[true], [1, 0]]"])
def test_foreign_architectures_are_not_learnt_from(text: str) -> None:
    assert decode(text, 2, 106) is None


def test_suggestions_have_katibs_names_and_valid_architectures() -> None:
    space = katib_space(layers=3)
    result = Enas().suggest(space, [], 4, {}, 11, "maximize")
    assert len(result.assignments) == 4
    for a, labels in zip(result.assignments, result.labels, strict=True):
        assert set(a) == {"architecture", "nn_config"}
        arc = decode(a["architecture"], 3, 106)
        assert arc is not None and len(arc) == 1 + 2 + 3
        assert labels == {ROUND_LABEL: "0"}
    assert get_nas_algorithm("enas") is not None


# ---------------------------------------------------------------- learning and determinism


def small_space(layers: int = 4) -> NasSpace:
    ops = [{"operationType": "conv", "parameters": [
        {"name": "k", "parameterType": "categorical", "feasibleSpace": {"list": ["1", "2", "3", "4"]}}]}]
    return NasSpace.from_katib({"graphConfig": {"numLayers": layers, "inputSizes": [8, 8, 1], "outputSizes": [10]},
                                "operations": ops})


def op0_fraction(arc: list[int], layers: int) -> float:
    firsts, start = [], 0
    for layer in range(layers):
        firsts.append(arc[start])
        start += layer + 1
    return sum(1 for op in firsts if op == 0) / layers


def test_reinforce_raises_the_reward_of_sampled_architectures() -> None:
    """Reward = share of layers using operation 0; after training on it, samples use operation 0 more."""
    space, layers = small_space(), 4
    settings = {"controller_learning_rate": "0.05", "controller_train_steps": "60"}
    first = Enas().suggest(space, [], 64, settings, 3, "maximize")
    history = []
    for i, (a, labels) in enumerate(zip(first.assignments, first.labels, strict=True)):
        arc = decode(a["architecture"], layers, 4)
        assert arc is not None
        history.append(Trial(f"t{i}", a, "succeeded", op0_fraction(arc, layers), labels))
    before = sum(t.objective or 0 for t in history) / len(history)
    second = Enas().suggest(space, history, 64, settings, 3, "maximize")
    after = sum(op0_fraction(decode(a["architecture"], layers, 4) or [], layers)
                for a in second.assignments) / 64
    assert before < 0.4
    assert after > before + 0.25, (before, after)
    # Minimizing the same numbers must push the other way.
    flipped = Enas().suggest(space, history, 64, settings, 3, "minimize")
    lower = sum(op0_fraction(decode(a["architecture"], layers, 4) or [], layers)
                for a in flipped.assignments) / 64
    assert lower < before


def history_of(result_assignments: list[dict[str, str]], labels: list[dict[str, str]]) -> list[Trial]:
    return [Trial(f"t{i}", a, "succeeded" if i % 3 else "failed", 0.1 * i if i % 3 else None, lab)
            for i, (a, lab) in enumerate(zip(result_assignments, labels, strict=True))]


def test_two_fresh_replays_of_a_history_give_identical_suggestions() -> None:
    space = small_space(3)
    settings = {"controller_learning_rate": "0.01", "controller_train_steps": "5"}
    first = Enas().suggest(space, [], 6, settings, 9, "maximize")
    history = history_of(first.assignments, first.labels)
    a = Enas().suggest(space, history, 5, settings, 9, "maximize")
    b = Enas().suggest(space, history, 5, settings, 9, "maximize")
    assert a == b
    other_seed = Enas().suggest(space, history, 5, settings, 10, "maximize")
    assert other_seed.assignments != a.assignments
    # A second round of results trains the controller again, once per round recorded in the labels.
    more = history + [Trial(f"u{i}", x, "succeeded", 0.5, lab)
                      for i, (x, lab) in enumerate(zip(a.assignments, a.labels, strict=True))]
    assert {lab[ROUND_LABEL] for lab in a.labels} == {"4"}
    c = Enas().suggest(space, more, 3, settings, 9, "maximize")
    assert c == Enas().suggest(space, more, 3, settings, 9, "maximize")
    assert all(lab[ROUND_LABEL] == "9" for lab in c.labels)


def test_rewards_come_from_results_only_and_are_negated_for_minimize() -> None:
    space = small_space(2)
    arc = "[[1], [2, 1]]"
    history = [
        Trial("a", {"architecture": arc}, "succeeded", 0.8),
        Trial("b", {"architecture": arc}, "failed", None),
        Trial("c", {"architecture": arc}, "running", None),
        Trial("d", {"architecture": "[[9], [2, 1]]"}, "succeeded", 0.3),
    ]
    assert results(space, history, "maximize") == ([[1, 2, 1]], [0.8])
    assert results(space, history, "minimize") == ([[1, 2, 1]], [-0.8])
    _, count = build_controller(space, history, EnasSettings(hidden_size=8, train_steps=2), 1, "maximize")
    assert count == 1


def test_bad_settings_fail_the_suggestion_with_katibs_message() -> None:
    with pytest.raises(ValueError, match="Unknown Algorithm Setting name: foo"):
        Enas().suggest(small_space(), [], 1, {"foo": "1"}, 0, "maximize")


# ---------------------------------------------------------------- the child-network trial program


def run_trial(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "natib.trials.enas", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_child_network_builds_every_operation_with_skips() -> None:
    import torch

    from natib.trials.enas import ChildNetwork, parse_architecture, parse_nn_config

    doc = example_doc()
    space = NasSpace.from_katib(msgspec.to_builtins(load_experiment(doc).spec.nas_config))
    ops = space.expanded()
    for op in ops:
        arc = [op.opt_id, (op.opt_id + 1) % len(ops), 1, (op.opt_id + 2) % len(ops), 1, 1]
        a = format_assignment(NasSpace(3, space.input_sizes, space.output_sizes, space.operations), arc)
        net = ChildNetwork(parse_architecture(f'\\"{a["architecture"]}\\"'),
                           parse_nn_config(f'\\"{a["nn_config"]}\\"')["embedding"], (1, 8, 8), 10)
        assert net(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.slow
def test_enas_trial_program_trains_and_reports_katibs_metrics(tmp_path: Path) -> None:
    space = NasSpace.from_katib(example_doc()["spec"]["nasConfig"])
    a = format_assignment(space, [0, 9, 1])
    out = run_trial("--num_epochs=1", f'--architecture=\\"{a["architecture"]}\\"',
                    f'--nn_config=\\"{a["nn_config"]}\\"', "--device=cpu")
    assert out.returncode == 0, out.stderr
    names = [line.split("=")[0] for line in out.stdout.splitlines()]
    assert names == ["Training-Accuracy", "Training-Loss", "Validation-Accuracy", "Validation-Loss"]
    accuracy = float(out.stdout.splitlines()[2].split("=")[1])
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize(("args", "message"), [
    (["--architecture=[[0], [1]]", "--nn_config={'embedding': {}}"],
     "--architecture: layer 1 must be a list of 2 integers"),
    (["--architecture=[[0]]", "--nn_config={'embedding': {}}"],
     "--architecture: layer 0: operation 0 is not in --nn_config's embedding"),
    (["--architecture=[[0]]", "--nn_config=not json"], "--nn_config: not Katib's JSON"),
    (["--architecture=[[0]]", "--nn_config={'embedding': {'0': {'opt_type': 'attention', 'opt_params': {}}}}"],
     "operation type 'attention' is not one of"),
    (["--architecture=[[0]]",
      "--nn_config={'embedding': {'0': {'opt_type': 'convolution', "
      "'opt_params': {'filter_size': 'x', 'num_filter': '8'}}}}"],
     "operation parameter filter_size must be an integer, got 'x'"),
    (["--architecture=[[0]]", "--nn_config={'embedding': {}}", "--data=/no/such.npz"],
     "/no/such.npz: no such file or directory"),
])
def test_enas_trial_program_rejects_bad_input(args: list[str], message: str) -> None:
    from natib.trials.common import TrialError
    from natib.trials.data import DatasetError
    from natib.trials.enas import main

    with pytest.raises((TrialError, DatasetError)) as caught:
        main([*args, "--device=cpu"])
    assert message in str(caught.value)


def test_a_bad_flag_is_one_line_and_exit_status_2() -> None:
    out = run_trial("--architecture=[[0], [1]]", "--nn_config={'embedding': {}}")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --architecture: layer 1 must be a list of 2 integers (operation id, "
                                  "then 1 skip bits), got [1]")
