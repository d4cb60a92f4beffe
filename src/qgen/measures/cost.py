"""What each measure costs: wall time, peak CUDA memory and the largest batch any forward saw.

:class:`CostMeter` watches the networks a measure runs (a forward pre-hook on each counts the rows at
its input; under ``torch.func.vmap`` over stacked weights the hook sees the per-model input, so it
counts per-model rows) and closes one *lap* per measure: the seconds since the previous lap, the peak
CUDA memory allocated during the lap (``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``; None on the CPU) and the largest batch, with the number of training
examples the measure read. The seconds go to provenance (they differ between two runs of the same
measurement); the rest is deterministic and goes into measures.json's ``cost``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import nn

#: the clock of the laps (wall time; benchmarks/measure_cost.py swaps in the process's CPU time)
clock = time.perf_counter


class CostMeter:
    """Laps of the measures of one run on ``device``, counting the input rows of ``modules``."""

    def __init__(self, modules: Iterable[nn.Module], device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self._rows = [0]
        rows = self._rows

        def count(_module: nn.Module, args: tuple[Any, ...]) -> None:
            # a plain function, not a bound method: deep copies of a watched module (path norm) keep
            # counting into this meter
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim:
                rows[0] = max(rows[0], int(args[0].shape[0]))

        self._handles = [m.register_forward_pre_hook(count) for m in modules]
        self._start()

    def _start(self) -> None:
        self._rows[0] = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._clock = clock()

    def lap(self, name: str, examples: Sized | None) -> None:
        """Close the lap of measure ``name``, which read ``examples`` (None: no data)."""
        peak = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
        self.timings[name] = round(clock() - self._clock, 3)
        self.records[name] = {
            "examples": len(examples) if examples is not None else None,
            "max_forward_rows": self._rows[0],
            "peak_cuda_memory_bytes": peak,
        }
        self._start()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
