"""Write and read prepared datasets, verifying their checksums on every load."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qgen.data import registry
from qgen.io import read_json, sha256_file, torch_save, write_json

SPLITS = ("train", "test")


class DataIntegrityError(RuntimeError):
    """A prepared file does not match the checksum recorded in its meta.json."""


@dataclass
class PreparedData:
    name: str
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def checksum(self) -> str:
        return self.meta["checksum"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["input_shape"])


def _class_counts(y: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def combined_checksum(files: dict[str, str]) -> str:
    """One sha256 over the per-file sha256s (sorted by name): the dataset's identity in provenance."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name]}\n".encode())
    return h.hexdigest()


def prepare(name: str, params: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Build dataset ``name`` with preparation ``params`` into ``out_dir``; return its meta."""
    info = registry.get(name)
    out_dir = Path(out_dir)
    train, test, extra = info.builder(params)
    files: dict[str, str] = {}
    for split, tensors in zip(SPLITS, (train, test), strict=True):
        target = out_dir / f"{split}.pt"
        torch_save(target, {"x": tensors["x"].contiguous(), "y": tensors["y"].contiguous()})
        files[target.name] = sha256_file(target)
    meta = {
        "dataset": name,
        "params": params,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "n": {"train": len(train["y"]), "test": len(test["y"])},
        "class_counts": {
            "train": _class_counts(train["y"], info.num_classes),
            "test": _class_counts(test["y"], info.num_classes),
        },
        "files": files,
        "checksum": combined_checksum(files),
        **extra,
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def load_prepared(directory: str | Path, expected_params: dict[str, Any] | None = None) -> PreparedData:
    """Load a prepared dataset after checking every file against meta.json.

    ``expected_params`` (the ``data`` section of a run spec minus its name) must match the
    settings the data was prepared with, so a stale folder cannot silently feed a run.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: prepare the dataset first (qgen prepare-data)")
    meta = read_json(meta_path)
    for fname, digest in meta["files"].items():
        actual = sha256_file(directory / fname)
        if actual != digest:
            raise DataIntegrityError(
                f"{directory / fname}: sha256 {actual[:12]}… does not match {digest[:12]}… recorded in "
                f"{meta_path}; the file was changed or truncated. Re-run prepare_data."
            )
    if expected_params is not None:
        mismatched = {
            k: (v, meta["params"].get(k)) for k, v in expected_params.items() if meta["params"].get(k) != v
        }
        if mismatched:
            raise DataIntegrityError(
                f"{directory} was prepared with different settings than the run asks for "
                f"(key: (wanted, found)): {mismatched}"
            )
    splits = {s: torch.load(directory / f"{s}.pt", weights_only=True) for s in SPLITS}
    return PreparedData(meta["dataset"], splits["train"], splits["test"], meta)
