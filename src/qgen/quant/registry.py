"""Map the ``quant`` section of a run spec to the quantizers of each layer.

The first/last-layer policy (``same``, ``float`` or ``8bit``) is applied here and recorded in the
run spec, so a table can say how the network's ends were treated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from qgen.quant.quantizers import LSQQuantizer, Quantizer, UniformQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {"uniform": UniformQuantizer, "lsq": LSQQuantizer}


@dataclass(frozen=True)
class LayerQuant:
    """How one layer is quantized: its weights and the activations entering it."""

    method: str
    weight_bits: int | None
    act_bits: int | None
    per_channel: bool
    input_signed: bool

    def weight_quantizer(self, channels: int, ndim: int) -> nn.Module:
        if self.weight_bits is None:
            return nn.Identity()
        return QUANTIZERS[self.method](
            self.weight_bits,
            signed=True,
            role="weight",
            channels=channels if self.per_channel else None,
            ndim=ndim,
        )

    def input_quantizer(self) -> nn.Module:
        if self.act_bits is None:
            return nn.Identity()
        return QUANTIZERS[self.method](self.act_bits, signed=self.input_signed, role="act")


def layer_quant(quant: dict[str, Any], position: str, input_signed: bool) -> LayerQuant | None:
    """Quantization of a layer at ``position`` (first, middle or last); None keeps it float."""
    if quant["method"] == "float":
        return None
    if quant["method"] not in QUANTIZERS:
        raise ValueError(
            f"unknown quantization method {quant['method']!r}; known: float, {', '.join(QUANTIZERS)}"
        )
    policy = quant.get(f"{position}_layer", "same") if position in ("first", "last") else "same"
    w_bits, a_bits = quant.get("weight_bits"), quant.get("act_bits")
    if policy == "float":
        return None
    if policy == "8bit":
        w_bits = 8 if w_bits is not None else None
        a_bits = 8 if a_bits is not None else None
    return LayerQuant(quant["method"], w_bits, a_bits, bool(quant.get("per_channel", False)), input_signed)
