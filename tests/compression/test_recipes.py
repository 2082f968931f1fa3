"""Each compression recipe run as a real subprocess, with tiny training budgets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")

from tests.compression.helpers import REPO, metrics, run_recipe

PRUNE_METRICS = ("accuracy", "sparsity", "nonzero_params", "params", "size_bytes", "compressed_size_bytes",
                 "baseline_accuracy", "baseline_nonzero_params", "baseline_compressed_size_bytes", "accuracy_drop")
QUANT_METRICS = ("accuracy", "size_bytes", "latency_ms", "baseline_accuracy", "baseline_size_bytes",
                 "baseline_latency_ms", "size_ratio", "speedup", "accuracy_drop")
DISTILL_METRICS = ("accuracy", "size_bytes", "params", "teacher_accuracy", "teacher_size_bytes", "teacher_params",
                   "size_ratio", "accuracy_drop")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for this module's tests, so the same tiny baseline is trained once."""
    return tmp_path_factory.mktemp("cache")


def ok(run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.mark.parametrize(("method", "schedule", "amount"), [
    ("l1_unstructured", "oneshot", 0.6),
    ("global", "iterative", 0.8),
    ("ln_structured", "gradual", 0.5),
])
def test_prune_reaches_the_asked_sparsity(shared_cache: Path, method: str, schedule: str, amount: float) -> None:
    run = ok(run_recipe("prune", "--method", method, "--schedule", schedule, "--amount", str(amount),
                        *([] if schedule == "oneshot" else ["--steps", "2"]),
                        "--epochs", "3", "--finetune-epochs", "1", cache=shared_cache))
    m = metrics(run.stdout, *PRUNE_METRICS)
    assert abs(m["sparsity"] - amount) < 0.02, m
    assert m["params"] == m["baseline_nonzero_params"]  # the baseline is dense
    expected_nonzero = m["params"] * (1 - amount * 0.9) if method != "ln_structured" else m["params"]
    assert m["nonzero_params"] < expected_nonzero
    assert m["compressed_size_bytes"] < m["baseline_compressed_size_bytes"]
    assert 0.5 < m["accuracy"] <= 1 and 0.5 < m["baseline_accuracy"] <= 1
    assert abs(m["accuracy_drop"] - (m["baseline_accuracy"] - m["accuracy"])) < 1e-4


def test_structured_pruning_removes_whole_channels(tmp_path: Path) -> None:
    code = (
        "import torch\n"
        "from natib.trials import models, prune\n"
        "torch.manual_seed(0)\n"
        "m = models.build({'arch': 'cnn', 'width': 8, 'depth': 2}, (1, 8, 8), 10)\n"
        "layers = prune.prunable(m, True)\n"
        "for a in prune.step_amounts(prune.schedule_targets(0.5, 'iterative', 2)):\n"
        "    prune.prune_step(layers, 'ln_structured', a, 2.0)\n"
        "prune.make_permanent(layers)\n"
        "for l in layers:\n"
        "    rows = l.weight.flatten(1).abs().sum(1) == 0\n"
        "    print(type(l).__name__, int(rows.sum()), l.weight.shape[0], bool((l.bias[rows] == 0).all()),\n"
        "          hasattr(l, 'weight_mask'))\n"
        "print('classifier', int((m.classifier.weight == 0).sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for line in lines[:-1]:
        _kind, zero_rows, rows, bias_zero, hooked = line.split()
        assert int(zero_rows) == round(int(rows) * 0.5) and bias_zero == "True" and hooked == "False", line
    assert lines[-1] == "classifier 0"


def test_prune_schedules() -> None:
    from natib.trials.prune import schedule_targets, step_amounts

    assert schedule_targets(0.8, "oneshot", 1) == [0.8]
    it = schedule_targets(0.75, "iterative", 2)
    assert it == pytest.approx([0.5, 0.75])
    gradual = schedule_targets(0.9, "gradual", 4)
    assert gradual[-1] == pytest.approx(0.9) and gradual == sorted(gradual)
    assert gradual[0] > 0.9 / 4  # the cubic schedule prunes most early
    remaining = 1.0
    for a in step_amounts(gradual):
        remaining *= 1 - a
    assert 1 - remaining == pytest.approx(0.9)


@pytest.mark.parametrize(("args", "message"), [
    (["--amount", "1.0"], "--amount: must be in [0, 1)"),
    (["--method", "random"], "--method: must be one of"),
    (["--schedule", "cosine"], "--schedule: must be one of"),
    (["--steps", "0"], "--steps: must be > 0"),
    (["--finetune-epochs", "-1"], "--finetune-epochs: must be >= 0"),
    (["--data", "/nonexistent/d.npz"], "/nonexistent/d.npz: no such file or directory"),
])
def test_prune_bad_flags_fail_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    run = run_recipe("prune", *args, cache=tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_argparse_rejections_exit_2(tmp_path: Path) -> None:
    run = run_recipe("distill", "--temperature", "0", cache=tmp_path)
    assert run.returncode == 2 and "--temperature: must be a finite number > 0" in run.stderr


@pytest.mark.parametrize(("args", "ratio"), [
    (["--mode", "dynamic"], 0.8),
    (["--mode", "static", "--calibration-batches", "2"], 0.6),
    (["--mode", "static", "--arch", "mlp", "--width", "64", "--backend", "qnnpack"], 0.5),
])
def test_quantize_makes_a_smaller_model(shared_cache: Path, args: list[str], ratio: float) -> None:
    run = ok(run_recipe("quantize", *args, "--epochs", "3", "--repeats", "5", cache=shared_cache))
    m = metrics(run.stdout, *QUANT_METRICS)
    assert m["size_bytes"] < m["baseline_size_bytes"] * ratio, m
    assert m["size_ratio"] == pytest.approx(m["size_bytes"] / m["baseline_size_bytes"], rel=1e-4)
    assert m["baseline_accuracy"] > 0.7 and m["accuracy"] > m["baseline_accuracy"] - 0.05, m
    assert m["latency_ms"] > 0 and m["baseline_latency_ms"] > 0 and m["speedup"] > 0


def test_quantize_lstm_dynamically(tmp_path: Path) -> None:
    run = ok(run_recipe("quantize", "--arch", "lstm", "--width", "32", "--layers", "linear,lstm", "--epochs", "3",
                        "--repeats", "3", cache=tmp_path))
    m = metrics(run.stdout, *QUANT_METRICS)
    assert m["size_bytes"] < m["baseline_size_bytes"] * 0.5, m
    assert "DynamicQuantizedLSTM" in run.stderr or "LSTM" in run.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "lstm", "--mode", "static"], "static quantization needs --arch cnn or mlp"),
    (["--layers", "lstm"], "--layers: the CNN model has no lstm layer to quantize"),
    (["--layers", "conv"], "--layers: unknown layer type conv"),
    (["--backend", "tensorrt"], "--backend: must be one of"),
])
def test_quantize_bad_flags_fail_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    run = run_recipe("quantize", *args, "--epochs", "1", "--repeats", "1", cache=tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr


@pytest.mark.slow
def test_distill_student_is_smaller_and_teacher_is_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ("--teacher-epochs", "3", "--epochs", "3", "--width", "16", "--temperature", "3", "--alpha", "0.5")
    first = ok(run_recipe("distill", *args, cache=cache))
    m = metrics(first.stdout, *DISTILL_METRICS)
    assert m["size_bytes"] < m["teacher_size_bytes"] and m["params"] < m["teacher_params"]
    assert 0.5 < m["accuracy"] <= 1 and 0.7 < m["teacher_accuracy"] <= 1
    assert "training teacher" in first.stderr
    [teacher] = cache.glob("teacher-*.pt")
    before = teacher.stat()
    second = ok(run_recipe("distill", *args[:2], "--epochs", "2", "--alpha", "0.9", cache=cache))
    assert "training teacher" not in second.stderr and "cached" in second.stderr
    after = teacher.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert metrics(second.stdout, "teacher_accuracy")["teacher_accuracy"] == m["teacher_accuracy"]
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [teacher.name]
    other = ok(run_recipe("distill", "--teacher-epochs", "2", "--epochs", "1", cache=cache))
    assert "training teacher" in other.stderr  # a different teacher config is a different entry
    assert len(list(cache.glob("teacher-*.pt"))) == 2


@pytest.mark.slow
def test_a_corrupt_cache_entry_is_retrained(tmp_path: Path) -> None:
    args = ("--epochs", "1", "--finetune-epochs", "0", "--amount", "0.3")
    ok(run_recipe("prune", *args, cache=tmp_path))
    [baseline] = tmp_path.glob("baseline-*.pt")
    baseline.write_bytes(b"half a file")
    run = ok(run_recipe("prune", *args, cache=tmp_path))
    assert "ignoring unreadable cache file" in run.stderr and "training baseline" in run.stderr
    assert baseline.stat().st_size > 1000


@pytest.mark.slow
def test_parallel_trials_train_the_teacher_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "natib.trials.distill", "--teacher-epochs", "3", "--epochs", "1", "--threads", "1",
           "--cache-dir", str(cache)]
    procs = [subprocess.Popen([*cmd, "--width", str(8 + i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=str(REPO)) for i in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert sum("training teacher" in err for _, err in outs) == 1
    accuracies = {metrics(out, "teacher_accuracy")["teacher_accuracy"] for out, _ in outs}
    assert len(accuracies) == 1
    assert [p.suffix for p in cache.iterdir() if not p.name.endswith(".lock")] == [".pt"]


def test_recipes_read_a_user_npz(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "d.npz", x=(digits.images * 16).astype(np.uint8), y=digits.target)
    run = ok(run_recipe("prune", "--data", str(tmp_path / "d.npz"), "--arch", "mlp", "--epochs", "3",
                        "--finetune-epochs", "0", "--amount", "0.4", cache=tmp_path / "cache"))
    m = metrics(run.stdout, "accuracy", "sparsity")
    assert m["accuracy"] > 0.7 and abs(m["sparsity"] - 0.4) < 0.01


def test_no_cache_writes_nothing(tmp_path: Path) -> None:
    run = ok(run_recipe("prune", "--epochs", "1", "--finetune-epochs", "0", "--no-cache", cache=tmp_path / "c"))
    assert "training baseline" in run.stderr and "saved baseline" not in run.stderr
    assert not (tmp_path / "c").exists()
