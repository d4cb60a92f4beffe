"""Build the model named in a run spec."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from qgen.models.maxout import MaxoutMLP
from qgen.models.mlp import MLP
from qgen.models.nin import NiN
from qgen.models.vgg import VGG

MODELS = ("mlp", "nin", "vgg", "maxout")


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Model of ``spec["model"]`` quantized per ``spec["quant"]``, for inputs of ``input_shape`` (C, H, W)."""
    model, quant = spec["model"], spec["quant"]
    name = model["name"]
    bn = {k: model[k] for k in ("bn_momentum", "bn_eps") if k in model}
    if name == "mlp":
        return MLP(
            math.prod(input_shape),
            num_classes,
            depth=model["depth"],
            width=model["width"],
            quant=quant,
            dropout=model.get("dropout", 0.0),
            batch_norm=model.get("batch_norm", False),
            input_dropout=model.get("input_dropout", 0.0),
            output_batch_norm=model.get("output_batch_norm", False),
            init=model.get("init", "torch"),
            **bn,
        )
    if name == "nin":
        return NiN(
            input_shape[0],
            num_classes,
            depth=model["depth"],
            width=model["width"],
            quant=quant,
            base_width=model.get("base_width", 25),
            dropout=model.get("dropout", 0.0),
        )
    if name == "vgg":
        return VGG(
            input_shape,
            num_classes,
            depth=model["depth"],
            width=model["width"],
            quant=quant,
            fc_width=model.get("fc_width", 1024),
            **bn,
        )
    if name == "maxout":
        return MaxoutMLP(
            math.prod(input_shape),
            num_classes,
            depth=model["depth"],
            width=model["width"],
            pieces=model.get("pieces", 5),
            quant=quant,
            dropout=model.get("dropout", 0.5),
            input_dropout=model.get("input_dropout", 0.2),
        )
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def read_model_file(path: str, device: str = "cpu") -> dict[str, Any]:
    """The payload of a final ``model.pt`` (see qgen.train.save_model), read with ``weights_only=True``."""
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def model_from_payload(
    payload: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, device: str = "cpu"
) -> nn.Module:
    """Rebuild the trained model (eval mode) stored in a ``model.pt`` payload."""
    model = build_model(payload["spec"], input_shape, num_classes).to(device)
    model.load_state_dict(payload["state_dict"])
    return model.eval()
