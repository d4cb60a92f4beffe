"""BatchNorm folding from the model's graph (qgen.measures.folding): exact folds preserve eval outputs
(qgen's VGG, NiN and BN-MLP, torchvision's ResNet-18 and MobileNetV2, attribute-style blocks), inexact
paths stay unfolded with their reason, the record names every BatchNorm, the Sequential fallback for
models fx cannot trace; the weights and perturbed parameters of models quantized by module replacement."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qgen.config import measures_schema, validate
from qgen.measures.deployed import FoldedBatchNorm, deploy, quantizers_disabled
from qgen.measures.folding import BatchNormRecord
from qgen.measures.run import measure_run
from qgen.models import build_model
from qgen.quant import Quantizer, QuantModule, init_quantizers
from tests.conftest import TINY_MEASURES, make_spec

BatchNorm = nn.modules.batchnorm._BatchNorm


def _randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random γ, β and running statistics, so that folding changes every folded layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _assert_preserved(model: nn.Module, x: torch.Tensor, atol: float = 1e-10) -> None:
    view = deploy(model)
    with torch.no_grad():
        want = model(x)
        assert torch.allclose(view(x), want, rtol=1e-9, atol=atol)
        assert torch.allclose(view(x, view.perturbable("all")), want, rtol=1e-9, atol=atol)


def _folded(view) -> dict[str, str | None]:
    return {r.bn: r.folded_into for r in view.batchnorm.records}


def _float(spec_model: dict, input_shape: tuple[int, ...], classes: int = 3) -> nn.Module:
    model = build_model({"model": spec_model, "quant": {"method": "float"}}, input_shape, classes)
    return _randomize_batchnorms(model).double()


# --- qgen's models ----------------------------------------------------------------------------------


def test_vgg_folds_every_batchnorm_also_after_max_pooling() -> None:
    model = _float({"name": "vgg", "depth": 2, "width": 4, "fc_width": 8}, (3, 8, 8))
    view = deploy(model)
    assert view.batchnorm.graph is True and view.batchnorm.unfolded == 0
    records = {r.bn: r for r in view.batchnorm.records}
    assert [n for n, m in model.named_modules() if isinstance(m, BatchNorm)] == list(records)
    assert records["net.5"] == BatchNormRecord("net.5", "net.3", ["net.4"], None)  # conv → max-pool → BN
    assert records["net.1"] == BatchNormRecord("net.1", "net.0", [], None)
    assert _folded(view)["net.22"] == "net.21"  # the output layer's BatchNorm1d
    assert not any(isinstance(m, BatchNorm) for m in view.module.modules())
    _assert_preserved(model, torch.randn(5, 3, 8, 8, dtype=torch.float64))


def test_a_negative_scale_before_max_pooling_stays_unfolded() -> None:
    model = _float({"name": "vgg", "depth": 1, "width": 4, "fc_width": 8}, (3, 8, 8))
    with torch.no_grad():
        model.net[5].weight[2] = -0.7  # max(s·y) ≠ s·max(y) for s < 0
    view = deploy(model)
    record = next(r for r in view.batchnorm.records if r.bn == "net.5")
    assert record.folded_into is None and record.through == ["net.4"]
    assert "max-pooling" in record.reason and "channels 2 are ≤ 0" in record.reason
    assert isinstance(view.module.net[5], nn.BatchNorm2d) and view.batchnorm.folded == 4
    _assert_preserved(model, torch.randn(5, 3, 8, 8, dtype=torch.float64))


def test_quantized_vgg_keeps_its_outputs_and_the_steps_follow_the_fold() -> None:
    torch.manual_seed(0)
    spec = {
        "model": {"name": "vgg", "depth": 1, "width": 4, "fc_width": 8},
        "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 8, "first_layer": "same"},
    }
    model = build_model(spec, (3, 8, 8), 3)
    x = torch.randn(16, 3, 8, 8)
    init_quantizers(model, x)
    _randomize_batchnorms(model)
    view = deploy(model)
    bn = model.net[5]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    step = model.net[3].weight_quant.step_for(model.net[3].weight)
    with torch.no_grad():
        assert torch.allclose(view.steps["net.3.weight"], step * scale.abs().reshape(-1, 1, 1, 1))
        assert torch.allclose(
            view.weights()["net.3.weight"], model.net[3].effective_weight() * scale.reshape(-1, 1, 1, 1)
        )
        assert torch.allclose(view(x), model(x), atol=1e-4)


@pytest.mark.parametrize(
    ("model_spec", "shape", "count"),
    [
        ({"name": "nin", "depth": 2, "width": 1, "base_width": 4, "dropout": 0.3}, (3, 8, 8), 7),
        (
            {"name": "mlp", "depth": 2, "width": 6, "batch_norm": True, "output_batch_norm": True},
            (1, 3, 3),
            3,
        ),
    ],
)
def test_nin_and_the_batchnorm_mlp_fold_every_batchnorm(model_spec, shape, count) -> None:
    model = _float(model_spec, shape)
    view = deploy(model)
    assert view.batchnorm.folded == count and view.batchnorm.unfolded == 0
    assert all(r.through == [] for r in view.batchnorm.records)
    _assert_preserved(model, torch.randn(6, *shape, dtype=torch.float64))


# --- torchvision ------------------------------------------------------------------------------------


def test_resnet18_folds_all_twenty_batchnorms_into_their_convs() -> None:
    model = _randomize_batchnorms(torchvision.models.resnet18(weights=None, num_classes=5)).double()
    view = deploy(model)
    folded = _folded(view)
    assert len(folded) == 20 and view.batchnorm.unfolded == 0
    assert folded == {bn: bn.replace("bn", "conv").replace("downsample.1", "downsample.0") for bn in folded}
    assert isinstance(view.module.layer2[0].downsample[1], FoldedBatchNorm)
    assert isinstance(view.module.layer1[0].bn1, FoldedBatchNorm)
    _assert_preserved(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_mobilenet_v2_folds_every_batchnorm() -> None:
    model = _randomize_batchnorms(torchvision.models.mobilenet_v2(weights=None, num_classes=5)).double()
    view = deploy(model)
    assert view.batchnorm.folded == 52 and view.batchnorm.unfolded == 0
    assert _folded(view)["features.2.conv.3"] == "features.2.conv.2"  # the linear bottleneck
    _assert_preserved(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


# --- what folds and what does not ---------------------------------------------------------------------


class ConvThenBN(nn.Module):
    """conv → ``between`` → BN, the conv's output also used as ``extra`` says."""

    def __init__(self, between: nn.Module, extra: str = "", bn: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
        self.between = between
        self.bn = bn if bn is not None else nn.BatchNorm2d(3)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        out = self.bn(self.between(y))
        if self.extra == "reuse":  # the conv's output has a second user
            return out + y.mean()
        if self.extra == "conv twice":
            return out + self.conv(x).mean()
        if self.extra == "bn twice":
            return out + self.bn(self.conv2(x)).mean()
        return out


FOLDS = {
    "direct": (nn.Identity(), ["between"]),
    "dropout": (nn.Dropout(0.5), ["between"]),
    "max-pool, padded": (nn.MaxPool2d(3, 2, padding=1), ["between"]),
    "average pool, no padding": (nn.AvgPool2d(2), ["between"]),
    "average pool without padding counted": (nn.AvgPool2d(3, 1, 1, count_include_pad=False), ["between"]),
    "adaptive average pool": (nn.AdaptiveAvgPool2d(2), ["between"]),
    "adaptive max pool": (nn.AdaptiveMaxPool2d(3), ["between"]),
    "two ops": (nn.Sequential(nn.Dropout(0.1), nn.MaxPool2d(2)), ["between.0", "between.1"]),
}


@pytest.mark.parametrize("case", list(FOLDS))
def test_paths_that_commute_with_the_batchnorm_fold(case: str) -> None:
    between, through = FOLDS[case]
    model = _randomize_batchnorms(ConvThenBN(between)).double()
    view = deploy(model)
    assert view.batchnorm.records == [BatchNormRecord("bn", "conv", through, None)]
    assert view.module.conv.bias is not None  # β − μ·s becomes the bias the conv lacked
    _assert_preserved(model, torch.randn(4, 2, 6, 6, dtype=torch.float64))


NOT_FOLDED = {
    "output used twice": (nn.Identity(), "reuse", None, "the output of conv has 2 users"),
    "conv called twice": (nn.Identity(), "conv twice", None, "conv is called 2 times"),
    "batchnorm called twice": (nn.Identity(), "bn twice", None, "bn is called 2 times"),
    "relu between": (nn.ReLU(), "", None, "its input, between (ReLU), is not"),
    "average pool counting padding": (nn.AvgPool2d(3, 1, 1), "", None, "counts padding"),
    "average pool with ceil_mode": (nn.AvgPool2d(2, ceil_mode=True), "", None, "ceil_mode"),
    "divisor override": (nn.AvgPool2d(2, divisor_override=3), "", None, "divisor_override"),
    "no running statistics": (
        nn.Identity(),
        "",
        nn.BatchNorm2d(3, track_running_stats=False),
        "no running statistics",
    ),
}


@pytest.mark.parametrize("case", list(NOT_FOLDED))
def test_inexact_paths_stay_unfolded_with_their_reason(case: str) -> None:
    between, extra, bn, reason = NOT_FOLDED[case]
    model = ConvThenBN(between, extra, bn)
    if bn is None:
        _randomize_batchnorms(model)
    model = model.eval().double()
    view = deploy(model)
    (record,) = view.batchnorm.records
    assert record.folded_into is None and reason in record.reason, record.reason
    assert isinstance(view.module.bn, BatchNorm)
    _assert_preserved(model, torch.randn(4, 2, 6, 6, dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    ceil=st.booleans(),
    count_pad=st.booleans(),
    negative=st.booleans(),
)
def test_folding_never_changes_the_function_of_a_pooled_conv(
    kind: str, kernel: int, stride: int, pad: int, ceil: bool, count_pad: bool, negative: bool
) -> None:
    """Any pooling between conv and BN: the eval outputs stay; folded exactly when the rule says so."""
    pad = min(pad, kernel // 2)
    if kind == "max":
        pool: nn.Module = nn.MaxPool2d(kernel, stride, pad, ceil_mode=ceil)
        exact = not negative
    else:
        pool = nn.AvgPool2d(kernel, stride, pad, ceil_mode=ceil, count_include_pad=count_pad)
        exact = not count_pad or (pad == 0 and not ceil)
    model = _randomize_batchnorms(ConvThenBN(pool)).double()
    if negative:
        with torch.no_grad():
            model.bn.weight[1] = -0.5
    view = deploy(model)
    assert (view.batchnorm.records[0].folded_into == "conv") is exact
    _assert_preserved(model, torch.randn(3, 2, 5, 5, dtype=torch.float64))


class LinearThenBN(nn.Module):
    """Linear → BatchNorm1d on a flattened image, or on (N, L, C) tokens (BN1d then normalizes L)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 4, 4) or (N, 4, 4)
        if self.how == "view":
            x = x.view(x.size(0), -1)[:, :4]  # a slice: the rank is no longer known from the graph
        elif self.how == "flatten":
            x = torch.relu(torch.flatten(x, 1)[:, :4].reshape(-1, 4))
        return self.bn(self.fc(x))


@pytest.mark.parametrize(("how", "folds"), [("flatten", True), ("view", False), ("tokens", False)])
def test_linear_folds_into_batchnorm1d_only_where_the_graph_shows_n_by_c(how: str, folds: bool) -> None:
    model = _randomize_batchnorms(LinearThenBN(how)).double()
    view = deploy(model)
    (record,) = view.batchnorm.records
    assert (record.folded_into == "fc") is folds
    if not folds:
        assert "(N, C)" in record.reason
    shape = (5, 4, 4) if how == "tokens" else (5, 1, 4, 4)
    _assert_preserved(model, torch.randn(*shape, dtype=torch.float64))


class DataDependent(nn.Module):
    """conv → BN, then a branch on the values: fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.sum()) > 0 else -y


class Outer(nn.Module):
    """net: conv → BN → [ReLU, DataDependent] → conv → BN (all in Sequentials), then conv → BN as
    attributes; ``traceable=False`` adds a branch on the values to the model's own forward."""

    def __init__(self, traceable: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, 3, 1),
            nn.BatchNorm2d(3),
            nn.Sequential(nn.ReLU(), DataDependent()),
            nn.Conv2d(3, 3, 1),
            nn.BatchNorm2d(3),
        )
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.traceable = traceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(self.net(x)))
        if not self.traceable and float(x.sum()) > 1e9:
            return -y
        return y


def test_a_submodule_fx_cannot_trace_is_one_opaque_call() -> None:
    """Only the innermost untraceable module is opaque: its Sequential and the rest of the model fold."""
    model = _randomize_batchnorms(Outer(traceable=True)).double()
    view = deploy(model)
    assert view.batchnorm.graph is True
    assert _folded(view) == {"net.1": "net.0", "net.2.1.bn": None, "net.4": "net.3", "bn": "conv"}
    assert view.batchnorm.records[1].reason == "inside net.2.1, whose forward torch.fx cannot trace"
    _assert_preserved(model, torch.randn(3, 2, 4, 4, dtype=torch.float64))


def test_a_model_fx_cannot_trace_falls_back_to_the_sequential_rule() -> None:
    model = _randomize_batchnorms(Outer(traceable=False)).double()
    view = deploy(model)
    assert view.batchnorm.graph is False
    assert _folded(view) == {"net.1": "net.0", "net.2.1.bn": None, "net.4": "net.3", "bn": None}
    assert "Sequential rule" in view.batchnorm.records[3].reason
    _assert_preserved(model, torch.randn(3, 2, 4, 4, dtype=torch.float64))


def test_the_latent_view_folds_nothing_and_says_so() -> None:
    model = _float({"name": "nin", "depth": 1, "width": 1, "base_width": 4}, (3, 8, 8))
    record = deploy(model, "latent").batchnorm.to_dict()
    assert record["graph"] is None and record["folded"] == 0 and record["unfolded"] == 4
    assert all("latent view" in r["reason"] for r in record["batchnorms"])


# --- weights and perturbed parameters of any model ------------------------------------------------------


def test_weights_are_every_conv_and_linear_layer_quantized_or_not() -> None:
    plain = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    want = [f"{n}.weight" for n, m in plain.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(want) == 21 and deploy(plain).weight_names == want
    spec = {"model": {"name": "resnet18"}, "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 4}}
    quantized = build_model(spec, (3, 32, 32), 5).eval()
    assert all(isinstance(quantized.get_submodule(n[: -len(".weight")]), QuantModule) for n in want)
    assert deploy(quantized).weight_names == want


def test_a_vits_perturbed_parameters_are_all_but_the_quantizer_steps() -> None:
    spec = {
        "model": {"name": "vit", "depth": 1, "width": 16, "heads": 2, "patch_size": 8},
        "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 4, "attention": True},
    }
    torch.manual_seed(0)
    model = build_model(spec, (3, 16, 16), 4)
    x = torch.randn(4, 3, 16, 16)
    init_quantizers(model, x)
    model.eval()
    view = deploy(model)
    steps = {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if isinstance(m, Quantizer)
        for p, _ in m.named_parameters()
    }
    assert any(".attn.q_quant." in s for s in steps)  # attention's matrix-product quantizers have steps too
    assert view.parameter_names == [n for n, _ in model.named_parameters() if n not in steps]
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "patch_embed.proj.bias"} <= set(
        view.parameter_names
    )
    linear = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert view.weight_names == linear and view.batchnorm.records == []
    attention = view.module.blocks[0].attn
    with quantizers_disabled(view.module):  # the float network: attention's quantizers are off too
        assert isinstance(attention.q_quant, nn.Identity) and isinstance(attention.v_quant, nn.Identity)
    assert isinstance(attention.q_quant, Quantizer)


# --- measures.json -----------------------------------------------------------------------------------------


def test_measures_json_counts_and_lists_the_batchnorms(digits) -> None:
    spec = make_spec(model={"depth": 2, "width": 8, "batch_norm": True}, quant={"method": "float"})
    torch.manual_seed(0)
    model = build_model(spec, digits.input_shape, digits.num_classes)
    state = model.state_dict()
    settings = validate(copy.deepcopy(TINY_MEASURES), measures_schema())
    body = measure_run(
        {"spec": spec, "state_dict": state, "init_state": state}, digits, settings, torch.device("cpu")
    )
    assert body["measures"]["bn.folded"] == 2.0 and body["measures"]["bn.unfolded"] == 0.0
    assert body["batchnorm"] == {
        "graph": True,
        "folded": 2,
        "unfolded": 0,
        "batchnorms": [
            {"bn": "net.2", "folded_into": "net.1", "through": [], "reason": None},
            {"bn": "net.5", "folded_into": "net.4", "through": [], "reason": None},
        ],
    }
