"""Expand the experiments of a config into runs: one run spec (and one run id) per trained model.

A run id is a readable prefix plus the first 8 hex digits of the SHA-256 of the canonical spec
(sorted keys, integral floats written as integers, no whitespace), e.g.
``digits-mlp2x64-lsq_w4a4-3f9c1a2b``. The same spec gives the same id on every machine; fields that
do not change results (device, threads, paths) live in ``runtime`` and never enter the spec.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from qgen.config import ConfigError, run_spec_schema, validate

RUN_ID_PATTERN = r"[a-z0-9]+-[a-z0-9]+-[a-z0-9_]+-[0-9a-f]{8}"
_RUN_ID_RE = re.compile(rf"^{RUN_ID_PATTERN}$")


def canonicalize(value: Any) -> Any:
    """Normalize a spec so that equal meanings serialize equally (1.0 == 1, tuples == lists)."""
    if isinstance(value, dict):
        return {str(k): canonicalize(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [canonicalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_json(spec: dict[str, Any]) -> str:
    return json.dumps(canonicalize(spec), sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def quant_label(quant: dict[str, Any]) -> str:
    """Short quantizer label, e.g. ``fp32``, ``lsq_w4a4``, ``uniform_w8afp``."""
    if quant["method"] == "float":
        return "fp32"
    a = "fp" if quant.get("act_bits") is None else quant["act_bits"]
    return f"{quant['method']}_w{quant['weight_bits']}a{a}"


def bits_label(quant: dict[str, Any]) -> str:
    """Bit width as reported in tables: ``FP32`` or the weight bit width."""
    return "FP32" if quant["method"] == "float" else str(quant["weight_bits"])


def run_id(spec: dict[str, Any]) -> str:
    model = spec["model"]
    arch = f"{model['name']}{model['depth']}x{model['width']}"
    return f"{spec['data']['name']}-{arch}-{quant_label(spec['quant'])}-{spec_hash(spec)[:8]}"


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID_RE.match(text))


def set_dotted(spec: dict[str, Any], key: str, value: Any) -> None:
    """Set ``spec[a][b] = value`` for key ``a.b``; a mapping value is merged into the target."""
    *parents, last = key.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"grid key {key!r}: {part!r} is not a mapping")
    if isinstance(value, dict):
        target = node.setdefault(last, {})
        if not isinstance(target, dict):
            raise ConfigError(f"grid key {key!r}: cannot merge a mapping into {target!r}")
        target.update(copy.deepcopy(value))
    else:
        node[last] = copy.deepcopy(value)


def normalize_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Drop fields that have no effect for the chosen options, so they cannot split run ids."""
    quant = spec["quant"]
    if quant["method"] == "float":
        spec["quant"] = {"method": "float"}
    model = spec["model"]
    if model["name"] == "mlp":
        model.pop("base_width", None)
    else:
        model.pop("batch_norm", None)
    optim = spec["optim"]
    if optim["schedule"] != "step":
        optim.pop("milestones", None)
        optim.pop("gamma", None)
    if optim["name"] == "adam":
        optim.pop("momentum", None)
    return canonicalize(spec)


@dataclass(frozen=True)
class Run:
    run_id: str
    spec: dict[str, Any] = field(hash=False)
    experiments: tuple[str, ...] = ()
    grid_point: dict[str, Any] = field(default_factory=dict, hash=False)


def expand_experiment(name: str, experiment: dict[str, Any], datasets: dict[str, Any]) -> list[Run]:
    """All runs of one experiment: the cartesian product of its grid axes, times its seeds."""
    axes = list(experiment.get("grid", {}).items())
    keys = [k for k, _ in axes]
    runs: list[Run] = []
    for values in itertools.product(*(v for _, v in axes)):
        for seed in experiment.get("seeds", [0]):
            spec = copy.deepcopy(experiment["base"])
            for key, value in zip(keys, values, strict=True):
                set_dotted(spec, key, value)
            spec["seed"] = seed
            data = spec.get("data")
            if isinstance(data, dict) and data.get("name") in datasets:
                spec["data"] = {**datasets[data["name"]], **data}
            point = dict(zip(keys, values, strict=True))
            validate(spec, run_spec_schema(), where=f"run spec of experiment {name!r} at grid point {point}")
            spec = normalize_spec(spec)
            runs.append(Run(run_id(spec), spec, (name,), point))
    return runs


def expand_config(config: dict[str, Any]) -> dict[str, list[Run]]:
    """Runs of every experiment of a validated config, keyed by experiment name (order kept)."""
    datasets = _dataset_defaults(config)
    out: dict[str, list[Run]] = {}
    for name, experiment in config["experiments"].items():
        runs = expand_experiment(name, experiment, datasets)
        unique: dict[str, Run] = {}
        for run in runs:
            unique.setdefault(run.run_id, run)
        out[name] = list(unique.values())
    return out


def _dataset_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Preparation settings of every dataset, with schema defaults for those the config omits."""
    from qgen.config import load_schema

    schema = load_schema()
    datasets = copy.deepcopy(config.get("datasets", {}))
    names = {"digits"} | set(datasets)
    prep_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/dataset_prep"}
    for name in names:
        datasets[name] = validate(datasets.get(name, {}), prep_schema, where=f"datasets.{name}")
    return datasets


def all_runs(config: dict[str, Any]) -> dict[str, Run]:
    """Every distinct run of the config, keyed by run id, with the experiments it belongs to."""
    table: dict[str, Run] = {}
    for name, runs in expand_config(config).items():
        for run in runs:
            if run.run_id in table:
                prev = table[run.run_id]
                table[run.run_id] = Run(run.run_id, prev.spec, (*prev.experiments, name), prev.grid_point)
            else:
                table[run.run_id] = run
    return table


def dataset_params(config: dict[str, Any], name: str) -> dict[str, Any]:
    return _dataset_defaults(config)[name]


def runs_table(runs: dict[str, Run]) -> str:
    """The runs table (results/runs.tsv): run id, experiments, bit width, seed and canonical spec."""
    lines = ["run_id\texperiments\tbits\tseed\tspec"]
    for rid, run in runs.items():
        lines.append(
            f"{rid}\t{','.join(run.experiments)}\t{bits_label(run.spec['quant'])}\t{run.spec['seed']}\t"
            f"{canonical_json(run.spec)}"
        )
    return "\n".join(lines) + "\n"
