"""In-process checks of the recipes' building blocks."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")
import torch
from torch.nn import functional

from natib.trials import models
from natib.trials.common import TrialError, evaluate, model_size_bytes
from natib.trials.distill import kd_loss
from natib.trials.quantize import dynamic, parse_layers, pick_backend, static

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def test_kd_loss_mixes_soft_and_hard_targets() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(16, 10), torch.randn(16, 10)
    labels = torch.randint(0, 10, (16,))
    ce = functional.cross_entropy(student, labels)
    assert kd_loss(student, teacher, labels, temperature=3, alpha=0.0) == pytest.approx(float(ce))
    assert float(kd_loss(teacher, teacher, labels, temperature=3, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    soft = float(kd_loss(student, teacher, labels, temperature=3, alpha=1.0))
    assert soft > 0
    half = float(kd_loss(student, teacher, labels, temperature=3, alpha=0.5))
    assert half == pytest.approx(0.5 * soft + 0.5 * float(ce), rel=1e-5)
    # T^2 scaling keeps the soft term's size comparable across temperatures
    hot = float(kd_loss(student, teacher, labels, temperature=8, alpha=1.0))
    assert 0.05 * soft < hot < 20 * soft


def test_static_int8_on_rgb_images_of_another_size() -> None:
    torch.manual_seed(0)
    model = models.build({"arch": "cnn", "width": 8, "depth": 2}, (3, 16, 16), 4).eval()
    x = torch.rand(32, 3, 16, 16)
    q = static(model, pick_backend("auto"), [x[:16], x[16:]])
    assert q(x).shape == (32, 4)
    assert model_size_bytes(q) < model_size_bytes(model) * 0.5
    same = (q(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert float(same) > 0.5


def test_dynamic_int8_keeps_predictions() -> None:
    from natib.trials.data import load_dataset

    data = load_dataset()
    torch.manual_seed(0)
    model = models.build({"arch": "mlp", "width": 64, "depth": 2}, data.shape, data.num_classes)
    from natib.trials.common import train

    train(model, data.train_x, data.train_y, epochs=3, lr=5e-3)
    q = dynamic(model, parse_layers("linear"))
    assert abs(evaluate(q, data.val_x, data.val_y) - evaluate(model, data.val_x, data.val_y)) < 0.02
    assert model_size_bytes(q) < model_size_bytes(model) * 0.5


def test_quantize_flag_checks() -> None:
    with pytest.raises(TrialError, match="--layers: name at least one layer type"):
        parse_layers(" , ")
    with pytest.raises(TrialError, match="--backend: must be one of"):
        pick_backend("cudnn")
    engines = torch.backends.quantized.supported_engines
    assert pick_backend("auto") in engines
    with pytest.raises(TrialError, match="static quantization needs --arch cnn or mlp"):
        static(models.build({"arch": "lstm", "width": 4, "depth": 1}, (1, 8, 8), 10), "qnnpack", [])
