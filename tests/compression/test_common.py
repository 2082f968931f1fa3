"""The helpers the trial programs share."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")
import torch
from torch import nn

from natib.trials import common, models
from natib.trials.common import TrialError


def test_device_choice() -> None:
    assert common.device("cpu") == torch.device("cpu")
    assert common.device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrialError, match="--device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        common.device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_an_error() -> None:
    for name in ("cuda", "cuda:0"):
        with pytest.raises(TrialError, match="CUDA is not available"):
            common.device(name)


def test_report_prints_flushed_name_value_lines(capsys: pytest.CaptureFixture[str]) -> None:
    common.report(accuracy=0.912345678, size_bytes=12345, tiny=1.5e-7, flag=True)
    assert capsys.readouterr().out.splitlines() == ["accuracy=0.912346", "size_bytes=12345", "tiny=1.5e-07",
                                                    "flag=1"]


def test_seed_everything_repeats_initialisation() -> None:
    common.seed_everything(7)
    a = nn.Linear(4, 4).weight.detach().clone()
    common.seed_everything(7)
    b = nn.Linear(4, 4).weight.detach().clone()
    assert torch.equal(a, b)


def test_size_and_parameter_counts() -> None:
    small, big = nn.Linear(10, 10), nn.Linear(100, 100)
    assert common.count_parameters(small) == 110
    assert common.model_size_bytes(big) > common.model_size_bytes(small) + 100 * 100 * 4 - 1000
    with torch.no_grad():
        small.weight[:5] = 0
    assert common.count_parameters(small, nonzero=True) == 110 - 50


def test_train_and_evaluate_learn_digits() -> None:
    from natib.trials.data import load_dataset

    data = load_dataset()
    common.seed_everything(0)
    model = models.build({"arch": "mlp", "width": 32, "depth": 1}, data.shape, data.num_classes)
    before = common.evaluate(model, data.val_x, data.val_y)
    seen: list[int] = []
    loss = common.train(model, data.train_x, data.train_y, epochs=3, lr=5e-3, on_epoch=lambda e, _: seen.append(e))
    assert seen == [1, 2, 3] and loss < 1.0
    after = common.evaluate(model, data.val_x, data.val_y)
    assert before < 0.3 < 0.85 < after <= 1.0
    with pytest.raises(TrialError, match="lr: must be a finite number > 0"):
        common.train(model, data.train_x, data.train_y, epochs=1, lr=0.0)


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NATIB_CACHE_DIR", raising=False)
    monkeypatch.delenv("NATIB_HOME", raising=False)
    assert common.cache_dir() == Path.home() / ".cache" / "natib"
    monkeypatch.setenv("NATIB_HOME", str(tmp_path / "home"))
    assert common.cache_dir() == tmp_path / "home" / "cache"
    monkeypatch.setenv("NATIB_CACHE_DIR", str(tmp_path / "c"))
    assert common.cache_dir() == tmp_path / "c"
    assert common.cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"


def test_atomic_save_leaves_only_the_finished_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "m.pt"
    common.atomic_save({"w": torch.ones(3)}, target)
    assert [p.name for p in target.parent.iterdir()] == ["m.pt"]
    assert torch.equal(common.load_cached(target)["w"], torch.ones(3))
    target.write_bytes(b"truncated")
    assert common.load_cached(target) is None
    assert common.load_cached(tmp_path / "absent.pt") is None


def test_model_specs_are_checked() -> None:
    for spec, message in [({"arch": "rnn", "width": 4, "depth": 1}, "--arch: must be one of"),
                          ({"arch": "mlp", "width": 0, "depth": 1}, "--width: must be >= 1"),
                          ({"arch": "cnn", "width": 4, "depth": 0}, "--depth: must be between 1 and 8")]:
        with pytest.raises(TrialError, match=message):
            models.build(spec, (1, 8, 8), 10)


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 28, 28), (1, 3, 3)])
def test_every_model_fits_every_image_shape(arch: str, shape: tuple[int, int, int]) -> None:
    model = models.build({"arch": arch, "width": 4, "depth": 2}, shape, 5)
    assert model(torch.rand(2, *shape)).shape == (2, 5)
