"""Datasets: a registry of preparers that turn raw data into ``data/prepared/<name>/``.

A prepared dataset is ``train.pt`` and ``test.pt`` (each ``{"x": float32 [N, C, H, W], "y": int64 [N]}``)
plus ``meta.json`` with the sha256 of every file, the preparation settings and class counts.
Data knows no model.
"""

from qgen.data.prepared import PreparedData, load_prepared, prepare
from qgen.data.registry import DATASETS, DatasetInfo, register

__all__ = ["DATASETS", "DatasetInfo", "PreparedData", "load_prepared", "prepare", "register"]
