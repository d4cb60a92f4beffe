"""Speed of the PAC-Bayes σ′ search: Monte-Carlo draws evaluated in one batched pass vs one at a time.

For each default model (MLP 2x32 and 2x256, LSQ W4A4, trained briefly on the digits training set), the
same σ′ search (same seed, hence the same standard-normal draws) runs three ways, timed in
interleaved rounds:

- batched: all draws of a bisection step in one ``torch.func.vmap`` pass over stacked weights (qgen);
- one-at-a-time: one functional forward per draw and batch (batches of ``--batch-size``, 1024 as
  ``measures.batch_size``: the 1347 digits training images are two batches);
- reference-style: one draw at a time the way the reference code of Jiang et al. / Dziugaite et
  al. does it (deep-copy the model, add the noise in place, evaluate in DataLoader mini-batches of 128).

It prints the median time of each, the speed-ups of the batched search, and the largest difference
in σ′ between the implementations (they evaluate the same draws, so σ′ must agree within the
bisection tolerance).

    python benchmarks/pacbayes_draws.py [--rounds 3] [--draws 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from qgen import runtime
from qgen.data import load_prepared, prepare
from qgen.data.batches import Examples
from qgen.data.run_data import RunData, open_run_data
from qgen.experiments import normalize_spec
from qgen.measures import sharpness
from qgen.measures.deployed import DeployedModel, deploy
from qgen.metrics import accuracy_and_ce
from qgen.train import train_run

WIDTHS = (32, 256)


def trained_view(width: int, data: RunData) -> DeployedModel:
    from qgen.config import run_spec_schema, validate

    spec = {
        "data": {"name": "digits", "test_fraction": 0.25, "split_seed": 0},
        "model": {"name": "mlp", "depth": 2, "width": width},
        "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 4},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"max_epochs": 15},
        "seed": 0,
    }
    spec = normalize_spec(validate(spec, run_spec_schema()))
    run_cfg = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 100}
    with tempfile.TemporaryDirectory() as out:
        model, _, _ = train_run(spec, data, out, run_cfg, runtime.configure(run_cfg), progress=False)
    return deploy(model)


def reference_style_search(
    view,
    examples: Examples,
    *,
    draws: int,
    seed: int,
    depth: int = 15,
    target: float = 0.1,
    tolerance: float = 0.01,
) -> float:
    """One draw at a time, structured like the reference implementation (same draws as qgen's, on
    the same parameters: all of them, as the reference perturbs model.parameters())."""
    weights = view.perturbable("all")
    base, _ = accuracy_and_ce(view, examples)
    x, y = (torch.cat(t) for t in zip(*examples, strict=True))
    gen = torch.Generator().manual_seed(seed)
    z = {n: torch.randn((draws, *w.shape), generator=gen, dtype=w.dtype) for n, w in weights.items()}
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    lower, upper, sigma = 0.0, 2.0, 1.0
    for _ in range(depth):
        sigma = (lower + upper) / 2
        accs = []
        for d in range(draws):
            model = copy.deepcopy(view.module)
            params = dict(model.named_parameters())
            with torch.no_grad():
                for n in weights:
                    params[n].add_(sigma * z[n][d])
                correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in loader)
            accs.append(correct / len(y))
        deviation = abs(sum(accs) / draws - base)
        if abs(deviation - target) < tolerance:
            break
        if deviation > target:
            upper = sigma
        else:
            lower = sigma
    return sigma


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024, help="measures.batch_size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        prepare("digits", {"test_fraction": 0.25, "split_seed": 0}, tmp)
        data = open_run_data(load_prepared(tmp), {})
    train = Examples(data.train, None, args.batch_size)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {len(train)} training examples, "
        f"{args.draws} draws per step, {args.rounds} interleaved rounds"
    )
    print(
        f"{'model':<14} {'batched s':>10} {'one-at-a-time s':>16} {'reference-style s':>18} "
        f"{'speed-up vs one':>16} {'vs reference':>13} {'max |Δσ′|':>10}"
    )
    for width in WIDTHS:
        view = trained_view(width, data)
        runs = {
            "batched": lambda v=view: sharpness.pacbayes_sigma(v, train, draws=args.draws, seed=0).value,
            "one": lambda v=view: (
                sharpness.pacbayes_sigma(v, train, draws=args.draws, seed=0, batched=False).value
            ),
            "reference": lambda v=view: reference_style_search(v, train, draws=args.draws, seed=0),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        sigmas: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                sigmas[name] = fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = max(abs(sigmas["batched"] - sigmas[k]) for k in ("one", "reference"))
        print(
            f"{'mlp2x' + str(width):<14} {med['batched']:>10.3f} {med['one']:>16.3f} "
            f"{med['reference']:>18.3f} "
            f"{med['one'] / med['batched']:>15.1f}x {med['reference'] / med['batched']:>12.1f}x {diff:>10.2g}"
        )


if __name__ == "__main__":
    main()
