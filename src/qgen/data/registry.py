"""Dataset registry: each entry knows its shape and how to produce its train and test tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Split = dict[str, torch.Tensor]
#: A builder gets the dataset's preparation settings and returns (train, test, description).
Builder = Callable[[dict[str, Any]], tuple[Split, Split, dict[str, Any]]]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    builder: Builder
    description: str


class UnknownDatasetError(LookupError):
    """A dataset name without a registered loader."""


DATASETS: dict[str, DatasetInfo] = {}
#: datasets the schema accepts for the paper-scale configs but that have no loader yet
PAPER_SCALE = ("mnist", "cifar10", "svhn")


def register(name: str, input_shape: tuple[int, int, int], num_classes: int, description: str):
    def wrap(builder: Builder) -> Builder:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        DATASETS[name] = DatasetInfo(name, input_shape, num_classes, builder, description)
        return builder

    return wrap


def get(name: str) -> DatasetInfo:
    from qgen.data import digits  # noqa: F401  (registers the built-in datasets)

    try:
        return DATASETS[name]
    except KeyError:
        if name in PAPER_SCALE:
            raise UnknownDatasetError(
                f"dataset {name!r} has no loader in this version of qgen: the paper-scale configs that "
                "name it "
                "validate and dry-run (`snakemake -n`), and its loader (torchvision's reader of the "
                "official files under a path you give) comes with the datasets work; "
                f"available: {sorted(DATASETS)}"
            ) from None
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
