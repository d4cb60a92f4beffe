"""Device choice and determinism settings, shared by training and every measurement step.

CPU: ``torch.use_deterministic_algorithms(True)`` and a fixed thread count make a run
bit-for-bit repeatable on the same machine and library versions (a different thread count may
change float summation order, so it is recorded in provenance).
CUDA: deterministic algorithms are requested (warn-only, since a few kernels have no
deterministic version), cuDNN benchmarking is off and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set;
results then repeat on the same GPU model and driver, and agree with CPU only within tolerance.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but torch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def configure(runtime: dict[str, Any]) -> torch.device:
    """Apply threads and determinism settings; return the device to run on."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(int(runtime.get("threads", 1)))
    device = pick_device(runtime.get("device", "auto"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)
    return device
