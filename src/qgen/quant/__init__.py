"""Quantizers as small modules with one job each, and the quantized layers built from them.

A quantizer knows nothing of how it is trained or measured: it maps a tensor to its fake-quantized
value (same dtype and shape) and exposes its step ``Δ`` (``step_for``) and integer range (``level_bounds``).
"""

from qgen.quant.binary import BinaryQuantizer, constrain_latent_weights
from qgen.quant.fixed_point import Arithmetic, FixedPointWeight, NumberGroup, fixed_point
from qgen.quant.functional import fake_quantize, lsq_reference, range_quantize, ste_round
from qgen.quant.layers import (
    ActivationQuant,
    QuantConv2d,
    QuantLinear,
    QuantModule,
    init_quantizers,
    quant_layers,
)
from qgen.quant.low_precision import LowPrecisionLinear, softmax_output_loss
from qgen.quant.noise import NoiseQuantizer
from qgen.quant.quantizers import GRIDS, LSQQuantizer, Quantizer, UniformQuantizer, int_range
from qgen.quant.registry import LayerQuant, layer_quant
from qgen.quant.unet_fixed import FixedPointIF, fixed_point_ste, power_of_two_fixed, to_fixed_point

__all__ = [
    "GRIDS",
    "ActivationQuant",
    "Arithmetic",
    "BinaryQuantizer",
    "FixedPointIF",
    "FixedPointWeight",
    "LSQQuantizer",
    "LayerQuant",
    "LowPrecisionLinear",
    "NoiseQuantizer",
    "NumberGroup",
    "QuantConv2d",
    "QuantLinear",
    "QuantModule",
    "Quantizer",
    "UniformQuantizer",
    "constrain_latent_weights",
    "fake_quantize",
    "fixed_point",
    "fixed_point_ste",
    "init_quantizers",
    "int_range",
    "layer_quant",
    "lsq_reference",
    "power_of_two_fixed",
    "quant_layers",
    "range_quantize",
    "softmax_output_loss",
    "ste_round",
    "to_fixed_point",
]
