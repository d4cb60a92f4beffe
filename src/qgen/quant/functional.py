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
nodes and temporaries, not the arithmetic, dominate the cost. LSQ costs four element-wise passes
forward (divide, round, clip in place, multiply) and three backward (the STE mask, two dot products).
There is no Python branching on tensor values, so models built from it trace cleanly under
``torch.compile`` (``runtime.compile: true``), which fuses the element-wise work.

``torch.round`` rounds halves to even; the closed form used in the tests does the same. For LSQ the
range is open for the gradients (a value exactly at −Q_N or Q_P counts as clipped, Eq. 3 and 5), which
is also what ``torch.clamp``'s backward does, so :func:`lsq_reference` agrees everywhere, boundaries
included. The uniform quantizer's STE passes the gradient on the closed range [lo, hi] it was given,
compared with v itself (not with v/s, whose rounding can put the element that set the range just outside
it): the weight at max |w| is not clipped, it sets the grid.

PyTorch's fused learnable fake quantization (``torch._fake_quantize_learnable_per_tensor_affine`` and
``…_per_channel_affine``, behind ``torch.ao.quantization``'s learnable fake-quantize module) is not LSQ
as defined here, so it is not used: its forward multiplies by 1/s (one level off next to a half-integer
v/s); its STE mask is −Q_N ≤ round(v/s) ≤ Q_P, closed and on the rounded value, so it passes the gradient
at v/s = −Q_N and Q_P and up to half a step beyond, where LSQ clips (every zero of a ReLU's output, for
one), with the step gradient round(v/s) − v/s there instead of −Q_N or Q_P; and on the NiN's tensors on
CPU it is slower, not faster (``benchmarks/step_time.py --kernels``; tests/test_quant_lsq.py states what
agrees and what does not).
"""

from __future__ import annotations

import torch


def _lsq_forward(
    v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, in_place: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v̂, x = v/s, q = clamp(round(x), −Q_N, Q_P)); x and q are what the backward needs. The clip
    runs in place on round's fresh output, but not under vmap (``clamp_`` has no batching rule)."""
    x = v / s
    rounded = torch.round(x)
    q = rounded.clamp_(-qn, qp) if in_place else rounded.clamp(-qn, qp)
    return q * s, x, q


def _lsq_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    q: torch.Tensor,
    s: torch.Tensor,
    qn: int,
    qp: int,
    grad_scale: float,
    needs_s: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(∂L/∂v, ∂L/∂s) from the upstream gradient (Eq. 3-5, see the module docstring)."""
    # grad·1[−Q_N < x < Q_P], strict as in LSQ Eq. 3 and 5, in one vectorized pass: for finite x the
    # same values as torch.where(mask, grad, 0), which with the two comparisons building the mask costs
    # ~20x more on CPU where the mask is irregular (a ReLU's output: half of it exactly 0 = −Q_N)
    grad_v = torch.ops.aten.hardtanh_backward(grad, x, -qn, qp)
    if not needs_s:
        return grad_v, None
    # Σ grad·(q − x·1[inside]) = Σ grad·q − Σ grad_v·x
    if s.numel() == 1 and grad.ndim == x.ndim:
        grad_s = torch.dot(grad.reshape(-1), q.reshape(-1)) - torch.dot(grad_v.reshape(-1), x.reshape(-1))
    else:
        grad_s = (grad * q - grad_v * x).sum_to_size(s.shape)
    return grad_v, grad_s.reshape(s.shape) * grad_scale


class _FakeQuantize(torch.autograd.Function):
    """LSQ's v̂ with its hand-written backward; x = v/s and q = round(v/s) clipped are saved for it.
    The backward is itself differentiable (double backward for the Hessian; x and q are constants of
    the forward, as the STE makes them).

    Written in the combined ``forward(ctx, …)`` style because ``apply`` of a ``setup_context``
    Function binds its arguments with ``inspect.signature`` at every call (~30 µs on the 2-core
    machine, as much as the whole quantizer on a small layer). :mod:`torch.func` transforms need
    ``setup_context``; under them :func:`fake_quantize` uses :class:`_FakeQuantizeTransformable`,
    which runs the same two functions."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, grad_scale: float):  # type: ignore[override]
        out, x, q = _lsq_forward(v, s, qn, qp)
        ctx.save_for_backward(x, q, s)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, q, s = ctx.saved_tensors
        grad_v, grad_s = _lsq_backward(grad, x, q, s, ctx.qn, ctx.qp, ctx.grad_scale, ctx.needs_input_grad[1])
        return (grad_v if ctx.needs_input_grad[0] else None), grad_s, None, None, None


class _FakeQuantizeTransformable(torch.autograd.Function):
    """:class:`_FakeQuantize` in the ``setup_context`` style with a generated vmap rule, for
    :mod:`torch.func` transforms (``vmap`` over stacked weight perturbations in the measures); x and q
    are returned as non-differentiable outputs so that they can be saved."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, grad_scale: float):  # type: ignore[override]
        return _lsq_forward(v, s, qn, qp, in_place=False)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, s, qn, qp, grad_scale = inputs
        _, x, q = output
        ctx.mark_non_differentiable(x, q)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, q, s)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_x: torch.Tensor, _grad_q: torch.Tensor):  # type: ignore[override]
        x, q, s = ctx.saved_tensors
        grad_v, grad_s = _lsq_backward(grad, x, q, s, ctx.qn, ctx.qp, ctx.grad_scale, ctx.needs_input_grad[1])
        return (grad_v if ctx.needs_input_grad[0] else None), grad_s, None, None, None


class InsideRangeSTE(torch.autograd.Function):
    """Base of the straight-through functions whose forward returns (value, inside), ``inside`` the mask
    lo ≤ v ≤ hi of the first input v: ∂value/∂v = 1 inside, 0 outside; no gradient for any other input."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, inside = output
        ctx.mark_non_differentiable(inside)
        ctx.save_for_backward(inside)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_inside: torch.Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), *([None] * (len(ctx.needs_input_grad) - 1))


class _RangeQuantize(InsideRangeSTE):
    """v̂ = s·clamp(round((v − o)/s), q_min, q_max) + o; ∂v̂/∂v = 1 on lo ≤ v ≤ hi, else 0; no gradient
    for the step, the offset o or the range (they are functions of the data, not parameters)."""

    @staticmethod
    def forward(v, s, offset, lo, hi, qmin: int, qmax: int):  # type: ignore[override]
        x = v / s if offset is None else (v - offset) / s
        q = torch.round(x).clamp(qmin, qmax) * s
        return (q if offset is None else q + offset), (v >= lo) & (v <= hi)


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
    if torch._C._are_functorch_transforms_active():  # the test autograd.Function.apply itself makes
        return _FakeQuantizeTransformable.apply(v, s, qn, qp, grad_scale)[0]
    return _FakeQuantize.apply(v, s, qn, qp, grad_scale)


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
