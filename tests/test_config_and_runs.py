"""Config validation and the expansion of experiments into runs with stable ids."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from qgen.config import ConfigError, load_config, validate_config
from qgen.experiments import (
    Run,
    all_runs,
    bits_label,
    canonical_json,
    expand_config,
    is_run_id,
    run_id,
    runs_table,
)
from qgen.io import write_json
from qgen.models import LayerPrecision, precision_record
from qgen.models.precision import precision_label
from qgen.runs_table import ID_COLUMNS, PRECISION_COLUMNS, bits_order, collect, read_runs, write_csv
from tests.conftest import REPO, make_spec, train_command


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
            "grid": {"optim.lr": [0.1, 0.01], "model.depth": [2, 3, 4]},
            "seeds": [0, 1],
        }
    }
    runs = expand_config(validate_config(config))["e"]
    assert len(runs) == 12
    assert {(r.spec["optim"]["lr"], r.spec["model"]["depth"], r.spec["seed"]) for r in runs} == {
        (lr, d, s) for lr in (0.1, 0.01) for d in (2, 3, 4) for s in (0, 1)
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


# ---- a run is what its label says (issue 12, item 0) ---------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ({"quant": {"method": "float"}}, "FP32"),
        ({}, "4"),  # lsq w4a4, first and last layer at 8 bits: the lowest bits are the middle layer's
        ({"quant": {"weight_bits": 4, "act_bits": 8}}, "w4a8"),
        ({"quant": {"method": "uniform", "weight_bits": 8, "act_bits": None}}, "w8afp"),
        ({"quant": {"weight_bits": 2, "act_bits": 2, "first_layer": "same"}}, "2"),
        ({"quant": {"method": "binary", "stochastic": True}}, "1"),
        ({"model": {"name": "maxout"}, "quant": {"method": "half"}}, "16"),
        (
            {"model": {"name": "maxout"}, "quant": {"method": "fixed", "prop_bits": 10, "update_bits": 12}},
            "10",
        ),
    ],
)
def test_bit_label_comes_from_the_precision_plan(overrides, label) -> None:
    spec = make_spec(**overrides)
    assert bits_label(spec) == label
    assert f"\t{label}\t" in runs_table({run_id(spec): Run(run_id(spec), spec, ("e",))})


def test_bits_order_orders_every_label() -> None:
    labels = ["2", "w4a8", "w8afp", "FP32", "16", "4", "w8a4", "1", "8", "w4afp", "w2a4"]
    assert bits_order(pd.Series(labels)) == [
        "FP32", "16", "w8afp", "8", "w8a4", "w4afp", "w4a8", "4", "w2a4", "2", "1",
    ]  # fmt: skip
    assert bits_order(["8", "oddity", "FP32"]) == ["FP32", "8", "oddity"]  # unknown labels last, no crash


def test_a_run_whose_precision_no_layer_uses_is_refused_naming_the_grid_point() -> None:
    config = base_config()
    exp = copy.deepcopy(config["experiments"]["default"])
    exp["grid"] = {"model.depth": [2, 1]}
    config["experiments"] = {"shallow": exp}
    with pytest.raises(ConfigError) as err:
        expand_config(validate_config(config))
    message = str(err.value)
    assert "experiment 'shallow' at grid point {'model.depth': 1}" in message
    assert "no layer computes at the requested quant.weight_bits 4" in message
    assert "fc1:w8a8 fc2:w8a8 (first_layer: 8bit, last_layer: 8bit" in message
    exp["base"]["quant"]["first_layer"] = "same"  # one end at the requested bits: a real 4-bit layer
    assert len(expand_config(validate_config(config))["shallow"]) == 6


def test_default_grid_low_bit_runs_are_low_bit() -> None:
    """Every quantized run of the default grid has a layer at the bits its label names."""
    config = load_config(REPO / "config" / "default.yaml")
    runs = expand_config(config)["grid"]
    assert len(runs) == 128 and {r.spec["model"]["depth"] for r in runs} == {2, 3}
    by_label: dict[str, set[str]] = {}
    for run in runs:
        quant, record = run.spec["quant"], precision_record(run.spec)
        if quant["method"] == "float":
            assert record["label"] == "FP32"
            continue
        assert record["label"] == str(quant["weight_bits"]) == str(record["weight_bits"])
        by_label.setdefault(record["label"], set()).add(record["compact"])
    assert by_label["2"] == {"fc1:w8a8 fc2:w2a2 fc3:w8a8", "fc1:w8a8 fc2:w2a2 fc3:w2a2 fc4:w8a8"}
    assert by_label["8"] == {"fc1:w8a8 fc2:w8a8 fc3:w8a8", "fc1:w8a8 fc2:w8a8 fc3:w8a8 fc4:w8a8"}


def test_runs_csv_records_the_precision_of_every_layer(tmp_path) -> None:
    quantized = make_spec(quant={"weight_bits": 2, "act_bits": 4})
    floating = make_spec(quant={"method": "float"})
    paths = []
    for i, spec in enumerate((quantized, floating)):
        record = {"run_id": run_id(spec), "status": "completed", "spec": spec, "metrics": {"gap_acc": 0.1}}
        if i == 0:  # recorded by qgen evaluate; the float run's record predates it
            record["precision"] = precision_record(spec)
        paths.append(tmp_path / f"{i}.json")
        write_json(paths[-1], record)
    df = collect(paths, "e")
    write_csv(df, tmp_path / "runs.csv")
    back = read_runs(tmp_path / "runs.csv")
    assert list(back.columns[:10]) == [*ID_COLUMNS, *PRECISION_COLUMNS]
    assert list(back["bits"]) == ["w2a4", "FP32"]
    assert list(back["precision.layers"]) == ["fc1:w8a8 fc2:w2a4 fc3:w8a8", "fc1:fp32 fc2:fp32 fc3:fp32"]
    assert list(back["precision.weight_bits"]) == [2, 32]
    assert back["precision.act_bits"].iloc[0] == 4 and pd.isna(back["precision.act_bits"].iloc[1])
    assert (tmp_path / "runs.csv").read_text().splitlines()[2].split(",")[8] == ""  # empty: float


def test_metrics_json_records_what_each_layer_computes_at(digits_dir, tmp_path, monkeypatch) -> None:
    from qgen import cli

    monkeypatch.delenv("QGEN_MEASURES", raising=False)
    spec = make_spec(model={"width": 8}, quant={"weight_bits": 2, "act_bits": 8}, train={"max_epochs": 1})
    spec_json = json.dumps({"run_id": run_id(spec), "spec": spec})
    out = tmp_path / "run"
    argv = train_command(spec_json, str(digits_dir / "meta.json"), str(out), checkpoint_every=1)[3:]
    assert cli.main(argv) == 0
    precision = json.loads((out / "metrics.json").read_text())["precision"]
    assert precision == precision_record(spec)
    assert precision["compact"] == "fc1:w8a8 fc2:w2a8 fc3:w8a8" and precision["label"] == "w2a8"
    assert [layer["layer"] for layer in precision["layers"]] == ["fc1", "fc2", "fc3"]


@given(
    st.lists(st.tuples(st.integers(1, 16), st.one_of(st.none(), st.integers(2, 16))), min_size=1, max_size=12)
)
def test_bits_order_is_weight_bits_then_activation_bits_high_to_low(pairs) -> None:
    """Labels made from any plans sort by lowest weight bits, then lowest activation bits (float first)."""
    bits_of = {
        precision_label("lsq", [LayerPrecision("fc1", "middle", w, a)]): (w, 32 if a is None else a)
        for w, a in pairs
    }
    order = [bits_of[label] for label in bits_order(list(bits_of))]
    assert order == sorted(order, reverse=True)


def _scoped_config(main_job: dict, scope: str | None = None) -> dict:
    exp = {
        "base": {
            "data": {"name": "digits"},
            "model": {"name": "mlp", "depth": 2, "width": 16},
            "quant": {"method": "float"},
            "optim": {"name": "sgd", "lr": 0.05, "batch_size": 64},
            "train": {"max_epochs": 2, "target_ce": None},
        },
        "grid": {"model.width": [8, 16, 32], "quant": [{"method": "float"}, {"method": "lsq"}]},
        "variants": [{}, {"optim": {"lr": 0.2}}],
        "seeds": [0, 1, 2],
        "main_job": main_job,
    }
    config = {"experiments": {"e": exp}}
    if scope:
        config["scope"] = scope
    return validate_config(config)


def test_main_job_part_is_the_listed_subset_with_the_full_experiments_run_ids() -> None:
    """scope main (the default) builds only main_job's grid values, seeds and variants; scope full builds all,
    and every main-job run is the same run (id and spec) of the full experiment."""
    part = {"grid": {"model.width": [8, 32]}, "seeds": [0, 2], "variants": [1]}
    main = {r.run_id: r for r in expand_config(_scoped_config(part))["e"]}
    full = {r.run_id: r for r in expand_config(_scoped_config(part, "full"))["e"]}
    assert len(full) == 3 * 2 * 2 * 3 and len(main) == 2 * 2 * 1 * 2
    assert set(main) <= set(full)
    for rid, run in main.items():
        assert canonical_json(run.spec) == canonical_json(full[rid].spec)
        assert run.spec["model"]["width"] in (8, 32) and run.spec["seed"] in (0, 2)
        assert run.spec["optim"]["lr"] == 0.2
    # a mapping-valued axis compares by value
    quant = expand_config(_scoped_config({"grid": {"quant": [{"method": "lsq"}]}}))["e"]
    assert {r.spec["quant"]["method"] for r in quant} == {"lsq"} and len(quant) == 3 * 2 * 3


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"grid": {"model.depth": [2]}}, "not a grid axis"),
        ({"grid": {"model.width": [8, 64]}}, r"\[64\] not among"),
        ({"seeds": [0, 5]}, r"\[5\] not among the seeds"),
        ({"variants": [2]}, "2 variant"),
    ],
)
def test_main_job_outside_the_experiment_is_an_error(part: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"experiments\.e\.main_job.*{message}"):
        expand_config(_scoped_config(part))


def test_scope_and_main_job_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="scope"):
        _scoped_config({"seeds": [0]}, "everything")
    with pytest.raises(ConfigError, match="main_job"):
        _scoped_config({"epochs": [1]})


def test_default_config_main_job_is_a_part_of_the_full_default() -> None:
    config = load_config(REPO / "config" / "default.yaml")
    main, full = all_runs(config), all_runs({**config, "scope": "full"})
    assert config["scope"] == "main" and set(main) <= set(full)
    for name, exp in config["experiments"].items():
        ids = {rid for rid, r in main.items() if name in r.experiments}
        if "main_job" not in exp:
            assert ids == {rid for rid, r in full.items() if name in r.experiments}
