"""Prune a trained network and fine-tune it: a tunable trial program.

    python -m natib.trials.prune --method l1_unstructured --amount 0.7 --schedule gradual --steps 4

The baseline (``--arch``, ``--width``, ``--depth`` trained ``--epochs`` epochs) is trained once per data set,
seed and settings and kept in the cache directory, so the trials of an experiment share it. It is then pruned
with ``torch.nn.utils.prune``:

- ``l1_unstructured``: the ``amount`` smallest weights of every conv and linear layer, layer by layer;
- ``global``: the ``amount`` smallest weights of all those layers ranked together;
- ``ln_structured``: whole output channels (conv) and neurons (hidden linear layers) of smallest L``norm``
  norm, with their biases; the classifier keeps all its outputs.

``--schedule oneshot`` prunes ``amount`` at once; ``iterative`` reaches it in ``--steps`` equal-ratio steps;
``gradual`` follows the cubic schedule s_k = amount * (1 - (1 - k/steps)^3). After each step the network is
fine-tuned ``--finetune-epochs`` epochs with the masks in place. The masks are then made permanent and the
result is measured. Printed metrics (``name=value``, stdout): ``accuracy``, ``sparsity`` (share of zero
weights among the pruned tensors), ``nonzero_params``, ``params``, ``size_bytes`` (serialized state_dict),
``compressed_size_bytes`` (the same, zlib-compressed: what the zeros save on disk), and the baseline's
``baseline_accuracy``, ``baseline_nonzero_params``, ``baseline_compressed_size_bytes``, plus ``accuracy_drop``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zlib

import torch
from torch import nn
from torch.nn.utils import prune

from natib.trials import models
from natib.trials.common import (
    TrialError,
    add_common_arguments,
    cache_dir,
    count_parameters,
    device,
    evaluate,
    model_size_bytes,
    non_negative_int,
    note,
    positive_float,
    positive_int,
    report,
    run_main,
    seed_everything,
    set_threads,
    train,
)
from natib.trials.data import load_dataset

METHODS = {"l1_unstructured": "l1_unstructured", "unstructured": "l1_unstructured", "global": "global",
           "ln_structured": "ln_structured", "structured": "ln_structured"}
SCHEDULES = ("oneshot", "iterative", "gradual")


def schedule_targets(amount: float, schedule: str, steps: int) -> list[float]:
    """The total sparsity to reach after each step."""
    if schedule not in SCHEDULES:
        raise TrialError(f"--schedule: must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "oneshot" or steps == 1:
        return [amount]
    if schedule == "iterative":
        return [1 - (1 - amount) ** (k / steps) for k in range(1, steps + 1)]
    return [amount * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


def step_amounts(targets: list[float]) -> list[float]:
    """Per-step amounts relative to what is still unpruned (torch's pruning containers count that way)."""
    out, before = [], 0.0
    for t in targets:
        out.append(0.0 if before >= 1 else max(0.0, 1 - (1 - t) / (1 - before)))
        before = t
    return out


def prunable(model: nn.Module, structured: bool) -> list[nn.Module]:
    """Conv and linear layers to prune; structured pruning leaves the classifier's outputs alone."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if structured:
        classifier = getattr(model, "classifier", None)
        layers = [m for m in layers if m is not classifier]
    return layers


def prune_step(layers: list[nn.Module], method: str, amount: float, norm: float) -> None:
    """Prune ``amount`` of what is left, by ``method``."""
    if amount <= 0:
        return
    if method == "global":
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                  amount=amount)
        return
    for m in layers:
        if method == "l1_unstructured":
            prune.l1_unstructured(m, "weight", amount=amount)
        else:
            prune.ln_structured(m, "weight", amount=amount, n=norm, dim=0)
            if m.bias is not None:  # a pruned channel or neuron loses its bias too, so it can be removed
                keep = m.weight_mask.flatten(1).any(dim=1).to(m.bias.dtype)
                if prune.is_pruned(m) and hasattr(m, "bias_mask"):
                    keep = keep * m.bias_mask
                    prune.remove(m, "bias")
                prune.custom_from_mask(m, "bias", keep)


def make_permanent(layers: list[nn.Module]) -> None:
    """Fold every mask into its tensor and drop the pruning hooks."""
    for m in layers:
        for name in ("weight", "bias"):
            if hasattr(m, f"{name}_mask"):
                prune.remove(m, name)


def sparsity(layers: list[nn.Module]) -> float:
    """Share of exactly-zero values among the layers' weights."""
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / total if total else 0.0


def compressed_size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state_dict after zlib compression."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return len(zlib.compress(buf.getvalue(), 6))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m natib.trials.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("cnn", "mlp"), default="cnn", help="baseline network (cnn)")
    p.add_argument("--width", type=positive_int, default=None, help="channels (cnn, 16) or units (mlp, 128)")
    p.add_argument("--depth", type=positive_int, default=None, help="conv blocks or hidden layers (2)")
    p.add_argument("--epochs", type=positive_int, default=20, help="baseline training epochs (20)")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="baseline learning rate (0.005)")
    p.add_argument("--method", default="l1_unstructured",
                   help="l1_unstructured (unstructured), global or ln_structured (structured)")
    p.add_argument("--amount", type=float, default=0.5, help="share of weights (or channels) to prune, in [0, 1)")
    p.add_argument("--schedule", default="oneshot", help="oneshot, iterative or gradual")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="pruning steps of iterative and gradual (3); oneshot ignores it")
    p.add_argument("--finetune-epochs", type=non_negative_int, default=2, help="fine-tuning epochs after each step")
    p.add_argument("--finetune-lr", type=positive_float, default=1e-3, help="fine-tuning learning rate (0.001)")
    p.add_argument("--norm", type=positive_float, default=2.0, help="Ln norm of ln_structured (2)")
    add_common_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    method = METHODS.get(args.method.strip().lower())
    if method is None:
        raise TrialError(f"--method: must be one of {', '.join(METHODS)}, got {args.method!r}")
    if not (0.0 <= args.amount < 1.0):
        raise TrialError(f"--amount: must be in [0, 1), got {args.amount}")
    if args.schedule not in SCHEDULES:
        raise TrialError(f"--schedule: must be one of {', '.join(SCHEDULES)}, got {args.schedule!r}")
    steps = 1 if args.schedule == "oneshot" else (args.steps or 3)
    if args.schedule == "oneshot" and args.steps not in (None, 1):
        note(f"--steps {args.steps} is ignored: the oneshot schedule has one step")
    started = time.perf_counter()
    set_threads(args.threads)
    dev = device(args.device)
    data = load_dataset(args.data, seed=args.seed, val_fraction=args.val_fraction)
    spec = {"arch": args.arch, "width": args.width or models.DEFAULT_WIDTH[args.arch],
            "depth": args.depth or models.DEFAULT_DEPTH[args.arch]}
    model, base_acc, path, reused = models.trained(
        "baseline", spec, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        dev=dev, cache=None if args.no_cache else cache_dir(args.cache_dir))
    note(f"baseline {spec}: accuracy {base_acc:.4f} ({'cached ' + str(path) if reused else 'trained'})")
    base_nonzero = count_parameters(model, nonzero=True)
    base_compressed = compressed_size_bytes(model)

    structured = method == "ln_structured"
    layers = prunable(model, structured)
    targets = schedule_targets(args.amount, args.schedule, steps)
    seed_everything(args.seed + 1)
    for k, (target, amount) in enumerate(zip(targets, step_amounts(targets), strict=True), start=1):
        prune_step(layers, method, amount, args.norm)
        if args.finetune_epochs:
            train(model, data.train_x, data.train_y, epochs=args.finetune_epochs, lr=args.finetune_lr,
                  batch_size=args.batch_size, dev=dev, seed=args.seed + k)
        note(f"step {k}/{steps}: target sparsity {target:.3f}, accuracy "
             f"{evaluate(model, data.val_x, data.val_y, dev=dev):.4f}")
    make_permanent(layers)
    acc = evaluate(model, data.val_x, data.val_y, dev=dev)
    report(accuracy=acc, sparsity=sparsity(layers), nonzero_params=count_parameters(model, nonzero=True),
           params=count_parameters(model), size_bytes=model_size_bytes(model),
           compressed_size_bytes=compressed_size_bytes(model), baseline_accuracy=base_acc,
           baseline_nonzero_params=base_nonzero, baseline_compressed_size_bytes=base_compressed,
           accuracy_drop=base_acc - acc, seconds=time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(run_main(main))
