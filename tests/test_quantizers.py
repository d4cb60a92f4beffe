"""Quantizers: values on the grid, closed form, STE and LSQ gradients, per-channel vs per-tensor."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qgen.quant import LSQQuantizer, UniformQuantizer, fake_quantize, int_range, lsq_reference

BITS = st.integers(min_value=2, max_value=8)
finite = st.floats(min_value=-50, max_value=50, allow_nan=False, width=32)
vectors = arrays("float32", st.integers(1, 64), elements=finite).map(torch.from_numpy)
steps = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)


@pytest.mark.parametrize(
    ("bits", "signed", "expected"),
    [(2, True, (2, 1)), (4, True, (8, 7)), (8, True, (128, 127)), (2, False, (0, 3)), (8, False, (0, 255))],
)
def test_int_range(bits: int, signed: bool, expected: tuple[int, int]) -> None:
    assert int_range(bits, signed) == expected


def test_int_range_rejects_one_bit() -> None:
    with pytest.raises(ValueError, match="bits"):
        int_range(1, True)


@settings(max_examples=200, deadline=None)
@given(v=vectors, s=steps, bits=BITS, signed=st.booleans())
def test_fake_quantize_values_lie_on_the_grid_and_match_closed_form(v, s, bits, signed) -> None:
    qn, qp = int_range(bits, signed)
    step = torch.tensor([s], dtype=torch.float32)
    out = fake_quantize(v, step, qn, qp)
    levels = out / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.min() >= -qn - 1e-3 and levels.max() <= qp + 1e-3
    closed_form = step * torch.clamp(torch.round(v / step), -qn, qp)
    assert torch.equal(out, closed_form)


@settings(max_examples=100, deadline=None)
@given(v=vectors, s=steps, bits=BITS)
def test_quantization_error_is_at_most_half_a_step_inside_the_range(v, s, bits) -> None:
    qn, qp = int_range(bits, signed=True)
    step = torch.tensor([s])
    out = fake_quantize(v, step, qn, qp)
    inside = (v / step >= -qn) & (v / step <= qp)
    assert torch.all((out - v)[inside].abs() <= s / 2 + 1e-5 * (1 + v.abs()[inside]))


@settings(max_examples=100, deadline=None)
@given(v=vectors, s=steps, bits=BITS, signed=st.booleans(), g=st.floats(1e-3, 1.0))
def test_fused_gradients_equal_the_lsq_reference(v, s, bits, signed, g) -> None:
    """The fused autograd function and the paper's round_pass/grad_scale composition agree."""
    qn, qp = int_range(bits, signed)
    v1 = v.clone().double().requires_grad_()
    s1 = torch.tensor([s], dtype=torch.float64, requires_grad=True)
    v2 = v1.detach().clone().requires_grad_()
    s2 = s1.detach().clone().requires_grad_()
    upstream = torch.linspace(-1, 1, v.numel(), dtype=torch.float64)
    (fake_quantize(v1, s1, qn, qp, g) * upstream).sum().backward()
    (lsq_reference(v2, s2, qn, qp, g) * upstream).sum().backward()
    assert torch.allclose(v1.grad, v2.grad)
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-9, atol=1e-9)


def test_values_exactly_at_the_range_ends_count_as_clipped() -> None:
    """LSQ Eq. 3/5: at v/s = Q_P the STE passes nothing and the step gradient is Q_P."""
    qn, qp = int_range(3, signed=True)
    s = torch.tensor([0.5], requires_grad=True)
    v = torch.tensor([qp * 0.5, -qn * 0.5], requires_grad=True)
    fake_quantize(v, s, qn, qp).sum().backward()
    assert v.grad.tolist() == [0.0, 0.0]
    assert s.grad.item() == pytest.approx(qp - qn)


def test_ste_gradient_is_identity_inside_and_zero_outside() -> None:
    step = torch.tensor([0.5])
    v = torch.tensor([-10.0, -1.0, -0.26, 0.0, 0.3, 1.4, 10.0], requires_grad=True)
    qn, qp = int_range(3, signed=True)  # levels -4..3 → values -2.0 .. 1.5
    fake_quantize(v, step, qn, qp).sum().backward()
    assert v.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_step_gradient_matches_the_paper_closed_form() -> None:
    """∂v̂/∂s = −v/s + round(v/s) inside, −Q_N below, Q_P above (Esser et al. 2020, Eq. 3)."""
    qn, qp = int_range(2, signed=True)  # -2..1
    s = torch.tensor([1.0], requires_grad=True)
    v = torch.tensor([-5.0, -1.3, 0.4, 0.6, 7.0])
    for i, expected in enumerate([-2.0, -1.0 + 1.3, 0.0 - 0.4, 1.0 - 0.6, 1.0]):
        s.grad = None
        fake_quantize(v[i : i + 1], s, qn, qp).sum().backward()
        assert s.grad.item() == pytest.approx(expected)


def test_lsq_grad_scale_and_init_follow_the_paper() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    q = LSQQuantizer(4, signed=True, role="weight")
    q.calibrate(w)
    assert q.scale.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-6)
    assert q.grad_scale(w) == pytest.approx(1 / math.sqrt(w.numel() * 7))
    act = LSQQuantizer(4, signed=False, role="act")
    x = torch.rand(32, 10)
    assert act.grad_scale(x) == pytest.approx(1 / math.sqrt(10 * 15))  # features of one example


def test_per_channel_equals_per_tensor_applied_to_each_channel() -> None:
    torch.manual_seed(1)
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 5, 6).view(6, 1, 1, 1)
    per_channel = UniformQuantizer(4, signed=True, role="weight", channels=6, ndim=4)
    out = per_channel(w)
    for c in range(6):
        per_tensor = UniformQuantizer(4, signed=True, role="weight")
        assert torch.equal(out[c], per_tensor(w[c]))
    # each channel has its own grid: its largest magnitude is exactly representable
    assert torch.allclose(out.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    assert per_channel.step_for(w).shape == (6, 1, 1, 1)


def test_per_channel_lsq_step_gradient_is_per_channel() -> None:
    torch.manual_seed(2)
    w = torch.randn(4, 5)
    q = LSQQuantizer(3, signed=True, role="weight", channels=4, ndim=2)
    q.calibrate(w)
    q(w).sum().backward()
    assert q.scale.grad.shape == (4, 1)
    ref = torch.zeros(4, 1)
    for c in range(4):
        s = q.scale[c].detach().clone().requires_grad_()
        lsq_reference(w[c], s, q.qn, q.qp, q.grad_scale(w)).sum().backward()
        ref[c] = s.grad
    assert torch.allclose(q.scale.grad, ref, atol=1e-6)


def test_uniform_weight_step_is_max_abs_over_qp() -> None:
    w = torch.tensor([[-3.0, 0.2], [1.0, 2.0]])
    q = UniformQuantizer(8, signed=True, role="weight")
    assert q.step_for(w).item() == pytest.approx(3.0 / 127)
    assert torch.allclose(q(w), w, atol=3.0 / 127 / 2)


def test_uniform_activation_range_tracks_running_max_and_freezes_in_eval() -> None:
    q = UniformQuantizer(4, signed=False, role="act", momentum=0.5)
    q.calibrating = True
    q(torch.tensor([[0.0, 2.0]]))
    q.calibrating = False
    assert q.running_max.item() == 2.0
    q.train()
    q(torch.tensor([[0.0, 4.0]]))
    assert q.running_max.item() == pytest.approx(3.0)
    q.eval()
    out = q(torch.tensor([[0.0, 10.0]]))
    assert q.running_max.item() == pytest.approx(3.0)
    assert out.max().item() == pytest.approx(3.0)  # clipped at the frozen range
