"""Run specs of the families quantized by module replacement: keys, defaults, run ids, pretrained weights."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys

import pytest
import torch

from qgen.config import ConfigError, validate_config
from qgen.experiments import all_runs, is_run_id
from tests.test_config_checks import error_of, one_experiment

SHA = "a" * 64


def family_experiment(model: dict, quant: dict | None = None, **config_fields) -> dict:
    config = one_experiment()
    base = config["experiments"]["e"]["base"]
    base["model"] = model
    if quant is not None:
        base["quant"] = quant
    config.update(config_fields)
    return config


def runs_of(config: dict) -> list:
    return list(all_runs(validate_config(config)).values())


@pytest.mark.parametrize(
    ("model", "arch"),
    [
        ({"name": "resnet_cifar", "depth": 20}, "resnet20"),
        ({"name": "resnet_cifar", "depth": 56, "preact": True}, "preresnet56"),
        ({"name": "resnet_cifar", "depth": 20, "width": 32}, "resnet20x32"),
        ({"name": "resnet18"}, "resnet18"),
        ({"name": "mobilenet_v2", "width_mult": 0.5}, "mobilenetv2"),
        ({"name": "vit", "depth": 6}, "vit6x192"),
        ({"name": "deit_tiny"}, "deittiny"),
        ({"name": "vit_small"}, "vitsmall"),
    ],
)
def test_each_family_expands_to_valid_run_ids_with_its_defaults_written_out(model, arch) -> None:
    runs = runs_of(family_experiment(model))
    assert runs and all(is_run_id(r.run_id) and f"-{arch}-" in r.run_id for r in runs)
    spec = runs[0].spec["model"]
    if model["name"] == "resnet_cifar":
        assert {"width", "preact", "shortcut"} <= set(spec) and "dropout" not in spec
    if model["name"] == "resnet18":
        assert spec == {"name": "resnet18", "stem": "imagenet"}  # no depth/width/dropout: it has none
    if model["name"] == "vit":
        assert spec["heads"] == 3 and spec["patch_size"] == 4 and spec["width"] == 192
    spelled = dict(spec)  # a spec that spells its defaults out has the same id
    assert runs_of(family_experiment(spelled))[0].run_id == runs[0].run_id


@pytest.mark.parametrize(
    ("model", "quant", "message"),
    [
        ({"name": "resnet_cifar", "depth": 21}, None, "model.depth = 6n+2"),
        ({"name": "resnet_cifar"}, None, "model.depth = 6n+2"),
        (
            {"name": "resnet18", "depth": 18},
            None,
            "model.depth (set in base) does not apply to model.name resnet18",
        ),
        ({"name": "resnet18", "width_mult": 0.5}, None, "model.width_mult (set in base) does not apply"),
        ({"name": "vit", "width": 100, "heads": 3}, None, "width 100 is not divisible by heads 3"),
        (
            {"name": "resnet18"},
            {"method": "lsq", "weight_bits": 4, "act_bits": 4, "attention": True},
            "quant.attention quantizes a ViT's attention; model resnet18 has none",
        ),
        (
            {"name": "resnet18", "pretrained": "r18"},
            None,
            "'r18' is not an entry of the config's weights (none)",
        ),
    ],
)
def test_keys_that_do_not_fit_the_family_are_refused(model, quant, message) -> None:
    assert message in error_of(family_experiment(model, quant))


def test_the_run_spec_carries_the_weights_sha256_and_exclude_but_never_the_path() -> None:
    weights = {"r18": {"path": "/nowhere/r18.pth", "sha256": SHA, "exclude": ["fc.*"]}}
    runs = runs_of(family_experiment({"name": "resnet18", "pretrained": "r18"}, weights=weights))
    assert runs[0].spec["model"]["pretrained"] == {"name": "r18", "sha256": SHA, "exclude": ["fc.*"]}
    moved = copy.deepcopy(weights)
    moved["r18"]["path"] = "/elsewhere/r18.pth"
    assert runs_of(family_experiment({"name": "resnet18", "pretrained": "r18"}, weights=moved))[0].run_id == (
        runs[0].run_id
    )
    other = copy.deepcopy(weights)
    other["r18"]["sha256"] = "b" * 64
    assert runs_of(family_experiment({"name": "resnet18", "pretrained": "r18"}, weights=other))[0].run_id != (
        runs[0].run_id
    )
    assert "/nowhere" not in json.dumps(runs[0].spec)


def test_a_weights_entry_without_its_sha256_is_refused() -> None:
    config = family_experiment({"name": "resnet18"}, weights={"r18": {"path": "/x.pth"}})
    with pytest.raises(ConfigError, match="sha256"):
        validate_config(config)


def test_training_from_pretrained_weights_starts_from_them_and_lsq_steps_from_the_loaded_weights(
    tmp_path,
) -> None:
    """QAT fine-tuning: the loaded weights are w0, and LSQ's s0 = 2<|w|>/sqrt(Q_P) is computed from them."""
    from qgen.models import build_model
    from qgen.quant import init_quantizers

    float_spec = {"model": {"name": "resnet_cifar", "depth": 8, "width": 4}, "quant": {"method": "float"}}
    torch.manual_seed(1)
    source = build_model(float_spec, (3, 8, 8), 10)
    path = tmp_path / "fp.pth"
    state = {k: v for k, v in source.state_dict().items()}
    torch.save(state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "8bit", "last_layer": "8bit"}
    spec = {"model": {**float_spec["model"], "pretrained": {"name": "fp", "sha256": sha}}, "quant": quant}
    torch.manual_seed(2)
    model = build_model(spec, (3, 8, 8), 10, pretrained=path)
    layer = model.layer1[0].conv1 if hasattr(model, "layer1") else None
    layer = layer or next(m for n, m in model.named_modules() if n.endswith("conv1") and n != "conv1")
    name = next(n for n, m in model.named_modules() if m is layer)
    assert torch.equal(layer.weight, state[f"{name}.weight"])
    init_quantizers(model, torch.randn(4, 3, 8, 8))
    expected = 2 * state[f"{name}.weight"].abs().mean() / (2**3 - 1) ** 0.5
    torch.testing.assert_close(layer.weight_quant.step_for(layer.weight).reshape(()), expected)
    assert model.qgen_quantization["pretrained"]["sha256"] == sha
    with pytest.raises(ValueError, match="sha256"):
        build_model(
            {**spec, "model": {**spec["model"], "pretrained": {"name": "fp", "sha256": SHA}}},
            (3, 8, 8),
            10,
            pretrained=path,
        )


def test_train_cli_names_the_ways_to_give_a_missing_weights_file(tmp_path) -> None:
    spec = {"model": {"name": "resnet18", "pretrained": {"name": "r18", "sha256": SHA}}}
    code = f"import sys; from qgen.runner import pretrained_file; pretrained_file({spec!r}, None)"
    env = {"PATH": "", "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "weights.r18.path" in out.stderr and "$QGEN_WEIGHTS/r18.pth" in out.stderr


def test_qgen_paper_configs_have_the_published_scale_and_every_family() -> None:
    from collections import Counter

    from qgen.config import load_config
    from qgen.experiments import bits_label
    from tests.conftest import REPO

    cifar = all_runs(load_config(REPO / "config/paper/qgen_cifar.yaml"))
    assert len(cifar) >= 2000  # "over 2000 models"
    models = Counter(r.spec["model"]["name"] for r in cifar.values())
    assert set(models) == {"nin", "resnet_cifar", "vit"} and models["nin"] == 2 * 3 * 2 * 3 * 2 * 3 * 3 * 4
    assert {bits_label(r.spec) for r in cifar.values()} == {"FP32", "8", "4", "2"}
    assert {r.spec["data"]["name"] for r in cifar.values()} == {"cifar10", "cifar100"}
    imagenet = all_runs(load_config(REPO / "config/paper/qgen_imagenet.yaml"))
    names = {r.spec["model"]["name"] for r in imagenet.values()}
    assert names == {"resnet18", "resnet50", "deit_tiny"}
    assert all(r.spec["model"]["pretrained"]["sha256"] for r in imagenet.values())
    assert {bits_label(r.spec) for r in imagenet.values()} == {"FP32", "8", "4", "2"}


def test_the_slurm_profile_gives_every_imagenet_run_its_own_job(tmp_path) -> None:
    from tests.conftest import REPO, dry_run

    out = dry_run(tmp_path, REPO / "config/paper/qgen_imagenet.yaml", profile="slurm")
    assert out.count("rule shard:") == 24 and "Group job" not in out  # shard_runs: 1, a run is days
