"""The shard worker (qgen.worker): runs built inside a worker equal the same runs built alone, bit for bit on
CPU; a killed worker resumes and ends with identical results; a failing run fails alone and names its log;
K concurrent worker processes equal one at a time; finished runs are skipped by content."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qgen import io as qio
from qgen.audit import compare_records
from qgen.config import measures_schema, validate
from qgen.experiments import run_id, runs_table
from qgen.shards import DONE, MEASURE, TRAIN, canonical_settings, data_checksum, partition, run_state
from tests.conftest import REPO, TINY_MEASURES, make_spec

SETTINGS = json.dumps(validate(dict(TINY_MEASURES), measures_schema(), where="test"), sort_keys=True)
SPECS = [
    make_spec(seed=0, train={"max_epochs": 3}),
    make_spec(seed=1, quant={"method": "uniform", "weight_bits": 2, "act_bits": 8}, train={"max_epochs": 3}),
    make_spec(seed=2, model={"name": "mlp", "depth": 3, "width": 16}, train={"max_epochs": 4}),
]
IDS = [run_id(s) for s in SPECS]


class _Run:  # what experiments.runs_table reads
    def __init__(self, spec: dict) -> None:
        self.spec, self.experiments = spec, ["e"]


def make_project(root: Path, digits_dir: Path, specs: list[dict] = SPECS) -> Path:
    shutil.copytree(digits_dir, root / "data" / "prepared" / "digits")
    qio.write_text(root / "results" / "runs.tsv", runs_table({run_id(s): _Run(s) for s in specs}))
    return root


def env(**runtime) -> dict[str, str]:
    runtime = {"device": "cpu", "threads": 1, **runtime}
    return {**os.environ, "QGEN_RUNTIME": json.dumps(runtime), "QGEN_MEASURES": SETTINGS}


def shard_command(ids: list[str], name: str = "digits-0of1") -> list[str]:
    return [
        sys.executable, "-m", "qgen", "shard", name, "--run-ids", ",".join(ids), "--runs-table",
        "results/runs.tsv", "--settings", SETTINGS, "--out", f"results/shards/{name}.json",
    ]  # fmt: skip


def shard(project: Path, ids: list[str] = IDS, **runtime) -> subprocess.CompletedProcess:
    return subprocess.run(shard_command(ids), cwd=project, env=env(**runtime), capture_output=True, text=True)


def results(project: Path, rid: str) -> dict:
    run = project / "results" / "runs" / rid
    return {name: qio.read_json(run / name) for name in ("metrics.json", "measures.json")}


def assert_identical(a: dict, b: dict) -> None:
    for name in a:
        compared, differences = compare_records(a[name], b[name])
        assert compared > 20 and differences == [], (name, differences[:5])


@pytest.fixture(scope="module")
def alone(tmp_path_factory, digits_dir) -> Path:
    """Each run built alone, in its own processes, by the per-run rules' commands (qgen train + measure)."""
    project = make_project(tmp_path_factory.mktemp("alone"), digits_dir)
    for spec, rid in zip(SPECS, IDS, strict=True):
        run = f"results/runs/{rid}"
        record = json.dumps({"run_id": rid, "spec": spec})
        cache = f"{run}/measures.cache.json"
        train = [sys.executable, "-m", "qgen", "train", "--spec", record, "--data-meta"]
        train += ["data/prepared/digits/meta.json", "--out-model", f"{run}/model.pt", "--out-log"]
        train += [f"{run}/train_log.csv", "--out-metrics", f"{run}/metrics.json", "--measure-cache", cache]
        measure = [sys.executable, "-m", "qgen", "measure", "--model", f"{run}/model.pt", "--data-meta"]
        measure += ["data/prepared/digits/meta.json", "--settings", SETTINGS, "--cache", cache]
        measure += ["--out", f"{run}/measures.json"]
        for cmd in (train, measure):
            proc = subprocess.run(cmd, cwd=project, env=env(), capture_output=True)
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return project


@pytest.fixture(scope="module")
def in_worker(tmp_path_factory, digits_dir) -> Path:
    """The same runs built one after another in one worker process of one shard job."""
    project = make_project(tmp_path_factory.mktemp("worker"), digits_dir)
    proc = shard(project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return project


def test_runs_built_in_one_worker_equal_the_runs_built_alone_bit_for_bit(alone, in_worker: Path) -> None:
    for rid in IDS:
        assert_identical(results(alone, rid), results(in_worker, rid))
    record = qio.read_json(in_worker / "results" / "shards" / "digits-0of1.json")
    assert [w["runs"] for w in record["workers"]] == [3]  # one worker process built all three
    assert {r["action"] for r in record["runs"].values()} == {"trained"}
    assert record["compute_seconds"] > 0 and record["overhead_seconds"] > 0
    for rid in IDS:  # each run's stderr went to its own log; the checkpoint is gone
        assert f"{rid}: completed" in (in_worker / "logs" / "train" / f"{rid}.log").read_text()
        assert not (in_worker / "results" / "runs" / rid / "checkpoint.pt").exists()


def test_a_rerun_skips_finished_runs_and_remeasures_by_content(in_worker: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    shutil.copytree(in_worker, project)
    models = {rid: (project / "results/runs" / rid / "model.pt").read_bytes() for rid in IDS}
    proc = shard(project)
    assert proc.returncode == 0 and "3 done; 0 worker" in proc.stderr, proc.stderr
    # other measure settings recorded in one run: that run is measured again, nothing is trained
    measures = project / "results/runs" / IDS[1] / "measures.json"
    qio.write_json(measures, {**qio.read_json(measures), "settings": {"examples": 7}})
    proc = shard(project, parallel_runs=3)
    assert proc.returncode == 0 and "0 to train, 1 to measure, 2 done; 1 worker" in proc.stderr, proc.stderr
    assert qio.read_json(measures)["settings"] == json.loads(SETTINGS)
    record = qio.read_json(project / "results/shards/digits-0of1.json")
    assert record["runs"][IDS[1]]["action"] == "measured" and record["runs"][IDS[0]]["action"] == "skipped"
    assert models == {rid: (project / "results/runs" / rid / "model.pt").read_bytes() for rid in IDS}


def test_run_state_is_decided_by_content(in_worker: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(in_worker / "results/runs" / IDS[0], run)
    checksum = data_checksum(in_worker / "data/prepared/digits/meta.json")
    settings = canonical_settings(json.loads(SETTINGS))
    assert run_state(run, IDS[0], checksum, settings) == DONE
    assert run_state(run, IDS[0], checksum, canonical_settings({"examples": 1})) == MEASURE
    assert run_state(run, IDS[0], "another-checksum", settings) == TRAIN  # data changed: retrain
    assert run_state(run, IDS[1], checksum, settings) == TRAIN  # another run's files
    measures = qio.read_json(run / "measures.json")
    measures["provenance"]["model_sha256"] = "an older model file"
    qio.write_json(run / "measures.json", measures)
    assert run_state(run, IDS[0], checksum, settings) == MEASURE  # measured before the run was retrained
    (run / "measures.json").write_text("{truncated")
    assert run_state(run, IDS[0], checksum, settings) == MEASURE
    (run / "model.pt").unlink()
    assert run_state(run, IDS[0], checksum, settings) == TRAIN


def test_two_worker_processes_at_once_equal_one_at_a_time(in_worker: Path, tmp_path, digits_dir) -> None:
    project = make_project(tmp_path, digits_dir)
    proc = shard(project, parallel_runs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = qio.read_json(project / "results/shards/digits-0of1.json")
    assert len(record["workers"]) == 2 and sum(w["runs"] for w in record["workers"]) == 3
    for rid in IDS:
        assert_identical(results(in_worker, rid), results(project, rid))


def test_a_failing_run_fails_alone_and_names_its_log(in_worker: Path, tmp_path: Path, digits_dir) -> None:
    bad = make_spec(seed=5, train={"max_epochs": 2})
    bad["model"]["pretrained"] = {"name": "nowhere", "sha256": "0" * 64}  # no weights file anywhere
    bad_id = run_id(bad)
    project = make_project(tmp_path, digits_dir, [*SPECS, bad])
    proc = subprocess.run(
        shard_command([IDS[0], bad_id, IDS[2]]),
        cwd=project,
        env={**env(), "QGEN_WEIGHTS": str(tmp_path / "no-weights")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    log = f"logs/train/{bad_id}.log"
    assert f"{bad_id} failed" in proc.stderr and log in proc.stderr, proc.stderr
    assert "no-weights/nowhere.pth" in (project / log).read_text()
    assert not (project / "results/shards/digits-0of1.json").exists()  # the shard is not done
    for rid in (IDS[0], IDS[2]):  # the siblings before and after it are built and intact
        assert_identical(results(in_worker, rid), results(project, rid))


# the second run trains for a few seconds, so a signal can reach it mid-epoch
SLOW = make_spec(seed=3, optim={"name": "sgd", "lr": 0.05, "batch_size": 16}, train={"max_epochs": 40})
KILL_SPECS = [SPECS[0], SLOW, SPECS[2]]
KILL_IDS = [run_id(s) for s in KILL_SPECS]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_dir) -> Path:
    project = make_project(tmp_path_factory.mktemp("uninterrupted"), digits_dir, KILL_SPECS)
    proc = subprocess.run(shard_command(KILL_IDS), cwd=project, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return project


def _start(project: Path) -> subprocess.Popen:
    return subprocess.Popen(
        shard_command(KILL_IDS), cwd=project, env=env(checkpoint_every=1), stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as Snakemake and SLURM give a job
    )  # fmt: skip


def _wait_training(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():  # the first run is finished, the second is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)


def test_a_worker_killed_mid_shard_resumes_with_identical_results(
    uninterrupted, tmp_path, digits_dir
) -> None:
    from qgen.train import checkpoint

    project = make_project(tmp_path, digits_dir, KILL_SPECS)
    proc = _start(project)
    second = project / "results/runs" / KILL_IDS[1]
    _wait_training(proc, second)
    os.killpg(proc.pid, signal.SIGTERM)  # what SLURM does on preemption: every process of the job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted" in err and not (project / "results/shards/digits-0of1.json").exists()
    assert_identical(results(uninterrupted, KILL_IDS[0]), results(project, KILL_IDS[0]))  # kept
    assert "partial" in checkpoint.load(second / "checkpoint.pt")  # stopped mid-epoch, checkpointed
    resumed = shard(project, KILL_IDS, checkpoint_every=1)
    assert resumed.returncode == 0 and "1 done" in resumed.stderr, resumed.stderr
    assert "continuing epoch" in (project / "logs/train" / f"{KILL_IDS[1]}.log").read_text()
    for rid in KILL_IDS:
        assert_identical(results(uninterrupted, rid), results(project, rid))


def _workers(pid: int) -> list[int]:
    """The worker processes of a shard controller (not multiprocessing's resource tracker)."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_worker_process_that_dies_fails_its_run_and_is_replaced(
    uninterrupted, tmp_path, digits_dir
) -> None:
    project = make_project(tmp_path, digits_dir, KILL_SPECS)
    proc = _start(project)
    _wait_training(proc, project / "results/runs" / KILL_IDS[1])
    (worker,) = _workers(proc.pid)
    os.kill(worker, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert f"{KILL_IDS[1]}: FAILED: worker process died (exit code -9)" in err
    for rid in (KILL_IDS[0], KILL_IDS[2]):  # before it, and after it in the replacement worker
        assert_identical(results(uninterrupted, rid), results(project, rid))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_shard_whose_workers_cannot_start_fails_at_once_with_the_reason(tmp_path, digits_dir) -> None:
    project = make_project(tmp_path, digits_dir)
    t0 = time.monotonic()
    proc = shard(project, device="cuda")
    assert proc.returncode == 1 and time.monotonic() - t0 < 60
    assert "torch sees no CUDA device" in proc.stderr and "no worker process could start" in proc.stderr
    assert proc.stderr.count("Traceback") == 1  # started once, not respawned


def test_partition_is_stable_balanced_and_per_dataset() -> None:
    ids = {f"digits-mlp-fp32-{i * 2654435761 % 2**32:08x}": "digits" for i in range(100)}
    ids |= {f"mnist5k-mlp-fp32-{i * 40503 % 2**32:08x}": "mnist5k" for i in range(9)}
    shards = partition(ids, 8)
    assert sorted(r for rs in shards.values() for r in rs) == sorted(ids)
    assert {name.rsplit("of", 1)[1] for name in shards if name.startswith("digits")} == {"16"}
    assert all(len({ids[r] for r in rs}) == 1 for rs in shards.values())
    assert max(len(rs) for rs in shards.values()) <= 16
    # adding runs moves no run to another shard until the count crosses a power of two
    more = ids | {"digits-mlp-fp32-0000000a": "digits"}
    moved = partition(more, 8)
    assert all(set(rs) <= set(moved[name]) for name, rs in shards.items())
    assert partition(ids, 1) == {f"{rid}-0of1": [rid] for rid in ids}  # one job per run
    with pytest.raises(ValueError, match="shard_runs"):
        partition(ids, 0)
    # a group of its own size: digits in one or two shards of up to 64 runs, mnist5k one job per run
    own = partition(ids, 8, {"digits": 64, "mnist5k": 1})
    assert {name.rsplit("of", 1)[1] for name in own if name.startswith("digits-0")} == {"2"}
    assert [name for name in own if name.startswith("mnist5k")] == [f"{r}-0of1" for r in ids if r[0] == "m"]


def test_an_experiment_sets_its_own_shard_size() -> None:
    from qgen.config import validate_config
    from qgen.experiments import all_runs
    from qgen.shards import shard_config_runs

    config = validate_config(yaml.safe_load((REPO / "config" / "default.yaml").read_text()))
    runs = all_runs(config)
    shards = shard_config_runs(runs, config)
    for name, exp in config["experiments"].items():
        size = exp.get("shard_runs") or config["runtime"]["shard_runs"]
        mine = [ids for shard, ids in shards.items() if shard.split("-")[1] == name]
        n = sum(name in r.experiments for r in runs.values())
        assert sum(map(len, mine)) == n  # every run of the experiment, in its own shards
        buckets = 1 << max(0, (-(-n // size) - 1).bit_length())  # ceil(n/size), rounded up to a power of 2
        assert {s.rsplit("of", 1)[1] for s, _ in shards.items() if s.split("-")[1] == name} == {str(buckets)}
        assert 0 < len(mine) <= buckets and all(mine), name  # an empty hash bucket makes no shard
    config["experiments"]["grid"]["shard_runs"] = 1  # one job per run of grid; the others unchanged
    alone = {rid: shard for shard, ids in shard_config_runs(runs, config).items() for rid in ids}
    for rid, run in runs.items():
        assert (alone[rid] == f"{rid}-0of1") == (tuple(run.experiments) == ("grid",)), rid


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_two_runs_sharing_a_gpu_equal_the_runs_built_alone_on_it(tmp_path, digits_dir) -> None:
    """On CUDA: two worker processes on one GPU (each limited to half its memory) give each run the results
    it gets alone on that GPU, within the audit's CUDA tolerance (qgen.audit)."""
    from qgen.audit import CUDA_ATOL, CUDA_RTOL

    shared = make_project(tmp_path / "shared", digits_dir, SPECS[:2])
    proc = subprocess.run(
        shard_command(IDS[:2]),
        cwd=shared,
        env=env(device="cuda", parallel_runs=2),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = qio.read_json(shared / "results/shards/digits-0of1.json")
    assert len(record["workers"]) == 2 and all(w["device"].startswith("cuda") for w in record["workers"])
    for spec, rid in zip(SPECS[:2], IDS[:2], strict=True):
        alone = make_project(tmp_path / rid, digits_dir, [spec])
        one = subprocess.run(
            shard_command([rid]), cwd=alone, env=env(device="cuda"), capture_output=True, text=True
        )
        assert one.returncode == 0, one.stderr[-3000:]
        a, b = results(alone, rid), results(shared, rid)
        for name in a:
            _, differences = compare_records(a[name], b[name], CUDA_RTOL, CUDA_ATOL)
            assert differences == [], (name, differences[:5])
