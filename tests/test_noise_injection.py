"""Noise-injection training (quant.method: noise, issue 17 item 3): the draws, their seeding, clipping,
the straight-through gradient, the evaluation modes, config errors, resume and measures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.config import ConfigError, measures_schema, validate, validate_config
from qgen.experiments import all_runs, run_id
from qgen.measures.deployed import deploy
from qgen.measures.gap import generalization_metrics
from qgen.measures.run import measure_run
from qgen.models import build_model
from qgen.quant import GRIDS, NoiseQuantizer, UniformQuantizer, quant_layers
from qgen.quant.noise import noise_key
from qgen.train import checkpoint
from tests.conftest import REPO, TINY_MEASURES, make_spec
from tests.test_training import kill_after_second_checkpoint, train


def quantizer(seed: int = 0, **kwargs) -> NoiseQuantizer:
    torch.manual_seed(seed)
    return NoiseQuantizer(**{"bits": 4, "signed": True, **kwargs})


def weight_draws(q: NoiseQuantizer, w: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """θ = out − w of ``steps`` training forwards (a weight sets its own range: nothing is clipped)."""
    q.train()
    return torch.stack([q(w).detach() - w for _ in range(steps)])


# ---------------------------------------------------------------- the draws


@pytest.mark.parametrize(("bits", "grid"), [(2, "symmetric"), (4, "affine"), (8, "affine_int")])
def test_draws_have_mean_zero_and_variance_delta_squared_over_12(bits, grid) -> None:
    """n draws of U(−Δ/2, Δ/2): sd(mean) = Δ/√(12n), sd(sample variance) ≈ Δ²/√(180n) (Var(u²) =
    Δ⁴/80 − Δ⁴/144); both checked within 5 standard errors."""
    torch.manual_seed(1)
    w = torch.randn(100, 100)
    q = quantizer(3, bits=bits, grid=grid)
    theta = weight_draws(q, w, steps=4).flatten().double()
    delta = float(q.step_for(w))
    n = theta.numel()
    assert theta.abs().max() <= delta / 2
    assert abs(float(theta.mean())) < 5 * delta / math.sqrt(12 * n)
    assert abs(float(theta.var()) - delta**2 / 12) < 5 * delta**2 / math.sqrt(180 * n)
    # uniform, not just its first two moments: each tenth of [−Δ/2, Δ/2) holds a tenth of the draws
    counts = torch.histc(theta / delta + 0.5, bins=10, min=0, max=1)
    assert (counts - n / 10).abs().max() < 5 * math.sqrt(n * 0.1 * 0.9)


def test_draws_are_reproducible_from_the_seed_and_differ_across_steps_seeds_and_layers() -> None:
    w = torch.randn(32, 16)
    a, b = quantizer(7), quantizer(7)
    first, again = weight_draws(a, w, 3), weight_draws(b, w, 3)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not torch.equal(first, weight_draws(quantizer(8), w, 3))
    torch.manual_seed(7)
    one, two = NoiseQuantizer(4, True), NoiseQuantizer(4, True)  # two layers of one model
    assert not torch.equal(weight_draws(one, w), weight_draws(two, w))
    # the k-th draw depends on (stream, k) only: a quantizer whose counter is loaded at 2 draws the third
    c = quantizer(7)
    c.load_state_dict({**c.state_dict(), "noise_step": torch.tensor(2)})
    assert torch.equal(weight_draws(c, w)[0], first[2])
    assert int(c.noise_step) == 3 and int(a.noise_step) == 3


def test_eval_forwards_and_calibration_draw_no_step() -> None:
    q = quantizer(2, role="act", signed=False)
    x = torch.rand(8, 5)
    q.train()
    q.calibrating = True
    q(x)
    q.calibrating = False
    q.eval()
    q(x)
    q.train_quantize(x, torch.Generator().manual_seed(0))
    assert int(q.noise_step) == 0
    q.train()
    q(x)
    assert int(q.noise_step) == 1


def test_noise_keys_are_distinct_over_steps_and_streams() -> None:
    keys = {noise_key(s, k) for s in range(20) for k in range(-2, 500)}
    assert len(keys) == 20 * 502
    assert all(0 <= key < 2**63 for key in keys)


# ---------------------------------------------------------------- clipping and gradients


def activation_quantizer(clip: bool) -> NoiseQuantizer:
    q = quantizer(4, role="act", signed=False, noise_clip=clip)
    q.calibrate(torch.tensor([[0.0, 1.0]]))  # range [0, 1], Δ = 1/15
    return q.train()


def test_clipping_keeps_values_in_range_before_the_noise_and_stops_their_gradient() -> None:
    q = activation_quantizer(clip=True)
    q.momentum = 0.0  # keep the calibrated range through the training forward
    x = torch.tensor([[-0.5, 0.0, 0.3, 1.0, 2.5]], requires_grad=True)
    out = q(x)
    delta = 1 / 15
    theta = out.detach() - x.detach().clamp(0, 1)
    assert theta.abs().max() <= delta / 2
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))  # closed range [0, 1]


def test_without_clipping_the_noise_is_added_to_every_value_and_the_gradient_is_one() -> None:
    q = activation_quantizer(clip=False)
    q.momentum = 0.0
    x = torch.tensor([[-0.5, 0.0, 0.3, 1.0, 2.5]], requires_grad=True)
    out = q(x)
    assert (out.detach() - x.detach()).abs().max() <= 1 / 30
    assert out.detach()[0, -1] > 2.4
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    grid=st.sampled_from(GRIDS),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.05, 20.0),
)
def test_training_output_is_clip_plus_bounded_noise_with_a_straight_through_gradient(
    bits, grid, signed, seed, scale
) -> None:
    """For every grid: out − clip(x) ∈ [−Δ/2, Δ/2] with clip to the uniform quantizer's STE range, and
    the gradient is the uniform quantizer's (1 on that range, 0 outside) while the values differ."""
    gen = torch.Generator().manual_seed(seed)
    calib = torch.randn(4, 32, generator=gen) * scale
    x = (torch.randn(4, 32, generator=gen) * 1.5 * scale).requires_grad_()
    q, u = (
        quantizer(seed, bits=bits, signed=signed, role="act", grid=grid),
        UniformQuantizer(bits, signed, "act", grid=grid),
    )
    for m in (q, u):
        m.calibrate(calib)
        m.momentum = 0.0
        m.train()
    step, _, lo, hi = q._grid(*q._eval_range(x))
    out = q(x)
    theta = out.detach() - torch.clamp(x.detach(), lo, hi)
    assert float(theta.abs().max()) <= float(step) / 2 * (1 + 1e-6)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (grad_u,) = torch.autograd.grad(u(x).sum(), x)
    assert torch.equal(grad, grad_u)
    assert torch.equal(grad, ((x >= lo) & (x <= hi)).float())


def test_step_and_range_get_no_gradient_and_weights_receive_the_noisy_forward_gradient() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 4, requires_grad=True)
    q = quantizer(5).train()
    out = q(w)
    (out * torch.arange(24.0).reshape(6, 4)).sum().backward()
    assert torch.equal(w.grad, torch.arange(24.0).reshape(6, 4))  # a weight never leaves its own range
    assert not list(q.parameters())


# ---------------------------------------------------------------- evaluation modes


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize(("role", "signed"), [("weight", True), ("act", False), ("act", True)])
def test_round_mode_equals_the_uniform_quantizer_exactly(grid, role, signed) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 12) * 3
    q = quantizer(1, bits=3, signed=signed, role=role, grid=grid, noise_eval="round")
    u = UniformQuantizer(3, signed, role, grid=grid)
    for m in (q, u):
        m.calibrate(x)
        m.train()
        m(x)  # one training forward: the running range moves the same way
        m.eval()
    y = torch.randn(16, 12) * 4
    assert torch.equal(q(y), u(y))
    assert torch.equal(q.step_for(y), u.step_for(y))


def test_clean_mode_is_the_clipped_input_and_noise_mode_one_fixed_draw() -> None:
    q = activation_quantizer(clip=True)
    q.noise_eval = "clean"
    q.eval()
    x = torch.tensor([[-0.5, 0.0, 0.3, 1.0, 2.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    assert torch.equal(q(x), x.clamp(0, 1))
    q.noise_eval = "noise"
    out = q(x)
    offset = out - x.clamp(0, 1)
    assert offset.abs().max() <= 1 / 30 and offset.abs().min() > 0
    assert torch.allclose(offset[0], offset[1], atol=1e-7)  # the same noise for every example
    assert torch.equal(q(x[1:]), out[1:])  # and whatever the batch
    again = activation_quantizer(clip=True)
    again.noise_eval = "noise"
    assert torch.equal(again.eval()(x), out)  # seeded: the same quantizer built again draws the same
    q.momentum = 0.0  # keep the range: the draw, not Δ, is under test
    q.train()
    q(x)
    q.eval()
    assert torch.equal(q(x), out)  # training steps do not move it


def spec_of(method: str, **quant) -> dict:
    return make_spec(quant={"method": method, "weight_bits": 3, "act_bits": 3, **quant}, model={"width": 16})


@pytest.mark.parametrize("noise_on", [["weight", "act"], ["weight"], ["act"]])
def test_a_noise_model_evaluated_by_rounding_is_its_matched_uniform_model(digits, noise_on) -> None:
    """Same seed: the same initial weights as the matched rounding run; eval mode round: the same
    logits once the ranges agree; the roles not in noise_on are rounded by uniform quantizers."""
    torch.manual_seed(0)
    uniform = build_model(spec_of("uniform"), digits.input_shape, digits.num_classes)
    torch.manual_seed(0)
    noisy = build_model(spec_of("noise", noise_on=noise_on), digits.input_shape, digits.num_classes)
    for (_, a), (_, b) in zip(quant_layers(uniform), quant_layers(noisy), strict=True):
        assert torch.equal(a.weight, b.weight)
        assert isinstance(b.weight_quant, NoiseQuantizer) == ("weight" in noise_on)
        assert isinstance(b.input_quant, NoiseQuantizer) == ("act" in noise_on)
        assert isinstance(b.input_quant, UniformQuantizer)
    noisy.load_state_dict(uniform.state_dict(), strict=False)
    x = next(iter(digits.train.batches(64)))[0]
    assert torch.equal(uniform.eval()(x), noisy.eval()(x))


def test_the_deployed_weights_follow_the_eval_mode(digits) -> None:
    torch.manual_seed(0)
    model = build_model(spec_of("noise", noise_eval="noise"), digits.input_shape, digits.num_classes)
    view = deploy(model)
    for name, layer in quant_layers(model):
        w, q = layer.weight.detach(), layer.weight_quant
        deployed = view.module.get_submodule(name).weight
        assert torch.equal(deployed, q.eval()(w))
        assert 0 < float((deployed - w).abs().max()) <= float(q.step_for(w)) / 2
        assert torch.equal(view.steps[f"{name}.weight"], q.step_for(w))
    for mode in ("clean", "round"):
        for _, layer in quant_layers(model):
            layer.weight_quant.noise_eval = mode
        view = deploy(model)
        for name, layer in quant_layers(model):
            expected = layer.weight.detach() if mode == "clean" else layer.weight_quant(layer.weight)
            assert torch.equal(view.module.get_submodule(name).weight, expected)


# ---------------------------------------------------------------- config


def one_experiment(quant: dict, grid: dict | None = None) -> dict:
    config = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    experiment = copy.deepcopy(config["experiments"]["default"])
    experiment["base"]["quant"] = quant
    config["experiments"] = {"e": {**experiment, "grid": grid or {}}}
    return config


def config_error(quant: dict, grid: dict | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        all_runs(validate_config(one_experiment(quant, grid)))
    return str(err.value)


@pytest.mark.parametrize(
    ("quant", "grid", "message"),
    [
        (
            {"method": "lsq", "noise_eval": "clean"},
            None,
            "quant.noise_eval (set in base) does not apply to quant.method lsq; "
            "it applies to quant.method noise",
        ),
        (
            {"method": "uniform", "noise_clip": False},
            None,
            "quant.noise_clip (set in base) does not apply to quant.method uniform",
        ),
        (
            {"method": "lsq", "noise_on": ["weight"]},
            {"quant.method": ["lsq", "uniform"]},
            "quant.noise_on takes effect in no run",
        ),
        (
            {"method": "noise", "act_bits": None, "noise_on": ["weight", "act"]},
            None,
            "quant.noise_on names act but quant.act_bits is null",
        ),
        (
            {"method": "noise", "weight_bits": None},
            None,
            "quant.weight_bits: null is not a bit width for quant.method noise",
        ),
        ({"method": "noise", "noise_eval": "sample"}, None, "quant.noise_eval: 'sample' is not one of"),
        ({"method": "noise", "noise_on": []}, None, "quant.noise_on: [] should be non-empty"),
        ({"method": "noise", "noise_on": ["bias"]}, None, "'bias' is not one of ['weight', 'act']"),
    ],
)
def test_inapplicable_and_invalid_noise_keys_are_config_errors(quant, grid, message) -> None:
    assert message in config_error(quant, grid)


def test_noise_specs_record_their_settings_and_existing_run_ids_do_not_move() -> None:
    spec = spec_of("noise")
    assert {k: spec["quant"][k] for k in ("noise_on", "noise_clip", "noise_eval", "grid")} == {
        "noise_on": ["weight", "act"],
        "noise_clip": True,
        "noise_eval": "round",
        "grid": "symmetric",
    }
    assert spec_of("noise", act_bits=None)["quant"]["noise_on"] == ["weight"]
    assert run_id(spec_of("noise", noise_on=["act", "weight"])) == run_id(spec)  # order-free
    assert run_id(spec_of("noise", noise_eval="clean")) != run_id(spec)
    assert "-noise_w3a3-" in run_id(spec)
    # a noise key in the base of a mixed grid is dropped from the runs it does not apply to
    runs = all_runs(
        validate_config(
            one_experiment({"method": "noise", "noise_eval": "clean"}, {"quant.method": ["noise", "uniform"]})
        )
    )
    uniform = [r for r in runs.values() if r.spec["quant"]["method"] == "uniform"]
    assert uniform and all("noise_eval" not in r.spec["quant"] for r in uniform)
    alone = all_runs(validate_config(one_experiment({"method": "uniform"})))
    assert {r.run_id for r in uniform} == set(alone)


@pytest.mark.parametrize("policy", ["same", "float", "8bit"])
def test_the_precision_plan_and_bit_label_of_a_noise_run_are_its_matched_uniform_runs(policy) -> None:
    from qgen.experiments import bits_label
    from tests.test_models import built_precisions, planned

    for w_bits, a_bits in ((4, 4), (2, 8), (8, None)):
        quant = {"weight_bits": w_bits, "act_bits": a_bits, "first_layer": policy, "last_layer": policy}
        noisy = {
            "model": {"name": "nin", "depth": 2, "width": 1, "base_width": 4},
            "quant": {"method": "noise", **quant},
        }
        uniform = {**noisy, "quant": {"method": "uniform", **quant}}
        assert planned(noisy) == built_precisions(build_model(noisy, (1, 8, 8), 10)) == planned(uniform)
        assert bits_label(noisy) == bits_label(uniform)


# ---------------------------------------------------------------- training: resume, measures


def test_an_interrupted_noise_run_resumes_bit_identically(tmp_path, digits, monkeypatch) -> None:
    spec = make_spec(quant={"method": "noise"}, model={"dropout": 0.1}, train={"max_epochs": 5})
    reference, _, ref_result = train(spec, digits, tmp_path / "ref")
    steps_per_epoch = -(-len(digits.train) // spec["optim"]["batch_size"])
    counters = {k: int(v) for k, v in reference.state_dict().items() if k.endswith("noise_step")}
    assert set(counters.values()) == {5 * steps_per_epoch}

    kill_after_second_checkpoint(monkeypatch, spec, digits, tmp_path / "run")
    saved = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert saved["epoch"] == 4
    assert {int(v) for k, v in saved["model"].items() if k.endswith("noise_step")} == {4 * steps_per_epoch}

    resumed, _, result = train(spec, digits, tmp_path / "run")
    assert result.resumed_from_epoch == 4
    sa, sb = reference.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert generalization_metrics(reference, digits) == generalization_metrics(resumed, digits)
    assert result.final_train_ce == ref_result.final_train_ce


@pytest.mark.parametrize("noise_eval", ["noise", "round"])
def test_measures_run_on_a_noise_trained_model(tmp_path, digits, noise_eval) -> None:
    spec = make_spec(
        quant={"method": "noise", "noise_eval": noise_eval}, model={"width": 8}, train={"max_epochs": 2}
    )
    model, init_state, _ = train(spec, digits, tmp_path)
    payload = {"spec": spec, "state_dict": model.state_dict(), "init_state": init_state}
    settings_ = validate(
        {**TINY_MEASURES, "pacbayes": {**TINY_MEASURES["pacbayes"], "batched": True}}, measures_schema()
    )
    body = measure_run(payload, digits, settings_, torch.device("cpu"))
    m = body["measures"]
    for key in (
        "noise.weight.var_ratio",
        "pacbayes.sigma",
        "sharpness.alpha",
        "hessian.trace",
        "noise_model.kl_orig",
    ):
        assert math.isfinite(m[key]), key
    # the weight noise measured is the training-time draw: |θ| ≤ Δ/2, none clipped
    assert all(r["weight"]["clipped_fraction"] == 0 for r in body["layers"])
    acts = [r["act"] for r in body["layers"]]
    if noise_eval == "round":  # deployed: the matched uniform model with the trained weights and ranges
        torch.manual_seed(0)
        uniform = build_model(
            {**spec, "quant": {**spec["quant"], "method": "uniform"}}, digits.input_shape, 10
        )
        uniform.load_state_dict(model.state_dict(), strict=False)
        assert generalization_metrics(uniform, digits) == generalization_metrics(model, digits)
    else:  # one fixed draw added to every activation, zeros included
        assert all(a["var_ratio"] > 0.2 for a in acts)
    assert measure_run(payload, digits, settings_, torch.device("cpu"))["measures"] == m
