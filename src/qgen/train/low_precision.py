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
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

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

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        group = self.param_groups[0]
        lr, momentum, limit = group["lr"], group["momentum"], group["max_col_norm"]
        for layer in self.layers:
            g = layer.groups
            for kind, p in (("w", layer.weight), ("b", layer.bias)):
                if p.grad is None:
                    continue
                grad = g[f"dEd{kind}"].quantize(p.grad)
                g[f"dEd{kind}"].observe(grad)
                state = self.state[p]
                update = state.get("update")
                if update is None:
                    update = state["update"] = torch.zeros_like(p)
                g[f"update_{kind}"].observe(update)
                g[kind].observe(p)
                update.copy_(g[f"update_{kind}"].quantize(momentum * update - lr * grad))
                new = g[kind].quantize(p + update, "update")
                if kind == "w" and limit is not None:
                    norms = new.norm(dim=1, keepdim=True)
                    new = g["w"].quantize(new * (norms.clamp(max=limit) / (1e-7 + norms)), "update")
                p.copy_(new)
