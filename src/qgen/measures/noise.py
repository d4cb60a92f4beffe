"""Quantization-noise statistics (QGen §1a, QReg): θ = Q(v) − v for weights and activations.

QGen and QReg model quantization as additive noise θ ~ U(−Δ/2, Δ/2), independent of v, with
Var(θ) = Δ²/12. For every quantized layer this module measures how well that holds:

- ``step``: Δ (mean over channels for per-channel steps), ``bits``;
- ``mean``, ``var``: moments of θ over the unclipped elements (|θ| ≤ Δ/2);
- ``var_ratio``: Var(θ) / mean(Δ²/12) over the unclipped elements (1 under the model),
  ``var_ratio_all`` over all elements (clipping adds error beyond Δ/2);
- ``ks``, ``ks_pvalue``: Kolmogorov–Smirnov statistic of θ/Δ against U(−½, ½), unclipped elements;
- ``corr``: Pearson correlation of θ with v. The independence assumption is an approximation: for v
  spread uniformly over L levels, θ = −(v − q) gives corr = −1/L exactly, so it holds only when many
  levels are in use;
- ``clipped_fraction``: fraction of elements outside the grid's range, where |θ| > Δ/2;
- the weight noise is the one training applies (``Quantizer.train_quantize``): for stochastic
  BinaryConnect a (seeded) Bernoulli draw, whose θ has Var(θ | w) = H² − w², not Δ²/12;
- activations also report ``zero_fraction`` (post-ReLU zeros are represented exactly, θ = 0).

Models that quantize activations at their own sites (:class:`~qgen.quant.layers.ActivationQuant`, the
U-Net's BatchNorm outputs; qgen.quant.layers.activation_sites) get one row per site after the layers'
rows (``site: true``, ``act`` only, depth counted on from the layers'), as the same statistics of θ.

Propagation (QReg): ``relative_perturbation`` of each quantized layer's output between the float
forward (all quantizers off, latent weights) and the quantized forward, ‖y_q − y_fp‖/‖y_fp‖, by depth.

Data: both read ``noise.examples`` training examples as :class:`~qgen.data.batches.Examples`, in
mini-batches. The activation statistics are taken over the values of all batches together: each
batch's quantizer inputs and outputs are moved to the CPU as they are captured, so device memory is
bounded by the batch (CPU memory holds noise.examples × the network's activations; the KS statistic
needs them all). The eval-mode activation step does not depend on the batch (learned, frozen running
range or fixed), so it is read on the first batch. The propagation sums ‖y_q − y_fp‖² and ‖y_fp‖²
over the batches (float64) and takes the ratio: the whole-batch value. The weight noise is drawn on a
CPU copy of the quantizer with a CPU generator (seeded by depth), so CPU and CUDA draw the same
stochastic binarization.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from qgen.data.batches import Examples
from qgen.measures.deployed import quantizers_disabled
from qgen.quant import Quantizer, quant_layers
from qgen.quant.layers import activation_sites


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation in float64 with torch's own reductions (numpy's corrcoef goes through the BLAS,
    whose kernels differ between CPU models: bits would too)."""
    a0, b0 = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a0 * b0).sum() / torch.sqrt((a0 * a0).sum() * (b0 * b0).sum()))


def ks_uniform(values: np.ndarray) -> tuple[float, float]:
    """Kolmogorov–Smirnov statistic of ``values`` against U(−½, ½) and its asymptotic p-value.

    D = max_i max(i/n − F(x_(i)), F(x_(i)) − (i−1)/n); p from the Kolmogorov distribution with
    Stephens' correction λ = (√n + 0.12 + 0.11/√n)·D. Written out to keep scipy.stats (about a
    second of import time per measure job) off this path; the tests compare it with scipy.
    """
    u = np.sort(np.clip(values + 0.5, 0.0, 1.0))
    n = len(u)
    i = np.arange(1, n + 1)
    d = float(max((i / n - u).max(), (u - (i - 1) / n).max()))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    k = np.arange(1, 101)
    p = (
        float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0.0, 1.0))
        if lam > 0
        else 1.0
    )
    return d, p


def noise_statistics(
    v: torch.Tensor, q: torch.Tensor, step: torch.Tensor, qn: float | torch.Tensor, qp: float | torch.Tensor
) -> dict[str, float]:
    """Statistics of θ = q − v for values ``v`` quantized to ``q`` with step ``step`` (broadcastable) on a
    grid from −qn·step to qp·step (``Quantizer.level_bounds``; tensors for a shifted grid)."""
    v, q = v.detach().double(), q.detach().double()
    delta = step.detach().double().expand_as(v)
    theta = q - v
    x = v / delta
    unclipped = (x >= -qn - 0.5) & (x <= qp + 0.5)
    th, dl, vv = theta[unclipped], delta[unclipped], v[unclipped]
    out: dict[str, float] = {
        "step": float(step.double().mean()),
        "n": float(theta.numel()),
        "sum_sq": float((theta**2).sum()),  # ‖θ‖², against n·mean(Δ²)/12 under the noise model
        "predicted_sum_sq": float((delta**2).sum() / 12),
        "clipped_fraction": float(1 - unclipped.double().mean()),
        "var_ratio_all": float(theta.var() / (delta**2 / 12).mean()) if theta.numel() > 1 else float("nan"),
    }
    if th.numel() > 2:
        ks_stat, ks_p = ks_uniform((th / dl).cpu().numpy())
        corr = pearson(th, vv) if th.std() > 0 and vv.std() > 0 else 0.0
        out.update(
            mean=float(th.mean()),
            var=float(th.var()),
            var_ratio=float(th.var() / (dl**2 / 12).mean()),
            ks=ks_stat,
            ks_pvalue=ks_p,
            corr=float(corr),
        )
    else:
        out.update(
            mean=float("nan"),
            var=float("nan"),
            var_ratio=float("nan"),
            ks=float("nan"),
            ks_pvalue=float("nan"),
            corr=float("nan"),
        )
    return out


def _to_cpu(value: float | torch.Tensor) -> float | torch.Tensor:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


@torch.no_grad()
def weight_noise(quantizer: Quantizer, weight: torch.Tensor, seed: int) -> dict[str, float]:
    """Statistics of the training-time weight noise θ = Q_train(w) − w, computed on the CPU (a copy of
    the quantizer, a CPU generator seeded by ``seed``), so the draws are the same on every device."""
    q_cpu = copy.deepcopy(quantizer).cpu()
    w = weight.detach().cpu()
    q = q_cpu.train_quantize(w, generator=torch.Generator().manual_seed(seed))
    return {"bits": q_cpu.bits, **noise_statistics(w, q, q_cpu.step_for(w), *q_cpu.level_bounds(w))}


@torch.no_grad()
def layer_noise(model: nn.Module, examples: Examples) -> list[dict[str, Any]]:
    """Weight and activation noise of every quantized layer on ``examples`` (model in eval mode)."""
    model.eval()
    captured: dict[str, dict[str, Any]] = {}

    def capture(name: str, quantizer: Quantizer):
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            a = args[0].detach()
            entry = captured.setdefault(name, {"v": [], "q": []})
            if "step" not in entry:  # eval-mode activation steps do not depend on the batch
                entry["step"] = quantizer.step_for(a).detach().cpu()
                entry["bounds"] = tuple(_to_cpu(b) for b in quantizer.level_bounds(a))
            entry["v"].append(a.cpu())
            entry["q"].append(out.detach().cpu())

        return hook

    hooks = [
        layer.input_quant.register_forward_hook(capture(name, layer.input_quant))
        for name, layer in quant_layers(model)
        if isinstance(layer.input_quant, Quantizer)
    ]
    sites = [(name, site.input_quant) for name, site in activation_sites(model)]
    sites = [(name, q) for name, q in sites if isinstance(q, Quantizer)]
    hooks += [q.register_forward_hook(capture(f"site:{name}", q)) for name, q in sites]
    try:
        for xb, _ in examples:
            model(xb)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for depth, (name, layer) in enumerate(quant_layers(model)):
        row: dict[str, Any] = {"layer": name, "depth": depth}
        if isinstance(layer.weight_quant, Quantizer):
            row["weight"] = weight_noise(layer.weight_quant, layer.weight, depth)
        aq = layer.input_quant
        if isinstance(aq, Quantizer) and name in captured:
            entry = captured.pop(name)
            a, qa = torch.cat(entry["v"]), torch.cat(entry["q"])
            stats_a = noise_statistics(a, qa, entry["step"], *entry["bounds"])
            row["act"] = {"bits": aq.bits, "zero_fraction": float((a == 0).double().mean()), **stats_a}
        rows.append(row)
    for name, aq in sites:
        entry = captured.pop(f"site:{name}", None)
        if entry is None:  # a site the forward never reached
            continue
        a, qa = torch.cat(entry["v"]), torch.cat(entry["q"])
        stats_a = noise_statistics(a, qa, entry["step"], *entry["bounds"])
        act = {"bits": aq.bits, "zero_fraction": float((a == 0).double().mean()), **stats_a}
        rows.append({"layer": name, "depth": len(rows), "site": True, "act": act})
    return rows


@torch.no_grad()
def propagation(model: nn.Module, examples: Examples) -> list[dict[str, Any]]:
    """Relative output perturbation ‖y_q − y_fp‖ / ‖y_fp‖ of each quantized layer on ``examples``, by
    depth (QReg); the squared norms are summed over the batches."""
    model.eval()
    layers = list(quant_layers(model))

    def outputs(xb: torch.Tensor) -> list[torch.Tensor]:
        captured: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda _m, _a, out: captured.append(out.detach()))
            for _, layer in layers
        ]
        try:
            model(xb)
        finally:
            for h in hooks:
                h.remove()
        return captured

    diff_sq = [0.0] * len(layers)
    ref_sq = [0.0] * len(layers)
    for xb, _ in examples:
        quantized = outputs(xb)
        with quantizers_disabled(model):
            full_precision = outputs(xb)
        for i, (q, f) in enumerate(zip(quantized, full_precision, strict=True)):
            diff_sq[i] += float(((q.double() - f.double()) ** 2).sum())
            ref_sq[i] += float((f.double() ** 2).sum())
    return [
        {
            "layer": name,
            "depth": depth,
            "relative_perturbation": math.sqrt(diff_sq[depth]) / max(math.sqrt(ref_sq[depth]), 1e-12),
        }
        for depth, (name, _) in enumerate(layers)
    ]


def summarize(rows: list[dict[str, Any]], prop: list[dict[str, Any]]) -> dict[str, float]:
    """Scalar summaries for the runs table: means over layers, and the perturbation at the output."""
    out: dict[str, float] = {}
    for kind in ("weight", "act"):
        values = [r[kind] for r in rows if kind in r]
        for key in ("var_ratio", "var_ratio_all", "ks", "corr", "clipped_fraction"):
            vals = [v[key] for v in values if np.isfinite(v.get(key, np.nan))]
            out[f"noise.{kind}.{key}"] = float(np.mean(vals)) if vals else float("nan")
    weights = [r["weight"] for r in rows if "weight" in r]
    if weights:
        out["noise.weight.sum_sq"] = float(sum(w["sum_sq"] for w in weights))
        out["noise.weight.predicted_sum_sq"] = float(sum(w["predicted_sum_sq"] for w in weights))
    if prop:
        out["noise.propagation.output"] = prop[-1]["relative_perturbation"]
        out["noise.propagation.mean"] = float(np.mean([p["relative_perturbation"] for p in prop]))
    return out
