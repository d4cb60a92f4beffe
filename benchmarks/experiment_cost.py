"""CPU-seconds that experiments of a config cost in the pipeline's per-run job (train + evaluate + measure).

Each sampled run is one ``qgen train`` process exactly as the ``train`` rule starts it (measures into the
cache included, the interpreter start included), timed by the CPU time of the child process
(user + system). Runs are grouped by everything in their spec but the seed and the bit widths (the
variants of an experiment); ``--per-group`` runs of each group are timed and their mean is multiplied by
the group's size, so an experiment of many bit widths costs a few runs to estimate.

    python benchmarks/experiment_cost.py --config config/default.yaml --experiments binaryconnect,lowprec

Run it from the tree to measure (``PYTHONPATH=<tree>/src``): comparing two trees or two configs side by
side (e.g. the PI-MNIST experiments on digits before and on mnist5k after) gives the ratio of their costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from qgen.config import load_config
from qgen.experiments import canonical_json, dataset_entry, expand_config

BITS = ("weight_bits", "act_bits", "prop_bits", "update_bits")


def group_key(spec: dict[str, Any]) -> str:
    reduced = json.loads(canonical_json(spec))
    reduced.pop("seed")
    for key in BITS:
        reduced["quant"].pop(key, None)
    return canonical_json(reduced)


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], env: dict[str, str]) -> float:
    before = child_cpu()
    subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
    return child_cpu() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--experiments", required=True, help="comma-separated experiment names")
    parser.add_argument("--per-group", type=int, default=2, help="runs timed per group (default 2)")
    args = parser.parse_args()

    config = load_config(args.config)
    env = {
        **os.environ,
        "QGEN_MEASURES": json.dumps(config["measures"], sort_keys=True),
        "QGEN_RUNTIME": json.dumps(config["runtime"], sort_keys=True),
    }
    runs = expand_config(config)
    qgen = [sys.executable, "-m", "qgen"]
    with tempfile.TemporaryDirectory() as tmp:
        prepared: dict[str, str] = {}
        grand = 0.0
        for name in args.experiments.split(","):
            groups: dict[str, list[Any]] = defaultdict(list)
            for r in runs[name]:
                groups[group_key(r.spec)].append(r)
            total, timed = 0.0, 0
            print(f"{name}: {len(runs[name])} runs in {len(groups)} groups")
            for members in groups.values():
                dataset = members[0].spec["data"]["name"]
                if dataset not in prepared:
                    meta = f"{tmp}/data/{dataset}/meta.json"
                    params = json.dumps(dataset_entry(config, dataset), sort_keys=True)
                    run([*qgen, "prepare-data", dataset, "--params", params, "--meta", meta], env)
                    prepared[dataset] = meta
                step = max(1, len(members) // args.per_group)
                sample = members[::step][: args.per_group]
                seconds = []
                for r in sample:
                    out = Path(tmp) / "runs" / r.run_id
                    record = json.dumps({"run_id": r.run_id, "spec": r.spec})
                    cmd = [
                        *qgen, "train", "--spec", record, "--data-meta", prepared[dataset],
                        "--out-model", f"{out}/model.pt", "--out-log", f"{out}/train_log.csv",
                        "--out-metrics", f"{out}/metrics.json", "--measure-cache", f"{out}/cache.json",
                        "--threads", str(config["runtime"]["threads"]), "--device", "cpu",
                    ]  # fmt: skip
                    seconds.append(run(cmd, env))
                    timed += 1
                mean = sum(seconds) / len(seconds)
                total += mean * len(members)
                label = f"{members[0].run_id.rsplit('-', 1)[0]} (+{len(members) - 1})"
                cost = mean * len(members)
                print(f"  {label:55s} {mean:7.2f} CPU-s per run x {len(members):3d} = {cost:8.1f}")
            print(f"{name}: {total:.0f} CPU-s estimated from {timed} timed runs")
            grand += total
        print(f"total: {grand:.0f} CPU-s")


if __name__ == "__main__":
    main()
