"""Job timing lines (qgen.job_cost) and the cost report over a build (qgen.pipeline_cost, `qgen cost`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from qgen import cli
from qgen.job_cost import TIMING_PREFIX, ImportClock, JobClock, process_age, read_timing
from qgen.pipeline_cost import report, summarize

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_import_clock_counts_outermost_imports_once(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "slow_outer.py").write_text("import time\ntime.sleep(0.2)\nimport slow_inner\n")
    (tmp_path / "slow_inner.py").write_text("import time\ntime.sleep(0.2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clock = ImportClock().install()
    try:
        t0 = time.perf_counter()
        import slow_outer  # noqa: F401

        took = time.perf_counter() - t0
    finally:
        clock.uninstall()
        sys.modules.pop("slow_outer", None), sys.modules.pop("slow_inner", None)
    assert 0.4 <= clock.seconds <= took  # the inner import is inside the outer one, not added twice
    import builtins

    assert builtins.__import__ is clock._original


def test_job_clock_writes_a_line_that_read_timing_finds(tmp_path: Path) -> None:
    clock = JobClock("report")
    time.sleep(0.05)
    log = tmp_path / "job.log"
    with open(log, "w") as fh:
        fh.write("some output\n")
        body = clock.write(fh)
        fh.write("trailing text\n")
    assert read_timing(log) == body
    assert body["command"] == "report" and body["wall"] - body["startup"] >= 0.05 - 2e-3  # both rounded to ms
    assert body["work"] >= 0.04 and body["cpu"] > 0 and process_age() > 0
    assert read_timing(tmp_path / "missing.log") is None
    (tmp_path / "bad.log").write_text(TIMING_PREFIX + "{not json\n")
    assert read_timing(tmp_path / "bad.log") is None


def test_the_cli_writes_its_timing_line_only_in_workflow_jobs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("QGEN_JOB_TIMING", raising=False)
    assert cli.main(["cost", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "no benchmark files" in out.out and TIMING_PREFIX not in out.err
    monkeypatch.setenv("QGEN_JOB_TIMING", "1")
    assert cli.main(["cost", "--root", str(tmp_path)]) == 0
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith(TIMING_PREFIX)]
    assert len(line) == 1 and json.loads(line[0][len(TIMING_PREFIX) :])["command"] == "cost"


def _job(root: Path, rule: str, name: str, wall: float, cpu_polled: float, timing: dict | None) -> None:
    bench = root / "logs/benchmarks" / rule / f"{name}.tsv" if name else root / f"logs/benchmarks/{rule}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text(BENCH_HEADER + f"{wall}\t0:00:01\t100.5\t1\t1\t1\t0\t0\t50\t{cpu_polled}\n")
    log = root / "logs" / {"shard": "shards"}.get(rule, rule) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("work\n" + (TIMING_PREFIX + json.dumps(timing) + "\n" if timing else ""))


def _tree(root: Path) -> None:
    (root / "results").mkdir(parents=True)
    rows = ["run_id\texperiments\tbits\tseed\tspec", "r1\ta\t2\t0\t{}", "r2\ta,b\t4\t0\t{}"]
    (root / "results/runs.tsv").write_text("\n".join(rows) + "\n")
    for rid, train, measures in (("r1", 2.0, {"measure": 3.0, "pacbayes": 2.0, "hessian": 1.0}),
                                 ("r2", 4.0, {"measure": 1.0, "pacbayes": 0.5, "hessian": 0.5})):  # fmt: skip
        run = root / "results/runs" / rid
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"provenance": {"wall_seconds": {"train": train}}}))
        (run / "measures.json").write_text(json.dumps({"provenance": {"wall_seconds": measures}}))
    (root / "results/shards").mkdir()
    shard = {"runs": {"r1": {"seconds": {"train": 2.0, "evaluate": 0.5, "measure": 3.0, "data": 9.0}}},
             "overhead_seconds": 1.5, "compute_seconds": 5.5}  # fmt: skip
    (root / "results/shards/digits-a-0of1.json").write_text(json.dumps(shard))
    timing = {"cpu": 7.5, "startup": 0.2, "imports": 1.0, "work": 6.0, "wall": 7.2}
    _job(root, "shard", "digits-a-0of1", 8.0, 3.0, timing)
    _job(root, "collect", "a", 2.0, 0.0, {"cpu": 1.9, "startup": 0.1, "imports": 1.2, "work": 0.5})
    _job(root, "report", "a", 5.0, 4.0, None)  # no timing line: the polled CPU counts
    _job(root, "prepare_data", "digits", 3.0, 2.0, {"cpu": 2.5, "startup": 0.1, "imports": 1.4})
    _job(root, "runs_table", "", 0.1, 0.0, None)


def test_cost_sums_per_rule_and_experiment_with_the_overhead_share(tmp_path: Path) -> None:
    _tree(tmp_path)
    s = summarize(tmp_path, budget_minutes=1, cores=2)
    assert s["jobs"] == 5 and s["cpu"] == pytest.approx(7.5 + 1.9 + 4.0 + 2.5 + 0.0)
    assert s["rules"]["shard"] == {"jobs": 1, "wall": 8.0, "cpu": 7.5, "overhead": 1.5, "max_rss_mb": 100.5}
    assert s["rules"]["collect"]["overhead"] == pytest.approx(1.3)  # start-up and imports
    a = s["experiments"]["a"]
    assert a["jobs"] == 3 and a["cpu"] == pytest.approx(7.5 + 1.9 + 4.0)
    assert a["train"] == 2.5 and a["measure"] == 3.0  # data loading is overhead, not compute
    assert a["run_overhead_share"] == pytest.approx(1.5 / 5.5)
    assert a["budget_share"] == pytest.approx(13.4 / 120) and a["other_cpu"] == pytest.approx(5.9)
    assert s["experiments"]["(shared)"]["jobs"] == 2
    # r2 is in two experiments: its measures count in both
    assert s["measures"]["a"] == {"runs": 2, "train": 3.0, "measure": 2.0, "pacbayes": 1.25, "hessian": 0.75}
    assert s["measures"]["b"]["runs"] == 1
    text = report(tmp_path, budget_minutes=1, cores=2)
    assert "| shard | 1 | 8.0 | 7.5 | 1.5 | 18.8 % | 100.5 |" in text
    assert "| a | 3 | 13.4 | 11.2 % |" in text and "27.3 %" in text  # run overhead 1.5 of 5.5
    assert "| a | 2 | 0.75 (37.5 %) | 1.25 (62.5 %) | 2.0 | 3.0 | 0.67 |" in text


def test_with_a_config_only_its_jobs_count_and_shard_names_map_to_experiments(tmp_path: Path) -> None:
    import yaml

    from qgen.config import validate_config
    from qgen.experiments import all_runs
    from qgen.pipeline_cost import _shard_experiment
    from qgen.shards import shard_config_runs

    config = validate_config(
        yaml.safe_load(
            """
experiments:
  a:
    base: {data: {name: digits}, model: {name: mlp, depth: 2, width: 8}, quant: {method: float},
           optim: {name: sgd, lr: 0.1}, train: {max_epochs: 1}}
    seeds: [0, 1, 2]
"""
        )
    )
    (shard,) = shard_config_runs(all_runs(config), config)
    for name in (shard, "digits-a-0of2"):  # the second: left over from a build with other shard sizes
        _job(tmp_path, "shard", name, 4.0, 1.0, {"cpu": 3.0})
    _job(tmp_path, "collect", "a", 1.0, 0.5, None)
    _job(tmp_path, "collect", "gone", 1.0, 0.5, None)  # an experiment the config no longer has
    s = summarize(tmp_path, config=config)
    assert s["jobs"] == 2 and s["skipped_files"] == 2 and s["rules"]["shard"]["cpu"] == 3.0
    assert summarize(tmp_path)["jobs"] == 4
    assert "2 benchmark files of jobs the config does not have left out" in report(tmp_path, config=config)
    runs = {"digits-mlp-fp32-0000000a": ["grid"]}
    assert _shard_experiment({}, "cifar10-c-grid-0of2", {}) == "grid"  # dataset names may hold "-"
    assert _shard_experiment({}, "digits-mlp-fp32-0000000a-0of1", runs) == "grid"  # one run per shard
    assert _shard_experiment({}, "digits-default+grid-1of4", {}) == "default+grid"
