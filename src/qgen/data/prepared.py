"""Write and read prepared datasets, verifying their files on every load.

``prepare(name, given, out_dir)`` writes ``data/prepared/<name>/``:

- tensor sets: ``train.pt`` and ``test.pt``, each ``{"x": uint8 [N, C, H, W] raw pixels, "y": int64 [N]}``;
  ``meta.json`` has ``normalization`` = {scale, per-channel mean and std of x·scale over the training
  split} (exact integer sums, population std), which the batch iterator applies per batch on the device;
  with ``preprocess: gcn_zca`` also ``whiten.pt``, the GCN + ZCA state fitted on the training split
  (qgen.data.whiten). A segmentation set (``task: segmentation`` in meta.json, qgen.data.segmentation)
  stores ``"y"`` as uint8 0/1 masks [N, 1, H, W] and records each split's ``foreground_fraction`` (the
  mean of its masks) instead of ``class_counts``; its ``x`` may be float32 when the builder gives the
  normalization (instance-normalized MRI slices).
- folder sets: ``train.pt`` and ``test.pt``, each ``{"files": list[str] relative to the root, "y": int64 [N],
  "sizes": int64 [N] bytes}``, and ``manifest.tsv`` (path, size, sha256 of every image, hashed once).

``meta.json`` records the sha256 of every file written (checked on every load), the preparation settings
(``params``: what run specs carry; never the root), the root, class counts and the upstream files read
with their md5/sha256. A folder set's images are checked by size on every load and by sha256 on request
(``verify(directory, full=True)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qgen.data import registry
from qgen.data.integrity import (
    DataIntegrityError,
    DatasetError,
    DatasetNotFoundError,
    check_manifest,
    check_sizes,
    combined_checksum,
    write_manifest,
)
from qgen.io import read_json, sha256_file, torch_save, write_json

SPLITS = ("train", "test")
MANIFEST = "manifest.tsv"
WHITEN = "whiten.pt"

__all__ = [
    "DataIntegrityError",
    "DatasetError",
    "DatasetNotFoundError",
    "PreparedData",
    "channel_stats",
    "combined_checksum",
    "load_prepared",
    "prepare",
    "verify",
]


class MetaView:
    """What a dataset's ``meta.json`` (the ``meta`` attribute) says of it."""

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

    @property
    def task(self) -> str:
        """``classification`` (int64 labels) or ``segmentation`` (uint8 0/1 masks [N, 1, H, W])."""
        return self.meta.get("task", "classification")


@dataclass
class PreparedData(MetaView):
    name: str
    train: dict[str, Any]
    test: dict[str, Any]
    meta: dict[str, Any]
    directory: Path | None = None

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "tensor")


def _class_counts(y: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def _foreground(masks: torch.Tensor) -> float:
    """The fraction of foreground pixels of 0/1 masks (exact integer count, one division)."""
    return int(masks.sum()) / masks.numel() if masks.numel() else 0.0


def channel_stats(x: torch.Tensor, scale: float, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of ``x·scale`` for integer images ``x`` [N, C, ...].

    Sums of x and x² are exact integers (streamed in chunks of ``chunk`` images), so the only roundings
    are the final divisions."""
    if x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        raise ValueError(
            f"channel_stats expects non-empty integer images [N, C, ...], got {x.dtype} {tuple(x.shape)}"
        )
    channels = x.shape[1]
    total = [0] * channels
    squares = [0] * channels
    dims = [0, *range(2, x.ndim)]
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].to(torch.int64)
        for c, (s, s2) in enumerate(
            zip(block.sum(dims).tolist(), block.square().sum(dims).tolist(), strict=True)
        ):
            total[c] += s
            squares[c] += s2
    n = x.numel() // channels
    mean = [scale * s / n for s in total]
    std = [scale * math.sqrt((s2 * n - s * s) / (n * n)) for s, s2 in zip(total, squares, strict=True)]
    return mean, std


def _check_masks(name: str, split: str, y: torch.Tensor, x: torch.Tensor) -> None:
    """A segmentation split's masks: uint8 [N, 1, H, W] of 0/1, one per image, of the images' H×W."""
    if y.dtype != torch.uint8 or y.ndim != 4 or y.shape[1] != 1:
        raise DataIntegrityError(
            f"{name} {split}: masks must be uint8 [N, 1, H, W], got {y.dtype} {tuple(y.shape)}"
        )
    if len(y) != len(x) or tuple(y.shape[2:]) != tuple(x.shape[2:]):
        raise DataIntegrityError(
            f"{name} {split}: masks {tuple(y.shape)} do not match images {tuple(x.shape)} (one H×W mask each)"
        )
    if len(y) and int(y.max()) > 1:
        raise DataIntegrityError(f"{name} {split}: masks hold values other than 0 and 1 (max {int(y.max())})")


def _check_split(
    name: str,
    split: str,
    part: dict[str, Any],
    info: registry.DatasetInfo,
    k: int,
    shape: tuple[int, ...] | None = None,
) -> None:
    """Check one split's labels (or masks) and image shapes; ``shape`` is the per-image shape expected
    (the builder's ``input_shape``, else the registered one)."""
    y = part["y"]
    shape = tuple(shape if shape is not None else info.input_shape)
    if info.task == "segmentation":
        _check_masks(name, split, y, part["x"])
    else:
        if y.dtype != torch.int64 or y.ndim != 1:
            raise DataIntegrityError(
                f"{name} {split}: labels must be int64 [N], got {y.dtype} {tuple(y.shape)}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataIntegrityError(
                f"{name} {split}: labels outside 0..{k - 1} (min {int(y.min())}, max {int(y.max())})"
            )
    if info.kind == "tensor":
        x = part["x"]
        if tuple(x.shape[1:]) != shape or len(x) != len(y):
            raise DataIntegrityError(
                f"{name} {split}: images {tuple(x.shape)} with {len(y)} labels, expected "
                f"[{len(y)}, {', '.join(map(str, shape))}]"
            )
    elif not (len(part["files"]) == len(y) == len(part["sizes"])):
        raise DataIntegrityError(f"{name} {split}: files, labels and sizes differ in length")


def prepare(name: str, given: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Build dataset ``name`` from its preparation settings ``given`` (``datasets.<name>`` of the config,
    ``root`` included) into ``out_dir``; return its meta.

    A missing root or file, a wrong checksum or a wrong shape raises (DatasetError, naming the files)
    before anything is written."""
    info = registry.get(name)
    params = registry.prep_params(name, given)
    out_dir = Path(out_dir)
    root = registry.data_root(name, given, must_exist=True) if info.needs_root else None
    train, test, extra = info.builder(params, root) if root is not None else info.builder(params)
    extra = dict(extra)
    num_classes = int(extra.pop("num_classes", info.num_classes))
    input_shape = tuple(extra.pop("input_shape", info.input_shape))
    for split, part in zip(SPLITS, (train, test), strict=True):
        _check_split(name, split, part, info, num_classes, input_shape)
    normalization = extra.pop("normalization", None)
    files: dict[str, str] = {}
    if info.kind == "tensor":
        if normalization is None:
            if train["x"].is_floating_point():
                raise DataIntegrityError(f"{name}: a float-valued set must give its normalization")
            mean, std = channel_stats(train["x"], info.pixel_scale)
            normalization = {"scale": info.pixel_scale, "mean": mean, "std": std}
        storage = str(train["x"].dtype).removeprefix("torch.")
        for split, part in zip(SPLITS, (train, test), strict=True):
            target = out_dir / f"{split}.pt"
            torch_save(target, {"x": part["x"].contiguous(), "y": part["y"].contiguous()})
            files[target.name] = sha256_file(target)
        if params.get("preprocess") == "gcn_zca":
            from qgen.data.whiten import fit_gcn_zca

            torch_save(out_dir / WHITEN, fit_gcn_zca(train["x"]))
            files[WHITEN] = sha256_file(out_dir / WHITEN)
    else:
        assert root is not None
        storage = "files"
        write_manifest(out_dir / MANIFEST, root, [*train["files"], *test["files"]])
        files[MANIFEST] = sha256_file(out_dir / MANIFEST)
        for split, part in zip(SPLITS, (train, test), strict=True):
            target = out_dir / f"{split}.pt"
            torch_save(target, {"files": list(part["files"]), "y": part["y"], "sizes": part["sizes"]})
            files[target.name] = sha256_file(target)
    if info.task == "segmentation":
        targets: dict[str, Any] = {
            "task": info.task,
            "foreground_fraction": {"train": _foreground(train["y"]), "test": _foreground(test["y"])},
        }
    else:
        targets = {
            "class_counts": {
                "train": _class_counts(train["y"], num_classes),
                "test": _class_counts(test["y"], num_classes),
            }
        }
    meta = {
        "dataset": name,
        "kind": info.kind,
        "storage": storage,
        "params": params,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "n": {"train": len(train["y"]), "test": len(test["y"])},
        **targets,
        "normalization": normalization,
        "files": files,
        "checksum": combined_checksum(files),
        **({"root": str(root)} if root is not None else {}),
        **extra,
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def _verified(directory: Path, full: bool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: prepare the dataset first (qgen prepare-data)")
    meta = read_json(meta_path)
    for fname, digest in meta["files"].items():
        if not (directory / fname).is_file():
            raise DatasetNotFoundError(
                f"{directory / fname} (listed in {meta_path}) is missing. Re-run prepare_data."
            )
        actual = sha256_file(directory / fname)
        if actual != digest:
            raise DataIntegrityError(
                f"{directory / fname}: sha256 {actual[:12]}… does not match {digest[:12]}… recorded in "
                f"{meta_path}; the file was changed or truncated. Re-run prepare_data."
            )
    splits = {s: torch.load(directory / f"{s}.pt", weights_only=True) for s in SPLITS}
    if meta.get("kind", "tensor") == "folder":
        root = Path(meta["root"])
        if not root.is_dir():
            raise DatasetNotFoundError(f"{meta['dataset']}: data root {root} recorded in {meta_path} is gone")
        if full:
            check_manifest(root, directory / MANIFEST)
        else:
            for part in splits.values():
                check_sizes(root, part["files"], part["sizes"].tolist())
    return meta, splits


def verify(directory: str | Path, full: bool = False) -> dict[str, Any]:
    """Check a prepared dataset: the sha256 of every file in meta.json and, for a folder set, the size of
    every image (``full``: the sha256 of every image against the manifest). Returns its meta."""
    return _verified(Path(directory), full)[0]


def load_prepared(directory: str | Path, expected_params: dict[str, Any] | None = None) -> PreparedData:
    """Load a prepared dataset after checking its files (:func:`verify`, not full).

    ``expected_params`` (the preparation settings in a run spec's ``data`` section) must match the
    settings the data was prepared with, so a stale folder cannot silently feed a run.
    """
    directory = Path(directory)
    meta, splits = _verified(directory, full=False)
    if expected_params is not None:
        mismatched = {
            k: (v, meta["params"].get(k)) for k, v in expected_params.items() if meta["params"].get(k) != v
        }
        if mismatched:
            raise DataIntegrityError(
                f"{directory} was prepared with different settings than the run asks for "
                f"(key: (wanted, found)): {mismatched}"
            )
    return PreparedData(meta["dataset"], splits["train"], splits["test"], meta, directory)
