"""DARTS: settings and nasConfig validation with Katib's messages, Katib's assignment, one trial then
exhaustion, and the search trial program (CPU, and CUDA where there is one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from natib.algorithms.nas import NasSpace
from natib.algorithms.nas.darts import Darts, assignment, setting_errors
from natib.algorithms.space import Trial
from natib.messages.spec import load_experiment
from natib.messages.validation import validate_experiment

pytest.importorskip("torch", reason="the NAS algorithms and trial programs need the nas extra")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "darts.yaml"
#: The metricsCollectorSpec filter of Katib's DARTS examples.
GENOTYPE_FILTER = re.compile(r"([\w-]+)=(Genotype.*)")

TINY = ("\"{'num_epochs': '1', 'num_nodes': '1', 'init_channels': '2', 'stem_multiplier': '1', "
        "'batch_size': '128'}\"")


def example_doc() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in validate_experiment(load_experiment(doc))]


def katib_cpu_space() -> NasSpace:
    """The nasConfig of Katib's darts-cpu example."""
    return NasSpace.from_katib({"graphConfig": {"numLayers": 1}, "operations": [
        {"operationType": "max_pooling", "parameters": [
            {"name": "filter_size", "parameterType": "categorical", "feasibleSpace": {"list": ["3"]}}]}]})


def test_the_example_is_valid() -> None:
    assert errors_of(example_doc()) == []


@pytest.mark.parametrize(("name", "value", "message"), [
    ("num_epochs", "0", "num_epochs should be greater than zero"),
    ("w_lr", "-0.1", "w_lr should be greater than or equal to zero"),
    ("w_lr_min", "-1", "w_lr_min should be greater than or equal to zero"),
    ("alpha_lr", "-1", "alpha_lr should be greater than or equal to zero"),
    ("w_weight_decay", "-1", "w_weight_decay should be greater than or equal to zero"),
    ("alpha_weight_decay", "-1", "alpha_weight_decay should be greater than or equal to zero"),
    ("w_momentum", "-1", "w_momentum should be greater than or equal to zero"),
    ("w_grad_clip", "-1", "w_grad_clip should be greater than or equal to zero"),
    ("batch_size", "0", "batch_size should be greater than or equal to one"),
    ("num_workers", "-1", "num_workers should be greater than or equal to zero"),
    ("init_channels", "0", "init_channels should be greater than or equal to one"),
    ("print_step", "0", "print_step should be greater than or equal to one"),
    ("num_nodes", "0", "num_nodes should be greater than or equal to one"),
    ("stem_multiplier", "0", "stem_multiplier should be greater than or equal to one"),
    ("num_epochs", "two", "failed to validate num_epochs(two): invalid literal for int() with base 10: 'two'"),
])
def test_bad_settings_get_katibs_messages(name: str, value: str, message: str) -> None:
    assert setting_errors({name: value}) == [message]
    doc = example_doc()
    doc["spec"]["algorithm"]["algorithmSettings"] = [{"name": name, "value": value}]
    assert errors_of(doc) == [("spec.algorithm.algorithmSettings", message)]


def test_batch_size_none_and_unknown_settings_pass_as_in_katib() -> None:
    assert setting_errors({"batch_size": "None", "my_flag": "x"}) == []


def test_darts_needs_layers_but_not_sizes() -> None:
    doc = example_doc()
    doc["spec"]["nasConfig"]["graphConfig"] = {}
    assert errors_of(doc) == [("spec.nasConfig.graphConfig.numLayers", "Missing NumLayers in GraphConfig")]


def test_operations_need_a_list_first_parameter() -> None:
    doc = example_doc()
    doc["spec"]["nasConfig"]["operations"][0]["parameters"] = [
        {"name": "filter_size", "parameterType": "int", "feasibleSpace": {"min": "3", "max": "5"}}]
    doc["spec"]["nasConfig"]["operations"][1]["parameters"] = []
    assert errors_of(doc) == [
        ("spec.nasConfig.operations[0].parameters[0]",
         "darts takes the filter sizes from the first parameter's feasibleSpace.list, so it must be categorical "
         "or discrete"),
        ("spec.nasConfig.operations[1].parameters", "Missing ParameterConfigs in Operation"),
    ]


def test_assignment_is_formatted_exactly_as_katib() -> None:
    out = assignment(katib_cpu_space(), {"num_epochs": "1", "num_nodes": "1", "init_channels": "1",
                                         "stem_multiplier": "1", "batch_size": "None"})
    assert out == {
        "algorithm-settings": "{'num_epochs': '1', 'w_lr': 0.025, 'w_lr_min': 0.001, 'w_momentum': 0.9, "
                              "'w_weight_decay': 0.0003, 'w_grad_clip': 5.0, 'alpha_lr': 0.0003, "
                              "'alpha_weight_decay': 0.001, 'batch_size': null, 'num_workers': 4, "
                              "'init_channels': '1', 'print_step': 50, 'num_nodes': '1', 'stem_multiplier': '1'}",
        "search-space": "['max_pooling_3x3']",
        "num-layers": "1",
    }


def test_search_space_lists_every_filter_size_and_skip_connection() -> None:
    space = NasSpace.from_katib(example_doc()["spec"]["nasConfig"])
    assert json.loads(assignment(space, {})["search-space"].replace("'", '"')) == [
        "separable_convolution_3x3", "max_pooling_3x3", "skip_connection"]


def test_one_trial_then_exhaustion_and_a_retry_after_failure() -> None:
    space, darts = katib_cpu_space(), Darts()
    first = darts.suggest(space, [], 3, {}, 0, "maximize")
    assert len(first.assignments) == 1 and not first.exhausted
    a = first.assignments[0]
    assert darts.suggest(space, [Trial("t", a, "running")], 1, {}, 0, "maximize").assignments == []
    assert not darts.suggest(space, [Trial("t", a, "running")], 1, {}, 0, "maximize").exhausted
    retry = darts.suggest(space, [Trial("t", a, "failed")], 1, {}, 0, "maximize")
    assert retry.assignments == [a]
    done = darts.suggest(space, [Trial("t", a, "failed"), Trial("u", a, "succeeded")], 1, {}, 0, "maximize")
    assert done.assignments == [] and done.exhausted


# ---------------------------------------------------------------- the search trial program


def run_darts(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "natib.trials.darts", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
def test_darts_program_prints_accuracy_and_a_genotype_katibs_filter_reads() -> None:
    out = run_darts(f"--algorithm-settings={TINY}",
                    "--search-space=\"['separable_convolution_3x3', 'max_pooling_3x3', 'skip_connection', "
                    "'dilated_convolution_3x3', 'avg_pooling_3x3', 'convolution_3x3']\"",
                    "--num-layers=\"2\"", "--device=cpu")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Validation-Accuracy=")
    assert 0.0 <= float(lines[0].split("=")[1]) <= 1.0
    match = GENOTYPE_FILTER.search(lines[-1])
    assert match and match.group(1) == "Best-Genotype"
    genotype = match.group(2)
    shape = re.fullmatch(r"Genotype\(normal=(\[.*\]), normal_concat=range\(2, 3\), reduce=(\[.*\]), "
                         r"reduce_concat=range\(2, 3\)\)", genotype)
    assert shape, genotype
    for gene in shape.groups():
        nodes = eval(gene, {"__builtins__": {}})  # a literal list of (operation, input) pairs
        assert len(nodes) == 1 and len(nodes[0]) == 2
        for op, edge in nodes[0]:
            assert op in ("separable_convolution_3x3", "max_pooling_3x3", "skip_connection",
                          "dilated_convolution_3x3", "avg_pooling_3x3", "convolution_3x3")
            assert edge in (0, 1)


@pytest.mark.parametrize(("args", "message"), [
    ([f"--algorithm-settings={TINY}", "--search-space=['attention_3x3']", "--num-layers=1"],
     "--search-space: 'attention_3x3': operation 'attention' is not one of"),
    ([f"--algorithm-settings={TINY}", "--search-space=['max_pooling_2x2']", "--num-layers=1"],
     "the kernel size must be odd, got 2"),
    ([f"--algorithm-settings={TINY}", "--search-space=[]", "--num-layers=1"],
     "--search-space: must be a non-empty list of operation names"),
    ([f"--algorithm-settings={TINY}", "--search-space=['skip_connection']", "--num-layers=0"],
     "--num-layers: must be >= 1, got 0"),
    (["--algorithm-settings={'num_epochs': 'x'}", "--search-space=['skip_connection']", "--num-layers=1"],
     "--algorithm-settings: num_epochs must be int, got 'x'"),
    (["--algorithm-settings={'w_lr': '-1'}", "--search-space=['skip_connection']", "--num-layers=1"],
     "--algorithm-settings: w_lr must be >= 0, got -1.0"),
])
def test_darts_program_rejects_bad_input(args: list[str], message: str) -> None:
    from natib.trials.common import TrialError
    from natib.trials.darts import main

    with pytest.raises(TrialError) as caught:
        main([*args, "--device=cpu"])
    assert message in str(caught.value)


def test_darts_program_exits_2_on_bad_input() -> None:
    out = run_darts(f"--algorithm-settings={TINY}", "--search-space=['skip_connection']", "--num-layers=x")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --num-layers: not an integer: 'x'"


def test_darts_runs_one_step_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    out = run_darts(f"--algorithm-settings={TINY}", "--search-space=\"['separable_convolution_3x3', "
                    "'max_pooling_3x3', 'skip_connection']\"", "--num-layers=2", "--device=cuda",
                    "--max-steps=1")
    assert out.returncode == 0, out.stderr
    assert "device cuda" in out.stderr
    assert GENOTYPE_FILTER.search(out.stdout.splitlines()[-1])
