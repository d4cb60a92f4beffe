"""The additive-noise model of quantization tested on the trained network (QGen §1a, QReg).

With θ_l ~ U(−Δ_l/2, Δ_l/2) independently per weight, Var(θ) = Δ²/12 and a second-order expansion
gives E_θ[L(w + θ)] − L(w) ≈ ½ Σ_l (Δ_l²/12)·tr(H_ll) = Σ_l (Δ_l²/24)·tr(H_ll) (papers.md §1a [M]).
This module measures the left side by Monte Carlo (same loss, same data subset as the Hessian) and
computes the right side from the Hutchinson block traces, for the cross-entropy; it also gives the
error increase under the same noise (the sharpness term of the reconstructed bound) and the KL terms
Σ_i w_i²/(2σ_i²), σ_i² = Δ_i²/12, of that bound, with the zero prior (``orig``) and the prior at
initialization (``init``).

The losses and errors are accumulated over the subset's mini-batches
(:func:`qgen.metrics.accuracy_and_ce` over :class:`~qgen.data.batches.Examples`); the uniform draws
come from a CPU generator and are moved to the weights' device, the same on CPU and CUDA.

Segmentation models: the loss is the per-image training loss (dice or bce_dice) and the error 1 − dice
(:func:`qgen.metrics.score_and_loss`), as the Hessian's loss (qgen.measures.hessian).

Only quantized layers carry noise; layers kept in float (first/last-layer policy ``float``) are left
out of every sum (reconstruction: a float layer has no quantization noise to condition on).
Per-channel steps enter the prediction through their mean square per layer.
"""

from __future__ import annotations

from functools import partial

import torch

from qgen.data.batches import Examples
from qgen.measures.deployed import DeployedModel, Weights
from qgen.measures.stats import mean_and_stderr
from qgen.metrics import Objective, score_and_loss


@torch.no_grad()
def noise_model_measures(
    model: DeployedModel,
    examples: Examples,
    init: Weights,
    per_layer_trace: dict[str, float],
    *,
    draws: int = 10,
    seed: int = 0,
    objective: Objective | None = None,
) -> dict[str, float]:
    """Measured (on ``examples``) vs predicted loss increase under quantization-like noise, and the
    bound's KL terms."""
    steps = model.steps
    if not steps:
        return {}
    weights = model.weights()

    def loss_and_error(at: Weights) -> tuple[float, float]:
        accuracy, loss = score_and_loss(partial(model, weights=at), examples, objective)
        return loss, 1 - accuracy

    base_loss, base_err = loss_and_error(weights)
    gen = torch.Generator().manual_seed(seed)
    losses, errors = [], []
    for _ in range(draws):
        noisy = dict(weights)
        for n, step in steps.items():
            u = (torch.rand(weights[n].shape, generator=gen, dtype=weights[n].dtype) - 0.5).to(step.device)
            noisy[n] = weights[n] + u * step
        loss, err = loss_and_error(noisy)
        losses.append(loss - base_loss)
        errors.append(err - base_err)

    loss_inc, loss_se = mean_and_stderr(losses)
    err_inc, err_se = mean_and_stderr(errors)
    predicted = sum(
        float((s.double() ** 2).mean()) / 24 * per_layer_trace.get(n, float("nan")) for n, s in steps.items()
    )
    kl_orig = kl_init = 0.0
    for n, s in steps.items():
        var = (s.double() ** 2 / 12).expand_as(weights[n])
        kl_orig += float((weights[n].double() ** 2 / (2 * var)).sum())
        kl_init += float(((weights[n].double() - init[n].double()) ** 2 / (2 * var)).sum())
    return {
        "noise_model.loss_increase": loss_inc,
        "noise_model.loss_increase_stderr": loss_se,
        "noise_model.predicted_loss_increase": predicted,
        "noise_model.error_increase": err_inc,
        "noise_model.error_increase_stderr": err_se,
        "noise_model.train_error": base_err,
        "noise_model.kl_orig": kl_orig,
        "noise_model.kl_init": kl_init,
        "noise_model.quantized_weights": float(sum(weights[n].numel() for n in steps)),
    }
