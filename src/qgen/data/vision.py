"""MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN, read from the user's files in torchvision's layouts.

Nothing is downloaded (``download=False``). Every file read is checked against the md5 torchvision knows
for it where it knows one, and its sha256 is recorded in meta.json (``source_files``). All splits are the
official ones; images are kept as uint8 [N, C, H, W] (qgen.data.prepared computes the normalization).

- ``mnist``, ``fashion_mnist``: ``<root>/MNIST/raw/`` (``FashionMNIST/raw/``) holding the four IDX files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``. torchvision knows the md5 of the ``.gz`` archives only:
  where a ``.gz`` is there too, its md5 is checked and it must decompress to the raw file. The raw files
  are read with torchvision's IDX reader (``torchvision.datasets.mnist.read_image_file``), not through
  the ``MNIST`` class, which prefers a legacy ``processed/`` cache over the raw files when one exists.
- ``cifar10``, ``cifar100``: ``<root>/cifar-10-batches-py/`` (``cifar-100-python/``), the python pickles,
  read by ``torchvision.datasets.CIFAR10`` / ``CIFAR100``; CIFAR-100's labels are the 100 fine labels.
  ``preprocess: gcn_zca`` adds BinaryConnect's GCN + ZCA whitening (qgen.data.whiten), fitted at
  preparation on the training split.
- ``svhn``: ``<root>/{train,test,extra}_32x32.mat`` read by ``torchvision.datasets.SVHN`` (label 10 is
  digit 0). ``extra: true`` appends the 531,131 extra images to the training split, as BinaryConnect
  (Courbariaux et al. 2015) trains on train + extra; the parts and their sizes are recorded, in order
  (``train_parts``). SVHN
  gets no augmentation by default: the BinaryConnect and 2014 reference code use none on it.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qgen.config import ConfigError
from qgen.data.integrity import DataIntegrityError, check_files, check_images
from qgen.data.registry import Split, register

if TYPE_CHECKING:
    import torch

CIFAR_AUGMENT = {"crop_padding": 4, "flip": True}
PREPROCESS = ("none", "gcn_zca")


def _torchvision_source(cls: str) -> str:
    import torchvision

    return f"torchvision.datasets.{cls} (torchvision {torchvision.__version__}), download=False"


# --- MNIST and Fashion-MNIST: IDX files ----------------------------------------------------------------


def _gunzipped_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _read_idx(dataset: str, path: Path, reader: Any) -> torch.Tensor:
    try:
        return reader(str(path))
    except (AssertionError, ValueError, RuntimeError, TypeError, KeyError, IndexError) as err:
        raise DataIntegrityError(
            f"{dataset}: {path} is not a valid IDX file ({type(err).__name__}: {err})"
        ) from None


def build_idx(dataset: str, cls_name: str, root: Path) -> tuple[Split, Split, dict[str, Any]]:
    """The official train/test splits of torchvision's ``MNIST``-format class ``cls_name`` under ``root``."""
    import torch
    from torchvision.datasets import mnist as tv_mnist

    cls = getattr(tv_mnist, cls_name)
    raw = root / cls_name / "raw"
    archives = dict(cls.resources)  # "train-images-idx3-ubyte.gz" -> md5
    names = [name.removesuffix(".gz") for name in archives]
    only_gz = [n for n in names if not (raw / n).is_file() and (raw / f"{n}.gz").is_file()]
    hint = f"; {', '.join(only_gz)} are there as .gz only: extract them (gunzip -k)" if only_gz else ""
    records = check_files(dataset, raw, [(n, None) for n in names], hint)
    present = [(a, md5) for a, md5 in archives.items() if (raw / a).is_file()]
    records += check_files(dataset, raw, present)
    by_name = {r["file"]: r for r in records}
    for archive, _ in present:
        raw_name = archive.removesuffix(".gz")
        if _gunzipped_sha256(raw / archive) != by_name[raw_name]["sha256"]:
            raise DataIntegrityError(
                f"{dataset}: {raw / raw_name} is not the content of {raw / archive} (whose md5 is the "
                "official one): the raw file is corrupt or another version; extract it again (gunzip -kf)"
            )
        by_name[raw_name]["md5_checked"] = "via " + archive
    splits = []
    for prefix in ("train", "t10k"):
        images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
        x = _read_idx(dataset, images, tv_mnist.read_image_file)
        y = _read_idx(dataset, labels, tv_mnist.read_label_file)
        if x.ndim != 3:
            raise DataIntegrityError(
                f"{dataset}: {images} holds an array of shape {tuple(x.shape)}, not images"
            )
        check_images(f"{dataset}: {images} and {labels.name}", len(y), (len(x), 1, *x.shape[1:]), (1, 28, 28))
        splits.append({"x": x[:, None].contiguous(), "y": y.to(torch.int64)})
    info = {"source": _torchvision_source(cls_name) + " IDX reader", "source_files": records}
    return splits[0], splits[1], info


MNIST_LAYOUT = "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (torchvision MNIST)"
FASHION_LAYOUT = "<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (torchvision)"


@register(
    "mnist",
    input_shape=(1, 28, 28),
    num_classes=10,
    description="MNIST (LeCun et al. 1998), 60,000/10,000 28x28 digits, official split",
    official_split=True,
    needs_root=True,
    layout=MNIST_LAYOUT,
)
def build_mnist(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    return build_idx("mnist", "MNIST", root)


@register(
    "fashion_mnist",
    input_shape=(1, 28, 28),
    num_classes=10,
    description="Fashion-MNIST (Xiao et al. 2017), 60,000/10,000 28x28 images, official split",
    official_split=True,
    needs_root=True,
    layout=FASHION_LAYOUT,
)
def build_fashion_mnist(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    return build_idx("fashion_mnist", "FashionMNIST", root)


# --- CIFAR-10 and CIFAR-100: python pickles ------------------------------------------------------------


def _check_preprocess(dataset: str, params: dict[str, Any]) -> None:
    if params["preprocess"] not in PREPROCESS:
        raise ConfigError(
            f"datasets.{dataset}.preprocess: {params['preprocess']!r} is not one of {', '.join(PREPROCESS)}"
        )


def build_cifar(dataset: str, cls_name: str, root: Path) -> tuple[Split, Split, dict[str, Any]]:
    """The official splits of torchvision's ``CIFAR10``/``CIFAR100`` under ``root`` (md5-checked)."""
    import torch
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    folder = root / cls.base_folder
    expected = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    records = check_files(dataset, folder, [(name, md5) for name, md5 in expected])
    splits, classes = [], None
    for train, listed in ((True, cls.train_list), (False, cls.test_list)):
        source = f"{dataset}: {folder}/{{{','.join(name for name, _ in listed)}}}"
        try:
            ds = cls(str(root), train=train, download=False)
        except (RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
            raise DataIntegrityError(
                f"{source}: torchvision could not read the batches ({type(err).__name__}: {err})"
            ) from None
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        check_images(source, len(ds.targets), tuple(x.shape), (3, 32, 32))
        splits.append({"x": x, "y": torch.as_tensor(ds.targets, dtype=torch.int64)})
        classes = list(ds.classes)
    info = {"source": _torchvision_source(cls_name), "source_files": records, "classes": classes}
    return splits[0], splits[1], info


CIFAR10_LAYOUT = "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (torchvision CIFAR10)"
CIFAR100_LAYOUT = "<root>/cifar-100-python/{train,test,meta} (torchvision CIFAR100)"


@register(
    "cifar10",
    input_shape=(3, 32, 32),
    num_classes=10,
    description="CIFAR-10 (Krizhevsky 2009), 50,000/10,000 32x32 colour images, official split",
    prep_keys={"preprocess": "none"},
    official_split=True,
    augment_default=CIFAR_AUGMENT,
    needs_root=True,
    layout=CIFAR10_LAYOUT,
)
def build_cifar10(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    _check_preprocess("cifar10", params)
    return build_cifar("cifar10", "CIFAR10", root)


@register(
    "cifar100",
    input_shape=(3, 32, 32),
    num_classes=100,
    description="CIFAR-100 (Krizhevsky 2009), 50,000/10,000 32x32 colour images, 100 fine labels",
    prep_keys={"preprocess": "none"},
    official_split=True,
    augment_default=CIFAR_AUGMENT,
    needs_root=True,
    layout=CIFAR100_LAYOUT,
)
def build_cifar100(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    _check_preprocess("cifar100", params)
    return build_cifar("cifar100", "CIFAR100", root)


# --- SVHN: MATLAB files ----------------------------------------------------------------------------------


@register(
    "svhn",
    input_shape=(3, 32, 32),
    num_classes=10,
    description="SVHN cropped digits (Netzer et al. 2011), 73,257/26,032 (+531,131 extra) 32x32 images",
    prep_keys={"extra": False},
    official_split=True,
    needs_root=True,
    layout="<root>/{train,test,extra}_32x32.mat (torchvision SVHN; extra only with extra: true)",
)
def build_svhn(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    import torch
    from torchvision.datasets import SVHN

    if not isinstance(params["extra"], bool):
        raise ConfigError(f"datasets.svhn.extra: expected true or false, got {params['extra']!r}")
    parts = ["train", "test"] + (["extra"] if params["extra"] else [])
    records = check_files("svhn", root, [(SVHN.split_list[p][1], SVHN.split_list[p][2]) for p in parts])
    read: dict[str, Split] = {}
    for part in parts:
        path = root / SVHN.split_list[part][1]
        try:
            ds = SVHN(str(root), split=part, download=False)
        except (RuntimeError, ValueError, KeyError, TypeError, NotImplementedError) as err:
            raise DataIntegrityError(
                f"svhn: {path} could not be read ({type(err).__name__}: {err})"
            ) from None
        labels = np.atleast_1d(ds.labels).astype(np.int64)
        check_images(f"svhn: {path}", len(labels), tuple(ds.data.shape), (3, 32, 32))
        read[part] = {"x": torch.from_numpy(np.ascontiguousarray(ds.data)), "y": torch.from_numpy(labels)}
    train = read["train"]
    if "extra" in read:
        train = {k: torch.cat([read["train"][k], read["extra"][k]]) for k in ("x", "y")}
    info = {
        "source": _torchvision_source("SVHN"),
        "source_files": records,
        "train_parts": [[p, len(read[p]["y"])] for p in parts if p != "test"],
    }
    return train, read["test"], info
