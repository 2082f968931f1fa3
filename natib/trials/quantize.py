"""Quantize a trained network to int8 and measure what it costs and saves: a tunable trial program.

    python -m natib.trials.quantize --mode static --calibration-batches 8
    python -m natib.trials.quantize --arch lstm --mode dynamic --layers linear,lstm

The float baseline (``--arch``, ``--width``, ``--depth`` trained ``--epochs`` epochs) is trained once and kept
in the cache directory. Then, on the CPU:

- ``--mode dynamic``: ``torch.ao.quantization.quantize_dynamic`` turns the chosen layer types (``--layers``,
  any of linear, lstm, gru) into int8 weights with activations quantized on the fly;
- ``--mode static``: post-training static int8: conv/linear + ReLU pairs are fused, observers are inserted
  (``prepare``), ``--calibration-batches`` training batches are run through it, and ``convert`` produces an
  int8 network (cnn and mlp only). ``--backend`` picks the kernel set (``auto``: x86, else fbgemm, else
  qnnpack, whichever this torch build has).

Quantized kernels run on the CPU only, so the baseline is trained on ``--device`` and both models are measured
on the CPU. Printed metrics (``name=value``, stdout): ``accuracy``, ``size_bytes`` (serialized state_dict),
``latency_ms`` (median CPU time of one ``--latency-batch`` batch over ``--repeats`` runs), the same three for
the float baseline (``baseline_accuracy``, ``baseline_size_bytes``, ``baseline_latency_ms``), and
``size_ratio``, ``speedup`` and ``accuracy_drop``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from natib.trials import models
from natib.trials.common import (
    TrialError,
    add_common_arguments,
    cache_dir,
    device,
    evaluate,
    model_size_bytes,
    note,
    positive_float,
    positive_int,
    report,
    run_main,
    set_threads,
)
from natib.trials.data import load_dataset

# torch announces the move of eager-mode quantization to another package on every call; the API still works
warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")

LAYER_TYPES: dict[str, type[nn.Module]] = {"linear": nn.Linear, "lstm": nn.LSTM, "gru": nn.GRU}
BACKENDS = ("auto", "x86", "fbgemm", "qnnpack", "onednn")


def pick_backend(requested: str) -> str:
    """The quantized engine to use; a named one must be in this torch build."""
    supported = list(torch.backends.quantized.supported_engines)
    if requested not in BACKENDS:
        raise TrialError(f"--backend: must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "auto":
        for name in ("x86", "fbgemm", "qnnpack"):
            if name in supported:
                return name
        raise TrialError(f"--backend: this torch build has no int8 CPU engine (it has {supported})")
    if requested not in supported:
        raise TrialError(f"--backend: {requested} is not in this torch build (it has {', '.join(supported)})")
    return requested


def parse_layers(text: str) -> set[type[nn.Module]]:
    """``linear,lstm`` to the layer classes."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise TrialError("--layers: name at least one layer type (linear, lstm, gru)")
    unknown = [n for n in names if n not in LAYER_TYPES]
    if unknown:
        raise TrialError(f"--layers: unknown layer type {', '.join(unknown)}; use linear, lstm or gru")
    return {LAYER_TYPES[n] for n in names}


def present_layers(model: nn.Module, layers: set[type[nn.Module]]) -> set[type[nn.Module]]:
    """The asked-for layer types the model has; none of them is an error."""
    present = {t for t in layers if any(isinstance(m, t) for m in model.modules())}
    if not present:
        names = ", ".join(sorted(n for n, t in LAYER_TYPES.items() if t in layers))
        raise TrialError(f"--layers: the {type(model).__name__} model has no {names} layer to quantize")
    return present


def dynamic(model: nn.Module, layers: set[type[nn.Module]]) -> nn.Module:
    """int8 weights for every layer of the given types; activations quantized at run time."""
    present = present_layers(model, layers)
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), present, dtype=torch.qint8)


def static(model: nn.Module, backend: str, calibration: list[torch.Tensor]) -> nn.Module:
    """Post-training static int8: fuse, observe on ``calibration`` batches, convert."""
    from torch.ao import quantization as tq

    if not hasattr(model, "fuse_pairs"):
        raise TrialError("--mode: static quantization needs --arch cnn or mlp (LSTMs quantize dynamically only)")
    m = copy.deepcopy(model).eval()
    m = tq.fuse_modules(m, m.fuse_pairs())
    m.qconfig = tq.get_default_qconfig(backend)
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        for xb in calibration:
            m(xb)
    return tq.convert(m, inplace=False)


@torch.no_grad()
def latency_ms(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Median wall time of one forward pass over ``batch`` on the CPU, in milliseconds, after 3 warm-ups."""
    model.eval()
    for _ in range(3):
        model(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(batch)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m natib.trials.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=models.ARCHS, default="cnn", help="baseline network (cnn)")
    p.add_argument("--width", type=positive_int, default=None,
                   help="channels (cnn, 16), units (mlp, 128) or LSTM size (lstm, 64)")
    p.add_argument("--depth", type=positive_int, default=None, help="conv blocks, hidden or LSTM layers")
    p.add_argument("--epochs", type=positive_int, default=20, help="baseline training epochs (20)")
    p.add_argument("--lr", type=positive_float, default=5e-3, help="baseline learning rate (0.005)")
    p.add_argument("--mode", choices=("dynamic", "static"), default="dynamic", help="dynamic or static int8")
    p.add_argument("--layers", default="linear", help="dynamic mode: layer types to quantize (linear,lstm,gru)")
    p.add_argument("--backend", default="auto", help=f"int8 engine: {', '.join(BACKENDS)}")
    p.add_argument("--calibration-batches", type=positive_int, default=8,
                   help="static mode: training batches run through the observers (8)")
    p.add_argument("--latency-batch", type=positive_int, default=64, help="batch size of the latency timing (64)")
    p.add_argument("--repeats", type=positive_int, default=30, help="timed forward passes; the median is kept")
    add_common_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    layers = parse_layers(args.layers)
    backend = pick_backend(args.backend.strip().lower())
    if args.mode == "static" and args.arch == "lstm":
        raise TrialError("--mode: static quantization needs --arch cnn or mlp (LSTMs quantize dynamically only)")
    started = time.perf_counter()
    set_threads(args.threads)
    dev = device(args.device)
    torch.backends.quantized.engine = backend
    data = load_dataset(args.data, seed=args.seed, val_fraction=args.val_fraction)
    spec = {"arch": args.arch, "width": args.width or models.DEFAULT_WIDTH[args.arch],
            "depth": args.depth or models.DEFAULT_DEPTH[args.arch]}
    if args.mode == "dynamic":  # a bad --layers fails before any training
        present_layers(models.build(spec, data.shape, data.num_classes), layers)
    model, base_acc_dev, path, reused = models.trained(
        "baseline", spec, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        dev=dev, cache=None if args.no_cache else cache_dir(args.cache_dir))
    note(f"baseline {spec}: accuracy {base_acc_dev:.4f} ({'cached ' + str(path) if reused else 'trained'})")
    model = model.cpu().eval()
    cpu = torch.device("cpu")
    if args.mode == "dynamic":
        qmodel = dynamic(model, layers)
    else:
        calibration = [data.train_x[i:i + args.batch_size]
                       for i in range(0, len(data.train_x), args.batch_size)][: args.calibration_batches]
        qmodel = static(model, backend, calibration)
    kinds = sorted({type(m).__name__ for m in qmodel.modules() if "quantized" in type(m).__module__})
    note(f"quantized ({args.mode}, {backend}): {', '.join(kinds)}")
    batch = data.val_x[: args.latency_batch]
    if len(batch) < args.latency_batch:
        batch = data.val_x.repeat((args.latency_batch + len(batch) - 1) // len(batch), 1, 1, 1)[: args.latency_batch]
    base_acc = evaluate(model, data.val_x, data.val_y, dev=cpu)
    acc = evaluate(qmodel, data.val_x, data.val_y, dev=cpu)
    base_size, size = model_size_bytes(model), model_size_bytes(qmodel)
    base_ms, ms = latency_ms(model, batch, args.repeats), latency_ms(qmodel, batch, args.repeats)
    report(accuracy=acc, size_bytes=size, latency_ms=ms, baseline_accuracy=base_acc, baseline_size_bytes=base_size,
           baseline_latency_ms=base_ms, size_ratio=size / base_size, speedup=base_ms / ms if ms > 0 else 0.0,
           accuracy_drop=base_acc - acc, seconds=time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(run_main(main))
