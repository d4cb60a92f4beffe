"""The CIFAR-10 and SVHN experiments of config/paper/binaryconnect.yaml on tiny files in the true formats.

The PI-MNIST experiments of both paper configs go through the whole workflow in
tests/test_papers_workflow.py; CIFAR-10 and SVHN are md5-checked against torchvision's lists, which tiny
files cannot match, so here the test tells torchvision their md5 (as tests/test_datasets.py does) and runs
each paper spec, shrunk, through the same steps in process: prepare (GCN + ZCA fitted for CIFAR-10, train +
extra for SVHN), the run's splits, training with best-validation selection, evaluation.
"""

from __future__ import annotations

import copy

import pytest
import torch

from qgen import runtime
from qgen.config import load_config
from qgen.data import load_prepared, prepare
from qgen.data.run_data import RUN_KEYS, open_run_data
from qgen.experiments import expand_config, normalize_spec
from qgen.measures.gap import generalization_metrics
from qgen.train import train_run
from tests.conftest import REPO
from tests.test_datasets import tell_cifar_md5, tell_svhn_md5, write_cifar10, write_svhn

CPU = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 100}


def paper_spec(experiment: str, quant_method: str) -> dict:
    """The first run of ``experiment`` with ``quant_method``, shrunk: 8 filters, 2 epochs, 12 validation
    images; everything else (data settings, selection, loss, schedule) as the paper config has it."""
    runs = expand_config(load_config(REPO / "config/paper/binaryconnect.yaml"))[experiment]
    spec = copy.deepcopy(next(r.spec for r in runs if r.spec["quant"]["method"] == quant_method))
    spec["model"].update(width=8, fc_width=16)
    spec["data"]["val_size"] = 12
    spec["optim"]["batch_size"] = 10
    spec["train"]["max_epochs"] = 2
    return normalize_spec(spec)


def run(spec: dict, prepared_dir, tmp_path):
    expected = {k: v for k, v in spec["data"].items() if k != "name" and k not in RUN_KEYS}
    data = open_run_data(load_prepared(prepared_dir, expected), spec["data"], "cpu", prepared_dir)
    model, _, result = train_run(spec, data, tmp_path / "run", CPU, runtime.configure(CPU), progress=False)
    return data, result, generalization_metrics(model, data)


def test_binaryconnect_cifar10_paper_spec_on_tiny_cifar_files(tmp_path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path / "files", per_batch=20)
    tell_cifar_md5(monkeypatch, CIFAR10, tmp_path / "files" / "cifar-10-batches-py")
    spec = paper_spec("bc_cifar10", "binary")
    assert spec["data"]["preprocess"] == "gcn_zca" and spec["data"]["augment"] == "none"  # the paper's
    assert spec["train"]["select"] == "best_val"
    prepare("cifar10", {"root": str(tmp_path / "files"), "preprocess": "gcn_zca"}, tmp_path / "prep")
    assert (tmp_path / "prep" / "whiten.pt").exists()
    data, result, metrics = run(spec, tmp_path / "prep", tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (88, 12, 20)
    x, _ = next(iter(data.train.batches(88)))
    assert x.dtype == torch.float32 and x.shape == (88, 3, 32, 32)  # whitened on the way in
    assert result.status in ("completed", "degenerate") and result.selected_epoch in (1, 2)
    assert {"val_acc", "test_acc", "gap_acc"} <= set(metrics)


def test_binaryconnect_svhn_paper_spec_trains_on_train_plus_extra(tmp_path, monkeypatch) -> None:
    for part, n in (("train", 30), ("test", 10), ("extra", 20)):
        write_svhn(tmp_path / "files", part, n)
    tell_svhn_md5(monkeypatch, tmp_path / "files")
    spec = paper_spec("bc_svhn", "binary")
    assert spec["data"]["extra"] is True and "augment" not in spec["data"]
    prepare("svhn", {"root": str(tmp_path / "files"), "extra": True}, tmp_path / "prep")
    data, result, metrics = run(spec, tmp_path / "prep", tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (38, 12, 10)  # 30 + 20 − 12 validation
    assert data.m == 38 and result.epochs == 2
    assert metrics["test_error"] == pytest.approx(1 - metrics["test_acc"])


@pytest.mark.parametrize(
    ("model", "augment", "expected"),
    [
        ({"name": "vgg", "depth": 2, "width": 8}, None, {"crop_padding": 4, "flip": True}),  # CIFAR's default
        ({"name": "vgg", "depth": 2, "width": 8}, "none", "none"),  # off, against the default: written out
        ({"name": "vgg", "depth": 2, "width": 8}, {"crop_padding": 0, "flip": False}, "none"),
        ({"name": "vgg", "depth": 2, "width": 8}, {"flip": True}, {"crop_padding": 0, "flip": True}),
        ({"name": "mlp", "depth": 2, "width": 8}, None, None),  # permutation-invariant: none, absent
        ({"name": "mlp", "depth": 2, "width": 8}, "none", None),
    ],
)
def test_augmentation_resolves_once_and_normalizing_again_changes_nothing(model, augment, expected) -> None:
    from tests.conftest import make_spec

    data = {"name": "cifar10", "preprocess": "none", **({"augment": augment} if augment else {})}
    spec = make_spec(data=data, model=model)
    data_spec = {k: v for k, v in spec["data"].items() if k != "test_fraction" and k != "split_seed"}
    assert data_spec.get("augment") == expected
    assert normalize_spec(copy.deepcopy(spec)) == spec
