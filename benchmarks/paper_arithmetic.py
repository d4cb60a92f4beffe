"""Training-step cost of BinaryConnect and of the 2014 low-precision arithmetic, each against its own float
baseline, on CPU, measured side by side.

Every variant runs the training step the pipeline runs (qgen.train.loop.batch_step: the model's loss, the
optimizer of the run spec, BinaryConnect's clipping, dynamic fixed point's range bookkeeping), on
digits-shaped 8x8 input, in interleaved rounds (each round times K steps of every variant back to back);
ratios are per round against the family's float baseline, reported as median and interquartile range.

    python benchmarks/paper_arithmetic.py                # 15 rounds of 20 steps, batch 100, 1 thread

- BinaryConnect family: MLP 64-256-256-256-10 with BatchNorm, squared hinge, Adam (the binaryconnect
  experiment); float vs BC deterministic vs BC stochastic.
- Low-precision family: the maxout MLP 2 x 240 x 5 (the paper's PI-MNIST net) with the reference's SGD;
  single float (no rounding) vs half float vs fixed point 20/20 vs dynamic fixed point 10/12.
Emulating an arithmetic in float32 costs extra element-wise passes (rounding, saturation, overflow
counting); nothing here claims the speed of real low-precision hardware.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from step_time import interleaved, quartiles

from qgen.models import build_model
from qgen.train.loop import batch_step
from qgen.train.optim import build_optimizer, set_lr

BC_MODEL = {
    "name": "mlp",
    "depth": 3,
    "width": 256,
    "batch_norm": True,
    "output_batch_norm": True,
    "init": "glorot",
}
BC_OPTIM = {"name": "adam", "lr": 0.01}
MAXOUT_MODEL = {"name": "maxout", "depth": 2, "width": 240, "pieces": 5, "dropout": 0.5, "input_dropout": 0.2}
MAXOUT_OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.5, "max_col_norm": 1.9365}
FAMILIES: dict[str, tuple[dict, dict, str, dict[str, dict[str, Any]]]] = {
    "BinaryConnect MLP 3x256": (
        BC_MODEL,
        BC_OPTIM,
        "sq_hinge",
        {
            "float": {"method": "float"},
            "BC det.": {"method": "binary", "stochastic": False},
            "BC stoch.": {"method": "binary", "stochastic": True},
        },
    ),
    "maxout 2x240x5": (
        MAXOUT_MODEL,
        MAXOUT_OPTIM,
        "ce",
        {
            "float": {"method": "float"},
            "half": {"method": "half"},
            "FXP 20/20": {"method": "fixed", "prop_bits": 20, "update_bits": 20, "initial_range": 5},
            "DFXP 10/12": {
                "method": "dynamic_fixed",
                "prop_bits": 10,
                "update_bits": 12,
                "initial_range": 5,
                "range_update_every": 100,
                "max_overflow": 1e-4,
            },
        },
    ),
}


def make_step(model_spec: dict, optim: dict, loss: str, quant: dict, batch: int):
    torch.manual_seed(0)
    model = build_model({"model": model_spec, "quant": quant}, (1, 8, 8), 10).train()
    optimizer = build_optimizer(model, optim)
    set_lr(optimizer, optim["lr"])
    step = batch_step(model, optimizer, loss)
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    for _ in range(5):  # warm-up
        step(x, y)
    return lambda: step(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
        f"{args.rounds} rounds x {args.steps} steps, interleaved"
    )
    print(f"{'family':<25} {'variant':<11} {'ms/step':>9} {'vs float':>9} {'IQR':>13}")
    for family, (model_spec, optim, loss, variants) in FAMILIES.items():
        steps = {name: make_step(model_spec, optim, loss, q, args.batch) for name, q in variants.items()}
        times = interleaved(steps, args.rounds, args.steps)
        for name in variants:
            ratios = [b / a for a, b in zip(times["float"], times[name], strict=True)]
            lo, med, hi = quartiles(ratios)
            print(
                f"{family:<25} {name:<11} {1e3 * statistics.median(times[name]):>9.3f} "
                f"{med:>8.2f}x {lo:>6.2f}–{hi:.2f}x"
            )


if __name__ == "__main__":
    main()
