"""Models are built from quantizable layers and honour the first/last-layer policy."""

from __future__ import annotations

import pytest
import torch

from qgen.models import build_model
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
