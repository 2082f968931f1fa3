"""Layers and argument parsing shared by the NAS trial programs (``natib.trials.enas``, ``natib.trials.darts``).

Katib passes NAS assignments as JSON written with single quotes, and its example templates wrap them in
literal quotes (``--architecture=\\"${trialParameters.neuralNetworkArchitecture}\\"``); :func:`parse_katib_json`
reads every form Katib's own trial programs accept.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn

from natib.trials.common import TrialError

_WRAPPING = "\\\"' \t\n"


def parse_katib_json(text: str, flag: str) -> Any:
    """The JSON value of a Katib NAS argument (single quotes allowed, wrapping quotes ignored)."""
    body = (text or "").strip(_WRAPPING).replace("\\'", "'").replace("'", '"')
    if not body:
        raise TrialError(f"{flag}: is empty")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise TrialError(f"{flag}: not Katib's JSON ({exc}): {text[:200]!r}") from None


def parse_int_flag(text: str, flag: str) -> int:
    """An integer argument that Katib may wrap in quotes (``--num-layers="3"``)."""
    body = (text or "").strip(_WRAPPING)
    try:
        value = int(body)
    except ValueError:
        raise TrialError(f"{flag}: not an integer: {text!r}") from None
    if value < 1:
        raise TrialError(f"{flag}: must be >= 1, got {value}")
    return value


def int_param(params: dict[str, Any], name: str, where: str, default: int | None = None) -> int:
    """An operation parameter as a positive integer (Katib sends categorical values as text)."""
    raw = params.get(name, default)
    if raw is None:
        raise TrialError(f"{where}: operation parameter {name} is missing")
    try:
        value = int(str(raw))
    except ValueError:
        raise TrialError(f"{where}: operation parameter {name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise TrialError(f"{where}: operation parameter {name} must be >= 1, got {value}")
    return value


class ConvBN(nn.Module):
    """Convolution (``same`` padding, optional dilation and groups), batch norm, ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1
                 ) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.op = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SeparableConv(nn.Module):
    """Depthwise convolution (``multiplier`` filters per channel) then a 1x1 convolution to ``c_out``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, multiplier: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.op = nn.Sequential(
            nn.Conv2d(c_in, c_in * multiplier, kernel, stride, pad, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in * multiplier, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Pool(nn.Module):
    """Max or average pooling: without ``stride`` a reducing pool that never shrinks a map below 1x1, with it
    a padded pool over an odd window."""

    def __init__(self, kind: str, size: int, stride: int | None = None) -> None:
        super().__init__()
        if kind not in ("max", "avg"):
            raise TrialError(f"pooling must be max or avg, got {kind!r}")
        self.kind, self.size, self.stride = kind, size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride is None:  # a reducing pool: window = stride, capped by the map
            k = max(1, min(self.size, x.shape[-2], x.shape[-1]))
            stride, pad = k, 0
        else:  # a shape-keeping pool (odd window, padded), subsampled by the stride
            k, stride, pad = self.size, self.stride, self.size // 2
        f = nn.functional
        if self.kind == "max":
            return f.max_pool2d(x, k, stride, pad)
        return f.avg_pool2d(x, k, stride, pad, count_include_pad=False)


_KERNEL = re.compile(r"^(.*)_(\d+)x(\d+)$")


def split_kernel(name: str) -> tuple[str, int]:
    """``separable_convolution_3x3`` -> (``separable_convolution``, 3)."""
    m = _KERNEL.match(name)
    if not m or m.group(2) != m.group(3):
        raise TrialError(f"--search-space: {name!r} is not <operation>_<k>x<k> or skip_connection")
    return m.group(1), int(m.group(2))
