"""The precision plan of a run: the bit widths every weighted layer computes at, from the spec alone.

``layer_precisions(spec)`` lists, per layer (``fc1``, ``conv3``, ... in forward order), the bit width of
its weights and of its activations, from the architecture and the quant section's first/last-layer
policy. It mirrors how module replacement quantizes the layers (``qgen.quant.replace``) without
building a network, so the workflow can check thousands of specs without importing torch;
tests/test_models.py checks that the plan equals the built model's quantizers for every model ×
quantizer × policy. The families of ``FAMILY_ENDS`` (and any quant section that names its first/last
layers) get a summarized plan: the end layers by module name and ``*`` for every layer between them;
metrics.json's ``quantization`` lists every module of the built model. Conventions:

- float weights count as 32 bits; ``act_bits`` is None where activations stay float;
- uniform/LSQ: a layer's activations are the inputs its quantizer rounds (the ``8bit`` policy puts
  both at 8 bits, ``float`` keeps the layer float); BinaryConnect: 1-bit weights, float activations (the
  training-time precision: stochastic BC evaluates with its real-valued weights, ``quant.test_time``);
- the 2014 arithmetic (maxout): weights and every value a layer computes (pre-activations and outputs)
  at the propagation bit width, sign included (half float: 16 bits);
- qif (the U-Net paper's Q_{i.f}): i + f bits (no sign bit, the paper's count) of ``weight_format`` and
  ``act_format``. The U-Net quantizes its activations at its own sites (block outputs), not at layer
  inputs; the plan gives every layer the site's bits as its ``act_bits`` unless the layer is float
  (first block, head), a summary: the first conv's input is the image, unquantized.

The run's bit label (``bits`` in runs.tsv and runs.csv) comes from the plan: ``FP32``; the lowest weight
bit width when the lowest activation bit width equals it (``4``); ``w4a8`` when they differ; ``w8afp`` for
float activations; BinaryConnect ``1``, half float ``16``, fixed point its propagation bits.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

#: bit width of a float weight
FLOAT_BITS = 32
FLOAT_LABEL = "FP32"
#: methods whose activations stay float by definition (their label is the weight bit width alone)
WEIGHT_ONLY_METHODS = ("binary",)
_ARITHMETIC = ("fixed", "dynamic_fixed")


@dataclass(frozen=True)
class LayerPrecision:
    """One weighted layer: its name, where it sits (first, middle, last) and the bits it computes at."""

    layer: str
    position: str
    weight_bits: int
    act_bits: int | None

    @property
    def compact(self) -> str:
        """``fc1:w8a8``, ``fc2:w4afp``, ``fc3:fp32`` (float weights and activations)."""
        if self.weight_bits == FLOAT_BITS and self.act_bits is None:
            return f"{self.layer}:fp32"
        act = "fp" if self.act_bits is None else self.act_bits
        return f"{self.layer}:w{self.weight_bits}a{act}"


#: first and last weighted layer (module names) of the families quantized by module replacement, whose
#: plans list those two and ``*`` for every other conv/linear layer (metrics.json's ``quantization`` lists
#: each module); tests/test_model_families.py checks the names against each built model's graph
FAMILY_ENDS: dict[str, tuple[str, str]] = {
    "resnet_cifar": ("conv1", "fc"),
    "resnet18": ("conv1", "fc"),
    "resnet50": ("conv1", "fc"),
    "mobilenet_v2": ("features.0.0", "classifier.1"),
    "vit": ("patch_embed.proj", "head"),
    "deit_tiny": ("patch_embed.proj", "head"),
    "vit_small": ("patch_embed.proj", "head"),
    "unet": ("down.0.conv1", "head"),
}
#: the U-Net convs the reference code keeps float (qgen.models.unet): its first block and its head
UNET_FIRST_BLOCK = ("down.0.conv1", "down.0.conv2")
UNET_HEAD = ("head",)
#: the plan's name for every layer between the ends
MIDDLE = "*"


def layer_positions(model: dict[str, Any], quant: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(name, position) of every weighted layer of the model section, in forward order; for the families of
    FAMILY_ENDS, and wherever ``quant`` names its first/last layers, the ends and ``*`` for the rest."""
    name = model["name"]
    quant = quant or {}
    if name in FAMILY_ENDS or quant.get("first_layer_names") or quant.get("last_layer_names"):
        ends = FAMILY_ENDS.get(name)
        first = quant.get("first_layer_names") or ([ends[0]] if ends else [])
        last = quant.get("last_layer_names") or ([ends[1]] if ends else [])
        if not first or not last:
            raise ValueError(
                f"model {name}: quant.first_layer_names and last_layer_names go together (its layers are "
                "named by the module structure, e.g. net.1)"
            )
        return [*((n, "first") for n in first), (MIDDLE, "middle"), *((n, "last") for n in last)]
    depth = int(model["depth"])

    def position(i: int) -> str:
        return "first" if i == 0 else "middle"

    if name in ("mlp", "maxout"):  # depth hidden layers, then the classifier
        return [(f"fc{i + 1}", position(i)) for i in range(depth)] + [(f"fc{depth + 1}", "last")]
    if name == "nin":  # depth blocks of a 3x3 conv and two 1x1 convs, then the class conv
        convs = [position(3 * b + k) for b in range(depth) for k in range(3)]
        return [(f"conv{i + 1}", p) for i, p in enumerate(convs)] + [(f"conv{3 * depth + 1}", "last")]
    if name == "vgg":  # depth stages of two 3x3 convs, two dense hidden layers, the classifier
        convs = [(f"conv{i + 1}", position(i)) for i in range(2 * depth)]
        return [*convs, ("fc1", "middle"), ("fc2", "middle"), ("fc3", "last")]
    raise ValueError(f"unknown model {name!r}; known: mlp, nin, vgg, maxout, {', '.join(FAMILY_ENDS)}")


def layer_bits(quant: dict[str, Any], position: str) -> tuple[int, int | None]:
    """(weight bits, activation bits) of a layer at ``position`` under the quant section's policy."""
    method = quant["method"]
    if method == "float":
        return FLOAT_BITS, None
    if method == "half":
        return 16, 16
    if method in _ARITHMETIC:
        bits = int(quant["prop_bits"])
        return bits, bits
    policy = quant.get(f"{position}_layer", "same") if position in ("first", "last") else "same"
    if policy == "float":
        return FLOAT_BITS, None
    if method in WEIGHT_ONLY_METHODS:
        return 1, None
    if method == "qif":
        w_fmt, a_fmt = quant["weight_format"], quant.get("act_format")
        return int(sum(w_fmt)), (None if a_fmt is None else int(sum(a_fmt)))
    w_bits, a_bits = quant.get("weight_bits"), quant.get("act_bits")
    if policy == "8bit":
        w_bits = 8 if w_bits is not None else None
        a_bits = 8 if a_bits is not None else None
    return (FLOAT_BITS if w_bits is None else int(w_bits)), (None if a_bits is None else int(a_bits))


def layer_precisions(spec: dict[str, Any]) -> list[LayerPrecision]:
    """The precision plan of a run spec (model and quant sections): one entry per weighted layer."""
    quant = spec["quant"]
    return [
        LayerPrecision(name, position, *layer_bits(quant, position))
        for name, position in layer_positions(spec["model"], quant)
    ]


def lowest_bits(plan: list[LayerPrecision]) -> tuple[int, int | None]:
    """(lowest weight bit width, lowest activation bit width or None if all activations are float)."""
    acts = [p.act_bits for p in plan if p.act_bits is not None]
    return min(p.weight_bits for p in plan), (min(acts) if acts else None)


def precision_label(method: str, plan: list[LayerPrecision]) -> str:
    """The run's bit label (see the module docstring)."""
    w_bits, a_bits = lowest_bits(plan)
    if w_bits == FLOAT_BITS and a_bits is None:
        return FLOAT_LABEL
    if a_bits == w_bits or (a_bits is None and method in WEIGHT_ONLY_METHODS):
        return str(w_bits)
    return f"w{w_bits}a{'fp' if a_bits is None else a_bits}"


def precision_record(spec: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json records: the per-layer plan and its summary (lowest bits, compact form, label)."""
    plan = layer_precisions(spec)
    w_bits, a_bits = lowest_bits(plan)
    return {
        "layers": [asdict(p) for p in plan],
        "weight_bits": w_bits,
        "act_bits": a_bits,
        "compact": " ".join(p.compact for p in plan),
        "label": precision_label(spec["quant"]["method"], plan),
    }


def unused_request(spec: dict[str, Any]) -> str | None:
    """Why no layer computes at the precision the quant section asks for, or None if some layer does.

    E.g. LSQ at 4 bits on a depth-1 MLP under the 8-bit first/last-layer policy: both of its layers
    are the first and the last, so the "4-bit" run would be an 8-bit model."""
    quant = spec["quant"]
    method = quant["method"]
    plan = layer_precisions(spec)
    if method in WEIGHT_ONLY_METHODS:
        requested = {"weight": 1, "act": None}
    elif method in ("uniform", "lsq", "noise"):
        requested = {"weight": quant.get("weight_bits"), "act": quant.get("act_bits")}
    elif method == "qif":
        requested = dict(zip(("weight", "act"), layer_bits(quant, "middle"), strict=True))
    else:
        return None
    used = {"weight": {p.weight_bits for p in plan}, "act": {p.act_bits for p in plan}}
    for kind, bits in requested.items():
        if bits is not None and bits not in used[kind]:
            key = "weight_bits" if kind == "weight" else "act_bits"
            request = f"quant.{key} {bits}" if method not in WEIGHT_ONLY_METHODS else f"{method} weights"
            policy = ", ".join(
                f"{end}_layer: {quant.get(f'{end}_layer', 'same')}" for end in ("first", "last")
            )
            return (
                f"no layer computes at the requested {request}: the layers would be "
                f"{' '.join(p.compact for p in plan)} ({policy}; {_layers_of(spec['model'], plan)})"
            )
    return None


def _layers_of(model: dict[str, Any], plan: list[LayerPrecision]) -> str:
    if any(p.layer == MIDDLE for p in plan):
        return f"{MIDDLE} stands for every layer of the {model['name']} between its ends"
    return f"a {model['name']} of depth {model['depth']} has {len(plan)} weighted layers"


_LABEL_RE = re.compile(r"^(?:w(\d+)a(\d+|fp)|(\d+))$")


def label_sort_key(label: str) -> tuple[int, int, int, str]:
    """Order of bit labels: FP32 first, then weight bits high to low, then activation bits high to low
    (float activations first); labels that are none of these go last, alphabetically."""
    label = str(label)
    if label == FLOAT_LABEL:
        return (0, 0, 0, label)
    match = _LABEL_RE.match(label)
    if match is None:
        return (2, 0, 0, label)
    if match.group(3) is not None:
        w_bits = a_bits = int(match.group(3))
    else:
        w_bits = int(match.group(1))
        a_bits = FLOAT_BITS if match.group(2) == "fp" else int(match.group(2))
    return (1, -w_bits, -a_bits, label)
