"""The additive-noise model of quantization tested on the trained network (QGen §1a, QReg).

With θ_l ~ U(−Δ_l/2, Δ_l/2) independently per weight, Var(θ) = Δ²/12 and a second-order expansion
gives E_θ[L(w + θ)] − L(w) ≈ ½ Σ_l (Δ_l²/12)·tr(H_ll) = Σ_l (Δ_l²/24)·tr(H_ll) (papers.md §1a [M]).
This module measures the left side by Monte Carlo (same loss, same data subset as the Hessian) and
computes the right side from the Hutchinson block traces, for the cross-entropy; it also gives the
error increase under the same noise (the sharpness term of the reconstructed bound) and the KL terms
Σ_i w_i²/(2σ_i²), σ_i² = Δ_i²/12, of that bound, with the zero prior (``orig``) and the prior at
initialization (``init``).

Only quantized layers carry noise; layers kept in float (first/last-layer policy ``float``) are left
out of every sum (reconstruction: a float layer has no quantization noise to condition on).
Per-channel steps enter the prediction through their mean square per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qgen.measures.deployed import DeployedModel

Weights = dict[str, torch.Tensor]


@torch.no_grad()
def _loss_and_error(
    model: DeployedModel, x: torch.Tensor, y: torch.Tensor, weights: Weights
) -> tuple[float, float]:
    logits = model(x, weights)
    return float(F.cross_entropy(logits.double(), y)), float((logits.argmax(-1) != y).double().mean())


@torch.no_grad()
def noise_model_measures(
    model: DeployedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    init: Weights,
    per_layer_trace: dict[str, float],
    *,
    draws: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Measured vs predicted loss increase under quantization-like noise, and the bound's KL terms."""
    steps = model.steps
    if not steps:
        return {}
    weights = model.weights()
    base_loss, base_err = _loss_and_error(model, x, y, weights)
    gen = torch.Generator().manual_seed(seed)
    losses, errors = [], []
    for _ in range(draws):
        noisy = dict(weights)
        for n, step in steps.items():
            u = (torch.rand(weights[n].shape, generator=gen, dtype=weights[n].dtype) - 0.5).to(step.device)
            noisy[n] = weights[n] + u * step
        loss, err = _loss_and_error(model, x, y, noisy)
        losses.append(loss - base_loss)
        errors.append(err - base_err)

    def mean_se(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
        return mean, math.sqrt(var / len(values))

    loss_inc, loss_se = mean_se(losses)
    err_inc, err_se = mean_se(errors)
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
