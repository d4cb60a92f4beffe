"""The SLURM path against a real single-node cluster (scripts/slurm_cluster.sh): `snakemake --profile
slurm all` end to end, a training job requeued mid-epoch, and a failing job's log.

The cluster needs root and apt-get (Debian packages). Where it cannot start the tests skip and say why;
with QGEN_REQUIRE_SLURM=1 (CI) they fail instead. The first start installs the packages (about a
minute); a cluster that was already running is used and left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qgen.train import checkpoint
from tests.conftest import REPO
from tests.test_workflow import TINY

SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
STATE = Path(os.environ.get("QGEN_SLURM_STATE", "/var/lib/qgen-slurm"))
REQUIRED = os.environ.get("QGEN_REQUIRE_SLURM") == "1"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")

# Tiny runs with cheap measures; the cluster asks for a GPU per run (fake gres on the test node: torch
# sees no CUDA there, so runtime.device auto falls back to the CPU and records it).
CLUSTER_TINY = TINY.replace("runtime: {device: cpu, checkpoint_every: 1}", "runtime: {device: auto}") + (
    "resources:\n  train: {gpus: 1}\n  measure: {gpus: 1}\n"
)
# One run of a small NiN that trains for ~15 s, long enough to be requeued mid-epoch; no periodic
# checkpoints, so the one the run resumes from can only come from the SIGTERM of the requeue.
SLOW = """
runtime: {device: cpu, checkpoint_every: 1000}
measures: {examples: 200, pacbayes: {depth: 4, draws: 2}, worst_case: {examples: 100, depth: 4},
           hessian: {examples: 64, max_probes: 5, min_probes: 5}}
experiments:
  slow:
    description: one run long enough to be requeued mid-training
    base:
      data: {name: digits}
      model: {name: nin, depth: 2, width: 2, base_width: 25}
      quant: {method: lsq, weight_bits: 4, act_bits: 4}
      optim: {name: sgd, lr: 0.05, batch_size: 16}
      train: {max_epochs: 30, target_ce: null}
    seeds: [0]
"""


# ---- the cluster ---------------------------------------------------------------------------------
def _why_no_cluster() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a SLURM test cluster needs Linux"
    if os.geteuid() != 0:
        return "not root: installing SLURM and starting its daemons needs root"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"QGEN_REQUIRE_SLURM=1 but the SLURM test cluster cannot start: {reason}")
    pytest.skip(f"SLURM test cluster unavailable: {reason}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """Start the cluster (or use the running one); the last test session that needs it stops it if
    a test session started it (pytest-xdist workers share one cluster)."""
    reason = _why_no_cluster()
    if reason:
        _unavailable(reason)
    sessions = STATE / "test-sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    me = sessions / str(os.getpid())
    with _locked(STATE / "test-sessions.lock"):
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            _unavailable(f"scripts/slurm_cluster.sh start failed:\n{proc.stderr[-3000:]}")
        if proc.stdout.strip() == "started":
            (STATE / "started-by-tests").touch()
        me.touch()
        seconds = time.perf_counter() - t0
        print(f"SLURM test cluster {proc.stdout.strip()} in {seconds:.1f} s", file=sys.stderr)
    yield
    with _locked(STATE / "test-sessions.lock"):
        me.unlink(missing_ok=True)
        others = [p for p in sessions.iterdir() if p.name.isdigit() and _alive(int(p.name))]
        if not others and (STATE / "started-by-tests").exists():
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)
            (STATE / "started-by-tests").unlink()


def scontrol_job(jobid: str) -> str:
    proc = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True)
    return proc.stdout


def slurm_snakemake(workdir: Path, *args: str) -> list[str]:
    """`snakemake --profile slurm ARGS` from the repository root, as a user types it (the config is
    added with --configfile, after the targets, and status checks start after 1 s instead of 20)."""
    return [
        SNAKEMAKE,
        "--profile",
        "slurm",
        *args,
        "-d",
        str(workdir),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--configfile",
        str(workdir / "config.yaml"),
    ]


def run_slurm(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        slurm_snakemake(workdir, *args), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def run_ids(config: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "qgen", "runs", str(config)], capture_output=True, text=True, check=True
    ).stdout
    return [line.split("\t")[0] for line in out.splitlines()[1:]]


# ---- the profile without a cluster (dry runs) -----------------------------------------------------
def test_profile_name_resolves_from_the_repository_root_and_packs_runs(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(TINY)
    dry = run_slurm(tmp_path, "all", "-n")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    # `all`: the 4 runs in one shard job (up to 2 x runtime.shard_runs per shard), no per-run jobs
    assert out.count("rule shard:") == 1 and "rule train:" not in out and "Group job" not in out
    small = tmp_path / "small_shards"
    small.mkdir()
    (small / "config.yaml").write_text(
        TINY.replace("checkpoint_every: 1}", "checkpoint_every: 1, shard_runs: 1}")
    )
    more = run_slurm(small, "all", "-n")
    assert (more.stdout + more.stderr).count("rule shard:") > 1  # 4 buckets of digits runs
    # runs asked for one by one: their per-run jobs in one group job (up to 20 runs), or one per run
    targets = [f"results/runs/{rid}/measures.json" for rid in run_ids(tmp_path / "config.yaml")]
    grouped = run_slurm(tmp_path, *targets, "-n")
    assert (grouped.stdout + grouped.stderr).count("Group job runs") == 1
    per_run = run_slurm(tmp_path, *targets, "-n", "--group-components", "runs=1")
    assert (per_run.stdout + per_run.stderr).count("Group job runs") == 4


def test_cluster_resources_come_from_config_then_environment(tmp_path, monkeypatch) -> None:
    (tmp_path / "config.yaml").write_text(TINY + "resources:\n  train: {gpus: 1, mem_mb: 3000}\n")
    monkeypatch.setenv("QGEN_SLURM_PARTITION", "cpuq")
    monkeypatch.setenv("QGEN_SLURM_GPU_PARTITION", "gpuq")
    monkeypatch.setenv("QGEN_SLURM_ACCOUNT", "proj")
    out = run_slurm(tmp_path, "all", "-n").stdout
    # the shard job: one GPU for its runs, one run's memory (the larger of train and measure) per run at
    # once, the runtimes of its 4 runs one after another: 4 x (120 + 60) min
    shard = "runtime=720, gpu=1, slurm_partition=gpuq, slurm_account=proj, mem_mb=4000"
    assert out.count(shard) == 1
    assert "runtime=10, gpu=0, slurm_partition=cpuq, slurm_account=proj, mem_mb=2000" in out  # prepare_data
    (tmp_path / "config.yaml").write_text(
        TINY.replace("checkpoint_every: 1}", "checkpoint_every: 1, parallel_runs: 2}")
        + "resources:\n  train: {gpus: 1, mem_mb: 3000}\n"
    )
    two = run_slurm(tmp_path, "all", "-n").stdout
    assert "runtime=360, gpu=1, slurm_partition=gpuq, slurm_account=proj, mem_mb=8000" in two
    assert re.search(r"rule shard:(?:\n    .*)*\n    threads: 2", two), two[-3000:]  # 2 runs x 1 thread
    (tmp_path / "config.yaml").write_text(TINY + "resources:\n  train: {gpus: 1, mem_mb: 3000}\n")
    rid = run_ids(tmp_path / "config.yaml")[0]
    out = run_slurm(tmp_path, f"results/runs/{rid}/measures.json", "-n").stdout  # the per-run rules
    train = "runtime=120, gpu=1, slurm_partition=gpuq, slurm_account=proj, runs_at_once=1, mem_mb=3000"
    measure = "runtime=60, gpu=0, slurm_partition=cpuq, slurm_account=proj, runs_at_once=1, mem_mb=4000"
    assert out.count(train) == 1 and out.count(measure) == 1

    (tmp_path / "config.yaml").write_text(TINY + "cluster: {partition: short, account: other}\n")
    out = run_slurm(tmp_path, "all", "-n").stdout
    assert out.count("slurm_partition=short, slurm_account=other") == 2  # config wins over environment

    monkeypatch.setenv("QGEN_SLURM_PARTITION", "a b; rm -rf /")
    (tmp_path / "config.yaml").write_text(TINY)
    bad = run_slurm(tmp_path, "all", "-n")
    assert bad.returncode != 0
    assert (
        "cluster.partition / $QGEN_SLURM_PARTITION: 'a b; rm -rf /' is not a SLURM name"
        in bad.stdout + bad.stderr
    )


# ---- (a) the profile end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_built(slurm_cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    workdir = tmp_path_factory.mktemp("slurm_tiny")
    (workdir / "config.yaml").write_text(CLUSTER_TINY)
    t0 = time.perf_counter()
    proc = run_slurm(workdir, "all")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"snakemake --profile slurm all failed:\n{proc.stderr[-6000:]}"
    return workdir, proc, seconds


@pytest.mark.slurm
def test_profile_builds_the_tiny_config_through_slurm_in_two_jobs(cluster_built) -> None:
    workdir, proc, seconds = cluster_built
    out = proc.stdout + proc.stderr
    assert "Using profiles slurm and workflow specific profile profiles/default" in out
    submitted = SUBMITTED.findall(out)
    # prepare_data, then the shard job of all 4 runs; the cheap rules (collect, analyse, report,
    # notebook) run in the controller
    assert len(submitted) == 2, submitted
    assert "rule_prepare_data" in submitted[0][1] and "rule_shard" in submitted[1][1]
    for name in ("reports/tiny.html", "results/tiny/claims.json", "figures/tiny/gap_by_bits.png"):
        assert (workdir / name).stat().st_size > 0
    runs = list((workdir / "results/runs").glob("*/metrics.json"))
    assert len(runs) == 4 and len(list((workdir / "results/runs").glob("*/measures.json"))) == 4

    # the shard job asked for one run's CPU and memory, one GPU, and the sum of the runtimes: its runs
    # run one after another in one worker (4 runs x (120 + 60) min = 12 h)
    (record,) = [json.loads(p.read_text()) for p in (workdir / "results/shards").glob("*.json")]
    assert len(record["runs"]) == 4 and [w["runs"] for w in record["workers"]] == [4]
    group = scontrol_job(submitted[1][0])
    assert "JobState=COMPLETED" in group, group
    assert "NumCPUs=1 " in group and "TimeLimit=12:00:00" in group and "mem=4000M" in group, group
    assert "TresPerJob=gres:gpu:1" in group, group  # a (fake) GPU was allocated

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for path in runs:
        prov = json.loads(path.read_text())["provenance"]
        assert prov["runtime"]["device"] == "auto" and prov["device"] == device
    print(f"tiny config through SLURM: {seconds:.0f} s, {len(submitted)} SLURM jobs", file=sys.stderr)


@pytest.mark.slurm
def test_changing_cluster_resources_reruns_nothing(cluster_built) -> None:
    workdir, _, _ = cluster_built
    config = workdir / "config.yaml"
    text = config.read_text()
    config.write_text(
        text.replace("train: {gpus: 1}", "train: {gpus: 0, mem_mb: 3000, runtime: 30}")
        + "cluster: {partition: debug, account: nobody}\n"
    )
    try:
        dry = run_slurm(workdir, "all", "-n")
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "Nothing to be done" in dry.stdout + dry.stderr
    finally:
        config.write_text(text)


# ---- (b) requeue mid-training ---------------------------------------------------------------------
def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slurm
def test_requeued_training_job_resumes_from_its_checkpoint_with_identical_metrics(
    slurm_cluster, tmp_path
) -> None:
    """`scontrol requeue` SIGTERMs the running shard job and restarts it: its worker writes a mid-epoch
    checkpoint, the restarted job resumes from it, the controller waits through the requeue, and the
    metrics equal those of an uninterrupted local build of the same run by the per-run rules."""
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(SLOW)
    (run_id,) = run_ids(workdir / "config.yaml")
    targets = ["results/shards/digits-slow-0of1.json"]
    train_log = workdir / "logs" / "train" / f"{run_id}.log"
    ckpt = workdir / "results" / "runs" / run_id / "checkpoint.pt"
    controller_out = tmp_path / "controller.txt"
    with open(controller_out, "w") as out:
        controller = subprocess.Popen(
            slurm_snakemake(workdir, *targets), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(
            lambda: train_log.exists() and "epoch 2/30" in train_log.read_text(), 240, "epoch 2 to finish"
        )
        jobid = next(j for j, log in SUBMITTED.findall(controller_out.read_text()) if "rule_shard" in log)
        subprocess.run(["scontrol", "requeue", jobid], check=True)
        _wait_for(lambda: ckpt.exists() and "partial" in checkpoint.load(ckpt), 60, "the SIGTERM checkpoint")
        state = checkpoint.load(ckpt)
        assert 2 <= state["epoch"] < 30 and state["partial"]["batch_start"] > 0
        # SLURM holds a requeued batch job for about two minutes (BeginTime); release it now
        _wait_for(lambda: "JobState=PENDING" in scontrol_job(jobid), 60, "the job to be pending again")
        subprocess.run(["scontrol", "update", f"JobId={jobid}", "StartTime=now"], check=True)
        assert controller.wait(timeout=300) == 0, controller_out.read_text()[-6000:]
    finally:
        if controller.poll() is None:
            controller.terminate()
            controller.wait(timeout=60)

    assert "Restarts=1" in scontrol_job(jobid)
    log = train_log.read_text()  # the restarted job's log
    assert f"resumed from results/runs/{run_id}/checkpoint.pt at epoch {state['epoch']}" in log
    assert f"continuing epoch {state['epoch'] + 1} at example {state['partial']['batch_start']}" in log
    assert not ckpt.exists() and not list((workdir / ".snakemake" / "incomplete").iterdir())

    reference = tmp_path / "reference"  # the same run built locally, uninterrupted
    reference.mkdir()
    (reference / "config.yaml").write_text(SLOW)
    metrics = f"results/runs/{run_id}/metrics.json"
    subprocess.run(
        [SNAKEMAKE, metrics, "-d", str(reference), "--configfile", str(reference / "config.yaml")],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    a, b = (json.loads((d / metrics).read_text()) for d in (reference, workdir))
    assert b["metrics"] == a["metrics"] and b["fit"] == a["fit"]
    assert b["provenance"]["resumed_from_epoch"] == state["epoch"]
    assert a["provenance"]["resumed_from_epoch"] is None


# ---- (c) a failing job ----------------------------------------------------------------------------
@pytest.mark.slurm
def test_failing_job_names_its_slurm_log_and_rule_log(slurm_cluster, tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(TINY.replace("seeds: [0, 1]", "seeds: [0]"))
    first, *_ = run_ids(tmp_path / "config.yaml")
    broken = tmp_path / "results" / "runs" / first / "checkpoint.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")  # e.g. a file system that lost data
    proc = run_slurm(tmp_path, f"results/runs/{first}/measures.json")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0

    (jobid, slurm_log), *_ = [(j, log) for j, log in SUBMITTED.findall(out) if "group_runs" in log]
    assert slurm_log == str(tmp_path / "logs/slurm/group_runs_measure_train" / f"{jobid}.log")
    assert f"log: {slurm_log} (check log file(s) for error details)" in out
    rule_log = f"logs/train/{first}.log"
    assert f"log: {rule_log} (check log file(s) for error details)" in out
    assert "Weights only load failed" in (tmp_path / rule_log).read_text()
    # show-failed-logs (profiles/default): the controller prints the job's SLURM log and the rule
    # log, so the error itself is on the screen
    assert f"Logfile {slurm_log}:" in out and f"Logfile {rule_log}:" in out
    assert "Weights only load failed" in out and "Error in rule train" in Path(slurm_log).read_text()
    job = scontrol_job(jobid)
    assert "JobState=FAILED" in job and "ExitCode=1:0" in job, job
