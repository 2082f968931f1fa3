"""The recipes on a CUDA device, where there is one."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")
import torch

from tests.compression.helpers import metrics, run_recipe

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@needs_cuda
def test_prune_and_distill_on_cuda(tmp_path: Path) -> None:
    run = run_recipe("prune", "--device", "cuda", "--epochs", "3", "--finetune-epochs", "1", "--amount", "0.5",
                     cache=tmp_path)
    assert run.returncode == 0, run.stderr
    m = metrics(run.stdout, "accuracy", "sparsity", "baseline_accuracy")
    assert abs(m["sparsity"] - 0.5) < 0.02 and m["accuracy"] > 0.5
    run = run_recipe("distill", "--device", "cuda", "--epochs", "2", "--teacher-epochs", "2", cache=tmp_path)
    assert run.returncode == 0, run.stderr
    m = metrics(run.stdout, "accuracy", "size_bytes", "teacher_size_bytes")
    assert m["size_bytes"] < m["teacher_size_bytes"] and m["accuracy"] > 0.3


@needs_cuda
def test_quantize_trains_on_cuda_and_measures_on_cpu(tmp_path: Path) -> None:
    run = run_recipe("quantize", "--device", "cuda", "--mode", "static", "--epochs", "3", "--repeats", "3",
                     cache=tmp_path)
    assert run.returncode == 0, run.stderr
    m = metrics(run.stdout, "accuracy", "size_bytes", "baseline_size_bytes")
    assert m["size_bytes"] < m["baseline_size_bytes"] and m["accuracy"] > 0.5


@needs_cuda
def test_auto_picks_cuda() -> None:
    from natib.trials.common import device

    assert device("auto").type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_fails_the_trial(tmp_path: Path) -> None:
    run = run_recipe("quantize", "--device", "cuda", cache=tmp_path)
    assert run.returncode == 2
    assert "--device: 'cuda' was asked for but CUDA is not available" in run.stderr
