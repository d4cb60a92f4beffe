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


_FROZEN_MODELS = [
    (
        {
            "name": "mlp",
            "depth": 2,
            "width": 16,
            "batch_norm": True,
            "output_batch_norm": True,
            "init": "glorot",
        },
        (1, 8, 8),
    ),
    ({"name": "mlp", "depth": 3, "width": 16}, (1, 8, 8)),
    ({"name": "nin", "depth": 2, "width": 1, "base_width": 4}, (3, 16, 16)),
    ({"name": "vgg", "depth": 2, "width": 4, "fc_width": 16}, (3, 16, 16)),
]
_FROZEN_QUANT = {
    "float": {"method": "float"},
    "lsq": {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "8bit", "last_layer": "8bit"},
    "uniform": {
        "method": "uniform",
        "weight_bits": 2,
        "act_bits": None,
        "first_layer": "float",
        "last_layer": "same",
        "per_channel": True,
    },
    "binary": {"method": "binary", "H": 1, "stochastic": False, "lr_scale": "glorot", "test_time": "binary"},
}
# sha256 (16 hex digits) of the initial state dict (names and values), seed 3. The float, LSQ and
# uniform values are those of the hand-built models before module replacement (commit d42454c): the same
# run ids still build the same networks. BinaryConnect's U(-H, H) initialization now draws after every
# layer's default initialization instead of interleaved with it, so its values changed (issue 14's note).
_FROZEN_HASHES = {
    ("mlp", 0, "float"): "e4562939fff4f2cd",
    ("mlp", 0, "lsq"): "8a1cef9791db7531",
    ("mlp", 0, "uniform"): "e4562939fff4f2cd",
    ("mlp", 0, "binary"): "e381361ff9a7b384",
    ("mlp", 1, "float"): "b7a248d11e0995fe",
    ("mlp", 1, "lsq"): "7d916fc79f4d444c",
    ("mlp", 1, "uniform"): "b7a248d11e0995fe",
    ("mlp", 1, "binary"): "b6fd79de3521acfc",
    ("nin", 2, "float"): "07949dad185dcd44",
    ("nin", 2, "lsq"): "86b4f32cac81958d",
    ("nin", 2, "uniform"): "07949dad185dcd44",
    ("nin", 2, "binary"): "7c7e5a74e8d4f36d",
    ("vgg", 3, "float"): "d0023c54a177a727",
    ("vgg", 3, "lsq"): "1ed9ab084d734bbf",
    ("vgg", 3, "uniform"): "d0023c54a177a727",
    ("vgg", 3, "binary"): "0a7ecd9ff229499d",
}


@pytest.mark.parametrize("key", sorted(_FROZEN_HASHES))
def test_the_existing_models_build_the_networks_they_built_before_module_replacement(key) -> None:
    import hashlib

    _, index, method = key
    model_spec, shape = _FROZEN_MODELS[index]
    torch.manual_seed(3)
    model = build_model({"model": model_spec, "quant": _FROZEN_QUANT[method]}, shape, 10)
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.numpy().tobytes())
    assert digest.hexdigest()[:16] == _FROZEN_HASHES[key]


FAMILIES = [
    ({"name": "resnet_cifar", "depth": 20, "width": 4}, (3, 16, 16)),
    ({"name": "resnet18", "stem": "cifar"}, (3, 16, 16)),
    ({"name": "mobilenet_v2", "width_mult": 0.25}, (3, 32, 32)),
    ({"name": "vit", "depth": 1, "width": 12, "heads": 3, "patch_size": 4}, (3, 8, 8)),
]


@pytest.mark.parametrize(("model", "shape"), FAMILIES, ids=[m["name"] for m, _ in FAMILIES])
def test_summarized_plan_of_the_families_is_what_their_built_models_compute_at(model, shape) -> None:
    """The ends of a family's plan are its first and last layers; ``*`` stands for every layer between."""
    for quant in _quant_sections()[::3]:
        spec = {"model": model, "quant": quant}
        built = build_model(spec, shape, 10)
        plan = {p.layer: (p.weight_bits, p.act_bits) for p in layer_precisions(spec)}
        layers = built.qgen_quantization["layers"]
        got = {}
        for record, (_, w_bits, a_bits) in zip(layers, built_precisions(built), strict=True):
            key = record["module"] if record["position"] != "middle" else "*"
            got.setdefault(key, set()).add((w_bits, a_bits))
        assert got == {k: {v} for k, v in plan.items()}, quant


def test_named_ends_in_the_plan_and_in_the_built_model() -> None:
    quant = {"method": "lsq", "weight_bits": 2, "act_bits": 2, "first_layer": "8bit", "last_layer": "float"}
    quant |= {"first_layer_names": ["conv1", "layer*.0.downsample.0"], "last_layer_names": ["fc"]}
    spec = {"model": {"name": "resnet18", "stem": "cifar"}, "quant": quant}
    plan = precision_record(spec)
    assert plan["compact"] == "conv1:w8a8 layer*.0.downsample.0:w8a8 *:w2a2 fc:fp32" and plan["label"] == "2"
    built = build_model(spec, (3, 16, 16), 10)
    first = [r["module"] for r in built.qgen_quantization["layers"] if r["position"] == "first"]
    assert first == ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
