"""ImageNet-size image folders, prepared as file lists with labels (the images are read by
qgen.data.folders). The images stay where they are; nothing is copied, extracted or downloaded.

Two layouts under the root, both with one sub-folder per class in ``train/`` and ``val/``:

- torchvision's ``ImageNet(root, split)`` layout: ``meta.bin`` (torch.save of (wnid_to_classes, val_wnids),
  which torchvision writes from the devkit) beside ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, as
  ``ImageNet`` leaves them after extracting the archives. The class names come from ``meta.bin``. qgen
  never extracts the tars: run ``torchvision.datasets.ImageNet(root, split)`` once for that.
- a plain ImageFolder: ``train/<class>/*`` and ``val/<class>/*`` without ``meta.bin``.

The listing is torchvision's (``find_classes``, ``make_dataset`` with its image extensions): classes are
the folder names, files sorted within each class. ``classes`` (a list file, one wnid or folder name per
line, ``#`` comments; relative to the root unless absolute) keeps a fixed subset such as ImageNet-100;
the kept classes are indexed 0..K−1 in sorted name order (as ImageFolder indexes them, so any list of the
same classes gives the same labels), and the file's sha256 is recorded. ``max_per_class`` keeps the first
N training images of each class in sorted order (the validation split is never cut). ``image_size``
(default 224) is the side of the square images the runs see (meta.json's ``input_shape``): random-resized
crops of that size for training, a resize by 256/224 of it and a center crop for evaluation.
Normalization uses the standard ImageNet statistics of torchvision's references (not recomputed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qgen.config import ConfigError
from qgen.data.integrity import DataIntegrityError, DatasetNotFoundError, parallel_map
from qgen.data.registry import Split, register
from qgen.io import sha256_file

#: torchvision reference scripts' ImageNet statistics (of x/255)
IMAGENET_NORMALIZATION = {
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "source": "the standard ImageNet statistics (torchvision references), not recomputed",
}
TRAIN_SIZE, EVAL_RESIZE = 224, 256
SPLIT_FOLDERS = {"train": "train", "test": "val"}
IMAGENET_LAYOUT = (
    "<root>/train/<class>/* and <root>/val/<class>/*, with meta.bin for torchvision's ImageNet layout "
    "(extracted by torchvision.datasets.ImageNet) or without it for a plain ImageFolder"
)


def read_class_list(path: Path) -> list[str]:
    """The class names of a list file: the first word of each line, blank lines and ``#`` comments skipped."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].split()
        if word:
            names.append(word[0])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"datasets.imagenet.classes: {path} lists {', '.join(duplicates)} more than once")
    if not names:
        raise ConfigError(f"datasets.imagenet.classes: {path} lists no class")
    return names


def _layout(root: Path) -> str:
    missing = [s for s in SPLIT_FOLDERS.values() if not (root / s).is_dir()]
    if missing:
        tars = sorted(p.name for p in root.glob("ILSVRC2012_img_*.tar"))
        hint = (
            f"; {', '.join(tars)} found: qgen does not extract archives, run "
            "torchvision.datasets.ImageNet(root, split) once to extract them"
            if tars
            else ""
        )
        raise DatasetNotFoundError(
            f"imagenet: {root} has no {' and no '.join(m + '/' for m in missing)} folder; expected "
            f"{IMAGENET_LAYOUT}{hint}"
        )
    return "torchvision_imagenet" if (root / "meta.bin").is_file() else "image_folder"


def _list_split(root: Path, folder: str, class_to_idx: dict[str, int]) -> tuple[list[str], list[int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        samples = make_dataset(str(root / folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"imagenet: {root / folder}: {err}") from None
    prefix = str(root) + os.sep
    return [path.removeprefix(prefix) for path, _ in samples], [label for _, label in samples]


def _keep_first(files: list[str], labels: list[int], per_class: int) -> tuple[list[str], list[int]]:
    seen: dict[int, int] = {}
    kept_files, kept_labels = [], []
    for f, label in zip(files, labels, strict=True):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            kept_files.append(f)
            kept_labels.append(label)
    return kept_files, kept_labels


def _file_sizes(root: Path, files: Sequence[str]) -> list[int]:
    return parallel_map(lambda f: os.stat(root / f).st_size, files)


@register(
    "imagenet",
    input_shape=(3, TRAIN_SIZE, TRAIN_SIZE),
    num_classes=1000,
    description="ImageNet ILSVRC-2012 (or an ImageFolder) read from its folders; a class subset by list file",
    prep_keys={"classes": None, "max_per_class": None, "image_size": None},
    kind="folder",
    official_split=True,
    needs_root=True,
    layout=IMAGENET_LAYOUT,
)
def build_imagenet(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    import torch
    from torchvision.datasets.folder import find_classes

    layout = _layout(root)
    train_classes = find_classes(str(root / "train"))[0]
    val_classes = find_classes(str(root / "val"))[0]
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))
        raise DataIntegrityError(
            f"imagenet: {root}/train and {root}/val have different class folders ({len(only)} in one only, "
            f"e.g. {', '.join(only[:5])})"
        )
    info: dict[str, Any] = {"layout": layout}
    size = params["image_size"]
    if size is not None:
        if isinstance(size, bool) or int(size) < 16:
            raise ConfigError(f"datasets.imagenet.image_size: expected an integer >= 16, got {size!r}")
        info["input_shape"] = [3, int(size), int(size)]
    classes = train_classes
    if params["classes"] is not None:
        path = Path(params["classes"]).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DatasetNotFoundError(
                f"imagenet: the class list {path} (datasets.imagenet.classes) is missing"
            )
        wanted = read_class_list(path)
        unknown = sorted(set(wanted) - set(train_classes))
        if unknown:
            raise DataIntegrityError(
                f"imagenet: {path} lists {len(unknown)} classes with no folder in {root}/train: "
                f"{', '.join(unknown[:5])}"
            )
        classes = sorted(wanted)
        info["classes_file"] = {"path": str(path), "sha256": sha256_file(path)}
    class_to_idx = {c: i for i, c in enumerate(classes)}
    if layout == "torchvision_imagenet":
        from torchvision.datasets.imagenet import load_meta_file

        try:
            wnid_to_classes = load_meta_file(str(root))[0]
        except Exception as err:  # torch.load of a damaged file raises many kinds
            raise DataIntegrityError(f"imagenet: {root / 'meta.bin'} could not be read: {err}") from None
        unnamed = [c for c in classes if c not in wnid_to_classes]
        if unnamed:
            raise DataIntegrityError(f"imagenet: {root / 'meta.bin'} does not name the classes {unnamed[:5]}")
        info["class_names"] = [list(wnid_to_classes[c]) for c in classes]
    max_per_class = params["max_per_class"]
    if max_per_class is not None and (isinstance(max_per_class, bool) or int(max_per_class) < 1):
        raise ConfigError(
            f"datasets.imagenet.max_per_class: expected a positive integer, got {max_per_class!r}"
        )
    splits = []
    for split, folder in SPLIT_FOLDERS.items():
        files, labels = _list_split(root, folder, class_to_idx)
        if split == "train" and max_per_class is not None:
            files, labels = _keep_first(files, labels, int(max_per_class))
        splits.append(
            {
                "files": files,
                "y": torch.tensor(labels, dtype=torch.int64),
                "sizes": torch.tensor(_file_sizes(root, files), dtype=torch.int64),
            }
        )
    info.update(
        classes=classes,
        num_classes=len(classes),
        normalization=dict(IMAGENET_NORMALIZATION),
        source=f"torchvision.datasets.folder listing ({layout})",
    )
    return splits[0], splits[1], info
