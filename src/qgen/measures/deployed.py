"""The network as measured: a functional view, its weights and the parameters a perturbation moves.

Two modes (``measures.perturb``):

- ``effective`` (default): the model as deployed. Each quantized layer's weight is replaced by its
  quantized value Q(w) (the weight quantizer becomes the identity), then each BatchNorm that folds
  exactly is folded into the conv/linear layer computing its input, as the reference code of Jiang et
  al. does (``_reparam``): W ← W·γ/√(σ²+ε) per output channel, b ← β + (b − μ)·γ/√(σ²+ε). Which
  BatchNorms fold is found from the model's fx graph (qgen.measures.folding: through max-pooling, in
  attribute-style blocks such as torchvision's ResNet); the others stay, each with its reason, in
  ``DeployedModel.batchnorm``. Activation quantizers stay on, with their trained steps.
  Perturbations act on these folded effective parameters.
- ``latent``: the real-valued weights before the weight quantizer; the quantizers stay in place, so a
  perturbation reaches the output only through Q(w + u). BatchNorm is not folded here (folding
  would change what is quantized); eval-mode BatchNorm is a fixed affine map.

Folding after quantization preserves the eval-mode function exactly (up to float rounding), which
the tests check. In the reference code's place of each folded BatchNorm stays its identity: a unit
per-channel scale and zero shift (``FoldedBatchNorm``), kept as parameters because the reference
perturbs them too.

Two sets of tensors:

- ``weights()``: the weights of the conv/linear layers (qgen's quantized layers and torch's
  ``Linear`` / convolutions, in module order), biases and BatchNorm parameters excluded, as the
  reference code's ``get_weights_only``; every norm, bound and the Hessian use them.
- ``perturbable(parameters)``, what the σ′ and α′ searches move (``measures.parameters``):
  ``all`` (default) is every parameter of the measured network except the quantizers' own (their
  steps, also those of attention's matrix-product quantizers): weights, biases, the folded BatchNorms'
  unit scales and zero shifts, and in ``latent`` mode the unfolded BatchNorm scales and shifts. The
  reference code perturbs ``model.parameters()`` after ``_reparam`` in its PAC-Bayes search
  (nitarshan/robust-generalization-measures, ``_perturbed_model``); ``perturbable("weights")`` is our
  alternative that perturbs the weights only.

A ViT (timm ``VisionTransformer``): ``all`` perturbs every parameter but the quantizers' steps — the
patch-embedding conv's weight and bias, the class token, the position embedding, every LayerNorm's γ
and β, and the weights and biases of all linear layers (qkv, proj, MLP, head) — as the reference
perturbs BatchNorm's γ and β; ``weights`` only the patch-embedding conv and linear weights, which are
also the only tensors the Hessian and the norm measures see (but the path norm, which squares every
parameter as the reference code does). It has no BatchNorm, so nothing folds.
LayerNorm does not fold: its normalization uses each token's own statistics, and only its affine γ, β
could go into the next linear layer, whose input quantizer sits between them (it would change what is
quantized); it stays, and its γ, β are perturbed as they are.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from qgen.measures.folding import FoldedBatchNorm, Folding, fold_batchnorms, unfolded, weighted_layers
from qgen.quant import Quantizer, quant_layers

__all__ = [
    "MODES",
    "PARAMETERS",
    "DeployedModel",
    "FoldedBatchNorm",
    "Weights",
    "deploy",
    "quantizers_disabled",
]

MODES = ("effective", "latent")
#: which tensors the PAC-Bayes and worst-case searches perturb (``measures.parameters``)
PARAMETERS = ("all", "weights")

#: named tensors of a measured network (weights, perturbations, Hessian-vector products)
Weights = dict[str, torch.Tensor]


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
    #: which BatchNorms were folded, into which layer, through which ops, or why not (``Folding.to_dict``)
    batchnorm: Folding = field(default_factory=lambda: Folding(None))
    #: whether a parameter or buffer of ``module`` is registered under two names (tied): only then does a
    #: call with ``weights`` pay ``functional_call``'s search for ties on every forward
    tied: bool = True

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
        return functional_call(self.module, weights, (x,), strict=False, tie_weights=self.tied)


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
        batchnorm = fold_batchnorms(module)
        for name, scale in batchnorm.scales.items():
            key = f"{name}.weight"
            if key in steps:
                shape = (-1,) + (1,) * (module.get_submodule(name).weight.ndim - 1)
                steps[key] = steps[key] * scale.abs().reshape(shape)
    else:
        batchnorm = unfolded(
            module, "latent view: BatchNorm is not folded (it would change what is quantized)"
        )
    for p in module.parameters():
        p.requires_grad_(False)
    params = dict(module.named_parameters())
    names = [f"{name}.weight" for name, _ in weighted_layers(module) if f"{name}.weight" in params]
    parameters = _non_quantizer_parameters(module)
    return DeployedModel(module, names, mode, steps, parameters, batchnorm, _has_tied_tensors(module))


def _has_tied_tensors(module: nn.Module) -> bool:
    """Whether one parameter or buffer of ``module`` is registered under more than one name."""
    tensors = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    return len({id(t) for _, t in tensors}) < len(tensors)


def _non_quantizer_parameters(module: nn.Module) -> list[str]:
    """Names of every parameter of ``module`` except the quantizers' (e.g. LSQ steps): those of every
    ``Quantizer`` and of every module a layer names in its ``quant_attrs``."""
    quantizers = [m for m in module.modules() if isinstance(m, Quantizer)]
    quantizers += [getattr(m, attr) for m in module.modules() for attr in getattr(m, "quant_attrs", ())]
    owned = {id(p) for q in quantizers for p in q.parameters()}
    return [n for n, p in module.named_parameters() if id(p) not in owned]


@contextlib.contextmanager
def quantizers_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace every quantizer of every layer (every module's ``quant_attrs``: the quantized
    layers', and attention's matrix-product inputs) by the identity (the float network)."""
    saved = []
    for layer in [m for m in model.modules() if getattr(m, "quant_attrs", ())]:
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
