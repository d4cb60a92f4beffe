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


# ---------------------------------------------------------------- uniform grids (issue 12, item 3)

GRIDS = ("symmetric", "affine", "affine_int")
weight_tensors = (
    st.tuples(st.integers(1, 4), st.integers(1, 24))
    .flatmap(lambda shape: arrays("float32", shape, elements=finite))
    .map(torch.from_numpy)
)


def _weight_quantizer(bits: int, grid: str, w: torch.Tensor, per_channel: bool) -> UniformQuantizer:
    channels = w.shape[0] if per_channel else None
    return UniformQuantizer(bits, signed=True, role="weight", channels=channels, ndim=2, grid=grid)


@settings(max_examples=150, deadline=None)
@given(w=weight_tensors, bits=BITS, grid=st.sampled_from(GRIDS), per_channel=st.booleans())
def test_uniform_ste_passes_the_gradient_to_the_weight_that_sets_the_range(
    w, bits, grid, per_channel
) -> None:
    """Every weight lies inside the grid's range, the max-|w| (or min and max) ones included: the STE is
    the identity for weights. The strict mask on v/s gave the max-|w| weight exactly zero gradient."""
    q = _weight_quantizer(bits, grid, w, per_channel)
    v = w.clone().requires_grad_()
    q(v).sum().backward()
    assert torch.equal(v.grad, torch.ones_like(v))


def test_the_positive_max_weight_gets_the_straight_through_gradient() -> None:
    """3/(3/7) = 7 = Q_P exactly: the strict mask −Q_N < v/s < Q_P gave this weight gradient 0."""
    w = torch.tensor([3.0, -0.1, 0.05], requires_grad=True)
    UniformQuantizer(4, signed=True, role="weight")(w).sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0]


@settings(max_examples=200, deadline=None)
@given(w=weight_tensors, bits=BITS, grid=st.sampled_from(GRIDS), per_channel=st.booleans())
def test_uniform_grids_values_levels_error_and_range_ends(w, bits, grid, per_channel) -> None:
    q = _weight_quantizer(bits, grid, w, per_channel)
    out = q(w)
    step = q.step_for(w).expand(w.shape[0], 1) if not per_channel else q.step_for(w)
    qn, qp = (torch.as_tensor(b, dtype=torch.float32).expand(w.shape[0], 1) for b in q.level_bounds(w))
    # on the grid: (v̂ / Δ) + Q_N is an integer level in [0, Q_N + Q_P]
    level = out / step + qn
    assert torch.allclose(level, level.round(), atol=1e-3 * (1 + level.abs().max()))
    assert (level.round() >= 0).all() and (level.round() <= (qn + qp).round()).all()
    # at most 2^b levels per step (per channel or per tensor)
    groups = out if per_channel else out.reshape(1, -1)
    assert all(len(torch.unique(row)) <= 2**bits for row in groups)
    # error at most Δ/2 everywhere (every weight is inside the range)
    assert ((out - w).abs() <= step / 2 * (1 + 1e-5) + 1e-6 * w.abs()).all()
    rows = w if per_channel else w.reshape(1, -1)
    outs = out if per_channel else out.reshape(1, -1)
    scale = rows.abs().amax(dim=1)
    rows, outs, scale = rows[scale > 1e-6], outs[scale > 1e-6], scale[scale > 1e-6]  # (ranges < 1e-8 clamp)
    if grid == "symmetric":  # ±max|w| is a level: the weight that sets the range comes back
        at = rows.abs().argmax(dim=1, keepdim=True)
        assert torch.allclose(outs.gather(1, at), rows.gather(1, at), rtol=1e-6, atol=0)
    elif grid == "affine":  # min and max are levels
        low, high = rows.argmin(dim=1, keepdim=True), rows.argmax(dim=1, keepdim=True)
        assert torch.equal(outs.gather(1, low), rows.gather(1, low))
        assert ((outs.gather(1, high) - rows.gather(1, high)).abs().squeeze(1) <= 1e-6 * scale).all()
    else:  # 0 is a level: an exact zero stays zero
        z = w.clone()
        z[:, 0] = 0.0
        assert (q(z)[:, 0] == 0).all()


@pytest.mark.parametrize("per_channel", [False, True])
def test_symmetric_two_bit_weight_grid_has_three_levels_and_affine_four(per_channel) -> None:
    torch.manual_seed(4)
    w = torch.randn(3, 200)
    symmetric = _weight_quantizer(2, "symmetric", w, per_channel)(w)
    affine = _weight_quantizer(2, "affine", w, per_channel)(w)
    rows = (lambda x: x) if per_channel else (lambda x: x.reshape(1, -1))
    assert [len(torch.unique(r)) for r in rows(symmetric)] == [3] * len(rows(w))
    assert [len(torch.unique(r)) for r in rows(affine)] == [4] * len(rows(w))


def test_uniform_activation_ranges_include_their_ends_and_clip_beyond() -> None:
    for grid in GRIDS:
        q = UniformQuantizer(4, signed=False, role="act", grid=grid, momentum=0.5)
        q.calibrating = True
        q(torch.tensor([[0.5, 2.0]]))
        q.calibrating = False
        q.eval()
        x = torch.tensor([0.5, 1.0, 2.0, 2.5], requires_grad=True)
        out = q(x)
        out.sum().backward()
        assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0], grid  # the range end passes, beyond is clipped
        assert out[2].item() == pytest.approx(2.0) and out[3].item() == pytest.approx(2.0)


def test_affine_activation_range_tracks_running_min_and_max() -> None:
    q = UniformQuantizer(4, signed=True, role="act", grid="affine", momentum=0.5)
    q.calibrating = True
    q(torch.tensor([[-1.0, 3.0]]))
    q.calibrating = False
    assert (q.running_min.item(), q.running_max.item()) == (-1.0, 3.0)
    q.train()
    q(torch.tensor([[-3.0, 1.0]]))
    assert (q.running_min.item(), q.running_max.item()) == (-2.0, 2.0)
    q.eval()
    q(torch.tensor([[-9.0, 9.0]]))
    assert (q.running_min.item(), q.running_max.item()) == (-2.0, 2.0)
    assert q.step_for(torch.zeros(1)).item() == pytest.approx(4.0 / 15)
    assert "running_min" not in UniformQuantizer(4, signed=False, role="act").state_dict()


def test_affine_grids_noise_statistics_see_no_clipping() -> None:
    """noise.py reads the grid's ends from level_bounds: shifted grids are not mistaken for clipped."""
    from qgen.measures.noise import noise_statistics

    torch.manual_seed(5)
    w = torch.rand(8, 500) * 3 + 1  # all positive: a symmetric grid would waste its negative half
    for grid in GRIDS:
        q = _weight_quantizer(4, grid, w, per_channel=True)
        stats = noise_statistics(w, q(w), q.step_for(w), *q.level_bounds(w))
        assert stats["clipped_fraction"] == 0.0, grid
        assert stats["var_ratio"] == pytest.approx(1.0, abs=0.15), grid


def test_unknown_grid_is_refused() -> None:
    with pytest.raises(ValueError, match=r"quant\.grid"):
        UniformQuantizer(4, signed=True, grid="asymmetric")


def test_quant_grid_reaches_every_uniform_quantizer_and_keeps_default_run_ids() -> None:
    from qgen.config import ConfigError, validate_config
    from qgen.experiments import all_runs, run_id
    from qgen.models import build_model
    from tests.conftest import REPO, make_spec

    uniform = {"method": "uniform", "first_layer": "same", "last_layer": "same"}
    spec = make_spec(quant={**uniform, "grid": "affine"})
    assert spec["quant"]["grid"] == "affine"
    model = build_model(spec, (1, 8, 8), 10)
    quantizers = [m for m in model.modules() if isinstance(m, UniformQuantizer)]
    assert quantizers and all(q.grid == "affine" for q in quantizers)
    # the default grid spelled out is dropped: the run id of a spec without it stays
    explicit = make_spec(quant={**uniform, "grid": "symmetric"})
    assert "grid" not in explicit["quant"]
    assert run_id(explicit) == run_id(make_spec(quant=uniform)) != run_id(spec)
    # LSQ has no grid: the key is refused, not dropped
    import yaml

    config = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    experiment = config["experiments"]["default"]
    experiment["base"]["quant"]["grid"] = "affine"
    config["experiments"] = {"e": {**experiment, "grid": {}}}
    with pytest.raises(ConfigError, match=r"quant\.grid .*does not apply to quant\.method lsq"):
        all_runs(validate_config(config))


# ---------------------------------------------------------------- LSQ step sign (issue 12, item 3)


@pytest.mark.parametrize(("role", "signed"), [("act", False), ("weight", True)])
def test_lsq_step_driven_negative_by_the_optimizer_still_quantizes_with_a_positive_step(role, signed) -> None:
    """With s < 0, s·clamp(round(v/s), −Q_N, Q_P) mirrors the grid to [−Q_P, Q_N]·|s|: an unsigned
    activation quantizer (Q_N = 0) then maps every positive input to 0, a signed one clips asymmetrically
    the wrong way. The quantizer uses |s|: the grid stays [−Q_N, Q_P]·|s|."""
    torch.manual_seed(6)
    v = torch.rand(64) * 3 if not signed else torch.cat([torch.randn(64), torch.tensor([50.0, -50.0])])
    q = LSQQuantizer(4, signed=signed, role=role)
    q.calibrate(v[None] if role == "act" else v)
    q(v).pow(2).sum().backward()  # wants a smaller step
    s = q.scale.item()
    torch.optim.SGD(q.parameters(), lr=3 * s / q.scale.grad.item()).step()  # overshoots: s → −2s
    assert q.scale.item() == pytest.approx(-2 * s)
    out = q(v)
    assert torch.equal(out, fake_quantize(v, q.scale.detach().abs(), q.qn, q.qp))
    assert q.step_for(v).item() == pytest.approx(2 * s)
    levels = out / q.step_for(v)
    assert torch.allclose(levels, levels.round()) and levels.min() >= -q.qn and levels.max() <= q.qp
    assert (out > 0).sum() == (v > q.step_for(v) / 2).sum()  # positive inputs stay positive
    # the gradient reaching a negative s moves |s| exactly as LSQ moves the positive step
    mirror = LSQQuantizer(4, signed=signed, role=role)
    with torch.no_grad():
        mirror.scale.copy_(q.scale.abs())
    (g_negative,) = torch.autograd.grad(q(v).pow(2).sum(), q.scale)
    (g_positive,) = torch.autograd.grad(mirror(v).pow(2).sum(), mirror.scale)
    assert torch.equal(g_negative, -g_positive)
