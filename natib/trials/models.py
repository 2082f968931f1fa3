"""Small networks for the compression recipes, built from plain ``torch.nn`` layers.

Every model has ``QuantStub``/``DeQuantStub`` at its ends (identities until a model is statically
quantized) and separate ``nn.ReLU`` modules so that conv/linear + ReLU pairs can be fused. A model is
described by a plain dict (``spec``), so a cached model can be rebuilt from its file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from natib.trials.common import TrialError, atomic_save, evaluate, load_cached, note, seed_everything, train
from natib.trials.data import Dataset

ARCHS = ("cnn", "mlp", "lstm")


class MLP(nn.Module):
    """Flatten, then ``depth`` hidden Linear+ReLU layers of ``width`` units, then the classifier."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 128, depth: int = 2) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        n_in = c * h * w
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        self.quant = QuantStub()
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(n_in, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.features(self.flatten(x))
        return self.dequant(self.classifier(x))

    def fuse_pairs(self) -> list[list[str]]:
        """Names of the (Linear, ReLU) pairs to fuse before static quantization."""
        return [[f"features.{i}", f"features.{i + 1}"] for i in range(0, len(self.features), 2)]


class CNN(nn.Module):
    """``depth`` blocks of 3x3 Conv+ReLU (+ 2x2 max-pool while the image is at least 4 pixels), channels
    ``width``, ``2*width``, ...; an adaptive average pool to at most 4x4; a hidden Linear+ReLU; the classifier."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 16, depth: int = 2,
                 hidden: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        n_in = c
        for i in range(depth):
            n_out = width * 2**i
            layers += [nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            n_in = n_out
        ph, pw = min(h, 4), min(w, 4)
        self.quant = QuantStub()
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((ph, pw))
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(nn.Linear(n_in * ph * pw, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.flatten(self.pool(self.features(x)))
        return self.dequant(self.classifier(self.hidden(x)))

    def fuse_pairs(self) -> list[list[str]]:
        """Names of the (Conv2d/Linear, ReLU) pairs to fuse before static quantization."""
        pairs = [[f"features.{i}", f"features.{i + 1}"] for i, m in enumerate(self.features)
                 if isinstance(m, nn.Conv2d)]
        return [*pairs, ["hidden.0", "hidden.1"]]


class RowLSTM(nn.Module):
    """Reads an image row by row (each row's C*W values one time step) with an LSTM; classifies the last state."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 64, depth: int = 1) -> None:
        super().__init__()
        c, _h, w = shape
        self.lstm = nn.LSTM(c * w, width, num_layers=depth, batch_first=True)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(n, h, c * w)
        out, _ = self.lstm(seq)
        return self.classifier(out[:, -1])


def build(spec: dict[str, Any], shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A fresh model from ``spec`` = {"arch": cnn|mlp|lstm, "width": int, "depth": int}."""
    arch = spec.get("arch")
    width, depth = int(spec.get("width", 0)), int(spec.get("depth", 0))
    if arch not in ARCHS:
        raise TrialError(f"--arch: must be one of {', '.join(ARCHS)}, got {arch!r}")
    if width < 1:
        raise TrialError(f"--width: must be >= 1, got {width}")
    if depth < 1 or depth > 8:
        raise TrialError(f"--depth: must be between 1 and 8, got {depth}")
    if arch == "mlp":
        return MLP(shape, num_classes, width, depth)
    if arch == "cnn":
        return CNN(shape, num_classes, width, depth)
    return RowLSTM(shape, num_classes, width, depth)


DEFAULT_WIDTH = {"cnn": 16, "mlp": 128, "lstm": 64}
DEFAULT_DEPTH = {"cnn": 2, "mlp": 2, "lstm": 1}


def data_fingerprint(data: Dataset) -> str:
    """A digest of the data set's tensors: the same data gives the same cache entries, whatever its path."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.val_x, data.val_y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{data.shape}/{data.num_classes}".encode())
    return h.hexdigest()[:16]


def trained(kind: str, spec: dict[str, Any], data: Dataset, *, epochs: int, lr: float, batch_size: int, seed: int,
            dev: torch.device, cache: Path | None) -> tuple[nn.Module, float, Path | None, bool]:
    """The model of ``spec`` trained on ``data``, from ``cache`` when it was trained before.

    Returns (model on ``dev``, validation accuracy, cache file or None, whether it came from the cache). The
    cache file is keyed by ``kind`` (baseline, teacher), the spec, the training settings, the seed and the data;
    a lock file makes trials that start together train it once, and the file is written to a temporary name and
    renamed, so no reader ever sees part of it.
    """
    key = {"kind": kind, "spec": spec, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
           "data": data_fingerprint(data)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache / f"{kind}-{spec['arch']}-{digest}.pt" if cache is not None else None

    def load() -> tuple[nn.Module, float] | None:
        saved = load_cached(path) if path is not None else None
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None
        model = build(spec, data.shape, data.num_classes)
        try:
            model.load_state_dict(saved["state_dict"])
        except (RuntimeError, KeyError) as exc:
            note(f"ignoring cache file {path} that does not fit the model: {exc}")
            return None
        return model.to(dev).eval(), float(saved["accuracy"])

    def fit() -> tuple[nn.Module, float]:
        seed_everything(seed)
        model = build(spec, data.shape, data.num_classes).to(dev)
        note(f"training {kind} {spec} for {epochs} epochs")
        train(model, data.train_x, data.train_y, epochs=epochs, lr=lr, batch_size=batch_size, dev=dev, seed=seed)
        return model, evaluate(model, data.val_x, data.val_y, dev=dev)

    if path is None:
        model, acc = fit()
        return model, acc, None, False
    got = load()
    if got is not None:
        return got[0], got[1], path, True
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            got = load()  # another trial may have trained it while this one waited
            if got is not None:
                return got[0], got[1], path, True
            model, acc = fit()
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_save({"key": key, "state_dict": state, "accuracy": acc}, path)
            note(f"saved {kind} to {path}")
            return model, acc, path, False
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
