"""Build the model named in a run spec: its float definition, pretrained weights, then quantization.

Every family but maxout is defined in float (qgen's MLP, NiN and VGG, our CIFAR ResNets, the U-Net of
AskariHemmat et al. 2019, torchvision's ResNet and MobileNetV2, timm's ViT/DeiT) and quantized by module
replacement (:func:`qgen.quant.replace.quantize_model`); what was quantized and how is
``model.qgen_quantization`` (metrics.json's ``quantization``). Pretrained full-precision weights
(``model.pretrained``) load into the float model before it is quantized, so LSQ's step initialization
(2⟨|w|⟩/√Q_P) sees the loaded weights.
The maxout network computes in its own number format (Courbariaux et al. 2014) and is built as it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from qgen.models.maxout import MaxoutMLP
from qgen.models.mlp import MLP
from qgen.models.nin import NiN
from qgen.models.vgg import VGG

#: families of torchvision and timm (the names of qgen.models.standard)
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v2")
VIT = ("vit", "deit_tiny", "vit_small")
MODELS = ("mlp", "nin", "vgg", "maxout", "resnet_cifar", "unet", *TORCHVISION, *VIT)


def float_model(model: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The float network of a run spec's model section, for inputs of ``input_shape`` (C, H, W)."""
    name = model["name"]
    bn = {k: model[k] for k in ("bn_momentum", "bn_eps") if k in model}
    if name == "mlp":
        return MLP(
            math.prod(input_shape),
            num_classes,
            depth=model["depth"],
            width=model["width"],
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
            base_width=model.get("base_width", 25),
            dropout=model.get("dropout", 0.0),
        )
    if name == "vgg":
        return VGG(
            input_shape,
            num_classes,
            depth=model["depth"],
            width=model["width"],
            fc_width=model.get("fc_width", 1024),
            **bn,
        )
    if name == "resnet_cifar":
        from qgen.models.resnet_cifar import CifarResNet

        return CifarResNet(
            model["depth"],
            num_classes,
            in_channels=input_shape[0],
            width=model.get("width", 16),
            preact=model.get("preact", False),
            shortcut=model.get("shortcut", "A"),
        )
    if name == "unet":
        from qgen.models.unet import UNet, check_input_size

        if num_classes > 2:
            raise ValueError(
                f"model unet segments binary masks (one logit channel); got {num_classes} classes"
            )
        depth = model.get("depth", 3)
        check_input_size(depth, input_shape)
        return UNet(
            input_shape[0],
            1,
            depth=depth,
            width=model.get("width", 64),
            bn_momentum=model.get("bn_momentum", 0.1),
            init=model.get("init", "torch"),
        )
    if name in TORCHVISION:
        from qgen.models.standard import torchvision_model

        options = {k: model[k] for k in ("width_mult", "dropout") if k in model}
        return torchvision_model(
            name, num_classes, input_shape[0], stem=model.get("stem", "imagenet"), **options
        )
    if name in VIT:
        from qgen.models.standard import vit_model

        options = {
            k: model[k]
            for k in ("depth", "width", "heads", "patch_size", "mlp_ratio", "dropout", "drop_path")
            if k in model
        }
        return vit_model(name, num_classes, input_shape[1], input_shape[0], **options)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def build_model(
    spec: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    pretrained: str | Path | None = None,
) -> nn.Module:
    """Model of ``spec["model"]`` quantized per ``spec["quant"]``.

    ``pretrained``: the file of ``model.pretrained``'s weights (checked against its sha256), loaded before
    quantization; without it a spec with pretrained weights builds its architecture only (to load a
    trained state dict into)."""
    model_spec, quant = spec["model"], spec["quant"]
    if model_spec["name"] == "maxout":
        return MaxoutMLP(
            math.prod(input_shape),
            num_classes,
            depth=model_spec["depth"],
            width=model_spec["width"],
            pieces=model_spec.get("pieces", 5),
            quant=quant,
            dropout=model_spec.get("dropout", 0.5),
            input_dropout=model_spec.get("input_dropout", 0.2),
        )
    from qgen.quant.replace import quantize_model

    model = float_model(model_spec, input_shape, num_classes)
    loaded = None
    weights = model_spec.get("pretrained")
    if weights is not None and pretrained is not None:
        from qgen.models.pretrained import load_pretrained

        loaded = load_pretrained(model, pretrained, weights["sha256"], weights.get("exclude", ()))
    record = quantize_model(model, quant, init_weights=weights is None).to_dict()
    if loaded is not None:
        record["pretrained"] = {**loaded, "name": weights["name"]}
    model.qgen_quantization = record  # type: ignore[assignment]
    return model


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
