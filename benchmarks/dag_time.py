"""How long a config takes to become a DAG: run expansion, then `snakemake -n`, plain and with the profile.

Issue 15 asks a QGen- or RGM-sized study to resolve in 30 s or less. This script times the phases side
by side, in one run: expanding the config into runs in process (``qgen.experiments.all_runs``, validation
included), and a dry run as a user types it, in an empty working directory so that nothing is up to
date. It prints the runs, the jobs, the jobs per run, and the SLURM jobs the profile would submit (shard
jobs and the per-run jobs' groups, if any).

Where SLURM's client tools are installed, every Snakemake start also waits for ``scontrol show config``:
the SLURM executor plugin runs it when Snakemake imports the plugin (to pick a status command), plain
dry runs included. With a reachable controller that takes milliseconds; with none (a laptop or CI box
with the tools but no cluster) it times out after about 9 s. The script times that command on its own
and prints it, so the dry-run figures can be read either way.

    python benchmarks/dag_time.py                  # config/bench/dag_10k.yaml (11,664 runs)
    python benchmarks/dag_time.py --config config/paper/qgen_cifar.yaml --no-profile
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(config: Path, profile: bool) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", workdir, "-n"]
        cmd += ["--profile", str(REPO / "profiles" / "slurm")] if profile else []
        cmd += ["--configfile", str(config)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "config" / "bench" / "dag_10k.yaml")
    parser.add_argument("--no-profile", action="store_true", help="skip the dry run with --profile slurm")
    args = parser.parse_args()

    from qgen.config import load_config
    from qgen.experiments import all_runs

    t0 = time.perf_counter()
    runs = all_runs(load_config(args.config))
    expand = time.perf_counter() - t0
    probe = None
    if shutil.which("scontrol"):
        t0 = time.perf_counter()
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30)
        probe = time.perf_counter() - t0
    plain, out = dry_run(args.config, profile=False)
    total = re.search(r"^total\s+(\d+)$", out, re.M)
    jobs = int(total.group(1)) if total else None
    print(f"config {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}")
    heads = ("runs", "expand s", "dry run s", "jobs", "jobs/run", "SLURM dry run s", "SLURM jobs")
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (8, 9, 10, 7, 9, 16, 11), strict=True)))
    line = f"{len(runs):>8} {expand:>9.1f} {plain:>10.1f} {jobs or 0:>7} {(jobs or 0) / len(runs):>9.2f}"
    if not args.no_profile:
        slurm, out = dry_run(args.config, profile=True)
        submitted = out.count("Group job runs") + len(re.findall(r"^rule (shard|prepare_data):$", out, re.M))
        line += f" {slurm:>16.1f} {submitted:>11}"
    print(line)
    if probe is not None:
        print(f"scontrol show config (run by the SLURM plugin at every Snakemake start): {probe:.1f} s")


if __name__ == "__main__":
    main()
