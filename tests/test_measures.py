"""Measures: closed-form and brute-force checks of sharpness, Hessian, noise and norm measures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from qgen import runtime
from qgen.data.batches import Examples, examples
from qgen.measures import hessian, noise, norms, sharpness
from qgen.measures.deployed import deploy
from qgen.models import build_model
from qgen.quant import QuantLinear, fake_quantize, init_quantizers, int_range
from qgen.train import train_run

Z90 = norm.ppf(0.9)  # Φ⁻¹(0.9) = 1.2816


class TwoLogits(nn.Module):
    """logits = [w·x, 0·x] for x = 1: class 0 is right iff w + u₁ > u₂ under a perturbation u."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.layer = QuantLinear(1, 2, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([[w], [0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def two_logit_data(n: int = 32) -> Examples:
    return Examples.from_tensors(torch.ones(n, 1), torch.zeros(n, dtype=torch.long))


def test_pacbayes_sigma_matches_closed_form() -> None:
    """Accuracy under u ~ N(0, σ²I) is Φ(w/(√2σ)); a 0.1 drop gives σ′ = w/(√2·Φ⁻¹(0.9))."""
    view = deploy(TwoLogits(1.0))
    found = sharpness.pacbayes_sigma(view, two_logit_data(), draws=4000, depth=25, tolerance=0.003, seed=0)
    assert found.converged
    assert found.value == pytest.approx(1 / (math.sqrt(2) * Z90), rel=0.03)


def test_magnitude_aware_noise_uses_standard_deviation_not_variance() -> None:
    """u_i ~ N(0, σ²w_i² + ε²): accuracy Φ(w/√(σ²w² + 2ε²)); drawing with the variance as the std
    (the reference code's torch.normal slip) would give a different σ′."""
    eps = 0.05
    view = deploy(TwoLogits(1.0))
    found = sharpness.pacbayes_sigma(
        view, two_logit_data(), magnitude_eps=eps, draws=4000, depth=25, tolerance=0.003, seed=1
    )
    expected = math.sqrt((1 / Z90) ** 2 - 2 * eps**2)
    assert found.value == pytest.approx(expected, rel=0.03)


def test_batched_and_one_at_a_time_searches_agree(digits_run, trained) -> None:
    view = deploy(trained)
    subset = examples(digits_run.train, 400, 0, batch_size=150)
    a = sharpness.pacbayes_sigma(view, subset, draws=6, seed=3, batched=True)
    b = sharpness.pacbayes_sigma(view, subset, draws=6, seed=3, batched=False)
    assert [s["accuracy"] for s in a.steps] == pytest.approx([s["accuracy"] for s in b.steps], abs=1e-9)
    assert a.value == b.value


def test_worst_case_alpha_matches_closed_form() -> None:
    """The worst box corner u = (−α, +α) flips every prediction once 2α > w: α′ = w/2."""
    view = deploy(TwoLogits(0.8))
    found = sharpness.worst_case_alpha(view, two_logit_data(), depth=30, tolerance=0.01, seed=0)
    assert found.value == pytest.approx(0.4, rel=1e-3)


@pytest.fixture(scope="module")
def trained(digits_run, tmp_path_factory):
    from tests.conftest import make_spec

    spec = make_spec(model={"width": 16}, quant={"weight_bits": 4, "act_bits": 4}, train={"max_epochs": 3})
    run_cfg = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 10}
    model, _, _ = train_run(
        spec, digits_run, tmp_path_factory.mktemp("m"), run_cfg, runtime.configure(run_cfg), progress=False
    )
    return model


@pytest.mark.parametrize("alpha", [0.005, 0.02, 0.05])
def test_worst_case_is_never_below_average_case(digits_run, trained, alpha) -> None:
    view = deploy(trained)
    subset = examples(digits_run.train, 300, 0, batch_size=128)
    worst = sharpness.worst_case_increase(view, subset, alpha, steps=5, seed=0)
    average = sharpness.average_case_increase(view, subset, alpha, draws=20, seed=0)
    assert worst >= average


def _tiny_problem():
    torch.manual_seed(0)
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "same", "last_layer": "same"}
    model = build_model({"model": {"name": "mlp", "depth": 1, "width": 6}, "quant": quant}, (1, 3, 3), 4)
    x, y = torch.randn(64, 1, 3, 3), torch.randint(0, 4, (64,))
    init_quantizers(model, x)
    view = deploy(model)
    weights = view.weights()
    names, shapes = list(weights), [w.shape for w in weights.values()]
    sizes = [w.numel() for w in weights.values()]

    def loss_of_flat(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        return F.cross_entropy(
            view(x, {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}), y
        )

    flat = torch.cat([w.reshape(-1) for w in weights.values()]).double()
    view.module.double()
    x = x.double()
    weights = {n: w.double() for n, w in view.weights().items()}
    exact = torch.autograd.functional.hessian(loss_of_flat, flat)
    return view, x, y, weights, exact


def test_hutchinson_trace_matches_exact_hessian_trace() -> None:
    view, x, y, weights, exact = _tiny_problem()
    hvp = hessian.hvp_function(lambda w: F.cross_entropy(view(x, w), y), weights)
    est = hessian.hutchinson_trace(hvp, weights, max_probes=3000, min_probes=50, tolerance=0.005, seed=0)
    true = float(torch.trace(exact))
    assert abs(est.trace - true) <= 4 * est.stderr + 1e-9
    assert est.trace == pytest.approx(true, rel=0.03)
    assert sum(est.per_layer.values()) == pytest.approx(est.trace)


def test_hvp_matches_the_exact_hessian() -> None:
    view, x, y, weights, exact = _tiny_problem()
    hvp = hessian.hvp_function(lambda w: F.cross_entropy(view(x, w), y), weights)
    v = {n: torch.randn_like(w) for n, w in weights.items()}
    hv = torch.cat([t.reshape(-1) for t in hvp(v).values()])
    assert torch.allclose(hv, exact @ torch.cat([t.reshape(-1) for t in v.values()]), atol=1e-8)


def test_hvp_over_batches_is_the_hessian_of_the_mean_loss_over_all_of_them() -> None:
    """64 examples in batches of 20 (the last one of 4: the products are example-weighted): Hv of the
    mean cross-entropy, summed batch by batch with each batch's graph rebuilt, is the exact Hv; so is
    the one-batch product, whose graph is kept."""
    view, x, y, weights, exact = _tiny_problem()
    v = {n: torch.randn_like(w) for n, w in weights.items()}
    flat_v = torch.cat([t.reshape(-1) for t in v.values()])
    for batch_size in (20, 64):
        hvp = hessian.cross_entropy_hvp(view, Examples.from_tensors(x, y, batch_size))
        hv = torch.cat([t.reshape(-1) for t in hvp(v).values()])
        assert torch.allclose(hv, exact @ flat_v, atol=1e-10), batch_size


def test_ascent_gradient_over_batches_is_the_gradient_of_the_mean_loss() -> None:
    """The worst-case ascent's direction: ∇_u of the mean cross-entropy over all examples, accumulated
    over batches of 20, equals autograd's on one batch of 64; the error counts every batch."""
    view, x, y, weights, _ = _tiny_problem()
    u = {n: 0.01 * torch.randn_like(w) for n, w in weights.items()}
    error, grads = sharpness.error_and_gradient(view, Examples.from_tensors(x, y, 20), weights, u)
    leaves = {n: t.clone().requires_grad_(True) for n, t in u.items()}
    logits = view(x, {n: weights[n] + leaves[n] for n in weights})
    expected = torch.autograd.grad(F.cross_entropy(logits, y), list(leaves.values()))
    assert grads is not None
    for (name, got), want in zip(grads.items(), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12), name
    assert error == float((logits.argmax(-1) != y).double().mean())


def test_power_iteration_matches_eigvalsh() -> None:
    view, x, y, weights, exact = _tiny_problem()
    hvp = hessian.hvp_function(lambda w: F.cross_entropy(view(x, w), y), weights)
    eig = hessian.top_eigenvalue(hvp, weights, max_iters=2000, tolerance=1e-10, seed=0)
    values = torch.linalg.eigvalsh(exact)
    largest = values[values.abs().argmax()]
    assert eig.converged and eig.value == pytest.approx(float(largest), rel=1e-4)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_noise_variance_is_delta_squared_over_12(bits) -> None:
    qn, qp = int_range(bits, signed=True)
    step = torch.tensor([0.05])
    gen = torch.Generator().manual_seed(bits)
    # uniform over whole cells: [(−Q_N − ½)Δ, (Q_P + ½)Δ)
    w = (torch.rand(100_000, generator=gen) * (qn + qp + 1) - qn - 0.5) * step
    stats = noise.noise_statistics(w, fake_quantize(w, step, qn, qp), step, qn, qp)
    assert stats["var_ratio"] == pytest.approx(1.0, abs=0.02)
    assert stats["clipped_fraction"] == 0 and stats["ks"] < 0.01
    # w = q + r with r uniform in a cell: corr(θ, w) = −√(Var r / Var w) = −1/L for L = 2^b levels
    assert stats["corr"] == pytest.approx(-1 / 2**bits, abs=0.01)


@pytest.mark.parametrize("n", [50, 2000])
def test_ks_statistic_and_p_value_match_scipy(n) -> None:
    from scipy import stats

    rng = np.random.default_rng(n)
    for sample in (rng.uniform(-0.5, 0.5, n), rng.normal(0, 0.2, n), rng.uniform(-0.3, 0.5, n)):
        d, p = noise.ks_uniform(sample)
        ref = stats.kstest(sample, stats.uniform(loc=-0.5, scale=1).cdf, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=0.02)


def test_clipped_values_are_counted_and_excluded() -> None:
    qn, qp = int_range(2, signed=True)
    step = torch.tensor([1.0])
    w = torch.tensor([-5.0, -0.3, 0.2, 0.4, 0.9, 3.0])
    stats = noise.noise_statistics(w, fake_quantize(w, step, qn, qp), step, qn, qp)
    assert stats["clipped_fraction"] == pytest.approx(2 / 6)
    assert stats["var_ratio_all"] > stats["var_ratio"]


@pytest.mark.parametrize("mode", ["effective", "latent"])
def test_batchnorm_folding_leaves_outputs_unchanged(mode) -> None:
    torch.manual_seed(0)
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4}
    model = build_model(
        {"model": {"name": "nin", "depth": 2, "width": 1, "base_width": 8}, "quant": quant}, (1, 8, 8), 10
    )
    x = torch.randn(32, 1, 8, 8)
    init_quantizers(model, x)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    view = deploy(model, mode)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in view.module.modules()) or mode == "latent"
    with torch.no_grad():
        assert torch.allclose(view(x), model(x), atol=1e-4)
        assert torch.allclose(view(x, view.weights()), model(x), atol=1e-4)


def test_propagation_is_zero_for_float_and_grows_as_bits_drop() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    results = {}
    for bits in (None, 8, 2):
        torch.manual_seed(0)
        quant = (
            {"method": "float"}
            if bits is None
            else {
                "method": "lsq",
                "weight_bits": bits,
                "act_bits": bits,
                "first_layer": "same",
                "last_layer": "same",
            }
        )
        model = build_model(
            {"model": {"name": "mlp", "depth": 2, "width": 32}, "quant": quant}, (1, 8, 8), 10
        )
        init_quantizers(model, x)
        batches = Examples.from_tensors(x, torch.zeros(len(x), dtype=torch.long))
        results[bits] = [p["relative_perturbation"] for p in noise.propagation(model, batches)]
    assert results[None] == [0.0, 0.0, 0.0]
    assert all(a < b for a, b in zip(results[8], results[2], strict=True))


def test_norm_measures_on_a_known_linear_model() -> None:
    model = nn.Sequential(nn.Flatten(), QuantLinear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 3.0]]))
    view = deploy(model)
    x, y = torch.eye(4)[:3].reshape(3, 1, 2, 2), torch.tensor([0, 1, 2])
    out = norms.norm_measures(view, view.weights(), Examples.from_tensors(x, y), (1, 2, 2), m=3)
    m = 3
    assert out["norm.params"] == 12
    assert out["norm.fro_dist"] == 0 and out["norm.l2_dist"] == 0
    assert out["norm.param_norm"] == pytest.approx(math.sqrt(14 / m))  # Σ‖W‖_F² = 1 + 4 + 9
    assert out["norm.log_prod_of_spec"] == pytest.approx(0.5 * (math.log(9) - math.log(m)))  # ‖W‖₂² = 9
    assert out["norm.path_norm"] == pytest.approx(math.sqrt(14 / m))  # one layer: Σ w²


def test_measuring_a_run_twice_gives_identical_files(tmp_path, digits_dir, spec_factory) -> None:
    spec = spec_factory(model={"width": 16}, train={"max_epochs": 2})
    meta = str(digits_dir / "meta.json")
    run = [sys.executable, "-m", "qgen"]
    settings = json.dumps(
        {
            "examples": 300,
            "hessian": {"examples": 128, "max_probes": 10},
            "worst_case": {"examples": 200, "depth": 6},
            "pacbayes": {"depth": 8},
        }
    )
    cache = tmp_path / "cache.json"
    env = {**os.environ, "QGEN_MEASURES": settings, "QGEN_RUNTIME": ""}
    record = json.dumps({"run_id": "digits-mlp2x16-lsq_w4a4-00000000", "spec": spec})
    subprocess.run(
        [
            *run,
            "train",
            "--spec",
            record,
            "--data-meta",
            meta,
            "--out-model",
            f"{tmp_path}/model.pt",
            "--out-log",
            f"{tmp_path}/log.csv",
            "--device",
            "cpu",
            "--measure-cache",
            str(cache),
        ],
        check=True,
        env=env,
    )
    assert cache.exists()
    bodies = []
    for name in ("a", "b"):
        subprocess.run(
            [
                *run,
                "measure",
                "--model",
                f"{tmp_path}/model.pt",
                "--data-meta",
                meta,
                "--settings",
                settings,
                "--out",
                f"{tmp_path}/{name}.json",
                "--device",
                "cpu",
            ],
            check=True,
        )
        body = json.loads((tmp_path / f"{name}.json").read_text())
        body.pop("provenance")
        bodies.append(body)
    assert bodies[0] == bodies[1]
    # measures computed inside the training job and adopted by `qgen measure --cache` are the same
    out = tmp_path / "adopted.json"
    adopted = subprocess.run(
        [
            *run,
            "measure",
            "--model",
            f"{tmp_path}/model.pt",
            "--data-meta",
            meta,
            "--settings",
            settings,
            "--cache",
            str(cache),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "adopted" in adopted.stderr and not cache.exists()
    body = json.loads(out.read_text())
    body.pop("provenance")
    assert body == bodies[0]
    measures = bodies[0]["measures"]
    expected = {
        "pacbayes.init",
        "pacbayes.orig",
        "pacbayes.flatness",
        "pacbayes.mag.init",
        "pacbayes.mag.orig",
        "pacbayes.mag.flatness",
        "sharpness.init",
        "sharpness.orig",
        "sharpness.flatness",
        "sharpness.mag.flatness",
        "hessian.trace",
        "hessian.top_eigenvalue",
        "norm.path_norm",
        "norm.fro_dist",
        "norm.log_prod_of_spec",
        "norm.log_sum_of_spec",
        "norm.params",
        "noise.weight.var_ratio",
        "noise.act.ks",
        "noise.propagation.output",
    }
    assert expected <= set(measures)
    assert all(math.isfinite(v) for k, v in measures.items() if k in expected)
    layer = bodies[0]["layers"][1]
    assert {"step", "mean", "var", "var_ratio", "ks", "corr", "clipped_fraction"} <= set(layer["weight"])
    assert "zero_fraction" in layer["act"]


# --- what a measurement does once (issue 16, item 5): the values are pinned in test_measures_frozen.py ---


def test_a_resident_subset_yields_the_streamed_batches_once_gathered(digits_run, monkeypatch) -> None:
    from qgen.measures.resident import ResidentExamples, resident

    streamed = examples(digits_run.train, 300, 0, batch_size=128)
    held = resident(streamed)
    assert isinstance(held, ResidentExamples) and len(held) == 300 and held.batch_size == 128
    gathered: list[int] = []
    real = type(digits_run.train).batches
    monkeypatch.setattr(
        type(digits_run.train), "batches", lambda self, *a, **k: gathered.append(1) or real(self, *a, **k)
    )
    for _ in range(3):
        pairs = list(zip(held, streamed, strict=True))
        assert [len(y) for (_, y), _ in pairs] == [128, 128, 44]
        assert all(torch.equal(x, xs) and torch.equal(y, ys) for (x, y), (xs, ys) in pairs)
    assert len(gathered) == 3  # the streamed reads only: the resident one was gathered before
    assert torch.equal(held.labels, streamed.labels)


def test_a_subset_over_the_memory_cap_stays_streamed_and_in_place_changes_are_refused(digits_run) -> None:
    from qgen.measures.resident import resident

    streamed = examples(digits_run.train, 300, 0, batch_size=128)
    row = 64 * 4 + 8  # 64 float32 pixels and an int64 label
    assert resident(streamed, max_bytes=300 * row - 1) is streamed
    held = resident(streamed, max_bytes=300 * row)
    assert held is not streamed
    next(iter(held))[0].mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        list(held)


def test_measuring_gathers_each_subset_once(digits_run, monkeypatch) -> None:
    """Hundreds of passes (σ′ draws, α′ ascent steps, Hessian products) read four subsets (noise, σ′ and
    norms, α′, Hessian and noise model), each gathered and normalized once."""
    from qgen.config import measures_schema, validate
    from qgen.measures.run import measure_run
    from tests.conftest import TINY_MEASURES, make_spec

    spec = make_spec(model={"width": 8})
    torch.manual_seed(0)
    model = build_model(spec, digits_run.input_shape, digits_run.num_classes)
    payload = {"spec": spec, "state_dict": model.state_dict(), "init_state": model.state_dict()}
    gathered: list[int] = []
    real = type(digits_run.train).batches
    monkeypatch.setattr(
        type(digits_run.train), "batches", lambda self, *a, **k: gathered.append(1) or real(self, *a, **k)
    )
    settings = validate({**TINY_MEASURES, "batch_size": 8}, measures_schema())
    body = measure_run(payload, digits_run, settings, torch.device("cpu"))
    assert body["cost"]["pacbayes"]["max_forward_rows"] == 8  # several batches per subset
    assert len(gathered) == 4


def test_a_worst_case_search_measures_the_unperturbed_error_once(digits_run, trained, monkeypatch) -> None:
    calls: list[bool] = []
    real = sharpness.error_and_gradient

    def counted(model, subset, weights, u=None):
        calls.append(u is None)
        return real(model, subset, weights, u)

    monkeypatch.setattr(sharpness, "error_and_gradient", counted)
    view, subset = deploy(trained), examples(digits_run.train, 100, 0, batch_size=64)
    search = sharpness.worst_case_alpha(view, subset, depth=4, steps=2, tolerance=1e-12, seed=0)
    assert len(search.steps) == 4
    # one unperturbed error for the search, then per step: 2 ascent steps with gradients, 1 final error
    assert calls.count(True) == 1 + 4 and calls.count(False) == 4 * 2
    alone = real(view, subset, view.perturbable())[0]
    increase = sharpness.worst_case_increase(view, subset, search.value, steps=2, seed=0)
    assert increase == sharpness.worst_case_increase(
        view, subset, search.value, steps=2, seed=0, base_error=alone
    )


class Tied(nn.Module):
    """One linear layer applied twice (registered under two names)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = self.first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def test_a_perturbation_of_a_tied_weight_moves_every_use_of_it() -> None:
    torch.manual_seed(0)
    tied, x = Tied().eval(), torch.randn(5, 3)
    view = deploy(tied)
    assert view.tied and not deploy(nn.Sequential(nn.Linear(3, 3))).tied
    weights = view.perturbable()
    assert list(weights) == ["first.weight", "first.bias"]
    moved = {n: w + 0.5 for n, w in weights.items()}
    twice = nn.Linear(3, 3)
    with torch.no_grad():
        twice.weight.copy_(moved["first.weight"])
        twice.bias.copy_(moved["first.bias"])
        assert torch.allclose(view(x, moved), twice(torch.relu(twice(x))))
