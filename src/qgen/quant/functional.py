"""Fake quantization with a straight-through estimator, as fused autograd functions.

:func:`fake_quantize` (LSQ) and :func:`range_quantize` (the uniform quantizer, whose step comes from the
tensor's range and gets no gradient) share the forward; they differ in the gradient's range.

Forward (Esser et al. 2020, LSQ, Eq. 1-2):  v̂ = s · clamp(round(v / s), −Q_N, Q_P).
Backward:
  ∂v̂/∂v = 1 if −Q_N < v/s < Q_P else 0                          (STE through round, Eq. 5)
  ∂v̂/∂s = round(v/s) − v/s if −Q_N < v/s < Q_P, −Q_N if v/s ≤ −Q_N, Q_P if v/s ≥ Q_P   (LSQ, Eq. 3)
and the step's gradient is multiplied by the LSQ gradient scale g (Eq. 4).

Writing forward and backward by hand (instead of composing round/clamp with ``detach`` tricks)
keeps the autograd graph to one node per quantizer; in eager mode on small layers the extra graph
nodes and temporaries, not the arithmetic, dominate the cost. There is no Python branching on
tensor values, so models built from it trace cleanly under ``torch.compile``
(``runtime.compile: true``), which fuses the element-wise work.

``torch.round`` rounds halves to even; the closed form used in the tests does the same. For LSQ the
range is open for the gradients (a value exactly at −Q_N or Q_P counts as clipped, Eq. 3 and 5), which
is also what ``torch.clamp``'s backward does, so :func:`lsq_reference` agrees everywhere, boundaries
included. The uniform quantizer's STE passes the gradient on the closed range [lo, hi] it was given,
compared with v itself (not with v/s, whose rounding can put the element that set the range just outside
it): the weight at max |w| is not clipped, it sets the grid.
"""

from __future__ import annotations

import torch


class _FakeQuantize(torch.autograd.Function):
    """Returns (v̂, v/s, round(v/s) clipped); the last two are saved for the backward, which is a
    mask, a select and two reductions (dot products for a per-tensor step). Written in the
    ``setup_context`` style with a generated vmap rule, so ``torch.func`` transforms (``vmap`` over
    stacked weight perturbations, ``jvp``/``grad`` for Hessian-vector products) work through it,
    and the backward is itself differentiable (double backward for the Hessian)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, grad_scale: float):  # type: ignore[override]
        x = v / s
        q = torch.round(x).clamp(-qn, qp)
        return q * s, x, q

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, s, qn, qp, grad_scale = inputs
        _, x, q = output
        ctx.mark_non_differentiable(x, q)
        ctx.save_for_backward(x, q, s)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_x: torch.Tensor, _grad_q: torch.Tensor):  # type: ignore[override]
        x, q, s = ctx.saved_tensors
        inside = (x > -ctx.qn) & (x < ctx.qp)  # strict, as in LSQ Eq. 3 and 5
        grad_v = torch.where(inside, grad, 0.0)
        grad_s = None
        if ctx.needs_input_grad[1]:
            # Σ grad·(q − x·1[inside]) = Σ grad·q − Σ grad_v·x
            if s.numel() == 1 and grad.ndim == x.ndim:
                grad_s = torch.dot(grad.reshape(-1), q.reshape(-1)) - torch.dot(
                    grad_v.reshape(-1), x.reshape(-1)
                )
            else:
                grad_s = (grad * q - grad_v * x).sum_to_size(s.shape)
            grad_s = grad_s.reshape(s.shape) * ctx.grad_scale
        return (grad_v if ctx.needs_input_grad[0] else None), grad_s, None, None, None


class _RangeQuantize(torch.autograd.Function):
    """v̂ = s·clamp(round((v − o)/s), q_min, q_max) + o; ∂v̂/∂v = 1 on lo ≤ v ≤ hi, else 0; no gradient
    for the step, the offset o or the range (they are functions of the data, not parameters)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v, s, offset, lo, hi, qmin: int, qmax: int):  # type: ignore[override]
        x = v / s if offset is None else (v - offset) / s
        q = torch.round(x).clamp(qmin, qmax) * s
        return (q if offset is None else q + offset), (v >= lo) & (v <= hi)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, inside = output
        ctx.mark_non_differentiable(inside)
        ctx.save_for_backward(inside)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_inside: torch.Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None, None, None, None, None, None


def range_quantize(
    v: torch.Tensor,
    s: torch.Tensor,
    qmin: int,
    qmax: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """``s·clamp(round((v − offset)/s), qmin, qmax) + offset`` (offset None: 0) with the straight-through
    gradient on the closed range ``lo ≤ v ≤ hi``; all of them broadcast against ``v``."""
    return _RangeQuantize.apply(v, s, offset, lo, hi, qmin, qmax)[0]


def fake_quantize(
    v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, grad_scale: float = 1.0
) -> torch.Tensor:
    """``s · clamp(round(v/s), −qn, qp)`` with STE gradients; ``s`` broadcasts against ``v``.

    When ``s`` requires grad it receives the LSQ step gradient times ``grad_scale``.
    """
    return _FakeQuantize.apply(v, s, qn, qp, grad_scale)[0]


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round with an identity gradient (the "round_pass" of the LSQ paper's pseudo-code)."""
    return (x.round() - x).detach() + x


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x - x * scale).detach() + x * scale


def lsq_reference(v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, grad_scale: float) -> torch.Tensor:
    """LSQ written as in the paper's pseudo-code (Esser et al. 2020, Fig. 2), from autograd primitives.

    Kept as the reference the fused :func:`fake_quantize` is tested against.
    """
    s = _grad_scale(s, grad_scale)
    return ste_round(torch.clamp(v / s, -qn, qp)) * s
