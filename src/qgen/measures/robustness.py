"""Robustness to distortions: accuracy and cross-entropy of the deployed model on corrupted test sets.

QGen reports that QAT "can improve robustness to distorted data" in a colour-coded table (papers.md §1;
which corruptions and dataset it used is not verified). qgen evaluates the standard corruption benchmark
of Hendrycks & Dietterich (2019): each of its corruptions at each severity (1-5) applied to the test set,
as released (CIFAR-10-C, CIFAR-100-C, ImageNet-C) or generated (qgen.data.corruptions) for the sets that
have none. The model is the one ``metrics.json`` evaluates: the quantized network as deployed (eval mode,
quantizers active), its input normalized exactly like the clean test split (the run's own preprocessing,
e.g. the training set's statistics or BinaryConnect's GCN + ZCA).

Every (corruption, severity) is read in mini-batches of ``batch_size`` from its memory-mapped block
(qgen.data.corrupted), so memory is bounded by one batch at any set size; ``examples`` evaluates the first
``examples`` images of each block (they are the same test images in every block: the released layout keeps
test-set order), null all of them.

Summaries (the ``summary`` of robustness.json, columns ``robust.*`` of runs.csv):
- ``acc`` / ``ce``: the mean over every evaluated (corruption, severity) cell (Hendrycks & Dietterich's mean
  corruption accuracy), ``error`` = 1 − ``acc``;
- ``<corruption>.acc``: the mean over that corruption's severities, and ``<corruption>.s<k>.acc`` the cell.
The corruption error relative to FP32 (their CE_c normalized by a baseline: they use AlexNet, which does not
exist here, so the experiment's FP32 run of the same configuration is the baseline) needs the paired run
and is computed over the runs table (qgen.analysis.robustness).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from qgen.data.batches import Batch, Preprocess
from qgen.metrics import accuracy_and_ce


class CorruptedArrays(Protocol):
    """A corrupted test set in the released CIFAR-10-C layout (qgen.data.corrupted)."""

    @property
    def corruptions(self) -> Sequence[str]: ...

    @property
    def severities(self) -> Sequence[int]: ...

    def images(self, corruption: str, severity: int) -> np.ndarray:
        """uint8 (N, H, W, C), memory-mapped."""
        ...

    def labels(self, severity: int) -> np.ndarray: ...


def array_batches(
    images: np.ndarray,
    labels: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    batch_size: int,
    examples: int | None = None,
) -> Iterator[Batch]:
    """Batches of a (N, H, W, C) uint8 array (memory-mapped: only one batch is read at a time), as the
    network's NCHW input normalized on ``device``, with their int64 labels."""
    n = len(images) if examples is None else min(int(examples), len(images))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = torch.from_numpy(np.array(images[start:stop].transpose(0, 3, 1, 2), order="C"))  # a copy
        y = torch.from_numpy(np.asarray(labels[start:stop], dtype=np.int64))
        yield preprocess(x.to(device)), y.to(device)


#: (corruption, severity) -> batches of that cell
CellBatches = Callable[[str, int], Iterator[Batch]]


def evaluate_cells(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    cells: CellBatches,
    corruptions: Sequence[str],
    severities: Sequence[int],
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """``results`` {corruption: {severity: {acc, ce}}} and ``summary`` (module docstring) of ``model``."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for corruption in corruptions:
        results[corruption] = {}
        for severity in severities:
            acc, ce = accuracy_and_ce(model, cells(corruption, severity))
            results[corruption][str(severity)] = {"acc": acc, "ce": ce}
            if progress is not None:
                progress(corruption, severity)
    return {"results": results, "summary": summarize(results)}


def summarize(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """Mean corruption accuracy and cross-entropy over every cell, and per corruption and cell."""
    cells = [cell for per_severity in results.values() for cell in per_severity.values()]
    out = {
        "acc": float(np.mean([c["acc"] for c in cells])),
        "ce": float(np.mean([c["ce"] for c in cells])),
    }
    out["error"] = 1.0 - out["acc"]
    for corruption, per_severity in results.items():
        out[f"{corruption}.acc"] = float(np.mean([c["acc"] for c in per_severity.values()]))
        for severity, cell in per_severity.items():
            out[f"{corruption}.s{severity}.acc"] = cell["acc"]
    return out


def _timed(model: nn.Module, corrupted: Any, cells: CellBatches, settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`evaluate_cells` over the corruptions and severities ``settings`` selects, with its seconds."""
    corruptions = selected(settings["corruptions"], corrupted.corruptions, "corruption")
    severities = selected(settings["severities"], corrupted.severities, "severity")
    t0 = time.perf_counter()
    body = evaluate_cells(model, cells, corruptions, severities)
    return {**body, "seconds": round(time.perf_counter() - t0, 3)}


def robustness_of(
    model: nn.Module,
    corrupted: CorruptedArrays,
    preprocess: Preprocess,
    device: torch.device,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """robustness.json's ``results``, ``summary`` and ``seconds`` for a set in the released layout,
    with the corruptions and severities ``settings`` selects (qgen.config's robustness section)."""
    batch_size, examples = int(settings["batch_size"]), settings.get("examples")

    def cells(corruption: str, severity: int) -> Iterator[Batch]:
        images, labels = corrupted.images(corruption, severity), corrupted.labels(severity)
        return array_batches(images, labels, preprocess, device, batch_size, examples)

    return _timed(model, corrupted, cells, settings)


def robustness_of_folders(
    model: nn.Module,
    corrupted: Any,
    preprocess: Preprocess,
    device: torch.device,
    settings: dict[str, Any],
    image_size: int,
    workers: int = 8,
) -> dict[str, Any]:
    """:func:`robustness_of` for ImageNet-C folders (qgen.data.corrupted.FolderCorruptedSet): each cell's
    JPEGs decoded by a DataLoader with ``workers`` processes (qgen.data.streamed). The released images are
    224 × 224 centre crops already, so they are only centre-cropped to ``image_size`` (Hendrycks &
    Dietterich's evaluation: CenterCrop(224), no resize), never resized by the clean set's 256/224 rule."""
    from qgen.data.streamed import FolderSplit

    batch_size, examples = int(settings["batch_size"]), settings.get("examples")

    def cells(corruption: str, severity: int) -> Iterator[Batch]:
        files, labels = corrupted.files(corruption, severity)
        split = FolderSplit(
            str(corrupted.root), files, torch.as_tensor(labels), preprocess, augment=False, device=device,
            workers=workers, image_size=image_size, eval_resize=image_size,
        )  # fmt: skip
        n = len(files) if examples is None else min(int(examples), len(files))
        return split.batches(batch_size, torch.arange(n))

    return _timed(model, corrupted, cells, settings)


def selected(wanted: Any, available: Sequence[Any], what: str) -> list[Any]:
    """``wanted`` ("all" or a list) among ``available``, in the order given; an error names the missing."""
    if wanted == "all":
        return list(available)
    missing = [w for w in wanted if w not in available]
    if missing:
        have = ", ".join(map(str, available))
        raise ValueError(f"the corrupted set has no {what} {', '.join(map(str, missing))}; it has {have}")
    return list(wanted)
