"""The shard worker: one job builds the runs of a shard in worker processes that outlive one run (issue 15).

Why shards of runs, not a worker fed by thin per-run jobs: the per-run job is what costs. Snakemake spends
milliseconds per job building the DAG (two jobs per run made a 10,000-run grid take 80 s to plan) and
SLURM queues every job; a thin client per run would keep both. A shard is one job for many runs: the
DAG holds one job per shard (:mod:`qgen.shards`), a cluster gets one SLURM job (one GPU) per shard, and
each run's files stay its own target through the per-run rules ``train`` and ``measure``, which build
exactly one run when a run's file is asked for (``snakemake results/runs/<id>/metrics.json``, ``qgen
audit``).

How a shard job runs (:func:`run_shard`): the controller (this process; it never imports torch) decides
from file contents what each run still needs (:func:`qgen.shards.run_state`) and skips finished runs. It
starts ``K`` worker processes (``spawn``; ``K = runtime.parallel_runs``, at most the job's CPUs over
``runtime.threads`` and one per pending run); each imports torch, applies the runtime settings and, on CUDA
with ``K > 1``, limits itself to 1/K of the GPU's memory, once. The measures of a run trained by the per-run
rule are adopted from its cache when they match, as the per-run measure rule would. The controller hands
each idle worker the next run. A worker builds it with the same
functions as ``qgen train`` (:mod:`qgen.runner`), its stderr (fd 2, so C++ warnings too) in the run's
own log, ``logs/train/<run_id>.log`` (``logs/measure/`` when only measuring), and keeps the run's opened
dataset for the next run of that dataset (opened, and its files' checksums checked, once per worker;
training reads the cached tensors, never writes them). Every run seeds its own RNGs and no state carries
over, so a run's files are the same as when it is built alone (bit for bit on CPU; tests/test_worker.py).

Failure and interruption: a run that raises fails alone (its traceback in its log, named in the shard
log); its siblings go on, and the shard job fails at the end without its record, so a rerun retries just
that run. A worker that dies (out of memory, a segfault) fails its run and is replaced; if no worker can
start at all (no CUDA device, a broken environment) the shard fails at once with the reason. Each worker
talks to the controller through its own pipe, so one dying cannot block the others. A signal sent to
every process of the job (SLURM preemption, requeue, ``scancel`` and time limits signal them all; Ctrl-C
signals the terminal's process group) makes the workers checkpoint their runs
(:mod:`qgen.train.preemption`); the controller hands out nothing more, waits for them and exits with 128 +
the signal. A signal to the controller alone (``kill PID``) is not forwarded (a worker that got the same
signal directly would take a second one as "stop without a checkpoint"): the controller stops handing out
runs and waits for the running ones to finish. Every file is written atomically, so the rerun skips the
finished runs and resumes the interrupted ones from their checkpoints. If the controller is killed
outright, its workers get SIGTERM (Linux parent-death signal) and checkpoint.

The shard record (the job's output, ``results/shards/<shard>.json``) lists what happened to each run and
the seconds it spent: ``compute`` (training, evaluation, measures) and the job's ``overhead``, i.e.
``workers * wall - compute``, the wall time counted from the controller's own process start (interpreter
starts, imports, data loading, file checks, idle slots):
``benchmarks/run_overhead.py`` tabulates it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from qgen import io as qio
from qgen.job_cost import process_age
from qgen.shards import DONE, MEASURE, ROBUSTNESS, TRAIN, canonical_settings, robustness_key, run_states

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
#: datasets a worker keeps open between runs
DATA_CACHE = 2


def _say(message: str) -> None:
    print(f"qgen shard: {message}", file=sys.stderr, flush=True)


# ---- the worker process --------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the controller dies (it then checkpoints like on preemption)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 (Python's sys.stderr and C-level writes) to ``path`` while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "w", encoding="utf-8") as fh:
            os.dup2(fh.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _worker_main(index: int, conn: Connection, run_cfg: dict[str, Any], share: int, spawned: float) -> None:
    """Body of one worker process: set up once, then build the runs it is handed until told to stop.
    ``share``: how many workers share the device (on CUDA each may use 1/share of its memory)."""
    import logging

    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        from qgen import runner, runtime

        device = runtime.configure(run_cfg)
        if device.type == "cuda" and share > 1:  # K runs share the GPU: each may use 1/K of its memory
            import torch

            torch.cuda.set_per_process_memory_fraction(1.0 / share, device)
        conn.send(("ready", {"startup": time.time() - spawned, "device": str(device)}))
        cache: dict[tuple[str, str], Any] = {}
        while (task := conn.recv()) is not None:
            result = _build(task, run_cfg, device, cache, runner)
            conn.send(("done", result))
            if result.get("interrupted"):
                return
    except (KeyboardInterrupt, EOFError):  # a signal while idle; the controller went away
        return
    # Told to stop, every file of its runs written (atomically) and closed: skip the interpreter's teardown
    # of torch, which the controller would wait for (1.1 s per shard on the 2-core machine).
    sys.stdout.flush()
    sys.stderr.flush()
    conn.close()
    os._exit(0)


def _open_cached(
    cache: dict, paths: dict[str, str], spec: dict[str, Any], device: Any, run_cfg, runner
) -> Any:
    """The run's data, kept open between runs of one dataset (most recently used last)."""
    key = (paths["meta"], canonical_settings(spec["data"]))
    data = cache.pop(key, None) or runner.open_data(paths["meta"], spec, device, run_cfg)
    cache[key] = data
    while len(cache) > DATA_CACHE:
        cache.pop(next(iter(cache)))
    return data


def _build(task: dict[str, Any], run_cfg: dict[str, Any], device: Any, cache: dict, runner: Any) -> dict:
    """Build one run in this worker, its stderr in its log: a result record, never an exception."""
    from qgen.train.preemption import Interrupted, TrainingInterrupted

    rid, spec, paths = task["run_id"], task["spec"], task["paths"]
    t0 = time.perf_counter()
    result: dict[str, Any] = {"run_id": rid, "log": paths["log"]}
    ckpt = Path(paths["model"]).with_name("checkpoint.pt")
    with _stderr_to(Path(paths["log"])):
        try:
            t_data = time.perf_counter()
            data = _open_cached(cache, paths, spec, device, run_cfg, runner)
            data_seconds = time.perf_counter() - t_data
            if task["state"] == TRAIN:
                if task["stale"]:  # a finished run of other data: its checkpoint must not be resumed
                    ckpt.unlink(missing_ok=True)
                for name in ("metrics", "measures", "robustness"):  # results of an older model of this run id
                    Path(paths[name]).unlink(missing_ok=True)
                built = runner.train_files(
                    {"run_id": rid, "spec": spec}, paths["meta"], paths["model"], paths["log_csv"],
                    paths["metrics"], run_cfg, device, settings_json=task["settings"],
                    measures_path=paths["measures"], data=data,
                )  # fmt: skip
            elif task["state"] == MEASURE:
                built = _measure(paths, task["settings"], run_cfg, device, data, runner)
                ckpt.unlink(missing_ok=True)  # a finished training's final checkpoint: its run is complete
            robust = task.get("robustness")
            if robust is not None:  # the robustness step, after training and measuring, or alone
                evaluated = runner.robustness_files(
                    paths["model"], paths["meta"], robust["corrupted_meta"], robust["settings"],
                    paths["robustness"], run_cfg, device, data=data,
                )  # fmt: skip
                if task["state"] == ROBUSTNESS:
                    built = evaluated
                else:
                    built.seconds.update(evaluated.seconds)
            built.seconds["data"] = data_seconds
            result.update(ok=True, action=built.action, status=built.status, seconds=built.seconds)
        except (TrainingInterrupted, Interrupted) as err:
            print(f"{rid}: {err}", file=sys.stderr)
            result.update(ok=False, interrupted=err.signum, error=str(err))
        except KeyboardInterrupt as err:  # a second signal while checkpointing
            print(f"{rid}: {err or 'interrupted'}", file=sys.stderr)
            result.update(ok=False, interrupted=signal.SIGINT, error=str(err) or "interrupted")
        except BaseException as err:  # a failing run fails alone: its siblings go on
            traceback.print_exc()
            result.update(ok=False, error=f"{type(err).__name__}: {err}")
    result["wall"] = time.perf_counter() - t0
    return result


def _measure(paths: dict[str, str], settings_json: str, run_cfg, device, data, runner) -> Any:
    """Measures of a trained run: adopted from the per-run train rule's cache when it holds exactly these
    settings for this model file, else measured."""
    cache = Path(paths["model"]).with_name("measures.cache.json")
    cached = runner.adopt_cache(cache, settings_json, paths["model"], paths["measures"])
    if cached is not None:
        return runner.Built(cached["run_id"], "adopted", cached["status"], {})
    built = runner.measure_files(
        paths["model"], paths["meta"], settings_json, paths["measures"], run_cfg, device, data=data
    )
    cache.unlink(missing_ok=True)
    return built


# ---- the controller ------------------------------------------------------------------------------


def run_paths(
    rid: str, spec: Mapping[str, Any], runs_dir: Path, data_dir: Path, log_dir: Path
) -> dict[str, str]:
    """Every file of one run the worker reads or writes (the per-run rules' paths)."""
    run_dir = runs_dir / rid
    return {
        "meta": str(data_dir / spec["data"]["name"] / "meta.json"),
        "model": str(run_dir / "model.pt"),
        "log_csv": str(run_dir / "train_log.csv"),
        "metrics": str(run_dir / "metrics.json"),
        "measures": str(run_dir / "measures.json"),
        "robustness": str(run_dir / "robustness.json"),
        "train_log": str(log_dir / "train" / f"{rid}.log"),
        "measure_log": str(log_dir / "measure" / f"{rid}.log"),
        "robustness_log": str(log_dir / "robustness" / f"{rid}.log"),
    }


#: the log of a run, by what it still needs
LOGS = {TRAIN: "train_log", MEASURE: "measure_log", ROBUSTNESS: "robustness_log", DONE: "measure_log"}


def plan(
    specs: Mapping[str, dict[str, Any]],
    settings_json: str,
    runs_dir: Path,
    data_dir: Path,
    log_dir: Path,
    robustness: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One task per run of the shard: its spec, paths and what it still needs (``state``; ``stale``: the
    run has finished results of other data, so its checkpoint, if any, is not resumed; ``robustness``: the
    step's settings and corrupted set, when the shard's runs have it). ``robustness``: {settings (JSON),
    corrupted_meta} or None."""
    keys = {}
    if robustness is not None:
        key = robustness_key(robustness["settings"], Path(robustness["corrupted_meta"]))
        keys = dict.fromkeys(specs, key)
    states = run_states(specs, canonical_settings(json.loads(settings_json)), runs_dir, data_dir, keys)
    tasks = []
    for rid, spec in specs.items():
        paths = run_paths(rid, spec, runs_dir, data_dir, log_dir)
        paths["log"] = paths[LOGS[states[rid]]]
        stale = states[rid] == TRAIN and Path(paths["metrics"]).is_file()
        tasks.append(
            {
                "run_id": rid,
                "spec": spec,
                "paths": paths,
                "state": states[rid],
                "stale": stale,
                "settings": settings_json,
                "robustness": dict(robustness) if robustness is not None else None,
            }
        )
    return tasks


class _Stop:
    """The controller's signal handlers: remember the first signal, hand out no more runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            _say(f"{signal.Signals(signum).name}: no more runs; waiting for the running ones to stop")
        self.signum = self.signum or signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _execute(
    tasks: list[dict[str, Any]], run_cfg: dict[str, Any], workers_wanted: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """Build ``tasks`` in ``workers_wanted`` worker processes; (results, worker records, signal or None).

    Each worker has its own pipe; the controller waits on the pipes and the processes' sentinels, so a
    worker that dies is noticed at once and cannot block the others. A worker that dies while building a
    run fails that run and is replaced; one that dies before it is ready (it cannot import torch, sees no
    CUDA device, ...) is not replaced when no worker ever got ready: the remaining runs fail with the
    reason, instead of respawning until the time limit."""
    ctx = mp.get_context("spawn")
    todo = list(tasks)
    workers: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    stop = _Stop()
    count, ever_ready = 0, False

    def start() -> None:
        nonlocal count
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main, args=(count, theirs, run_cfg, workers_wanted, time.time()), daemon=True
        )
        proc.start()
        theirs.close()
        workers[count] = {
            "proc": proc,
            "conn": mine,
            "task": None,
            "ready": False,
            "runs": 0,
            "stopping": False,
        }
        count += 1

    def finish(body: dict[str, Any]) -> None:
        done.append(body)
        _report(body, len(done), len(tasks))
        if body.get("interrupted"):
            stop.signum = stop.signum or int(body["interrupted"])

    def receive(w: dict[str, Any]) -> None:
        while w["conn"].poll():
            try:
                kind, body = w["conn"].recv()
            except (EOFError, OSError):
                return
            if kind == "ready":
                nonlocal ever_ready
                ever_ready = True
                w.update(ready=True, startup=body["startup"], device=body["device"])
            else:
                w["task"], w["runs"] = None, w["runs"] + 1
                finish(body)

    try:
        for _ in range(workers_wanted):
            start()
        while workers:
            waitables = [x for w in workers.values() for x in (w["conn"], w["proc"].sentinel)]
            mp_connection.wait(waitables, timeout=1.0)
            for index, w in list(workers.items()):
                receive(w)
                proc = w["proc"]
                if not proc.is_alive():
                    receive(w)  # whatever it sent before it exited
                    if w["task"] is not None:  # died while building a run: that run fails alone
                        error = f"worker process died (exit code {proc.exitcode})"
                        finish(
                            {
                                "run_id": w["task"]["run_id"],
                                "log": w["task"]["paths"]["log"],
                                "ok": False,
                                "error": error,
                            }
                        )
                    records.append(_worker_record(w))
                    del workers[index]
                    if not w["ready"] and not ever_ready:  # no worker could start here: none is replaced
                        if not workers:
                            reason = (
                                f"no worker process could start (exit code {proc.exitcode}; traceback above)"
                            )
                            for task in todo:
                                failed = {"run_id": task["run_id"], "log": "the shard log", "ok": False}
                                finish({**failed, "error": reason})
                            todo.clear()
                    elif todo and stop.signum is None and count < workers_wanted + len(tasks):
                        start()  # (each run can cost at most one replacement)
                elif w["ready"] and w["task"] is None and not w["stopping"]:
                    if todo and stop.signum is None:  # hand the idle worker the next run
                        w["task"] = todo.pop(0)
                        w["conn"].send(w["task"])
                    else:
                        w["stopping"] = True
                        w["conn"].send(None)
    finally:
        stop.restore()
        for w in workers.values():
            w["proc"].kill()
    return done, records, stop.signum


def _worker_record(w: dict[str, Any]) -> dict[str, Any]:
    return {"startup": round(w.get("startup", 0.0), 3), "runs": w["runs"], "device": w.get("device")}


def _report(body: dict[str, Any], k: int, n: int) -> None:
    if body["ok"]:
        took = sum(v for key, v in body["seconds"].items() if key != "data")
        _say(f"[{k}/{n}] {body['run_id']}: {body['action']} ({body['status']}) in {took:.1f} s")
    else:
        _say(f"[{k}/{n}] {body['run_id']}: FAILED: {body['error']}; log: {body['log']}")


def run_shard(
    name: str,
    specs: Mapping[str, dict[str, Any]],
    *,
    settings_json: str,
    run_cfg: dict[str, Any],
    out: Path,
    runs_dir: Path = Path("results/runs"),
    data_dir: Path = Path("data/prepared"),
    log_dir: Path = Path("logs"),
    robustness: Mapping[str, str] | None = None,
) -> int:
    """Build every run of shard ``name`` that is not done; write its record to ``out`` when all succeed.
    Returns the exit status: 0, 1 when a run failed, 128 + signal when interrupted. ``robustness``: as
    :func:`plan`'s."""
    t0 = time.perf_counter() - process_age()
    parallel = int(run_cfg.get("parallel_runs", 1))
    try:
        tasks = plan(specs, settings_json, runs_dir, data_dir, log_dir, robustness)
    except ValueError as err:
        _say(f"{name}: {err}")
        return 1
    pending = [t for t in tasks if t["state"] != DONE]
    counts = {s: sum(t["state"] == s for t in tasks) for s in (TRAIN, MEASURE, ROBUSTNESS, DONE)}
    workers_wanted = min(parallel, len(pending))
    robust = f", {counts[ROBUSTNESS]} to evaluate on corrupted data" if robustness is not None else ""
    _say(
        f"{name}: {len(tasks)} runs: {counts[TRAIN]} to train, {counts[MEASURE]} to measure{robust}, "
        f"{counts[DONE]} done; {workers_wanted} worker process(es)"
    )
    done, workers, signum = _execute(pending, run_cfg, workers_wanted) if pending else ([], [], None)
    wall = time.perf_counter() - t0
    failed = [r for r in done if not r["ok"]]
    if signum is not None:
        _say(f"{name}: interrupted; {len(done) - len(failed)} runs finished, rerun to resume the others")
        return 128 + signum
    if failed or len(done) < len(pending):
        for r in failed:
            _say(f"{r['run_id']} failed ({r['error']}): see {r['log']}")
        return 1
    by_id = {r["run_id"]: r for r in done}
    runs = {}
    for t in tasks:
        r = by_id.get(t["run_id"])
        runs[t["run_id"]] = (
            {"action": r["action"], "status": r["status"], "seconds": _rounded(r["seconds"])}
            if r is not None
            else {"action": "skipped"}
        )
    compute = sum(v for r in done for key, v in r["seconds"].items() if key != "data")
    slots = max(1, workers_wanted)
    qio.write_json(
        out,
        {
            "shard": name,
            "runs": runs,
            "parallel_runs": parallel,
            "workers": workers,
            "wall_seconds": round(wall, 3),
            "compute_seconds": round(compute, 3),
            "overhead_seconds": round(slots * wall - compute, 3),
            "host": socket.gethostname(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    _say(f"{name}: done in {wall:.1f} s ({compute:.1f} s of compute in {slots} worker(s))")
    return 0


def _rounded(seconds: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in seconds.items()}
