"""One batch iterator between prepared data and everything that reads it (design.md, "Scale").

Training, evaluation, the stopping rule and every measure read a split through :meth:`Split.batches`,
in mini-batches of a stated size, so peak memory is bounded by the batch, not the dataset.

- :class:`TensorSplit`: a small image set held whole, as stored (uint8 pixels for image sets), on the
  training device; each batch is gathered there, augmented (training only) and normalized there, as
  airbench does on a GPU. A split may be a view through an index (the training part of a train/validation
  split), so carving a validation set copies nothing.
- :class:`FolderSplit` (ImageNet-size sets): images decoded by a DataLoader with workers from the files
  of a prepared folder dataset, with the dataset's train or eval transforms, normalized on the device.

Augmentation is deterministic for (seed, epoch, position in the epoch): the random crops and flips of the
batch that starts at position ``p`` of the epoch's order are drawn from a CPU generator seeded by
(seed, epoch, p), so CPU and CUDA runs see the same augmentation and a run resumed mid-epoch sees the same
batches as an uninterrupted one.

:class:`Examples` is a fixed, ordered set of examples of a split read in batches (a measure's subset);
iterating it twice gives the same batches.

Targets are carried as stored: int64 labels [B] for classification, uint8 0/1 masks [B, 1, H, W] for a
segmentation set (qgen.data.segmentation). Segmentation splits take no augmentation: the crops and flips
of qgen.data.augment move the image only, which would misalign it with its mask, so a TensorSplit with
mask targets refuses one.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

Batch = tuple[torch.Tensor, torch.Tensor]
#: maps a raw batch on the device (uint8 pixels or float values) to the network's float32 input
Preprocess = Callable[[torch.Tensor], torch.Tensor]
#: an augmentation of a raw batch, its random draws taken from the CPU generator it is given
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: batches of at most this many examples when a caller does not say (evaluation, measures)
DEFAULT_BATCH = 1024


class Split(Protocol):
    """A split of a prepared dataset (train, validation or test) read in mini-batches."""

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels (segmentation: uint8 masks [N, 1, H, W]) of every example, on the CPU."""
        ...

    def __len__(self) -> int: ...

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
        """Batches of the examples at positions ``order`` (all, in order, when None), normalized on the
        split's device; ``augment`` applies the split's training augmentation with draws seeded by
        (seed, epoch, offset + position within ``order``)."""
        ...


def augment_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """The CPU generator of the augmentation of the batch at ``position`` of epoch ``epoch``."""
    mixed = (seed * 1_000_003 + epoch + 7) * 1_000_033 + position
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


@dataclass(frozen=True)
class Standardize:
    """(x·scale − mean_c) / std_c per channel c: the prepared set's normalization (meta.json)."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_meta(cls, normalization: dict[str, Any]) -> Standardize:
        mean, std = normalization["mean"], normalization["std"]
        mean = tuple(mean) if isinstance(mean, list) else (mean,)
        std = tuple(std) if isinstance(std, list) else (std,)
        return cls(float(normalization["scale"]), tuple(map(float, mean)), tuple(map(float, std)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) * self.scale
        if len(self.mean) == 1:
            return (x - self.mean[0]) / self.std[0]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = _per_channel(self.mean, x.device, x.dtype).reshape(shape)
        std = _per_channel(self.std, x.device, x.dtype).reshape(shape)
        return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _per_channel(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The per-channel constants on a device, made once (not a host-to-device copy per batch)."""
    return torch.tensor(values, dtype=dtype, device=device)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


class IndexView:
    """A split that may be a view of part of its examples: ``index`` holds their positions (None: all).

    Subclasses keep every example's labels on the CPU in ``_labels_all``; a view shares the examples."""

    index: torch.Tensor | None
    _labels_all: torch.Tensor

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self._labels_all)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels_all[self.index] if self.index is not None else self._labels_all

    def _set_index(self, index: torch.Tensor | None) -> None:
        self.index = index.to(torch.int64).cpu() if index is not None else None

    def subset(self, positions: torch.Tensor):
        """The split restricted to ``positions`` (a view: no copy of the examples)."""
        positions = positions.to(torch.int64).cpu()
        view = copy.copy(self)
        view._set_index(self.index[positions] if self.index is not None else positions)
        return view


class TensorSplit(IndexView):
    """Examples held whole on one device, read in normalized (and, for training, augmented) batches.

    ``x`` is stored as prepared (uint8 pixels for image sets: CIFAR-10's training set is 150 MB, not
    600 MB of float32) and moved to ``device`` once; ``index`` makes the split a view of part of ``x``.
    ``y`` is int64 labels [N] or uint8 masks [N, 1, H, W] (no ``augment`` then), batched alike.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        preprocess: Preprocess = identity,
        *,
        augment: Augmentation | None = None,
        index: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if augment is not None and y.ndim > 1:
            raise ValueError(
                f"augmentation moves images only, so it cannot be used with mask targets of shape "
                f"{tuple(y.shape)}: it would misalign images and masks (segmentation sets take none)"
            )
        device = torch.device(device) if device is not None else x.device
        self.x, self.y = x.to(device), y.to(device)
        self._labels_all = y.to("cpu")
        self.preprocess, self.augment, self.device = preprocess, augment, device
        self._set_index(index)

    def _set_index(self, index: torch.Tensor | None) -> None:
        super()._set_index(index)
        self._index_dev = self.index.to(self.device) if self.index is not None else None

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
        n = len(order) if order is not None else len(self)
        order_dev = order.to(self.device) if order is not None else None
        for start in range(0, n, batch_size):
            if order_dev is None:
                pos = torch.arange(start, min(start + batch_size, n), device=self.device)
            else:
                pos = order_dev[start : start + batch_size]
            rows = self._index_dev[pos] if self._index_dev is not None else pos
            x, y = self.x[rows], self.y[rows]
            if augment and self.augment is not None:
                x = self.augment(x, augment_generator(seed, epoch, offset + start))
            yield self.preprocess(x), y


@dataclass
class Examples:
    """A fixed, ordered set of examples of a split, read in batches of ``batch_size`` (a measure's subset).

    Iterating twice gives the same batches; ``len`` is the number of examples."""

    split: Split
    order: torch.Tensor | None = None
    batch_size: int = DEFAULT_BATCH

    def __iter__(self) -> Iterator[Batch]:
        return self.split.batches(self.batch_size, self.order)

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else len(self.split)

    @property
    def labels(self) -> torch.Tensor:
        labels = self.split.labels
        return labels[self.order.cpu()] if self.order is not None else labels

    @classmethod
    def from_tensors(cls, x: torch.Tensor, y: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> Examples:
        """Already normalized tensors read in batches (tests, and callers that hold a small batch)."""
        return cls(TensorSplit(x, y), None, batch_size)

    def rebatched(self, batch_size: int) -> Examples:
        return Examples(self.split, self.order, batch_size)


def sample(n: int, size: int | None, seed: int) -> torch.Tensor | None:
    """A seeded random subset of ``size`` of the positions 0..n−1 (None: all of them, in order)."""
    if size is None or size >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def examples(split: Split, size: int | None, seed: int, batch_size: int = DEFAULT_BATCH) -> Examples:
    """``size`` examples of ``split`` drawn with ``seed`` (all of it when None), read in batches."""
    return Examples(split, sample(len(split), size, seed), batch_size)


def stratified_holdout(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (kept, held out) of a seeded stratified split holding out ``size`` examples.

    Each class gives its share of ``size`` (largest remainders, ties to the smaller class index), its
    examples chosen by a seeded permutation; both position lists come back sorted."""
    labels = labels.cpu()
    n = len(labels)
    if not 0 <= size < n:
        raise ValueError(f"cannot hold out {size} of {n} examples")
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * size / n
    take = exact.floor().long()
    short = size - int(take.sum())
    if short:
        remainders = exact - take.double()
        order = sorted(range(len(classes)), key=lambda i: (-float(remainders[i]), int(classes[i])))
        for i in order[:short]:
            take[i] += 1
    gen = torch.Generator().manual_seed(seed)
    held: list[torch.Tensor] = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(labels == c).flatten()
        held.append(members[torch.randperm(len(members), generator=gen)[:k]])
    held_out = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.int64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()
