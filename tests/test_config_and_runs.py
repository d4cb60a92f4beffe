"""Config validation and the expansion of experiments into runs with stable ids."""

from __future__ import annotations

import copy

import pytest
import yaml

from qgen.config import ConfigError, load_config, validate_config
from qgen.experiments import all_runs, canonical_json, expand_config, is_run_id, run_id
from tests.conftest import REPO, make_spec


def base_config() -> dict:
    return yaml.safe_load((REPO / "config" / "default.yaml").read_text())


def test_default_config_has_the_seeded_core_and_a_100_run_grid() -> None:
    config = load_config(REPO / "config" / "default.yaml")
    grid = expand_config(config)["grid"]
    assert len(grid) >= 100
    axes = [k for k in config["experiments"]["grid"]["grid"] if k != "quant"]
    assert len(axes) >= 4
    runs = expand_config(config)["default"]
    assert len(runs) >= 24
    bits = {r.spec["quant"].get("weight_bits", "FP32") for r in runs}
    assert bits == {"FP32", 8, 4, 2}
    assert len({r.run_id for r in runs}) == len(runs)
    assert all(is_run_id(r.run_id) for r in runs)


def test_run_id_is_stable_across_machines_and_versions() -> None:
    """A frozen id: if this changes, every stored result loses its link to its run."""
    assert run_id(make_spec()) == "digits-mlp2x32-lsq_w4a4-26f53062"


def test_run_id_ignores_key_order_and_integral_float_spelling() -> None:
    a = make_spec(optim={"lr": 1, "weight_decay": 0})
    b = make_spec(optim={"weight_decay": 0.0, "lr": 1.0})
    assert run_id(a) == run_id(b)
    reordered = dict(reversed(list(a.items())))
    assert canonical_json(reordered) == canonical_json(a)


def test_run_id_changes_with_any_result_affecting_field() -> None:
    base = run_id(make_spec())
    changed = [
        make_spec(seed=1),
        make_spec(optim={"lr": 0.051}),
        make_spec(quant={"weight_bits": 3}),
        make_spec(model={"width": 33}),
        make_spec(data={"split_seed": 1}),
        make_spec(train={"max_epochs": 7}),
    ]
    ids = {run_id(s) for s in changed}
    assert base not in ids and len(ids) == len(changed)


def test_float_runs_ignore_bit_settings() -> None:
    a = make_spec(quant={"method": "float", "weight_bits": 2})
    b = make_spec(quant={"method": "float", "weight_bits": 8, "act_bits": None})
    assert a["quant"] == {"method": "float"}
    assert run_id(a) == run_id(b)
    assert "-fp32-" in run_id(a)


def test_runtime_settings_never_change_run_ids() -> None:
    config = base_config()
    ids = set(all_runs(validate_config(copy.deepcopy(config))))
    config["runtime"] = {"device": "cpu", "threads": 2, "compile": True, "checkpoint_every": 1}
    assert set(all_runs(validate_config(config))) == ids


def test_grid_is_the_cartesian_product_times_seeds() -> None:
    config = base_config()
    config["experiments"] = {
        "e": {
            "base": config["experiments"]["default"]["base"],
            "grid": {"optim.lr": [0.1, 0.01], "model.depth": [1, 2, 3]},
            "seeds": [0, 1],
        }
    }
    runs = expand_config(validate_config(config))["e"]
    assert len(runs) == 12
    assert {(r.spec["optim"]["lr"], r.spec["model"]["depth"], r.spec["seed"]) for r in runs} == {
        (lr, d, s) for lr in (0.1, 0.01) for d in (1, 2, 3) for s in (0, 1)
    }


def test_runs_shared_by_two_experiments_are_one_run() -> None:
    config = base_config()
    config["experiments"] = {
        "default": config["experiments"]["default"],
        "again": copy.deepcopy(config["experiments"]["default"]),
    }
    runs = all_runs(validate_config(config))
    assert len(runs) == 24
    assert all(r.experiments == ("default", "again") for r in runs.values())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["experiments"]["default"]["base"]["quant"].update(weight_bits=9),
            "weight_bits: 9 is greater",
        ),
        (lambda c: c["experiments"]["default"]["base"]["optim"].update(lr=-1), "lr: -1"),
        (
            lambda c: c["experiments"]["default"]["base"]["model"].update(name="resnet"),
            "model.name: 'resnet'",
        ),
        (lambda c: c["experiments"]["default"]["base"]["optim"].update(lrr=0.1), "'lrr' was unexpected"),
        (lambda c: c["runtime"].update(device="tpu"), "runtime.device: 'tpu'"),
        (lambda c: c.update(experiment={}), "'experiment' was unexpected"),
        (lambda c: c["experiments"]["default"].update(seeds=[]), "seeds: [] should be non-empty"),
    ],
)
def test_bad_configs_are_rejected_with_the_offending_key_named(mutate, message) -> None:
    config = base_config()
    mutate(config)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
        expand_config(config)
    assert message in str(err.value)


def test_config_file_that_is_not_a_mapping_is_rejected(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(path)


def test_yaml_is_loaded_safely(tmp_path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("experiments: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(yaml.YAMLError):
        load_config(path)
