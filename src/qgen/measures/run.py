"""All measures of one trained run: noise statistics, sharpness, Hessian and norms -> measures.json.

Settings come from the config's ``measures`` section (schema: workflow/schemas/config.schema.yaml);
they change what is measured, never what is trained, so a new setting re-measures without retraining.
Every random choice (data subsets, Monte-Carlo draws, probes, PGA starts) is seeded by
``measures.seed``, so measuring the same run twice gives an identical file on CPU.

Data: the run's splits (:class:`~qgen.data.run_data.RunData`, on the measuring device). Every measure
reads a seeded subset of the training split as :class:`~qgen.data.batches.Examples` in mini-batches
of ``measures.batch_size``, so no forward or backward pass sees more rows than that:
``noise.examples`` (noise statistics and propagation), ``examples`` (σ′ searches and the norms'
margin), ``worst_case.examples`` (α′ searches) and ``hessian.examples`` (Hessian and noise model); null
is the whole training split. Each subset is gathered and normalized once and its batches held
(qgen.measures.resident) when they fit in ``RESIDENT_BYTES``, else streamed; the values are the same
either way. measures.json's ``cost`` records, per measure, how many examples it read,
the largest batch a forward saw and the peak CUDA memory (null on CPU); the wall times go to
provenance (``timings``). The laps: noise, pacbayes, pacbayes_mag, worst_case, worst_case_mag (the plain
and magnitude-aware σ′ and α′ searches), hessian, noise_model, norms.

Size-normalized measures use m = the training-set size (``measure.m``, and ``m`` in the body), not the
size of the subset they evaluate on (``measure.examples``), so ``measures.examples`` does not rescale
them. Each σ′/α′ search is flagged in the measures (and so in runs.csv) as ``search.<name>.converged``
and ``search.<name>.bound`` ("lower", "upper", "none"), <name> in pacbayes, pacbayes_mag, worst_case,
worst_case_mag. ``bn.folded`` / ``bn.unfolded`` count the BatchNorms the measured view folded or kept
(qgen.measures.folding); measures.json's ``batchnorm`` says which, into which layer, through which ops,
or why not, and whether they were found from the fx graph (``graph``).

Segmentation runs (qgen.metrics.Objective from the run's ``train.loss``, ``train.dice_threshold`` and the
dataset's task): the searches' accuracy is the mean per-image dice (σ′: the dice drop under noise reaches
``pacbayes.target``; α′: 1 − dice rises by ``worst_case.target``), the Hessian, the noise model and the
norms' margin use the per-image training loss and pixel margins (qgen.measures.sharpness, hessian,
noise_model, norms); measures.json's ``objective`` records which (segmentation runs only). The U-Net's
BatchNorms follow a ReLU (conv → ReLU → BN), so none folds: its measures are of the unfolded model, its
quantized weights on their grid (``bn.folded`` 0, ``batchnorm`` says why).
"""

from __future__ import annotations

from typing import Any

import torch

from qgen.data.batches import Examples, examples
from qgen.data.run_data import RunData
from qgen.measures import hessian, noise, noise_model, norms, sharpness
from qgen.measures.cost import CostMeter
from qgen.measures.deployed import deploy
from qgen.measures.resident import resident
from qgen.metrics import objective_for
from qgen.models import build_model, model_from_payload


def _search_record(search: sharpness.Search) -> dict[str, Any]:
    return {"converged": search.converged, "bound": search.bound, "steps": search.steps}


def measure_run(
    payload: dict[str, Any], data: RunData, settings: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Measures of the model in a ``model.pt`` payload on ``data`` (its splits on ``device``); returns
    the body of measures.json."""
    if not isinstance(data, RunData):
        raise TypeError(
            f"measure_run takes the run's splits (qgen.data.run_data.RunData), got {type(data).__name__}"
        )
    split_device = getattr(data.train, "device", None)
    if split_device is not None and torch.device(split_device).type != device.type:
        raise ValueError(f"the run's data is on {split_device} but the measures run on {device}")
    seed, batch_size = settings["seed"], settings["batch_size"]

    def subset(size: int | None, subset_seed: int) -> Examples:
        return resident(examples(data.train, size, subset_seed, batch_size))

    model = model_from_payload(payload, data.input_shape, data.num_classes, str(device))
    objective = objective_for(payload["spec"], data.task)
    init_model = build_model(payload["spec"], data.input_shape, data.num_classes).to(device)
    init_model.load_state_dict(payload["init_state"])
    init_model.eval()
    view = deploy(model, settings["perturb"])
    init_weights = deploy(init_model, settings["perturb"]).weights()
    meter = CostMeter([model, view.module], device)  # hooks on local modules: nothing to undo on error

    noise_examples = subset(settings["noise"]["examples"], seed)
    layers = noise.layer_noise(model, noise_examples)
    prop = noise.propagation(model, noise_examples)
    out: dict[str, float | bool | str] = dict(noise.summarize(layers, prop))
    out["bn.folded"] = float(view.batchnorm.folded)  # how many BatchNorms the measured view folded
    out["bn.unfolded"] = float(view.batchnorm.unfolded)
    meter.lap("noise", noise_examples)

    train_examples = subset(settings["examples"], seed)
    m = data.m  # Jiang's m: the training-set size, whatever subset a measure evaluates
    out["measure.examples"] = float(len(train_examples))
    out["measure.m"] = float(m)
    pb, wc = settings["pacbayes"], settings["worst_case"]
    pb_args = {k: pb[k] for k in ("lower", "upper", "depth", "draws", "target", "tolerance")}
    pb_args["batched"] = device.type == "cuda" if pb["batched"] == "auto" else bool(pb["batched"])
    pb_args["parameters"] = settings["parameters"]
    pb_args["objective"] = objective
    sigma = sharpness.pacbayes_sigma(view, train_examples, seed=seed, **pb_args)
    meter.lap("pacbayes", train_examples)
    mag_sigma = sharpness.pacbayes_sigma(
        view, train_examples, magnitude_eps=pb["magnitude_eps"], seed=seed, **pb_args
    )
    meter.lap("pacbayes_mag", train_examples)
    wc_args = {k: wc[k] for k in ("lower", "upper", "depth", "steps", "target", "tolerance")}
    wc_args["parameters"] = settings["parameters"]
    wc_args["objective"] = objective
    wc_examples = subset(wc["examples"], seed + 1)
    alpha = sharpness.worst_case_alpha(view, wc_examples, seed=seed, **wc_args)
    meter.lap("worst_case", wc_examples)
    mag_alpha = sharpness.worst_case_alpha(
        view, wc_examples, magnitude_eps=wc["magnitude_eps"], seed=seed, **wc_args
    )
    meter.lap("worst_case_mag", wc_examples)
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
    hessian_examples = subset(hs["examples"], seed + 2)
    hvp = hessian.cross_entropy_hvp(view, hessian_examples, objective)
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
    meter.lap("hessian", hessian_examples)
    nm = settings["noise_model"]
    out.update(
        noise_model.noise_model_measures(
            view,
            hessian_examples,
            init_weights,
            trace.per_layer,
            draws=nm["draws"],
            seed=seed,
            objective=objective,
        )
    )
    meter.lap("noise_model", hessian_examples)
    out.update(
        norms.norm_measures(view, init_weights, train_examples, data.input_shape, m=m, objective=objective)
    )
    meter.lap("norms", train_examples)
    meter.close()
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
        "batchnorm": view.batchnorm.to_dict(),
        **({"objective": objective.describe()} if objective.segmentation else {}),
        "equations": norms.EQUATIONS,
        "settings": settings,
        "m": m,
        "cost": meter.records,
        "timings": meter.timings,
    }
