"""SGD with momentum in the low-precision arithmetic of Courbariaux et al. (2014).

The reference code's ``parameter_updates``.

For each layer's W and b, with the layer's number groups (qgen.quant.fixed_point) and learning rate
ε, momentum M:

    g      = fmt(∂E/∂W)                                   propagation bits, range of dE/dW
    u      = fmt(M·u − ε·g)                               propagation bits, range of the update
    W      = fmt(W + u)                                   update bits, range of W
    W      = fmt(W · min(‖W_j‖, c)/(1e-7 + ‖W_j‖))         max column norm c per unit j (weights only)

Overflow rates (dynamic fixed point) are counted on g, on the previous u (propagation bits) and on the
previous W, b (update bits), as in the reference, once per batch. Weight decay is not part of the
paper's recipe and is refused.

Each tensor is rounded in place where the optimizer owns it (ε·g comes out of g's rounding as one
product, the new u is rounded into u, the new W into W), and the overflow counts of u and W are taken
while they are rounded: the next batch adds them instead of counting the same values again, unless the
values, their group's range or the bit width changed in between (then it counts them afresh).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch

from qgen.quant.fixed_point import NumberGroup
from qgen.quant.low_precision import LowPrecisionLinear


class LowPrecisionSGD(torch.optim.Optimizer):
    def __init__(
        self,
        layers: Iterable[LowPrecisionLinear],
        lr: float,
        momentum: float = 0.5,
        max_col_norm: float | None = None,
    ) -> None:
        self.layers = list(layers)
        params = [p for layer in self.layers for p in (layer.weight, layer.bias)]
        super().__init__(params, {"lr": lr, "momentum": momentum, "max_col_norm": max_col_norm})
        # overflow counts of a stored u or W, taken when it was rounded: {id: (tensor ref, key, counts)}
        self._counted: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        group = self.param_groups[0]
        lr, momentum, limit = group["lr"], group["momentum"], group["max_col_norm"]
        for layer in self.layers:
            g = layer.groups
            for kind, p in (("w", layer.weight), ("b", layer.bias)):
                if p.grad is None:
                    continue
                scaled_grad = g[f"dEd{kind}"].quantize(p.grad, observe=True, scale=lr)  # ε·fmt(∂E/∂W)
                state = self.state[p]
                update = state.get("update")
                if update is None:
                    update = state["update"] = torch.zeros_like(p)
                self._observe(g[f"update_{kind}"], update)
                self._observe(g[kind], p)
                self._round_into(g[f"update_{kind}"], update.mul_(momentum).sub_(scaled_grad), update)
                new = p + update
                if kind == "w" and limit is not None:
                    g["w"].quantize(new, "update", out=new)
                    norms = new.norm(dim=1, keepdim=True)
                    new.mul_(norms.clamp(max=limit) / (1e-7 + norms))
                self._round_into(g[kind], new, p)

    @staticmethod
    def _key(group: NumberGroup, stored: torch.Tensor) -> tuple:
        """What the counts of ``stored`` depend on: its values (the tensor's version and storage), the
        group's range and bit width."""
        return (stored._version, stored.data_ptr(), group.noib, group.arithmetic.nob(group.precision))

    def _round_into(self, group: NumberGroup, x: torch.Tensor, stored: torch.Tensor) -> None:
        """Round ``x`` into ``stored`` in ``group``'s format; keep its overflow counts for the next batch."""
        _, counts = group.round(x, count=True, out=stored)
        if counts is not None:
            self._counted[id(stored)] = (weakref.ref(stored), self._key(group, stored), counts)

    def _observe(self, group: NumberGroup, stored: torch.Tensor) -> None:
        """The overflow rates of the stored ``u`` or ``W``, from the counts kept when it was rounded if
        nothing they depend on changed since."""
        if not group.arithmetic.dynamic:
            return
        ref, key, counts = self._counted.get(id(stored), (None, None, None))
        known = ref is not None and ref() is stored and key == self._key(group, stored)
        group.observe(stored, counts=counts if known else None)
