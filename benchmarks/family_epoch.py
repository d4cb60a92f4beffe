"""One epoch of every model family on CIFAR-10-shaped synthetic data, float and LSQ W4A4, timed side by side.

The families of issue 14 (qgen.models: CIFAR ResNet-20, PreResNet-20, torchvision ResNet-18/50 and
MobileNetV2 with the CIFAR stem, the small ViT, DeiT-tiny and ViT-S) train one epoch each on ``--images``
random uint8 32x32 images resident on the device (normalized and augmented there, as the pipeline does:
benchmarks/measure_cost.py's synthetic set and timing), with the run spec of config/paper/qgen_cifar.yaml
where it has the family (else its optimizer settings), float and LSQ W4A4 with 8-bit first and last layers.
Printed per family: parameters, seconds per epoch float and LSQ, their ratio (the cost of fake
quantization), images per second, and on CUDA the peak memory. DeiT-tiny and ViT-S keep their patch 16, so
at 32 px they see 4 tokens: the numbers time the layers, not a sensible CIFAR model.

    python benchmarks/family_epoch.py --device cuda              # GPU: 50,000 images per epoch
    python benchmarks/family_epoch.py --images 512 --families resnet20 vit   # CPU sanity check
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_cost import synthetic_data, time_training  # the shared synthetic set and step timing

from qgen.config import run_spec_schema, validate
from qgen.experiments import normalize_spec
from qgen.models import build_model

SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "batch_size": 128}
ADAMW = {"name": "adamw", "lr": 0.001, "weight_decay": 0.05, "batch_size": 128, "warmup_epochs": 5}
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "resnet20": ({"name": "resnet_cifar", "depth": 20}, SGD),
    "preresnet20": ({"name": "resnet_cifar", "depth": 20, "preact": True, "shortcut": "conv"}, SGD),
    "resnet18": ({"name": "resnet18", "stem": "cifar"}, SGD),
    "resnet50": ({"name": "resnet50", "stem": "cifar"}, SGD),
    "mobilenet_v2": ({"name": "mobilenet_v2", "stem": "cifar"}, SGD),
    "vit": ({"name": "vit", "depth": 6, "width": 192, "heads": 3, "patch_size": 4}, ADAMW),
    "deit_tiny": ({"name": "deit_tiny"}, ADAMW),
    "vit_small": ({"name": "vit_small"}, ADAMW),
}
QUANT = {
    "float": {"method": "float"},
    "lsq": {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "8bit", "last_layer": "8bit"},
}


def run_spec(
    model: dict[str, Any],
    optim: dict[str, Any],
    quant: str,
    where: str,
    data: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The normalized run spec of ``model`` with ``optim``, quantized as QUANT[quant] (seed 0; by default
    CIFAR-10 and 200 epochs without a CE target)."""
    spec = {
        "data": dict(data or {"name": "cifar10"}),
        "model": dict(model),
        "quant": dict(QUANT[quant]),
        "optim": dict(optim),
        "train": dict(train or {"max_epochs": 200, "target_ce": None}),
        "seed": 0,
    }
    return normalize_spec(validate(spec, run_spec_schema(), where=where))


def spec_of(family: str, quant: str) -> dict[str, Any]:
    model, optim = FAMILIES[family]
    return run_spec(model, {**optim, "schedule": "cosine"}, quant, where=family)


def epoch_seconds(spec: dict[str, Any], data: Any, device: torch.device) -> tuple[float, int, float | None]:
    """(seconds of one epoch of optimizer steps after a warm-up step, parameters, peak CUDA MiB), timed by
    measure_cost.time_training (its evaluation pass cut to one example)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step = time_training(spec, data, device, None, 1)["step"]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    params = sum(p.numel() for p in build_model(spec, data.input_shape, data.num_classes).parameters())
    return per_step * math.ceil(len(data.train) / spec["optim"]["batch_size"]), params, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=50_000, help="images per epoch (CIFAR-10: 50,000)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = synthetic_data(args.images, device)
    print(f"one epoch of {args.images} CIFAR-10-shaped images on {device}, batch 128 (LSQ W4A4, ends 8-bit)")
    columns = ("params", "float s", "lsq s", "lsq/fp", "lsq img/s", "peak MiB")
    widths = (10, 9, 9, 7, 10, 9)
    print(f"{'family':<13} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for family in args.families:
        t0 = time.perf_counter()
        fp, params, _ = epoch_seconds(spec_of(family, "float"), data, device)
        lsq, _, peak = epoch_seconds(spec_of(family, "lsq"), data, device)
        peak_text = f"{peak:>9.0f}" if peak is not None else f"{'-':>9}"
        print(
            f"{family:<13} {params:>10,} {fp:>9.2f} {lsq:>9.2f} {lsq / fp:>7.2f} {args.images / lsq:>10.0f} "
            f"{peak_text}   ({time.perf_counter() - t0:.0f} s wall)",
            flush=True,
        )


if __name__ == "__main__":
    main()
