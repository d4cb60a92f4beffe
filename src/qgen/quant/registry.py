"""Map the ``quant`` section of a run spec to the quantizers of each layer.

The first/last-layer policy (``same``, ``float`` or ``8bit``) is applied here and recorded in the
run spec, so a table can say how the network's ends were treated. Method ``noise`` (qgen.quant.noise)
gives the roles named in ``quant.noise_on`` (default: every quantized one) a
:class:`~qgen.quant.noise.NoiseQuantizer` and the other quantized roles the uniform quantizer that
rounds on the same grid. The low-precision arithmetic
formats of Courbariaux et al. (2014) (``half``, ``fixed``, ``dynamic_fixed``) are not per-layer
quantizers: they belong to the maxout network (qgen.models.maxout). Method ``qif`` is the U-Net paper's
Q_{i.f} (qgen.quant.unet_fixed; AskariHemmat et al. 2019): weights at ``quant.weight_format`` [i, f],
activations at ``quant.act_format`` (null: float), ``quant.variant`` gm or em; its bit widths are i + f
(the paper's count) and its first/last-layer policy is ``same`` or ``float`` (no ``8bit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from qgen.quant.binary import BinaryQuantizer
from qgen.quant.noise import NOISE_ROLES, NoiseQuantizer
from qgen.quant.quantizers import LSQQuantizer, Quantizer, UniformQuantizer
from qgen.quant.unet_fixed import FixedPointIF

QUANTIZERS: dict[str, type[Quantizer]] = {
    "uniform": UniformQuantizer,
    "lsq": LSQQuantizer,
    "noise": NoiseQuantizer,
    "qif": FixedPointIF,
}
#: weight-only methods with their own options (quant section keys passed to the quantizer)
WEIGHT_ONLY: dict[str, tuple[type[Quantizer], tuple[str, ...]]] = {
    "binary": (BinaryQuantizer, ("stochastic", "H", "lr_scale", "test_time")),
}
#: quant section keys passed to the quantizers of a per-layer method
OPTIONS: dict[str, tuple[str, ...]] = {
    "uniform": ("grid",),
    "noise": ("grid", "noise_on", "noise_clip", "noise_eval"),
    "qif": ("weight_format", "act_format", "variant"),
}
#: methods whose layers take their formats from the quant section rather than bit widths
FORMAT_METHODS = ("qif",)
#: formats of the low-precision arithmetic, which only the maxout network implements
ARITHMETIC_FORMATS = ("half", "fixed", "dynamic_fixed")


@dataclass(frozen=True)
class LayerQuant:
    """How one layer is quantized: its weights and the activations entering it."""

    method: str
    weight_bits: int | None
    act_bits: int | None
    per_channel: bool
    input_signed: bool
    options: tuple[tuple[str, Any], ...] = ()

    def weight_quantizer(self, weight_shape: tuple[int, ...]) -> nn.Module:
        if self.method in WEIGHT_ONLY:
            return WEIGHT_ONLY[self.method][0](weight_shape, **dict(self.options))
        if self.weight_bits is None:
            return nn.Identity()
        return self._quantizer(
            "weight",
            self.weight_bits,
            signed=True,
            channels=weight_shape[0] if self.per_channel else None,
            ndim=len(weight_shape),
        )

    def input_quantizer(self) -> nn.Module:
        if self.act_bits is None or self.method in WEIGHT_ONLY:
            return nn.Identity()
        return self._quantizer("act", self.act_bits, signed=self.input_signed)

    def _quantizer(self, role: str, bits: int, signed: bool, **shape: Any) -> Quantizer:
        options = dict(self.options)
        method = self.method
        if method in FORMAT_METHODS:
            fmt = options["weight_format" if role == "weight" else "act_format"]
            return FixedPointIF(*fmt, variant=options.get("variant", "gm"), role=role, signed=signed)
        if method == "noise":
            noise_on = options.pop("noise_on", NOISE_ROLES)
            if role not in noise_on:  # rounded on the same grid: the matched uniform quantizer
                method = "uniform"
                options = {k: v for k, v in options.items() if k in OPTIONS["uniform"]}
        return QUANTIZERS[method](bits, signed=signed, role=role, **shape, **options)


def layer_quant(quant: dict[str, Any], position: str, input_signed: bool) -> LayerQuant | None:
    """Quantization of a layer at ``position`` (first, middle or last); None keeps it float."""
    method = quant["method"]
    if method == "float":
        return None
    if method in ARITHMETIC_FORMATS:
        raise ValueError(
            f"quant.method {method!r} is a low-precision arithmetic format of Courbariaux et al. (2014); "
            "it applies to model.name: maxout only"
        )
    if method not in QUANTIZERS and method not in WEIGHT_ONLY:
        known = ", ".join(["float", *QUANTIZERS, *WEIGHT_ONLY, *ARITHMETIC_FORMATS])
        raise ValueError(f"unknown quantization method {method!r}; known: {known}")
    policy = quant.get(f"{position}_layer", "same") if position in ("first", "last") else "same"
    if policy == "float":
        return None
    if method in WEIGHT_ONLY:
        keys = WEIGHT_ONLY[method][1]
        options = tuple((k, quant[k]) for k in keys if k in quant)
        return LayerQuant(method, None, None, False, input_signed, options)
    w_bits, a_bits = quant.get("weight_bits"), quant.get("act_bits")
    if method in FORMAT_METHODS:
        if policy == "8bit":
            raise ValueError(f"quant.method {method}: first_layer/last_layer may be same or float, not 8bit")
        w_bits, a_bits = format_bits(quant.get("weight_format")), format_bits(quant.get("act_format"))
        if w_bits is None:
            raise ValueError(f"quant.method {method} needs quant.weight_format [int_bits, frac_bits]")
    if policy == "8bit":
        w_bits = 8 if w_bits is not None else None
        a_bits = 8 if a_bits is not None else None
    options = tuple(
        (k, tuple(quant[k]) if isinstance(quant[k], list) else quant[k])
        for k in OPTIONS.get(method, ())
        if k in quant
    )
    return LayerQuant(method, w_bits, a_bits, bool(quant.get("per_channel", False)), input_signed, options)


def format_bits(fmt: Any) -> int | None:
    """i + f of a Q_{i.f} format [i, f] (the paper's bit count, no sign bit); None for None."""
    if fmt is None:
        return None
    if not isinstance(fmt, list | tuple) or len(fmt) != 2:
        raise ValueError(f"a fixed-point format is [int_bits, frac_bits], got {fmt!r}")
    return int(fmt[0]) + int(fmt[1])
