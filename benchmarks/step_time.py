"""Training-step time of LSQ W4A4 QAT relative to float training, on CPU, measured side by side.

For each model (the MLP and the NiN on 8x8 digits-shaped input) and each execution mode (eager,
and torch.compile of the whole model as ``runtime.compile: true`` does), the float and the LSQ W4A4
variant are timed in interleaved rounds: every round
times K optimizer steps of each variant back to back, so machine noise hits both alike. The ratio
is computed per round (LSQ / float) and reported as median and interquartile range.

    python benchmarks/step_time.py                 # defaults: 15 rounds of 20 steps, 1 thread
    python benchmarks/step_time.py --modes eager   # eager only

Target (issue 2): LSQ W4A4 step <= 1.2x the float step for both models.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from qgen.models import build_model
from qgen.quant import init_quantizers

MODELS = {
    "mlp 64-512-512-10": {"name": "mlp", "depth": 2, "width": 512},
    "nin depth 2, 100 ch": {"name": "nin", "depth": 2, "width": 4, "base_width": 25},
}
QUANT = {
    "float": {"method": "float"},
    "lsq_w4a4": {
        "method": "lsq",
        "weight_bits": 4,
        "act_bits": 4,
        "per_channel": False,
        "first_layer": "8bit",
        "last_layer": "8bit",
    },
}


def make_step(model_spec: dict[str, Any], quant: dict[str, Any], batch: int, mode: str):
    torch.manual_seed(0)
    model = build_model({"model": model_spec, "quant": quant}, (1, 8, 8), 10)
    x = torch.randn(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    init_quantizers(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fwd = torch.compile(model) if mode == "compiled" else model

    def step() -> None:
        loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5 if mode == "eager" else 10):  # warm-up (and compilation)
        step()
    return step


def time_steps(step, k: int) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    return (time.perf_counter() - t0) / k


def interleaved(steps: dict[str, Any], rounds: int, k: int) -> dict[str, list[float]]:
    """Seconds per step of every variant, ``rounds`` times ``k`` steps, the variants taking turns in
    each round so that a slow phase of the machine hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, k))
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = args.modes
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
        f"{args.rounds} rounds x {args.steps} steps, interleaved"
    )
    print(
        f"{'model':<22} {'mode':<9} {'float ms/step':>14} {'lsq ms/step':>12} "
        f"{'ratio median':>13} {'ratio IQR':>15}"
    )
    for label, model_spec in MODELS.items():
        for mode in modes:
            steps = {q: make_step(model_spec, spec, args.batch, mode) for q, spec in QUANT.items()}
            times = interleaved(steps, args.rounds, args.steps)
            ratios = [b / a for a, b in zip(times["float"], times["lsq_w4a4"], strict=True)]
            lo, med, hi = quartiles(ratios)
            print(
                f"{label:<22} {mode:<9} {1e3 * statistics.median(times['float']):>14.3f} "
                f"{1e3 * statistics.median(times['lsq_w4a4']):>12.3f} {med:>12.2f}x {lo:>7.2f}–{hi:.2f}x"
            )


if __name__ == "__main__":
    main()
