"""BatchNorm folding found from the model's graph, exact only (the reference code's ``_reparam``, Jiang et
al. 2019, nitarshan/robust-generalization-measures).

A folded BatchNorm goes into the conv/linear layer L that computes its input: W ← W·s per output channel,
b ← β + (b − μ)·s with s = γ/√(σ²+ε), and the BatchNorm becomes a :class:`FoldedBatchNorm` (unit scale,
zero shift). Where each BatchNorm's input comes from is read off a ``torch.fx`` trace of the eval-mode
model whose leaves are the conv/linear layers, BatchNorms, qgen's quantizers, torch.nn's own modules, and
any module whose forward fx cannot trace (kept as one opaque call), so attribute-style blocks
(torchvision's ResNet ``bn1``, ``downsample.1``) and conv → max-pool → BN (qgen's VGG) fold. A model
whose own forward does not trace falls back to the Sequential rule: a BatchNorm right after a
conv/linear layer in an ``nn.Sequential`` (``graph: False``; a Linear → BatchNorm1d pair is then assumed
to act on (N, C) tensors, as in qgen's MLP and VGG).

Exact only: a BatchNorm is folded when all of these hold, else it stays and its record says why.

- It keeps running statistics (eval mode is then the fixed map y ↦ s·y + t per channel), has one name
  and one call site, with one input.
- That input is L's output, directly or through modules that commute with y ↦ s·y + t for any input:
  identity and dropout (eval); max-pooling (``MaxPool2d``, ``AdaptiveMaxPool2d``, without indices) when
  every channel's s > 0 (max(s·y) = s·max(y) needs s ≥ 0; a zero scale is left unfolded too); average
  pooling whose window weights sum to one: ``AdaptiveAvgPool2d``, ``AvgPool2d`` with
  ``count_include_pad=False`` or with no padding and no ``ceil_mode``, never a ``divisor_override``
  (padded zeros or clipped windows would not receive the shift t). Each output on that path, L's
  included, has one user in the graph (any other user would see the unfolded values).
- L is torch's ``Conv2d`` / ``Linear`` or qgen's ``QuantConv2d`` / ``QuantLinear`` (exactly those types:
  a subclass may compute more, e.g. ``LowPrecisionLinear`` rounds and takes maxima), called once, with
  one name and a weight no other module holds; of its quantizers only the input's may be active (in the
  effective view the weight quantizer is already the identity); a ``Conv2d`` feeds a ``BatchNorm2d``, a
  ``Linear`` a ``BatchNorm1d`` whose input the graph shows is (N, C) (flattened to two dimensions,
  through rank-keeping modules: BatchNorm1d normalizes dim 1, the Linear's features only then), and L's
  output channels are the BatchNorm's.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qgen.quant import QuantConv2d, Quantizer, QuantLinear, QuantModule
from qgen.quant.graph import LayerTracer, live_nodes, set_module

BatchNorm = nn.modules.batchnorm._BatchNorm
#: layers a BatchNorm folds into: their forward is the conv/linear map of their (input-quantized) input
FOLDABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, QuantConv2d, QuantLinear)
_IDENTITIES = (nn.Identity, nn.modules.dropout._DropoutNd)  # dropout: the model is in eval mode
#: modules that keep the rank of their input (for the Linear → BatchNorm1d check)
_KEEP_RANK = (
    *_IDENTITIES,
    nn.Linear,
    nn.BatchNorm1d,
    Quantizer,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
)
_KEEP_RANK_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.dropout}
_KEEP_RANK_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


def is_weighted_layer(module: nn.Module) -> bool:
    """A conv/linear layer: qgen's quantized layers (``QuantModule``), torch's ``Linear`` and convolutions."""
    return isinstance(module, QuantModule | nn.Linear | nn.modules.conv._ConvNd)


def weighted_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The conv/linear layers of ``module`` with their names, in module order."""
    for name, layer in module.named_modules():
        if is_weighted_layer(layer):
            yield name, layer


class FoldedBatchNorm(nn.Module):
    """What folding leaves of a BatchNorm: y = x·scale + shift per channel (dim 1), with scale = 1 and
    shift = 0, so the function is unchanged; the reference code's ``_reparam`` likewise resets the
    BatchNorm to γ = 1, β = 0 and its search perturbs those parameters."""

    def __init__(self, channels: int, like: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, dtype=like.dtype, device=like.device))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=like.dtype, device=like.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


@dataclass
class BatchNormRecord:
    """One BatchNorm: the layer it was folded into and the ops between them, or why it was not folded."""

    bn: str
    folded_into: str | None = None
    through: list[str] = field(default_factory=list)
    reason: str | None = None


@dataclass
class Folding:
    """What folding did to a model: one record per BatchNorm (module order); ``graph`` True when found from
    the fx graph, False for the Sequential fallback, None when nothing was folded on purpose (latent view);
    ``scales``: each folded layer's per-channel s = γ/√(σ²+ε), by layer name."""

    graph: bool | None
    records: list[BatchNormRecord] = field(default_factory=list)
    scales: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def folded(self) -> int:
        return sum(r.folded_into is not None for r in self.records)

    @property
    def unfolded(self) -> int:
        return len(self.records) - self.folded

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "folded": self.folded,
            "unfolded": self.unfolded,
            "batchnorms": [asdict(r) for r in self.records],
        }


def unfolded(module: nn.Module, reason: str) -> Folding:
    """The record of a model whose BatchNorms are left as they are, all for ``reason``."""
    return Folding(None, [BatchNormRecord(n, reason=reason) for n, _ in _batchnorms(module)])


@torch.no_grad()
def fold_batchnorms(module: nn.Module) -> Folding:
    """Fold (in place) every BatchNorm of the eval-mode ``module`` that folds exactly; see the module
    docstring for the rules."""
    if module.training:
        raise ValueError("fold_batchnorms: the model must be in eval mode (BatchNorm uses its running stats)")
    tracer = LayerTracer()
    try:
        graph = tracer.trace(module)
    except Exception:  # any model fx cannot trace falls back to the Sequential rule
        records, traced = _sequential_records(module), False
    else:
        view = _GraphView(module, graph, tracer.opaque)
        records, traced = [view.record(n, bn) for n, bn in _batchnorms(module)], True
    folding = Folding(traced, records)
    for record in records:
        if record.folded_into is not None:
            layer, bn = module.get_submodule(record.folded_into), module.get_submodule(record.bn)
            folding.scales[record.folded_into] = _fold(layer, bn)
            set_module(module, record.bn, FoldedBatchNorm(bn.num_features, layer.weight))
    return folding


def _batchnorms(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, BatchNorm)]


def _scale(bn: nn.Module) -> torch.Tensor:
    """s = γ/√(σ²+ε) per channel (γ = 1 without affine parameters)."""
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def _fold(layer: nn.Module, bn: nn.Module) -> torch.Tensor:
    """Fold ``bn`` into ``layer`` in place: W·s per output channel, b ← β + (b − μ)·s; returns s."""
    scale = _scale(bn)
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    layer.weight.data = layer.weight.detach() * scale.reshape(shape)
    new_bias = beta + (bias - bn.running_mean) * scale
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.data = new_bias
    return scale


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[str(node.target)]).__name__})"
    if node.op == "placeholder":
        return "the model's input"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"


def _flattens_to_matrix(node: fx.Node, modules: dict[str, nn.Module]) -> bool | None:
    """For a flatten, view or reshape node: whether its result is 2-D; None for any other node."""
    if node.op == "call_module" and isinstance(modules[str(node.target)], nn.Flatten):
        flatten = modules[str(node.target)]
        return (flatten.start_dim, flatten.end_dim) == (1, -1)
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return (start, end) == (1, -1)
    if (node.op == "call_method" and node.target in ("view", "reshape")) or (
        node.op == "call_function" and node.target is torch.reshape
    ):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], list | tuple):
            sizes = tuple(sizes[0])
        return len(sizes) == 2
    return None


_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class _GraphView:
    """The traced graph's live nodes, with what the folding rules ask of them."""

    def __init__(self, module: nn.Module, graph: fx.Graph, opaque: list[str]) -> None:
        self.modules = dict(module.named_modules())
        self.live = live_nodes(graph)
        self.nodes = [n for n in graph.nodes if n in self.live]
        self.calls = Counter(str(n.target) for n in self.nodes if n.op == "call_module")
        self.opaque = opaque
        self.names = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
        self.holders = Counter(id(p) for _, p in module.named_parameters(remove_duplicate=False))

    def users(self, node: fx.Node) -> int:
        return sum(u in self.live for u in node.users)

    def record(self, name: str, bn: nn.Module) -> BatchNormRecord:
        reason = _batchnorm_reason(bn) or self._single(name, bn)
        if reason:
            return BatchNormRecord(name, reason=reason)
        (node,) = [n for n in self.nodes if n.op == "call_module" and n.target == name]
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            return BatchNormRecord(name, reason="not called on one input")
        scale = _scale(bn)
        through: list[str] = []
        source = node.args[0]
        while True:
            module = self.modules.get(str(source.target)) if source.op == "call_module" else None
            if module is None or not (is_weighted_layer(module) or isinstance(module, _IDENTITIES + _POOLS)):
                why = "is not a conv/linear layer nor an op known to commute with the BatchNorm's affine map"
                return BatchNormRecord(
                    name, through=through, reason=f"its input, {_describe(source, self.modules)}, {why}"
                )
            if not is_weighted_layer(module):
                through.insert(0, str(source.target))
            if self.users(source) != 1:
                reason = f"the output of {source.target} has {self.users(source)} users"
                return BatchNormRecord(name, through=through, reason=reason)
            if is_weighted_layer(module):
                break
            reason = _commute_reason(module, scale)
            if reason:
                return BatchNormRecord(name, through=through, reason=f"{source.target}: {reason}")
            if len(source.args) != 1 or source.kwargs or not isinstance(source.args[0], fx.Node):
                return BatchNormRecord(
                    name, through=through, reason=f"{source.target} is not called on one input"
                )
            source = source.args[0]
        layer_name = str(source.target)
        reason = (
            _pair_reason(module, bn) or self._single(layer_name, module) or self._unshared(layer_name, module)
        )
        if not reason and isinstance(module, nn.Linear) and not self._is_matrix(source.args[:1]):
            reason = (
                f"the graph does not show that {layer_name}'s output is (N, C), the dims BatchNorm1d reads"
            )
        if reason:
            return BatchNormRecord(name, through=through, reason=reason)
        return BatchNormRecord(name, layer_name, through)

    def _single(self, name: str, module: nn.Module) -> str | None:
        """Why ``module`` is not one module called once, if it is not."""
        if self.names[id(module)] > 1:
            return f"{name} is registered under {self.names[id(module)]} names"
        calls = self.calls[name]
        if calls == 1:
            return None
        if calls:
            return f"{name} is called {calls} times"
        opaque = next((o for o in self.opaque if name.startswith(o + ".")), None)
        if opaque is not None:
            return f"inside {opaque}, whose forward torch.fx cannot trace"
        leaf = next((c for c in self.calls if name.startswith(c + ".")), None)
        if leaf is not None:
            return f"inside {leaf}, which the trace keeps as one call"
        return f"{name} is not called in the model's forward"

    def _unshared(self, name: str, layer: nn.Module) -> str | None:
        shared = any(self.holders[id(p)] > 1 for p in layer.parameters(recurse=False))
        return f"{name} shares a parameter with another module" if shared else None

    def _is_matrix(self, args: tuple[Any, ...]) -> bool:
        """Whether the graph shows the value of ``args[0]`` is 2-D: flattened to two dims, then rank-keeping
        ops."""
        node = args[0] if args else None
        while isinstance(node, fx.Node):
            flat = _flattens_to_matrix(node, self.modules)
            if flat is not None:
                return flat
            if node.op == "call_module":
                keeps = isinstance(self.modules[str(node.target)], _KEEP_RANK)
            elif node.op == "call_function":
                keeps = node.target in _KEEP_RANK_FUNCTIONS
            else:
                keeps = node.op == "call_method" and node.target in _KEEP_RANK_METHODS
            if not keeps or not node.args:
                return False
            node = node.args[0]
        return False


def _commute_reason(module: nn.Module, scale: torch.Tensor) -> str | None:
    """Why ``module`` (eval mode) does not commute with y ↦ s·y + t per channel, or None if it does."""
    if isinstance(module, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
        if module.return_indices:
            return "max-pooling that returns indices"
        bad = (scale <= 0).nonzero().flatten().tolist()
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
            return (
                f"max-pooling commutes with the BatchNorm only if all γ/√(σ²+ε) > 0; channels {shown} are ≤ 0"
            )
    if isinstance(module, nn.AvgPool2d):
        if module.divisor_override is not None:
            return "average pooling with a divisor_override (window weights do not sum to one)"
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        padded = any(p != 0 for p in padding)
        if module.count_include_pad and (padded or module.ceil_mode):
            return "average pooling that counts padding or clips windows (ceil_mode) does not pass the shift"
    return None


def _batchnorm_reason(bn: nn.Module) -> str | None:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "no running statistics: in eval mode it normalizes by the batch's"
    return None


def _pair_reason(layer: nn.Module, bn: nn.Module) -> str | None:
    """Why ``bn`` does not fold into ``layer`` by their types, channels and quantizers, or None."""
    if type(layer) not in FOLDABLE_LAYERS:
        known = ", ".join(t.__name__ for t in FOLDABLE_LAYERS)
        return f"{type(layer).__name__} is not a layer folding is exact for ({known})"
    wanted = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
    if type(bn) is not wanted:
        pair = f"{type(layer).__name__} → {type(bn).__name__}"
        return f"{pair}: only Conv2d → BatchNorm2d and Linear → BatchNorm1d fold"
    channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if channels != bn.num_features:
        return f"{channels} output channels, {bn.num_features} BatchNorm features"
    active = [
        a
        for a in getattr(layer, "quant_attrs", ())
        if a != "input_quant" and not isinstance(getattr(layer, a), nn.Identity)
    ]
    if active:
        return f"the layer's {', '.join(active)} is not the identity (its output is not affine in its weight)"
    return _batchnorm_reason(bn)


def _sequential_records(module: nn.Module) -> list[BatchNormRecord]:
    """The fallback for a model fx cannot trace: BatchNorm right after a conv/linear layer in a Sequential."""
    names = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    found: dict[str, BatchNormRecord] = {}
    for prefix, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for (prev_name, prev), (name, cur) in itertools.pairwise(seq.named_children()):
            if isinstance(cur, BatchNorm) and is_weighted_layer(prev):
                bn_name, layer_name = (f"{prefix}.{n}" if prefix else n for n in (name, prev_name))
                reason = _pair_reason(prev, cur)
                if names[id(prev)] > 1 or names[id(cur)] > 1:
                    reason = reason or "the layer or the BatchNorm is registered under more than one name"
                found[bn_name] = BatchNormRecord(bn_name, None if reason else layer_name, [], reason)
    why = (
        "not right after a conv/linear layer in an nn.Sequential (the model does not trace: Sequential rule)"
    )
    return [found.get(n, BatchNormRecord(n, reason=why)) for n, _ in _batchnorms(module)]
