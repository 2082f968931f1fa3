"""DARTS search: a differentiable architecture search over one cell, run inside a single trial.

Run as ``python -m natib.trials.darts --algorithm-settings=... --search-space=... --num-layers=N``, the flags
Katib's DARTS trial template passes. The network is a stem convolution and ``num-layers`` cells (the cells
at a third and two thirds of the depth reduce the resolution); each cell has ``num_nodes`` nodes, every node
summing a softmax-weighted mix of every operation in ``search-space`` (plus ``none``) over each earlier
state. Network weights train with SGD (``w_lr`` annealed to ``w_lr_min`` by a cosine schedule,
``w_momentum``, ``w_weight_decay``, gradients clipped to ``w_grad_clip``) on one half of the training data;
the mixing weights (alphas) train with Adam (``alpha_lr``, ``alpha_weight_decay``) on the other half, one
step each, alternately (first-order DARTS).

After every epoch it prints ``Validation-Accuracy=...``; at the end ``Best-Genotype=Genotype(...)``, the
cell of the epoch with the best validation accuracy: for each node the two strongest incoming edges with
their strongest operation other than ``none``, as Katib's DARTS trial prints it.
"""

from __future__ import annotations

import argparse
import math
from collections import namedtuple
from typing import Any

import torch
from torch import nn

from natib.trials import common
from natib.trials.common import TrialError, note, report
from natib.trials.data import load_dataset
from natib.trials.nas_ops import ConvBN, Pool, SeparableConv, parse_int_flag, parse_katib_json, split_kernel

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

#: Katib's DARTS settings and their defaults, with the type each is read as.
SETTING_TYPES: dict[str, tuple[type, float | int | None]] = {
    "num_epochs": (int, 50), "w_lr": (float, 0.025), "w_lr_min": (float, 0.001), "w_momentum": (float, 0.9),
    "w_weight_decay": (float, 3e-4), "w_grad_clip": (float, 5.0), "alpha_lr": (float, 3e-4),
    "alpha_weight_decay": (float, 1e-3), "batch_size": (int, 128), "num_workers": (int, 4),
    "init_channels": (int, 16), "print_step": (int, 50), "num_nodes": (int, 4), "stem_multiplier": (int, 3),
}

OPERATIONS = ("convolution", "separable_convolution", "dilated_convolution", "max_pooling", "avg_pooling")


def parse_settings(text: str) -> dict[str, Any]:
    """Katib's ``algorithm-settings`` JSON as typed values (defaults for absent ones); unknown names are kept."""
    raw = parse_katib_json(text, "--algorithm-settings")
    if not isinstance(raw, dict):
        raise TrialError("--algorithm-settings: must be a mapping of setting names to values")
    out: dict[str, Any] = {name: default for name, (_, default) in SETTING_TYPES.items()}
    for name, value in raw.items():
        if name not in SETTING_TYPES:
            out[name] = value
            continue
        kind = SETTING_TYPES[name][0]
        if value is None:
            out[name] = SETTING_TYPES[name][1]
            continue
        try:
            out[name] = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
        except (TypeError, ValueError):
            raise TrialError(f"--algorithm-settings: {name} must be {kind.__name__}, got {value!r}") from None
        if not math.isfinite(float(out[name])):
            raise TrialError(f"--algorithm-settings: {name} must be finite, got {value!r}")
    for name in ("num_epochs", "batch_size", "init_channels", "print_step", "num_nodes", "stem_multiplier"):
        if out[name] < 1:
            raise TrialError(f"--algorithm-settings: {name} must be >= 1, got {out[name]}")
    for name in ("w_lr", "w_lr_min", "w_momentum", "w_weight_decay", "w_grad_clip", "alpha_lr",
                 "alpha_weight_decay"):
        if out[name] < 0:
            raise TrialError(f"--algorithm-settings: {name} must be >= 0, got {out[name]}")
    return out


def parse_search_space(text: str) -> list[str]:
    """Katib's ``search-space``: operation names such as ``max_pooling_3x3`` and ``skip_connection``."""
    space = parse_katib_json(text, "--search-space")
    if not isinstance(space, list) or not space or not all(isinstance(s, str) for s in space):
        raise TrialError(f"--search-space: must be a non-empty list of operation names, got {text!r}")
    for name in space:
        if name == "skip_connection":
            continue
        kind, k = split_kernel(name)
        if kind not in OPERATIONS:
            raise TrialError(f"--search-space: {name!r}: operation {kind!r} is not one of "
                             f"{', '.join(OPERATIONS)} or skip_connection")
        if k % 2 == 0:
            raise TrialError(f"--search-space: {name!r}: the kernel size must be odd, got {k}")
    return list(space)


class Zero(nn.Module):
    """The ``none`` operation: no connection (zeros, subsampled when the edge reduces)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::self.stride, ::self.stride] * 0.0


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convolutions (DARTS' identity on reducing edges)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        half = c_out // 2
        self.a = nn.Conv2d(c_in, half, 1, 2, bias=False)
        self.b = nn.Conv2d(c_in, c_out - half, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = x[:, :, 1:, 1:] if x.shape[-1] > 1 and x.shape[-2] > 1 else x
        a = self.a(nn.functional.relu(x))
        b = self.b(nn.functional.relu(shifted))
        if b.shape[-2:] != a.shape[-2:]:
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        return self.bn(torch.cat([a, b], 1))


def make_op(name: str, c: int, stride: int) -> nn.Module:
    """One candidate operation on ``c`` channels."""
    if name == "none":
        return Zero(stride)
    if name == "skip_connection":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    kind, k = split_kernel(name)
    if kind == "convolution":
        return ConvBN(c, c, k, stride)
    if kind == "separable_convolution":
        return SeparableConv(c, c, k, stride)
    if kind == "dilated_convolution":
        return SeparableConv(c, c, k, stride, dilation=2)
    return nn.Sequential(Pool(kind.split("_")[0], k, stride), nn.BatchNorm2d(c, affine=False))


class MixedOp(nn.Module):
    """Every candidate operation on one edge, summed with the edge's softmax weights."""

    def __init__(self, primitives: list[str], c: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(p, c, stride) for p in primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))  # type: ignore[return-value]


class Cell(nn.Module):
    """A DARTS cell: two input states, ``nodes`` intermediate nodes, output = their concatenation."""

    def __init__(self, primitives: list[str], nodes: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ConvBN(c_pp, c, 1)
        self.pre1 = ConvBN(c_p, c, 1)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(2 + i):
                self.edges.append(MixedOp(primitives, c, 2 if reduction and j < 2 else 1))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.nodes):
            size = states[-1].shape[-2:] if len(states) > 2 else None
            parts = [self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)]
            if size is None:
                size = parts[0].shape[-2:]
            parts = [p if p.shape[-2:] == size else nn.functional.adaptive_avg_pool2d(p, size) for p in parts]
            offset += len(states)
            states.append(sum(parts))  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)


class SearchNetwork(nn.Module):
    """Stem, ``layers`` cells sharing two alpha matrices (normal and reduce), pooling, linear classifier."""

    def __init__(self, primitives: list[str], shape: tuple[int, int, int], num_classes: int, layers: int,
                 settings: dict[str, Any]) -> None:
        super().__init__()
        self.primitives = [*primitives, "none"]
        nodes, c = int(settings["num_nodes"]), int(settings["init_channels"])
        c_stem = int(settings["stem_multiplier"]) * c
        self.nodes = nodes
        self.stem = nn.Sequential(nn.Conv2d(shape[0], c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, c_cur = c_stem, c_stem, c
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_cur *= 2
            cell = Cell(self.primitives, nodes, c_pp, c_p, c_cur, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, nodes * c_cur
        self.classifier = nn.Linear(c_p, num_classes)
        edges = sum(2 + i for i in range(nodes))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(self.primitives)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(self.primitives)))

    def alphas(self) -> list[nn.Parameter]:
        """The architecture parameters."""
        return [self.alpha_normal, self.alpha_reduce]

    def weights(self) -> list[nn.Parameter]:
        """The network weights (everything but the alphas)."""
        return [p for n, p in self.named_parameters() if not n.startswith("alpha_")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        normal = nn.functional.softmax(self.alpha_normal, dim=-1)
        reduce = nn.functional.softmax(self.alpha_reduce, dim=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(s1.mean(dim=(2, 3)))

    def genotype(self) -> Genotype:
        """The discrete cell: per node, the two strongest edges and their strongest operation but ``none``."""

        def parse(alpha: torch.Tensor) -> list[list[tuple[str, int]]]:
            weights = nn.functional.softmax(alpha.detach().cpu(), dim=-1)[:, :-1]
            gene: list[list[tuple[str, int]]] = []
            start = 0
            for i in range(self.nodes):
                rows = weights[start:start + 2 + i]
                best = rows.max(dim=1)
                order = sorted(range(len(rows)), key=lambda j: -float(best.values[j]))[:2]
                gene.append([(self.primitives[int(best.indices[j])], j) for j in sorted(order)])
                start += 2 + i
            return gene

        concat = range(2, 2 + self.nodes)
        return Genotype(normal=parse(self.alpha_normal), normal_concat=concat, reduce=parse(self.alpha_reduce),
                        reduce_concat=concat)


def search(primitives: list[str], layers: int, settings: dict[str, Any], *, data_path: str | None, seed: int,
           dev: torch.device, val_fraction: float, max_steps: int = 0) -> Genotype:
    """Run the bilevel search; report each epoch's validation accuracy; return the best epoch's genotype."""
    common.seed_everything(seed)
    data = load_dataset(data_path, seed=seed, val_fraction=val_fraction)
    model = SearchNetwork(primitives, data.shape, data.num_classes, layers, settings).to(dev)
    epochs, batch = int(settings["num_epochs"]), int(settings["batch_size"])
    w_opt = torch.optim.SGD(model.weights(), lr=settings["w_lr"], momentum=settings["w_momentum"],
                            weight_decay=settings["w_weight_decay"])
    a_opt = torch.optim.Adam(model.alphas(), lr=settings["alpha_lr"], betas=(0.5, 0.999),
                             weight_decay=settings["alpha_weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs, eta_min=settings["w_lr_min"])
    half = len(data.train_x) // 2
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.train_x), generator=gen)
    wx, wy = data.train_x[order[:half]], data.train_y[order[:half]]
    ax, ay = data.train_x[order[half:]], data.train_y[order[half:]]
    note(f"DARTS: {layers} cells, {model.nodes} nodes, operations {model.primitives}, "
         f"{common.count_parameters(model)} parameters, device {dev}")
    best_acc, best = -1.0, model.genotype()
    loss_fn = nn.functional.cross_entropy
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        arch_batches = common.batches(ax, ay, batch, generator=gen)
        for i, (xb, yb) in enumerate(common.batches(wx, wy, batch, generator=gen)):
            xa, ya = next(arch_batches, (xb, yb))
            a_opt.zero_grad()
            loss_fn(model(xa.to(dev)), ya.to(dev)).backward()
            a_opt.step()
            w_opt.zero_grad()
            loss = loss_fn(model(xb.to(dev)), yb.to(dev))
            loss.backward()
            nn.utils.clip_grad_norm_(model.weights(), settings["w_grad_clip"])
            w_opt.step()
            step += 1
            if (i + 1) % int(settings["print_step"]) == 0:
                note(f"epoch {epoch} step {i + 1}: loss {float(loss):.4f}")
            if max_steps and step >= max_steps:
                break
        sched.step()
        acc = common.evaluate(model, data.val_x, data.val_y, dev=dev)
        genotype = model.genotype()
        note(f"epoch {epoch}/{epochs}: genotype {genotype}")
        report(**{"Validation-Accuracy": acc})
        if acc > best_acc:
            best_acc, best = acc, genotype
        if max_steps and step >= max_steps:
            break
    return best


def main(argv: list[str] | None = None) -> None:
    """Parse Katib's DARTS flags, search, print the best genotype."""
    parser = argparse.ArgumentParser(prog="python -m natib.trials.darts", description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm-settings", required=True, help="Katib's algorithm-settings assignment")
    parser.add_argument("--search-space", required=True, help="Katib's search-space assignment")
    parser.add_argument("--num-layers", required=True, help="Katib's num-layers assignment (cells)")
    parser.add_argument("--data", default=None,
                        help="an .npz file or a directory of class subfolders (default: scikit-learn's digits)")
    parser.add_argument("--val-fraction", type=common.fraction, default=0.2, help="share held out (0.2)")
    parser.add_argument("--seed", type=common.non_negative_int, default=0, help="seed of split, init, shuffle (0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=common.non_negative_int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--max-steps", type=common.non_negative_int, default=0,
                        help="stop after this many weight steps in all (0: no limit; for smoke tests)")
    args = parser.parse_args(argv)
    settings = parse_settings(args.algorithm_settings)
    primitives = parse_search_space(args.search_space)
    layers = parse_int_flag(args.num_layers, "--num-layers")
    common.set_threads(args.threads)
    dev = common.device(args.device)
    best = search(primitives, layers, settings, data_path=args.data, seed=args.seed, dev=dev,
                  val_fraction=args.val_fraction, max_steps=args.max_steps)
    report(**{"Best-Genotype": str(best)})


if __name__ == "__main__":
    raise SystemExit(common.run_main(main))
