"""All measures of one trained run: noise statistics, sharpness, Hessian and norms -> measures.json.

Settings come from the config's ``measures`` section (schema: workflow/schemas/config.schema.yaml);
they change what is measured, never what is trained, so a new setting re-measures without retraining.
Every random choice (data subsets, Monte-Carlo draws, probes, PGA starts) is seeded by
``measures.seed``, so measuring the same run twice gives an identical file on CPU.

Size-normalized measures use m = the training-set size (``measure.m``, and ``m`` in the body), not the
size of the subset they evaluate on (``measure.examples``), so ``measures.examples`` does not rescale
them. Each σ′/α′ search is flagged in the measures (and so in runs.csv) as ``search.<name>.converged``
and ``search.<name>.bound`` ("lower", "upper", "none"), <name> in pacbayes, pacbayes_mag, worst_case,
worst_case_mag.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from qgen.data import PreparedData
from qgen.measures import hessian, noise, noise_model, norms, sharpness
from qgen.measures.deployed import deploy
from qgen.models import build_model, model_from_payload


def _subset(data: dict[str, torch.Tensor], n: int | None, seed: int, device: torch.device):
    x, y = data["x"], data["y"]
    if n is not None and n < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return x.to(device), y.to(device)


def _search_record(search: sharpness.Search) -> dict[str, Any]:
    return {"converged": search.converged, "bound": search.bound, "steps": search.steps}


def measure_run(
    payload: dict[str, Any], data: PreparedData, settings: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Measures of the model in a ``model.pt`` payload; returns the body of measures.json."""
    seed = settings["seed"]
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    model = model_from_payload(payload, data.input_shape, data.num_classes, str(device))
    init_model = build_model(payload["spec"], data.input_shape, data.num_classes).to(device)
    init_model.load_state_dict(payload["init_state"])
    init_model.eval()

    xb, _ = _subset(data.train, settings["noise"]["examples"], seed, device)
    layers = noise.layer_noise(model, xb)
    prop = noise.propagation(model, xb)
    out: dict[str, float | bool | str] = dict(noise.summarize(layers, prop))
    lap("noise")

    view = deploy(model, settings["perturb"])
    init_weights = deploy(init_model, settings["perturb"]).weights()
    x, y = _subset(data.train, settings["examples"], seed, device)
    m = len(data.train["y"])  # Jiang's m: the training-set size, whatever subset a measure evaluates
    out["measure.examples"] = float(len(y))
    out["measure.m"] = float(m)
    pb, wc = settings["pacbayes"], settings["worst_case"]
    pb_args = {k: pb[k] for k in ("lower", "upper", "depth", "draws", "target", "tolerance")}
    pb_args["batched"] = device.type == "cuda" if pb["batched"] == "auto" else bool(pb["batched"])
    pb_args["parameters"] = settings["parameters"]
    sigma = sharpness.pacbayes_sigma(view, x, y, seed=seed, **pb_args)
    mag_sigma = sharpness.pacbayes_sigma(view, x, y, magnitude_eps=pb["magnitude_eps"], seed=seed, **pb_args)
    lap("pacbayes")
    wc_args = {k: wc[k] for k in ("lower", "upper", "depth", "steps", "target", "tolerance")}
    wc_args["parameters"] = settings["parameters"]
    xw, yw = _subset(data.train, wc["examples"], seed + 1, device)
    alpha = sharpness.worst_case_alpha(view, xw, yw, seed=seed, **wc_args)
    mag_alpha = sharpness.worst_case_alpha(
        view, xw, yw, magnitude_eps=wc["magnitude_eps"], seed=seed, **wc_args
    )
    lap("worst_case")
    weights = view.weights()
    out.update(
        sharpness.pacbayes_measures(
            weights, init_weights, sigma.value, mag_sigma.value, m, pb["magnitude_eps"]
        )
    )
    out.update(sharpness.sharpness_measures(weights, init_weights, alpha.value, mag_alpha.value, m))
    out.update(
        {
            "pacbayes.sigma": sigma.value,
            "pacbayes.mag.sigma": mag_sigma.value,
            "sharpness.alpha": alpha.value,
            "sharpness.mag.alpha": mag_alpha.value,
        }
    )
    searches = {
        "pacbayes": sigma,
        "pacbayes_mag": mag_sigma,
        "worst_case": alpha,
        "worst_case_mag": mag_alpha,
    }
    for name, search in searches.items():  # flags read by the claims (runs.csv columns)
        out[f"search.{name}.converged"] = search.converged
        out[f"search.{name}.bound"] = search.bound

    hs = settings["hessian"]
    xh, yh = _subset(data.train, hs["examples"], seed + 2, device)
    hvp = hessian.cross_entropy_hvp(view, xh, yh)
    trace = hessian.hutchinson_trace(
        hvp,
        weights,
        max_probes=hs["max_probes"],
        min_probes=hs["min_probes"],
        tolerance=hs["tolerance"],
        seed=seed,
    )
    eig = hessian.top_eigenvalue(
        hvp, weights, max_iters=hs["power_iters"], tolerance=hs["power_tolerance"], seed=seed
    )
    out.update(
        {
            "hessian.trace": trace.trace,
            "hessian.trace_stderr": trace.stderr,
            "hessian.probes": float(trace.probes),
            "hessian.top_eigenvalue": eig.value,
            "hessian.power_iterations": float(eig.iterations),
        }
    )
    lap("hessian")
    nm = settings["noise_model"]
    out.update(
        noise_model.noise_model_measures(
            view, xh, yh, init_weights, trace.per_layer, draws=nm["draws"], seed=seed
        )
    )
    lap("noise_model")
    out.update(norms.norm_measures(view, init_weights, x, y, data.input_shape, m=m))
    lap("norms")
    return {
        "measures": out,
        "layers": layers,
        "propagation": prop,
        "hessian_per_layer": trace.per_layer,
        "searches": {
            "pacbayes": _search_record(sigma),
            "pacbayes.mag": _search_record(mag_sigma),
            "worst_case": _search_record(alpha),
            "worst_case.mag": _search_record(mag_alpha),
            "hessian.top_eigenvalue": {"converged": eig.converged, "iterations": eig.iterations},
        },
        "equations": norms.EQUATIONS,
        "settings": settings,
        "m": m,
        "timings": timings,
    }
