"""Sharpness-aware minimization around any base optimizer: SAM, ASAM and SAQ's three cases.

SAM (Foret et al. 2021, Eq. 2-3): with g = ∇L(w), step to w + ε̂, ε̂ = ρ·g/‖g‖₂ (one global L2 norm over
the perturbed parameters), take the gradient there, put w back and let the base optimizer step with that
second gradient. ASAM (Kwon et al. 2021, Eq. 11 and its code): ε̂ = ρ·T²g/‖Tg‖₂ with T = |w| + η element-wise
for weights (and quantizer steps), T = 1 for biases and every other parameter, as the official ASAM and
SAQ codes choose by parameter name (η = ``eta``, 0.01 there). The reference SAQ's ``qasam.py`` scales the
norm by |w| + η but the perturbation by w² (no η); we use T² = (|w| + η)² in both, as ASAM defines it.
Both norms add 1e-12 to ‖·‖ (the reference codes' guard against g = 0).

SAQ (Liu et al. 2021, papers.md §6) on a quantized model, Q the layers' weight quantizers:

- case 1, L(Q(w) + ε̂(w)): ε̂ from the gradient w.r.t. the latent weights w (the straight-through gradient),
  added after quantization;
- case 2, L(Q(w + ε̂(w))): the latent weights perturbed before quantizing: plain SAM on the latent
  weights of the QAT model;
- case 3, L(Q(w) + ε̂(Q(w))): the paper's choice: ε̂ from the gradient w.r.t. the quantized weights Q(w),
  added after quantization (reference ``QConv2d.quantize_weight_add_epsilon`` returns Q(w) + ε).

"After quantization" is an offset on the output of each layer's ``weight_quant``, set by forward hooks that
exist only during the pass that needs them (:func:`post_quantization_offsets`). Case 3's gradient w.r.t.
Q(w) is that of an offset of −0.0 in the first pass (x + (−0.0) = x exactly, so the first pass computes
what the plain step computes). Layers the first/last-layer policy keeps float have Q = identity: there the
three cases coincide. Every other perturbed parameter (biases, BN affine, quantizer steps, embeddings) is
not quantized and is perturbed in place, as in the reference ``QSAM``.

Which parameters enter the norm and are perturbed (reference ``QSAM(include_wclip, include_aclip,
include_bn)``): the layers' weights and biases and every other parameter always; BatchNorm's affine
weight and bias with ``include_bn`` (reference default True; Foret's SAM perturbs every parameter); the
weight quantizers' learned steps (LSQ's s, the reference's weight clip values) with ``include_wclip`` and
the activation quantizers' with ``include_aclip`` (both False by default, as in the reference). A
parameter without a gradient (unused in the forward) is neither counted nor perturbed.

Side effects of the second pass are undone: every buffer (BatchNorm running mean, variance and batch
count, the uniform quantizer's running activation range) is copied before it and restored after it, so
the running statistics are those of the first pass alone, bit for bit, on every backend (setting BN's
momentum to 0, as ``bypass_bn.py`` does, would still count the batch and turns a NaN statistic into a
NaN running value). The second pass sees the same batch (same augmentation) and draws its own dropout
masks, as the reference codes' second ``model(x)`` does. The loss reported is the first pass's, L(w).

Not implemented: the paper's "efficient training strategy", whose details are not public (papers.md §6,
[NF]; not in the reference code). A SAM step always costs two forward/backward passes
(benchmarks/saq_step.py). The base optimizer's param groups, state, learning-rate and momentum schedules
are untouched (``SAM.param_groups`` is the base optimizer's); SAM itself keeps no state between steps,
so a resumed run is bit-identical without saving anything of it.

Not defined here (refused by the config check, qgen.config): the maxout network's low-precision
arithmetic, whose optimizer rounds every stored parameter into the format (w + ε̂ is no value of it), and
BinaryConnect, whose stochastic binarization draws a new network at every forward (the second pass would
not evaluate the network whose gradient set ε̂) and whose deterministic sign moves only where ε̂ crosses
zero; no paper defines SAM for either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from qgen.quant import BinaryQuantizer, Quantizer, QuantModule, quant_layers

CASES = (1, 2, 3)
#: ASAM's η (Kwon et al. 2021 and the reference SAQ code: 0.01)
DEFAULT_ETA = 0.01
#: added to the gradient norm (reference SAM, ASAM and SAQ codes)
NORM_EPS = 1e-12


@dataclass(frozen=True)
class SAMSettings:
    """The ``optim.sam`` section of a run spec (defaults as the config check fills them)."""

    rho: float
    adaptive: bool = False
    eta: float = DEFAULT_ETA
    case: int | None = None
    include_wclip: bool = False
    include_aclip: bool = False
    include_bn: bool = True

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise ValueError(f"optim.sam.rho must be positive, got {self.rho}")
        if self.eta < 0:
            raise ValueError(f"optim.sam.eta must be non-negative, got {self.eta}")
        if self.case is not None and self.case not in CASES:
            raise ValueError(f"optim.sam.case must be one of {CASES}, got {self.case}")

    @classmethod
    def from_spec(cls, sam: Mapping[str, Any]) -> SAMSettings:
        return cls(**sam)

    @property
    def after_quantization(self) -> bool:
        """SAQ cases 1 and 3: the layers' weights are perturbed after their quantizer."""
        return self.case in (1, 3)


@contextmanager
def post_quantization_offsets(
    layers: Sequence[QuantModule], offsets: Sequence[torch.Tensor | None]
) -> Iterator[None]:
    """While open, layer i computes with ``weight_quant(weight) + offsets[i]`` (None: no offset)."""

    def add(offset: torch.Tensor, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return out + offset

    handles = [
        layer.weight_quant.register_forward_hook(functools.partial(add, offset))
        for layer, offset in zip(layers, offsets, strict=True)
        if offset is not None
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class SAM:
    """SAM/ASAM/SAQ step around ``base`` (an optimizer over ``model``'s parameters); see the module docstring.

    ``step(closure)``: ``closure()`` computes the loss on the batch (forward only); the step runs it twice
    with a backward each, restores the parameters and steps ``base``. Returns the first loss (detached)."""

    def __init__(self, model: nn.Module, base: torch.optim.Optimizer, settings: SAMSettings) -> None:
        if hasattr(model, "low_precision_layers"):
            raise ValueError(
                "SAM is not defined for the low-precision arithmetic (model maxout): its optimizer rounds "
                "every stored parameter into the format, and w + ε is no value of it"
            )
        if any(isinstance(m, BinaryQuantizer) for m in model.modules()):
            raise ValueError(
                "SAM is not defined for BinaryConnect (quant.method binary): stochastic binarization "
                "draws a new network at every forward, and no paper defines SAM for binary weights"
            )
        self.model, self.base, self.settings = model, base, settings
        self.layers: list[QuantModule] = (
            [m for _, m in quant_layers(model)] if settings.after_quantization else []
        )
        after = {id(m.weight) for m in self.layers}
        self.in_place: list[nn.Parameter] = []
        self.in_place_scaled: list[bool] = []  # ASAM: T = |p| + η (True) or 1
        seen: set[int] = set()
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                if id(p) in after or not self._included(module):
                    continue
                self.in_place.append(p)
                self.in_place_scaled.append(name == "weight" or isinstance(module, Quantizer))
        self._probes: list[torch.Tensor] | None = None

    def _included(self, module: nn.Module) -> bool:
        s = self.settings
        if isinstance(module, Quantizer):
            return s.include_wclip if module.role == "weight" else s.include_aclip
        if isinstance(module, _BatchNorm):
            return s.include_bn
        return True

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's groups (``set_lr``/``set_momentum`` work through the wrapper)."""
        return self.base.param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _case3_probes(self) -> list[torch.Tensor]:
        """Case 3's offsets of −0.0 (leaves whose gradient is ∂L/∂Q(w)), made once, grads cleared."""
        if self._probes is None:
            self._probes = [
                torch.full_like(m.weight, -0.0, memory_format=torch.contiguous_format).requires_grad_()
                for m in self.layers
            ]
        for probe in self._probes:
            probe.grad = None
        return self._probes

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        s = self.settings
        self.base.zero_grad(set_to_none=True)
        quantized: list[torch.Tensor | None] = [None] * len(self.layers)
        if s.case == 3:  # first pass at Q(w) + (−0.0): the gradient w.r.t. Q(w), and Q(w) itself for ASAM
            probes = self._case3_probes()
            handles = [
                m.weight_quant.register_forward_hook(functools.partial(_record, quantized, i))
                for i, m in enumerate(self.layers)
            ]
            try:
                with post_quantization_offsets(self.layers, probes):
                    loss = closure()
            finally:
                for handle in handles:
                    handle.remove()
            loss.backward()
            after_grads = [p.grad for p in probes]
        else:
            loss = closure()
            loss.backward()
            quantized = [m.weight.detach() for m in self.layers]  # case 1: ε̂(w) from the latent w
            after_grads = [m.weight.grad for m in self.layers]

        with torch.no_grad():
            after = [i for i, g in enumerate(after_grads) if g is not None]
            moved = [i for i, p in enumerate(self.in_place) if p.grad is not None]
            in_place = [self.in_place[i] for i in moved]
            grads = [_present(after_grads[i]) for i in after] + [_present(p.grad) for p in in_place]
            points = [_present(quantized[i]) for i in after] + [p.detach() for p in in_place]
            scaled = [True] * len(after) + [self.in_place_scaled[i] for i in moved]
            eps = perturbation(grads, points, scaled, s.rho, s.eta if s.adaptive else None)
            saved = [p.detach().clone() for p in in_place]
            if in_place:
                torch._foreach_add_(in_place, eps[len(after) :])
            offsets: list[torch.Tensor | None] = [None] * len(self.layers)
            for i, e in zip(after, eps[: len(after)], strict=True):
                offsets[i] = e
            live = list(self.model.buffers())
            buffers = [b.clone() for b in live]

        self.base.zero_grad(set_to_none=True)
        try:
            with post_quantization_offsets(self.layers, offsets):
                second = closure()
            second.backward()
        finally:
            with torch.no_grad():
                if in_place:
                    torch._foreach_copy_(in_place, saved)
                if buffers:
                    torch._foreach_copy_(live, buffers)
        self.base.step()
        return loss.detach()


def _present(t: torch.Tensor | None) -> torch.Tensor:
    assert t is not None
    return t


def _record(out: list[torch.Tensor | None], index: int, module: nn.Module, args: Any, value: Any) -> None:
    """Forward hook: keep the quantizer's output Q(w) (detached) of layer ``index``."""
    out[index] = value.detach()


def perturbation(
    grads: Sequence[torch.Tensor],
    points: Sequence[torch.Tensor],
    scaled: Sequence[bool],
    rho: float,
    eta: float | None,
) -> list[torch.Tensor]:
    """ε̂ of every tensor: ρ·g/(‖g‖ + 1e-12) (SAM), or with ``eta`` ρ·T²g/(‖Tg‖ + 1e-12), T = |x| + η where
    ``scaled`` and 1 elsewhere, x the point the gradient was taken at (ASAM); one global norm."""
    if not grads:
        return []
    if eta is None:
        terms = list(grads)
    else:
        t = [x.abs() + eta if sc else None for x, sc in zip(points, scaled, strict=True)]
        terms = [g * ti if ti is not None else g for g, ti in zip(grads, t, strict=True)]
    norm = torch.nn.utils.get_total_norm(terms, norm_type=2.0)
    scale = rho / (norm + NORM_EPS)
    if eta is None:
        return [g * scale for g in grads]
    return [tg * ti * scale if ti is not None else tg * scale for tg, ti in zip(terms, t, strict=True)]
