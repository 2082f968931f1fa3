"""ENAS (Katib's ``enas``): an LSTM controller samples architectures and learns from trial results by REINFORCE.

An architecture is Katib's encoding: for layer ``l`` (from 0) a list ``[op_id, skip_0, ..., skip_{l-1}]``,
where ``op_id`` numbers an operation of :meth:`NasSpace.expanded` and ``skip_i`` is 1 when layer ``l`` also
takes layer ``i``'s output. Trials get it as ``architecture`` and the operations it uses as ``nn_config``,
both JSON with single quotes, exactly as Katib's ENAS suggestion service formats them.

The controller (after Pham et al., 2018) is an LSTM cell that, layer by layer, picks an operation from a
softmax and then each skip connection from an attention over the earlier layers. Logits are divided by
``controller_temperature`` and squashed by ``controller_tanh_const * tanh``. Training is REINFORCE with Adam
(``controller_learning_rate``): loss = -(reward - baseline) * log p(architecture) - entropy_weight * entropy
+ skip_weight * KL(skip probability || skip_target), the baseline an exponential average of the rewards with
decay ``controller_baseline_decay``. The reward is the trial's objective value, negated for minimize.

Nothing is kept between calls. The controller is rebuilt on every call from the seed and the history: each
suggestion call is one round, recorded in the ``ROUND_LABEL`` of the trials it created (the number of results
it had); replaying every round in order, each training ``controller_train_steps`` steps on that many results
(in creation order), reproduces the controller, so a restarted suggestion actor and ``natib replay --verify``
give the same answers. torch is imported only here, and only when a controller is built (extra ``nas``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from natib.algorithms.nas.space import NasSpace, nas_config_errors
from natib.algorithms.space import Assignment, ObjectiveType, SuggestResult, Trial

if TYPE_CHECKING:
    import torch

#: Label holding the number of results the controller had learnt from when it sampled the trial.
ROUND_LABEL = "enas.natib/round"

#: Katib's settings: (type, low, high or None for no upper bound, default); floats are checked as (low, high].
SETTINGS: dict[str, tuple[type, float, float | None, float | int]] = {
    "controller_hidden_size": (int, 1, None, 64),
    "controller_temperature": (float, 0, None, 5.0),
    "controller_tanh_const": (float, 0, None, 2.25),
    "controller_entropy_weight": (float, 0.0, None, 1e-5),
    "controller_baseline_decay": (float, 0.0, 1.0, 0.999),
    "controller_learning_rate": (float, 0.0, 1.0, 5e-5),
    "controller_skip_target": (float, 0.0, 1.0, 0.4),
    "controller_skip_weight": (float, 0.0, None, 0.8),
    "controller_train_steps": (int, 1, None, 50),
    "controller_log_every_steps": (int, 1, None, 10),
}

#: Settings that may be "None", which turns the feature off.
NONE_ALLOWED = ("controller_temperature", "controller_tanh_const", "controller_entropy_weight",
                "controller_skip_weight")

#: The extra that brings PyTorch.
TORCH_MISSING = "algorithm enas needs PyTorch, which is not installed; install natib with the nas extra: " \
                "pip install 'natib[nas]'"


def _range_text(low: float, high: float | None, kind: type) -> str:
    upper = "inf" if high is None else repr(high)
    lower = repr(low)
    return f"({lower}, {upper}]" if kind is float else f"[{lower}, {upper})"


def setting_errors(settings: Mapping[str, str]) -> list[str]:
    """Katib's messages for every bad ENAS setting, in the order given."""
    errors: list[str] = []
    for name, raw in settings.items():
        if name not in SETTINGS:
            errors.append(f"Unknown Algorithm Setting name: {name}")
            continue
        if name in NONE_ALLOWED and raw == "None":
            continue
        kind, low, high, _ = SETTINGS[name]
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            errors.append(f"Algorithm Setting {name} must be {kind.__name__} type")
            continue
        if kind is float and not math.isfinite(value):
            errors.append(f"Algorithm Setting {name}: {value} with float type must be a finite number")
        elif kind is float and (value <= low or (high is not None and value > high)):
            errors.append(f"Algorithm Setting {name}: {value} with float type must be in range "
                          f"{_range_text(low, high, float)}")
        elif kind is int and value < low:
            errors.append(f"Algorithm Setting {name}: {value} with int type must be in range "
                          f"{_range_text(int(low), high, int)}")
    return errors


@dataclass(frozen=True)
class EnasSettings:
    """Parsed settings with Katib's defaults; None where the user turned a term off."""

    hidden_size: int = 64
    temperature: float | None = 5.0
    tanh_const: float | None = 2.25
    entropy_weight: float | None = 1e-5
    baseline_decay: float = 0.999
    learning_rate: float = 5e-5
    skip_target: float = 0.4
    skip_weight: float | None = 0.8
    train_steps: int = 50
    log_every_steps: int = 10

    @classmethod
    def parse(cls, settings: Mapping[str, str]) -> EnasSettings:
        """Settings from their text; raises ValueError with Katib's message for the first bad one."""
        errors = setting_errors(settings)
        if errors:
            raise ValueError(errors[0])
        values: dict[str, Any] = {}
        for name, (kind, _, _, default) in SETTINGS.items():
            raw = settings.get(name)
            values[name.removeprefix("controller_")] = (
                default if raw is None else None if raw == "None" else kind(raw))
        return cls(**values)


def encode(arc: Sequence[int], num_layers: int) -> list[list[int]]:
    """Katib's per-layer form of a flat architecture: layer l takes ``l + 1`` entries."""
    out: list[list[int]] = []
    start = 0
    for layer in range(num_layers):
        out.append([int(v) for v in arc[start:start + layer + 1]])
        start += layer + 1
    return out


def decode(text: str, num_layers: int, num_ops: int) -> list[int] | None:
    """The flat architecture in an ``architecture`` value, or None if it does not fit this space."""
    try:
        layers = json.loads(text.replace("'", '"'))
    except (TypeError, ValueError):
        return None
    if not isinstance(layers, list) or len(layers) != num_layers:
        return None
    flat: list[int] = []
    for layer, entry in enumerate(layers):
        if not isinstance(entry, list) or len(entry) != layer + 1 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in entry):
            return None
        if not 0 <= entry[0] < num_ops or any(v not in (0, 1) for v in entry[1:]):
            return None
        flat += entry
    return flat


def format_assignment(space: NasSpace, arc: Sequence[int]) -> Assignment:
    """``architecture`` and ``nn_config`` exactly as Katib's ENAS service writes them."""
    ops = space.expanded()
    layers = encode(arc, space.num_layers)
    embedding: dict[int, dict[str, Any]] = {}
    for entry in layers:
        embedding[entry[0]] = ops[entry[0]].to_dict()
    nn_config = {"num_layers": space.num_layers, "input_sizes": list(space.input_sizes),
                 "output_sizes": list(space.output_sizes), "embedding": embedding}
    return {"architecture": json.dumps(layers).replace('"', "'"),
            "nn_config": json.dumps(nn_config).replace('"', "'")}


def _int_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


_TORCH_THREADS = threading.Lock()


@contextmanager
def _single_thread() -> Iterator[None]:
    # One thread makes every reduction run in the same order, so replays match bit for bit; the lock keeps
    # concurrent calls from restoring the thread count under each other.
    import torch

    with _TORCH_THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class Controller:
    """The LSTM policy over architectures of ``num_layers`` layers and ``num_ops`` operations (float64, CPU)."""

    def __init__(self, num_layers: int, num_ops: int, settings: EnasSettings, seed: int) -> None:
        import torch
        from torch import nn

        self.torch = torch
        self.num_layers, self.num_ops, self.settings = num_layers, num_ops, settings
        h = settings.hidden_size
        dtype = torch.float64
        self.cell = nn.LSTMCell(h, h, dtype=dtype)
        self.g_emb = nn.Parameter(torch.zeros(1, h, dtype=dtype))
        self.w_emb = nn.Embedding(num_ops, h, dtype=dtype)
        self.w_soft = nn.Linear(h, num_ops, bias=False, dtype=dtype)
        self.w_attn_1 = nn.Linear(h, h, bias=False, dtype=dtype)
        self.w_attn_2 = nn.Linear(h, h, bias=False, dtype=dtype)
        self.v_attn = nn.Linear(h, 1, bias=False, dtype=dtype)
        self.modules = nn.ModuleList([self.cell, self.w_emb, self.w_soft, self.w_attn_1, self.w_attn_2, self.v_attn])
        gen = torch.Generator().manual_seed(_int_seed(seed, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.1, 0.1, generator=gen)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=settings.learning_rate, betas=(0.0, 0.999),
                                          eps=1e-3)
        self.baseline: float | None = None

    def parameters(self) -> list[torch.Tensor]:
        """Every trainable tensor, in a fixed order."""
        return [self.g_emb, *self.modules.parameters()]

    def _squash(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.temperature is not None:
            logits = logits / s.temperature
        if s.tanh_const is not None:
            logits = s.tanh_const * self.torch.tanh(logits)
        return logits

    def run(self, batch: int, arcs: torch.Tensor | None = None, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample ``batch`` architectures (or score the given ones): (arcs, log_prob, entropy, skip_kl)."""
        torch = self.torch
        f = torch.nn.functional
        h = self.settings.hidden_size
        state = (torch.zeros(batch, h, dtype=torch.float64), torch.zeros(batch, h, dtype=torch.float64))
        inputs = self.g_emb.expand(batch, h)
        anchors: list[Any] = []
        anchors_w1: list[Any] = []
        chosen: list[Any] = []
        log_prob = torch.zeros(batch, dtype=torch.float64)
        entropy = torch.zeros(batch, dtype=torch.float64)
        kl = torch.zeros(batch, dtype=torch.float64)
        target = min(max(self.settings.skip_target, 1e-6), 1 - 1e-6)
        col = 0
        for layer in range(self.num_layers):
            state = self.cell(inputs, state)
            logits = self._squash(self.w_soft(state[0]))
            logp = f.log_softmax(logits, dim=-1)
            if arcs is None:
                op = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            else:
                op = arcs[:, col]
            col += 1
            chosen.append(op.unsqueeze(1))
            log_prob = log_prob + logp.gather(1, op.unsqueeze(1)).squeeze(1)
            entropy = entropy - (logp.exp() * logp).sum(-1)
            inputs = self.w_emb(op)
            state = self.cell(inputs, state)
            if layer > 0:
                query = torch.tanh(torch.stack(anchors_w1, 1) + self.w_attn_2(state[0]).unsqueeze(1))
                logit = self.v_attn(query).squeeze(-1)  # (batch, layer)
                pair = self._squash(torch.stack([-logit, logit], -1))
                slogp = f.log_softmax(pair, dim=-1)
                if arcs is None:
                    probs = slogp.exp().reshape(-1, 2)
                    skip = torch.multinomial(probs, 1, generator=generator).reshape(batch, layer)
                else:
                    skip = arcs[:, col:col + layer]
                col += layer
                chosen.append(skip)
                log_prob = log_prob + slogp.gather(2, skip.unsqueeze(2)).squeeze(2).sum(1)
                entropy = entropy - (slogp.exp() * slogp).sum(-1).sum(1)
                p = torch.sigmoid(logit).clamp(1e-6, 1 - 1e-6)
                kl = kl + (p * torch.log(p / target) + (1 - p) * torch.log((1 - p) / (1 - target))).sum(1)
                weights = skip.to(torch.float64).unsqueeze(2)
                inputs = (weights * torch.stack(anchors, 1)).sum(1) / (1.0 + weights.sum(1))
            else:
                inputs = self.g_emb.expand(batch, h)
            anchors.append(state[0])
            anchors_w1.append(self.w_attn_1(state[0]))
        return torch.cat(chosen, 1), log_prob, entropy, kl

    def train(self, arcs: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        """``train_steps`` REINFORCE steps on the given (architecture, reward) pairs."""
        torch = self.torch
        s = self.settings
        arc_t = torch.tensor([list(a) for a in arcs], dtype=torch.long)
        reward_t = torch.tensor(list(rewards), dtype=torch.float64)
        mean_reward = float(reward_t.mean())
        if self.baseline is None:
            self.baseline = mean_reward
        for _ in range(s.train_steps):
            self.baseline -= (1 - s.baseline_decay) * (self.baseline - mean_reward)
            _, log_prob, entropy, kl = self.run(len(arcs), arc_t)
            loss = -((reward_t - self.baseline) * log_prob).mean()
            if s.entropy_weight is not None:
                loss = loss - s.entropy_weight * entropy.mean()
            if s.skip_weight is not None:
                loss = loss + s.skip_weight * kl.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def sample(self, n: int, seed: int) -> list[list[int]]:
        """``n`` architectures drawn with a generator seeded by ``seed``."""
        gen = self.torch.Generator().manual_seed(seed)
        with self.torch.no_grad():
            arcs, _, _, _ = self.run(n, generator=gen)
        return [[int(v) for v in row] for row in arcs.tolist()]


def results(space: NasSpace, history: Sequence[Trial], objective: ObjectiveType) -> tuple[list[list[int]], list[float]]:
    """(architecture, reward) of every trial with a result, in creation order; reward negated for minimize."""
    num_ops = len(space.expanded())
    arcs: list[list[int]] = []
    rewards: list[float] = []
    for t in history:
        if not t.has_result or t.objective is None:
            continue
        arc = decode(str(t.assignment.get("architecture", "")), space.num_layers, num_ops)
        if arc is None:
            continue
        arcs.append(arc)
        rewards.append(-t.objective if objective == "minimize" else t.objective)
    return arcs, rewards


def rounds(history: Sequence[Trial], current: int) -> list[int]:
    """The result counts of every earlier call (from the trials' labels) and this one, ascending, no zeros."""
    seen = {current} if current > 0 else set()
    for t in history:
        raw = t.labels.get(ROUND_LABEL)
        if raw is not None and raw.isdigit() and 0 < int(raw) <= current:
            seen.add(int(raw))
    return sorted(seen)


def build_controller(space: NasSpace, history: Sequence[Trial], settings: EnasSettings, seed: int,
                     objective: ObjectiveType) -> tuple[Controller, int]:
    """The controller as the history has trained it, and the number of results it learnt from."""
    arcs, rewards = results(space, history, objective)
    ctrl = Controller(space.num_layers, len(space.expanded()), settings, seed)
    for count in rounds(history, len(arcs)):
        ctrl.train(arcs[:count], rewards[:count])
    return ctrl, len(arcs)


class Enas:
    """Katib's ``enas``: a REINFORCE-trained LSTM controller, rebuilt from the history on every call."""

    name: ClassVar[str] = "enas"

    def validate(self, nas_config: Mapping[str, Any], settings: Mapping[str, str]) -> list[tuple[str, str]]:
        """Graph and operation problems, settings problems, and a missing PyTorch."""
        errors = nas_config_errors(nas_config, require_sizes=True)
        errors += [("spec.algorithm.algorithmSettings", m) for m in setting_errors(settings)]
        if importlib.util.find_spec("torch") is None:
            errors.append(("spec.algorithm.algorithmName", TORCH_MISSING))
        return errors

    def suggest(self, space: NasSpace, history: Sequence[Trial], n: int, settings: Mapping[str, str],
                seed: int, objective: ObjectiveType) -> SuggestResult:
        """``n`` architectures from the controller trained on every result so far."""
        parsed = EnasSettings.parse(settings)
        if importlib.util.find_spec("torch") is None:
            raise ValueError(TORCH_MISSING)
        if n <= 0:
            return SuggestResult([])
        with _single_thread():
            ctrl, count = build_controller(space, history, parsed, seed, objective)
            arcs = ctrl.sample(n, _int_seed(seed, 2, len(history)))
        return SuggestResult([format_assignment(space, a) for a in arcs],
                             labels=[{ROUND_LABEL: str(count)} for _ in arcs])
