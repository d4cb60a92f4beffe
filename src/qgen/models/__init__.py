"""Models built from quantizable layers (MLP, the NiN CNN of Jiang et al. 2019, BinaryConnect's VGG, the
maxout MLP of Courbariaux et al. 2014) and their precision plan.

The precision plan (:mod:`qgen.models.precision`) is imported eagerly and needs no torch: the workflow
checks every run's plan when it expands a config. The networks load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qgen.models.precision import LayerPrecision, layer_precisions, precision_record

if TYPE_CHECKING:
    from qgen.models.build import build_model, model_from_payload, read_model_file
    from qgen.models.mlp import MLP
    from qgen.models.nin import NiN

_LAZY = {
    "MLP": "qgen.models.mlp",
    "NiN": "qgen.models.nin",
    "build_model": "qgen.models.build",
    "model_from_payload": "qgen.models.build",
    "read_model_file": "qgen.models.build",
}

__all__ = [
    "MLP",
    "LayerPrecision",
    "NiN",
    "build_model",
    "layer_precisions",
    "model_from_payload",
    "precision_record",
    "read_model_file",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
