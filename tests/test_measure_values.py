"""Measures against values computed by hand in the test (numpy on the weights): Jiang et al. (2019)
Eq. 20-44 (norms, margins, path norm), Eq. 48-61 (PAC-Bayes) and the worst-case sharpness bounds;
m is the training-set size whatever subset is measured; which parameters the searches perturb;
the searches' convergence and bound flags; measures read in mini-batches equal the whole-subset values
and no forward sees more rows than ``measures.batch_size``; on CUDA (``gpu`` marker) they equal the CPU's."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from qgen import runtime
from qgen.config import measures_schema, validate
from qgen.data.batches import Examples
from qgen.measures import norms, sharpness
from qgen.measures.deployed import deploy
from qgen.measures.run import measure_run
from qgen.models import build_model
from qgen.quant import QuantLinear, init_quantizers
from qgen.runs_table import collect, read_runs, write_csv
from qgen.train import train_run

Z90 = norm.ppf(0.9)
M = 1000  # the training-set size: deliberately not the number of examples the margin is taken on
EPS = 1e-3


def _log_adjust(value: float) -> float:
    return 0.5 * (value - math.log(M))


def _adjust(value: float) -> float:
    return math.sqrt(value / M)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights, biases and BatchNorm statistics (so that folding matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.3)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _layers(model: nn.Module) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]]:
    """(linear/conv layer, following BatchNorm or None) of a Sequential ``net``, as numpy arrays."""
    mods = list(model.net)
    out = []
    for i, mod in enumerate(mods):
        if isinstance(mod, nn.Linear | nn.Conv2d):
            layer = {"w": mod.weight.detach().double().numpy()}
            layer["b"] = (
                mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(mod.weight.shape[0])
            )
            if isinstance(mod, nn.Conv2d):
                layer["stride"], layer["padding"] = mod.stride, mod.padding
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            bn = None
            if isinstance(nxt, nn.modules.batchnorm._BatchNorm):
                bn = {
                    k: getattr(nxt, k).detach().double().numpy()
                    for k in ("weight", "bias", "running_mean", "running_var")
                }
                bn["eps"] = nxt.eps
            out.append((layer, bn))
    return out


def _folded(model: nn.Module) -> list[dict[str, Any]]:
    """Each layer with its BatchNorm folded in by hand: W·γ/√(σ²+ε), β + (b − μ)·γ/√(σ²+ε)."""
    folded = []
    for layer, bn in _layers(model):
        w, b = layer["w"], layer["b"]
        if bn is not None:
            s = bn["weight"] / np.sqrt(bn["running_var"] + bn["eps"])
            w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            b = bn["bias"] + (b - bn["running_mean"]) * s
        folded.append({**layer, "w": w, "b": b})
    return folded


def _margin(logits: np.ndarray, y: np.ndarray) -> float:
    """10th-percentile margin, k = n // 10 (the reference code's kthvalue), by sorting."""
    correct = logits[np.arange(len(y)), y]
    other = logits.copy()
    other[np.arange(len(y)), y] = -np.inf
    margins = np.sort(correct - other.max(axis=1))
    return float(abs(margins[max(len(y) // 10, 1) - 1]))


def _expected_norms(
    layers: list[dict[str, Any]], init: list[dict[str, Any]], gamma: float, path: float
) -> dict[str, float]:
    """Eq. 20-44 by hand from the folded weight matrices (kernels as (out, in·kh·kw))."""
    mats = [lay["w"].reshape(lay["w"].shape[0], -1) for lay in layers]
    dists = [
        (lay["w"] - ini["w"]).reshape(lay["w"].shape[0], -1) for lay, ini in zip(layers, init, strict=True)
    ]
    fro = np.array([(a**2).sum() for a in mats])
    spec = np.array([np.linalg.svd(a, compute_uv=False)[0] ** 2 for a in mats])
    dist_fro = np.array([(a**2).sum() for a in dists])
    dist_spec = np.array([np.linalg.svd(a, compute_uv=False)[0] ** 2 for a in dists])
    d, lg = len(mats), 2 * math.log(gamma)
    lps, lpf = float(np.log(spec).sum()), float(np.log(fro).sum())
    w_vec = np.concatenate([a.ravel() for a in mats])
    d_vec = np.concatenate([a.ravel() for a in dists])
    return {
        "norm.params": float(w_vec.size),  # 20, not normalized
        "norm.inverse_margin": _adjust(1 / gamma**2),  # 22
        "norm.log_spec_init_main": _log_adjust(lps - lg + math.log((dist_fro / spec).sum())),  # 29
        "norm.log_spec_orig_main": _log_adjust(lps - lg + math.log((fro / spec).sum())),  # 30
        "norm.log_prod_of_spec_over_margin": _log_adjust(lps - lg),  # 31
        "norm.log_prod_of_spec": _log_adjust(lps),  # 32
        "norm.fro_over_spec": _adjust((fro / spec).sum()),  # 33
        "norm.log_sum_of_spec_over_margin": _log_adjust(math.log(d) + (lps - lg) / d),  # 34
        "norm.log_sum_of_spec": _log_adjust(math.log(d) + lps / d),  # 35
        "norm.log_prod_of_fro_over_margin": _log_adjust(lpf - lg),  # 36
        "norm.log_prod_of_fro": _log_adjust(lpf),  # 37
        "norm.log_sum_of_fro_over_margin": _log_adjust(math.log(d) + (lpf - lg) / d),  # 38
        "norm.log_sum_of_fro": _log_adjust(math.log(d) + lpf / d),  # 39
        "norm.fro_dist": _adjust(dist_fro.sum()),  # 40
        "norm.dist_spec_init": _adjust(dist_spec.sum()),  # 41
        "norm.param_norm": _adjust(fro.sum()),  # 42
        "norm.path_norm_over_margin": _adjust(path / gamma**2),  # 43
        "norm.path_norm": _adjust(path),  # 44
        "norm.l2": float(np.linalg.norm(w_vec)),
        "norm.l2_dist": float(np.linalg.norm(d_vec)),
        "norm.margin": gamma,
    }


def _mlp(seed: int) -> nn.Module:
    spec = {
        "model": {"name": "mlp", "depth": 2, "width": 5, "batch_norm": True},
        "quant": {"method": "float"},
    }
    return _randomize(build_model(spec, (1, 2, 2), 3), seed).double()


def _mlp_forward(layers: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    h = x.reshape(len(x), -1)
    for i, lay in enumerate(layers):
        h = h @ lay["w"].T + lay["b"]
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def test_norm_measures_of_a_batchnorm_mlp_match_numpy() -> None:
    """Every norm and margin measure (Eq. 20-44) of an MLP with BatchNorm, against numpy on the
    hand-folded weights; the path norm is the folded network with squared parameters on ones."""
    model, init_model = _mlp(0), _mlp(1)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 1, 2, 2, generator=gen).double(), torch.randint(0, 3, (50,), generator=gen)
    layers, init = _folded(model), _folded(init_model)
    logits = _mlp_forward(layers, x.double().numpy())
    gamma = _margin(logits, y.numpy())
    squared = [{"w": lay["w"] ** 2, "b": lay["b"] ** 2} for lay in layers]
    path = float(_mlp_forward(squared, np.ones((1, 4))).sum())  # all terms ≥ 0: the ReLUs pass everything
    expected = _expected_norms(layers, init, gamma, path)

    view = deploy(model)
    got = norms.norm_measures(view, deploy(init_model).weights(), Examples.from_tensors(x, y), (1, 2, 2), m=M)
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_norm_measures_of_a_convolutional_network_match_numpy() -> None:
    """The NiN: kernels enter as (out, in·kh·kw) matrices; margin from the unfolded network's output;
    path norm by hand with squared folded kernels, conv by conv."""
    spec = {"model": {"name": "nin", "depth": 1, "width": 1, "base_width": 3}, "quant": {"method": "float"}}
    model = _randomize(build_model(spec, (1, 6, 6), 4), 0).double()
    init_model = _randomize(build_model(spec, (1, 6, 6), 4), 1).double()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 1, 6, 6, generator=gen).double(), torch.randint(0, 4, (40,), generator=gen)
    layers, init = _folded(model), _folded(init_model)
    with torch.no_grad():
        gamma = _margin(model(x).double().numpy(), y.numpy())
        h = torch.ones(1, 1, 6, 6, dtype=torch.float64)
        for lay in layers:
            w, b = torch.from_numpy(lay["w"] ** 2), torch.from_numpy(lay["b"] ** 2)
            h = torch.relu(
                F.conv2d(h, w, stride=lay["stride"], padding=lay["padding"]) + b.reshape(1, -1, 1, 1)
            )
        path = float(h.mean(dim=(2, 3)).sum())
    expected = _expected_norms(layers, init, gamma, path)

    batches = Examples.from_tensors(x, y, batch_size=16)  # margins collected over three batches
    got = norms.norm_measures(deploy(model), deploy(init_model).weights(), batches, (1, 6, 6), m=M)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def _flat_weights(model: nn.Module) -> np.ndarray:
    return np.concatenate([lay["w"].ravel() for lay in _folded(model)])


def test_pacbayes_measures_match_equations_48_to_61() -> None:
    model, init_model = _mlp(0), _mlp(1)
    w, w0 = _flat_weights(model), _flat_weights(init_model)
    sigma, mag_sigma = 0.3, 0.05
    omega = w.size

    def bound(ref: np.ndarray) -> float:  # Eq. 48/49
        return (ref**2).sum() / (4 * sigma**2) + math.log(M / sigma) + 10

    def mag_bound(ref: np.ndarray) -> float:  # Eq. 56/57, (w_i − w0_i)² in the denominator for both
        num = EPS**2 + (mag_sigma**2 + 1) * (ref**2).sum() / omega
        den = EPS**2 + mag_sigma**2 * (w - w0) ** 2
        return 0.25 * np.log(num / den).sum() + math.log(M / mag_sigma) + 10

    expected = {
        "pacbayes.init": _adjust(bound(w - w0)),
        "pacbayes.orig": _adjust(bound(w)),
        "pacbayes.flatness": _adjust(1 / sigma**2),  # Eq. 53
        "pacbayes.mag.init": _adjust(mag_bound(w - w0)),
        "pacbayes.mag.orig": _adjust(mag_bound(w)),
        "pacbayes.mag.flatness": _adjust(1 / mag_sigma**2),  # Eq. 61
    }
    got = sharpness.pacbayes_measures(
        deploy(model).weights(), deploy(init_model).weights(), sigma, mag_sigma, M, EPS
    )
    assert got == pytest.approx(expected, rel=1e-9)


def test_sharpness_measures_match_their_bounds() -> None:
    model, init_model = _mlp(0), _mlp(1)
    w, w0 = _flat_weights(model), _flat_weights(init_model)
    alpha, mag_alpha = 0.02, 0.3
    omega = w.size

    def bound(ref: np.ndarray) -> float:
        return (ref**2).sum() * math.log(2 * omega) / (4 * alpha**2) + math.log(M / alpha) + 10

    expected = {
        "sharpness.init": _adjust(bound(w - w0)),
        "sharpness.orig": _adjust(bound(w)),
        "sharpness.flatness": _adjust(1 / alpha**2),
        "sharpness.mag.flatness": _adjust(1 / mag_alpha**2),
    }
    got = sharpness.sharpness_measures(
        deploy(model).weights(), deploy(init_model).weights(), alpha, mag_alpha, M
    )
    assert got == pytest.approx(expected, rel=1e-9)


# --- which parameters the searches perturb ---------------------------------------------------------


class BiasedTwoLogits(nn.Module):
    """logits = [w·x + b₀, 0·x + b₁] at x = 1 with b = 0: class 0 is right iff the perturbed
    difference w + u_w₀ + u_b₀ − u_w₁ − u_b₁ > 0."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.layer = QuantLinear(1, 2, bias=True)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([[w], [0.0]]))
            self.layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.mark.parametrize(("parameters", "perturbed"), [("all", 4), ("weights", 2)])
def test_pacbayes_sigma_perturbs_the_chosen_parameters(parameters: str, perturbed: int) -> None:
    """The logit difference is N(w, kσ²) with k perturbed parameters: accuracy Φ(w/(√k·σ)), so a 0.1
    drop gives σ′ = w/(√k·Φ⁻¹(0.9)): k = 4 with the biases (reference code), 2 for weights only."""
    view = deploy(BiasedTwoLogits(1.0))
    data = Examples.from_tensors(torch.ones(32, 1), torch.zeros(32, dtype=torch.long))
    found = sharpness.pacbayes_sigma(
        view, data, parameters=parameters, draws=4000, depth=25, tolerance=0.003, seed=0
    )
    assert found.converged
    assert found.value == pytest.approx(1 / (math.sqrt(perturbed) * Z90), rel=0.03)


def test_worst_case_alpha_perturbs_the_chosen_parameters() -> None:
    """The worst box corner moves the logit difference by 2α per pair of perturbed parameters: with
    the biases it flips at 4α > w (α′ = w/4), weights only at 2α > w (α′ = w/2)."""
    view = deploy(BiasedTwoLogits(0.8))
    data = Examples.from_tensors(torch.ones(8, 1), torch.zeros(8, dtype=torch.long))
    every = sharpness.worst_case_alpha(view, data, parameters="all", depth=30, tolerance=0.01, seed=0)
    weights = sharpness.worst_case_alpha(view, data, parameters="weights", depth=30, tolerance=0.01, seed=0)
    assert every.value == pytest.approx(0.2, rel=1e-3)
    assert weights.value == pytest.approx(0.4, rel=1e-3)


def test_all_parameters_after_folding_are_the_reference_codes() -> None:
    """After folding (reference ``_reparam``): the folded weights and biases, and the folded
    BatchNorm's unit scale and zero shift; never a quantizer step; the function unchanged."""
    torch.manual_seed(0)
    spec = {
        "model": {"name": "mlp", "depth": 1, "width": 4, "batch_norm": True},
        "quant": {
            "method": "lsq",
            "weight_bits": 4,
            "act_bits": 4,
            "first_layer": "same",
            "last_layer": "same",
        },
    }
    model = build_model(spec, (1, 2, 2), 3)
    x = torch.randn(16, 1, 2, 2)
    init_quantizers(model, x)
    _randomize_batchnorm(model)
    view = deploy(model)
    params = view.perturbable("all")
    assert list(params) == [
        "net.1.weight",
        "net.1.bias",
        "net.2.weight",
        "net.2.bias",
        "net.4.weight",
        "net.4.bias",
    ]
    assert torch.equal(params["net.2.weight"], torch.ones(4)) and torch.equal(
        params["net.2.bias"], torch.zeros(4)
    )
    bn = model.net[2]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        q = model.net[1].effective_weight()
        assert torch.allclose(params["net.1.weight"], q * scale[:, None])
        assert torch.allclose(params["net.1.bias"], bn.bias - bn.running_mean * scale)
        assert torch.allclose(view(x, params), model(x), atol=1e-5)
    assert list(view.perturbable("weights")) == ["net.1.weight", "net.4.weight"]
    latent = deploy(model, "latent").perturbable("all")  # BatchNorm not folded; LSQ steps left out
    assert list(latent) == ["net.1.weight", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"]
    with pytest.raises(ValueError, match=r"measures\.parameters 'biases'"):
        view.perturbable("biases")


def _randomize_batchnorm(model: nn.Module) -> None:
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    model.eval()


# --- search flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statistic", "geometric", "converged", "bound"),
    [
        (lambda s: s, False, True, "none"),  # reaches 0.5 at s = 0.5
        (lambda s: 0.0, False, False, "upper"),  # never reaches the target: σ′ at the upper end
        (lambda s: 1.0, False, False, "lower"),
        (lambda s: 0.0, True, False, "upper"),
        (lambda s: 1.0, True, False, "lower"),
    ],
)
def test_bisection_flags_convergence_and_the_bound_it_ends_at(statistic, geometric, converged, bound) -> None:
    lower = 1e-4 if geometric else 0.0
    found = sharpness.bisect(
        lambda s: (statistic(s), {"s": s}),
        lower,
        2.0,
        depth=12,
        target=0.5,
        tolerance=0.01,
        geometric=geometric,
    )
    assert (found.converged, found.bound) == (converged, bound)


def test_bisection_flags_values_within_one_final_step_of_an_end_only() -> None:
    """2 − 2/2⁸ is within one final step of 2 even when that last step turned back; a search that
    moved away from the end earlier is not flagged; a converged search only if it converged there."""

    def run(statistic, depth: int = 8) -> sharpness.Search:
        return sharpness.bisect(
            lambda s: (statistic(s), {}), 0.0, 2.0, depth=depth, target=0.5, tolerance=0.01
        )

    assert run(lambda s: 0.0 if s < 1.99 else 1.0).bound == "upper"
    assert run(lambda s: 0.0 if s < 1.9 else 1.0).bound == "none"
    at_end = run(lambda s: 0.5 if s > 1.99 else 0.0)  # reaches the target at 2 − 2/2⁸, the last step
    assert at_end.converged and at_end.bound == "upper"
    before = run(lambda s: 0.5 if s > 1.98 else 0.0)  # at 2 − 2/2⁷, one step before the last
    assert before.converged and before.bound == "none"


class Constant(nn.Module):
    """No bias, input 0: the logits are 0 whatever the weights, so no perturbation moves the accuracy."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = QuantLinear(1, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_searches_on_a_model_nothing_moves_end_at_the_upper_bound() -> None:
    view = deploy(Constant())
    data = Examples.from_tensors(torch.zeros(16, 1), torch.zeros(16, dtype=torch.long))
    for search in (
        sharpness.pacbayes_sigma(view, data, draws=3, seed=0),
        sharpness.pacbayes_sigma(view, data, magnitude_eps=EPS, draws=3, seed=0),
        sharpness.worst_case_alpha(view, data, steps=2, seed=0),
        sharpness.worst_case_alpha(view, data, magnitude_eps=EPS, steps=2, seed=0),
    ):
        assert not search.converged and search.bound == "upper"


def test_searches_flag_the_lower_bound_and_convergence() -> None:
    data = Examples.from_tensors(torch.ones(32, 1), torch.zeros(32, dtype=torch.long))
    fragile = sharpness.pacbayes_sigma(deploy(BiasedTwoLogits(1e-6)), data, draws=50, seed=0)
    assert not fragile.converged and fragile.bound == "lower"  # σ′ ≈ 3e-7, below the 2/2¹⁵ resolution
    found = sharpness.pacbayes_sigma(deploy(BiasedTwoLogits(1.0)), data, draws=400, seed=0)
    assert found.converged and found.bound == "none"


# --- measure_run: m is the training-set size, flags in measures.json and runs.csv --------------------


SMALL = {
    "noise": {"examples": 64},
    "pacbayes": {"depth": 3, "draws": 2},
    "worst_case": {"examples": 100, "depth": 2, "steps": 2},
    "hessian": {"examples": 64, "max_probes": 3, "min_probes": 2, "power_iters": 3},
    "noise_model": {"draws": 2},
}


@pytest.fixture(scope="module")
def trained_payload(digits_run, tmp_path_factory) -> dict[str, Any]:
    from tests.conftest import make_spec

    spec = make_spec(model={"width": 16}, quant={"weight_bits": 4, "act_bits": 4}, train={"max_epochs": 2})
    run_cfg = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 10}
    model, init_state, _ = train_run(
        spec, digits_run, tmp_path_factory.mktemp("m"), run_cfg, runtime.configure(run_cfg), progress=False
    )
    return {
        "run_id": "digits-mlp2x16-lsq_w4a4-00000000",
        "spec": spec,
        "state_dict": model.state_dict(),
        "init_state": init_state,
    }


def _fixed_search(value: float, converged: bool, bound: str):
    def search(*args: Any, **kwargs: Any) -> sharpness.Search:
        return sharpness.Search(value=value, converged=converged, bound=bound)

    return search


def test_size_normalized_measures_do_not_depend_on_the_measured_subset(
    trained_payload, digits_run, monkeypatch, tmp_path
) -> None:
    """With σ′ and α′ fixed, `measures.examples` changes which examples are evaluated but no bound:
    m is the training-set size (1347), recorded as measure.m; the search flags reach runs.csv."""
    monkeypatch.setattr(sharpness, "pacbayes_sigma", _fixed_search(0.05, False, "upper"))
    monkeypatch.setattr(sharpness, "worst_case_alpha", _fixed_search(0.01, True, "none"))
    bodies = {}
    for examples in (200, None):
        settings = validate({**SMALL, "examples": examples}, measures_schema(), where="test")
        bodies[examples] = measure_run(trained_payload, digits_run, settings, torch.device("cpu"))
    small, full = bodies[200]["measures"], bodies[None]["measures"]
    m = digits_run.m
    assert small["measure.examples"] == 200 and full["measure.examples"] == m
    assert small["measure.m"] == full["measure.m"] == bodies[200]["m"] == m
    independent_of_subset = [
        *(k for k in full if k.startswith(("pacbayes.", "sharpness."))),
        "norm.param_norm",
        "norm.fro_dist",
        "norm.dist_spec_init",
        "norm.fro_over_spec",
        "norm.log_prod_of_spec",
        "norm.log_sum_of_fro",
        "norm.path_norm",
    ]
    assert len(independent_of_subset) > 16
    for key in independent_of_subset:
        assert small[key] == full[key], key
    # and the value is Eq. 53 with that m: √(1/(σ′² m))
    assert full["pacbayes.flatness"] == pytest.approx(math.sqrt(1 / (0.05**2 * m)))

    names = ("pacbayes", "pacbayes_mag", "worst_case", "worst_case_mag")
    assert [full[f"search.{n}.converged"] for n in names] == [False, False, True, True]
    assert [full[f"search.{n}.bound"] for n in names] == ["upper", "upper", "none", "none"]
    assert bodies[None]["searches"]["pacbayes"]["bound"] == "upper"

    metrics = {"run_id": trained_payload["run_id"], "status": "completed", "spec": trained_payload["spec"]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "measures.json").write_text(
        json.dumps({"run_id": trained_payload["run_id"], "measures": full})
    )
    write_csv(collect([tmp_path / "metrics.json"], "e", [tmp_path / "measures.json"]), tmp_path / "runs.csv")
    row = read_runs(tmp_path / "runs.csv").iloc[0]
    assert [bool(row[f"search.{n}.converged"]) for n in names] == [False, False, True, True]
    assert [row[f"search.{n}.bound"] for n in names] == ["upper", "upper", "none", "none"]  # "none" is no NaN
    assert row["measure.m"] == m


def test_the_bound_takes_m_from_the_training_set_size_not_the_measured_subset() -> None:
    import pandas as pd

    from qgen.analysis import bound

    row = {"train_error": 0.1, "noise_model.error_increase": 0.02, "noise_model.kl_orig": 50.0}
    out = bound.evaluate_bound(pd.DataFrame([{**row, "measure.examples": 200.0, "measure.m": 1347.0}]))
    assert out["bound.complexity"].iloc[0] == pytest.approx(
        4 * math.sqrt((50 + math.log(2 * 1347 / 0.05)) / 1347)
    )
    with pytest.raises(KeyError, match=r"measure\.m"):
        bound.evaluate_bound(pd.DataFrame([{**row, "measure.examples": 200.0}]))


# --- measures in mini-batches: bounded forwards, the whole-subset values, CUDA as CPU ----------------

#: subsets of several hundred examples, each more than one batch of 100
STREAMED = {
    "examples": 400,
    "noise": {"examples": 250},
    "pacbayes": {"depth": 8, "draws": 3},
    "worst_case": {"examples": 300, "depth": 5, "steps": 3},
    "hessian": {"examples": 350, "max_probes": 12, "min_probes": 4, "power_iters": 20},
    "noise_model": {"draws": 3},
}
#: measure_run's laps (cost records and timings)
MEASURES = (
    *("noise", "pacbayes", "pacbayes_mag", "worst_case", "worst_case_mag"),
    *("hessian", "noise_model", "norms"),
)


def _settings(batch_size: int, batched: bool, **extra: Any) -> dict[str, Any]:
    pacbayes = {**STREAMED["pacbayes"], "batched": batched}
    return validate({**STREAMED, "pacbayes": pacbayes, "batch_size": batch_size, **extra}, measures_schema())


def _scalars(body: dict[str, Any]) -> dict[str, Any]:
    """Every scalar of a measures.json body, keyed by its path (measures, per-layer noise statistics,
    propagation, Hessian block traces, search records)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = value

    for key in ("measures", "layers", "propagation", "hessian_per_layer", "searches"):
        walk(key, body[key])
    return out


def _assert_scalars_match(got: dict[str, Any], want: dict[str, Any], rel: float, abs_: float) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, float) and not isinstance(value, bool):
            if math.isnan(value):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == pytest.approx(value, rel=rel, abs=abs_), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("batched", [True, False])
def test_no_forward_pass_sees_more_rows_than_the_batch_size(
    trained_payload, digits_run, monkeypatch, batched
) -> None:
    """batch_size 100 and subsets of 250-400 examples: every forward of every measure (the vmap'ed
    PAC-Bayes draws counted per model) sees at most 100 rows; measures.json's cost says so, and says
    how many examples each measure read."""
    from qgen.measures import run as measures_run

    seen: list[int] = []
    real = measures_run.model_from_payload

    def watched(*args: Any, **kwargs: Any) -> nn.Module:  # an independent count: deploy copies the hook
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda _m, inputs: seen.append(int(inputs[0].shape[0])))
        return model

    monkeypatch.setattr(measures_run, "model_from_payload", watched)
    body = measure_run(trained_payload, digits_run, _settings(100, batched), torch.device("cpu"))
    assert seen and max(seen) == 100
    cost = body["cost"]
    assert list(cost) == list(MEASURES)
    assert {name: cost[name]["max_forward_rows"] for name in MEASURES} == dict.fromkeys(MEASURES, 100)
    examples = {name: cost[name]["examples"] for name in MEASURES}
    assert examples == {
        "noise": 250,
        "pacbayes": 400,
        "pacbayes_mag": 400,
        "worst_case": 300,
        "worst_case_mag": 300,
        "hessian": 350,
        "noise_model": 350,
        "norms": 400,
    }
    assert all(cost[name]["peak_cuda_memory_bytes"] is None for name in MEASURES)  # on the CPU
    assert body["measures"]["measure.examples"] == 400 and body["measures"]["measure.m"] == digits_run.m
    assert set(body["timings"]) == set(MEASURES)


@pytest.mark.parametrize("batched", [True, False])
def test_streamed_measures_equal_the_whole_batch_values(trained_payload, digits_run, batched) -> None:
    """Batches of 100 against one batch per subset (batch_size 4096): every scalar of measures.json
    agrees. Searches and counts (σ′, α′, their flags and records, errors, probe and iteration counts)
    are integer counts over the same examples and agree exactly; the rest are float sums in another
    order (Hessian-vector products summed over batches, float64 norms of the propagation) and agree
    within rel 1e-6 (measured: 7e-8 at most, the top eigenvalue)."""
    cpu = torch.device("cpu")
    whole = measure_run(trained_payload, digits_run, _settings(4096, batched), cpu)
    streamed = measure_run(trained_payload, digits_run, _settings(100, batched), cpu)
    assert whole["cost"]["pacbayes"]["max_forward_rows"] == 400  # one batch per subset
    want, got = _scalars(whole), _scalars(streamed)
    counted = ("alpha", "sigma", "probes", "iterations", "error", "converged", "bound")
    exact = [k for k in want if k.startswith("searches.") or any(c in k for c in counted)]
    assert len(exact) > 20
    for key in exact:
        assert got[key] == want[key], key
    _assert_scalars_match(got, want, rel=1e-6, abs_=1e-12)


def test_measure_run_takes_the_runs_splits_on_its_device(trained_payload, digits_prepared) -> None:
    settings = _settings(100, False)
    with pytest.raises(TypeError, match="RunData"):
        measure_run(trained_payload, digits_prepared, settings, torch.device("cpu"))


def test_a_batch_size_below_one_names_the_key() -> None:
    from qgen.config import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        validate({"batch_size": 0}, measures_schema())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_runtime():
    """CUDA as `qgen measure` configures it (deterministic kernels, warn-only), full-precision float32
    matmuls; the session's determinism settings restored afterwards."""
    state = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    device = runtime.configure({"device": "cuda", "threads": 1})
    yield device
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batched", [True, False])
def test_measures_on_cuda_equal_the_cpu_values(
    trained_payload, digits_prepared, cuda_runtime, batched
) -> None:
    """measure_run of a small trained digits MLP on CUDA (its splits on the GPU, batches of 100)
    against the CPU: the random draws are the same (CPU generators), so every scalar agrees within
    rel 1e-4 (abs 1e-6): float32 GPU kernels round differently from the CPU's (about 1e-6 relative in
    the logits); σ′, α′ and the flags come from counts and agree exactly unless rounding flips an
    argmax at a bisection decision (not expected here: the rounding is far below this model's typical
    top-two logit gaps, but a flip would fail this test, not pass silently). Both PAC-Bayes branches
    run on CUDA: the batched one used to add CUDA counts into a CPU accumulator."""
    from qgen.data.run_data import open_run_data

    settings = _settings(100, batched)
    on_cpu = measure_run(trained_payload, open_run_data(digits_prepared, {}), settings, torch.device("cpu"))
    on_cuda = measure_run(
        trained_payload, open_run_data(digits_prepared, {}, cuda_runtime), settings, cuda_runtime
    )
    assert all(on_cuda["cost"][name]["peak_cuda_memory_bytes"] > 0 for name in MEASURES)
    assert all(on_cuda["cost"][name]["max_forward_rows"] <= 100 for name in MEASURES)
    _assert_scalars_match(_scalars(on_cuda), _scalars(on_cpu), rel=1e-4, abs_=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_path_norm_and_margin_run_on_the_models_device(cuda_runtime) -> None:
    model = _mlp(0)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 1, 2, 2, generator=gen).double(), torch.randint(0, 3, (50,), generator=gen)
    on_cpu = norms.norm_measures(
        deploy(model), deploy(model).weights(), Examples.from_tensors(x, y, 16), (1, 2, 2), m=M
    )
    gpu_model = deploy(model.to(cuda_runtime))
    batches = Examples.from_tensors(x.to(cuda_runtime), y.to(cuda_runtime), 16)
    on_cuda = norms.norm_measures(gpu_model, gpu_model.weights(), batches, (1, 2, 2), m=M)
    assert on_cuda == pytest.approx(on_cpu, rel=1e-9)
