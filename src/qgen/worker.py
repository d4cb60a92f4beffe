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
starts ``K = runtime.parallel_runs`` worker processes (``spawn``; at most one per pending run); each
imports torch, applies the runtime settings and, on CUDA with ``K > 1``, limits itself to 1/K of the GPU's
memory, once. The controller hands each idle worker the next run. A worker builds it with the same
functions as ``qgen train`` (:mod:`qgen.runner`), its stderr (fd 2, so C++ warnings too) in the run's
own log, ``logs/train/<run_id>.log`` (``logs/measure/`` when only measuring), and keeps the run's opened
dataset for the next run of that dataset (opening checks the files' checksums again; nothing trains on the
cached tensors in place). Every run seeds its own RNGs and no state carries over, so a run's files are
the same as when it is built alone (bit for bit on CPU; tests/test_worker.py).

Failure and interruption: a run that raises fails alone (its traceback in its log, named in the shard
log); its siblings go on, and the shard job fails at the end without its record, so a rerun retries just
that run. A worker that dies (out of memory, a segfault) fails its run and is replaced. A signal (SLURM
preemption or requeue, ``scancel``, Ctrl-C, Snakemake stopping) reaches every process of the job: workers
checkpoint their runs (:mod:`qgen.train.preemption`), the controller hands out nothing more, waits for
them and exits with 128 + the signal. Every file is written atomically, so the rerun skips the finished
runs and resumes the interrupted ones from their checkpoints. If the controller is killed outright, its
workers get SIGTERM (Linux parent-death signal) and checkpoint too.

The shard record (the job's output, ``results/shards/<shard>.json``) lists what happened to each run and
the seconds it spent: ``compute`` (training, evaluation, measures) and the job's ``overhead``, i.e.
``workers * wall - compute`` (interpreter starts, imports, data loading, file checks, idle slots):
``benchmarks/run_overhead.py`` tabulates it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qgen import io as qio
from qgen.shards import DONE, MEASURE, TRAIN, canonical_settings, data_checksum, run_state

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


def _worker_main(
    index: int, tasks: Any, results: Any, run_cfg: dict[str, Any], parallel: int, spawned: float
) -> None:
    """Body of one worker process: set up once, then build the runs it is handed until told to stop."""
    import logging

    _die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        from qgen import runner, runtime

        device = runtime.configure(run_cfg)
        if device.type == "cuda" and parallel > 1:  # K runs share the GPU: each may use 1/K of its memory
            import torch

            torch.cuda.set_per_process_memory_fraction(1.0 / parallel, device)
        results.put(("ready", index, {"startup": time.time() - spawned, "device": str(device)}))
        cache: dict[tuple[str, str], Any] = {}
        while (task := tasks.get()) is not None:
            results.put(("done", index, _build(task, run_cfg, device, cache, runner)))
            if task.get("interrupted"):
                break
    except KeyboardInterrupt:
        pass


def _build(task: dict[str, Any], run_cfg: dict[str, Any], device: Any, cache: dict, runner: Any) -> dict:
    """Build one run in this worker, its stderr in its log; a result record, never an exception (an
    interruption is recorded in ``task`` so the worker stops after reporting it)."""
    from qgen.train.preemption import Interrupted, TrainingInterrupted

    rid, spec, paths = task["run_id"], task["spec"], task["paths"]
    t0 = time.perf_counter()
    result: dict[str, Any] = {"run_id": rid, "log": paths["log"]}
    with _stderr_to(Path(paths["log"])):
        try:
            key = (paths["meta"], canonical_settings(spec["data"]))
            t_data = time.perf_counter()
            data = cache.pop(key, None) or runner.open_data(paths["meta"], spec, device, run_cfg)
            cache[key] = data  # most recently used last
            while len(cache) > DATA_CACHE:
                cache.pop(next(iter(cache)))
            data_seconds = time.perf_counter() - t_data
            record = {"run_id": rid, "spec": spec}
            if task["state"] == TRAIN:
                for name in ("metrics", "measures"):  # results of an older model of this run id
                    Path(paths[name]).unlink(missing_ok=True)
                built = runner.train_files(
                    record, paths["meta"], paths["model"], paths["log_csv"], paths["metrics"], run_cfg,
                    device, settings_json=task["settings"], measures_path=paths["measures"], data=data,
                )  # fmt: skip
            else:
                built = runner.measure_files(
                    paths["model"], paths["meta"], task["settings"], paths["measures"], run_cfg, device,
                    data=data,
                )  # fmt: skip
            built.seconds["data"] = data_seconds
            result.update(ok=True, action=built.action, status=built.status, seconds=built.seconds)
        except (TrainingInterrupted, Interrupted, KeyboardInterrupt) as err:
            print(f"{rid}: {err or 'interrupted'}", file=sys.stderr)
            task["interrupted"] = True
            result.update(ok=False, interrupted=True, error=str(err) or "interrupted")
        except BaseException as err:  # a failing run fails alone: its siblings go on
            traceback.print_exc()
            result.update(ok=False, error=f"{type(err).__name__}: {err}")
    result["wall"] = time.perf_counter() - t0
    return result


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
        "train_log": str(log_dir / "train" / f"{rid}.log"),
        "measure_log": str(log_dir / "measure" / f"{rid}.log"),
    }


def plan(
    specs: Mapping[str, dict[str, Any]], settings_json: str, runs_dir: Path, data_dir: Path, log_dir: Path
) -> list[dict[str, Any]]:
    """One task per run of the shard: its spec, paths and what it still needs (``state``)."""
    settings = canonical_settings(json.loads(settings_json))
    checksums: dict[str, str | None] = {}
    tasks = []
    for rid, spec in specs.items():
        paths = run_paths(rid, spec, runs_dir, data_dir, log_dir)
        if paths["meta"] not in checksums:
            checksums[paths["meta"]] = data_checksum(Path(paths["meta"]))
        state = run_state(runs_dir / rid, rid, checksums[paths["meta"]], settings)
        paths["log"] = paths["train_log" if state == TRAIN else "measure_log"]
        tasks.append({"run_id": rid, "spec": spec, "paths": paths, "state": state, "settings": settings_json})
    return tasks


class _Stop:
    """The controller's signal handlers: remember the first signal, hand out no more runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            _say(f"{signal.Signals(signum).name}: no more runs; waiting for the running ones to checkpoint")
        self.signum = self.signum or signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _execute(
    tasks: list[dict[str, Any]], run_cfg: dict[str, Any], parallel: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """Build ``tasks`` in up to ``parallel`` worker processes; (results, worker records, signal or None)."""
    ctx = mp.get_context("spawn")
    results_q = ctx.Queue()
    todo = list(tasks)
    workers: dict[int, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    stop = _Stop()
    count = 0

    def start() -> None:
        nonlocal count
        q = ctx.Queue()
        args = (count, q, results_q, run_cfg, parallel, time.time())
        proc = ctx.Process(target=_worker_main, args=args, daemon=True)
        proc.start()
        workers[count] = {
            "proc": proc,
            "tasks": q,
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
            stop.signum = stop.signum or signal.SIGTERM

    def handle(timeout: float) -> bool:
        try:
            kind, index, body = results_q.get(timeout=timeout) if timeout else results_q.get_nowait()
        except queue.Empty:
            return False
        w = workers[index]
        if kind == "ready":
            w.update(ready=True, startup=body["startup"], device=body["device"])
        else:
            w["task"], w["runs"] = None, w["runs"] + 1
            finish(body)
        return True

    try:
        for _ in range(min(parallel, len(todo))):
            start()
        while workers:
            handle(0.5)
            for index, w in list(workers.items()):
                proc = w["proc"]
                if not proc.is_alive():
                    while handle(0):  # what it sent before it exited
                        pass
                    if w["task"] is not None:  # died while building a run: that run fails alone
                        task = w["task"]
                        error = f"worker process died (exit code {proc.exitcode})"
                        finish(
                            {
                                "run_id": task["run_id"],
                                "log": task["paths"]["log"],
                                "ok": False,
                                "error": error,
                            }
                        )
                    records.append(_worker_record(w))
                    del workers[index]
                    if todo and stop.signum is None:
                        start()
                elif w["ready"] and w["task"] is None and not w["stopping"]:
                    if todo and stop.signum is None:  # hand the idle worker the next run
                        w["task"] = todo.pop(0)
                        w["tasks"].put(w["task"])
                    else:
                        w["stopping"] = True
                        w["tasks"].put(None)
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
) -> int:
    """Build every run of shard ``name`` that is not done; write its record to ``out`` when all succeed.
    Returns the exit status: 0, 1 when a run failed, 128 + signal when interrupted."""
    t0 = time.perf_counter()
    parallel = int(run_cfg.get("parallel_runs", 1))
    tasks = plan(specs, settings_json, runs_dir, data_dir, log_dir)
    pending = [t for t in tasks if t["state"] != DONE]
    counts = {s: sum(t["state"] == s for t in tasks) for s in (TRAIN, MEASURE, DONE)}
    _say(
        f"{name}: {len(tasks)} runs: {counts[TRAIN]} to train, {counts[MEASURE]} to measure, "
        f"{counts[DONE]} done; {min(parallel, len(pending))} worker process(es)"
    )
    done, workers, signum = _execute(pending, run_cfg, parallel) if pending else ([], [], None)
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
    slots = max(1, len(workers))
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
