"""DARTS (Katib's ``darts``): no search here; one trial runs the whole differentiable search.

Like Katib's DARTS suggestion service, this only hands the nasConfig to the trial: every assignment holds
``algorithm-settings`` (the settings with Katib's defaults, as JSON with single quotes), ``search-space``
(the operation list, e.g. ``['max_pooling_3x3', 'skip_connection']``) and ``num-layers``. Katib's service
answers every request with the same assignment; natib suggests the one trial once (again only after every
earlier one failed) and then reports exhaustion, so the experiment ends with ``SuggestionEndReached``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from natib.algorithms.nas.space import NasSpace, nas_config_errors
from natib.algorithms.space import Assignment, ObjectiveType, SuggestResult, Trial

#: Katib's defaults, in Katib's order; a value of "None" becomes null.
DEFAULTS: dict[str, Any] = {
    "num_epochs": 50,
    "w_lr": 0.025,
    "w_lr_min": 0.001,
    "w_momentum": 0.9,
    "w_weight_decay": 3e-4,
    "w_grad_clip": 5.0,
    "alpha_lr": 3e-4,
    "alpha_weight_decay": 1e-3,
    "batch_size": 128,
    "num_workers": 4,
    "init_channels": 16,
    "print_step": 50,
    "num_nodes": 4,
    "stem_multiplier": 3,
}

_NON_NEGATIVE = ("w_lr", "w_lr_min", "alpha_lr", "w_weight_decay", "alpha_weight_decay", "w_momentum", "w_grad_clip")
_AT_LEAST_ONE = ("init_channels", "print_step", "num_nodes", "stem_multiplier")


def setting_errors(settings: Mapping[str, str]) -> list[str]:
    """Katib's messages for bad DARTS settings; unknown names are passed through to the trial, as in Katib."""
    errors: list[str] = []
    for name, value in settings.items():
        try:
            if name == "num_epochs" and not int(value) > 0:
                errors.append(f"{name} should be greater than zero")
            elif name in _NON_NEGATIVE and not float(value) >= 0.0:
                errors.append(f"{name} should be greater than or equal to zero")
            elif name == "batch_size" and value != "None" and not int(value) >= 1:
                errors.append("batch_size should be greater than or equal to one")
            elif name == "num_workers" and not int(value) >= 0:
                errors.append("num_workers should be greater than or equal to zero")
            elif name in _AT_LEAST_ONE and not int(value) >= 1:
                errors.append(f"{name} should be greater than or equal to one")
        except (TypeError, ValueError) as exc:
            errors.append(f"failed to validate {name}({value}): {exc}")
    return errors


def search_space_list(space: NasSpace) -> list[str]:
    """Katib's DARTS search space: ``<type>_<k>x<k>`` per value of each operation's first parameter."""
    out: list[str] = []
    for op in space.operations:
        kind = str(op.get("operationType"))
        params = op.get("parameters") or []
        if kind == "skip_connection" or not params:
            out.append(kind)
            continue
        for size in (params[0].get("feasibleSpace") or {}).get("list") or []:
            out.append(f"{kind}_{size}x{size}")
    return out


def algorithm_settings(settings: Mapping[str, str]) -> dict[str, Any]:
    """The defaults overlaid with the given settings (kept as text, "None" as null), as Katib passes them."""
    out: dict[str, Any] = dict(DEFAULTS)
    for name, value in settings.items():
        out[name] = None if value == "None" else value
    return out


def assignment(space: NasSpace, settings: Mapping[str, str]) -> Assignment:
    """The one DARTS assignment, with Katib's parameter names and formatting."""
    return {
        "algorithm-settings": json.dumps(algorithm_settings(settings)).replace('"', "'"),
        "search-space": json.dumps(search_space_list(space)).replace('"', "'"),
        "num-layers": str(space.num_layers),
    }


class Darts:
    """Katib's ``darts``: validates the nasConfig and settings, then suggests the single search trial."""

    name: ClassVar[str] = "darts"

    def validate(self, nas_config: Mapping[str, Any], settings: Mapping[str, str]) -> list[tuple[str, str]]:
        """Operation and graph problems, then settings problems (as ``spec.algorithm.algorithmSettings``)."""
        errors = nas_config_errors(nas_config, require_sizes=False)
        for op_index, op in enumerate(nas_config.get("operations") or []):
            params = op.get("parameters") or []
            first = params[0].get("parameterType") if params else None
            if op.get("operationType") != "skip_connection" and params and first not in ("categorical", "discrete"):
                errors.append((f"spec.nasConfig.operations[{op_index}].parameters[0]",
                               "darts takes the filter sizes from the first parameter's feasibleSpace.list, "
                               "so it must be categorical or discrete"))
        return errors + [("spec.algorithm.algorithmSettings", m) for m in setting_errors(settings)]

    def suggest(self, space: NasSpace, history: Sequence[Trial], n: int, settings: Mapping[str, str],
                seed: int, objective: ObjectiveType) -> SuggestResult:
        """The search trial if none is running or done; nothing more once one has succeeded."""
        errors = setting_errors(settings)
        if errors:
            raise ValueError(errors[0])
        if any(t.status in ("succeeded", "early_stopped") for t in history):
            return SuggestResult([], exhausted=True)
        if n <= 0 or any(t.is_active for t in history):
            return SuggestResult([])
        return SuggestResult([assignment(space, settings)])
