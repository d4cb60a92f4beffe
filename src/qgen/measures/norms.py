"""Norm- and margin-based measures of Jiang et al. (2019), keyed by their equation numbers.

Computed on the measured weights (by default the effective, BN-folded weights; conv kernels are
reshaped to (out, in·kh·kw) matrices, whose spectral norm is the approximation the reference code
uses). ``init`` is the same transform applied to the weights at initialization. d is the number of
layers, m the training-set size (also when the margin is taken on a subset of it), γ the
10th-percentile margin on the examples given (per-example margins collected batch by batch, then the
k-th smallest, k = n // 10, over all of them). Values are size-normalized as in the reference code
(√(v/m), or ½(v − log m) for log-measures).

| key | Eq. | definition |
| --- | --- | --- |
| norm.params | 20 | number of weights ω (not normalized) |
| norm.inverse_margin | 22 | 1/γ² |
| norm.log_spec_init_main | 29 | log Π‖W‖₂² − 2 log γ + log Σ ‖W−W₀‖_F²/‖W‖₂² |
| norm.log_spec_orig_main | 30 | log Π‖W‖₂² − 2 log γ + log Σ ‖W‖_F²/‖W‖₂² |
| norm.log_prod_of_spec_over_margin | 31 | log Π‖W‖₂² − 2 log γ |
| norm.log_prod_of_spec | 32 | log Π‖W‖₂² |
| norm.fro_over_spec | 33 | Σ ‖W‖_F²/‖W‖₂² |
| norm.log_sum_of_spec_over_margin | 34 | log d + (log Π‖W‖₂² − 2 log γ)/d |
| norm.log_sum_of_spec | 35 | log d + log Π‖W‖₂² / d |
| norm.log_prod_of_fro_over_margin | 36 | log Π‖W‖_F² − 2 log γ |
| norm.log_prod_of_fro | 37 | log Π‖W‖_F² |
| norm.log_sum_of_fro_over_margin | 38 | log d + (log Π‖W‖_F² − 2 log γ)/d |
| norm.log_sum_of_fro | 39 | log d + log Π‖W‖_F² / d |
| norm.fro_dist | 40 | Σ ‖W − W₀‖_F² (distance from initialization) |
| norm.dist_spec_init | 41 | Σ ‖W − W₀‖₂² |
| norm.param_norm | 42 | Σ ‖W‖_F² |
| norm.path_norm_over_margin | 43 | path norm / γ² |
| norm.path_norm | 44 | Σ over input-output paths of Π w² (all parameters squared, forward of ones) |

Segmentation models (a segmentation :class:`qgen.metrics.Objective`; reconstruction, no paper defines
it): a pixel is a binary classification with logits (0, z), so its margin is the signed logit
(2t − 1)·z; an image's margin is the 10th-percentile (k = pixels // 10) of its pixels' margins and γ
the 10th percentile of those over the images (held per image, so memory is one value per image).

The path norm is computed on the float network (activation quantizers off), as it is defined for
ReLU networks; ``norm.l2`` and ``norm.l2_dist`` (‖w‖₂, ‖w − w₀‖₂, not normalized) are added.
"""

from __future__ import annotations

import copy
import math

import torch

from qgen.data.batches import Examples
from qgen.measures.deployed import DeployedModel, Weights, quantizers_disabled
from qgen.measures.sharpness import adjust
from qgen.metrics import Objective


def _log(value: float) -> float:
    """log that gives −inf for 0 (e.g. no distance from initialization) instead of raising."""
    return math.log(value) if value > 0 else float("-inf")


@torch.no_grad()
def margin(model: DeployedModel, examples: Examples, objective: Objective | None = None) -> float:
    """10th-percentile (k = n // 10) of the output margins on ``examples``, as in the reference code
    (segmentation: of the images' 10th-percentile pixel margins, module docstring)."""
    margins = []
    segmentation = objective is not None and objective.segmentation
    from qgen.train.losses import mask_like

    for xb, yb in examples:
        logits = model(xb).double()
        if segmentation:
            signed = ((2 * mask_like(logits, yb) - 1) * logits).flatten(1)
            k = max(signed.shape[1] // 10, 1)
            margins.append(signed.kthvalue(k, dim=1).values)
            continue
        rows = torch.arange(len(yb), device=logits.device)
        correct = logits[rows, yb].clone()
        logits[rows, yb] = float("-inf")
        margins.append(correct - logits.max(dim=1).values)
    if not margins:
        raise ValueError("margin: no examples")
    every = torch.cat(margins).cpu()  # n values: the k-th one picked the same way on every device
    return float(every.kthvalue(max(len(every) // 10, 1)).values.abs())


@torch.no_grad()
def path_norm(model: DeployedModel, input_shape: tuple[int, ...]) -> float:
    """Eq. 44: the float network with every parameter squared, applied to an input of ones (on the
    model's device), summed over the outputs (reference code ``_path_norm``)."""
    net = copy.deepcopy(model.module).eval()
    for p in net.parameters():
        p.pow_(2)
    like = next(net.parameters())
    with quantizers_disabled(net):
        out = net(torch.ones((1, *input_shape), dtype=like.dtype, device=like.device))
    return float(out.double().sum())


@torch.no_grad()
def norm_measures(
    model: DeployedModel,
    init: Weights,
    examples: Examples,
    input_shape: tuple[int, ...],
    *,
    m: int,
    objective: Objective | None = None,
) -> dict[str, float]:
    """Eq. 20-44 of the measured weights; the margin on ``examples``, size normalization by ``m``, the
    training-set size."""
    weights = model.weights()
    d = len(weights)
    mats = [w.double().reshape(w.shape[0], -1) for w in weights.values()]
    dists = [(w.double() - init[n].double()).reshape(w.shape[0], -1) for n, w in weights.items()]
    fro = torch.stack([t.norm() ** 2 for t in mats])
    spec = torch.stack([torch.linalg.matrix_norm(t, ord=2) ** 2 for t in mats])
    dist_fro = torch.stack([t.norm() ** 2 for t in dists])
    dist_spec = torch.stack([torch.linalg.matrix_norm(t, ord=2) ** 2 for t in dists])
    gamma = margin(model, examples, objective)
    log_gamma2 = 2 * math.log(max(gamma, 1e-12))
    log_prod_spec = float(spec.log().sum())
    log_prod_fro = float(fro.log().sum())
    fro_over_spec = float((fro / spec).sum())
    pn = path_norm(model, input_shape)
    raw = {
        "norm.inverse_margin": 1 / max(gamma, 1e-12) ** 2,  # 22
        "norm.log_spec_init_main": log_prod_spec - log_gamma2 + _log(float((dist_fro / spec).sum())),  # 29
        "norm.log_spec_orig_main": log_prod_spec - log_gamma2 + _log(fro_over_spec),  # 30
        "norm.log_prod_of_spec_over_margin": log_prod_spec - log_gamma2,  # 31
        "norm.log_prod_of_spec": log_prod_spec,  # 32
        "norm.fro_over_spec": fro_over_spec,  # 33
        "norm.log_sum_of_spec_over_margin": math.log(d) + (log_prod_spec - log_gamma2) / d,  # 34
        "norm.log_sum_of_spec": math.log(d) + log_prod_spec / d,  # 35
        "norm.log_prod_of_fro_over_margin": log_prod_fro - log_gamma2,  # 36
        "norm.log_prod_of_fro": log_prod_fro,  # 37
        "norm.log_sum_of_fro_over_margin": math.log(d) + (log_prod_fro - log_gamma2) / d,  # 38
        "norm.log_sum_of_fro": math.log(d) + log_prod_fro / d,  # 39
        "norm.fro_dist": float(dist_fro.sum()),  # 40
        "norm.dist_spec_init": float(dist_spec.sum()),  # 41
        "norm.param_norm": float(fro.sum()),  # 42
        "norm.path_norm_over_margin": pn / max(gamma, 1e-12) ** 2,  # 43
        "norm.path_norm": pn,  # 44
    }
    out = {k: adjust(k, v, m) for k, v in raw.items()}
    w_vec = torch.cat([w.double().reshape(-1) for w in weights.values()])
    i_vec = torch.cat([init[n].double().reshape(-1) for n in weights])
    out.update(
        {
            "norm.params": float(w_vec.numel()),  # 20
            "norm.l2": float(w_vec.norm()),
            "norm.l2_dist": float((w_vec - i_vec).norm()),
            "norm.margin": gamma,
        }
    )
    return out


EQUATIONS = {
    "norm.params": 20,
    "norm.inverse_margin": 22,
    "norm.log_spec_init_main": 29,
    "norm.log_spec_orig_main": 30,
    "norm.log_prod_of_spec_over_margin": 31,
    "norm.log_prod_of_spec": 32,
    "norm.fro_over_spec": 33,
    "norm.log_sum_of_spec_over_margin": 34,
    "norm.log_sum_of_spec": 35,
    "norm.log_prod_of_fro_over_margin": 36,
    "norm.log_prod_of_fro": 37,
    "norm.log_sum_of_fro_over_margin": 38,
    "norm.log_sum_of_fro": 39,
    "norm.fro_dist": 40,
    "norm.dist_spec_init": 41,
    "norm.param_norm": 42,
    "norm.path_norm_over_margin": 43,
    "norm.path_norm": 44,
    "pacbayes.init": 48,
    "pacbayes.orig": 49,
    "pacbayes.flatness": 53,
    "pacbayes.mag.init": 56,
    "pacbayes.mag.orig": 57,
    "pacbayes.mag.flatness": 61,
}
