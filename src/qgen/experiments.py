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
from qgen.models.precision import UNET_FIRST_BLOCK, UNET_HEAD, precision_record, unused_request

#: dataset names as they appear in run ids and paths (``cifar10_c``, ``imagenet-100``)
DATASET_PATTERN = r"[a-z0-9][a-z0-9_-]*"
#: dataset-arch-quant-hash: the last three fields hold no ``-``, so a dataset name may (parse from the right)
RUN_ID_PATTERN = rf"{DATASET_PATTERN}-[a-z0-9]+-[a-z0-9_]+-[0-9a-f]{{8}}"
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
    """Short quantizer label, e.g. ``fp32``, ``lsq_w4a4``, ``uniform_w8afp``, ``bc_stoch``,
    ``dfxp_p10u12`` (propagation and update bits), ``hflp``, ``qif_gm_w0_4a6_0`` (Q_{i.f} formats)."""
    method = quant["method"]
    if method == "float":
        return "fp32"
    if method == "binary":
        return "bc_stoch" if quant.get("stochastic") else "bc_det"
    if method == "half":
        return "hflp"
    if method in ("fixed", "dynamic_fixed"):
        prefix = "fxp" if method == "fixed" else "dfxp"
        return f"{prefix}_p{quant['prop_bits']}u{quant['update_bits']}"
    if method == "qif":  # the reference's folder names: a6_0_w0_4 → qif_gm_w0_4a6_0
        w = "_".join(map(str, quant["weight_format"]))
        a = "fp" if quant.get("act_format") is None else "_".join(map(str, quant["act_format"]))
        return f"qif_{quant.get('variant', 'gm')}_w{w}a{a}"
    a = "fp" if quant.get("act_bits") is None else quant["act_bits"]
    return f"{method}_w{quant['weight_bits']}a{a}"


def bits_label(spec: dict[str, Any]) -> str:
    """Bit width as reported in tables, from the run's precision plan (qgen.models.precision): ``FP32``,
    ``4`` (lowest weight bits, activations alike), ``w4a8``, ``w8afp``, ``1`` for BinaryConnect, ``16``
    for half floats, the propagation bit width for fixed point."""
    return precision_record(spec)["label"]


def arch_label(model: dict[str, Any]) -> str:
    """The architecture field of a run id: ``mlp2x64``, ``resnet20``, ``preresnet20``, ``resnet18``,
    ``mobilenetv2``, ``vit6x192``, ``deittiny`` (lower-case letters and digits only)."""
    name = model["name"]
    if name in LEGACY_MODELS or name == "vit":
        return f"{name}{model['depth']}x{model['width']}"
    if name == "resnet_cifar":
        width = "" if model.get("width", 16) == 16 else f"x{model['width']}"
        return f"{'pre' if model.get('preact') else ''}resnet{model['depth']}{width}"
    return name.replace("_", "")


def run_id(spec: dict[str, Any]) -> str:
    model = spec["model"]
    arch = arch_label(model)
    rid = f"{spec['data']['name']}-{arch}-{quant_label(spec['quant'])}-{spec_hash(spec)[:8]}"
    if not is_run_id(rid):
        raise ConfigError(
            f"data.name {spec['data']['name']!r} cannot start a run id ({rid!r}): dataset names are "
            f"lower-case letters, digits, '_' and '-' ({DATASET_PATTERN})"
        )
    return rid


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


#: quant keys that matter for each method, with the defaults filled in when a spec omits them
QUANT_KEYS: dict[str, dict[str, Any]] = {
    "float": {},
    "uniform": {
        "weight_bits": None,
        "act_bits": None,
        "per_channel": None,
        "first_layer": "8bit",
        "last_layer": "8bit",
        "grid": None,
        "first_layer_names": None,
        "last_layer_names": None,
        "attention": None,
    },
    "lsq": {
        "weight_bits": None,
        "act_bits": None,
        "per_channel": None,
        "first_layer": "8bit",
        "last_layer": "8bit",
        "first_layer_names": None,
        "last_layer_names": None,
        "attention": None,
    },
    # noise injection (qgen.quant.noise): no run ids to preserve, so its defaults stay in the spec;
    # noise_on's default depends on act_bits (normalize_spec)
    "noise": {
        "weight_bits": None,
        "act_bits": None,
        "per_channel": None,
        "first_layer": "8bit",
        "last_layer": "8bit",
        "grid": "symmetric",
        "first_layer_names": None,
        "last_layer_names": None,
        "attention": None,
        "noise_on": None,
        "noise_clip": True,
        "noise_eval": "round",
    },
    "binary": {
        "stochastic": False,
        "H": 1,
        "lr_scale": "glorot",
        "test_time": None,
        "first_layer": "same",
        "last_layer": "same",
        "first_layer_names": None,
        "last_layer_names": None,
    },
    # the U-Net paper's Q_{i.f} (qgen.quant.unet_fixed): formats, not bit widths; the reference keeps the
    # first block and the head float (on model unet first/last_layer_names default to them, normalize_spec)
    "qif": {
        "weight_format": None,
        "act_format": None,
        "variant": "gm",
        "first_layer": "float",
        "last_layer": "float",
        "first_layer_names": None,
        "last_layer_names": None,
    },
    "half": {},
    "fixed": {"prop_bits": None, "update_bits": None, "initial_range": 5},
    "dynamic_fixed": {
        "prop_bits": None,
        "update_bits": None,
        "initial_range": 5,
        "range_update_every": 100,
        "max_overflow": 0.0001,
        "range_init_epochs": 2,
    },
}
#: quant keys added after run ids were frozen, with the default that is dropped from the spec when
#: spelled out (as for MODEL_KEYS), so existing specs keep their run ids
QUANT_OMITTED_DEFAULTS: dict[str, dict[str, Any]] = {
    "uniform": {"grid": "symmetric", "attention": False},
    "lsq": {"attention": False},
}
#: model keys per architecture (beyond name, depth, width, dropout) with their defaults; a value equal
#: to a default that the spec may omit is dropped, so spelling a default out never splits run ids
MODEL_KEYS: dict[str, dict[str, Any]] = {
    "mlp": {
        "batch_norm": None,
        "input_dropout": 0,
        "output_batch_norm": False,
        "bn_momentum": 0.1,
        "bn_eps": 1e-05,
        "init": "torch",
    },
    "nin": {"base_width": None},
    "vgg": {"fc_width": 1024, "bn_momentum": 0.1, "bn_eps": 1e-05},
    "maxout": {"pieces": 5, "input_dropout": 0.2},
    # the families quantized by module replacement list every key they read (no common keys); None:
    # required (resnet_cifar depth) or optional without default (pretrained)
    "resnet_cifar": {"depth": None, "width": 16, "preact": False, "shortcut": "A", "pretrained": None},
    "resnet18": {"stem": "imagenet", "pretrained": None},
    "resnet50": {"stem": "imagenet", "pretrained": None},
    "mobilenet_v2": {"stem": "imagenet", "width_mult": 1.0, "dropout": 0.2, "pretrained": None},
    "vit": {
        "depth": 9,
        "width": 192,
        "heads": 3,
        "patch_size": 4,
        "mlp_ratio": 4,
        "dropout": 0.0,
        "drop_path": 0.0,
        "pretrained": None,
    },
    "deit_tiny": {"dropout": 0.0, "drop_path": 0.0, "pretrained": None},
    "unet": {"depth": 3, "width": 64, "bn_momentum": 0.1, "init": "torch"},
    "vit_small": {"dropout": 0.0, "drop_path": 0.0, "pretrained": None},
}
#: the models defined before module replacement: they read MODEL_COMMON_KEYS, defaults below
LEGACY_MODELS = ("mlp", "nin", "vgg", "maxout")
LEGACY_DEFAULTS: dict[str, Any] = {"depth": 2, "width": 64, "dropout": 0.0}
#: models that keep their defaulted keys explicitly in the spec (no run ids to preserve)
EXPLICIT_DEFAULTS = tuple(m for m in MODEL_KEYS if m not in LEGACY_MODELS or m == "maxout")
VIT_MODELS = ("vit", "deit_tiny", "vit_small")
ARITHMETIC_METHODS = ("float", "half", "fixed", "dynamic_fixed")


def _check_combination(spec: dict[str, Any]) -> None:
    model, method = spec["model"]["name"], spec["quant"]["method"]
    if model == "maxout" and method not in ARITHMETIC_METHODS:
        raise ConfigError(
            f"model maxout is computed in a number format: quant.method must be one of {ARITHMETIC_METHODS}"
        )
    if model != "maxout" and method in ARITHMETIC_METHODS[1:]:
        raise ConfigError(
            f"quant.method {method} (Courbariaux et al. 2014 arithmetic) needs model.name: maxout"
        )
    quant = spec["quant"]
    if method in ("uniform", "lsq", "noise") and quant.get("weight_bits", 0) is None:
        raise ConfigError(
            f"quant.weight_bits: null is not a bit width for quant.method {method}, which quantizes the "
            "weights (2-8 bits); only act_bits may be null (float activations)"
        )
    if method == "noise" and "act" in quant.get("noise_on", ()) and quant.get("act_bits") is None:
        raise ConfigError(
            "quant.noise_on names act but quant.act_bits is null: float activations have no rounding to "
            "replace by noise (use noise_on: [weight])"
        )
    if method == "qif":
        if "weight_format" not in quant:
            raise ConfigError(
                "quant.method qif needs quant.weight_format [int_bits, frac_bits] (e.g. [0, 4])"
            )
        for key in ("weight_format", "act_format"):
            fmt = quant.get(key)
            if fmt is not None and sum(fmt) < 1:
                raise ConfigError(f"quant.{key} {fmt}: a fixed-point format needs at least one bit")
        if "8bit" in (quant.get("first_layer"), quant.get("last_layer")):
            raise ConfigError("quant.method qif: first_layer/last_layer may be same or float, not 8bit")
    if method in ("fixed", "dynamic_fixed") and ("prop_bits" not in quant or "update_bits" not in quant):
        raise ConfigError(f"quant.method {method} needs quant.prop_bits and quant.update_bits")
    if quant.get("attention") and model not in VIT_MODELS:
        raise ConfigError(f"quant.attention quantizes a ViT's attention; model {model} has none")
    if model == "resnet_cifar":
        depth = spec["model"].get("depth")
        if depth is None or (depth - 2) % 6:
            raise ConfigError(f"model resnet_cifar needs model.depth = 6n+2 (20, 32, 56, 110), got {depth}")
    if model == "vit":
        width, heads = spec["model"].get("width", 192), spec["model"].get("heads", 3)
        if width % heads:
            raise ConfigError(f"model vit: width {width} is not divisible by heads {heads}")
    if method == "binary" and "8bit" in (quant.get("first_layer"), quant.get("last_layer")):
        raise ConfigError("quant.method binary: first_layer/last_layer may be same or float, not 8bit")
    optim = spec["optim"]
    if optim["schedule"] in ("exponential", "linear") and "lr_final" not in optim:
        raise ConfigError(f"optim.schedule {optim['schedule']} needs optim.lr_final")
    if "max_col_norm" in optim and model != "maxout":
        raise ConfigError("optim.max_col_norm applies to model maxout only")


#: models that see their input as a vector: no image augmentation (the dataset's default is for the others)
PERMUTATION_INVARIANT = ("mlp", "maxout")


def _normalize_data(spec: dict[str, Any]) -> None:
    """Resolve ``data.augment`` and drop the validation and selection keys at their defaults, so that
    spelling a default out never splits run ids and normalizing twice changes nothing.

    Augmentation is written out when it is used (``{crop_padding, flip}``), absent when it is off and that
    is the default, and ``none`` when it is off but the dataset's default would augment."""
    data, train = spec["data"], spec["train"]
    default = None
    if spec["model"]["name"] not in PERMUTATION_INVARIANT:
        from qgen.data.registry import get  # torch-free

        augment_default = get(data["name"]).augment_default
        default = dict(augment_default) if augment_default is not None else None
    augment = data.get("augment", default)
    if isinstance(augment, dict):
        augment = {
            "crop_padding": int(augment.get("crop_padding", 0)),
            "flip": bool(augment.get("flip", False)),
        }
        if not augment["crop_padding"] and not augment["flip"]:
            augment = None
    if augment == "none":
        augment = None
    if augment is not None:
        data["augment"] = augment
    elif default is not None:
        data["augment"] = "none"
    else:
        data.pop("augment", None)
    if not data.get("val_size"):
        data.pop("val_size", None)
        data.pop("val_seed", None)
    elif data.get("val_seed") == 0:
        data.pop("val_seed")
    if train.get("select") == "last":
        train.pop("select")
    if train.get("select") == "best_val" and not data.get("val_size"):
        raise ConfigError("train.select: best_val needs a validation split: set data.val_size > 0")


def normalize_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Check that the options fit together, fill method defaults and drop fields that have no effect for
    the chosen options, so they cannot split run ids."""
    _check_combination(spec)
    _normalize_data(spec)
    quant = spec["quant"]
    method = quant["method"]
    kept = {"method": method}
    for key, default in QUANT_KEYS[method].items():
        if key in quant:
            kept[key] = quant[key]
        elif default is not None:
            kept[key] = default
    if method == "binary" and kept.get("test_time") is None:
        kept["test_time"] = "real" if kept["stochastic"] else "binary"
    if method == "qif" and spec["model"]["name"] == "unet":  # the reference's float layers
        kept.setdefault("first_layer_names", list(UNET_FIRST_BLOCK))
        kept.setdefault("last_layer_names", list(UNET_HEAD))
    if method == "noise":  # every quantized role by default; listed in a fixed order
        roles = kept.get("noise_on") or ["weight", *(["act"] if kept.get("act_bits") is not None else [])]
        kept["noise_on"] = [r for r in ("weight", "act") if r in roles]
    spec["quant"] = {k: v for k, v in kept.items() if v is not None or k in quant}
    for key, default in QUANT_OMITTED_DEFAULTS.get(method, {}).items():
        if spec["quant"].get(key) == default:
            spec["quant"].pop(key)
    model = spec["model"]
    name = model["name"]
    if name in LEGACY_MODELS:
        for key, default in LEGACY_DEFAULTS.items():
            model.setdefault(key, default)
    keep = {"name", *MODEL_KEYS[name]} | (set(MODEL_COMMON_KEYS) if name in LEGACY_MODELS else set())
    for key in list(model):
        if key not in keep:
            model.pop(key)
    for key, default in MODEL_KEYS[name].items():
        if name in EXPLICIT_DEFAULTS:
            if default is not None:
                model.setdefault(key, default)
        elif key in model and default is not None and canonicalize(model[key]) == canonicalize(default):
            model.pop(key)
    optim = spec["optim"]
    if optim["schedule"] != "step":
        optim.pop("milestones", None)
        optim.pop("gamma", None)
    if optim["schedule"] not in ("exponential", "linear"):
        optim.pop("lr_final", None)
    if optim["schedule"] != "linear":
        optim.pop("lr_saturate", None)
    if optim["name"] in ("adam", "adamw"):
        for key in ("momentum", "momentum_final", "momentum_saturate"):
            optim.pop(key, None)
    if optim.get("warmup_epochs") == 0:
        optim.pop("warmup_epochs")
    if "momentum_final" not in optim:
        optim.pop("momentum_saturate", None)
    if spec["train"].get("loss") == "ce":
        spec["train"].pop("loss")
    if spec["train"].get("dice_threshold") == 0.5:  # the default (qgen.metrics.DICE_THRESHOLD): no split ids
        spec["train"].pop("dice_threshold")
    unused = unused_request(spec)
    if unused is not None:
        raise ConfigError(unused)
    return canonicalize(spec)


@dataclass(frozen=True)
class Run:
    run_id: str
    spec: dict[str, Any] = field(hash=False)
    experiments: tuple[str, ...] = ()
    grid_point: dict[str, Any] = field(default_factory=dict, hash=False)


#: model keys every architecture reads (beside MODEL_KEYS[name])
MODEL_COMMON_KEYS = ("name", "depth", "width", "dropout")
#: keys an architecture ignores although its spec keeps them (the schema fills them; run ids stay stable)
MODEL_IGNORED_KEYS: dict[str, tuple[str, ...]] = {"vgg": ("dropout",)}
#: spec sections whose keys depend on the chosen model or quantizer
_SELECTOR = {"model": "name", "quant": "method"}


def key_applies(spec: dict[str, Any], key: str) -> bool:
    """Whether the dotted model/quant ``key`` takes effect in the run ``spec``."""
    section, _, leaf = key.partition(".")
    if section == "quant":
        method = spec["quant"]["method"]
        if leaf == "attention" and spec["model"]["name"] not in VIT_MODELS:
            return False
        return leaf == "method" or leaf in QUANT_KEYS[method]
    name = spec["model"]["name"]
    if leaf in MODEL_IGNORED_KEYS.get(name, ()):
        return False
    return leaf == "name" or (leaf in MODEL_COMMON_KEYS and name in LEGACY_MODELS) or leaf in MODEL_KEYS[name]


def _selector(key: str) -> str:
    """The key that chooses what a dotted model/quant key means: ``model.name`` or ``quant.method``."""
    section = key.split(".")[0]
    return f"{section}.{_SELECTOR[section]}"


def _owners(key: str) -> list[str]:
    """The methods or models a dotted model/quant key applies to (for error messages)."""
    section, _, leaf = key.partition(".")
    if section == "quant":
        return [m for m, keys in QUANT_KEYS.items() if leaf in keys]
    return [
        m
        for m, keys in MODEL_KEYS.items()
        if leaf in keys or (leaf in MODEL_COMMON_KEYS and m in LEGACY_MODELS)
    ]


def _written_keys(key: str, value: Any, where: str, out: dict[str, str]) -> None:
    """Record in ``out`` the model/quant keys that ``set_dotted(spec, key, value)`` writes, from ``where``."""
    section, _, leaf = key.partition(".")
    if section not in _SELECTOR:
        return
    if leaf:
        out[f"{section}.{leaf.split('.')[0]}"] = where
    elif isinstance(value, dict):
        for k in value:
            out[f"{section}.{k}"] = where


def _check_seed_is_not_set(name: str, experiment: dict[str, Any]) -> None:
    """``seed`` comes from the experiment's ``seeds`` list; set anywhere else it would be overwritten."""
    places = [f"grid.{k}" for k in experiment.get("grid", {}) if k.split(".")[0] == "seed"]
    places += ["base.seed"] if "seed" in experiment["base"] else []
    variants = experiment.get("variants") or []
    places += [f"variants[{v}].seed" for v, variant in enumerate(variants) if "seed" in variant]
    if places:
        raise ConfigError(
            f"experiments.{name}.{places[0]}: the seed of a run is set by the experiment's `seeds` list "
            "(e.g. seeds: [0, 1, 2]), not by a grid axis, the base or a variant"
        )


def _check_written_keys(spec: dict[str, Any], written: dict[str, str]) -> None:
    """A model/quant key written in the same place that chose the run's model or quantizer must apply to it.

    Keys written elsewhere (the base, another variant or grid axis) may serve other runs of the
    experiment: for this run they are dropped (:func:`normalize_spec`)."""
    for key, where in written.items():
        section, selector = key.split(".")[0], _selector(key)
        if key == selector or key_applies(spec, key) or written.get(selector) != where:
            continue
        chosen = spec[section][_SELECTOR[section]]
        owners = _owners(key)
        hint = f"; it applies to {selector} {', '.join(owners)}" if owners else ""
        raise ConfigError(f"{key} (set in {where}) does not apply to {selector} {chosen}{hint}")


def weights_spec(name: str, weights: dict[str, Any]) -> dict[str, Any]:
    """What a run spec carries of the pretrained weights ``name`` (config ``weights.<name>``): the name, the
    file's sha256 and the excluded keys; never the path."""
    if name not in weights:
        known = ", ".join(sorted(weights)) or "none"
        raise ConfigError(f"model.pretrained: {name!r} is not an entry of the config's weights ({known})")
    entry = weights[name]
    out = {"name": name, "sha256": entry["sha256"]}
    if entry.get("exclude"):
        out["exclude"] = sorted(entry["exclude"])
    return out


def weights_path(config: dict[str, Any], name: str) -> str | None:
    """The file of pretrained weights ``name``: ``weights.<name>.path``, else ``$QGEN_WEIGHTS/<name>.pth``,
    else None (the run then fails with a message saying so)."""
    import os

    path = ((config.get("weights") or {}).get(name) or {}).get("path")
    if path is None and os.environ.get("QGEN_WEIGHTS"):
        path = os.path.join(os.environ["QGEN_WEIGHTS"], f"{name}.pth")
    return path


def expand_experiment(
    name: str, experiment: dict[str, Any], datasets: dict[str, Any], weights: dict[str, Any] | None = None
) -> list[Run]:
    """All runs of one experiment: the cartesian product of its grid axes, times its seeds.

    Refused with a ConfigError naming the experiment and the grid point: a run that is not a valid,
    buildable spec, a model/quant key written for a run's model or quantizer that does not apply to it,
    a run whose requested precision no layer would compute at (qgen.models.precision), a seed set
    anywhere but ``seeds``, and a model/quant key that takes effect in no run of the experiment."""
    _check_seed_is_not_set(name, experiment)
    axes = list(experiment.get("grid", {}).items())
    keys = [k for k, _ in axes]
    runs: list[Run] = []
    variants = experiment.get("variants") or [{}]
    applied: dict[str, bool] = {}  # every written model/quant key: whether some run uses it
    for v, variant in enumerate(variants):
        for values in itertools.product(*(v for _, v in axes)):
            for seed in experiment.get("seeds", [0]):
                spec = copy.deepcopy(experiment["base"])
                written: dict[str, str] = {}
                for section in _SELECTOR:
                    _written_keys(section, spec.get(section), "base", written)
                for section, fragment in variant.items():
                    set_dotted(spec, section, fragment)
                    _written_keys(section, fragment, f"variants[{v}]", written)
                for key, value in zip(keys, values, strict=True):
                    set_dotted(spec, key, value)
                    _written_keys(key, value, f"grid.{key}", written)
                spec["seed"] = seed
                data = spec.get("data")
                if isinstance(data, dict) and data.get("name") in datasets:
                    spec["data"] = {**datasets[data["name"]], **data}
                point = dict(zip(keys, values, strict=True))
                pretrained = (spec.get("model") or {}).get("pretrained")
                if isinstance(pretrained, str):
                    try:
                        spec["model"]["pretrained"] = weights_spec(pretrained, weights or {})
                    except ConfigError as err:
                        raise ConfigError(f"experiment {name!r} at grid point {point}: {err}") from None
                if len(variants) > 1:
                    point = {"variant": v, **point}
                where = f"run spec of experiment {name!r} at grid point {point}"
                validate(spec, run_spec_schema(), where=where)
                try:
                    spec = normalize_spec(spec)
                    _check_written_keys(spec, written)
                    for key in written:
                        applied[key] = applied.get(key, False) or key_applies(spec, key)
                    runs.append(Run(run_id(spec), spec, (name,), point))
                except ConfigError as err:
                    raise ConfigError(f"{where}: {err}") from None
    unused = [key for key, used in applied.items() if not used]
    if unused:
        problems = [
            f"{key} takes effect in no run (it applies to {_selector(key)} {', '.join(_owners(key)) or '-'})"
            for key in unused
        ]
        raise ConfigError(f"experiment {name!r}: " + "; ".join(problems))
    return runs


def main_job_runs(name: str, experiment: dict[str, Any], runs: list[Run]) -> list[Run]:
    """The runs of ``experiment.main_job``, the representative part the main job builds (``scope: main``):
    those whose grid point, seed and variant are among the ones it lists. Each list must be a subset of
    the experiment's own (a ConfigError otherwise), so the part's runs are runs of the full experiment."""
    part = experiment.get("main_job")
    if not part:
        return runs
    where = f"experiments.{name}.main_job"
    grid = experiment.get("grid") or {}
    keep_values: dict[str, set[str]] = {}
    for axis, values in (part.get("grid") or {}).items():
        if axis not in grid:
            raise ConfigError(
                f"{where}.grid.{axis}: not a grid axis of the experiment ({', '.join(grid) or 'none'})"
            )
        known = {canonical_json({"v": v}) for v in grid[axis]}
        wanted = {canonical_json({"v": v}) for v in values}
        if not wanted <= known:
            extra = [v for v in values if canonical_json({"v": v}) not in known]
            raise ConfigError(f"{where}.grid.{axis}: {extra} not among the axis's values {grid[axis]}")
        keep_values[axis] = wanted
    seeds = experiment.get("seeds", [0])
    keep_seeds = part.get("seeds", seeds)
    if not set(keep_seeds) <= set(seeds):
        raise ConfigError(
            f"{where}.seeds: {sorted(set(keep_seeds) - set(seeds))} not among the seeds {seeds}"
        )
    n_variants = len(experiment.get("variants") or [{}])
    keep_variants = part.get("variants", range(n_variants))
    if any(v >= n_variants for v in keep_variants):
        raise ConfigError(
            f"{where}.variants: the experiment has {n_variants} variant(s), indices 0-{n_variants - 1}"
        )
    kept = [
        run
        for run in runs
        if run.spec["seed"] in keep_seeds
        and run.grid_point.get("variant", 0) in keep_variants
        and all(canonical_json({"v": run.grid_point[a]}) in vals for a, vals in keep_values.items())
    ]
    return kept


def expand_config(config: dict[str, Any]) -> dict[str, list[Run]]:
    """Runs of every experiment of a validated config, keyed by experiment name (order kept); with
    ``scope: main`` (the default) only the ``main_job`` part of an experiment that has one."""
    datasets = _dataset_defaults(config)
    out: dict[str, list[Run]] = {}
    for name, experiment in config["experiments"].items():
        runs = expand_experiment(name, experiment, datasets, config.get("weights") or {})
        if config.get("scope", "main") == "main":
            runs = main_job_runs(name, experiment, runs)
        unique: dict[str, Run] = {}
        for run in runs:
            unique.setdefault(run.run_id, run)
        out[name] = list(unique.values())
    return out


def _dataset_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Preparation settings (as run specs carry them: no root) of every dataset the config names in
    ``datasets`` or uses in an experiment, with the dataset's defaults (qgen.data.registry.prep_params)."""
    from qgen.data.registry import UnknownDatasetError, prep_params

    entries = config.get("datasets", {}) or {}
    used = {
        exp["base"].get("data", {}).get("name")
        for exp in config.get("experiments", {}).values()
        if isinstance(exp.get("base", {}).get("data"), dict)
    }
    for exp in config.get("experiments", {}).values():
        for variant in exp.get("variants") or []:
            if isinstance(variant.get("data"), dict):
                used.add(variant["data"].get("name"))
        for key, values in (exp.get("grid") or {}).items():
            if key == "data.name":
                used.update(values)
            elif key == "data":
                used.update(v.get("name") for v in values if isinstance(v, dict))
    out: dict[str, Any] = {}
    for name in sorted({"digits", *entries, *(u for u in used if isinstance(u, str))}):
        try:
            out[name] = prep_params(name, entries.get(name) or {})
        except UnknownDatasetError as err:
            raise ConfigError(f"datasets.{name}: {err}") from None
    return out


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
    """Preparation settings of dataset ``name`` as its run specs and meta.json carry them (no root)."""
    return _dataset_defaults(config).get(name, {})


def dataset_entry(config: dict[str, Any], name: str) -> dict[str, Any]:
    """What ``qgen prepare-data`` gets for dataset ``name``: its settings plus the config's ``root``, if any
    (else the preparer reads ``$QGEN_DATA/<name>``)."""
    root = ((config.get("datasets") or {}).get(name) or {}).get("root")
    return {**dataset_params(config, name), **({"root": root} if root is not None else {})}


def runs_table(runs: dict[str, Run]) -> str:
    """The runs table (results/runs.tsv): run id, experiments, bit width, seed and canonical spec."""
    lines = ["run_id\texperiments\tbits\tseed\tspec"]
    for rid, run in runs.items():
        lines.append(
            f"{rid}\t{','.join(run.experiments)}\t{bits_label(run.spec)}\t{run.spec['seed']}\t"
            f"{canonical_json(run.spec)}"
        )
    return "\n".join(lines) + "\n"


# ---- robustness (issue 18): which runs are evaluated on corrupted test sets, and how ----------------

#: keys of the config's robustness section that decide how a corrupted set is generated
CORRUPTED_KEYS = ("corruptions", "severities", "seed", "small_images", "frost_textures")
#: keys that decide what robustness.json holds (besides the corrupted set and the model)
ROBUSTNESS_EVAL_KEYS = ("corruptions", "severities", "examples")


def robust_experiments(config: dict[str, Any]) -> list[str]:
    """The experiments whose runs get the robustness step (``robustness: true``)."""
    return [name for name, exp in config["experiments"].items() if exp.get("robustness")]


def robust_run(config: dict[str, Any], run: Run) -> bool:
    robust = set(robust_experiments(config))
    return any(e in robust for e in run.experiments)


def corrupted_params(config: dict[str, Any], name: str) -> dict[str, Any]:
    """What ``qgen prepare-corrupted`` gets for dataset ``name``: the released files' root and kind when the
    robustness section lists it, else the generation settings (qgen.data.corrupted.prepare_corrupted)."""
    section = config["robustness"]
    params = {k: section[k] for k in CORRUPTED_KEYS}
    released = section["released"].get(name)
    if released is not None:
        params = {
            "corruptions": section["corruptions"],
            "severities": section["severities"],
            "released": released,
        }
    return params


def robustness_evaluation(settings_json: str) -> dict[str, Any]:
    """The part of :func:`robustness_json`'s settings that robustness.json depends on (besides the
    corrupted set and the model): :data:`ROBUSTNESS_EVAL_KEYS`, not the batch size."""
    settings = json.loads(settings_json)
    return {k: settings[k] for k in ROBUSTNESS_EVAL_KEYS}


def robustness_json(config: dict[str, Any]) -> str:
    """The robustness settings a shard or a per-run job evaluates with (evaluation keys and batch size)."""
    section = config["robustness"]
    return json.dumps({k: section[k] for k in (*ROBUSTNESS_EVAL_KEYS, "batch_size")}, sort_keys=True)
