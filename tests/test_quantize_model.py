"""Quantization by module replacement (qgen.quant.replace): which layers, how, and what it records."""

from __future__ import annotations

import pytest
import torch
import torchvision
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from qgen.quant import (
    BinaryQuantizer,
    LSQQuantizer,
    QuantConv2d,
    QuantLinear,
    QuantModule,
    UniformQuantizer,
    init_quantizers,
    quant_layers,
)
from qgen.quant.attention import QuantAttention
from qgen.quant.replace import layer_order, quantize_model

BINARY = {"method": "binary", "H": 1, "stochastic": False, "lr_scale": "glorot", "test_time": "binary"}
LSQ44 = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "8bit", "last_layer": "8bit"}


def tiny_vit() -> nn.Module:
    return VisionTransformer(img_size=16, patch_size=4, num_classes=10, embed_dim=24, depth=2, num_heads=3)


def bits(model: nn.Module) -> dict[str, tuple[int | None, int | None]]:
    return {
        name: (getattr(m.weight_quant, "bits", None), getattr(m.input_quant, "bits", None))
        for name, m in quant_layers(model)
    }


def test_every_conv_and_linear_is_replaced_and_the_ends_follow_the_policy() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    record = quantize_model(model, LSQ44)
    assert [n for n, _ in quant_layers(model)] == convs  # nothing missed, nothing else touched
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    b = bits(model)
    assert b["conv1"] == (8, 8) and b["fc"] == (8, 8)
    assert {v for k, v in b.items() if k not in ("conv1", "fc")} == {(4, 4)}
    positions = {r.module: r.position for r in record.layers}
    assert positions["conv1"] == "first" and positions["fc"] == "last"
    assert sum(p == "middle" for p in positions.values()) == len(convs) - 2
    assert record.graph and record.to_dict()["quantized"] == len(convs)


def test_the_policy_applies_by_name_to_the_layers_named() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    quant = {**LSQ44, "first_layer_names": ["conv1", "layer*.0.downsample.0"], "last_layer": "float"}
    quantize_model(model, quant)
    b = bits(model)
    assert b["conv1"] == b["layer2.0.downsample.0"] == b["layer4.0.downsample.0"] == (8, 8)
    assert b["layer1.0.conv1"] == (4, 4) and b["fc"] == (None, None)
    with pytest.raises(ValueError, match="names no conv/linear layer"):
        quantize_model(torchvision.models.resnet18(num_classes=10), {**LSQ44, "last_layer_names": ["head"]})


def test_input_signs_come_from_the_graph() -> None:
    signs = dict(layer_order(torchvision.models.resnet18(num_classes=10))[0])
    assert signs["conv1"] and not any(v for k, v in signs.items() if k != "conv1")  # after ReLUs
    signs = dict(layer_order(torchvision.models.mobilenet_v2(num_classes=10))[0])
    assert signs["features.0.0"]  # the image
    assert not signs["features.2.conv.1.0"]  # depthwise conv after ReLU6
    assert signs["features.3.conv.0.0"]  # expansion conv after the linear bottleneck (and a residual sum)
    assert not signs["classifier.1"]  # pooled ReLU6 output through dropout
    signs = dict(layer_order(tiny_vit())[0])
    assert all(signs.values())  # LayerNorm and GELU outputs are signed
    quantize_model(m := torchvision.models.mobilenet_v2(num_classes=10), LSQ44)
    assert m.features[3].conv[0][0].input_quant.signed and not m.features[2].conv[1][0].input_quant.signed


@pytest.mark.parametrize(
    "make",
    [
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda: torchvision.models.mobilenet_v2(num_classes=10),
        tiny_vit,
    ],
)
def test_float_quantization_leaves_the_function_unchanged_and_draws_nothing(make) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 32, 32) if not isinstance(model, VisionTransformer) else torch.randn(2, 3, 16, 16)
    ref = model(x)
    state = torch.get_rng_state()
    quantize_model(model, {"method": "float"})
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model(x), ref)
    assert all(isinstance(m.weight_quant, nn.Identity) for _, m in quant_layers(model))


def test_twins_share_the_float_parameters() -> None:
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, dilation=1, bias=False)
    twin = QuantConv2d.from_float(conv, None)
    assert twin.weight is conv.weight and twin.bias is None
    assert (twin.stride, twin.padding, twin.groups) == ((2, 2), (1, 1), 2)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(twin(x), conv(x))
    linear = nn.Linear(5, 3)
    assert torch.equal(QuantLinear.from_float(linear, None)(torch.ones(2, 5)), linear(torch.ones(2, 5)))


@pytest.mark.parametrize(
    ("quant", "kind"),
    [
        (LSQ44, LSQQuantizer),
        ({**LSQ44, "method": "uniform", "per_channel": True}, UniformQuantizer),
        (BINARY, BinaryQuantizer),
    ],
)
def test_every_quantizer_trains_through_replacement(quant, kind) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)
    quantize_model(model, quant)
    assert all(isinstance(m.weight_quant, kind) for _, m in quant_layers(model))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    init_quantizers(model, x)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    layer = model.features[5].conv[0][0]
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    if kind is LSQQuantizer:
        assert layer.weight_quant.scale.grad is not None and layer.input_quant.scale.grad is not None
    if kind is BinaryQuantizer:  # BinaryConnect's own initialization, within [-H, H]
        assert layer.weight.abs().max() <= 1


def test_binary_initialization_is_skipped_for_loaded_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = model[0].weight.detach().clone()
    quantize_model(model, BINARY, init_weights=False)
    assert torch.equal(model[0].weight, before)


def test_an_untraceable_model_falls_back_to_registration_order_and_signed_inputs() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Linear(4, 4)
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = torch.relu(x)
            return self.a(torch.relu(self.b(x)))

    record = quantize_model(Branchy(), LSQ44)
    assert not record.graph
    assert [(r.module, r.position, r.input_signed) for r in record.layers] == [
        ("b", "first", True),
        ("a", "last", True),
    ]


def test_already_quantized_layers_are_left_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    quantize_model(model, LSQ44)
    first = model[0]
    record = quantize_model(model, LSQ44)
    assert model[0] is first and record.layers == []


def test_attention_inputs_are_quantized_on_request() -> None:
    torch.manual_seed(0)
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    names = quantize_model(model, {"method": "float", "attention": True}).attention
    assert names == []  # float: no quantizers
    record = quantize_model(tiny_vit(), {**LSQ44, "weight_bits": 8, "attention": False})
    assert record.attention == []
    quantized = tiny_vit().eval()
    quantized.load_state_dict(model.state_dict())
    record = quantize_model(
        quantized, {"method": "lsq", "weight_bits": 8, "act_bits": None, "attention": True}
    )
    assert record.attention == ["blocks.0.attn", "blocks.1.attn"]
    attn = quantized.blocks[0].attn
    assert isinstance(attn, QuantAttention) and isinstance(attn, Attention)
    assert all(isinstance(getattr(attn, a), nn.Identity) for a in attn.quant_attrs)  # act_bits None
    for layer in (m for m in quantized.modules() if isinstance(m, QuantModule)):
        layer.weight_quant = nn.Identity()
    torch.testing.assert_close(quantized(x), ref, rtol=1e-5, atol=1e-6)  # explicit attention == timm's

    model = tiny_vit()
    quantize_model(model, {"method": "lsq", "weight_bits": 4, "act_bits": 4, "attention": True})
    attn = model.blocks[0].attn
    assert [getattr(attn, a).signed for a in attn.quant_attrs] == [True, True, False, True]
    init_quantizers(model, x)
    seen: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        seen.setdefault("p", out.detach())

    attn.attn_quant.register_forward_hook(keep)
    model(x).sum().backward()
    step = attn.attn_quant.step_for(seen["p"]).detach()
    levels = seen["p"] / step
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.max() <= 15 and levels.min() >= 0
    assert attn.attn_quant.scale.grad is not None
