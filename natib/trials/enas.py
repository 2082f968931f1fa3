"""ENAS child network: build the network an ``enas`` suggestion describes, train it, print its accuracy.

Run as ``python -m natib.trials.enas --architecture=... --nn_config=... [--num_epochs N] [--data PATH]``, the
flags Katib's ENAS trial template passes. Layer ``l`` applies the operation ``architecture[l][0]`` names in
``nn_config``'s embedding to the previous layer's output, concatenated (on channels) with the outputs of the
earlier layers whose skip bit ``architecture[l][1 + i]`` is 1, resized to the same height and width. Then
global average pooling, dropout 0.4 and a linear layer, as in Katib's ENAS trial program. Operations:
``convolution`` (filter_size, num_filter, stride), ``separable_convolution`` (filter_size, num_filter,
stride, depth_multiplier), ``depthwise_convolution`` (filter_size, stride, depth_multiplier) and ``reduction``
(reduction_type max_pooling or avg_pooling, pool_size).

Each epoch prints ``Training-Accuracy``, ``Training-Loss``, ``Validation-Accuracy`` and ``Validation-Loss``
lines (Katib's names) on stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from natib.trials import common
from natib.trials.common import TrialError, note, report
from natib.trials.data import load_dataset
from natib.trials.nas_ops import ConvBN, Pool, SeparableConv, int_param, parse_katib_json


def build_op(config: dict[str, Any], c_in: int, where: str) -> nn.Module:
    """The module of one embedding entry (``opt_type`` and ``opt_params``) for ``c_in`` input channels."""
    kind = config.get("opt_type")
    params = config.get("opt_params") or {}
    if not isinstance(params, dict):
        raise TrialError(f"{where}: opt_params must be a mapping, got {params!r}")
    if kind == "convolution":
        return ConvBN(c_in, int_param(params, "num_filter", where), int_param(params, "filter_size", where),
                      int_param(params, "stride", where, 1))
    if kind == "separable_convolution":
        return SeparableConv(c_in, int_param(params, "num_filter", where), int_param(params, "filter_size", where),
                             int_param(params, "stride", where, 1), int_param(params, "depth_multiplier", where, 1))
    if kind == "depthwise_convolution":
        multiplier = int_param(params, "depth_multiplier", where, 1)
        return ConvBN(c_in, c_in * multiplier, int_param(params, "filter_size", where),
                      int_param(params, "stride", where, 1), groups=c_in)
    if kind == "reduction":
        rtype = str(params.get("reduction_type", "max_pooling"))
        if rtype not in ("max_pooling", "avg_pooling"):
            raise TrialError(f"{where}: reduction_type must be max_pooling or avg_pooling, got {rtype!r}")
        return Pool(rtype.split("_")[0], int_param(params, "pool_size", where, 2))
    raise TrialError(f"{where}: operation type {kind!r} is not one of convolution, separable_convolution, "
                     "depthwise_convolution, reduction")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else nn.functional.adaptive_avg_pool2d(x, size)


class ChildNetwork(nn.Module):
    """The network one architecture describes, for images of ``shape`` (C, H, W) and ``num_classes`` classes."""

    def __init__(self, architecture: list[list[int]], embedding: dict[str, Any], shape: tuple[int, int, int],
                 num_classes: int) -> None:
        super().__init__()
        self.architecture = architecture
        self.layers = nn.ModuleList()
        probe = [torch.zeros(1, *shape)]
        with torch.no_grad():
            for index, entry in enumerate(architecture):
                where = f"--architecture: layer {index}"
                config = embedding.get(str(entry[0]))
                if not isinstance(config, dict):
                    raise TrialError(f"{where}: operation {entry[0]} is not in --nn_config's embedding")
                x = self._inputs(probe, entry)
                op = build_op(config, x.shape[1], f"--nn_config: operation {entry[0]}")
                self.layers.append(op)
                probe.append(op.eval()(x))
        self.dropout = nn.Dropout(0.4)
        self.head = nn.Linear(probe[-1].shape[1], num_classes)

    @staticmethod
    def _inputs(outputs: list[torch.Tensor], entry: list[int]) -> torch.Tensor:
        previous = outputs[-1]
        size = (previous.shape[-2], previous.shape[-1])
        skips = [outputs[i] for i, bit in enumerate(entry[1:]) if bit == 1 and i < len(outputs) - 1]
        if not skips:
            return previous
        return torch.cat([previous, *(_resize(s, size) for s in skips)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for entry, op in zip(self.architecture, self.layers, strict=True):
            outputs.append(op(self._inputs(outputs, entry)))
        pooled = outputs[-1].mean(dim=(2, 3))
        return self.head(self.dropout(pooled))


def parse_architecture(text: str) -> list[list[int]]:
    """Katib's ``architecture``: a list of layers, layer l holding the operation id and l skip bits."""
    arch = parse_katib_json(text, "--architecture")
    if not isinstance(arch, list) or not arch:
        raise TrialError(f"--architecture: must be a non-empty list of layers, got {text!r}")
    for index, entry in enumerate(arch):
        if (not isinstance(entry, list) or len(entry) != index + 1
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry)):
            raise TrialError(f"--architecture: layer {index} must be a list of {index + 1} integers "
                             f"(operation id, then {index} skip bits), got {entry!r}")
        if any(v not in (0, 1) for v in entry[1:]):
            raise TrialError(f"--architecture: layer {index} skip bits must be 0 or 1, got {entry[1:]!r}")
    return arch


def parse_nn_config(text: str) -> dict[str, Any]:
    """Katib's ``nn_config``: num_layers, input_sizes, output_sizes and the embedding of operations."""
    config = parse_katib_json(text, "--nn_config")
    if not isinstance(config, dict) or not isinstance(config.get("embedding"), dict):
        raise TrialError("--nn_config: must be a mapping with an embedding of operations")
    return config


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build and train the child network, report per-epoch metrics."""
    parser = argparse.ArgumentParser(prog="python -m natib.trials.enas", description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", required=True, help="Katib's architecture assignment")
    parser.add_argument("--nn_config", required=True, help="Katib's nn_config assignment")
    parser.add_argument("--num_epochs", type=common.positive_int, default=3, help="training epochs (3)")
    parser.add_argument("--num_gpus", type=common.non_negative_int, default=1,
                        help="accepted for Katib's templates; 0 forces the CPU")
    parser.add_argument("--lr", type=common.positive_float, default=0.01, help="Adam learning rate (0.01)")
    parser.add_argument("--data", default=None,
                        help="an .npz file or a directory of class subfolders (default: scikit-learn's digits)")
    parser.add_argument("--val-fraction", type=common.fraction, default=0.2, help="share held out (0.2)")
    parser.add_argument("--seed", type=common.non_negative_int, default=0, help="seed of split, init, shuffle (0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=common.non_negative_int, default=1, help="torch CPU threads (1)")
    parser.add_argument("--batch-size", type=common.positive_int, default=64, help="batch size (64)")
    args = parser.parse_args(argv)

    arch = parse_architecture(args.architecture)
    config = parse_nn_config(args.nn_config)
    if config.get("num_layers") not in (None, len(arch)):
        raise TrialError(f"--architecture: has {len(arch)} layers but --nn_config says num_layers="
                         f"{config.get('num_layers')}")
    common.set_threads(args.threads)
    dev = common.device("cpu" if args.num_gpus == 0 and args.device == "auto" else args.device)
    common.seed_everything(args.seed)
    data = load_dataset(args.data, seed=args.seed, val_fraction=args.val_fraction)
    c, h, w = data.shape
    sizes = config.get("input_sizes")
    if sizes and list(sizes) != [h, w, c]:
        note(f"nn_config input_sizes {sizes} differ from the data's {[h, w, c]}; building for the data")
    outputs = config.get("output_sizes")
    if outputs and outputs[-1] != data.num_classes:
        note(f"nn_config output_sizes {outputs} differ from the data's {data.num_classes} classes; using the data's")
    model = ChildNetwork(arch, config["embedding"], data.shape, data.num_classes).to(dev)
    note(f"child network: {len(arch)} layers, {common.count_parameters(model)} parameters, device {dev}")

    def on_epoch(epoch: int, loss: float) -> None:
        train_acc = common.evaluate(model, data.train_x, data.train_y, dev=dev)
        logits = common.predict(model, data.val_x, dev=dev)
        val_loss = float(nn.functional.cross_entropy(logits, data.val_y))
        val_acc = float((logits.argmax(1) == data.val_y).float().mean())
        note(f"epoch {epoch}/{args.num_epochs}")
        report(**{"Training-Accuracy": train_acc, "Training-Loss": loss, "Validation-Accuracy": val_acc,
                  "Validation-Loss": val_loss})
        model.train()

    common.train(model, data.train_x, data.train_y, epochs=args.num_epochs, lr=args.lr,
                 batch_size=args.batch_size, dev=dev, seed=args.seed, on_epoch=on_epoch)


if __name__ == "__main__":
    raise SystemExit(common.run_main(main))
