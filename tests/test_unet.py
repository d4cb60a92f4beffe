"""U-Net fixed point (issue 19): the reference's Q_{i.f} quantizers, the U-Net and its quantization
placement, the dice losses and score."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from qgen.config import ConfigError
from qgen.experiments import expand_experiment
from qgen.measures.deployed import deploy, quantizers_disabled
from qgen.metrics import dice_and_loss, dice_score
from qgen.models import precision_record
from qgen.models.build import build_model
from qgen.models.unet import FIRST_BLOCK, UNet
from qgen.quant import ActivationQuant, FixedPointIF, QuantConv2d, layer_quant
from qgen.quant.replace import quantize_model
from qgen.quant.unet_fixed import fixed_point_ste, power_of_two_fixed, saturation, to_fixed_point
from qgen.train.losses import LOSSES, bce_dice, dice_loss, soft_dice_loss, training_loss
from tests.conftest import DIGITS_PARAMS, make_spec

finite = st.floats(min_value=-300, max_value=300, allow_nan=False, width=32)
vectors = arrays("float32", st.integers(1, 48), elements=finite).map(torch.from_numpy)
INT_BITS = st.integers(0, 8)
FRAC_BITS = st.integers(0, 8)
REFERENCE_QUANT = {"method": "qif", "weight_format": [0, 4], "act_format": [6, 0], "variant": "gm"}


# ---- the quantizers against their closed forms -----------------------------------------------------


def gm_closed_form(x: float, i: int, f: int) -> float:
    """The GM/NIH reference, step by step: sign·round_clamp(frac, f) + sign·round_clamp(⌊|x|⌋, i) with
    round_clamp(W, n) = round(clamp(W, 0, 2^n − 1)·2^n)/2^n (Python's round: half to even, as torch)."""
    sign = (x > 0) - (x < 0)
    whole = math.floor(abs(x))
    frac = abs(x) - whole

    def round_clamp(w: float, n: int) -> float:
        return round(min(max(w, 0.0), 2.0**n - 1) * 2.0**n) / 2.0**n

    return sign * round_clamp(frac, f) + sign * round_clamp(whole, i)


def em_exponent(a: float) -> int:
    """k with 2^(k−½) ≤ a < 2^(k+½), decided exactly on a² (a float32 squared is exact in a double)."""
    k = math.frexp(a)[1] - 1  # 2^k ≤ a < 2^(k+1)
    return k + 1 if a * a >= 2.0 ** (2 * k + 1) else k


@settings(max_examples=150, deadline=None)
@given(v=vectors, i=INT_BITS, f=FRAC_BITS)
@example(v=torch.tensor([0.96875, 0.96874, 1.3, 1.99, 2.5, 0.03125, 0.09375, -0.0, 0.0, -0.5]), i=0, f=4)
@example(v=torch.tensor([0.0, 0.4, 0.9999, 62.9, 63.0, 64.5, 1000.0, -70.25, -3.7]), i=6, f=0)
def test_gm_fixed_point_equals_the_reference_formula(v: torch.Tensor, i: int, f: int) -> None:
    if i + f == 0:
        with pytest.raises(ValueError, match="at least one bit"):
            to_fixed_point(v, i, f)
        return
    out = to_fixed_point(v, i, f)
    expected = torch.tensor([gm_closed_form(float(x), i, f) for x in v], dtype=torch.float32)
    assert torch.equal(out, expected)
    # the properties the docstring states: on the 2^-f grid, at most 2^i, sign kept, Q(0) = 0
    assert torch.equal(out * 2.0**f, (out * 2.0**f).round())
    assert out.abs().max() <= 2.0**i
    assert torch.all((out == 0) | (torch.sign(out) == torch.sign(v)))
    inside = v.abs() < 2**i - 0.5 * 2.0**-f  # below the integer saturation, rounding: |θ| ≤ step/2
    if f > 0:
        assert torch.all((out - v)[inside].abs() <= 0.5 * 2.0**-f)
    else:  # Q_{i.0} truncates toward zero
        assert torch.equal(out[inside], torch.trunc(v[inside]))


def test_gm_carry_wrap_and_truncation_values() -> None:
    v = torch.tensor([0.96875, 0.96874, 1.3, 1.99, 2.5, -0.75, 0.0])
    assert to_fixed_point(v, 0, 4).tolist() == [1.0, 0.9375, 0.3125, 1.0, 0.5, -0.75, 0.0]
    a = torch.tensor([0.99, 5.7, -5.7, 63.5, 100.25])
    assert to_fixed_point(a, 6, 0).tolist() == [0.0, 5.0, -5.0, 63.0, 63.0]
    assert to_fixed_point(torch.tensor([100.25]), 6, 2).tolist() == [63.25]  # the fraction is kept


@settings(max_examples=150, deadline=None)
@given(v=vectors, i=INT_BITS, f=FRAC_BITS)
@example(v=torch.tensor([0.0, -0.0, 0.7, 0.708, 0.3, -0.2, 1e-30, 40.0, -33.0]), i=0, f=4)
@example(v=torch.tensor([0.0, 5.0, 23.0, 22.0, 31.9, 45.3, 1000.0, -0.001]), i=6, f=0)
def test_em_power_of_two_equals_its_closed_form(v: torch.Tensor, i: int, f: int) -> None:
    if i + f == 0:
        return
    m = saturation(i, f)
    assert m == (2.0 ** (i - 1) if i > 0 else 0.0) + sum(2.0**-k for k in range(1, f + 1))
    out = power_of_two_fixed(v, i, f)
    assert not torch.isnan(out).any()
    for x, q in zip(v.tolist(), out.tolist(), strict=True):
        if x == 0:
            assert q == 0
            continue
        k = em_exponent(abs(x))
        sign = math.copysign(1.0, x)
        expected = sign * min(2.0**k, m)
        if q != expected:  # ln|v|/ln 2 in float32 may fall on the other side within an ulp of 2^(k±½)
            near = min(abs(abs(x) / 2.0 ** (k + 0.5) - 1), abs(abs(x) / 2.0 ** (k - 0.5) - 1))
            neighbours = {sign * min(2.0 ** (k + d), m) for d in (-1, 1)}
            assert near < 1e-5 and q in neighbours, (x, q, expected)


def test_em_rounds_in_the_log_domain_and_saturates_below_one() -> None:
    v = torch.tensor([0.7, 0.71, 0.36, 0.35, -0.1, 3.0])
    # 2^-0.5 = 0.7071: 0.7 → 0.5, 0.71 → 1 → saturated to M = 0.9375; 2^-1.5 = 0.3536
    assert power_of_two_fixed(v, 0, 4).tolist() == [0.5, 0.9375, 0.5, 0.25, -0.125, 0.9375]
    assert power_of_two_fixed(torch.tensor([23.0, 22.0, 50.0]), 6, 0).tolist() == [32.0, 16.0, 32.0]


@settings(max_examples=60, deadline=None)
@given(v=vectors, i=st.integers(0, 6), f=st.integers(1, 6), variant=st.sampled_from(["gm", "em"]))
def test_straight_through_gradient_is_the_identity_everywhere(v, i, f, variant) -> None:
    v = v.clone().requires_grad_(True)
    weights = torch.linspace(-2, 3, v.numel()).reshape(v.shape)
    (fixed_point_ste(v, i, f, variant) * weights).sum().backward()
    assert torch.equal(v.grad, weights)  # saturated and wrapped values included, as the reference


def test_straight_through_under_vmap_and_double_backward() -> None:
    v = torch.randn(3, 5, dtype=torch.float64)
    batched = torch.func.vmap(lambda x: fixed_point_ste(x, 0, 4))(v)
    assert torch.equal(batched, to_fixed_point(v, 0, 4))
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((fixed_point_ste(w, 0, 4) ** 2).sum(), w, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), w)
    assert torch.allclose(h, torch.full_like(h, 2.0))  # d²/dw² Q(w)² with the STE: 2·(∂Q/∂w)² = 2


@pytest.mark.parametrize(("i", "f"), [(0, 0), (-1, 4), (2.5, 1), (17, 0)])
def test_bad_formats_are_errors(i, f) -> None:
    with pytest.raises(ValueError, match="at least one bit"):
        FixedPointIF(i, f)


def test_bad_variant_is_an_error() -> None:
    with pytest.raises(ValueError, match="variant"):
        FixedPointIF(0, 4, variant="int")


def test_quantizer_step_and_bounds_give_the_noise_model() -> None:
    w = FixedPointIF(0, 4)
    v = torch.linspace(-0.9, 0.9, 101)
    assert w.bits == 4 and not w.needs_calibration
    assert torch.equal(w.step_for(v), torch.tensor([1 / 16]))
    assert w.level_bounds(v) == (16.0, 16.0)  # the carry reaches 1 = 16 steps
    levels = w(v) / w.step_for(v)
    assert torch.equal(levels, levels.round()) and levels.abs().max() <= 16
    a = FixedPointIF(6, 0, role="act")
    assert a.bits == 6 and a.level_bounds(v) == (63.0, 63.0) and a.step_for(v).item() == 1.0
    em = FixedPointIF(0, 4, variant="em")
    x = torch.tensor([0.3, -0.2, 0.6, 0.0])
    step = em.step_for(x)
    q = em(x)
    assert torch.allclose(step[:3], q[:3].abs() / math.sqrt(2)) and step[3] > 0
    theta = (q - x)[:3] / q[:3].abs()  # inside the log-rounding cell of its level
    assert torch.all(theta >= 1 - math.sqrt(2)) and torch.all(theta <= 1 - 1 / math.sqrt(2))
    top, _ = em.level_bounds(x)
    assert torch.allclose(top * step, torch.full_like(step, 0.9375))


# ---- the registry and the config ---------------------------------------------------------------------


def test_quantizers_through_the_registry() -> None:
    middle = layer_quant(REFERENCE_QUANT, "middle", input_signed=True)
    assert middle is not None and (middle.weight_bits, middle.act_bits) == (4, 6)
    wq, aq = middle.weight_quantizer((8, 4, 3, 3)), middle.input_quantizer()
    assert isinstance(wq, FixedPointIF) and (wq.int_bits, wq.frac_bits, wq.role) == (0, 4, "weight")
    assert isinstance(aq, FixedPointIF) and (aq.int_bits, aq.frac_bits, aq.role) == (6, 0, "act")
    em = layer_quant({**REFERENCE_QUANT, "variant": "em"}, "middle", True)
    assert em is not None and em.weight_quantizer((2, 2)).variant == "em"
    float_acts = layer_quant({**REFERENCE_QUANT, "act_format": None}, "middle", True)
    assert float_acts is not None and isinstance(float_acts.input_quantizer(), nn.Identity)
    assert layer_quant({**REFERENCE_QUANT, "first_layer": "float"}, "first", True) is None
    with pytest.raises(ValueError, match="not 8bit"):
        layer_quant({**REFERENCE_QUANT, "first_layer": "8bit"}, "first", True)
    with pytest.raises(ValueError, match="weight_format"):
        layer_quant({"method": "qif"}, "middle", True)


def _unet_spec(**quant) -> dict:
    return make_spec(model={"name": "unet", "depth": 2, "width": 4}, quant={**REFERENCE_QUANT, **quant})


def test_run_spec_resolves_the_reference_placement_and_labels_w4a6() -> None:
    spec = _unet_spec()
    quant = spec["quant"]
    assert "weight_bits" not in quant and "act_bits" not in quant  # the formats carry the precision
    assert quant["first_layer"] == "float" and quant["last_layer"] == "float"
    assert quant["first_layer_names"] == list(FIRST_BLOCK) and quant["last_layer_names"] == ["head"]
    assert spec["model"] == {"name": "unet", "depth": 2, "width": 4, "bn_momentum": 0.1, "init": "torch"}
    record = precision_record(spec)
    assert record["label"] == "w4a6" and (record["weight_bits"], record["act_bits"]) == (4, 6)
    assert precision_record(_unet_spec(weight_format=[0, 8], act_format=[8, 0]))["label"] == "8"
    assert precision_record(_unet_spec(weight_format=[0, 2], act_format=[4, 0]))["label"] == "w2a4"


def _experiment(quant: dict) -> dict:
    base = {
        "data": {"name": "digits", **DIGITS_PARAMS},
        "model": {"name": "unet", "depth": 1, "width": 2},
        "quant": quant,
        "optim": {"name": "adam", "lr": 0.001},
        "train": {"max_epochs": 1, "target_ce": None},
    }
    return {"base": base, "seeds": [0]}


def test_inapplicable_unknown_and_malformed_quant_keys_are_errors() -> None:
    runs = expand_experiment("u", _experiment(dict(REFERENCE_QUANT)), {})
    assert len(runs) == 1 and runs[0].spec["quant"]["variant"] == "gm"
    with pytest.raises(ConfigError, match=r"quant\.per_channel"):
        expand_experiment("u", _experiment({**REFERENCE_QUANT, "per_channel": True}), {})
    with pytest.raises(ConfigError, match=r"quant\.weight_bits"):
        expand_experiment("u", _experiment({**REFERENCE_QUANT, "weight_bits": 4}), {})
    with pytest.raises(ConfigError, match="weight_format"):
        expand_experiment("u", _experiment({"method": "qif"}), {})
    with pytest.raises(ConfigError, match="at least one bit"):
        expand_experiment("u", _experiment({**REFERENCE_QUANT, "act_format": [0, 0]}), {})
    with pytest.raises(ConfigError, match="not 8bit"):
        expand_experiment("u", _experiment({**REFERENCE_QUANT, "first_layer": "8bit"}), {})
    with pytest.raises(ConfigError, match="weight_format"):
        expand_experiment("u", _experiment({**REFERENCE_QUANT, "weight_format": [0, 4, 1]}), {})
    with pytest.raises(ConfigError, match="variant"):
        expand_experiment("u", _experiment({**REFERENCE_QUANT, "variant": "xx"}), {})
    with pytest.raises(ConfigError, match="weight_format"):  # a qif key under another method
        expand_experiment("u", _experiment({"method": "lsq", "weight_format": [0, 4]}), {})


# ---- the U-Net ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "depth"), [(32, 2), (48, 3), (64, 3), (200, 3), (40, 1), (16, 4)])
def test_forward_keeps_the_spatial_shape(size: int, depth: int) -> None:
    torch.manual_seed(0)
    model = build_model(
        {"model": {"name": "unet", "depth": depth, "width": 2}, "quant": REFERENCE_QUANT}, (1, size, size), 2
    )
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 1, size, size) and torch.isfinite(out).all()


def test_default_unet_is_the_reference_architecture() -> None:
    model = UNet()

    def block(i: int, o: int) -> int:  # two 3x3 convs with biases, two BatchNorms
        return 9 * i * o + o + 9 * o * o + o + 4 * o

    expected = block(1, 64) + block(64, 128) + block(128, 256) + block(256, 256)
    expected += block(512, 256) + block(384, 128) + block(192, 64) + 9 * 64 + 1
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.head.kernel_size == (3, 3) and model.head.out_channels == 1
    assert not any(isinstance(m, nn.Dropout | nn.Dropout2d) for m in model.modules())


@pytest.mark.parametrize(
    ("shape", "classes", "match"), [((1, 30, 30), 1, "divisible"), ((1, 32, 32), 3, "binary")]
)
def test_bad_inputs_are_errors(shape, classes, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(
            {"model": {"name": "unet", "depth": 2, "width": 2}, "quant": {"method": "float"}}, shape, classes
        )


def _quantized_unet(depth: int = 2, **quant) -> nn.Module:
    torch.manual_seed(0)
    spec = _unet_spec(**quant)
    spec["model"]["depth"] = depth
    return build_model(spec, (1, 16, 16), 2)


def test_placement_is_the_references() -> None:
    model = _quantized_unet()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d)}
    assert len(convs) == 11
    for name, conv in convs.items():
        assert isinstance(conv.input_quant, nn.Identity), name  # activations are quantized at the sites
        if name in (*FIRST_BLOCK, "head"):
            assert isinstance(conv.weight_quant, nn.Identity), name
        else:
            assert isinstance(conv.weight_quant, FixedPointIF) and conv.weight_quant.frac_bits == 4, name
    sites = [m for m in model.modules() if isinstance(m, ActivationQuant)]
    assert len(sites) == 2 * (2 * 2 + 1)  # every block's two BatchNorms, the first block's included
    assert all(isinstance(s.input_quant, FixedPointIF) and s.input_quant.int_bits == 6 for s in sites)
    assert all(s.signed for s in sites)  # BatchNorm outputs: sign-magnitude keeps the negatives
    sites_record = model.qgen_quantization["activation_sites"]
    assert sites_record["act_bits"] == 6 and "down.0.act1" in sites_record["modules"]


def test_decoder_conv_sees_the_upsampled_quantized_map_and_the_quantized_skip() -> None:
    model = _quantized_unet().train()  # batch statistics: BatchNorm outputs of both signs
    seen: dict[str, torch.Tensor] = {}
    model.bottom.act2.register_forward_hook(lambda _m, _a, out: seen.__setitem__("bottom", out))
    model.down[1].act2.register_forward_hook(lambda _m, _a, out: seen.__setitem__("skip", out))
    model.up[0].conv1.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0]))
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16) * 3)
    bottom, skip, conv_in = seen["bottom"], seen["skip"], seen["in"]
    assert torch.equal(bottom, bottom.round()) and torch.equal(skip, skip.round())  # Q6.0: integers
    assert (seen["bottom"] != 0).any()
    # a BatchNorm output below -1 keeps its sign (sign-magnitude truncation: -2.7 -> -2, -0.9 -> -0)
    assert model.bottom.act2(torch.tensor([-2.7, -0.9, 0.9])).tolist() == [-2.0, -0.0, 0.0]
    c = bottom.shape[1]
    upsampled = F.interpolate(bottom, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(conv_in[:, :c], upsampled) and torch.equal(conv_in[:, c:], skip)
    assert not torch.equal(upsampled, upsampled.round())  # between levels, as in the reference


def test_float_unet_is_unchanged_by_module_replacement_and_quantizers_disabled_gives_it() -> None:
    torch.manual_seed(0)
    plain = UNet(depth=2, width=3).eval()
    quantized = copy.deepcopy(plain)
    record = quantize_model(
        quantized,
        {
            "method": "qif",
            "weight_format": [0, 4],
            "act_format": [6, 0],
            "first_layer_names": list(FIRST_BLOCK),
            "last_layer_names": ["head"],
            "first_layer": "float",
            "last_layer": "float",
        },
    )
    assert record.graph
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert not torch.equal(quantized(x), plain(x))
        with quantizers_disabled(quantized):
            assert torch.allclose(quantized(x), plain(x), atol=1e-6)
    floated = copy.deepcopy(plain)
    quantize_model(floated, {"method": "float"})
    with torch.no_grad():
        assert torch.equal(floated(x), plain(x))


def test_unit_uniform_init_is_the_references_on_the_quantized_convs() -> None:
    torch.manual_seed(0)
    model = UNet(depth=2, width=8, init="unit_uniform")
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            top = float(m.weight.detach().abs().max())
            if name in (*FIRST_BLOCK, "head"):
                assert top < 0.5, name  # PyTorch's default, bound 1/sqrt(fan_in)
            else:
                assert 0.9 < top <= 1.0 and torch.count_nonzero(m.bias) == 0, name


def test_no_batchnorm_folds_so_measured_weights_stay_on_the_grid() -> None:
    model = _quantized_unet().eval()
    deployed = deploy(model)
    record = deployed.batchnorm.to_dict()
    assert record["folded"] == 0 and record["unfolded"] == 10
    weights = deployed.weights()
    w = weights["down.1.conv1.weight"]
    assert torch.equal(w * 16, (w * 16).round())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), atol=1e-6)


def test_one_training_step_with_bce_dice_reaches_every_parameter() -> None:
    model = _quantized_unet(variant="em").train()
    x = torch.randn(2, 1, 16, 16)
    y = (torch.rand(2, 1, 16, 16) > 0.5).float()
    loss = training_loss("bce_dice", model)(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---- dice ------------------------------------------------------------------------------------------------


def _logits(pred: list[list[int]]) -> torch.Tensor:
    return (torch.tensor(pred, dtype=torch.float32) * 2 - 1).mul(10).reshape(len(pred), 1, 2, 2)


def test_dice_score_matches_hand_computed_values() -> None:
    logits = _logits([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    target = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]]).reshape(4, 2, 2)
    # TP/FP/FN: (1, 1, 1) → 2/4; both empty → `empty`; missed → 0; (3, 1, 0) → 6/7
    assert dice_score(logits, target).tolist() == [0.5, 1.0, 0.0, 6 / 7]
    assert dice_score(logits, target, empty=0.0).tolist() == [0.5, 0.0, 0.0, 6 / 7]  # the reference's 0
    soft = torch.full((1, 1, 2, 2), 5.0)  # sigmoid 0.9933: positive at 0.5, negative at 0.999
    ones = torch.ones(1, 2, 2)
    assert dice_score(soft, ones).item() == 1.0 and dice_score(soft, ones, threshold=0.999).item() == 0.0
    with pytest.raises(ValueError, match="threshold"):
        dice_score(soft, ones, threshold=1.0)


def test_dice_losses_match_hand_computed_values_and_bce_dice_is_the_half_sum() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    expected = 1 - (2 * 1.0 + 1e-4) / (2.0 + 2.0 + 1e-4)
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert bce_dice(logits, target).item() == pytest.approx(0.5 * math.log(2) + 0.5 * expected, rel=1e-6)
    z, t = torch.randn(3, 1, 4, 4), (torch.rand(3, 1, 4, 4) > 0.5).float()
    half_sum = 0.5 * F.binary_cross_entropy_with_logits(z, t) + 0.5 * dice_loss(z, t)
    assert torch.allclose(bce_dice(z, t), half_sum)
    empty = torch.zeros(1, 1, 2, 2)
    assert dice_loss(torch.full((1, 1, 2, 2), -30.0), empty).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.full((1, 1, 2, 2), 30.0), empty).item() == pytest.approx(1.0, abs=1e-4)
    assert {"dice", "bce_dice"} <= set(LOSSES)
    zd = z.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: soft_dice_loss(a, t.double()), (zd,))


def test_dice_and_loss_is_a_per_image_mean_independent_of_the_batching() -> None:
    torch.manual_seed(0)
    model = UNet(depth=1, width=2).eval()
    x, y = torch.randn(5, 1, 8, 8), (torch.rand(5, 8, 8) > 0.5).float()
    with torch.no_grad():
        logits = model(x)
    expected_dice = float(dice_score(logits, y).mean())
    expected_loss = float(soft_dice_loss(logits.double(), y, per_image=True).mean())
    for size in (1, 2, 5):
        batches = [(x[i : i + size], y[i : i + size]) for i in range(0, 5, size)]
        d, loss = dice_and_loss(model, batches, "dice")
        assert d == pytest.approx(expected_dice, abs=1e-12) and loss == pytest.approx(expected_loss, rel=1e-9)
    d, loss = dice_and_loss(model, [(x, y)], "bce_dice", threshold=0.999, empty=0.0)
    assert loss == pytest.approx(float(bce_dice(logits.double(), y, per_image=True).mean()), rel=1e-9)
    with pytest.raises(ValueError, match="no examples"):
        dice_and_loss(model, [], "dice")
