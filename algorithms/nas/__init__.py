"""Neural architecture search: Katib's ``enas`` and ``darts`` over an experiment's ``spec.nasConfig``.

NAS algorithms do not search ``spec.parameters``; they take a :class:`~natib.algorithms.nas.space.NasSpace`
built from the nasConfig and return the assignments Katib's NAS suggestion services pass to trials.
"""

from __future__ import annotations

from natib.algorithms.nas.space import NasAlgorithm, NasSpace, nas_config_errors

__all__ = ["NAS_ALGORITHMS", "NasAlgorithm", "NasSpace", "get_nas_algorithm", "nas_config_errors"]

#: Katib name -> "module:Class"; the modules import torch only when a controller is actually built.
_NAS: dict[str, str] = {
    "enas": "natib.algorithms.nas.enas:Enas",
    "darts": "natib.algorithms.nas.darts:Darts",
}

#: Names of the NAS algorithms natib ships.
NAS_ALGORITHMS: tuple[str, ...] = tuple(_NAS)


def get_nas_algorithm(name: str) -> NasAlgorithm | None:
    """A fresh instance of the NAS algorithm called ``name``, or None if natib has none by that name."""
    import importlib

    target = _NAS.get(name)
    if target is None:
        return None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    instance: NasAlgorithm = cls()
    return instance
