"""SAM, ASAM and SAQ (qgen.train.sam; issue 17, items 1 and 2): the two-step update against its closed form,
what each SAQ case perturbs on a layer where the three differ, ASAM's formula, BatchNorm statistics kept
from the first pass, the config rules of optim.sam, and bit-identical resume of a SAQ run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qgen.config import ConfigError, run_spec_schema, validate
from qgen.experiments import normalize_spec, run_id
from qgen.measures.gap import generalization_metrics
from qgen.models import build_model
from qgen.quant import LayerQuant, QuantLinear, init_quantizers, quant_layers
from qgen.train import checkpoint, loop
from qgen.train.optim import build_optimizer, set_lr, set_momentum
from qgen.train.sam import SAM, SAMSettings, perturbation
from tests.conftest import make_spec
from tests.test_training import kill_after_second_checkpoint, state_equal, train


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw − bᵀw (float64)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.w = nn.Parameter(w.clone())

    def forward(self) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w - self.b @ self.w


def quadratic(seed: int, n: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(n, dtype=torch.float64)
    return (
        a,
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.randn(n, generator=g, dtype=torch.float64),
    )


def sam_gradient(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, rho: float) -> torch.Tensor:
    """∇L(w + ρ·g/‖g‖), g = ∇L(w) = Aw − b (Foret et al. 2021, Eq. 3)."""
    g = a @ w - b
    return a @ (w + rho * g / g.norm()) - b


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.floats(0.01, 2.0), lr=st.floats(1e-3, 0.1))
def test_sam_with_sgd_on_a_quadratic_equals_the_closed_form(seed, rho, lr) -> None:
    a, b, w0 = quadratic(seed)
    model = Quadratic(a, b, w0)
    mu, wd = 0.9, 0.01
    sam = SAM(
        model, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.5, weight_decay=wd), SAMSettings(rho)
    )
    set_lr(sam, lr)  # the schedules reach the base optimizer through the wrapper
    set_momentum(sam, mu)
    w, v = w0.clone(), torch.zeros_like(w0)
    for t in range(3):
        loss = sam.step(model)
        torch.testing.assert_close(loss, 0.5 * w @ a @ w - b @ w, rtol=1e-12, atol=1e-12)  # at w, not w + ε
        d = sam_gradient(a, b, w, rho) + wd * w  # ε from the loss gradient; weight decay in the update
        v = d if t == 0 else mu * v + d  # torch's SGD: the first buffer is the gradient itself
        w = w - lr * v
        torch.testing.assert_close(model.w.detach(), w, rtol=1e-12, atol=1e-12)


def test_sam_with_adam_on_a_quadratic_equals_the_closed_form() -> None:
    a, b, w0 = quadratic(7)
    model, rho, lr, (b1, b2), eps = Quadratic(a, b, w0), 0.3, 0.05, (0.9, 0.999), 1e-8
    sam = SAM(model, torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps), SAMSettings(rho))
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t in range(1, 5):
        sam.step(model)
        g = sam_gradient(a, b, w, rho)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(model.w.detach(), w, rtol=1e-12, atol=1e-12)


def two_weight_layer(rho: float, **sam) -> tuple[QuantLinear, SAM, torch.Tensor]:
    """One LSQ 2-bit layer (Q_N = 2, Q_P = 1, s = 1) with weights w = (0.3, 1.7), so Q(w) = (0, 1); inputs
    e₁, e₂ make its outputs the effective weights and L = 3·out₁ + 4·out₂, so ∇_{Q(w)}L = (3, 4) and the
    straight-through ∇_w L = (3, 0) (1.7 lies beyond Q_P: clipped)."""
    layer = QuantLinear(2, 1, bias=False, quant=LayerQuant("lsq", 2, None, False, True)).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, 1.7]], dtype=torch.float64))
        layer.weight_quant.scale.fill_(1.0)
    sam_ = SAM(layer, torch.optim.SGD(layer.parameters(), lr=0.0), SAMSettings(rho, **sam))
    return layer, sam_, torch.eye(2, dtype=torch.float64)


def second_pass(layer: QuantLinear, sam: SAM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The effective weights, latent weights and step the second pass computes with."""
    seen: list[dict[str, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        out = layer(x)[:, 0]
        seen.append({"effective": out.detach().clone(), "latent": layer.weight.detach()[0].clone()})
        seen[-1]["step"] = layer.weight_quant.scale.detach().clone()
        return out @ torch.tensor([3.0, 4.0], dtype=torch.float64)

    before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    sam.step(closure)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0]["effective"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    after = layer.state_dict()  # lr 0: the step restores w (and s) bit for bit
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not layer.weight_quant._forward_hooks  # the offsets exist only during the passes
    return seen[1]


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("case", "effective", "latent"),
    [
        (1, (0.1, 1.0), (0.3, 1.7)),  # Q(w) + ρ·(3, 0)/3: the latent gradient, after quantization
        (2, (0.0, 1.0), (0.4, 1.7)),  # Q(w + ρ·(3, 0)/3) = Q(0.4, 1.7): swallowed by rounding
        (3, (0.06, 1.08), (0.3, 1.7)),  # Q(w) + ρ·(3, 4)/5: the gradient w.r.t. Q(w)
    ],
)
def test_each_saq_case_perturbs_what_its_definition_says(case, effective, latent) -> None:
    layer, sam, x = two_weight_layer(0.1, case=case)
    seen = second_pass(layer, sam, x)
    torch.testing.assert_close(seen["effective"], f64(*effective), rtol=0, atol=1e-12)
    torch.testing.assert_close(seen["latent"], f64(*latent), rtol=0, atol=1e-12)
    assert seen["step"].item() == 1.0  # steps are not perturbed without include_wclip


def test_include_wclip_puts_the_step_gradient_in_the_norm_and_perturbs_the_step() -> None:
    layer, sam, x = two_weight_layer(0.1, case=3, include_wclip=True)
    seen = second_pass(layer, sam, x)
    ds = (3 * (0.0 - 0.3) + 4 * 1) / math.sqrt(2 * 1)  # LSQ Eq. 3 times g = 1/√(N·Q_P), N = 2
    norm = math.sqrt(3**2 + 4**2 + ds**2)
    s = 1 + 0.1 * ds / norm
    # Q_s(0.3) = 0 and Q_s(1.7) = Q_P·s at the perturbed step, then + ε of the quantized weights
    expected = f64(0.1 * 3 / norm, s + 0.1 * 4 / norm)
    torch.testing.assert_close(seen["step"], f64(s), rtol=0, atol=1e-12)
    torch.testing.assert_close(seen["effective"], expected, rtol=0, atol=1e-12)


def test_asam_perturbation_is_rho_t_squared_g_over_the_norm_of_t_g() -> None:
    # case 3 on the two-weight layer: T = |Q(w)| + η = (η, 1 + η), g = (3, 4)
    eta, rho = 0.01, 0.1
    layer, sam, x = two_weight_layer(rho, case=3, adaptive=True, eta=eta)
    seen = second_pass(layer, sam, x)
    t, g = f64(eta, 1 + eta), f64(3.0, 4.0)
    torch.testing.assert_close(
        seen["effective"], f64(0, 1) + rho * t**2 * g / (t * g).norm(), rtol=0, atol=1e-12
    )
    # weights scaled by T = |w| + η, biases by 1, one global norm
    gen = torch.Generator().manual_seed(0)
    w, gw, bias, gb = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    tw = w.abs() + eta
    norm = torch.cat([(tw * gw).flatten(), gb.flatten()]).norm()
    ew, eb = perturbation([gw, gb], [w, bias], [True, False], rho, eta)
    torch.testing.assert_close(ew, rho * tw**2 * gw / norm, rtol=1e-11, atol=0)  # ‖·‖ + 1e-12
    torch.testing.assert_close(eb, rho * gb / norm, rtol=1e-11, atol=0)  # ‖·‖ + 1e-12
    plain = perturbation([gw, gb], [w, bias], [True, False], rho, None)
    torch.testing.assert_close(
        torch.cat([e.flatten() for e in plain]).norm(), torch.tensor(rho, dtype=torch.float64)
    )


def bn_model(quant: dict) -> nn.Module:
    spec = {
        "model": {"name": "mlp", "depth": 2, "width": 16, "batch_norm": True, "dropout": 0.0},
        "quant": quant,
    }
    torch.manual_seed(0)
    model = build_model(spec, (1, 8, 8), 10)
    init_quantizers(model, torch.randn(32, 1, 8, 8))
    return model.train()


@pytest.mark.parametrize("case", [1, 2, 3])
def test_running_statistics_are_those_of_the_first_pass(case) -> None:
    # uniform W4A4: BatchNorm's running mean/var/count and the activation quantizers' running range
    model = bn_model({"method": "uniform", "weight_bits": 4, "act_bits": 4})
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    first = copy.deepcopy(model)
    first(x)  # one training forward at w: what the buffers must hold after the step
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), SAMSettings(0.5, case=case))
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        return nn.functional.cross_entropy(model(x), y)

    sam.step(closure)
    assert len(calls) == 2
    buffers, expected = dict(model.named_buffers()), dict(first.named_buffers())
    assert any("running_mean" in k for k in buffers) and any("running_max" in k for k in buffers)
    assert all(torch.equal(buffers[k], expected[k]) for k in expected)


def test_sam_runs_through_batch_step_with_the_built_optimizer_groups() -> None:
    """The pipeline's step with optim.sam: the base optimizer's groups (steps without weight decay) are kept,
    and the step differs from the plain one."""
    model = bn_model({"method": "lsq", "weight_bits": 4, "act_bits": 4})
    plain = copy.deepcopy(model)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
    step = loop.batch_step(model, build_optimizer(model, optim), sam={"rho": 0.05, "case": 3})
    plain_step = loop.batch_step(plain, build_optimizer(plain, optim))
    torch.manual_seed(1)
    loss = step(x, y)
    torch.manual_seed(1)
    plain_loss = plain_step(x, y)
    assert torch.equal(loss, plain_loss)  # the first pass is the plain step's forward, bit for bit
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), plain.parameters(), strict=True))


def test_a_binaryconnect_model_is_refused() -> None:
    spec = {
        "model": {"name": "mlp", "depth": 1, "width": 8},
        "quant": {"method": "binary", "stochastic": False, "H": 1, "lr_scale": 1.0},
    }
    model = build_model(spec, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="BinaryConnect"):
        SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), SAMSettings(0.1))


def spec_error(**overrides) -> str:
    with pytest.raises(ConfigError) as err:
        make_spec(**overrides)
    return str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quant": {"method": "float"}, "optim": {"sam": {"rho": 0.1, "case": 3}}}, "optim.sam.case"),
        ({"optim": {"sam": {"rho": 0.1}}}, "needs SAQ's case"),
        (
            {
                "quant": {"method": "uniform"},
                "optim": {"sam": {"rho": 0.1, "case": 3, "include_wclip": True}},
            },
            "include_wclip",
        ),
        (
            {"quant": {"method": "float"}, "optim": {"sam": {"rho": 0.1, "include_aclip": False}}},
            "include_aclip",
        ),
        (
            {"quant": {"act_bits": None}, "optim": {"sam": {"rho": 0.1, "case": 3, "include_aclip": True}}},
            "no activation quantizers",
        ),
        ({"optim": {"sam": {"rho": 0.1, "case": 3, "eta": 0.01}}}, "optim.sam.eta"),
        ({"optim": {"sam": {"rho": 0.1, "case": 3, "include_bn": True}}}, "has no BatchNorm"),
        ({"quant": {"method": "binary"}, "optim": {"sam": {"rho": 0.1}}}, "not binary"),
        ({"optim": {"sam": {"rho": 0.1, "case": 3, "steps": 2}}}, "Additional properties"),
        ({"optim": {"sam": {"rho": 0, "case": 3}}}, "optim.sam.rho"),
        ({"optim": {"sam": {"rho": 0.1, "case": 4}}}, "optim.sam.case"),
        ({"optim": {"sam": {"case": 3}}}, "'rho' is a required property"),
    ],
)
def test_inapplicable_sam_keys_are_config_errors(overrides, message) -> None:
    assert message in spec_error(**overrides)


def test_maxout_is_refused() -> None:
    quant = {"method": "float"}
    model = {"name": "maxout", "depth": 1, "width": 8}
    assert "model maxout" in spec_error(model=model, quant=quant, optim={"sam": {"rho": 0.1}})


def test_the_spec_records_every_setting_and_sam_off_keeps_the_run_ids() -> None:
    spec = make_spec(model={"batch_norm": True}, optim={"sam": {"rho": 0.1, "case": 3, "adaptive": True}})
    assert spec["optim"]["sam"] == {
        "rho": 0.1, "adaptive": True, "eta": 0.01, "case": 3,
        "include_bn": True, "include_wclip": False, "include_aclip": False,
    }  # fmt: skip
    assert normalize_spec(validate(copy.deepcopy(spec), run_spec_schema())) == spec  # idempotent
    assert make_spec(quant={"method": "float"}, optim={"sam": {"rho": 0.1}})["optim"]["sam"] == {
        "rho": 0.1,
        "adaptive": False,
    }
    # the ids of runs without SAM, as before SAM existed
    assert run_id(make_spec()) == "digits-mlp2x32-lsq_w4a4-26f53062"
    assert run_id(make_spec(quant={"method": "float"}, optim={"name": "adam", "lr": 0.001})) == (
        "digits-mlp2x32-fp32-dd0974e6"
    )
    ids = {run_id(make_spec(optim={"sam": {"rho": 0.1, "case": c}})) for c in (1, 2, 3)}
    assert len(ids) == 3 and run_id(make_spec()) not in ids


@pytest.mark.parametrize(
    ("quant", "sam"),
    [
        ({"method": "lsq"}, {"rho": 0.05, "case": 3, "include_wclip": True, "include_aclip": True}),
        ({"method": "uniform"}, {"rho": 0.05, "case": 1, "adaptive": True}),
    ],
)
def test_interrupted_saq_run_resumes_bit_identical(tmp_path, digits, monkeypatch, quant, sam) -> None:
    spec = make_spec(
        quant=quant, model={"dropout": 0.1, "batch_norm": True}, optim={"sam": sam}, train={"max_epochs": 5}
    )
    reference, _, ref_result = train(spec, digits, tmp_path / "ref")
    plain, _, _ = train(
        make_spec(quant=quant, model={"dropout": 0.1, "batch_norm": True}, train={"max_epochs": 5}),
        digits,
        tmp_path / "plain",
    )
    assert not state_equal(reference, plain)  # SAM changed the training

    kill_after_second_checkpoint(monkeypatch, spec, digits, tmp_path / "run")
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["epoch"] == 4

    resumed, _, result = train(spec, digits, tmp_path / "run")
    assert result.resumed_from_epoch == 4 and result.epochs == ref_result.epochs == 5
    assert state_equal(reference, resumed)
    assert generalization_metrics(reference, digits) == generalization_metrics(resumed, digits)
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731 (drop the seconds column)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert strip(log) == strip((tmp_path / "ref" / "train_log.csv").read_text().splitlines())
    assert all(not m.weight_quant._forward_hooks for _, m in quant_layers(resumed))
