"""Build the model named in a run spec."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from qgen.models.mlp import MLP
from qgen.models.nin import NiN


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Model of ``spec["model"]`` quantized per ``spec["quant"]``, for inputs of ``input_shape`` (C, H, W)."""
    model, quant = spec["model"], spec["quant"]
    if model["name"] == "mlp":
        return MLP(
            math.prod(input_shape),
            num_classes,
            depth=model["depth"],
            width=model["width"],
            quant=quant,
            dropout=model.get("dropout", 0.0),
            batch_norm=model.get("batch_norm", False),
        )
    if model["name"] == "nin":
        return NiN(
            input_shape[0],
            num_classes,
            depth=model["depth"],
            width=model["width"],
            quant=quant,
            base_width=model.get("base_width", 25),
            dropout=model.get("dropout", 0.0),
        )
    raise ValueError(f"unknown model {model['name']!r}; known: mlp, nin")
