"""Curvature of the training loss at the measured weights: Hessian trace and top eigenvalue.

Both use Hessian-vector products Hv = ∂/∂w (∇L(w) · v) by double backward, on a fixed subset of the
training set, at the weights of a :class:`~qgen.measures.deployed.DeployedModel` (the effective,
BN-folded weights by default). L is the mean cross-entropy over the subset, read in mini-batches
(:class:`~qgen.data.batches.Examples`): Hv = Σ_b H_b v with H_b the Hessian of batch b's Σ CE / n,
the example-weighted sum of the per-batch products. A subset that fits one batch keeps its gradient
graph across products (one double backward per product); a larger one rebuilds each batch's graph
for every product (one forward, one backward with ``create_graph`` and one double backward per batch;
measured 1.25× the kept-graph product for Jiang's NiN on CPU), so memory is that of one batch, never
of the subset.

- Trace: Hutchinson's estimator tr(H) = E[vᵀHv] with Rademacher probes v (Hutchinson 1989). Probes
  are added until the standard error of the mean is below ``tolerance`` × |estimate| (after
  ``min_probes``) or ``max_probes`` is reached. The same probes give each layer's block trace
  tr(H_ll) = E[v_lᵀ(Hv)_l] (the cross terms have zero mean), which QGen's second-order argument
  E[L(w+θ)] ≈ L(w) + Σ_l (Δ_l²/24)·tr(H_ll) needs.
- Top eigenvalue: power iteration v ← Hv/‖Hv‖ with the Rayleigh quotient vᵀHv, until its relative
  change is below ``tolerance``; it converges to the eigenvalue of largest magnitude.

Segmentation models (a segmentation :class:`qgen.metrics.Objective`): L is the run's training loss (dice
or bce_dice) evaluated per image, Σ_i L_i / n: the per-image form, because the batch-level soft dice
training minimizes is not a sum over examples and could not be accumulated batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qgen.data.batches import Examples
from qgen.measures.deployed import DeployedModel, Weights
from qgen.measures.stats import mean_and_stderr
from qgen.metrics import Objective


def hvp_function(
    loss_fn: Callable[[Weights], torch.Tensor], weights: Weights
) -> Callable[[Weights], Weights]:
    """A function v ↦ Hv for the Hessian of ``loss_fn`` at ``weights`` (the gradient graph is built once)."""
    params = {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}
    with torch.enable_grad():
        loss = loss_fn(params)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)

    def hvp(v: Weights) -> Weights:
        out = torch.autograd.grad(
            grads, list(params.values()), grad_outputs=[v[n] for n in params], retain_graph=True
        )
        return {n: h.detach() for n, h in zip(params, out, strict=True)}

    return hvp


def cross_entropy_hvp(
    model: DeployedModel, examples: Examples, objective: Objective | None = None
) -> Callable[[Weights], Weights]:
    """v ↦ Hv for the mean cross-entropy over ``examples`` at the measured weights, batch by batch
    (see the module docstring: one batch keeps its graph, more batches rebuild theirs per product); a
    segmentation ``objective``: the mean per-image training loss instead."""
    weights, n = model.weights(), len(examples)
    if n == 0:
        raise ValueError("cross_entropy_hvp: no examples")

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> Callable[[Weights], torch.Tensor]:
        if objective is not None and objective.segmentation:
            return lambda w: objective.losses(model(xb, w), yb).sum() / n
        return lambda w: F.cross_entropy(model(xb, w), yb, reduction="sum") / n

    if n <= examples.batch_size:
        ((xb, yb),) = list(examples)
        return hvp_function(batch_loss(xb, yb), weights)

    def hvp(v: Weights) -> Weights:
        total: Weights = {}
        for xb, yb in examples:
            for name, h in hvp_function(batch_loss(xb, yb), weights)(v).items():
                total[name] = total[name] + h if name in total else h
        return total

    return hvp


@dataclass
class TraceEstimate:
    trace: float
    stderr: float
    probes: int
    per_layer: dict[str, float] = field(default_factory=dict)


def hutchinson_trace(
    hvp: Callable[[Weights], Weights],
    like: Weights,
    *,
    max_probes: int = 100,
    min_probes: int = 10,
    tolerance: float = 0.02,
    seed: int = 0,
) -> TraceEstimate:
    gen = torch.Generator().manual_seed(seed)
    totals: list[float] = []
    layers: dict[str, list[float]] = {n: [] for n in like}
    for _ in range(max_probes):
        # drawn in the weights' dtype: the same draws (and generator state) as int64, without the cast
        v = {
            n: (torch.randint(0, 2, w.shape, generator=gen, dtype=w.dtype) * 2 - 1).to(w)
            for n, w in like.items()
        }
        hv = hvp(v)
        per = {n: float((v[n].double() * hv[n].double()).sum()) for n in like}
        for n, value in per.items():
            layers[n].append(value)
        totals.append(sum(per.values()))
        if len(totals) >= max(min_probes, 2):
            mean, stderr = mean_and_stderr(totals)
            if stderr <= tolerance * abs(mean):
                break
    k = len(totals)
    mean, stderr = mean_and_stderr(totals)
    return TraceEstimate(mean, stderr, k, {n: sum(v) / k for n, v in layers.items()})


@dataclass
class Eigen:
    value: float
    iterations: int
    converged: bool


def top_eigenvalue(
    hvp: Callable[[Weights], Weights],
    like: Weights,
    *,
    max_iters: int = 100,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> Eigen:
    gen = torch.Generator().manual_seed(seed)
    v = {n: torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device) for n, w in like.items()}

    def normalize(u: Weights) -> Weights:
        norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in u.values()))
        return {n: t / max(norm, 1e-30) for n, t in u.items()}

    v = normalize(v)
    value = 0.0
    for i in range(1, max_iters + 1):
        hv = hvp(v)
        new = sum(float((v[n].double() * hv[n].double()).sum()) for n in v)
        if i > 1 and abs(new - value) <= tolerance * max(abs(new), 1e-12):
            return Eigen(new, i, True)
        value, v = new, normalize(hv)
    return Eigen(value, max_iters, False)
