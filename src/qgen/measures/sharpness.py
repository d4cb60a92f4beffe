"""Sharpness measures of Jiang et al. (2019), "Fantastic generalization measures" §C, on the
deployed (or latent) weights of a :class:`~qgen.measures.deployed.DeployedModel`.

PAC-Bayes σ′ (Jiang Eq. 48-53, reference code ``_pacbayes_sigma``): the largest σ such that the
training accuracy of the network with parameters w + u, u ~ N(0, σ²I), averaged over Monte-Carlo
draws, deviates from the unperturbed accuracy by ``target`` (0.1 ± ``tolerance``); found by
bisection on [lower, upper]. Magnitude-aware (Eq. 56-61): u_i ~ N(0, σ²w_i² + ε²).

Which parameters move (``parameters``, config ``measures.parameters``): ``all`` (default) perturbs
every parameter of the measured network after BatchNorm folding, biases and the folded BatchNorms'
unit scales and zero shifts included, as the reference code perturbs ``model.parameters()`` after
``_reparam``; ``weights`` perturbs the conv/linear weights only (our option, not the reference's).
The same choice applies to the worst-case search. The bounds (Eq. 48-61 and the sharpness bounds)
take their norms and ω over the weights only, as the reference code does (``get_weights_only``).

The known trap: the reference code draws ``torch.normal(0, sigma**2)``, whose second argument is a
*standard deviation*, so its noise has std σ² while its bounds use σ. Here the draws have standard
deviation σ (and √(σ²w_i² + ε²)), matching the bounds; the tests pin this down.

Draws use common random numbers: one set of standard-normal draws z is fixed per search (seeded)
and scaled by each candidate σ, so the estimated deviation is monotone in σ and the search is
deterministic. With ``batched=True`` all draws of a bisection step are evaluated in one pass per
batch (``torch.func.vmap`` over stacked weights: draws × batch rows of activations at once), which
removes per-draw launch overhead on a GPU; with ``batched=False`` one draw at a time, each draw one
forward per batch (faster on CPU, see benchmarks/pacbayes_draws.py). Both evaluate the same draws.
The draws are taken from a CPU generator and moved to the weights' device, so CPU and CUDA searches
perturb by the same numbers; the correct predictions are counted on the device.

Worst-case sharpness α′ (reconstruction, papers.md §7 [M]): the largest α such that
max_{|u_i| ≤ α} err(w + u) − err(w) ≤ ``target``; the inner maximum is approximated by projected
(sign-)gradient ascent on the cross-entropy from a random start in the box, keeping the worst
error seen; α by bisection. Magnitude-aware: |u_i| ≤ α|w_i| + ε. Using the error (not the loss)
increase, the sign-gradient steps (size 2.5α/steps), the geometric bisection and its range are
our choices, all configurable. Each ascent step's direction is the sign of the gradient of the mean
cross-entropy over the whole subset, accumulated batch by batch (Σ_b ∇ Σ_{i∈b} CE_i / n), and the
error is counted over all batches, so only one batch's graph is alive at a time.

Data: every search reads its examples as :class:`~qgen.data.batches.Examples`, in mini-batches of
``measures.batch_size``; accuracies and errors are integer counts over the subset, so they do not
depend on the batch size (up to the rare argmax that float rounding of a different batch shape flips).

Segmentation models (``objective``, a :class:`qgen.metrics.Objective` of task segmentation): the
"accuracy" of every search is the mean per-image **dice** of the binarized prediction, so σ′ is the σ at
which the mean dice under the noise drops by ``target`` (0.1 = 10 dice points) from the unperturbed
dice, and α′'s error is 1 − dice; the ascent follows the gradient of the mean per-image training loss
(dice or bce_dice) instead of the cross-entropy. The same ``target`` and ``tolerance`` settings apply.

Every size-normalized measure uses m = the training-set size (Jiang's m; the reference code's
``len(dataloader.dataset)`` on the training set), whatever subset a search evaluates on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import vmap

from qgen.data.batches import Examples
from qgen.measures.deployed import DeployedModel, Weights
from qgen.metrics import Objective, score_and_loss


@dataclass
class Search:
    """Result of a bisection: the value found, the (value, statistic) of every step, whether the
    statistic reached its target (``converged``) and whether the value sits at an end of the search
    interval (``bound``: "lower", "upper" or "none", see :func:`bisect`)."""

    value: float
    steps: list[dict[str, float]] = field(default_factory=list)
    converged: bool = False
    bound: str = "none"


def bisect(
    statistic: Callable[[float], tuple[float, dict[str, float]]],
    lower: float,
    upper: float,
    *,
    depth: int,
    target: float,
    tolerance: float,
    geometric: bool = False,
) -> Search:
    """The scale at which a statistic that grows with it reaches ``target`` ± ``tolerance``.

    ``statistic(scale)`` returns (value, record of the step). Too large a value lowers the upper end,
    too small raises the lower end; the midpoint is arithmetic or (``geometric``) √(lower·upper).
    After ``depth`` steps without reaching the target the last midpoint is returned, unconverged.

    ``bound`` flags a value within one final bisection step ((upper − lower)/2^depth, measured in
    log scale when geometric) of an end: the search kept (to its last step) that end of the interval,
    so the scale it looks for may lie at or beyond it (e.g. "upper" for a model whose accuracy
    nothing moves).
    """
    search = Search(value=lower)
    ends, value = (lower, upper), math.nan
    for _ in range(depth):
        mid = math.sqrt(lower * upper) if geometric else (lower + upper) / 2
        value, record = statistic(mid)
        search.steps.append(record)
        search.value = mid
        if abs(value - target) < tolerance:
            search.converged = True
            break
        if value > target:
            upper = mid
        else:
            lower = mid
    search.bound = _bound_hit(search, ends, depth, geometric, rising=not value > target)
    return search


def _bound_hit(search: Search, ends: tuple[float, float], depth: int, geometric: bool, rising: bool) -> str:
    """Which end of ``ends`` the search's value is within one final bisection step of (see bisect)."""
    scale = math.log if geometric else (lambda v: v)
    lo, hi, v = (scale(e) for e in (*ends, search.value))
    step = (hi - lo) / 2**depth * (1 + 1e-9)
    at_lower, at_upper = v - lo <= step, hi - v <= step
    if at_lower and at_upper:  # a one-step search: the end it was heading for, unless it converged
        return "none" if search.converged else ("upper" if rising else "lower")
    return "lower" if at_lower else "upper" if at_upper else "none"


@torch.no_grad()
def perturbed_accuracies(
    model: DeployedModel,
    examples: Examples,
    weights: Weights,
    noise: Weights,
    batched: bool = True,
    objective: Objective | None = None,
) -> torch.Tensor:
    """Accuracy on ``examples`` of w + noise[d] for every draw d (noise tensors have a leading draw
    dimension): correct predictions counted on the device batch by batch, float64 on the CPU. With a
    segmentation ``objective``: the mean per-image dice instead."""
    if len(examples) == 0:
        raise ValueError("perturbed_accuracies: no examples")
    draws = next(iter(noise.values())).shape[0]
    if objective is not None and objective.segmentation:
        return _perturbed_scores(model, examples, weights, noise, batched, objective)
    if batched:
        stacked = {n: weights[n].unsqueeze(0) + noise[n] for n in weights}
        correct: torch.Tensor | int = 0
        for xb, yb in examples:
            logits = vmap(lambda p, xb=xb: model(xb, p))(stacked)
            correct = correct + (logits.argmax(-1) == yb).sum(-1)
    else:
        counts = []
        for d in range(draws):
            perturbed = {n: weights[n] + noise[n][d] for n in weights}
            hits: torch.Tensor | int = 0
            for xb, yb in examples:
                hits = hits + (model(xb, perturbed).argmax(-1) == yb).sum()
            counts.append(hits)
        correct = torch.stack([torch.as_tensor(c) for c in counts])
    assert isinstance(correct, torch.Tensor)
    return correct.cpu().double() / len(examples)


def _perturbed_scores(
    model: DeployedModel,
    examples: Examples,
    weights: Weights,
    noise: Weights,
    batched: bool,
    objective: Objective,
) -> torch.Tensor:
    """Mean score (dice) of ``objective`` on ``examples`` of w + noise[d] for every draw d."""
    draws = next(iter(noise.values())).shape[0]
    if batched:
        stacked = {n: weights[n].unsqueeze(0) + noise[n] for n in weights}
        total: torch.Tensor | float = 0.0
        for xb, yb in examples:
            total = total + vmap(lambda p, xb=xb, yb=yb: objective.scores(model(xb, p), yb).sum())(stacked)
        assert isinstance(total, torch.Tensor)
        return total.cpu().double() / len(examples)
    sums = []
    for d in range(draws):
        perturbed = {n: weights[n] + noise[n][d] for n in weights}
        hit: torch.Tensor | float = 0.0
        for xb, yb in examples:
            hit = hit + objective.scores(model(xb, perturbed), yb).sum()
        sums.append(torch.as_tensor(hit, dtype=torch.float64).cpu())
    return torch.stack(sums) / len(examples)


def pacbayes_sigma(
    model: DeployedModel,
    examples: Examples,
    *,
    magnitude_eps: float | None = None,
    parameters: str = "all",
    lower: float = 0.0,
    upper: float = 2.0,
    depth: int = 15,
    draws: int = 10,
    target: float = 0.1,
    tolerance: float = 0.01,
    seed: int = 0,
    batched: bool = True,
    objective: Objective | None = None,
) -> Search:
    """σ′ of the PAC-Bayes flatness measures (plain, or magnitude-aware with ``magnitude_eps``) on
    ``examples``, perturbing ``parameters`` ("all" or "weights", see the module docstring); the
    accuracy is ``objective``'s score (segmentation: dice)."""
    weights = model.perturbable(parameters)
    base, _ = score_and_loss(model, examples, objective)
    gen = torch.Generator().manual_seed(seed)
    z = {
        n: torch.randn((draws, *w.shape), generator=gen, dtype=w.dtype).to(w.device)
        for n, w in weights.items()
    }

    def deviation(sigma: float) -> tuple[float, dict[str, float]]:
        if magnitude_eps is None:
            noise = {n: sigma * z[n] for n in weights}
        else:  # standard deviation √(σ² w² + ε²), not the variance
            noise = {n: torch.sqrt(sigma**2 * weights[n] ** 2 + magnitude_eps**2) * z[n] for n in weights}
        acc = float(perturbed_accuracies(model, examples, weights, noise, batched, objective).mean())
        return abs(acc - base), {"sigma": sigma, "accuracy": acc, "deviation": abs(acc - base)}

    return bisect(deviation, lower, upper, depth=depth, target=target, tolerance=tolerance)


def error_and_gradient(
    model: DeployedModel,
    examples: Examples,
    weights: Weights,
    u: Weights | None = None,
    objective: Objective | None = None,
) -> tuple[float, Weights | None]:
    """The error over ``examples`` of the network at ``weights`` + ``u`` and, when ``u`` is given, the
    gradient with respect to u of the mean cross-entropy over them, accumulated batch by batch
    (each batch's Σ CE / n, so one batch's graph at a time). A segmentation ``objective``: error
    1 − mean dice, gradient of the mean per-image training loss."""
    n = len(examples)
    if n == 0:
        raise ValueError("error_and_gradient: no examples")
    seg = objective is not None and objective.segmentation
    wrong: torch.Tensor | int = 0
    grads: list[torch.Tensor] | None = None
    for xb, yb in examples:
        if u is None:
            with torch.no_grad():
                logits = model(xb, weights)
        else:
            leaves = {k: t.detach().requires_grad_(True) for k, t in u.items()}
            with torch.enable_grad():
                logits = model(xb, {k: weights[k] + leaves[k] for k in weights})
                if seg:
                    assert objective is not None
                    loss = objective.losses(logits, yb).sum() / n
                else:
                    loss = F.cross_entropy(logits, yb, reduction="sum") / n
                batch_grads = torch.autograd.grad(loss, list(leaves.values()))
            if grads is None:
                grads = list(batch_grads)
            else:
                grads = [a + b for a, b in zip(grads, batch_grads, strict=True)]
        if seg:
            assert objective is not None
            wrong = wrong + (1 - objective.scores(logits.detach(), yb)).sum()
        else:
            wrong = wrong + (logits.detach().argmax(-1) != yb).sum()
    error = float(wrong) / n
    return error, (dict(zip(u, grads, strict=True)) if u is not None and grads is not None else None)


def _error(
    model: DeployedModel, examples: Examples, weights: Weights, u: Weights | None, objective: Objective | None
) -> tuple[float, Weights | None]:
    """:func:`error_and_gradient`, passing ``objective`` only when one is set (classification calls keep
    the four-argument form)."""
    if objective is None:
        return error_and_gradient(model, examples, weights, u)
    return error_and_gradient(model, examples, weights, u, objective)


def worst_case_increase(
    model: DeployedModel,
    examples: Examples,
    alpha: float,
    *,
    magnitude_eps: float | None = None,
    parameters: str = "all",
    steps: int = 10,
    seed: int = 0,
    base_error: float | None = None,
    objective: Objective | None = None,
) -> float:
    """max over |u_i| ≤ α (or α|w_i| + ε) of err(w + u) − err(w) on ``examples``, by projected
    sign-gradient ascent on ``parameters`` ("all" or "weights"); ``base_error``: err(w) if known (a
    search passes it once for all its steps)."""
    weights = model.perturbable(parameters)
    if base_error is None:
        base_error = _error(model, examples, weights, None, objective)[0]
    base_err = base_error
    bound = {
        n: (alpha * w.abs() + magnitude_eps) if magnitude_eps is not None else torch.full_like(w, alpha)
        for n, w in weights.items()
    }
    gen = torch.Generator().manual_seed(seed)
    u = {
        n: (torch.rand(w.shape, generator=gen, dtype=w.dtype).to(w.device) * 2 - 1) * bound[n]
        for n, w in weights.items()
    }
    # the ascent's step 2.5·bound/steps (2.5α/steps, or 2.5(α|w| + ε)/steps) and the box's low end, made once
    step = {n: 2.5 / steps * b for n, b in bound.items()}
    low = {n: -b for n, b in bound.items()}
    worst = 0.0
    for k in range(steps + 1):
        if k == steps:
            err, _ = _error(model, examples, {n: weights[n] + u[n] for n in weights}, None, objective)
            worst = max(worst, err - base_err)
            break
        err, grads = _error(model, examples, weights, u, objective)
        worst = max(worst, err - base_err)
        assert grads is not None
        u = {n: torch.clamp(u[n] + step[n] * g.sign(), min=low[n], max=bound[n]) for n, g in grads.items()}
    return worst


def average_case_increase(
    model: DeployedModel,
    examples: Examples,
    alpha: float,
    *,
    parameters: str = "all",
    draws: int = 10,
    seed: int = 0,
    objective: Objective | None = None,
) -> float:
    """Mean over u uniform in the box |u_i| ≤ α (on ``parameters``) of err(w + u) − err(w) on ``examples``."""
    weights = model.perturbable(parameters)
    base_err, _ = _error(model, examples, weights, None, objective)
    gen = torch.Generator().manual_seed(seed)
    noise = {
        n: (torch.rand((draws, *w.shape), generator=gen, dtype=w.dtype).to(w.device) * 2 - 1) * alpha
        for n, w in weights.items()
    }
    accuracies = perturbed_accuracies(model, examples, weights, noise, objective=objective)
    return float((1 - accuracies).mean()) - base_err


def worst_case_alpha(
    model: DeployedModel,
    examples: Examples,
    *,
    magnitude_eps: float | None = None,
    parameters: str = "all",
    lower: float = 1e-5,
    upper: float = 1.0,
    depth: int = 15,
    steps: int = 10,
    target: float = 0.1,
    tolerance: float = 0.01,
    seed: int = 0,
    objective: Objective | None = None,
) -> Search:
    """α′ of the worst-case sharpness measures (plain, or magnitude-aware with ``magnitude_eps``) on
    ``examples``, perturbing ``parameters`` ("all" or "weights").

    The bisection is geometric (midpoint √(lower·upper)): α′ ranges over orders of magnitude
    between models, and a linear bisection spends most of its steps far above it. The unperturbed
    error err(w) is measured once for all its steps.
    """
    if lower <= 0:
        raise ValueError("the geometric bisection of worst_case_alpha needs lower > 0")
    base_error, _ = _error(model, examples, model.perturbable(parameters), None, objective)

    def increase(alpha: float) -> tuple[float, dict[str, float]]:
        value = worst_case_increase(
            model,
            examples,
            alpha,
            magnitude_eps=magnitude_eps,
            parameters=parameters,
            steps=steps,
            seed=seed,
            base_error=base_error,
            objective=objective,
        )
        return value, {"alpha": alpha, "increase": value}

    return bisect(increase, lower, upper, depth=depth, target=target, tolerance=tolerance, geometric=True)


def _vec(weights: Weights) -> torch.Tensor:
    return torch.cat([w.reshape(-1) for w in weights.values()]).double()


def adjust(name: str, value: float, m: int) -> float:
    """Jiang et al.'s size normalization: √(value/m), or ½(value − log m) for log-measures; m is the
    training-set size."""
    if name.startswith("log_") or ".log_" in name:
        return 0.5 * (value - math.log(m))
    return math.sqrt(value / m) if value >= 0 else float("nan")


def pacbayes_measures(
    weights: Weights, init: Weights, sigma: float, mag_sigma: float, m: int, magnitude_eps: float
) -> dict[str, float]:
    """Jiang Eq. 48, 49, 53 (plain) and 56, 57, 61 (magnitude-aware), size-normalized; ``weights`` and
    ``init`` are the conv/linear weights, m the training-set size."""
    w, d = _vec(weights), _vec(weights) - _vec(init)
    omega = w.numel()

    def bound(ref: torch.Tensor) -> float:
        return float(ref.norm() ** 2 / (4 * sigma**2) + math.log(m / sigma) + 10)

    def mag_bound(ref: torch.Tensor) -> float:
        num = magnitude_eps**2 + (mag_sigma**2 + 1) * ref.norm() ** 2 / omega
        den = magnitude_eps**2 + mag_sigma**2 * d**2  # (w_i − w0_i)² for both, as papers.md §7 states
        return float(0.25 * torch.log(num / den).sum() + math.log(m / mag_sigma) + 10)

    raw = {
        "pacbayes.init": bound(d),  # Eq. 48
        "pacbayes.orig": bound(w),  # Eq. 49
        "pacbayes.flatness": 1 / sigma**2,  # Eq. 53
        "pacbayes.mag.init": mag_bound(d),  # Eq. 56
        "pacbayes.mag.orig": mag_bound(w),  # Eq. 57
        "pacbayes.mag.flatness": 1 / mag_sigma**2,  # Eq. 61
    }
    return {k: adjust(k, v, m) for k, v in raw.items()}


def sharpness_measures(
    weights: Weights, init: Weights, alpha: float, mag_alpha: float, m: int
) -> dict[str, float]:
    """Worst-case sharpness measures (papers.md §7 [M]: reconstruction), size-normalized; ``weights``
    and ``init`` are the conv/linear weights, m the training-set size."""
    w, d = _vec(weights), _vec(weights) - _vec(init)
    omega = w.numel()

    def bound(ref: torch.Tensor) -> float:
        return float(ref.norm() ** 2 * math.log(2 * omega) / (4 * alpha**2) + math.log(m / alpha) + 10)

    raw = {
        "sharpness.init": bound(d),
        "sharpness.orig": bound(w),
        "sharpness.flatness": 1 / alpha**2,
        "sharpness.mag.flatness": 1 / mag_alpha**2,
    }
    return {k: adjust(k, v, m) for k, v in raw.items()}
