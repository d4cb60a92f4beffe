"""Quantization by module replacement: any float model's conv and linear layers become quantized twins.

:func:`quantize_model` takes a float model (qgen's MLP/NiN/VGG, our CIFAR ResNets, torchvision's ResNet and
MobileNetV2, timm's ViT/DeiT, or any model made of ``nn.Conv2d``/``nn.Linear``) and the ``quant`` section of
a run spec, and swaps every conv and linear layer for its twin (:class:`~qgen.quant.layers.QuantConv2d`,
:class:`~qgen.quant.layers.QuantLinear`) that shares its parameters. What the graph decides:

- **Order and position.** The layers are ordered as the forward pass calls them (a ``torch.fx`` trace of the
  model with conv/linear layers as leaves); the first called is ``first``, the last called ``last``, every
  other ``middle``. ``quant.first_layer_names`` / ``quant.last_layer_names`` (module names or fnmatch globs)
  name the layers the first/last-layer policy applies to instead (e.g. a ResNet's stem and its projection
  shortcuts). The policy itself (``same``, ``float``, ``8bit``) is :func:`qgen.quant.registry.layer_quant`'s.
- **Input sign.** A layer's input quantizer is unsigned when the graph shows its input is produced by a
  ReLU (module, ``F.relu``, ``torch.relu``, ReLU6), possibly through ops that keep non-negative values
  non-negative (dropout, pooling, flatten and reshapes, concatenation or sums of non-negative values); it is
  signed otherwise (the image, a LayerNorm, a GELU, MobileNetV2's linear bottleneck). LSQ (Esser et al.
  2020) uses unsigned activation grids after ReLUs.

A model that fx cannot trace falls back to registration order and signed inputs everywhere (recorded as
``graph: false``). A model that places its own activation quantizers (:class:`~qgen.quant.layers.
ActivationQuant` modules, the U-Net: qgen.models.unet) gets the middle layers' input quantizer in each of
them, whatever the first/last-layer policy, and its conv/linear layers quantize their weights only
(``activation_sites`` in the record). Optionally (``quant.attention``, ViTs), the four inputs of
self-attention's two matrix products (q, k, the softmax probabilities, v) are quantized too
(:mod:`qgen.quant.attention`).

Twins are built on the meta device and take the float layer's parameters, so replacement draws no random
numbers, except where a quantizer initializes the weight itself (BinaryConnect: U(−H, H), Courbariaux et al.
2015), which ``init_weights=False`` turns off for weights loaded from a file. The returned record (one
entry per layer: name, type, position, bits, input sign) goes to metrics.json.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qgen.quant.graph import live_nodes, set_module, trace
from qgen.quant.layers import QuantConv2d, QuantLinear, QuantModule, activation_sites
from qgen.quant.registry import LayerQuant, layer_quant

#: float layers replaced by quantized twins
REPLACED: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.relu_, F.relu_}
#: modules that map a non-negative (first) input to a non-negative output
_NONNEG_MODULES = (
    nn.Dropout,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool1d,
    nn.AvgPool1d,
)
_NONNEG_FUNCTIONS = {
    torch.flatten,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
    operator.getitem,
}
_NONNEG_METHODS = {
    "flatten",
    "view",
    "reshape",
    "permute",
    "transpose",
    "contiguous",
    "mean",
    "__getitem__",
    "squeeze",
    "unsqueeze",
}


@dataclass
class LayerRecord:
    """How one layer was quantized."""

    module: str
    type: str
    position: str
    weight_bits: int | None
    act_bits: int | None
    input_signed: bool
    method: str


@dataclass
class QuantizationRecord:
    """What :func:`quantize_model` did: every replaced layer, whether the graph was traced, attention."""

    method: str
    graph: bool
    layers: list[LayerRecord] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    #: the model's own activation quantizers (ActivationQuant) that were filled, and their bits
    activation_sites: list[str] = field(default_factory=list)
    site_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        quantized = [r for r in self.layers if r.weight_bits is not None or r.act_bits is not None]
        out = {
            "method": self.method,
            "graph": self.graph,
            "layers": [asdict(r) for r in self.layers],
            "quantized": len(quantized),
            "float": len(self.layers) - len(quantized),
            "attention": list(self.attention),
        }
        if self.activation_sites:
            out["activation_sites"] = {"modules": list(self.activation_sites), "act_bits": self.site_bits}
        return out


def _nonnegative(node: Any, modules: dict[str, nn.Module], seen: dict[Any, bool]) -> bool:
    """Whether the graph guarantees that ``node``'s value is ≥ 0 (a ReLU's output, or derived from ones
    by ops that keep values non-negative)."""
    if not isinstance(node, fx.Node):
        return isinstance(node, int | float) and node >= 0
    if node in seen:
        return seen[node]
    seen[node] = False  # cycles cannot occur in an fx graph; this guards deep recursion on revisits
    result = False
    inputs = [a for a in node.args if isinstance(a, fx.Node)]
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, _RELU_MODULES):
            result = True
        elif isinstance(module, _NONNEG_MODULES):
            result = bool(inputs) and _nonnegative(inputs[0], modules, seen)
    elif node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            result = True
        elif node.target in (operator.add, torch.add, operator.mul):
            result = all(_nonnegative(a, modules, seen) for a in node.args[:2])
        elif node.target is torch.cat:
            tensors = node.args[0]
            result = isinstance(tensors, list | tuple) and all(
                _nonnegative(a, modules, seen) for a in tensors
            )
        elif node.target in _NONNEG_FUNCTIONS:
            result = bool(inputs) and _nonnegative(inputs[0], modules, seen)
    elif node.op == "call_method":
        if node.target in ("relu", "relu_"):
            result = True
        elif node.target in _NONNEG_METHODS:
            result = bool(inputs) and _nonnegative(inputs[0], modules, seen)
    seen[node] = result
    return result


def replaceable_layers(model: nn.Module) -> list[str]:
    """Names of the float conv/linear layers of ``model`` in registration order (not those already
    quantized, nor the projections inside ``nn.MultiheadAttention``, which reads their weights directly)."""
    inside_mha = {
        f"{name}.{child}" if name else child
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_modules()
        if child
    }
    return [
        n
        for n, m in model.named_modules()
        if n and isinstance(m, REPLACED) and not isinstance(m, QuantModule) and n not in inside_mha
    ]


def layer_order(model: nn.Module) -> tuple[list[tuple[str, bool]], bool]:
    """(name, input_signed) of every replaceable conv/linear layer of ``model`` in forward-call order, and
    whether it came from the fx graph (False: registration order, every input signed)."""
    layers = replaceable_layers(model)
    try:
        graph, _ = trace(model)  # layers inside an opaque submodule are appended below, signed
    except Exception:  # any untraceable model falls back to registration order
        return [(n, True) for n in layers], False
    live = live_nodes(graph)
    modules = dict(model.named_modules())
    seen: dict[Any, bool] = {}
    wanted = set(layers)
    order: list[tuple[str, bool]] = []
    called: set[str] = set()
    for node in graph.nodes:
        if node in live and node.op == "call_module" and str(node.target) in wanted:
            name = str(node.target)
            if name in called:  # a layer called twice keeps its first position; signed if either is
                continue
            called.add(name)
            source = node.args[0] if node.args else None
            order.append((name, not _nonnegative(source, modules, seen)))
    order += [(n, True) for n in layers if n not in called]  # never called in forward: kept, signed
    return order, True


def _matches(names: list[str], patterns: list[str], key: str) -> set[str]:
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"quant.{key}: {pattern!r} names no conv/linear layer of the model ({shown})")
        chosen.update(hits)
    return chosen


def positions(order: list[str], quant: dict[str, Any]) -> dict[str, str]:
    """first/middle/last of every layer: by forward position, or by the names the quant section lists."""
    first_names, last_names = quant.get("first_layer_names"), quant.get("last_layer_names")
    first = _matches(order, first_names, "first_layer_names") if first_names else set(order[:1])
    last = _matches(order, last_names, "last_layer_names") if last_names else set(order[-1:])
    both = first & last if (first_names or last_names) and len(order) > 1 else set()
    if both:
        raise ValueError(f"quant.first_layer_names and last_layer_names both name {sorted(both)}")
    out = {}
    for name in order:
        out[name] = "first" if name in first else "last" if name in last else "middle"
    return out


def _bits(lq: LayerQuant | None) -> tuple[int | None, int | None]:
    if lq is None:
        return None, None
    w = 1 if lq.method == "binary" else lq.weight_bits
    return w, (None if lq.method == "binary" else lq.act_bits)


def quantize_model(
    model: nn.Module, quant: dict[str, Any], *, init_weights: bool = True
) -> QuantizationRecord:
    """Replace every conv/linear layer of ``model`` (in place) by its quantized twin per ``quant``.

    ``quant`` is a run spec's quant section (method ``float`` gives twins whose quantizers are identities,
    so the float and quantized models share one code path). Returns what was done."""
    order, traced = layer_order(model)
    names = [n for n, _ in order]
    where = positions(names, quant)
    modules = dict(model.named_modules())
    record = QuantizationRecord(quant["method"], traced)
    sites = list(activation_sites(model))
    for name, signed in order:
        layer = modules[name]
        lq = layer_quant(quant, where[name], input_signed=signed)
        if sites and lq is not None:  # the model quantizes its activations itself
            lq = dataclasses.replace(lq, act_bits=None)
        if isinstance(layer, nn.Conv2d):
            twin: nn.Module = QuantConv2d.from_float(layer, lq, init_weight=init_weights)
        else:
            twin = QuantLinear.from_float(layer, lq, init_weight=init_weights)  # type: ignore[arg-type]
        set_module(model, name, twin)
        w_bits, a_bits = _bits(lq)
        record.layers.append(
            LayerRecord(name, type(layer).__name__, where[name], w_bits, a_bits, signed, quant["method"])
        )
    for site_name, site in sites:
        middle = layer_quant(quant, "middle", input_signed=site.signed)
        if middle is not None and middle.act_bits is not None:
            site.input_quant = middle.input_quantizer()
            record.activation_sites.append(site_name)
            record.site_bits = middle.act_bits
    if quant.get("attention"):
        from qgen.quant.attention import quantize_attention

        middle = layer_quant(quant, "middle", input_signed=True)
        if middle is not None:
            record.attention = quantize_attention(model, middle)
    return record
