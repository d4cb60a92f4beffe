"""The network as measured: a functional view, its weights and the parameters a perturbation moves.

Two modes (``measures.perturb``):

- ``effective`` (default): the model as deployed. Each quantized layer's weight is replaced by its
  quantized value Q(w) (the weight quantizer becomes the identity), then BatchNorm is folded into
  the preceding layer as the reference code of Jiang et al. does (``_reparam``):
  W ← W·γ/√(σ²+ε) per output channel, b ← β + (b − μ)·γ/√(σ²+ε). Activation quantizers stay on,
  with their trained steps. Perturbations act on these folded effective parameters.
- ``latent``: the real-valued weights before the weight quantizer; the quantizers stay in place, so a
  perturbation reaches the output only through Q(w + u). BatchNorm is not folded here (folding
  would change what is quantized); eval-mode BatchNorm is a fixed affine map.

Folding after quantization preserves the eval-mode function exactly (up to float rounding), which
the tests check. In the reference code's place of each folded BatchNorm stays its identity: a unit
per-channel scale and zero shift (``FoldedBatchNorm``), kept as parameters because the reference
perturbs them too.

Two sets of tensors:

- ``weights()``: the conv/linear weights, biases and BatchNorm parameters excluded, as the reference
  code's ``get_weights_only``; every norm, bound and the Hessian use them.
- ``perturbable(parameters)``, what the σ′ and α′ searches move (``measures.parameters``):
  ``all`` (default) is every parameter of the measured network except the quantizers' own (their
  steps): weights, biases, the folded BatchNorms' unit scales and zero shifts, and in ``latent``
  mode the unfolded BatchNorm scales and shifts. The reference code perturbs ``model.parameters()``
  after ``_reparam`` in its PAC-Bayes search (nitarshan/robust-generalization-measures,
  ``_perturbed_model``); ``perturbable("weights")`` is our alternative that perturbs the weights only.
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
#: which tensors the PAC-Bayes and worst-case searches perturb (``measures.parameters``)
PARAMETERS = ("all", "weights")

#: named tensors of a measured network (weights, perturbations, Hessian-vector products)
Weights = dict[str, torch.Tensor]


class FoldedBatchNorm(nn.Module):
    """What folding leaves of a BatchNorm: y = x·scale + shift per channel (dim 1), with scale = 1 and
    shift = 0, so the function is unchanged; the reference code's ``_reparam`` likewise resets the
    BatchNorm to γ = 1, β = 0 and its search perturbs those parameters."""

    def __init__(self, channels: int, like: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, dtype=like.dtype, device=like.device))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=like.dtype, device=like.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


@dataclass
class DeployedModel:
    """A measurable copy of a trained model: ``module``, the names of its weights and of its parameters."""

    module: nn.Module
    weight_names: list[str]
    mode: str
    #: quantization step Δ of each quantized weight, in the coordinates of the measured weights
    #: (broadcastable to the weight; per-channel after BatchNorm folding scales the grid)
    steps: dict[str, torch.Tensor] = field(default_factory=dict)
    #: every parameter but the quantizers' own, in module order (what ``perturbable("all")`` gives)
    parameter_names: list[str] = field(default_factory=list)

    def weights(self) -> Weights:
        params = dict(self.module.named_parameters())
        return {n: params[n].detach() for n in self.weight_names}

    def perturbable(self, parameters: str = "all") -> Weights:
        """The tensors a perturbation search moves: ``all`` parameters or the ``weights`` only."""
        if parameters == "weights":
            return self.weights()
        if parameters != "all":
            raise ValueError(f"unknown measures.parameters {parameters!r}; known: {', '.join(PARAMETERS)}")
        params = dict(self.module.named_parameters())
        return {n: params[n].detach() for n in self.parameter_names}

    def __call__(self, x: torch.Tensor, weights: Weights | None = None) -> torch.Tensor:
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
                    setattr(child, name, FoldedBatchNorm(cur.num_features, prev.weight))
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
    return DeployedModel(module, names, mode, steps, _non_quantizer_parameters(module))


def _non_quantizer_parameters(module: nn.Module) -> list[str]:
    """Names of every parameter of ``module`` except those of the layers' quantizers (e.g. LSQ steps)."""
    quantizer = {
        f"{name}.{attr}.{p}"
        for name, layer in quant_layers(module)
        for attr in layer.quant_attrs
        for p, _ in getattr(layer, attr).named_parameters()
    }
    return [n for n, _ in module.named_parameters() if n not in quantizer]


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
