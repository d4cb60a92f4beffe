"""Datasets: a registry of preparers that turn raw data into ``data/prepared/<name>/``.

A prepared dataset is ``train.pt`` and ``test.pt`` (small sets: ``{"x": uint8 [N, C, H, W], "y": int64 [N]}``;
image folders: file lists, qgen.data.imagenet) plus ``meta.json`` with the sha256 of every file, the
preparation settings, the normalization and class counts (qgen.data.prepared). Data knows no model.

The names below are imported on first use, so that the registry (``prep_params``, ``data_root``) can be
read without importing torch, as the workflow does when it expands a config.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASETS": "qgen.data.registry",
    "DatasetInfo": "qgen.data.registry",
    "data_root": "qgen.data.registry",
    "prep_params": "qgen.data.registry",
    "register": "qgen.data.registry",
    "PreparedData": "qgen.data.prepared",
    "load_prepared": "qgen.data.prepared",
    "prepare": "qgen.data.prepared",
    "verify": "qgen.data.prepared",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qgen.data' has no attribute {name!r}")
