"""The data of one run: its training, validation and test splits on the run's device.

Built from a prepared dataset (qgen.data.prepared) and the ``data`` section of a run spec:

- ``val_size`` examples of the prepared training split are held out as the validation split by a
  seeded stratified split (``val_seed``, :func:`~qgen.data.batches.stratified_holdout`; a segmentation
  set, whose targets are masks, by a seeded uniform draw, :func:`random_holdout`); the rest is the
  training split. m, the training-set size of the size-normalized measures, is the size of what is left.
- the test split is the prepared test split: the official one for the sets that have it.
- ``augment`` (resolved by the run spec: the dataset's augmentation for convolutional models, none for the
  permutation-invariant ones) applies to training batches only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qgen.data.batches import Split, Standardize, TensorSplit, class_counts, stratified_holdout
from qgen.data.prepared import MetaView, PreparedData

#: run-spec ``data`` keys that select from a prepared set rather than prepare it (never checked
#: against the preparation settings in meta.json)
RUN_KEYS = ("val_size", "val_seed", "augment")


@dataclass
class RunData(MetaView):
    """A run's splits (normalized batches on its device) and the prepared set's description."""

    name: str
    meta: dict[str, Any]
    train: Split
    test: Split
    val: Split | None = None

    @property
    def m(self) -> int:
        """The training-set size (Jiang et al.'s m), validation examples excluded."""
        return len(self.train)

    def train_class_counts(self) -> list[int]:
        """Examples per class of the training split; for a segmentation set, pixels per class
        [background, foreground] of its masks (the majority rate is then a pixel-accuracy chance level)."""
        if self.task == "segmentation":
            return class_counts(self.train.labels.flatten().to(torch.int64), 2)
        return class_counts(self.train.labels, self.num_classes)


def preprocess_for(prepared: PreparedData, directory: Path | None = None):
    """The normalization a prepared set's batches get on the device: standardization by the training
    statistics in meta.json, or BinaryConnect's GCN + ZCA when the set was prepared with it."""
    meta = prepared.meta
    if meta.get("params", {}).get("preprocess") == "gcn_zca":
        from qgen.data.whiten import GcnZca

        if directory is None:
            raise ValueError("a GCN + ZCA prepared set needs its directory (whiten.pt)")
        return GcnZca.from_state(torch.load(Path(directory) / "whiten.pt", weights_only=True))
    return Standardize.from_meta(meta["normalization"])


def open_run_data(
    prepared: PreparedData,
    data_spec: dict[str, Any],
    device: torch.device | str = "cpu",
    directory: str | Path | None = None,
    workers: int = 8,
) -> RunData:
    """The splits of a run with ``data_spec`` (a run spec's ``data`` section) on ``device``; a folder set
    (ImageNet) streams through a DataLoader with ``workers`` processes (qgen.data.streamed)."""
    from qgen.data.augment import Augment

    if prepared.meta.get("kind", "tensor") != "tensor":
        from qgen.data.streamed import open_folder_run_data

        return open_folder_run_data(prepared, data_spec, device, workers)
    preprocess = preprocess_for(prepared, Path(directory) if directory is not None else None)
    augment = Augment.from_spec(data_spec.get("augment"))
    tr, te = prepared.train, prepared.test
    full = TensorSplit(tr["x"], tr["y"], preprocess, augment=augment, device=device)
    test = TensorSplit(te["x"], te["y"], preprocess, device=device)
    return with_validation(prepared, full, test, data_spec)


def random_holdout(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (kept, held out), both sorted, of a seeded uniform draw of ``size`` of ``n`` examples
    (the validation split of a segmentation set, which has no class labels to stratify by)."""
    if not 0 <= size < n:
        raise ValueError(f"cannot hold out {size} of {n} examples")
    held = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def with_validation(prepared: PreparedData, full: Any, test: Split, data_spec: dict[str, Any]) -> RunData:
    """The run's data from the whole prepared training split ``full`` (a split with ``subset``): with
    ``data.val_size``, that many examples held out of it as the validation split (seeded, stratified)."""
    val_size = int(data_spec.get("val_size", 0))
    if not val_size:
        return RunData(prepared.name, prepared.meta, full, test)
    seed = int(data_spec.get("val_seed", 0))
    if prepared.task == "segmentation":
        kept, held = random_holdout(len(full), val_size, seed)
    else:
        kept, held = stratified_holdout(full.labels, val_size, seed)
    return RunData(prepared.name, prepared.meta, full.subset(kept), test, full.subset(held))
