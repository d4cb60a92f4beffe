"""BinaryConnect (Courbariaux et al. 2015): binarization values, unbiasedness, gradients, clipping,
learning-rate scaling, test-time rule, and a short training run."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.models import build_model
from qgen.quant import BinaryQuantizer, QuantLinear, quant_layers
from qgen.quant.binary import glorot_scale
from qgen.train import train_run
from qgen.train.losses import squared_hinge
from qgen.train.optim import build_optimizer, set_lr

weights = st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=64)
heights = st.sampled_from([0.05, 0.5, 1.0, 2.0])


@settings(max_examples=60, deadline=None)
@given(w=weights, h=heights, stochastic=st.booleans(), training=st.booleans())
def test_binary_values_are_exactly_plus_or_minus_h(w, h, stochastic, training) -> None:
    q = BinaryQuantizer((len(w), 1), stochastic=stochastic, H=h, test_time="binary")
    q.train(training)
    out = q(torch.tensor(w).reshape(-1, 1))
    h32 = torch.tensor(h).item()  # H in the weights' dtype (float32)
    assert set(out.unique().tolist()) <= {h32, -h32}


@settings(max_examples=40, deadline=None)
@given(w=weights, h=heights)
def test_deterministic_binarization_is_the_sign_with_zero_to_plus_h(w, h) -> None:
    q = BinaryQuantizer((len(w), 1), stochastic=False, H=h)
    v = torch.tensor(w)
    expected = torch.where(v >= 0, torch.tensor(h), torch.tensor(-h))
    assert torch.equal(q(v), expected)
    assert q(torch.zeros(3)).tolist() == [pytest.approx(h)] * 3


@settings(max_examples=25, deadline=None)
@given(w=st.lists(st.floats(-1.5, 1.5, allow_nan=False, width=32), min_size=1, max_size=8), h=heights)
def test_stochastic_binarization_is_unbiased(w, h) -> None:
    """E[W_b] = H·(2·hard_sigmoid(W/H) − 1) = clip(W, −H, H): the mean of many draws is within 5 sigma."""
    q = BinaryQuantizer((len(w), 1), stochastic=True, H=h)
    v = torch.tensor(w, dtype=torch.float64)
    draws = 40_000
    gen = torch.Generator().manual_seed(0)
    total = torch.zeros_like(v)
    for _ in range(draws // 1000):
        total += q.train_quantize(v.expand(1000, -1), generator=gen).sum(dim=0)
    mean = total / draws
    target = v.clamp(-h, h)
    sigma = torch.sqrt((h**2 - target**2).clamp_min(0) / draws)
    assert torch.all((mean - target).abs() <= 5 * sigma + 1e-12), (mean, target)


def test_gradient_reaches_the_latent_weights_unchanged() -> None:
    """Straight-through: ∂L/∂W equals ∂L/∂W_b (the reference applies the gradient w.r.t. W_b to W)."""
    torch.manual_seed(0)
    layer = QuantLinear(5, 3, bias=False)
    layer.weight_quant = BinaryQuantizer(tuple(layer.weight.shape), stochastic=False)
    x = torch.randn(7, 5)
    layer(x).pow(2).sum().backward()
    wb = layer.weight_quant(layer.weight.detach()).requires_grad_(True)
    torch.nn.functional.linear(x, wb).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, wb.grad)
    assert layer.weight.grad.abs().sum() > 0


def test_test_time_rule() -> None:
    w = torch.tensor([0.3, -0.2, 0.0])
    stoch = BinaryQuantizer((3, 1), stochastic=True).eval()
    assert torch.equal(stoch(w), w)  # reference: real-valued weights at test time
    det = BinaryQuantizer((3, 1), stochastic=False).eval()
    assert det(w).tolist() == [1.0, -1.0, 1.0]
    stoch_binary = BinaryQuantizer((3, 1), stochastic=True, test_time="binary").eval()
    assert stoch_binary(w).tolist() == [1.0, -1.0, 1.0]


def test_glorot_h_and_learning_rate_scale() -> None:
    q = BinaryQuantizer((20, 10, 3, 3), stochastic=False, H="glorot", lr_scale="glorot")
    fan_in, fan_out = 10 * 9, 20 * 9
    assert math.isclose(q.H, math.sqrt(1.5 / (fan_in + fan_out)))
    assert q.lr_scale == pytest.approx(1 / math.sqrt(1.5 / (fan_in + fan_out)))
    assert glorot_scale((4, 6)) == pytest.approx(math.sqrt(1.5 / 10))


def _bc_spec(spec_factory, **quant):
    return spec_factory(
        model={"name": "mlp", "depth": 2, "width": 32, "batch_norm": True, "output_batch_norm": True},
        quant={"method": "binary", **quant},
        optim={"name": "adam", "lr": 0.05, "schedule": "exponential", "lr_final": 0.001, "batch_size": 100},
        train={"max_epochs": 3, "target_ce": None, "loss": "sq_hinge"},
    )


def test_binary_layers_start_uniform_in_h_and_get_scaled_learning_rates(spec_factory) -> None:
    torch.manual_seed(0)
    model = build_model(_bc_spec(spec_factory, H=0.5), (1, 8, 8), 10)
    layers = [m for _, m in quant_layers(model)]
    assert all(isinstance(m.weight_quant, BinaryQuantizer) for m in layers)  # every layer is binary
    for m in layers:
        assert m.weight.abs().max() <= 0.5 and m.weight.abs().max() > 0.45
    optimizer = build_optimizer(model, {"name": "adam", "lr": 0.01})
    set_lr(optimizer, 0.01)
    scaled = {id(g["params"][0]): g["lr"] for g in optimizer.param_groups if "lr_scale" in g}
    for m in layers:
        assert scaled[id(m.weight)] == pytest.approx(0.01 * m.weight_quant.lr_scale)


def test_scaled_adam_step_equals_the_reference_update(spec_factory) -> None:
    """W + scale·(adam(W) − W): Adam with the rate multiplied by the layer's scale gives the same step."""
    torch.manual_seed(0)
    model = build_model(_bc_spec(spec_factory), (1, 8, 8), 10).train()
    layer = next(m for _, m in quant_layers(model))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    plain = torch.optim.Adam([torch.nn.Parameter(layer.weight.detach().clone())], lr=0.01)
    optimizer = build_optimizer(model, {"name": "adam", "lr": 0.01})
    set_lr(optimizer, 0.01)
    before = layer.weight.detach().clone()
    squared_hinge(model(x), y).backward()
    plain.param_groups[0]["params"][0].grad = layer.weight.grad.clone()
    optimizer.step()
    plain.step()
    adam_delta = plain.param_groups[0]["params"][0].detach() - before
    assert torch.allclose(layer.weight.detach() - before, layer.weight_quant.lr_scale * adam_delta, atol=1e-6)


def test_latent_weights_stay_clipped_during_training(tmp_path, digits, spec_factory) -> None:
    spec = _bc_spec(spec_factory, stochastic=True, H=0.2)
    model, _, result = train_run(spec, digits, tmp_path, {"checkpoint_every": 100}, torch.device("cpu"))
    assert result.status == "completed"
    latent = torch.cat([m.weight.detach().flatten() for _, m in quant_layers(model)])
    assert latent.abs().max() <= 0.2 + 1e-7
    assert (latent.abs() > 0.2 - 1e-6).float().mean() > 0.01  # the clip is active (a large lr)


def test_squared_hinge_matches_the_reference_formula() -> None:
    logits = torch.tensor([[0.5, -2.0, 1.5], [3.0, 0.0, -0.5]])
    target = torch.tensor([2, 0])
    t = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]])
    expected = torch.clamp(1 - t * logits, min=0).pow(2).mean()
    assert squared_hinge(logits, target).item() == pytest.approx(expected.item())
    assert squared_hinge(logits, target).item() == pytest.approx((2.25 + 0 + 0 + 0 + 1 + 0.25) / 6)
