"""Models are built from quantizable layers and honour the first/last-layer policy."""

from __future__ import annotations

import pytest
import torch

from qgen.models import build_model, layer_precisions, precision_record
from qgen.quant import LSQQuantizer, QuantConv2d, QuantLinear, init_quantizers, quant_layers


def layer_bits(model) -> list[tuple[int | None, int | None]]:
    out = []
    for _, layer in quant_layers(model):
        w = getattr(layer.weight_quant, "bits", None)
        a = getattr(layer.input_quant, "bits", None)
        out.append((w, a))
    return out


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        ("same", "same", [(4, 4), (4, 4), (4, 4)]),
        ("8bit", "8bit", [(8, 8), (4, 4), (8, 8)]),
        ("float", "float", [(None, None), (4, 4), (None, None)]),
    ],
)
def test_mlp_first_last_policy(first, last, expected) -> None:
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": first, "last_layer": last}
    model = build_model({"model": {"name": "mlp", "depth": 2, "width": 16}, "quant": quant}, (1, 8, 8), 10)
    assert layer_bits(model) == expected


def test_first_layer_input_is_signed_and_later_inputs_unsigned() -> None:
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "same", "last_layer": "same"}
    model = build_model(
        {"model": {"name": "nin", "depth": 2, "width": 1, "base_width": 4}, "quant": quant}, (1, 8, 8), 10
    )
    signs = [layer.input_quant.signed for _, layer in quant_layers(model)]
    assert signs[0] is True and not any(signs[1:])


def test_nin_structure_follows_jiang_et_al() -> None:
    quant = {"method": "float"}
    model = build_model(
        {"model": {"name": "nin", "depth": 3, "width": 2, "base_width": 25}, "quant": quant}, (3, 32, 32), 10
    )
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 3 * 3 + 1
    assert [c.kernel_size[0] for c in convs[:3]] == [3, 1, 1] and convs[0].stride == (2, 2)
    assert all(c.out_channels == 50 for c in convs[:-1]) and convs[-1].out_channels == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_float_model_has_no_quantizers_and_quantized_model_has_lsq() -> None:
    spec = {"model": {"name": "mlp", "depth": 1, "width": 8}}
    fp = build_model({**spec, "quant": {"method": "float"}}, (1, 8, 8), 10)
    q = build_model({**spec, "quant": {"method": "lsq", "weight_bits": 2, "act_bits": 2}}, (1, 8, 8), 10)
    assert not any(isinstance(m, LSQQuantizer) for m in fp.modules())
    assert sum(isinstance(m, LSQQuantizer) for m in q.modules()) == 4


def test_effective_weights_are_on_the_grid_after_calibration() -> None:
    torch.manual_seed(0)
    quant = {"method": "lsq", "weight_bits": 3, "act_bits": 3, "first_layer": "same", "last_layer": "same"}
    model = build_model({"model": {"name": "mlp", "depth": 2, "width": 16}, "quant": quant}, (1, 8, 8), 10)
    init_quantizers(model, torch.randn(32, 1, 8, 8))
    for _, layer in quant_layers(model):
        assert isinstance(layer, QuantLinear)
        s = layer.weight_quant.scale.detach()
        levels = layer.effective_weight().detach() / s
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.min() >= -4 and levels.max() <= 3


def test_calibration_leaves_batchnorm_statistics_untouched() -> None:
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4}
    model = build_model(
        {"model": {"name": "nin", "depth": 1, "width": 1, "base_width": 8}, "quant": quant}, (1, 8, 8), 10
    )
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    init_quantizers(model, torch.randn(16, 1, 8, 8) * 3 + 1)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# ---- the precision plan (qgen.models.precision) against the built models ---------------------------
POLICIES = ("same", "float", "8bit")
ARCHITECTURES = [
    ({"name": "mlp", "depth": 1, "width": 8}, (1, 8, 8)),
    ({"name": "mlp", "depth": 3, "width": 8, "batch_norm": True}, (1, 8, 8)),
    ({"name": "nin", "depth": 2, "width": 1, "base_width": 4}, (1, 8, 8)),
    ({"name": "vgg", "depth": 2, "width": 4, "fc_width": 8}, (3, 8, 8)),
]


def _quant_sections() -> list[dict]:
    out: list[dict] = [{"method": "float"}]
    for method in ("uniform", "lsq"):
        for w_bits, a_bits in ((4, 4), (2, 8), (8, None)):
            for first in POLICIES:
                for last in POLICIES:
                    out.append(
                        {"method": method, "weight_bits": w_bits, "act_bits": a_bits}
                        | {"first_layer": first, "last_layer": last, "per_channel": w_bits == 2}
                    )
    for first in ("same", "float"):
        for last in ("same", "float"):
            out.append(
                {"method": "binary", "stochastic": first == last, "first_layer": first, "last_layer": last}
            )
    return out


def built_precisions(model) -> list[tuple[str, int, int | None]]:
    """(kind, weight bits, activation bits) of every quantized module of a built model, in forward order,
    read from its quantizers (32 for float weights, None for float activations)."""
    from torch import nn

    from qgen.quant.fixed_point import HalfWeight
    from qgen.quant.low_precision import LowPrecisionLinear

    out = []
    for _, layer in quant_layers(model):
        kind = "fc" if isinstance(layer, nn.Linear) else "conv"
        wq = layer.weight_quant
        w_bits = 16 if isinstance(wq, HalfWeight) else 32 if isinstance(wq, nn.Identity) else wq.bits
        if isinstance(layer, LowPrecisionLinear):  # the values the layer computes (z, y) are rounded
            fmt = layer.arithmetic.format
            a_bits = None if fmt == "float" else 16 if fmt == "half" else layer.arithmetic.prop_nob + 1
            assert layer.value_rounding
        else:
            iq = layer.input_quant
            a_bits = None if isinstance(iq, nn.Identity) else iq.bits
        out.append((kind, w_bits, a_bits))
    return out


def planned(spec: dict) -> list[tuple[str, int, int | None]]:
    return [(p.layer.rstrip("0123456789"), p.weight_bits, p.act_bits) for p in layer_precisions(spec)]


@pytest.mark.parametrize(("model", "shape"), ARCHITECTURES, ids=["mlp1", "mlp3_bn", "nin2", "vgg2"])
def test_precision_plan_is_what_the_built_model_computes_at(model, shape) -> None:
    """Every model x quantizer x first/last-layer policy: the plan equals the built model's quantizers."""
    for quant in _quant_sections():
        spec = {"model": model, "quant": quant}
        built = build_model(spec, shape, 10)
        assert planned(spec) == built_precisions(built), quant
        names = [p.layer for p in layer_precisions(spec)]
        assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    "quant",
    [
        {"method": "float"},
        {"method": "half"},
        {"method": "fixed", "prop_bits": 8, "update_bits": 12},
        {"method": "dynamic_fixed", "prop_bits": 10, "update_bits": 12, "range_init_epochs": 0},
    ],
)
@pytest.mark.parametrize("depth", [1, 2])
def test_precision_plan_of_the_maxout_arithmetic(quant, depth) -> None:
    spec = {"model": {"name": "maxout", "depth": depth, "width": 4, "pieces": 2}, "quant": quant}
    assert planned(spec) == built_precisions(build_model(spec, (1, 8, 8), 10))
    assert len(layer_precisions(spec)) == depth + 1


def test_precision_plan_names_each_layer_and_keeps_the_ends_at_eight_bits() -> None:
    quant = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "8bit", "last_layer": "8bit"}
    record = precision_record({"model": {"name": "mlp", "depth": 2, "width": 8}, "quant": quant})
    assert record["compact"] == "fc1:w8a8 fc2:w4a4 fc3:w8a8"
    assert (record["weight_bits"], record["act_bits"], record["label"]) == (4, 4, "4")
    assert record["layers"][1] == {"layer": "fc2", "position": "middle", "weight_bits": 4, "act_bits": 4}
    # a depth-1 MLP has only a first and a last layer: its "4-bit" run is an 8-bit model
    shallow = precision_record({"model": {"name": "mlp", "depth": 1, "width": 8}, "quant": quant})
    assert shallow["compact"] == "fc1:w8a8 fc2:w8a8" and shallow["label"] == "8"
