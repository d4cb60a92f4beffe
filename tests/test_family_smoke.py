"""Every model family, trained and measured on tiny files in the true CIFAR-10 and ImageNet formats.

The runs are the paper configs' (config/paper/qgen_cifar.yaml, qgen_imagenet.yaml) at LSQ W4A4, shrunk to
one epoch on a few images with minimal measure settings: the run's splits, training (for the ImageNet
families from a pretrained-weights file named in the config, checked by its sha256), metrics.json with the
quantization record, and every measure of measures.json with the BatchNorm folding record. ImageNet
images are read at 32 px (datasets.imagenet.image_size).
"""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import pytest
import torch

from qgen import runtime
from qgen.config import load_config, measures_schema, validate
from qgen.data import load_prepared, prepare
from qgen.data.run_data import RUN_KEYS, open_run_data
from qgen.experiments import expand_config, normalize_spec
from qgen.io import read_json
from qgen.measures.run import measure_run
from qgen.models import build_model
from qgen.train import save_model, train_run
from tests.conftest import REPO, TINY_MEASURES
from tests.test_datasets import tell_cifar_md5, write_cifar10, write_image_folder

CPU = {
    "device": "cpu",
    "threads": 1,
    "compile": False,
    "checkpoint_every": 100,
    "eval_batch_size": 64,
    "loader_workers": 0,
}
LSQ4 = {"method": "lsq", "weight_bits": 4, "act_bits": 4}
#: family -> (paper config, experiment, model overrides that shrink it)
CIFAR_FAMILIES = {
    "resnet20": ("qgen_cifar", "qgen_resnet", {}),
    "preresnet20": ("qgen_cifar", "qgen_preresnet", {}),
    "vit": ("qgen_cifar", "qgen_vit", {"depth": 2, "width": 48}),
    "mobilenet_v2": (
        "qgen_cifar",
        "qgen_resnet",
        {"name": "mobilenet_v2", "stem": "cifar", "width_mult": 0.25},
    ),
}
IMAGENET_FAMILIES = {
    "resnet18": ("qgen_imagenet", "qgen_imagenet_resnet", "resnet18"),
    "resnet50": ("qgen_imagenet", "qgen_imagenet_resnet", "resnet50"),
    "deit_tiny": ("qgen_imagenet", "qgen_imagenet_deit", "deit_tiny"),
    "vit_small": ("qgen_imagenet", "qgen_imagenet_deit", "vit_small"),
}


def paper_run(config: str, experiment: str, pick) -> dict:
    runs = expand_config(load_config(REPO / "config" / "paper" / f"{config}.yaml"))[experiment]
    return copy.deepcopy(next(r.spec for r in runs if pick(r.spec)))


def shrink(spec: dict, epochs: int = 1) -> dict:
    spec["optim"].update(batch_size=16)
    spec["optim"].pop("warmup_epochs", None)
    spec["train"].update(max_epochs=epochs, target_ce=None)
    return normalize_spec(spec)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> Path:
    from torchvision.datasets import CIFAR10

    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(root / "files", per_batch=12)
    with pytest.MonkeyPatch.context() as mp:
        tell_cifar_md5(mp, CIFAR10, root / "files" / "cifar-10-batches-py")
        prepare("cifar10", {"root": str(root / "files")}, root / "prep")
    return root / "prep"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(root / "files", ["n01", "n02", "n03"], per_class=(8, 4))
    prepare("imagenet", {"root": str(root / "files"), "image_size": 32}, root / "prep")
    return root / "prep"


def train_and_measure(spec: dict, prepared_dir: Path, out: Path, pretrained: Path | None = None) -> dict:
    """Train, write model.pt and metrics.json as `qgen train` does, then measure; returns both records."""
    from qgen.runner import evaluate_model_file

    expected = {k: v for k, v in spec["data"].items() if k != "name" and k not in RUN_KEYS}
    data = open_run_data(load_prepared(prepared_dir, expected), spec["data"], "cpu", prepared_dir, workers=0)
    device = runtime.configure(CPU)
    model, init_state, result = train_run(spec, data, out, CPU, device, progress=False, pretrained=pretrained)
    save_model(out / "model.pt", model, init_state, spec, "smoke", result, {})
    evaluate_model_file(
        str(out / "model.pt"), str(prepared_dir / "meta.json"), str(out / "metrics.json"), CPU, device, data
    )
    settings = validate({**copy.deepcopy(TINY_MEASURES), "batch_size": 16}, measures_schema(), where="tiny")
    payload = torch.load(out / "model.pt", weights_only=True)
    return {
        "metrics": read_json(out / "metrics.json"),
        "measures": measure_run(payload, data, settings, device),
    }


def check(record: dict, spec: dict) -> None:
    metrics, measures = record["metrics"], record["measures"]
    assert math.isfinite(metrics["metrics"]["train_ce"]) and 0 <= metrics["metrics"]["test_acc"] <= 1
    layers = metrics["quantization"]["layers"]
    assert layers[0]["position"] == "first" and layers[-1]["position"] == "last"
    assert (layers[0]["weight_bits"], layers[-1]["weight_bits"]) == (8, 8)
    assert {(r["weight_bits"], r["act_bits"]) for r in layers if r["position"] == "middle"} == {(4, 4)}
    values = measures["measures"]
    for name in ("pacbayes.flatness", "sharpness.flatness", "hessian.trace", "noise.weight.var_ratio"):
        assert name in values, sorted(values)[:20]
    assert values["bn.unfolded"] == 0 or spec["model"].get("preact")  # PreResNet: BN after the residual sum
    assert measures["batchnorm"]["folded"] == values["bn.folded"]


@pytest.mark.parametrize("family", list(CIFAR_FAMILIES))
def test_cifar_family_trains_and_measures_on_tiny_cifar10_files(family, cifar10, tmp_path) -> None:
    config, experiment, overrides = CIFAR_FAMILIES[family]
    spec = paper_run(
        config, experiment, lambda s: s["quant"].get("weight_bits") == 4 and s["data"]["name"] == "cifar10"
    )
    spec["model"].update(overrides)
    if overrides.get("name") == "mobilenet_v2":
        spec["model"] = {"name": "mobilenet_v2", "stem": "cifar", "width_mult": 0.25}
    spec = shrink(spec)
    check(train_and_measure(spec, cifar10, tmp_path / "run"), spec)


@pytest.mark.parametrize("family", list(IMAGENET_FAMILIES))
def test_imagenet_family_fine_tunes_from_a_weights_file_on_tiny_imagenet_folders(
    family, imagenet, tmp_path
) -> None:
    config, experiment, name = IMAGENET_FAMILIES[family]
    spec = paper_run(config, experiment, lambda s: s["quant"].get("weight_bits") == 4)
    spec["data"]["image_size"] = 32
    spec["model"] = {**spec["model"], "name": name}
    if name == "vit_small":  # no paper config: DeiT's recipe, no pretrained weights
        spec["model"].pop("pretrained")
    spec["quant"] = {**spec["quant"], "attention": name in ("deit_tiny", "vit_small")}
    weights = None
    if (
        "pretrained" in spec["model"]
    ):  # a full-precision model of the same architecture, saved as a user would
        float_spec = {
            "model": {k: v for k, v in spec["model"].items() if k != "pretrained"},
            "quant": {"method": "float"},
        }
        torch.manual_seed(7)
        source = build_model(float_spec, (3, 32, 32), 3)
        weights = tmp_path / f"{name}.pth"
        torch.save({"model": source.state_dict()}, weights)  # the DeiT release's container
        spec["model"]["pretrained"] = {
            "name": name,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        }
    spec = shrink(spec)
    record = train_and_measure(spec, imagenet, tmp_path / "run", weights)
    check(record, spec)
    if weights is not None:
        init = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["init_state"]
        loaded = torch.load(weights, weights_only=True)["model"]
        first = record["metrics"]["quantization"]["layers"][1]["module"]
        assert torch.equal(init[f"{first}.weight"], loaded[f"{first}.weight"])  # w0 = the pretrained weights
