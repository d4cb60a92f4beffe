"""The permutation-invariant maxout MLP of Courbariaux et al. (2014), trained in low-precision arithmetic.

flatten → LowPrecisionLinear(maxout: ``width`` units × ``pieces``) × ``depth`` → LowPrecisionLinear(softmax).
Dropout as in the reference code (PI-MNIST: keep 0.8 of the inputs, 0.5 of the hidden units; test-time
scale 1 for the input layer and 0.5 for the others). The number format of every layer comes from the
run spec's ``quant`` section (see :func:`arithmetic_from_quant`); the optimizer that rounds gradients,
updates and stored parameters is qgen.train.low_precision.LowPrecisionSGD.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from qgen.quant.fixed_point import Arithmetic
from qgen.quant.low_precision import LowPrecisionLinear, softmax_output_loss


def arithmetic_from_quant(quant: dict[str, Any]) -> Arithmetic:
    """The run spec's bit widths count the sign (the paper's convention); the code's NOB does not."""
    method = quant["method"]
    if method in ("float", "half"):
        return Arithmetic(format=method)
    return Arithmetic(
        format=method,
        prop_nob=int(quant["prop_bits"]) - 1,
        update_nob=int(quant["update_bits"]) - 1,
        initial_range=int(quant.get("initial_range", 5)),
        max_overflow=float(quant.get("max_overflow", 1e-4)),
        range_update_every=int(quant.get("range_update_every", 100)),
        range_init_epochs=int(quant.get("range_init_epochs", 0)) if method == "dynamic_fixed" else 0,
    )


class MaxoutMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int,
        pieces: int,
        quant: dict[str, Any],
        dropout: float = 0.5,
        input_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.arithmetic = arithmetic_from_quant(quant)
        a = self.arithmetic
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for i in range(depth):
            keep = 1 - (input_dropout if i == 0 else dropout)
            scale = 1.0 if i == 0 else keep  # reference: scale_input = 1, scale_hidden = p_hidden
            layers.append(LowPrecisionLinear(fan_in, width, a, pieces, "maxout", keep, scale))
            fan_in = width
        keep = 1 - (input_dropout if depth == 0 else dropout)
        layers.append(
            LowPrecisionLinear(fan_in, num_classes, a, 1, "softmax", keep, 1.0 if depth == 0 else keep)
        )
        self.net = nn.Sequential(*layers)
        # batches since the last dynamic-fixed-point range update (a buffer: checkpoints carry it)
        self.register_buffer("range_batches", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def low_precision_layers(self) -> list[LowPrecisionLinear]:
        return [m for m in self.net if isinstance(m, LowPrecisionLinear)]

    def training_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Σ_batch CE / K with the reference code's rounded output gradient."""
        return softmax_output_loss(self.low_precision_layers()[-1], logits, target)

    @torch.no_grad()
    def after_step(self) -> None:
        """Dynamic fixed point: every ``range_update_every`` batches, move each group's range."""
        a = self.arithmetic
        if not a.dynamic:
            return
        self.range_batches += 1
        if int(self.range_batches) >= a.range_update_every:
            for layer in self.low_precision_layers():
                for group in layer.groups.values():
                    group.adjust(int(self.range_batches))
            self.range_batches.zero_()

    @contextlib.contextmanager
    def range_search_precision(self, bits: int = 31) -> Iterator[None]:
        """Temporarily compute with ``bits`` bits (sign excluded), as the reference's range initialization."""
        a = self.arithmetic
        saved = (a.prop_nob, a.update_nob)
        a.prop_nob = a.update_nob = bits
        try:
            yield
        finally:
            a.prop_nob, a.update_nob = saved

    def ranges(self) -> dict[str, int]:
        """Every group's current NOIB, for logs and tests."""
        return {
            f"{i}.{name}": int(group.range)
            for i, layer in enumerate(self.low_precision_layers())
            for name, group in layer.groups.items()
        }
