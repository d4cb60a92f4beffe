"""Splits of ImageNet-size folder sets, streamed from their image files by a DataLoader with workers.

A :class:`FolderSplit` reads the files of a prepared folder set (qgen.data.folders: file list, labels,
manifest) in the order asked: workers decode each image and apply the dataset's train transform
(RandomResizedCrop + flip, for augmented training batches) or its eval transform (Resize + CenterCrop),
returning uint8; the batch is normalized on the device like a small set's. Only the batches in flight are
in memory (``workers`` × ``prefetch`` batches).

Determinism: the order is the caller's (a pure function of seed and epoch); the random crops and flips
are drawn in the workers from torch's generator, which the DataLoader seeds per worker from a generator
seeded by (seed, epoch, position), so an epoch's augmentation repeats for a fixed number of workers
(unlike the small sets, it is not the same on a different worker count).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from qgen.data.batches import Batch, IndexView, Preprocess, Standardize, augment_generator


class FolderSplit(IndexView):
    """A split of a prepared folder set (files relative to ``root``, labels ``y``), read in batches."""

    def __init__(
        self,
        root: str,
        files: list[str],
        y: torch.Tensor,
        preprocess: Preprocess,
        *,
        augment: bool,
        index: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        workers: int = 8,
        prefetch: int = 2,
        image_size: int | None = None,
        eval_resize: int | None = None,
    ) -> None:
        self.root, self.files, self._labels_all = root, files, y.to(torch.int64).cpu()
        self.eval_resize = eval_resize  # None: the standard 256/224 ratio (ImageNet-C's are crops already)
        self.preprocess, self.can_augment = preprocess, augment
        self.device, self.workers, self.prefetch = torch.device(device), workers, prefetch
        self.image_size = image_size
        self._set_index(index)

    def batches(
        self,
        batch_size: int,
        order: torch.Tensor | None = None,
        *,
        augment: bool = False,
        seed: int = 0,
        epoch: int = 0,
        offset: int = 0,
    ) -> Iterator[Batch]:
        from qgen.data.folders import ImageFiles, eval_transform, train_transform
        from qgen.data.imagenet import EVAL_RESIZE, TRAIN_SIZE

        positions = order.cpu() if order is not None else torch.arange(len(self))
        rows = self.index[positions] if self.index is not None else positions
        size = self.image_size or TRAIN_SIZE
        if augment and self.can_augment:
            transform = train_transform(size)
        else:  # the standard resize-then-crop ratio 256/224 at any size, unless told otherwise
            transform = eval_transform(size, self.eval_resize or round(size * EVAL_RESIZE / TRAIN_SIZE))
        loader = torch.utils.data.DataLoader(
            ImageFiles(self.root, self.files, self._labels_all, transform),
            batch_size=batch_size,
            sampler=rows.tolist(),
            num_workers=self.workers,
            prefetch_factor=self.prefetch if self.workers else None,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=augment_generator(seed, epoch, offset),
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            yield self.preprocess(x), y.to(self.device, non_blocking=True)


def open_folder_run_data(
    prepared: Any, data_spec: dict[str, Any], device: torch.device | str, workers: int = 8
):
    """A run's splits of a prepared folder set (see qgen.data.run_data.open_run_data)."""
    from qgen.data.run_data import with_validation

    meta = prepared.meta
    norm = Standardize.from_meta(meta["normalization"])
    tr, te = prepared.train, prepared.test
    common = {"device": device, "workers": workers, "image_size": int(meta["input_shape"][-1])}
    full = FolderSplit(meta["root"], tr["files"], tr["y"], norm, augment=True, **common)
    test = FolderSplit(meta["root"], te["files"], te["y"], norm, augment=False, **common)
    return with_validation(prepared, full, test, data_spec)
