"""Low-precision arithmetic of Courbariaux et al. (2014): fixed point closed form, half floats, the dynamic
fixed point range rule on constructed overflow sequences, rounded gradients and updates, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.measures.gap import generalization_metrics
from qgen.models import build_model
from qgen.quant.fixed_point import (
    Arithmetic,
    NumberGroup,
    fixed_point,
    half_float,
    overflow_counts,
    overflow_limit,
    range_step,
    round_value,
)
from qgen.train import train_run
from qgen.train.loop import _initialize_ranges
from qgen.train.low_precision import LowPrecisionSGD
from qgen.train.optim import lr_at, momentum_at
from tests.test_training import kill_after_second_checkpoint, state_equal, train


def closed_form(x: np.ndarray, nob: int, noib: int) -> np.ndarray:
    """The reference's fixed_point in float64 numpy, ties away from zero (Theano's round then)."""
    power = 2.0 ** (nob - noib)
    top = 2.0**nob - 1
    v = x * power
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -top, top) / power


values = st.lists(st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False), min_size=1, max_size=50)


@settings(max_examples=150, deadline=None)
@given(x=values, nob=st.integers(1, 30), noib=st.integers(-12, 12))
def test_fixed_point_matches_the_closed_form(x, nob, noib) -> None:
    v = torch.tensor(x, dtype=torch.float64)
    out = fixed_point(v, nob, noib).numpy()
    np.testing.assert_array_equal(out, closed_form(np.array(x), nob, noib))
    step, top = 2.0 ** (noib - nob), (2.0**nob - 1) * 2.0 ** (noib - nob)
    assert np.all(np.abs(out) <= top)  # saturation
    assert np.all(out / step == np.round(out / step))  # on the grid
    inside = np.abs(np.array(x)) <= top
    assert np.all(np.abs(out - np.array(x))[inside] <= step / 2)  # round to nearest inside the range


def test_fixed_point_rounds_ties_away_from_zero_and_saturates() -> None:
    v = torch.tensor([0.25, -0.25, 0.75, 100.0, -100.0])  # nob 3, noib 1: step 0.25... grid 2^-2
    assert fixed_point(v, 3, 1).tolist() == [0.25, -0.25, 0.75, 1.75, -1.75]
    ties = torch.tensor([0.125, -0.125, 0.375])  # half steps of the 0.25 grid
    assert fixed_point(ties, 3, 1).tolist() == [0.25, -0.25, 0.5]


@settings(max_examples=50, deadline=None)
@given(x=st.lists(st.floats(-6e4, 6e4, allow_nan=False, width=32), min_size=1, max_size=40))
def test_half_float_is_ieee_half_round_to_nearest(x) -> None:
    v = torch.tensor(x, dtype=torch.float32)
    expected = np.array(x, dtype=np.float32).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(half_float(v).numpy(), expected)


@pytest.mark.parametrize(
    ("rate", "below", "step"),
    [(0.002, 0.5, 1), (0.0001, 0.5, 0), (0.0, 0.00011, 0), (0.0, 0.0001, -1), (0.0, 0.0, -1)],
)
def test_range_rule(rate, below, step) -> None:
    assert range_step(rate, below, 1e-4) == step


def _group(nob: int, noib: int, max_overflow: float = 1e-4) -> NumberGroup:
    arith = Arithmetic(
        format="dynamic_fixed", prop_nob=nob, update_nob=nob, initial_range=noib, max_overflow=max_overflow
    )
    return NumberGroup(arith, "prop")


def _batch(n: int, at_limit: int, at_half: int, nob: int, noib: int) -> torch.Tensor:
    """n values: ``at_limit`` at the largest magnitude, ``at_half`` at half of it, the rest small."""
    limit = (2.0**nob - 1) / 2.0 ** (nob - noib)
    v = torch.full((n,), limit / 8)
    v[:at_limit] = -limit
    v[at_limit : at_limit + at_half] = limit / 2
    return v


def test_dynamic_range_rises_when_overflow_exceeds_the_maximum() -> None:
    g = _group(7, 2)
    g.observe(_batch(1000, 2, 0, 7, 2))  # 0.2 % overflow in one batch
    for _ in range(9):
        g.observe(_batch(1000, 0, 0, 7, 2))  # mean over 10 batches: 0.02 % > 0.01 %
    assert g.adjust(10) == 1 and int(g.range) == 3
    assert g.overflow.tolist() == [0.0, 0.0]  # sums restart


def test_dynamic_range_is_kept_when_one_bit_less_would_overflow() -> None:
    g = _group(7, 2)
    for _ in range(10):
        g.observe(_batch(1000, 0, 5, 7, 2))  # nothing overflows now; 0.5 % would at range − 1
    assert g.adjust(10) == 0 and int(g.range) == 2


def test_dynamic_range_is_lowered_when_one_bit_less_suffices() -> None:
    g = _group(7, 2)
    for _ in range(20):
        g.observe(_batch(1000, 0, 0, 7, 2))
    g.observe(_batch(1000, 0, 2, 7, 2))  # 0.2 % at half in 1 of 21 batches: mean 0.0095 % <= 0.01 %
    assert g.adjust(21) == -1 and int(g.range) == 1


def test_overflow_counts_values_at_the_limit_and_at_half_of_it() -> None:
    v = torch.tensor([3.875, -3.875, 3.0, 0.0, -1.9375])  # nob 5, noib 2: limit 31/8 = 3.875
    assert overflow_counts(v.abs(), overflow_limit(5, 2)).tolist() == [2, 4]
    assert overflow_counts(v.abs(), overflow_limit(5, 1)).tolist() == [4, 4]  # limit 1.9375
    g = _group(5, 2)
    g.observe(v)
    assert g.overflow.tolist() == [2 / 5, 4 / 5]


def test_rounded_values_and_gradients_in_training() -> None:
    arith = Arithmetic(format="dynamic_fixed", prop_nob=6, update_nob=6, initial_range=1)
    value, grad = NumberGroup(arith, "prop"), NumberGroup(arith, "prop")
    grad.range.fill_(-3)
    x = torch.tensor([0.3, -1.7, 5.0], requires_grad=True)
    y = round_value(x, value, grad, training=True)
    assert y.tolist() == fixed_point(x.detach(), 6, 1).tolist()
    g = torch.tensor([0.01, -0.0033, 0.5])
    y.backward(g)
    assert x.grad.tolist() == fixed_point(g, 6, -3).tolist()  # dE/dz rounded on its own grid
    assert value.overflow[0].item() == pytest.approx(1 / 3)  # 5.0 saturated at the limit of range 1
    assert grad.overflow[0].item() == pytest.approx(1 / 3)  # 0.5 beyond range −3's limit


def _maxout(quant: dict, **model) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {
        "model": {
            "name": "maxout",
            "depth": 1,
            "width": 6,
            "pieces": 3,
            "dropout": 0.0,
            "input_dropout": 0.0,
            **model,
        },
        "quant": quant,
    }
    return build_model(spec, (1, 2, 4), 4)


def test_optimizer_rounds_gradients_updates_and_stored_parameters() -> None:
    quant = {"method": "fixed", "prop_bits": 8, "update_bits": 12, "initial_range": 2}
    model = _maxout(quant).train()
    opt = LowPrecisionSGD(model.low_precision_layers(), lr=0.1, momentum=0.5, max_col_norm=0.5)
    x, y = torch.randn(16, 1, 2, 4), torch.randint(0, 4, (16,))
    for _ in range(3):
        opt.zero_grad()
        model.training_loss(model(x), y).backward()
        opt.step()
    for layer in model.low_precision_layers():
        w, b = layer.weight.detach(), layer.bias.detach()
        upd = opt.state[layer.weight]["update"]
        assert torch.equal(w, fixed_point(w, 11, 2)) and torch.equal(b, fixed_point(b, 11, 2))  # update bits
        assert torch.equal(upd, fixed_point(upd, 7, 2))  # propagation bits
        assert w.norm(dim=1).max() <= 0.5 + 2 * 2.0**-9  # max column norm, up to rounding


def test_single_float_optimizer_is_momentum_sgd_with_column_norm() -> None:
    model = _maxout({"method": "float"}).train()
    layer = model.low_precision_layers()[0]
    w0 = layer.weight.detach().clone()
    opt = LowPrecisionSGD(model.low_precision_layers(), lr=0.2, momentum=0.5, max_col_norm=1.0)
    x, y = torch.randn(8, 1, 2, 4), torch.randint(0, 4, (8,))
    velocity = torch.zeros_like(w0)
    for _ in range(2):
        opt.zero_grad()
        model.training_loss(model(x), y).backward()
        g = layer.weight.grad.clone()
        w_prev = layer.weight.detach().clone()
        opt.step()
        velocity = 0.5 * velocity - 0.2 * g
        new = w_prev + velocity
        norms = new.norm(dim=1, keepdim=True)
        assert torch.allclose(layer.weight.detach(), new * norms.clamp(max=1.0) / (1e-7 + norms), atol=1e-6)


def test_softmax_output_gradient_is_rounded_softmax_minus_target_over_k() -> None:
    quant = {"method": "fixed", "prop_bits": 8, "update_bits": 12, "initial_range": 0}
    model = _maxout(quant).train()
    out_layer = model.low_precision_layers()[-1]
    z = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    model.training_loss(z, y).backward()
    soft = fixed_point(torch.softmax(z.detach(), 1), 7, 0)
    expected = fixed_point(
        (soft - torch.nn.functional.one_hot(y, 4)) / 4, 7, int(out_layer.groups["dEdy"].range)
    )
    assert torch.equal(z.grad, expected)


def test_range_initialization_restores_the_parameters_and_keeps_the_ranges(digits, spec_factory) -> None:
    spec = spec_factory(
        model={"name": "maxout", "depth": 1, "width": 16, "pieces": 2, "dropout": 0.5, "input_dropout": 0.2},
        quant={
            "method": "dynamic_fixed",
            "prop_bits": 8,
            "update_bits": 10,
            "range_update_every": 2,
            "range_init_epochs": 2,
        },
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.5, "schedule": "constant", "batch_size": 100},
    )
    model = build_model(spec, digits.input_shape, digits.num_classes).train()
    initial = {k: p.detach().clone() for k, p in model.named_parameters()}
    ranges = model.ranges()
    opt = LowPrecisionSGD(model.low_precision_layers(), lr=0.05, momentum=0.5)

    def batch(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        model.training_loss(model(x), y).backward()
        opt.step()
        model.after_step()

    _initialize_ranges(model, batch, opt, spec["optim"], digits.train, 0, 100, 10)
    assert all(torch.equal(p, initial[k]) for k, p in model.named_parameters())
    assert model.ranges() != ranges  # 28 batches at 31 bits moved them (every 2 batches)
    assert (model.arithmetic.prop_nob, model.arithmetic.update_nob) == (7, 9)  # precision restored
    assert any(s["update"].abs().sum() > 0 for s in opt.state.values())  # momentum kept, as the reference


def _lowprec_spec(spec_factory, **quant):
    return spec_factory(
        model={"name": "maxout", "depth": 1, "width": 48, "pieces": 3, "dropout": 0.2, "input_dropout": 0.0},
        quant={"range_update_every": 3, "range_init_epochs": 2, **quant},
        optim={
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.5,
            "momentum_final": 0.7,
            "momentum_saturate": 4,
            "schedule": "linear",
            "lr_final": 0.005,
            "lr_saturate": 6,
            "max_col_norm": 1.9365,
            "batch_size": 100,
        },
        train={"max_epochs": 10, "target_ce": None},
    )


def test_dynamic_fixed_point_trains_where_fixed_point_of_the_same_width_fails(
    tmp_path, digits, spec_factory
) -> None:
    """The paper's point: 10-bit propagations train with dynamic ranges, not with one fixed range."""
    results = {}
    for method in ("dynamic_fixed", "fixed"):
        spec = _lowprec_spec(spec_factory, method=method, prop_bits=10, update_bits=12)
        model, _, _ = train_run(
            spec, digits, tmp_path / method, {"checkpoint_every": 100}, torch.device("cpu")
        )
        results[method] = generalization_metrics(model, digits)["test_acc"]
    assert results["dynamic_fixed"] > 0.85
    assert results["fixed"] < 0.5


@pytest.mark.parametrize(
    "quant",
    [
        {"method": "dynamic_fixed", "prop_bits": 10, "update_bits": 12},
        {"method": "fixed", "prop_bits": 16, "update_bits": 16},
    ],
)
def test_interrupted_low_precision_run_resumes_to_the_same_result(
    tmp_path, digits, spec_factory, monkeypatch, quant
) -> None:
    """Ranges, overflow sums, the batch counter (buffers) and the momentum updates (optimizer state) are
    in the checkpoint, so a killed run ends bit-identical to an uninterrupted one."""
    spec = _lowprec_spec(spec_factory, **quant)
    reference, _, _ = train(spec, digits, tmp_path / "ref")
    kill_after_second_checkpoint(monkeypatch, spec, digits, tmp_path / "run")
    resumed, _, result = train(spec, digits, tmp_path / "run")
    assert result.resumed_from_epoch == 4
    assert state_equal(reference, resumed)


def test_linear_schedules_of_the_reference() -> None:
    optim = {
        "lr": 0.05,
        "schedule": "linear",
        "lr_final": 0.005,
        "lr_saturate": 400,
        "momentum": 0.5,
        "momentum_final": 0.7,
        "momentum_saturate": 200,
    }
    assert lr_at(optim, 0, 800) == pytest.approx(0.05)
    assert lr_at(optim, 200, 800) == pytest.approx(0.0275)
    assert lr_at(optim, 400, 800) == pytest.approx(0.005) and lr_at(optim, 700, 800) == pytest.approx(0.005)
    assert momentum_at(optim, 100) == pytest.approx(0.6) and momentum_at(optim, 500) == pytest.approx(0.7)
    exp = {"lr": 0.001, "schedule": "exponential", "lr_final": 3e-6}
    assert lr_at(exp, 0, 250) == pytest.approx(0.001)
    assert lr_at(exp, 1, 250) == pytest.approx(0.001 * (3e-6 / 0.001) ** (1 / 250))
    assert lr_at(exp, 250, 250) == pytest.approx(3e-6)
