"""Atomic checkpoints: written to a temporary file and renamed, read back with weights_only=True.

A run's checkpoint is ``checkpoint.pt`` beside its model.pt. It is not a workflow output: it exists while
the run is unfinished, from the first checkpoint until ``qgen train`` has written the run's model,
metrics and measures, and a rerun continues from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qgen.io import torch_save

FILENAME = "checkpoint.pt"


def path_in(run_dir: str | Path) -> Path:
    """The checkpoint of the run whose files are in ``run_dir``."""
    return Path(run_dir) / FILENAME


def save(path: str | Path, state: dict[str, Any]) -> None:
    torch_save(path, state)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def training_state(
    identity: str,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    init_state: dict[str, torch.Tensor],
    rows: list[dict[str, Any]],
    elapsed: float,
    device: torch.device,
) -> dict[str, Any]:
    """Everything a resumed run needs after ``epoch`` finished epochs: weights and buffers, optimizer
    state, RNG states, initial weights and the log so far (a mid-epoch checkpoint adds ``partial``, the
    final one ``finished``: status, stop reason and divergence epoch)."""
    state = {
        "spec_hash": identity,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "init_state": init_state,
        "log": rows,
        "elapsed": elapsed,
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state
