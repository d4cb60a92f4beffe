"""Atomic checkpoints: written to a temporary file and renamed, read back with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qgen.io import torch_save


def save(path: str | Path, state: dict[str, Any]) -> None:
    torch_save(path, state)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)
