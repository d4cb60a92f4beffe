"""A dense layer computed in the low-precision arithmetic of Courbariaux et al. (2014), and its loss.

One :class:`LowPrecisionLinear` is one layer of the reference code (``MaxoutLayer`` or
``SoftmaxLayer``): dropout of its input, then, in training,

    W_c = fmt(W), b_c = fmt(b)                  (propagation bit width, ranges of W and b)
    z   = fmt(x·W_cᵀ + b_c)                      (range of z; its gradient rounded with dE/dz's range)
    y   = fmt(max over the pieces of z)          (maxout; range of y; gradient with dE/dy's range)

The softmax layer returns z (the logits) and its y = fmt(softmax(z)) lives in the loss,
:func:`softmax_output_loss`, whose gradient is the reference code's dE/dz = (y − t)/K summed over the
batch (K classes), rounded with dE/dy's range. dE/dW, dE/db, the momentum updates and the stored
parameters are rounded by the optimizer (qgen.train.low_precision).

Dropout is the reference's: at training time the input is multiplied by a Bernoulli(keep) mask
(no rescaling); at test time W and b are multiplied by ``test_scale`` (the code uses scale 1 for
the input layer although it keeps 0.8 of the inputs, and scale 0.5 = keep for the other layers).
Maxout's gradient goes to every piece equal to the maximum (Theano's max), which matters once z
is rounded and ties are common.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qgen.quant.fixed_point import (
    GROUPS,
    UPDATE_PRECISION_GROUPS,
    Arithmetic,
    FixedPointWeight,
    HalfWeight,
    NumberGroup,
    round_value,
)
from qgen.quant.layers import QuantModule


def maxout(z: torch.Tensor, units: int, pieces: int) -> torch.Tensor:
    """max over ``pieces`` consecutive outputs; the gradient reaches every maximal piece in full."""
    zz = z.reshape(len(z), units, pieces)
    top = zz.amax(dim=-1, keepdim=True)
    mask = (zz == top).to(z.dtype).detach()
    return (top.detach() + ((zz - zz.detach()) * mask).sum(dim=-1, keepdim=True)).squeeze(-1)


def _parameter_view(arithmetic: Arithmetic, group: NumberGroup) -> nn.Module:
    if arithmetic.format in ("fixed", "dynamic_fixed"):
        return FixedPointWeight(group)
    if arithmetic.format == "half":
        return HalfWeight()
    return nn.Identity()


class LowPrecisionLinear(nn.Linear, QuantModule):
    """``units`` maxout units of ``pieces`` linear pieces (``activation="maxout"``), or the softmax output
    layer (``activation="softmax"``, pieces = 1, returns the logits)."""

    quant_attrs = ("weight_quant", "input_quant", "bias_quant")

    def __init__(
        self,
        in_features: int,
        units: int,
        arithmetic: Arithmetic,
        pieces: int = 1,
        activation: str = "maxout",
        keep: float = 1.0,
        test_scale: float = 1.0,
    ) -> None:
        super().__init__(in_features, units * pieces, bias=True)
        if activation not in ("maxout", "softmax"):
            raise ValueError(f"activation must be maxout or softmax, got {activation!r}")
        if activation == "softmax" and pieces != 1:
            raise ValueError("the softmax layer has one piece per unit")
        self.units, self.pieces, self.activation = units, pieces, activation
        self.keep, self.test_scale = float(keep), float(test_scale)
        self.arithmetic = arithmetic
        self.groups = nn.ModuleDict(
            {
                name: NumberGroup(arithmetic, "update" if name in UPDATE_PRECISION_GROUPS else "prop")
                for name in GROUPS
            }
        )
        self.quant = None
        self.weight_quant = _parameter_view(arithmetic, self.groups["w"])
        self.bias_quant = _parameter_view(arithmetic, self.groups["b"])
        self.input_quant = nn.Identity()
        self.value_rounding = True  # turned off with the parameter views to get the float network
        with torch.no_grad():
            if activation == "softmax":  # reference: the softmax layer starts at zero
                self.weight.zero_()
            else:  # reference: U(±√(6/(n_in + units·pieces)))
                bound = (6.0 / (in_features + units * pieces)) ** 0.5
                self.weight.uniform_(-bound, bound)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.keep < 1:
            x = x * torch.bernoulli(torch.full_like(x, self.keep))
        w, b = self.weight_quant(self.weight), self.bias_quant(self.bias)
        if not self.training and self.test_scale != 1:
            w, b = w * self.test_scale, b * self.test_scale
        z = F.linear(self.input_quant(x), w, b)
        g = self.groups
        if self.value_rounding:
            z = round_value(z, g["z"], g["dEdz"], self.training)
        if self.activation == "softmax":
            return z
        y = maxout(z, self.units, self.pieces)
        if self.value_rounding:
            y = round_value(y, g["y"], g["dEdy"], self.training)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} -> {self.units}x{self.pieces} {self.activation}, "
            f"{self.arithmetic.format}, keep={self.keep}, test_scale={self.test_scale}"
        )


class _SoftmaxOutputGradient(torch.autograd.Function):
    """Value: Σ_batch CE / K. Gradient w.r.t. the logits: (fmt(softmax(z)) − t)/K, then rounded
    with dE/dy's range — the reference code's "simplification between softmax and nll derivative"."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, target: torch.Tensor, y_group: NumberGroup, dedy: NumberGroup):  # type: ignore[override]
        k = z.shape[1]
        y = y_group.quantize(torch.softmax(z, dim=1), observe=True)
        ctx.save_for_backward(y, target)
        ctx.k, ctx.dedy = k, dedy
        return F.cross_entropy(z, target, reduction="sum") / k

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        y, target = ctx.saved_tensors
        grad = (y - F.one_hot(target, ctx.k).to(y.dtype)) / ctx.k * g
        return ctx.dedy.quantize(grad, observe=True, out=grad), None, None, None


def softmax_output_loss(
    layer: LowPrecisionLinear, logits: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The training objective of the reference code for the output ``layer``'s logits."""
    g = layer.groups
    if not layer.arithmetic.rounds:
        return F.cross_entropy(logits, target, reduction="sum") / logits.shape[1]
    return _SoftmaxOutputGradient.apply(logits, target, g["y"], g["dEdy"])
