"""Device choice and determinism settings, shared by training and every measurement step.

CPU: ``torch.use_deterministic_algorithms(True)`` and a fixed thread count make a run
bit-for-bit repeatable on the same machine and library versions (a different thread count may
change float summation order, so it is recorded in provenance).
CUDA: deterministic algorithms are requested (warn-only, since a few kernels have no
deterministic version), cuDNN benchmarking is off (its algorithm choice is then fixed, not timed per run),
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set, and TF32 is off for matrix products and convolutions
(``runtime.tf32: false``, the default: an FP32 baseline computes in FP32; TF32 keeps 10 mantissa bits and
would blur the comparison with low-bit models). Results then repeat on the same GPU model, driver and
library versions, and agree with CPU only within tolerance.

:func:`determinism` reports what a result's bit-identity depends on (provenance ``determinism``): the
deterministic-algorithm and cuDNN flags, TF32, the float32 matmul precision, the thread counts and the CPU
instruction set torch dispatches to (``AVX512``, ``AVX2``, ...; kernels differ between them, so two CPUs
with different sets need not agree in the last bits).
"""

from __future__ import annotations

import os
import sys
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
    tf32 = bool(runtime.get("tf32", False))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        deterministic_algorithms(warn_only=True, compile=bool(runtime.get("compile")))
    else:
        deterministic_algorithms(warn_only=False, compile=bool(runtime.get("compile")))
    return device


def deterministic_algorithms(warn_only: bool, compile: bool) -> None:
    """``torch.use_deterministic_algorithms(True)`` without its import of Inductor and Dynamo (1.5 s of
    every worker's start on the 2-core machine, ``benchmarks/run_overhead.py``): the flag eager kernels read
    is set directly; Inductor's own ``deterministic`` flag only when a model is compiled (``runtime.compile``)
    or Inductor is already loaded, so compiled kernels follow it as with the public call."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or compile or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        return
    setter(True, warn_only=warn_only)


def determinism() -> dict[str, Any]:
    """The settings a run's bit-identity depends on, as they are now (recorded in provenance)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


#: the determinism fields that must agree for two CPU builds of one run to be expected bit-identical
BIT_IDENTITY_KEYS = ("deterministic_algorithms", "threads", "cpu_capability")
