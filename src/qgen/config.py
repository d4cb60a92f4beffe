"""Load and validate workflow configs against ``workflow/schemas/config.schema.yaml``.

YAML is read with ``yaml.safe_load`` only. Validation fills in the schema's defaults and reports
every problem with the path to the offending key, so a typo in a 500-run grid names its place.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not satisfy the schema; the message lists every violation."""


@cache
def load_schema() -> dict[str, Any]:
    if not SCHEMA_PATH.exists():
        raise FileNotFoundError(
            f"config schema not found at {SCHEMA_PATH}; qgen is meant to run from a checkout of the "
            "repository (pip install -e .)"
        )
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _extend_with_defaults(validator_class: type) -> type:
    """A validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


def _format_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<config>"


def _measures_problems(settings: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """Cross-key rules of the measures section: non-empty search intervals, probe counts in order."""
    problems = []
    for search, what in (("pacbayes", "the PAC-Bayes sigma'"), ("worst_case", "the worst-case alpha'")):
        section = settings.get(search, {})
        lower, upper = section.get("lower"), section.get("upper")
        if lower is not None and upper is not None and lower >= upper:
            problems.append(
                (
                    f"{prefix}{search}.lower",
                    f"{lower} is not below {search}.upper ({upper}): {what} bisection searches "
                    "[lower, upper]",
                )
            )
    hessian = settings.get("hessian", {})
    low, high = hessian.get("min_probes"), hessian.get("max_probes")
    if low is not None and high is not None and low > high:
        problems.append((f"{prefix}hessian.min_probes", f"{low} is more than hessian.max_probes ({high})"))
    return problems


def _analysis_problems(settings: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """Cross-key rules of the analysis section: a claim's measure is one qgen produces."""
    from qgen.measures.names import CLAIM_MEASURES

    measure = settings.get("claims", {}).get("measure")
    if measure is None or measure in CLAIM_MEASURES:
        return []
    close = difflib.get_close_matches(measure, sorted(CLAIM_MEASURES), n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return [
        (
            f"{prefix}claims.measure",
            f"{measure!r} is not a measure qgen produces (qgen.measures.names lists them){hint}",
        )
    ]


#: quant methods SAM is defined for (qgen.train.sam), and those with SAQ's cases (quantized weights)
SAM_METHODS = ("float", "uniform", "lsq")
SAQ_METHODS = ("uniform", "lsq")
#: models with BatchNorm layers (the mlp with batch_norm or output_batch_norm)
_BN_MODELS = ("nin", "vgg", "resnet_cifar", "resnet18", "resnet50", "mobilenet_v2")
#: ASAM's eta when optim.sam.adaptive is set (qgen.train.sam.DEFAULT_ETA)
SAM_DEFAULT_ETA = 0.01


def _has_batch_norm(model: dict[str, Any]) -> bool:
    if model.get("name") == "mlp":
        return bool(model.get("batch_norm") or model.get("output_batch_norm"))
    return model.get("name") in _BN_MODELS


def _sam_problems(spec: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """Cross-key rules of ``optim.sam`` (a run spec): the keys that apply to the run's quantizer and model.
    When they hold, the defaults that depend on them are written into the spec (so it records every
    setting): ``eta`` with ``adaptive``, ``include_bn`` for a model with BatchNorm, ``include_wclip``
    (and, with activation quantizers, ``include_aclip``) for lsq."""
    sam = (spec.get("optim") or {}).get("sam")
    if not isinstance(sam, dict):
        return []
    where = f"{prefix}optim.sam"
    model, quant = spec.get("model") or {}, spec.get("quant") or {}
    method = quant.get("method")
    if model.get("name") == "maxout":
        return [
            (
                where,
                "SAM is not defined for model maxout: its low-precision arithmetic (Courbariaux et al. 2014) "
                "rounds every stored parameter into the format, and w + eps is no value of it",
            )
        ]
    if method not in SAM_METHODS:
        why = (
            ": stochastic binarization draws a new network at every forward, and no paper defines SAM for "
            "binary weights"
            if method == "binary"
            else ""
        )
        return [(where, f"SAM is defined for quant.method {', '.join(SAM_METHODS)}, not {method}{why}")]
    problems = []
    if method in SAQ_METHODS and "case" not in sam:
        problems.append(
            (
                f"{where}.case",
                f"quant.method {method} needs SAQ's case: 1, 2 or 3 (2 is plain SAM on the latent weights)",
            )
        )
    if method not in SAQ_METHODS and "case" in sam:
        problems.append(
            (f"{where}.case", f"SAQ's cases perturb quantized weights; quant.method {method} has none")
        )
    for key in ("include_wclip", "include_aclip"):
        if key in sam and method != "lsq":
            problems.append(
                (
                    f"{where}.{key}",
                    f"applies to quant.method lsq (learned steps); {method} has no learned step",
                )
            )
    if "include_aclip" in sam and method == "lsq" and quant.get("act_bits") is None:
        problems.append(
            (f"{where}.include_aclip", "quant.act_bits is null: there are no activation quantizers")
        )
    if "eta" in sam and not sam.get("adaptive"):
        problems.append((f"{where}.eta", "is ASAM's: it applies with optim.sam.adaptive: true"))
    if "include_bn" in sam and not _has_batch_norm(model):
        problems.append((f"{where}.include_bn", f"model {model.get('name')} has no BatchNorm layer"))
    if problems:
        return problems
    if sam.get("adaptive"):
        sam.setdefault("eta", SAM_DEFAULT_ETA)
    if _has_batch_norm(model):
        sam.setdefault("include_bn", True)
    if method == "lsq":
        sam.setdefault("include_wclip", False)
        if quant.get("act_bits") is not None:
            sam.setdefault("include_aclip", False)
    return []


#: rules JSON Schema cannot express, per $defs section
_CROSS_KEY_RULES = {"measures": _measures_problems, "analysis": _analysis_problems, "run_spec": _sam_problems}


def _cross_key_problems(instance: Any, schema: dict[str, Any]) -> list[tuple[str, str]]:
    """The cross-key rules of the sections that ``schema`` (the whole config, or one $defs entry) covers."""
    if not isinstance(instance, dict):
        return []
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        rule = _CROSS_KEY_RULES.get(ref.removeprefix("#/$defs/"))
        return rule(instance, "") if rule else []
    if schema.get("title") != load_schema().get("title"):
        return []
    problems = []
    for section, rule in _CROSS_KEY_RULES.items():
        if isinstance(instance.get(section), dict):
            problems += rule(instance[section], f"{section}.")
    return problems


def validate(instance: Any, schema: dict[str, Any] | None = None, where: str = "config") -> Any:
    """Validate ``instance`` in place (filling defaults), then the cross-key rules JSON Schema cannot express
    (search intervals, probe counts, claim measures, a run spec's optim.sam, which also fills the defaults
    that depend on other sections); raise ConfigError listing all errors."""
    schema = load_schema() if schema is None else schema
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    problems = [(_format_path(e.absolute_path), e.message) for e in errors]
    if not problems:
        problems = _cross_key_problems(instance, schema)
    if problems:
        lines = [f"  - {path}: {message}" for path, message in problems]
        raise ConfigError(f"invalid {where} ({len(problems)} problem(s)):\n" + "\n".join(lines))
    return instance


def run_spec_schema() -> dict[str, Any]:
    return defs_schema("run_spec")


def defs_schema(name: str) -> dict[str, Any]:
    """The schema of one ``$defs`` entry (e.g. ``measures``, ``analysis``), for validating a section."""
    schema = load_schema()
    return {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}


def measures_schema() -> dict[str, Any]:
    return defs_schema("measures")


def analysis_schema() -> dict[str, Any]:
    return defs_schema("analysis")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole workflow config (in place, with defaults) and return it."""
    return validate(config, where="config")


def load_config(path: str | Path) -> dict[str, Any]:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    try:
        return validate_config(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
