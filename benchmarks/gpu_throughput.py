"""Training throughput of the small CIFAR families, one run at a time vs K runs at once (issue 15, item 5).

Models: the NiN of config/paper/qgen_cifar.yaml's ``qgen_nin`` base (depth 2, width 8 x base width 25,
SGD at a constant rate, batch 32, no augmentation), CIFAR ResNet-20 and the small ViT (6 x 192, patch 4)
as benchmarks/family_epoch.py builds them (its FAMILIES and spec building), each float and LSQ W4A4 with
8-bit first and last layers (family_epoch.QUANT; for the ViT without qgen_vit's drop path 0.1 and quantized
attention inputs, as family_epoch times it). Data: CIFAR-10-shaped random uint8 images resident on
the device, normalized and augmented there as the run's ``data.augment`` says (measure_cost.synthetic_data);
nothing is downloaded. Steps: the training loop's own optimizer step (measure_cost.training_setup).

How it is timed. K worker processes (``multiprocessing.get_context("spawn")``) start once; each first calls
``qgen.runtime.configure({"device": ..., "threads": T})``, so it runs under the pipeline's determinism
settings. For every model and quantization:

- one run at a time: worker 0 alone builds the model and data on the device, takes ``--warmup`` steps
  (excluded), then times ``--steps`` steps by the wall clock (CUDA: after synchronizing the device);
  images/s = batch x steps / seconds, step ms = seconds / steps.
- K at once: all K workers do the same, and wait at a start barrier after their warm-up, so their timed
  steps start together. A worker that has finished its timed steps keeps training (untimed) until all K
  have finished theirs, so every timed step ran while K runs shared the device. The aggregate is the sum
  of the K workers' images/s, each its batch x steps over its own timed wall seconds.

A model is one run of the paper config's training length (``--epochs``; default the experiment's
``train.max_epochs``: NiN 300, ResNet 200, ViT 200; the NiN's stopping rule, train CE 0.01, usually ends it
sooner, which scales both columns alike) over 50,000 images: models/h = 3600 x images/s / (epochs x 50,000).
K-ratio = models/h with K at once over models/h one at a time (at most K with K processes: the issue's
target, >= 5x for the NiN grid on one H200, needs ``--at-once`` >= 5). LSQ/float = LSQ's step over float's,
one run at a time (target <= 1.2x on the H200). On CUDA: each worker's peak memory
(``torch.cuda.max_memory_allocated``), the largest of the K. Processes share the GPU as the driver lets them
(time slicing between contexts unless an MPS daemon runs: none is started here). On CPU the wall clock
counts whatever else loads the machine. At the end, on CPU or with ``--overhead``: the per-run overhead
table of benchmarks/run_overhead.py (``overhead_table()``), where that module exists.

    python benchmarks/gpu_throughput.py --device cuda                      # K = 8, 50 timed steps
    nice -n 10 python benchmarks/gpu_throughput.py --device cpu --models nin   # K = 2, 4 timed steps
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from family_epoch import FAMILIES, run_spec, spec_of  # the families' specs, float and LSQ W4A4
from measure_cost import REPO, synthetic_data, training_setup  # the shared synthetic set and step

from qgen.config import load_yaml
from qgen.data.run_data import RunData

PAPER_CONFIG = REPO / "config/paper/qgen_cifar.yaml"
#: benchmark model -> the experiment of config/paper/qgen_cifar.yaml it is the base model of
MODELS = {"nin": "qgen_nin", "resnet20": "qgen_resnet", "vit": "qgen_vit"}
QUANTS = ("float", "lsq")
#: images per model in the paper's runs: CIFAR-10's (and CIFAR-100's) training set
TRAIN_IMAGES = 50_000
#: seconds a worker waits at the start barrier, and the parent for a worker's answer
WAIT_S = 900


@dataclass(frozen=True)
class Task:
    """What one worker trains and times: ``steps`` after ``warmup`` steps, ``parties`` workers at once."""

    spec: dict[str, Any]
    steps: int
    warmup: int
    parties: int


def paper_base(model: str) -> dict[str, Any]:
    """The ``base`` run of the model's experiment in config/paper/qgen_cifar.yaml."""
    return load_yaml(PAPER_CONFIG)["experiments"][MODELS[model]]["base"]


def spec_for(model: str, quant: str, batch_size: int) -> dict[str, Any]:
    """The run spec of ``model`` quantized as family_epoch.QUANT[quant], trained in batches of ``batch_size``:
    family_epoch's for its families, the paper config's base run for the NiN."""
    if model in FAMILIES:
        spec = spec_of(model, quant)
    else:
        base = paper_base(model)
        spec = run_spec(base["model"], base["optim"], quant, model, data=base["data"], train=base["train"])
    spec["optim"]["batch_size"] = batch_size
    return spec


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless_batches(data: RunData, order: torch.Tensor, batch: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Full augmented training batches of ``order``, epoch after epoch."""
    usable = order[: len(order) - len(order) % batch]
    for epoch in itertools.count():
        yield from data.train.batches(batch, usable, augment=True, seed=0, epoch=epoch)


def timed_steps(task: Task, device: torch.device, barrier: Any, done: Any) -> dict[str, Any]:
    """Seconds of ``task.steps`` optimizer steps after ``task.warmup`` (see the module docstring)."""
    batch = task.spec["optim"]["batch_size"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    data = synthetic_data(max(1024, 16 * batch), device, augment=task.spec["data"].get("augment"))
    _, step, order = training_setup(task.spec, data, device)
    batches = endless_batches(data, order, batch)
    for _ in range(task.warmup):
        step(*next(batches))
    synchronize(device)
    if task.parties > 1:
        barrier.wait(timeout=WAIT_S)
    t0 = time.perf_counter()
    for _ in range(task.steps):
        step(*next(batches))
    synchronize(device)
    seconds = time.perf_counter() - t0
    if task.parties > 1:
        with done.get_lock():
            done.value += 1
        while done.value < task.parties:  # keep the device shared until every worker has timed its steps
            step(*next(batches))
            synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds": seconds, "images_per_s": batch * task.steps / seconds, "peak_mib": peak}


def worker(
    rank: int, device_name: str, threads: int, tasks: Any, results: Any, barrier: Any, done: Any
) -> None:
    """A spawned process: configure the runtime, then run the tasks it is given until it gets None."""
    from qgen.runtime import configure

    try:
        device = configure({"device": device_name, "threads": threads})
        name = (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        )
        results.put(("ready", rank, {"device": name, "torch": torch.__version__}))
    except Exception:
        results.put(("error", rank, traceback.format_exc()))
        return
    while (task := tasks.get()) is not None:
        try:
            results.put(("ok", rank, timed_steps(task, device, barrier, done)))
        except Exception:
            results.put(("error", rank, traceback.format_exc()))
            barrier.abort()  # release the others: their wait raises, they report and the parent stops
            with done.get_lock():
                done.value += task.parties


class Workers:
    """K spawned workers sharing a start barrier and a count of workers done with their timed steps."""

    def __init__(self, k: int, device: str, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.barrier, self.done, self.results = ctx.Barrier(k), ctx.Value("i", 0), ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(k)]
        self.procs = [
            ctx.Process(
                target=worker,
                args=(rank, device, threads, self.tasks[rank], self.results, self.barrier, self.done),
                daemon=True,
            )
            for rank in range(k)
        ]
        for proc in self.procs:
            proc.start()
        self.info = self.collect(k)[0]

    def collect(self, n: int) -> list[dict[str, Any]]:
        """The answers of n workers (stop at the first error or dead worker)."""
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while len(answers) < n:
            try:
                kind, rank, body = self.results.get(timeout=2)
            except queue.Empty:
                dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise SystemExit(f"worker(s) {dead or 'all'} died or hung: no answer") from None
                continue
            if kind == "error":
                raise SystemExit(f"worker {rank} failed:\n{body}")
            answers.append(body)
        return answers

    def run(self, task: Task) -> list[dict[str, Any]]:
        """Each of the first ``task.parties`` workers' timing of ``task``."""
        self.done.value = 0
        for tasks in self.tasks[: task.parties]:
            tasks.put(task)
        return self.collect(task.parties)

    def close(self) -> None:
        for tasks in self.tasks:
            tasks.put(None)
        for proc in self.procs:
            proc.join(timeout=30)


def print_overhead() -> None:
    """benchmarks/run_overhead.py's per-run overhead table (issue 15, item 3), where it exists."""
    try:
        from run_overhead import overhead_table  # type: ignore[import-not-found]
    except ImportError as error:
        print(f"\n(no per-run overhead table: benchmarks/run_overhead.py's overhead_table(): {error})")
        return
    table = overhead_table()
    if table is not None:
        print(table)


def count(text: str) -> int:
    """A non-negative integer argument."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive(text: str) -> int:
    """A positive integer argument."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--at-once", type=positive, default=None, help="K (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--steps", type=positive, default=None, help="timed steps (default 50 CUDA, 4 CPU)")
    parser.add_argument(
        "--warmup", type=count, default=None, help="untimed steps first (default 10 CUDA, 1 CPU)"
    )
    parser.add_argument("--batch-size", type=positive, default=None, help="default: the paper config's")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=positive, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--epochs", type=positive, default=None, help="epochs per model (default max_epochs)")
    parser.add_argument(
        "--overhead", action="store_true", help="print the per-run overhead table on CUDA too"
    )
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    cuda = device == "cuda"
    k = args.at_once or (8 if cuda else 2)
    steps = args.steps or (50 if cuda else 4)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    bases = {model: paper_base(model) for model in args.models}
    batches = {m: args.batch_size or base["optim"]["batch_size"] for m, base in bases.items()}
    epochs = {m: args.epochs or base["train"]["max_epochs"] for m, base in bases.items()}

    t_start = time.perf_counter()
    workers = Workers(k, device, args.threads)
    print(
        f"{workers.info['device']}, torch {workers.info['torch']}: K = {k} at once, {args.threads} thread(s) "
        f"per process, {steps} timed steps after {warmup} warm-up, spawned processes"
    )
    print("batch: " + ", ".join(f"{m} {b}" for m, b in batches.items()))
    print(
        f"a model = epochs x {TRAIN_IMAGES:,} images; epochs: "
        + ", ".join(f"{m} {e}" for m, e in epochs.items())
    )
    columns = ["model", "quant", "step ms (1)", "img/s (1)", f"img/s ({k}, total)", "models/h (1)",
               f"models/h ({k})", "K-ratio", "LSQ/float"] + (["peak MiB/proc"] if cuda else [])  # fmt: skip
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    float_step: dict[str, float] = {}
    try:
        for model in args.models:
            for quant in QUANTS:
                spec = spec_for(model, quant, batches[model])
                (one,) = workers.run(Task(spec, steps, warmup, 1))
                many = workers.run(Task(spec, steps, warmup, k))
                step_ms = 1e3 * one["seconds"] / steps
                together = sum(r["images_per_s"] for r in many)
                per_hour = 3600 / (epochs[model] * TRAIN_IMAGES)
                float_step.setdefault(model, step_ms)
                ratio = f"{step_ms / float_step[model]:.2f}x" if quant == "lsq" else "-"
                cells = [model, quant, f"{step_ms:.2f}", f"{one['images_per_s']:.0f}", f"{together:.0f}",
                         f"{per_hour * one['images_per_s']:.3g}", f"{per_hour * together:.3g}",
                         f"{together / one['images_per_s']:.2f}x", ratio]  # fmt: skip
                if cuda:
                    cells.append(f"{max(r['peak_mib'] for r in many):.0f}")
                print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        workers.close()
    print(f"\n({time.perf_counter() - t_start:.0f} s wall)")
    if not cuda or args.overhead:
        print_overhead()


if __name__ == "__main__":
    main()
