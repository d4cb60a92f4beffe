"""Compare the results of two builds of the pipeline: every run present in both, every table CSV.

    python scripts/compare_builds.py BUILD_A BUILD_B

BUILD_A and BUILD_B are project folders that were built (``results/runs/<run_id>/``). For each run in both,
metrics.json and measures.json must be equal once provenance and timings are left out (they record hosts,
versions and seconds); each ``results/*/tables/*.csv`` and ``results/*/*.csv`` in both must be byte-identical.
Prints what differs and exits 1 if anything does. Used to show that a speed-up changed no result.
"""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path
from typing import Any

#: keys that hold where and how long, not what was computed
SKIP = {"provenance", "seconds", "timings", "wall", "elapsed", "laps"}


def strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in SKIP and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def main(a: Path, b: Path) -> int:
    runs_a, runs_b = a / "results" / "runs", b / "results" / "runs"
    common = sorted({p.name for p in runs_a.iterdir()} & {p.name for p in runs_b.iterdir()})
    differ = []
    for rid in common:
        for name in ("metrics.json", "measures.json"):
            x, y = (strip(json.loads((d / rid / name).read_text())) for d in (runs_a, runs_b))
            if x != y:
                differ.append(f"{rid}/{name}: {sorted(k for k in x if x.get(k) != y.get(k))}")
    tables = sorted(
        p.relative_to(a) for pattern in ("results/*/tables/*.csv", "results/*/*.csv") for p in a.glob(pattern)
    )
    shared = [t for t in tables if (b / t).exists()]
    differ += [f"{t}: bytes differ" for t in shared if not filecmp.cmp(a / t, b / t, shallow=False)]
    print(f"{len(common)} runs in both builds, {len(shared)} tables in both; {len(differ)} differ")
    for line in differ:
        print("  " + line)
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
