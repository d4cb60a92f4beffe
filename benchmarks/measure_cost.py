"""What measuring a paper-scale CIFAR-10 run costs against training it, on CPU, timed small and extrapolated.

Data: a CIFAR-10-shaped synthetic set (uint8 random images 3×32×32, 10 classes) in a
:class:`~qgen.data.batches.TensorSplit`, normalized per batch as a prepared CIFAR-10 set is, with the
CIFAR augmentation (random crop with 4 pixels of padding, horizontal flip) on training batches. The
cost of a step does not depend on the pixel values, so random images time what CIFAR-10 would.

Models (the typical paper runs):

- ``nin``: the NiN of Jiang et al. (2019) at their reference defaults (papers.md §7: depth 2, width 8,
  base width 25, batch 32, SGD with momentum, lr 0.01, trained until the training CE reaches 0.01,
  at most 300 epochs), LSQ W4A4 with 8-bit first and last layers (QGen's grid);
- ``vgg``: BinaryConnect's CIFAR-10 network, deterministic binary weights, from
  config/paper/binaryconnect.yaml (experiment bc_cifar10: batch 50, 500 epochs).

Training: ``--steps`` optimizer steps of the training loop's own step (qgen.train.loop.batch_step) on
augmented batches of the run's batch size, and the end-of-epoch evaluation of the training set (the
stopping rule's CE, ``--eval-examples`` examples in batches of 1024) timed; an epoch is m/batch steps
plus m evaluated examples (m = ``--train-size``), a run is its epochs (``--nin-epochs`` for the NiN,
whose epoch count the stopping rule sets; the VGG's from its config). ``--epoch`` times a whole epoch
instead, on m images resident on the device (for CUDA: 150 MB of uint8).

Measures: :func:`qgen.measures.run.measure_run` with the schema's default settings, every search and
iterative estimate forced to its most steps (tolerances 1e-12: 15 bisection steps per search, 100
Hutchinson probes and 100 power iterations), so the figure is the most the defaults can cost whatever
the model; each measure's example count is replaced by ``--sizes`` s1 < s2 (one batch each), its time
fitted as a + b·n per measure and evaluated at the default count n (null = m), read in batches of
B = min(n, ``measures.batch_size``). A CPU's throughput per example depends on the batch (caches: the
NiN's forward costs about twice as much per example in batches of 1024 as in batches of 24), so the
per-example slope b is scaled by the measured ratio of the measured network's forward cost per
example in batches of B to its marginal cost between batches of s1 and s2 (a forward's ratio applied
to the backward passes too: an approximation). Times are CPU seconds of this process
(``time.process_time``; with one thread the time the work takes, whatever else loads the machine).

    nice -n 10 python benchmarks/measure_cost.py                  # CPU, both models, 1 thread, s = 8, 24
    python benchmarks/measure_cost.py --device cuda --epoch         # CUDA: a whole epoch, s = 64, 256
    python benchmarks/measure_cost.py --models nin --sizes 16 48

It prints, per model, the training cost, a per-measure table (seconds at s1 and s2, the fit, the
extrapolated seconds at the default count, that in epochs of training and, on CUDA, the peak memory
at s2 from measures.json's cost record) and the ratio of the measures' total to the run's training
cost. On CUDA the times are wall seconds after synchronizing the device.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qgen.config import load_config, measures_schema, run_spec_schema, validate
from qgen.data.augment import Augment
from qgen.data.batches import Examples, Standardize, TensorSplit
from qgen.data.run_data import RunData
from qgen.experiments import expand_config, normalize_spec
from qgen.measures import cost as measure_cost
from qgen.measures.deployed import deploy
from qgen.measures.run import measure_run
from qgen.metrics import accuracy_and_ce
from qgen.models import build_model, model_from_payload
from qgen.quant import init_quantizers
from qgen.train.loop import batch_step
from qgen.train.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
#: CIFAR-10's per-channel training statistics (pixel/255)
NORMALIZATION = {"scale": 1 / 255, "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
#: the CIFAR augmentation: random crop with 4 pixels of padding, horizontal flip
CIFAR_AUGMENT = {"crop_padding": 4, "flip": True}
#: the settings that carry a measure's example count: (lap names, settings path)
EXAMPLE_KEYS = {
    ("noise",): ("noise", "examples"),
    ("pacbayes", "pacbayes_mag", "norms"): ("examples",),
    ("worst_case", "worst_case_mag"): ("worst_case", "examples"),
    ("hessian", "noise_model"): ("hessian", "examples"),
}


def nin_spec() -> dict[str, Any]:
    """Jiang et al.'s reference NiN (papers.md §7), LSQ W4A4 with 8-bit first and last layers."""
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "8bit", "last_layer": "8bit"}
    spec = {
        "data": {"name": "cifar10"},
        "model": {"name": "nin", "depth": 2, "width": 8, "base_width": 25},
        "quant": quant,
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 32},
        "train": {"max_epochs": 300, "target_ce": 0.01},
        "seed": 0,
    }
    return normalize_spec(validate(spec, run_spec_schema(), where="nin spec"))


def vgg_spec() -> dict[str, Any]:
    """BinaryConnect's CIFAR-10 run with deterministic binary weights (config/paper/binaryconnect.yaml)."""
    config = load_config(REPO / "config/paper/binaryconnect.yaml")
    for run in expand_config(config)["bc_cifar10"]:
        quant = run.spec["quant"]
        if quant["method"] == "binary" and not quant.get("stochastic", False):
            return run.spec
    raise SystemExit("config/paper/binaryconnect.yaml has no deterministic binary bc_cifar10 run")


SPECS = {"nin": nin_spec, "vgg": vgg_spec}


def make_clock(device: torch.device) -> Callable[[], float]:
    """CPU: the process's CPU seconds (with one thread, the time the work takes whatever else loads the
    machine). CUDA: wall seconds after the device has finished its queued work."""
    if device.type != "cuda":
        return time.process_time

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def synthetic_data(
    n: int, device: torch.device, seed: int = 0, augment: dict[str, Any] | str | None = CIFAR_AUGMENT
) -> RunData:
    """n random uint8 CIFAR-10-shaped images (10 classes) resident on ``device``, normalized per batch
    by CIFAR-10's statistics, ``augment`` (a run spec's ``data.augment``; default the CIFAR augmentation)
    on training batches."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=gen)
    norm = Standardize.from_meta(NORMALIZATION)
    train = TensorSplit(x, y, norm, augment=Augment.from_spec(augment), device=device)
    test = TensorSplit(x[:256], y[:256], norm, device=device)
    meta = {"num_classes": 10, "input_shape": list(SHAPE), "checksum": "synthetic"}
    return RunData("cifar10-synthetic", meta, train, test)


def training_setup(
    spec: dict[str, Any], data: RunData, device: torch.device
) -> tuple[torch.nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor]:
    """The run's model on ``device`` (seed 0, quantizers calibrated on 256 training images) in training
    mode, the training loop's optimizer step on it (qgen.train.loop.batch_step) and a fixed random order
    of the training examples."""
    torch.manual_seed(0)
    model = build_model(spec, data.input_shape, data.num_classes).to(device)
    optimizer = build_optimizer(model, spec["optim"])
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    init_quantizers(model, next(iter(data.train.batches(256, order[:256])))[0])
    step = batch_step(model, optimizer, spec["train"].get("loss", "ce"))
    model.train()
    return model, step, order


def time_training(
    spec: dict[str, Any], data: RunData, device: torch.device, steps: int | None, eval_examples: int | None
) -> dict[str, float]:
    """Seconds per optimizer step (``steps`` of them after a warm-up step; None: a whole epoch of the
    resident set) and per evaluated training example (``eval_examples``; None: all)."""
    clock = make_clock(device)
    model, step, order = training_setup(spec, data, device)
    batch = spec["optim"]["batch_size"]
    step(*next(iter(data.train.batches(batch, order[:batch], augment=True))))  # warm-up
    timed = order if steps is None else order[batch : batch * (steps + 1)]
    t0, count = clock(), 0
    for xb, yb in data.train.batches(batch, timed, augment=True, seed=0, epoch=0):
        step(xb, yb)
        count += 1
    per_step = (clock() - t0) / count
    evaluated = Examples(data.train, None if eval_examples is None else order[:eval_examples], 1024)
    accuracy_and_ce(model, Examples(data.train, order[:32], 1024))  # warm-up
    t0 = clock()
    accuracy_and_ce(model, evaluated)
    return {"step": per_step, "eval_example": (clock() - t0) / len(evaluated)}


def _set(settings: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = settings
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _get(settings: dict[str, Any], path: tuple[str, ...]) -> Any:
    node = settings
    for key in path:
        node = node[key]
    return node


def forced_settings(defaults: dict[str, Any], size: int) -> dict[str, Any]:
    """The default settings with every example count ``size`` and every search at its most steps."""
    settings = copy.deepcopy(defaults)
    for path in EXAMPLE_KEYS.values():
        _set(settings, path, size)
    settings["pacbayes"]["tolerance"] = settings["worst_case"]["tolerance"] = 1e-12
    settings["hessian"]["min_probes"] = settings["hessian"]["max_probes"]
    settings["hessian"]["tolerance"] = settings["hessian"]["power_tolerance"] = 1e-12
    return settings


def untrained_payload(spec: dict[str, Any], data: RunData) -> dict[str, Any]:
    """A model.pt payload of the run's model at initialization (quantizers calibrated): what a measure
    costs does not depend on the weights once every search runs to its most steps."""
    torch.manual_seed(0)
    model = build_model(spec, data.input_shape, data.num_classes)
    init_quantizers(model, next(iter(data.train.batches(256)))[0].cpu())
    state = model.state_dict()
    return {"spec": spec, "state_dict": state, "init_state": state}


def time_measures(
    payload: dict[str, Any], data: RunData, defaults: dict[str, Any], size: int, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Seconds (measure_run's laps) and measures.json's cost record of each measure, ``size`` examples
    each."""
    body = measure_run(payload, data, forced_settings(defaults, size), device)
    assert all(c["max_forward_rows"] <= size for c in body["cost"].values())
    return {lap: {"seconds": seconds, **body["cost"][lap]} for lap, seconds in body["timings"].items()}


def warm_up(
    payload: dict[str, Any], data: RunData, defaults: dict[str, Any], size: int, device: torch.device
) -> None:
    """One short pass through every measure (one step of each search, two probes), so that one-time
    costs (kernel selection, allocator growth) do not land in the first timed run."""
    settings = forced_settings(defaults, size)
    settings["pacbayes"].update(depth=1, draws=1)
    settings["worst_case"].update(depth=1, steps=1)
    settings["hessian"].update(max_probes=2, min_probes=2, power_iters=1)
    settings["noise_model"]["draws"] = 2
    measure_run(payload, data, settings, device)


@torch.no_grad()
def forward_seconds(
    payload: dict[str, Any], data: RunData, perturb: str, batch: int, device: torch.device
) -> float:
    """Seconds of one forward of the measured network (deployed view) on a batch of ``batch``."""
    clock = make_clock(device)
    model = deploy(model_from_payload(payload, data.input_shape, data.num_classes, str(device)), perturb)
    xb, _ = next(iter(data.train.batches(batch)))
    model(xb[:8])  # warm-up
    t0 = clock()
    model(xb)
    return clock() - t0


def batch_factors(
    payload: dict[str, Any],
    data: RunData,
    perturb: str,
    sizes: tuple[int, int],
    batches: set[int],
    device: torch.device,
) -> dict[int, float]:
    """Per-example cost of a forward in batches of B over its marginal per-example cost between the
    benchmark's batches s1 and s2 (throughput per example depends on the batch: caches on a CPU,
    occupancy on a GPU)."""
    s1, s2 = sizes
    t1, t2 = (forward_seconds(payload, data, perturb, s, device) for s in sizes)
    marginal = max(t2 - t1, 1e-9) / (s2 - s1)
    return {b: forward_seconds(payload, data, perturb, b, device) / b / marginal for b in sorted(batches)}


def default_examples(defaults: dict[str, Any], m: int) -> dict[str, int]:
    """Each measure's default example count for a training set of m (null = all of it)."""
    out = {}
    for laps, path in EXAMPLE_KEYS.items():
        value = _get(defaults, path)
        for lap in laps:
            out[lap] = m if value is None else min(int(value), m)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs=2, type=int, default=None, metavar=("S1", "S2"),
                        help="measure subsets (default 8 24 on CPU, 64 256 on CUDA)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument(
        "--epoch", action="store_true", help="time a whole epoch of m resident images instead"
    )
    parser.add_argument("--eval-examples", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=50_000, help="m: CIFAR-10's training images")
    parser.add_argument("--nin-epochs", type=int, default=30, help="epochs of the NiN run (stopping rule)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # as qgen runs: full float32 matmuls
    else:
        measure_cost.clock = time.process_time  # the measures' laps in CPU seconds too
    s1, s2 = sorted(args.sizes or ((64, 256) if device.type == "cuda" else (8, 24)))
    m = args.train_size
    defaults = validate({}, measures_schema(), where="measures defaults")
    counts = default_examples(defaults, m)
    n_data = m if args.epoch else max(2048, args.steps * 64 + 64, args.eval_examples, s2)
    data = synthetic_data(n_data, device)
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"{args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, m = {m}, measure subsets {s1} and {s2}")
    print("default example counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for name in args.models:
        spec = SPECS[name]()
        epochs = args.nin_epochs if name == "nin" else spec["train"]["max_epochs"]
        batch = spec["optim"]["batch_size"]
        steps, evaluated = (None, None) if args.epoch else (args.steps, args.eval_examples)
        train = time_training(spec, data, device, steps, evaluated)
        epoch_s = m / batch * train["step"] + m * train["eval_example"]
        run_s = epochs * epoch_s
        print(
            f"\n{name}: {spec['model']} {spec['quant']['method']}, batch {batch}: "
            f"{1e3 * train['step']:.2f} ms/step, {1e3 * train['eval_example']:.3f} ms per evaluated example; "
            f"epoch {epoch_s:.1f} s, {epochs} epochs = {run_s / 3600:.2f} h"
        )
        payload = untrained_payload(spec, data)
        warm_up(payload, data, defaults, s1, device)
        small = time_measures(payload, data, defaults, s1, device)
        large = time_measures(payload, data, defaults, s2, device)
        used = {lap: min(n, defaults["batch_size"]) for lap, n in counts.items()}
        factor = batch_factors(payload, data, defaults["perturb"], (s1, s2), set(used.values()), device)
        print(
            "forward per example in batches of B / marginal per example between batches of "
            f"{s1} and {s2}: " + ", ".join(f"B={b}: {f:.2f}" for b, f in factor.items())
        )
        print(
            f"{'measure':<12} {'n':>6} {f't({s1}) s':>9} {f't({s2}) s':>9} {'a s':>8} {'b ms/ex':>9} "
            f"{'B':>5} {'t(n) s':>9} {'epochs':>7} {f'peak MiB({s2})':>14}"
        )
        total = 0.0
        for lap, n in counts.items():
            # a slope below 0 is timing noise on a cost that its fixed part dominates (the norms' SVDs)
            b = max((large[lap]["seconds"] - small[lap]["seconds"]) / (s2 - s1), 0.0)
            a = small[lap]["seconds"] - b * s1
            cost = max(a, 0.0) + b * factor[used[lap]] * n
            total += cost
            peak = large[lap]["peak_cuda_memory_bytes"]
            print(
                f"{lap:<12} {n:>6} {small[lap]['seconds']:>9.2f} {large[lap]['seconds']:>9.2f} {a:>8.2f} "
                f"{1e3 * b:>9.3f} {used[lap]:>5} {cost:>9.0f} {cost / epoch_s:>7.2f} "
                f"{'-' if peak is None else f'{peak / 2**20:.0f}':>14}"
            )
        t_small = sum(r["seconds"] for r in small.values())
        t_large = sum(r["seconds"] for r in large.values())
        print(
            f"{'all':<12} {'':>6} {t_small:>9.2f} {t_large:>9.2f} {'':>8} {'':>9} {'':>5} {total:>9.0f} "
            f"{total / epoch_s:>7.2f}"
        )
        print(f"measures / training = {total:.0f} s / {run_s:.0f} s = {total / run_s:.3f}")


if __name__ == "__main__":
    main()
