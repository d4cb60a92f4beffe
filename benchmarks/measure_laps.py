"""What each measure of a default-config run costs against the run's training, side by side with the
measures of an earlier git revision, and whether both compute the same measures.json (issue 16, item 5).

Runs (config/default.yaml, seed 0): the digits MLP of ``default`` (LSQ W4A4, 8-bit first and last layers)
at widths 32 and 256, the mnist5k BinaryConnect MLP with BatchNorm (``binaryconnect``, deterministic) and
the mnist5k maxout network in dynamic fixed point (``lowprec``, 10 propagation / 12 update bits). Each is
trained once with the training loop (``qgen.train.train_run``, its CPU seconds are the training cost;
the payloads are kept in ``--work`` and reused) and measured with ``qgen.measures.run.measure_run`` at the
config's reference settings (its ``measures`` section), on CPU with 1 thread: laps in CPU seconds of this
process (``time.process_time``; with one thread, the time the work takes whatever else loads the machine).

``--baseline REV`` also measures with ``src/qgen/measures`` as it is at git revision REV (exported to a
temporary package, its ``qgen.measures`` imports renamed; everything else is the working tree's), in
interleaved rounds (baseline then current, per run), and checks that the two bodies (measures.json less
its provenance: the timings and cost record) are identical. It prints, per run and measure, the median
seconds over the rounds (and the spread, max − min) of each, their ratio and the measure's share of the
run's training; ``pacbayes+mag`` and ``worst_case+mag`` are both searches of a kind (a revision that
timed them in one lap shows only these).

    nice -n 10 python benchmarks/measure_laps.py                       # current code, 3 rounds
    nice -n 10 python benchmarks/measure_laps.py --baseline HEAD       # side by side with the last commit
    nice -n 10 python benchmarks/measure_laps.py --runs bc_det --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BASELINE_PACKAGE = "qgen_measures_baseline"


def _selectors() -> dict[str, tuple[str, Callable[[dict[str, Any]], bool]]]:
    """name -> (experiment, predicate on a run spec); seed 0 of each."""

    def lsq(width: int) -> Callable[[dict[str, Any]], bool]:
        return lambda s: (
            s["quant"].get("method") == "lsq"
            and s["quant"].get("weight_bits") == 4
            and (s["model"]["width"] == width)
        )

    return {
        "digits_w32": ("default", lsq(32)),
        "digits_w256": ("default", lsq(256)),
        "bc_det": (
            "binaryconnect",
            lambda s: s["quant"]["method"] == "binary" and not s["quant"].get("stochastic", False),
        ),
        "lowprec_dfxp": (
            "lowprec",
            lambda s: (
                s["quant"]["method"] == "dynamic_fixed"
                and s["quant"].get("prop_bits") == 10
                and s["quant"].get("update_bits") == 12
            ),
        ),
    }


def chosen_runs(config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    from qgen.experiments import expand_config

    runs, selectors = expand_config(config), _selectors()
    out = {}
    for name in names:
        experiment, predicate = selectors[name]
        matches = [r for r in runs[experiment] if r.spec["seed"] == 0 and predicate(r.spec)]
        if not matches:
            raise SystemExit(f"config/default.yaml: no run of {experiment} matches {name}")
        out[name] = matches[0]
    return out


def trained_payload(name: str, run: Any, config: dict[str, Any], work: Path, retrain: bool) -> dict[str, Any]:
    """The run's payload (trained here, or read from ``work``) with its training CPU seconds and data."""
    from qgen import runtime
    from qgen.data import prepare
    from qgen.experiments import dataset_params
    from qgen.runner import open_data
    from qgen.train import train_run

    run_cfg = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 10_000}
    device = runtime.configure(run_cfg)
    dataset = run.spec["data"]["name"]
    prepared = work / "data" / dataset
    if not (prepared / "meta.json").exists():
        prepare(dataset, dataset_params(config, dataset), prepared)
    data = open_data(prepared / "meta.json", run.spec, device, run_cfg)
    path = work / f"{name}.pt"
    if path.exists() and not retrain:
        saved = torch.load(path, weights_only=True)
        if saved["run_id"] == run.run_id:
            return {**saved, "data": data}
    t0 = time.process_time()
    model, init_state, _ = train_run(run.spec, data, work / "train" / name, run_cfg, device, progress=False)
    seconds = time.process_time() - t0
    payload = {
        "run_id": run.run_id,
        "spec": run.spec,
        "state_dict": model.state_dict(),
        "init_state": init_state,
        "train_seconds": seconds,
    }
    torch.save(payload, path)
    return {**payload, "data": data}


def baseline_measures(rev: str, into: Path) -> ModuleType:
    """``qgen.measures.run`` of git revision ``rev``, imported as a separate package."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "src/qgen/measures/"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    package = into / BASELINE_PACKAGE
    package.mkdir(parents=True)
    for path in listing:
        if path.endswith(".py"):
            text = subprocess.run(
                ["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
            (package / Path(path).name).write_text(text.replace("qgen.measures", BASELINE_PACKAGE))
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{BASELINE_PACKAGE}.run")


def measure_once(
    run_module: ModuleType, payload: dict[str, Any], settings: dict[str, Any]
) -> tuple[dict, str]:
    """(laps in CPU seconds, sha256 of the body less its timings and cost record) of one measure_run."""
    cost = importlib.import_module(run_module.__name__.rsplit(".", 1)[0] + ".cost")
    cost.clock = time.process_time
    body = run_module.measure_run(
        payload, payload["data"], json.loads(json.dumps(settings)), torch.device("cpu")
    )
    laps = body.pop("timings")
    body.pop("cost")  # how it ran (measures.json's provenance), like the timings
    text = json.dumps(body, sort_keys=True, default=repr)
    return laps, hashlib.sha256(text.encode()).hexdigest()


def _median_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def table_rows(lap: dict[str, float]) -> dict[str, float | None]:
    """A round's laps as the table's rows: each lap, both σ′ searches (``pacbayes+mag``) and both α′
    searches (``worst_case+mag``) together, and ``all``; a revision that timed both searches of a kind in
    one lap (before the ``*_mag`` laps) has that lap under ``+mag`` only."""
    rows: dict[str, float | None] = dict(lap)
    for kind in ("pacbayes", "worst_case"):
        if f"{kind}_mag" in lap:
            rows[f"{kind}+mag"] = lap[kind] + lap[f"{kind}_mag"]
        else:
            rows[kind], rows[f"{kind}_mag"], rows[f"{kind}+mag"] = None, None, lap[kind]
    rows["all"] = sum(lap.values())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", default=list(_selectors()), choices=list(_selectors()))
    parser.add_argument("--baseline", help="git revision whose src/qgen/measures is measured side by side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qgen-measure-laps")
    parser.add_argument("--retrain", action="store_true", help="train again even if a payload is kept")
    args = parser.parse_args()

    from qgen.config import load_config, measures_schema, validate
    from qgen.measures import run as current

    config = load_config(REPO / "config" / "default.yaml")
    settings = validate(json.loads(json.dumps(config["measures"])), measures_schema(), where="measures")
    args.work.mkdir(parents=True, exist_ok=True)
    impls: dict[str, ModuleType] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            impls["before"] = baseline_measures(args.baseline, Path(tmp))
        impls["after"] = current
        runs = chosen_runs(config, args.runs)
        payloads = {n: trained_payload(n, r, config, args.work, args.retrain) for n, r in runs.items()}
        laps: dict[tuple[str, str], list[dict[str, float]]] = {}
        digests: dict[tuple[str, str], set[str]] = {}
        for payload in payloads.values():  # warm-up: one-time costs out of the first timed round
            measure_once(current, payload, settings)
        for _ in range(args.rounds):
            for name, payload in payloads.items():
                for impl, module in impls.items():
                    lap, digest = measure_once(module, payload, settings)
                    laps.setdefault((name, impl), []).append(lap)
                    digests.setdefault((name, impl), set()).add(digest)
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} rounds, CPU seconds (median, spread max-min)")
    for name, payload in payloads.items():
        train = payload.get("train_seconds", float("nan"))
        same = len(set().union(*(digests[(name, i)] for i in impls))) == 1
        print(f"\n{name}: {payload['run_id']}, training {train:.2f} s; measures.json identical: {same}")
        head = "".join(f"{i + ' s':>16}" for i in impls)
        print(f"{'measure':<16}{head}{'after/before':>14}{'of training':>13}")
        rows = {impl: [table_rows(r) for r in laps[(name, impl)]] for impl in impls}
        for measure in rows["after"][0]:
            cells, medians = "", {}
            for impl in impls:
                values = [r.get(measure) for r in rows[impl]]
                if None in values:
                    cells += f"{'-':>16}"
                    continue
                medians[impl], spread = _median_spread([v for v in values if v is not None])
                cells += f"{medians[impl]:>9.3f} ±{spread:>5.3f}"
            ratio = medians["after"] / medians["before"] if medians.get("before") else None
            share = medians["after"] / train if train == train else float("nan")
            print(f"{measure:<16}{cells}{'' if ratio is None else f'{ratio:.2f}':>14}{share:>13.2f}")


if __name__ == "__main__":
    main()
