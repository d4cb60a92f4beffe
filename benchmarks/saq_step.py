"""Cost of a SAM/SAQ step (issue 17, item 6): SAQ against the plain LSQ W4A4 step, SAM against the float step.

Every variant runs the pipeline's own step (qgen.train.loop.batch_step with the spec's ``optim.sam``, on the
optimizer qgen.train.optim.build_optimizer makes) on a fixed batch, for the models of
benchmarks/step_time.py (the digits MLP 64-512-512-10 and the NiN), in interleaved rounds: every round times
K steps of each variant back to back, so machine noise hits them alike. Ratios (SAM / its plain step) are
computed per round and reported as median and interquartile range. A SAM step is two forward/backward
passes, so about 2x is what to expect; the rest is the perturbation's own work (norm, copies, hooks). On CUDA
(when available, or ``--device cuda``) every step ends with a synchronization, the same for every variant.

    python benchmarks/saq_step.py                     # defaults: 11 rounds of 10 steps, 1 thread
    python benchmarks/saq_step.py --cases 1 2 3       # every SAQ case
    python benchmarks/saq_step.py --models mlp        # the MLP only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_time import MODELS, QUANT, interleaved, quartiles

from qgen.models import build_model
from qgen.quant import init_quantizers
from qgen.train.loop import batch_step
from qgen.train.optim import build_optimizer

OPTIM = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
RHO = 0.1  # the reference SAQ code's default rho


def make_step(
    model_spec: dict[str, Any], quant: dict[str, Any], sam: dict[str, Any] | None, batch: int, device: str
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model({"model": model_spec, "quant": quant}, (1, 8, 8), 10).to(device)
    x = torch.randn(batch, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    init_quantizers(model, x)
    model.train()
    step = batch_step(model, build_optimizer(model, OPTIM), sam=sam)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run() -> None:
        step(x, y)
        sync()

    for _ in range(5):  # warm-up
        run()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", type=int, nargs="+", default=[3], choices=[1, 2, 3])
    parser.add_argument("--models", nargs="+", default=["mlp", "nin"], choices=["mlp", "nin"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {label: spec for label, spec in MODELS.items() if spec["name"] in args.models}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} thread(s)"
    print(
        f"torch {torch.__version__}, {args.device} ({where}), batch {args.batch}, rho {RHO}, "
        f"{args.rounds} rounds x {args.steps} steps, interleaved"
    )
    print(f"{'model':<22} {'step':<22} {'plain ms':>9} {'SAM ms':>9} {'ratio median':>13} {'ratio IQR':>15}")
    for label, model_spec in models.items():
        pairs = {"SAM, float": ("float", {"rho": RHO}, "float")}
        for case in args.cases:
            pairs[f"SAQ case {case}, LSQ W4A4"] = ("lsq_w4a4", {"rho": RHO, "case": case}, "lsq_w4a4")
        steps: dict[str, Callable[[], None]] = {
            "float": make_step(model_spec, QUANT["float"], None, args.batch, args.device),
            "lsq_w4a4": make_step(model_spec, QUANT["lsq_w4a4"], None, args.batch, args.device),
        }
        for name, (quant, sam, _) in pairs.items():
            steps[name] = make_step(model_spec, QUANT[quant], sam, args.batch, args.device)
        times = interleaved(steps, args.rounds, args.steps)
        for name, (_, _, plain) in pairs.items():
            ratios = [b / a for a, b in zip(times[plain], times[name], strict=True)]
            lo, med, hi = quartiles(ratios)
            print(
                f"{label:<22} {name:<22} {1e3 * statistics.median(times[plain]):>9.3f} "
                f"{1e3 * statistics.median(times[name]):>9.3f} {med:>12.2f}x {lo:>7.2f}–{hi:.2f}x"
            )


if __name__ == "__main__":
    main()
