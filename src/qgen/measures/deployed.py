"""The network as measured: a functional view whose "weights" are the quantities that get perturbed.

Two modes (``measures.perturb``):

- ``effective`` (default): the model as deployed. Each quantized layer's weight is replaced by its
  quantized value Q(w) (the weight quantizer becomes the identity), then BatchNorm is folded into
  the preceding layer as the reference code of Jiang et al. does (``_reparam``):
  W ← W·γ/√(σ²+ε) per output channel, b ← β + (b − μ)·γ/√(σ²+ε). Activation quantizers stay on,
  with their trained steps. Perturbations act on these folded effective weights.
- ``latent``: the real-valued weights before the weight quantizer; the quantizers stay in place, so a
  perturbation reaches the output only through Q(w + u). BatchNorm is not folded here (folding
  would change what is quantized); eval-mode BatchNorm is a fixed affine map.

Folding after quantization preserves the eval-mode function exactly (up to float rounding), which
the tests check. Only conv/linear weights count as "weights" (biases and BatchNorm parameters are
excluded), as in Jiang et al. (2019).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from qgen.quant import Quantizer, QuantModule, quant_layers

MODES = ("effective", "latent")


@dataclass
class DeployedModel:
    """A measurable copy of a trained model: ``module`` plus the names of its perturbable weights."""

    module: nn.Module
    weight_names: list[str]
    mode: str
    #: quantization step Δ of each quantized weight, in the coordinates of the measured weights
    #: (broadcastable to the weight; per-channel after BatchNorm folding scales the grid)
    steps: dict[str, torch.Tensor] = field(default_factory=dict)

    def weights(self) -> dict[str, torch.Tensor]:
        params = dict(self.module.named_parameters())
        return {n: params[n].detach() for n in self.weight_names}

    def __call__(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if weights is None:
            return self.module(x)
        return functional_call(self.module, weights, (x,), strict=False)


def _fold_batchnorm(layer: QuantModule, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Fold ``bn`` into ``layer`` in place; returns the per-channel scale γ/√(σ²+ε)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.weight.data = layer.weight.detach() * scale.reshape(shape)
    new_bias = bn.bias.detach() + (bias - bn.running_mean) * scale
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.data = new_bias
    return scale


def _fold_all(module: nn.Module, scales: dict[int, torch.Tensor]) -> None:
    """Fold every BatchNorm that directly follows a quantized layer inside a Sequential; record each
    folded layer's scale in ``scales`` (keyed by the layer's id)."""
    for child in module.children():
        if isinstance(child, nn.Sequential):
            items = list(child.named_children())
            for (_, prev), (name, cur) in itertools.pairwise(items):
                if isinstance(prev, QuantModule) and isinstance(cur, nn.modules.batchnorm._BatchNorm):
                    scales[id(prev)] = _fold_batchnorm(prev, cur)
                    setattr(child, name, nn.Identity())
        _fold_all(child, scales)


@torch.no_grad()
def deploy(model: nn.Module, mode: str = "effective") -> DeployedModel:
    """The measurement view of ``model`` (which is left untouched)."""
    if mode not in MODES:
        raise ValueError(f"unknown perturbation mode {mode!r}; known: {', '.join(MODES)}")
    module = copy.deepcopy(model).eval()
    steps: dict[str, torch.Tensor] = {}
    for name, layer in quant_layers(module):
        if isinstance(layer.weight_quant, Quantizer):
            steps[f"{name}.weight"] = layer.weight_quant.step_for(layer.weight).detach().clone()
    if mode == "effective":
        for _, layer in quant_layers(module):
            layer.weight.data = layer.weight_quant(layer.weight).detach()
            layer.weight_quant = nn.Identity()
        scales: dict[int, torch.Tensor] = {}
        _fold_all(module, scales)
        for name, layer in quant_layers(module):
            key = f"{name}.weight"
            if key in steps and id(layer) in scales:
                shape = (-1,) + (1,) * (layer.weight.ndim - 1)
                steps[key] = steps[key] * scales[id(layer)].abs().reshape(shape)
    for p in module.parameters():
        p.requires_grad_(False)
    names = [f"{name}.weight" for name, _ in quant_layers(module)]
    return DeployedModel(module, names, mode, steps)


@contextlib.contextmanager
def quantizers_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace every quantizer of every layer by the identity (the float network)."""
    saved = []
    for _, layer in quant_layers(model):
        saved.append(
            (layer, {a: getattr(layer, a) for a in layer.quant_attrs}, layer.__dict__.get("value_rounding"))
        )
        for attr in layer.quant_attrs:
            setattr(layer, attr, nn.Identity())
        if hasattr(layer, "value_rounding"):  # low-precision layers also round z and y
            layer.value_rounding = False
    try:
        yield model
    finally:
        for layer, quantizers, rounding in saved:
            for attr, module in quantizers.items():
                setattr(layer, attr, module)
            if rounding is not None:
                layer.value_rounding = rounding
