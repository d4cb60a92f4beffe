"""Quantized Linear and Conv2d: the weight and the layer's input pass through their quantizers.

Biases stay in float (as in LSQ). A layer built with ``quant=None`` is an ordinary float layer
whose quantizers are identities, so float and quantized models share one code path.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qgen.quant.quantizers import Quantizer
from qgen.quant.registry import LayerQuant


class QuantModule(nn.Module):
    """Mixin of quantized layers: ``weight_quant``, ``input_quant`` and the deployed weight.

    ``quant_attrs`` names every quantizer attribute of the layer (replaced by identities to get the
    float network, see qgen.measures.deployed.quantizers_disabled)."""

    weight: nn.Parameter
    weight_quant: nn.Module
    input_quant: nn.Module
    quant_attrs: tuple[str, ...] = ("weight_quant", "input_quant")

    def _setup_quant(self, quant: LayerQuant | None, init_weight: bool = True) -> None:
        """Build the layer's quantizers; ``init_weight`` lets a quantizer with its own initialization
        (BinaryConnect: uniform in [−H, H]) draw the weight (off for weights loaded from a file)."""
        self.quant = quant
        if quant is None:
            self.weight_quant, self.input_quant = nn.Identity(), nn.Identity()
            return
        self.weight_quant = quant.weight_quantizer(tuple(self.weight.shape)).to(self.weight.device)
        self.input_quant = quant.input_quantizer().to(self.weight.device)
        init = getattr(self.weight_quant, "init_weight", None)
        if init is not None and init_weight:
            with torch.no_grad():
                init(self.weight)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with: Q(w) for a quantized layer, w otherwise."""
        return self.weight_quant(self.weight)


class QuantLinear(nn.Linear, QuantModule):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        quant: LayerQuant | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device)
        if self.weight.device.type != "meta":
            self._setup_quant(quant)

    @classmethod
    def from_float(cls, layer: nn.Linear, quant: LayerQuant | None, init_weight: bool = True) -> QuantLinear:
        """The quantized twin of ``layer``, sharing its parameters (no random draw unless the quantizer
        initializes the weight itself)."""
        twin = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        twin.weight, twin.bias = layer.weight, layer.bias
        twin.train(layer.training)
        twin._setup_quant(quant, init_weight)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QuantConv2d(nn.Conv2d, QuantModule):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | str | tuple[int, int] = 0,
        bias: bool = True,
        quant: LayerQuant | None = None,
        *,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
        )
        if self.weight.device.type != "meta":
            self._setup_quant(quant)

    @classmethod
    def from_float(cls, layer: nn.Conv2d, quant: LayerQuant | None, init_weight: bool = True) -> QuantConv2d:
        """The quantized twin of ``layer`` (every Conv2d setting kept), sharing its parameters."""
        twin = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            bias=layer.bias is not None,
            dilation=layer.dilation,  # type: ignore[arg-type]
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            device="meta",
        )
        twin.weight, twin.bias = layer.weight, layer.bias
        twin.train(layer.training)
        twin._setup_quant(quant, init_weight)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class ActivationQuant(nn.Module):
    """A place where a model quantizes activations itself, not at a layer's input (the U-Net reference
    code quantizes each block's BatchNorm output, before pooling, upsampling and concatenation).

    Float models hold it as an identity; :func:`qgen.quant.replace.quantize_model` puts the middle
    layers' input quantizer in ``input_quant`` (and then quantizes no conv/linear input). ``signed``:
    whether the values it sees can be negative (a BatchNorm output: yes)."""

    quant_attrs: tuple[str, ...] = ("input_quant",)

    def __init__(self, signed: bool = True) -> None:
        super().__init__()
        self.signed = bool(signed)
        self.input_quant: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(x)


def activation_sites(model: nn.Module) -> Iterator[tuple[str, ActivationQuant]]:
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuant):
            yield name, module


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantModule]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            yield name, module


@torch.no_grad()
def init_quantizers(model: nn.Module, x: torch.Tensor) -> None:
    """Set every quantizer's data-dependent initial state from one batch ``x``.

    The pass runs in training mode (so activations look as they will in training) but leaves
    BatchNorm running statistics untouched.
    """
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer) and m.needs_calibration]
    if not quantizers:
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    was_training = model.training
    model.train()
    for q in quantizers:
        q.calibrating = True
    try:
        model(x)
    finally:
        for q in quantizers:
            q.calibrating = False
        for m, state in zip(norms, saved, strict=True):
            m.load_state_dict(state)
        model.train(was_training)
