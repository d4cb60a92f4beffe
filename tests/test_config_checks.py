"""Bad configs get a clear error naming the key, never a silent change (issue 12, item 7)."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from qgen.config import ConfigError, measures_schema, validate, validate_config
from qgen.experiments import all_runs, expand_config, is_run_id, normalize_spec, run_id
from tests.conftest import REPO, TINY_MEASURES, make_spec


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "default.yaml").read_text())


def one_experiment(base_overrides: dict | None = None, **fields) -> dict:
    """The default config with one experiment ``e``: the `default` experiment's base (sections updated
    with ``base_overrides``), no grid, and the given experiment fields."""
    config = default_config()
    exp = copy.deepcopy(config["experiments"]["default"])
    for section, values in (base_overrides or {}).items():
        exp["base"][section] = {**exp["base"].get(section, {}), **values}
    exp["grid"] = {}
    exp.update(fields)
    config["experiments"] = {"e": exp}
    return config


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as err:
        all_runs(validate_config(config))
    return str(err.value)


@pytest.mark.parametrize("method", ["lsq", "uniform"])
def test_null_weight_bits_of_a_weight_quantizer_is_refused(method) -> None:
    message = error_of(one_experiment({"quant": {"method": method, "weight_bits": None}}))
    assert f"quant.weight_bits: null is not a bit width for quant.method {method}" in message
    assert "experiment 'e' at grid point {}" in message
    # float activations stay allowed
    runs = all_runs(validate_config(one_experiment({"quant": {"method": method, "act_bits": None}})))
    assert all(f"{method}_w4afp" in rid and is_run_id(rid) for rid in runs)


@pytest.mark.parametrize(
    ("measures", "message"),
    [
        (
            {"pacbayes": {"lower": 3.0, "upper": 2.0}},
            "measures.pacbayes.lower: 3.0 is not below pacbayes.upper (2.0): the PAC-Bayes sigma' bisection",
        ),
        ({"pacbayes": {"lower": 0.5, "upper": 0.5}}, "measures.pacbayes.lower: 0.5 is not below"),
        (
            {"worst_case": {"lower": 0.5, "upper": 0.1}},
            "measures.worst_case.lower: 0.5 is not below worst_case.upper (0.1): the worst-case alpha'",
        ),
        (
            {"hessian": {"min_probes": 50, "max_probes": 20}},
            "measures.hessian.min_probes: 50 is more than hessian.max_probes (20)",
        ),
        (
            {"hessian": {"max_probes": 5}},
            "measures.hessian.min_probes: 10 is more than hessian.max_probes (5)",
        ),
    ],
)
def test_measure_settings_that_contradict_each_other_are_refused(measures, message) -> None:
    config = default_config()
    config["measures"] = measures
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config)
    # the measure step validates its settings on their own too (qgen measure --settings)
    with pytest.raises(ConfigError, match=re.escape(message.removeprefix("measures."))):
        validate(copy.deepcopy(measures), measures_schema(), where="measure settings")


def test_consistent_measure_settings_pass() -> None:
    config = default_config()
    config["measures"] = {
        "pacbayes": {"lower": 0.1, "upper": 0.2},
        "hessian": {"min_probes": 5, "max_probes": 5},
    }
    validate_config(config)


@pytest.mark.parametrize(
    ("fields", "place"),
    [
        ({"grid": {"seed": [0, 1]}}, "experiments.e.grid.seed"),
        ({"variants": [{}, {"seed": 3}]}, "experiments.e.variants[1].seed"),
    ],
)
def test_seed_is_set_by_seeds_only(fields, place) -> None:
    message = error_of(one_experiment(**fields))
    assert f"{place}: the seed of a run is set by the experiment's `seeds` list" in message


def test_seed_in_the_base_is_refused() -> None:
    config = one_experiment()
    config["experiments"]["e"]["base"]["seed"] = 7
    assert "experiments.e.base.seed: the seed of a run is set by" in error_of(config)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        (
            {"model": {"name": "nin", "bn_momentum": 0.15}},
            "model.bn_momentum (set in base) does not apply to model.name nin; "
            "it applies to model.name mlp, vgg",
        ),
        (
            {"quant": {"stochastic": True}},
            "quant.stochastic (set in base) does not apply to quant.method lsq; "
            "it applies to quant.method binary",
        ),
        (
            {"model": {"name": "vgg", "dropout": 0.5}},
            "model.dropout (set in base) does not apply to model.name vgg",
        ),
    ],
)
def test_keys_that_do_not_apply_to_the_chosen_model_or_quantizer_are_refused(base, message) -> None:
    assert message in error_of(one_experiment(base))


def test_a_grid_value_with_a_key_its_method_does_not_have_is_refused() -> None:
    config = one_experiment(grid={"quant": [{"method": "float"}, {"method": "lsq", "stochastic": False}]})
    message = error_of(config)
    assert "grid point {'quant': {'method': 'lsq', 'stochastic': False}}" in message
    assert "quant.stochastic (set in grid.quant) does not apply to quant.method lsq" in message


def test_keys_shared_with_the_runs_of_other_methods_still_work() -> None:
    """Keys in the base that serve other variants or grid values are dropped where they have no effect."""
    config = default_config()
    for name in ("default", "binaryconnect", "lowprec"):  # e.g. lowprec's float variant and initial_range
        assert expand_config(validate_config(copy.deepcopy(config)))[name]
    mixed = one_experiment(
        {"quant": {"method": "lsq", "stochastic": True}},
        grid={
            "quant": [{"method": "lsq"}, {"method": "binary", "first_layer": "same", "last_layer": "same"}],
            "model.name": ["mlp", "nin"],
        },
    )
    mixed["experiments"]["e"]["base"]["model"]["bn_momentum"] = 0.15
    runs = expand_config(validate_config(mixed))["e"]
    lsq_nin = [
        r.spec for r in runs if r.spec["quant"]["method"] == "lsq" and r.spec["model"]["name"] == "nin"
    ]
    assert "stochastic" not in lsq_nin[0]["quant"] and "bn_momentum" not in lsq_nin[0]["model"]


def test_a_key_that_takes_effect_in_no_run_is_refused() -> None:
    config = one_experiment(grid={"quant": [{"method": "float"}, {"method": "lsq"}]})
    config["experiments"]["e"]["base"]["quant"]["initial_range"] = 4
    message = error_of(config)
    assert "experiment 'e': quant.initial_range takes effect in no run" in message
    assert "(it applies to quant.method fixed, dynamic_fixed)" in message


def test_spelled_out_defaults_still_give_the_same_run_id() -> None:
    plain = all_runs(validate_config(one_experiment()))
    spelled = all_runs(
        validate_config(one_experiment({"model": {"init": "torch", "bn_eps": 1e-5, "input_dropout": 0}}))
    )
    assert list(plain) == list(spelled)


def test_a_claim_naming_an_unknown_measure_is_refused() -> None:
    config = default_config()
    config["analysis"]["claims"]["measure"] = "pacbayes.flatnes"
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert (
        "analysis.claims.measure: 'pacbayes.flatnes' is not a measure qgen produces "
        "(qgen.measures.names lists them); did you mean 'pacbayes.flatness'" in str(err.value)
    )
    for known in ("pacbayes.flatness", "bound.value", "norm.path_norm"):
        config["analysis"]["claims"]["measure"] = known
        validate_config(copy.deepcopy(config))


@pytest.mark.parametrize("dataset", ["cifar10_c", "imagenet-100"])
def test_dataset_names_with_underscores_and_dashes_make_valid_run_ids(dataset) -> None:
    from qgen.experiments import DATASET_PATTERN, RUN_ID_PATTERN

    spec = make_spec()
    spec["data"]["name"] = dataset  # not in the schema's list yet: the datasets work adds loaders
    rid = run_id(normalize_spec(spec))
    assert rid.startswith(f"{dataset}-mlp2x32-lsq_w4a4-") and is_run_id(rid)
    assert re.fullmatch(RUN_ID_PATTERN, rid) and re.fullmatch(DATASET_PATTERN, dataset)
    # the workflow's wildcards use the same patterns (results/runs/{run_id}, data/prepared/{dataset})
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert "run_id=RUN_ID_PATTERN" in common and "dataset=DATASET_PATTERN" in common


def test_a_dataset_name_that_cannot_be_in_a_run_id_is_named() -> None:
    spec = make_spec()
    spec["data"]["name"] = "CIFAR 10"
    with pytest.raises(ConfigError, match=r"data.name 'CIFAR 10' cannot start a run id"):
        run_id(spec)


def test_existing_run_ids_are_kept() -> None:
    assert run_id(make_spec()) == "digits-mlp2x32-lsq_w4a4-26f53062"


def test_measure_names_are_the_names_qgen_produces(digits) -> None:
    """qgen.measures.names (what analysis.claims.measure is checked against) is exactly what measure_run
    writes into measures.json, plus the bound's columns."""
    import pandas as pd
    import torch

    from qgen.analysis.bound import evaluate_bound
    from qgen.measures.names import BOUND_NAMES, MEASURE_NAMES
    from qgen.measures.run import measure_run
    from qgen.models import build_model
    from qgen.quant import init_quantizers

    spec = make_spec(model={"depth": 1, "width": 8}, quant={"first_layer": "same", "last_layer": "same"})
    torch.manual_seed(0)
    model = build_model(spec, digits.input_shape, digits.num_classes)
    init_quantizers(model, next(iter(digits.train.batches(64)))[0])
    state = model.state_dict()
    settings = validate(copy.deepcopy(TINY_MEASURES), measures_schema())
    body = measure_run(
        {"spec": spec, "state_dict": state, "init_state": state}, digits, settings, torch.device("cpu")
    )
    assert set(body["measures"]) == MEASURE_NAMES
    row = pd.DataFrame([{**body["measures"], "train_error": 0.1}])
    assert set(evaluate_bound(row).columns) == BOUND_NAMES
