"""Standard model families as plain float models: torchvision's ResNet-18/50 and MobileNetV2, timm's ViT.

Nothing is downloaded: torchvision builds with ``weights=None``, timm's ``VisionTransformer`` is constructed
directly (never through a hub); pretrained weights come from a file (:mod:`qgen.models.pretrained`).
Quantization replaces the conv/linear modules afterwards (:mod:`qgen.quant.replace`).

- ResNet-18/50: He et al. 2016 (torchvision's definition, its Kaiming fan-out initialization).
- MobileNetV2: Sandler et al. 2018 (torchvision's; ``width_mult`` and ``dropout`` are its arguments).
- ``stem="cifar"`` (a reconstruction: the common small-input variant): ResNet's 7×7 stride-2 conv1 becomes
  a 3×3 stride-1 conv and the max-pool is removed (``maxpool`` becomes ``nn.Identity``); MobileNetV2's
  first conv gets stride 1. SAQ's CIFAR MobileNetV2 (kuangliu/pytorch-cifar's, in the ziplab/SAQ snapshot)
  differs more: stage 2 also at stride 1, ReLU instead of ReLU6, a 1×1 conv shortcut where a stride-1
  block changes width, no dropout; not reproduced here. A replaced first conv is initialized as
  torchvision initializes convs (Kaiming normal, fan-out).
- ViT: Dosovitskiy et al. 2021 in timm's definition and parameter names (class token, learned position
  embedding, pre-norm blocks, qkv bias), so timm and DeiT checkpoints load. ``deit_tiny`` is DeiT-Ti
  (Touvron et al. 2021: patch 16, width 192, 12 blocks, 3 heads; 5.7M parameters at 224 px),
  ``vit_small`` is ViT-S/16 (DeiT-S's architecture, ibid.: patch 16, width 384, 12 blocks, 6 heads; 22M).
  ``vit`` is a small ViT for 32×32 inputs whose defaults are ours, not a paper's: patch 4 (64 tokens at
  32 px), DeiT-Ti's width 192 and 3 heads of 64 dimensions, 9 blocks. ``dropout`` follows Dosovitskiy et
  al. (appendix B.1: after every dense layer except the qkv projection, and after adding the position
  embedding): timm's ``proj_drop_rate`` and ``pos_drop_rate``; ``drop_path`` is stochastic depth (DeiT
  trains with 0.1). Initialization is timm's default (truncated normal, std 0.02). Inputs are square,
  ``image_size`` a multiple of the patch size; the position embedding is sized for it, so a 224-px
  checkpoint loads only into a 224-px model (no resampling of the embedding here).

:data:`FIRST_LAST` names each family's first weighted layer and its classifier (the first/last-layer policy
and the precision plan use them).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from qgen.models.precision import FAMILY_ENDS as FIRST_LAST  # noqa: F401 - the torch-free plan's names

Stem = Literal["imagenet", "cifar"]

TORCHVISION_MODELS = ("resnet18", "resnet50", "mobilenet_v2")
VIT_MODELS = ("vit", "deit_tiny", "vit_small")

# architecture of each ViT: the named ones are fixed, "vit" gives defaults the caller may change
VIT_ARCHS: dict[str, dict[str, Any]] = {
    "vit": {"depth": 9, "width": 192, "heads": 3, "patch_size": 4, "mlp_ratio": 4.0},
    "deit_tiny": {"depth": 12, "width": 192, "heads": 3, "patch_size": 16, "mlp_ratio": 4.0},
    "vit_small": {"depth": 12, "width": 384, "heads": 6, "patch_size": 16, "mlp_ratio": 4.0},
}


def _unknown(name: str, known: tuple[str, ...]) -> ValueError:
    return ValueError(f"model.name: unknown model {name!r}; known: {', '.join(known)}")


def _conv_like(conv: nn.Conv2d, in_channels: int, **changes: Any) -> nn.Conv2d:
    """A new conv with ``conv``'s settings except ``in_channels`` and ``changes``, torchvision's init."""
    settings: dict[str, Any] = {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }
    new = nn.Conv2d(in_channels, conv.out_channels, **{**settings, **changes})
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def torchvision_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    stem: Stem = "imagenet",
    width_mult: float = 1.0,
    dropout: float | None = None,
) -> nn.Module:
    """torchvision's ``resnet18``, ``resnet50`` or ``mobilenet_v2`` (``weights=None``); stems: module doc.

    ``width_mult`` and ``dropout`` (None: torchvision's 0.2) apply to MobileNetV2 only; giving them to a
    ResNet is a ValueError naming the key.
    """
    from torchvision import models

    if name not in TORCHVISION_MODELS:
        raise _unknown(name, TORCHVISION_MODELS)
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"model.stem: 'imagenet' or 'cifar', got {stem!r}")
    if in_channels < 1:
        raise ValueError(f"model.in_channels: a positive number of input channels, got {in_channels!r}")
    if name == "mobilenet_v2":
        extra = {} if dropout is None else {"dropout": dropout}
        net = models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, **extra)
        first = net.features[0][0]
        if stem == "cifar" or in_channels != 3:
            stride = 1 if stem == "cifar" else first.stride
            net.features[0][0] = _conv_like(first, in_channels, stride=stride)
        return net
    for key, value, default in (("width_mult", width_mult, 1.0), ("dropout", dropout, None)):
        if value != default:
            raise ValueError(f"model.{key}: applies to mobilenet_v2 only, not to {name} (got {value!r})")
    net = getattr(models, name)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        net.conv1 = _conv_like(net.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = _conv_like(net.conv1, in_channels)
    return net


def vit_arch(
    name: str,
    *,
    depth: int | None = None,
    width: int | None = None,
    heads: int | None = None,
    patch_size: int | None = None,
    mlp_ratio: float = 4.0,
) -> dict[str, Any]:
    """ViT ``name``'s architecture with the caller's choices; changing a named model's is a ValueError."""
    if name not in VIT_MODELS:
        raise _unknown(name, VIT_MODELS)
    arch = dict(VIT_ARCHS[name])
    given = {"depth": depth, "width": width, "heads": heads, "patch_size": patch_size, "mlp_ratio": mlp_ratio}
    for key, value in given.items():
        if value is None or value == arch[key]:
            continue
        if name != "vit":
            raise ValueError(f"model.{key}: {name} fixes {key} = {arch[key]!r}, got {value!r}")
        arch[key] = value
    for key in ("depth", "width", "heads", "patch_size"):
        if isinstance(arch[key], bool) or not isinstance(arch[key], int) or arch[key] < 1:
            raise ValueError(f"model.{key}: a positive integer, got {arch[key]!r}")
    if arch["width"] % arch["heads"]:
        raise ValueError(f"model.heads: width {arch['width']} is not divisible by {arch['heads']} heads")
    return arch


def vit_model(
    name: str,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    *,
    depth: int | None = None,
    width: int | None = None,
    heads: int | None = None,
    patch_size: int | None = None,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    drop_path: float = 0.0,
) -> nn.Module:
    """timm's ``VisionTransformer`` for ``image_size`` inputs (``vit``, ``deit_tiny``, ``vit_small``)."""
    from timm.models.vision_transformer import VisionTransformer

    arch = vit_arch(name, depth=depth, width=width, heads=heads, patch_size=patch_size, mlp_ratio=mlp_ratio)
    if image_size % arch["patch_size"]:
        raise ValueError(
            f"model.patch_size: image size {image_size} is not divisible by patch size {arch['patch_size']}"
        )
    for key, rate in (("dropout", dropout), ("drop_path", drop_path)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"model.{key}: a rate in [0, 1), got {rate!r}")
    return VisionTransformer(
        img_size=image_size,
        patch_size=arch["patch_size"],
        in_chans=in_channels,
        num_classes=num_classes,
        embed_dim=arch["width"],
        depth=arch["depth"],
        num_heads=arch["heads"],
        mlp_ratio=arch["mlp_ratio"],
        pos_drop_rate=dropout,
        proj_drop_rate=dropout,
        drop_path_rate=drop_path,
    )
