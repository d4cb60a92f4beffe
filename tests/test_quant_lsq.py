"""LSQ's fused function (issue 16, item 4): the fast eager path computes exactly what the mask formula and
the paper's closed form compute, under torch.func transforms, double backward and torch.compile too; and
PyTorch's own learnable fake quantization is not LSQ (what agrees, what does not)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.autograd.function as autograd_function
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from qgen.quant import LSQQuantizer, fake_quantize, int_range, lsq_reference

BITS = st.integers(min_value=2, max_value=8)


@st.composite
def lsq_inputs(draw, dtype=torch.float32):
    """(v, s, qn, qp): v/s on the grid's integers, its half-integers (ties, rounded to even), exactly at
    −Q_N and Q_P and beyond, and anywhere; s a power of two (so that v/s is exactly what was drawn) or not."""
    qn, qp = int_range(draw(BITS), draw(st.booleans()))
    exact = draw(st.booleans())
    s = 2.0 ** draw(st.integers(-6, 3)) if exact else draw(st.floats(1e-3, 10.0))
    levels = st.integers(-qn - 3, qp + 3)
    x = st.one_of(
        levels.map(float),
        levels.map(lambda k: k + 0.5),
        st.sampled_from([float(-qn), float(qp)]),
        st.floats(-qn - 5.0, qp + 5.0, allow_nan=False),
    )
    xs = draw(st.lists(x, min_size=1, max_size=48))
    return torch.tensor(xs, dtype=dtype) * s, torch.tensor([s], dtype=dtype), qn, qp


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so that −0.0 and 0.0 differ)."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _mask_formula(v, s, qn, qp, g, upstream):
    """The earlier implementation, step by step: an explicit mask and torch.where (value, ∂/∂v, ∂/∂s)."""
    x = v / s
    q = torch.round(x).clamp(-qn, qp)
    inside = (x > -qn) & (x < qp)
    grad_v = torch.where(inside, upstream, 0.0)
    if s.numel() == 1:
        grad_s = torch.dot(upstream.reshape(-1), q.reshape(-1)) - torch.dot(grad_v.reshape(-1), x.reshape(-1))
    else:
        grad_s = (upstream * q - grad_v * x).sum_to_size(s.shape)
    return q * s, grad_v, grad_s.reshape(s.shape) * g


def _fused(v, s, qn, qp, g, upstream):
    v, s = v.clone().requires_grad_(), s.clone().requires_grad_()
    out = fake_quantize(v, s, qn, qp, g)
    out.backward(upstream)
    return out.detach(), v.grad, s.grad


@settings(max_examples=300, deadline=None)
@given(inputs=lsq_inputs(), g=st.floats(1e-3, 1.0))
def test_fused_lsq_is_bit_identical_to_the_mask_formula(inputs, g) -> None:
    """Same bits for the value and both gradients as the explicit mask + torch.where it replaced (so
    training is unchanged), on grid points, ties and the clip boundaries."""
    v, s, qn, qp = inputs
    upstream = torch.linspace(-1, 1, v.numel())
    fused, formula = _fused(v, s, qn, qp, g, upstream), _mask_formula(v, s, qn, qp, g, upstream)
    for got, expected in zip(fused, formula, strict=True):
        assert torch.equal(_bits(got), _bits(expected))


def test_fused_lsq_per_channel_is_bit_identical_to_the_mask_formula() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3)
    s = (w.abs().mean(dim=(1, 2, 3), keepdim=True) * 2 / math.sqrt(7)).requires_grad_(False)
    w[0, 0, 0, 0] = 7 * s[0, 0, 0, 0]  # exactly at Q_P: clipped
    upstream = torch.randn_like(w)
    fused, formula = _fused(w, s, 8, 7, 0.01, upstream), _mask_formula(w, s, 8, 7, 0.01, upstream)
    for got, expected in zip(fused, formula, strict=True):
        assert torch.equal(_bits(got), _bits(expected))


@settings(max_examples=200, deadline=None)
@given(inputs=lsq_inputs(torch.float64), g=st.sampled_from([1.0, 0.5]))
def test_fused_lsq_equals_the_paper_closed_form_values_and_gradients(inputs, g) -> None:
    """Against lsq_reference (the paper's round_pass/grad_scale pseudo-code): the same values and the
    same STE mask (boundaries and ties included), the gradients to float rounding (the reference reaches
    them through other operations: (grad·s)/s for ∂/∂v). g = 1 or ½ keeps the reference's grad_scale
    trick (s − g·s) + g·s exactly s."""
    v, s, qn, qp = inputs
    upstream = torch.linspace(-1, 1, v.numel(), dtype=torch.float64)
    out, grad_v, grad_s = _fused(v, s, qn, qp, g, upstream)
    v2, s2 = v.clone().requires_grad_(), s.clone().requires_grad_()
    ref = lsq_reference(v2, s2, qn, qp, g)
    ref.backward(upstream)
    assert torch.equal(out, ref.detach())
    assert torch.equal(grad_v != 0, v2.grad != 0)
    assert torch.allclose(grad_v, v2.grad, rtol=1e-15, atol=0)
    assert torch.allclose(grad_s, s2.grad, rtol=1e-9, atol=1e-9 * (qn + qp) * v.numel())


def test_eager_lsq_quantizer_has_no_per_call_binding_nor_mask_passes(monkeypatch) -> None:
    """The costs removed from the eager step: apply of a setup_context Function binding its arguments
    with inspect.signature at every call, the comparisons and branching torch.where of the mask,
    zero gradients materialized for saved outputs, an indexing op for the gradient scale."""
    binds = []
    original = autograd_function._bind_default_args
    monkeypatch.setattr(
        autograd_function, "_bind_default_args", lambda *a, **k: binds.append(1) or original(*a, **k)
    )
    q = LSQQuantizer(4, signed=False, role="act")
    v = torch.rand(8, 3, 4, 4).relu_().requires_grad_()
    q.calibrate(v)
    upstream = torch.randn_like(v)
    with profile(activities=[ProfilerActivity.CPU]) as forward:
        out = q(v)
    s = q.scale.detach().abs().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as fused:
        fake_quantize(v, s, q.qn, q.qp, q.grad_scale(v)).backward(upstream)
    out.backward(upstream)
    assert not binds
    assert "aten::select" not in {e.key for e in forward.key_averages()}
    ops = {e.key for e in fused.key_averages()}
    assert not ops & {"aten::where", "aten::gt", "aten::lt", "aten::ge", "aten::le", "aten::bitwise_and"}
    assert not ops & {"aten::zeros_like", "aten::zero_"}
    assert {"aten::div", "aten::round", "aten::clamp_", "aten::hardtanh_backward", "aten::dot"} <= ops


def _stacked(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    return torch.randn(n, 4, 6) * 2, torch.tensor([0.3])


def test_vmap_over_stacked_inputs_equals_one_call_each(recwarn) -> None:
    """As the sharpness measures run it: batched, with no per-sample fallback loop (a batching-rule
    warning would say there is one)."""
    v, s = _stacked()
    out = torch.func.vmap(lambda vi: fake_quantize(vi, s, 8, 7, 0.1))(v)
    assert torch.equal(out, torch.stack([fake_quantize(vi, s, 8, 7, 0.1) for vi in v]))
    assert not [w for w in recwarn if "batching rule" in str(w.message)]


def test_func_grad_and_per_sample_grads_equal_autograd() -> None:
    v, s = _stacked()
    upstream = torch.linspace(-1, 1, v[0].numel()).reshape(v[0].shape)

    def loss(vi, si):
        return (fake_quantize(vi, si, 8, 7, 0.1) * upstream).sum()

    grad_v, grad_s = torch.func.grad(loss, argnums=(0, 1))(v[0], s)
    _, expected_v, expected_s = _fused(v[0], s, 8, 7, 0.1, upstream)
    assert torch.equal(grad_v, expected_v) and torch.equal(grad_s, expected_s)
    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(0, None))(v, s)
    for i, vi in enumerate(v):
        _, grad_v, grad_s = _fused(vi, s, 8, 7, 0.1, upstream)
        assert torch.equal(per_sample[0][i], grad_v)
        assert torch.allclose(per_sample[1][i], grad_s, rtol=1e-5, atol=1e-6)  # vmap sums in another order


def test_double_backward_gives_the_hessian_vector_product_of_the_paper_form() -> None:
    """Hv of a loss through an activation quantizer (fixed step), as the Hessian measures compute it."""
    torch.manual_seed(4)
    x = torch.randn(16, 5, dtype=torch.float64)
    w0 = torch.randn(5, 5, dtype=torch.float64)
    w1 = torch.randn(3, 5, dtype=torch.float64)
    s = torch.tensor([0.2], dtype=torch.float64)
    probe = [torch.randn_like(w0), torch.randn_like(w1)]

    def hvp(quantize):
        ws = [w0.clone().requires_grad_(), w1.clone().requires_grad_()]
        h = quantize(torch.relu(x @ ws[0].T), s, 0, 15, 0.1)
        loss = torch.log_softmax(h @ ws[1].T, dim=1)[:, 0].pow(2).sum()
        grads = torch.autograd.grad(loss, ws, create_graph=True)
        return torch.autograd.grad(grads, ws, grad_outputs=probe)

    for got, expected in zip(hvp(fake_quantize), hvp(lsq_reference), strict=True):
        assert got.abs().sum() > 0
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_compiles_without_graph_breaks_to_the_same_values_and_gradients() -> None:
    """``runtime.compile: true``: dynamo traces the quantizer whole (fullgraph) and AOT autograd its
    backward; the aot_eager backend needs no C++ compiler."""
    torch.manual_seed(5)
    q = LSQQuantizer(4, signed=True, role="weight")
    w = torch.randn(7, 9)
    q.calibrate(w)
    upstream = torch.randn_like(w)
    results = []
    for fn in (q, torch.compile(q, backend="aot_eager", fullgraph=True)):
        v = w.clone().requires_grad_()
        q.scale.grad = None
        out = fn(v)
        out.backward(upstream)
        results.append((out.detach(), v.grad, q.scale.grad.clone()))
    for got, expected in zip(*results, strict=True):
        assert torch.equal(got, expected)


# ---------------------------------------------------------------- PyTorch's learnable fake quantization


def _torch_learnable(v, s, qn, qp, g, upstream, per_channel=False):
    v, s = v.clone().requires_grad_(), s.clone().requires_grad_()
    zero = torch.zeros(s.numel())
    if per_channel:
        out = torch._fake_quantize_learnable_per_channel_affine(v, s.reshape(-1), zero, 0, -qn, qp, g)
    else:
        out = torch._fake_quantize_learnable_per_tensor_affine(v, s, zero, -qn, qp, g)
    out.backward(upstream)
    return out.detach(), v.grad, s.grad


def test_torch_learnable_fake_quant_agrees_with_lsq_strictly_inside_the_range() -> None:
    """Away from half-integers and from the clip boundaries: the same values and ∂/∂v, and ∂/∂s up to
    float rounding (PyTorch scales and sums per element)."""
    torch.manual_seed(6)
    s = torch.tensor([0.25])
    k = torch.randint(-7, 7, (256,)).float()
    v = (k + torch.rand(256) * 0.8 + 0.1) * s  # v/s in (k + 0.1, k + 0.9): inside, no ties
    upstream = torch.randn(256)
    ours, theirs = _fused(v, s, 8, 7, 0.1, upstream), _torch_learnable(v, s, 8, 7, 0.1, upstream)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert torch.allclose(ours[2], theirs[2], rtol=1e-5)


def test_torch_learnable_fake_quant_rounds_v_times_one_over_s() -> None:
    """PyTorch multiplies by 1/s: next to a half-integer the rounded level can differ by one."""
    s = torch.tensor([0.25812828540802])  # float32; v/s = −4.5 exactly, v·(1/s) = −4.5000005
    v = torch.tensor([-1.1615773439407349])
    ours, theirs = _fused(v, s, 8, 7, 1.0, torch.ones(1)), _torch_learnable(v, s, 8, 7, 1.0, torch.ones(1))
    assert torch.equal(ours[0] / s, torch.tensor([-4.0]))  # the tie rounded to even
    assert torch.equal(theirs[0] / s, torch.tensor([-5.0]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_learnable_fake_quant_passes_gradients_that_lsq_clips(per_channel) -> None:
    """PyTorch's STE mask is Q_N ≤ round(v/s) ≤ Q_P (closed, on the rounded value): for v/s in
    [Q_P, Q_P + ½) and (−Q_N − ½, −Q_N] it passes ∂/∂v = 1 with ∂/∂s = round(v/s) − v/s, where LSQ (Eq. 3, 5)
    clips: ∂/∂v = 0 and ∂/∂s = Q_P or −Q_N. For an unsigned activation, −Q_N = 0 is every ReLU zero."""
    qn, qp = int_range(4, signed=False)  # 0, 15
    s = torch.tensor([0.5]).reshape((1, 1) if per_channel else (1,))
    x = torch.tensor([0.0, 15.0, 15.2, 15.4, 15.6, 3.3])
    v = (x * 0.5).reshape((1, -1) if per_channel else (-1,))
    ours_dv, ours_ds, theirs_dv, theirs_ds = [], [], [], []
    for i in range(x.numel()):  # one element at a time: its own step gradient
        vi = v[..., i : i + 1]
        _, dv, ds = _fused(vi, s, qn, qp, 1.0, torch.ones_like(vi))
        ours_dv.append(dv.item())
        ours_ds.append(ds.item())
        _, dv, ds = _torch_learnable(vi, s, qn, qp, 1.0, torch.ones_like(vi), per_channel)
        theirs_dv.append(dv.item())
        theirs_ds.append(ds.item())
    assert ours_dv == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert theirs_dv == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert ours_ds == pytest.approx([0.0, 15.0, 15.0, 15.0, 15.0, -0.3])
    assert theirs_ds == pytest.approx([0.0, 0.0, -0.2, -0.4, 15.0, -0.3], abs=1e-5)
