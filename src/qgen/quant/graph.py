"""The model's graph as ``torch.fx`` sees it, for what needs to know which layer feeds which: module
replacement (forward order, input signs: qgen.quant.replace) and BatchNorm folding (qgen.measures.folding).

:class:`LayerTracer` keeps conv/linear layers, quantized layers, quantizers, BatchNorms and torch.nn's own
modules as leaves; a submodule whose forward does not trace becomes one opaque call (its name in
``opaque``) instead of failing the whole trace, so the rest of the model is still seen.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from qgen.quant.layers import QuantModule
from qgen.quant.quantizers import Quantizer

#: leaves of the trace besides torch.nn's own modules: layers with weights, quantizers, BatchNorms
LEAVES = (QuantModule, nn.Linear, nn.modules.conv._ConvNd, Quantizer, _BatchNorm)


class LayerTracer(fx.Tracer):
    """fx tracer with layers, quantizers and BatchNorms as leaves, and opaque untraceable submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.opaque: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LEAVES):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        depth = len(self.module_stack)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            while len(self.module_stack) > depth:  # what the failed call left open (else its parent fails)
                self.module_stack.popitem(last=True)
            self.opaque.append(name)
            return self.create_proxy("call_module", name, args, kwargs)


def trace(model: nn.Module) -> tuple[fx.Graph, list[str]]:
    """The fx graph of ``model`` and the names of its opaque submodules; raises if ``model``'s own
    forward does not trace."""
    tracer = LayerTracer()
    return tracer.trace(model), tracer.opaque


def live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The nodes the output depends on (a partly traced opaque module leaves dead nodes behind)."""
    stack = [n for n in graph.nodes if n.op == "output"]
    live: set[fx.Node] = set()
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` inside ``root`` (``layer1.0.bn1``)."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
