"""The digits dataset: a fixed stratified split, checksums recorded and verified on load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from qgen.data import load_prepared, prepare
from qgen.data.prepared import DataIntegrityError
from qgen.data.registry import UnknownDatasetError
from qgen.io import sha256_file
from tests.conftest import DIGITS_PARAMS


def test_digits_split_sizes_classes_and_normalization(digits_prepared) -> None:
    digits = digits_prepared
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    n_train, n_test = len(digits.train["y"]), len(digits.test["y"])
    assert n_train + n_test == 1797
    assert n_test == pytest.approx(0.25 * 1797, abs=1)
    counts = digits.meta["class_counts"]
    # stratified: every class keeps its share in both splits (within one example)
    for c in range(10):
        total = counts["train"][c] + counts["test"][c]
        assert abs(counts["test"][c] - 0.25 * total) <= 1
    assert torch.bincount(digits.train["y"]).tolist() == counts["train"]
    x = digits.train["x"]
    assert x.dtype == torch.uint8 and int(x.max()) == 16  # raw pixels 0..16, normalized per batch


def test_digits_batches_are_standardized_by_the_training_statistics(digits) -> None:
    (x, y), *rest = list(digits.train.batches(len(digits.train)))
    assert not rest and x.dtype == torch.float32 and len(y) == len(digits.train)
    assert abs(x.mean().item()) < 1e-5 and x.std().item() == pytest.approx(1, abs=1e-3)
    (xt, _), *_ = list(digits.test.batches(10))
    assert abs(xt.mean().item()) < 0.5  # the test split is normalized by the training statistics


def test_meta_records_sha256_of_every_file(digits_dir) -> None:
    meta = json.loads((digits_dir / "meta.json").read_text())
    for name in ("train.pt", "test.pt"):
        assert meta["files"][name] == sha256_file(digits_dir / name)
    assert meta["params"] == DIGITS_PARAMS
    assert len(meta["checksum"]) == 64


def test_preparation_is_byte_for_byte_reproducible(tmp_path, digits_dir) -> None:
    prepare("digits", dict(DIGITS_PARAMS), tmp_path)
    for name in ("train.pt", "test.pt", "meta.json"):
        assert (tmp_path / name).read_bytes() == (digits_dir / name).read_bytes()


def test_a_different_split_seed_gives_a_different_split(tmp_path, digits) -> None:
    prepare("digits", {**DIGITS_PARAMS, "split_seed": 1}, tmp_path)
    other = load_prepared(tmp_path)
    assert other.checksum != digits.checksum
    assert len(other.train["y"]) == len(digits.train)


def test_tampered_file_is_detected(tmp_path, digits_dir) -> None:
    copy = tmp_path / "digits"
    shutil.copytree(digits_dir, copy)
    data = torch.load(copy / "train.pt", weights_only=True)
    data["y"][0] = (data["y"][0] + 1) % 10
    torch.save(data, copy / "train.pt")
    with pytest.raises(DataIntegrityError, match="does not match"):
        load_prepared(copy)


def test_data_prepared_with_other_settings_is_refused(digits_dir) -> None:
    with pytest.raises(DataIntegrityError, match="split_seed"):
        load_prepared(digits_dir, {"split_seed": 3, "test_fraction": 0.25})


def test_missing_meta_says_what_to_do(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare the dataset"):
        load_prepared(tmp_path)


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'cifar99'"):
        prepare("cifar99", {}, "/nonexistent")


def test_file_dataset_without_a_root_says_how_to_set_one(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QGEN_DATA"}
    proc = subprocess.run(
        [sys.executable, "-m", "qgen", "prepare-data", "cifar10", "--meta", str(tmp_path / "meta.json")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "datasets.cifar10.root is not set" in proc.stderr and "$QGEN_DATA" in proc.stderr
    assert not (tmp_path / "meta.json").exists()
