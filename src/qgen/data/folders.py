"""Reading the images of a prepared folder set (qgen.data.imagenet): a Dataset over (root, files, labels)
and the standard ImageNet train/eval transforms, both giving uint8 tensors (normalized on the device).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from qgen.data.imagenet import EVAL_RESIZE, TRAIN_SIZE

if TYPE_CHECKING:
    from qgen.data.prepared import PreparedData


def train_transform(size: int = TRAIN_SIZE) -> Callable[[Any], torch.Tensor]:
    """RandomResizedCrop(size) + RandomHorizontalFlip, as uint8 [3, size, size] (normalized on the device)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.uint8, scale=True),
            v2.ToPureTensor(),
        ]
    )


def eval_transform(size: int = TRAIN_SIZE, resize: int = EVAL_RESIZE) -> Callable[[Any], torch.Tensor]:
    """Resize(resize) + CenterCrop(size), as uint8 [3, size, size]."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.uint8, scale=True),
            v2.ToPureTensor(),
        ]
    )


class ImageFiles(torch.utils.data.Dataset):
    """The images ``files`` (relative to ``root``) with labels ``y``, decoded as RGB (PIL, torchvision's
    ``default_loader``) and passed through ``transform`` (default: ``eval_transform()``)."""

    def __init__(
        self,
        root: str | Path,
        files: Sequence[str],
        y: torch.Tensor,
        transform: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        if len(files) != len(y):
            raise ValueError(f"{len(files)} files but {len(y)} labels")
        self.root, self.files, self.y = Path(root), list(files), y.to(torch.int64)
        self.transform = transform if transform is not None else eval_transform()

    @classmethod
    def from_prepared(
        cls,
        prepared: PreparedData,
        split: Literal["train", "test"],
        transform: Callable[[Any], torch.Tensor] | None = None,
    ) -> ImageFiles:
        """A split of a prepared folder set; ``transform`` defaults to the split's standard transform."""
        part = prepared.train if split == "train" else prepared.test
        if transform is None:
            transform = train_transform() if split == "train" else eval_transform()
        return cls(prepared.meta["root"], part["files"], part["y"], transform)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        image = default_loader(str(self.root / self.files[index]))
        return self.transform(image), int(self.y[index])
