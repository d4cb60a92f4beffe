"""Dataset registry: each entry knows its shape, its preparation settings and how to build its splits.

A builder turns a dataset's preparation settings (:func:`prep_params`) into its train and test parts:
``builder(params)`` for a dataset bundled with a package, ``builder(params, root)`` for one read from the
user's files under :func:`data_root`. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from qgen.config import ConfigError

#: One split as a builder returns it: ``{"x": uint8 [N, C, H, W], "y": int64 [N]}`` for a tensor set
#: (a segmentation set: ``"y"`` uint8 0/1 masks [N, 1, H, W]),
#: ``{"files": list[str] (relative to the root), "y": int64 [N], "sizes": int64 [N]}`` for a folder set.
Split = dict[str, Any]
#: A builder gets the preparation settings (and the data root, for a file-based set) and returns
#: (train, test, description recorded in meta.json).
Builder = Callable[..., tuple[Split, Split, dict[str, Any]]]

#: the split keys of a dataset that qgen splits itself (no official test split): key -> default
SPLIT_KEYS: Mapping[str, Any] = MappingProxyType({"test_fraction": 0.25, "split_seed": 0})
#: the environment variable whose ``<name>`` sub-folder is a dataset's default root
DATA_ENV = "QGEN_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    - ``prep_keys``: the preparation keys it accepts, with their defaults; they are the ``data`` params of
      every run spec that uses it. ``root`` (file-based sets) is a path, never a spec param.
    - ``kind``: ``tensor`` (stored whole as uint8 tensors) or ``folder`` (image files streamed from disk).
    - ``official_split``: the test split is the dataset's own (its specs carry no split keys); otherwise
      qgen makes a fixed stratified split (``test_fraction``, ``split_seed``).
    - ``augment_default``: the training augmentation the papers use on it with convolutional models
      (``{"crop_padding", "flip"}`` for qgen.data.augment), None for none. Folder sets have their own
      train/eval transforms (qgen.data.folders) instead.
    - ``needs_root``: read from the user's files (``datasets.<name>.root`` or ``$QGEN_DATA/<name>``).
    - ``pixel_scale``: what the stored integer pixels are multiplied by before standardization.
    - ``layout``: where the files go under the root (for messages).
    - ``task``: ``classification`` (``y`` int64 labels [N]) or ``segmentation`` (``y`` uint8 0/1 masks
      [N, 1, H, W], one foreground class; ``num_classes`` is then the network's output channels, 1).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    builder: Builder
    description: str
    prep_keys: Mapping[str, Any] = field(default_factory=dict)
    kind: Literal["tensor", "folder"] = "tensor"
    official_split: bool = False
    augment_default: Mapping[str, Any] | None = None
    needs_root: bool = False
    pixel_scale: float = 1 / 255
    layout: str = ""
    task: Literal["classification", "segmentation"] = "classification"


class UnknownDatasetError(LookupError):
    """A dataset name without a registered loader."""


DATASETS: dict[str, DatasetInfo] = {}


def register(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    description: str,
    *,
    prep_keys: Mapping[str, Any] | None = None,
    kind: Literal["tensor", "folder"] = "tensor",
    official_split: bool = False,
    augment_default: Mapping[str, Any] | None = None,
    needs_root: bool = False,
    pixel_scale: float = 1 / 255,
    layout: str = "",
    task: Literal["classification", "segmentation"] = "classification",
) -> Callable[[Builder], Builder]:
    """Register a builder. ``prep_keys`` None: the split keys (SPLIT_KEYS) for a set without an official
    split, none for one with it."""
    if prep_keys is None:
        prep_keys = {} if official_split else dict(SPLIT_KEYS)

    def wrap(builder: Builder) -> Builder:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        DATASETS[name] = DatasetInfo(
            name,
            input_shape,
            num_classes,
            builder,
            description,
            MappingProxyType(dict(prep_keys)),
            kind,
            official_split,
            MappingProxyType(dict(augment_default)) if augment_default is not None else None,
            needs_root,
            pixel_scale,
            layout,
            task,
        )
        return builder

    return wrap


def get(name: str) -> DatasetInfo:
    # (importing them registers the built-in datasets; the heavy imports happen in their builders)
    from qgen.data import digits, imagenet, mnist5k, segmentation, vision  # noqa: F401

    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def prep_params(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The preparation settings of ``name`` that go into its run specs: ``given`` (``datasets.<name>`` of
    the config) over the dataset's defaults, without ``root`` (a path, not a setting).

    Raises ConfigError naming ``datasets.<name>.<key>`` for a key the dataset does not take."""
    info = get(name)
    accepted = sorted(info.prep_keys) + (["root"] if info.needs_root else [])
    out = dict(info.prep_keys)
    for key, value in given.items():
        where = f"datasets.{name}.{key}"
        if key == "root":
            if not info.needs_root:
                raise ConfigError(f"{where}: {name} is bundled with qgen and reads no files from a root")
            continue
        if key not in info.prep_keys:
            if info.official_split and key in SPLIT_KEYS:
                reason = (
                    f"{name} has an official test split, so its runs take no {key} "
                    "(a validation split is set in the run spec: data.val_size)"
                )
            else:
                reason = f"{name} has no such preparation setting"
            raise ConfigError(f"{where}: {reason}; it accepts: {', '.join(accepted) or 'none'}")
        out[key] = value
    return out


def data_root(name: str, given: Mapping[str, Any], *, must_exist: bool = False) -> Path:
    """The folder holding ``name``'s files: ``datasets.<name>.root``, else ``$QGEN_DATA/<name>``.

    Raises ConfigError when neither is set; with ``must_exist``, a DatasetNotFoundError (naming the
    folder tried, where it came from and the expected layout) when the folder is not there."""
    from qgen.data.integrity import DatasetNotFoundError

    info = get(name)
    if not info.needs_root:
        raise ConfigError(f"datasets.{name}.root: {name} is bundled with qgen and reads no files")
    how = f"set datasets.{name}.root in the config, or ${DATA_ENV} to a folder holding {name}/"
    if given.get("root"):
        root, source = Path(given["root"]).expanduser(), f"datasets.{name}.root"
    elif os.environ.get(DATA_ENV):
        root, source = Path(os.environ[DATA_ENV]) / name, f"${DATA_ENV}/{name}"
    else:
        raise ConfigError(
            f"datasets.{name}.root is not set and neither is ${DATA_ENV}: qgen reads {name} from your "
            f"files and downloads nothing; {how} (layout: {info.layout or 'see qgen.data'})"
        )
    root = Path(os.path.abspath(root))  # absolute (a folder set's meta.json names it), symlinks kept
    if must_exist and not root.is_dir():
        raise DatasetNotFoundError(
            f"{name}: data root {root} (from {source}) does not exist or is not a folder; {how} "
            f"(layout: {info.layout or 'see qgen.data'})"
        )
    return root
