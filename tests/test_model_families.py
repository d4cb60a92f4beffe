"""The paper-scale model families as plain float models, and pretrained weights loaded from a file.

Every family builds, trains one SGD step (CPU; CUDA under the ``gpu`` marker), traces with torch.fx with
its first and last weighted layer where :data:`qgen.models.standard.FIRST_LAST` says, and has the published
parameter count. Pretrained weights round-trip through every accepted file form and every misfit is an error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from qgen.io import sha256_file
from qgen.models.pretrained import PretrainedError, load_pretrained
from qgen.models.resnet_cifar import CifarResNet, PreActBlock, ZeroPadShortcut
from qgen.models.standard import FIRST_LAST, torchvision_model, vit_model

NUM_CLASSES = 10


@dataclass(frozen=True)
class Case:
    family: str
    build: Callable[[], nn.Module]
    shape: tuple[int, int, int]  # one input: channels, height, width


CASES = {
    "resnet20": Case("resnet_cifar", lambda: CifarResNet(20, NUM_CLASSES), (3, 32, 32)),
    "resnet32": Case("resnet_cifar", lambda: CifarResNet(32, NUM_CLASSES), (3, 32, 32)),
    "resnet56": Case("resnet_cifar", lambda: CifarResNet(56, NUM_CLASSES), (3, 32, 32)),
    "resnet20_B": Case("resnet_cifar", lambda: CifarResNet(20, NUM_CLASSES, shortcut="B"), (3, 32, 32)),
    "preresnet20": Case("resnet_cifar", lambda: CifarResNet(20, NUM_CLASSES, preact=True), (3, 32, 32)),
    "preresnet20_conv": Case(
        "resnet_cifar", lambda: CifarResNet(20, NUM_CLASSES, 1, preact=True, shortcut="conv"), (1, 28, 28)
    ),
    "resnet18": Case("resnet18", lambda: torchvision_model("resnet18", NUM_CLASSES), (3, 32, 32)),
    "resnet18_cifar": Case(
        "resnet18", lambda: torchvision_model("resnet18", NUM_CLASSES, stem="cifar"), (3, 32, 32)
    ),
    "resnet50": Case("resnet50", lambda: torchvision_model("resnet50", NUM_CLASSES), (3, 64, 64)),
    "resnet50_cifar": Case(
        "resnet50", lambda: torchvision_model("resnet50", NUM_CLASSES, 1, stem="cifar"), (1, 16, 16)
    ),
    "mobilenet_v2": Case("mobilenet_v2", lambda: torchvision_model("mobilenet_v2", NUM_CLASSES), (3, 64, 64)),
    "mobilenet_v2_cifar": Case(
        "mobilenet_v2",
        lambda: torchvision_model("mobilenet_v2", NUM_CLASSES, stem="cifar", width_mult=0.5, dropout=0.1),
        (3, 32, 32),
    ),
    "vit": Case("vit", lambda: vit_model("vit", NUM_CLASSES, 32), (3, 32, 32)),
    "vit_gray": Case(
        "vit", lambda: vit_model("vit", NUM_CLASSES, 28, 1, depth=2, patch_size=7, dropout=0.1), (1, 28, 28)
    ),
    "deit_tiny": Case(
        "deit_tiny", lambda: vit_model("deit_tiny", NUM_CLASSES, 32, drop_path=0.1), (3, 32, 32)
    ),
    "vit_small": Case("vit_small", lambda: vit_model("vit_small", NUM_CLASSES, 64), (3, 64, 64)),
}

WEIGHTED = (nn.Conv2d, nn.Linear)


def _batch(case: Case, n: int = 2, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *case.shape, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x.to(device), y.to(device)


def _one_sgd_step(case: Case, device: str) -> None:
    torch.manual_seed(0)
    model = case.build().to(device).train()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    x, y = _batch(case, device=device)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    loss = F.cross_entropy(out, y)
    assert torch.isfinite(loss)
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p.detach(), before[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"


@pytest.mark.parametrize("name", list(CASES))
def test_every_family_gives_class_scores_and_trains_one_sgd_step_on_cpu(name: str) -> None:
    _one_sgd_step(CASES[name], "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_every_family_trains_one_sgd_step_on_cuda(name: str) -> None:
    _one_sgd_step(CASES[name], "cuda")


FUNCTIONAL_LAYERS = {F.relu, F.relu6, torch.relu, F.conv2d, F.linear, F.gelu}


@pytest.mark.parametrize("name", list(CASES))
def test_every_family_traces_with_fx_and_names_its_first_and_last_layer(name: str) -> None:
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().eval()
    traced = fx.symbolic_trace(model)
    x, _ = _batch(case)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    weighted = [t for t in calls if isinstance(traced.get_submodule(str(t)), WEIGHTED)]
    assert (weighted[0], weighted[-1]) == FIRST_LAST[case.family]
    # every conv/linear module is called once, as a module: module replacement sees all of them
    assert sorted(map(str, weighted)) == sorted(
        k for k, m in model.named_modules() if isinstance(m, WEIGHTED)
    )
    functional = [
        n.target for n in traced.graph.nodes if n.op == "call_function" and n.target in FUNCTIONAL_LAYERS
    ]
    assert not functional


# ---- published parameter counts ---------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "millions"), [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnet_option_a_has_the_parameter_count_of_he_et_al_table_6(
    depth: int, millions: float
) -> None:
    n = sum(p.numel() for p in CifarResNet(depth, 10).parameters())
    assert round(n / 1e6, 1 if depth == 110 else 2) == millions
    # option A is parameter-free; B adds a 1×1 conv + BN at stages 2 and 3, "conv" the conv only
    extra = 16 * 32 + 32 * 64
    assert sum(p.numel() for p in CifarResNet(depth, 10, shortcut="conv").parameters()) == n + extra
    assert sum(p.numel() for p in CifarResNet(depth, 10, shortcut="B").parameters()) == n + extra + 2 * (
        32 + 64
    )
    # pre-activation moves the stem's BN to the end: the same count
    assert sum(p.numel() for p in CifarResNet(depth, 10, preact=True).parameters()) == n


@pytest.mark.parametrize(
    ("name", "count"), [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("mobilenet_v2", 3_504_872)]
)
def test_torchvision_families_have_torchvisions_published_parameter_counts(name: str, count: int) -> None:
    assert sum(p.numel() for p in torchvision_model(name, 1000).parameters()) == count


@pytest.mark.parametrize(("name", "millions", "digits"), [("deit_tiny", 5.7, 1), ("vit_small", 22.0, 0)])
def test_vits_have_the_published_parameter_counts_at_224_px(name: str, millions: float, digits: int) -> None:
    # DeiT-Ti 5.7M (Touvron et al. 2021, table 1), ViT-S/16 22M
    n = sum(p.numel() for p in vit_model(name, 1000, 224).parameters())
    assert round(n / 1e6, digits) == millions


@pytest.mark.parametrize(("name", "timm_name"), [("deit_tiny", "deit_tiny_patch16_224"), ("vit_small", None)])
def test_vits_have_timms_parameter_names_and_shapes(name: str, timm_name: str | None) -> None:
    import timm

    ours = vit_model(name, 1000, 224).state_dict()
    reference = timm.create_model(timm_name or "vit_small_patch16_224", pretrained=False).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


# ---- structure and options --------------------------------------------------------------------------


def test_option_a_shortcut_subsamples_and_pads_zero_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()
    assert not list(ZeroPadShortcut(16, 32, 2).parameters())


def test_preact_blocks_split_after_the_preactivation_only_first_in_a_stage() -> None:
    model = CifarResNet(14, 10, preact=True).eval()  # n = 2 blocks per stage
    assert [b.split_after_preact for b in model.layer2] == [True, False]
    x = torch.randn(2, 16, 8, 8)
    for split in (True, False):
        block = PreActBlock(16, 16, 1, "A", split_after_preact=split).eval()
        with torch.no_grad():
            block.bn1.running_mean.fill_(0.5)
            nn.init.zeros_(block.conv2.weight)  # the residual path gives 0: the output is the shortcut
            expected = torch.relu(block.bn1(x)) if split else x
            assert torch.equal(block(x), expected)


def test_plain_and_preact_networks_put_bn_relu_where_he_et_al_do() -> None:
    plain, pre = CifarResNet(20, 10), CifarResNet(20, 10, preact=True)
    assert isinstance(plain.bn1, nn.BatchNorm2d) and plain.final_bn is None
    assert pre.bn1 is None and isinstance(pre.final_bn, nn.BatchNorm2d)
    assert [type(m).__name__ for m in plain.layer1[0].children()][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in pre.layer1[0].children()][:3] == ["BatchNorm2d", "ReLU", "Conv2d"]


@pytest.mark.parametrize(("mode", "channels"), [("fan_out", "out"), ("fan_in", "in")])
def test_cifar_resnet_convs_have_kaiming_normal_init(mode: str, channels: str) -> None:
    torch.manual_seed(0)
    model = CifarResNet(20, 10, init_mode=mode)  # type: ignore[arg-type]
    conv = model.layer3[0].conv1  # 32 → 64 channels, 3×3: 18 432 weights
    fan = 9 * (conv.out_channels if channels == "out" else conv.in_channels)
    assert conv.weight.std().item() == pytest.approx((2 / fan) ** 0.5, rel=0.03)
    assert abs(conv.weight.mean().item()) < 0.05 * (2 / fan) ** 0.5


@pytest.mark.parametrize(
    ("name", "stem", "kernel", "stride"),
    [
        ("resnet18", "imagenet", 7, 2),
        ("resnet50", "cifar", 3, 1),
        ("mobilenet_v2", "imagenet", 3, 2),
        ("mobilenet_v2", "cifar", 3, 1),
    ],
)
def test_stem_and_input_channels_of_torchvision_models(
    name: str, stem: str, kernel: int, stride: int
) -> None:
    model = torchvision_model(name, 10, in_channels=1, stem=stem)  # type: ignore[arg-type]
    first = model.get_submodule(FIRST_LAST[name][0])
    assert isinstance(first, nn.Conv2d) and first.in_channels == 1
    assert first.kernel_size == (kernel, kernel) and first.stride == (stride, stride)
    assert first.padding == (kernel // 2, kernel // 2) and first.bias is None
    if name != "mobilenet_v2":
        assert isinstance(model.get_submodule("maxpool"), nn.Identity if stem == "cifar" else nn.MaxPool2d)
    default = torchvision_model(name, 10)
    first_default = default.get_submodule(FIRST_LAST[name][0])
    assert first_default.in_channels == 3 and first_default.stride == (2, 2)


def test_mobilenet_v2_options_are_torchvisions() -> None:
    model = torchvision_model("mobilenet_v2", 10, width_mult=0.5, dropout=0.3)
    assert model.get_submodule("classifier.0").p == 0.3
    assert model.get_submodule("features.1.conv.0.0").in_channels == 16  # 32 · 0.5
    assert torchvision_model("mobilenet_v2", 10).get_submodule("classifier.0").p == 0.2


def test_vit_options_reach_timm() -> None:
    model = vit_model("vit", 10, 32, depth=3, width=96, heads=4, patch_size=8, mlp_ratio=2.0, dropout=0.1)
    assert len(model.blocks) == 3 and model.embed_dim == 96 and model.blocks[0].attn.num_heads == 4
    assert model.patch_embed.proj.kernel_size == (8, 8) and model.pos_embed.shape == (1, 1 + 16, 96)
    assert model.blocks[0].mlp.fc1.out_features == 192
    assert model.pos_drop.p == 0.1 and model.blocks[0].mlp.drop1.p == 0.1
    default = vit_model("vit", 10, 32)
    assert len(default.blocks) == 9 and default.embed_dim == 192 and default.patch_embed.proj.stride == (4, 4)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: CifarResNet(21, 10), "model.depth"),
        (lambda: CifarResNet(2, 10), "model.depth"),
        (lambda: CifarResNet(20, 10, shortcut="C"), "model.shortcut"),
        (lambda: CifarResNet(20, 10, init_mode="xavier"), "model.init_mode"),
        (lambda: torchvision_model("resnet34", 10), "model.name"),
        (lambda: torchvision_model("resnet18", 10, width_mult=0.5), "model.width_mult"),
        (lambda: torchvision_model("resnet50", 10, dropout=0.1), "model.dropout"),
        (lambda: torchvision_model("resnet18", 10, stem="tiny"), "model.stem"),
        (lambda: vit_model("vit_base", 10, 224), "model.name"),
        (lambda: vit_model("vit", 10, 30), "model.patch_size"),
        (lambda: vit_model("deit_tiny", 10, 200), "model.patch_size"),
        (lambda: vit_model("deit_tiny", 10, 224, depth=6), "model.depth"),
        (lambda: vit_model("vit_small", 10, 224, mlp_ratio=2.0), "model.mlp_ratio"),
        (lambda: vit_model("vit", 10, 32, width=100, heads=3), "model.heads"),
        (lambda: vit_model("vit", 10, 32, dropout=1.0), "model.dropout"),
    ],
)
def test_bad_model_settings_are_errors_naming_the_key(build: Callable[[], nn.Module], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build()


def test_named_vits_accept_their_own_architecture_given_explicitly() -> None:
    model = vit_model("deit_tiny", 10, 32, depth=12, width=192, heads=3, patch_size=16)
    assert len(model.blocks) == 12


# ---- pretrained weights -----------------------------------------------------------------------------


def _small(seed: int, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return CifarResNet(8, num_classes, width=4, shortcut="B").eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _trained_source() -> nn.Module:
    """A source model whose BN statistics are not the defaults (one training-mode pass)."""
    source = _small(0).train()
    with torch.no_grad():
        source(X)
    return source.eval()


@pytest.mark.parametrize(
    "form", ["plain", "model", "state_dict", "model_state_dict", "module", "safetensors"]
)
def test_pretrained_weights_round_trip_from_every_file_form(tmp_path: Path, form: str) -> None:
    source = _trained_source()
    sd = source.state_dict()
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(dict(sd), path)
    elif form == "module":  # DataParallel's prefix, inside DeiT's container with other entries
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    elif form == "plain":
        torch.save(sd, path)
    else:
        torch.save({form: sd, "optimizer": {"lr": 0.1}}, path)
    target = _small(1)
    with torch.no_grad():
        assert not torch.equal(target(X), source(X))
        record = load_pretrained(target, path)
        assert torch.equal(target(X), source(X))
    assert record == {"path": str(path), "sha256": sha256_file(path), "tensors": len(sd), "excluded": []}


def test_a_timm_deit_checkpoint_in_its_release_container_loads_into_deit_tiny(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": reference.state_dict()}, path)
    ours = vit_model("deit_tiny", 10, 224).eval()
    load_pretrained(ours, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_missing_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(PretrainedError, match=r"no file .*resnet18\.pth") as err:
        load_pretrained(_small(0), path)
    assert isinstance(err.value, ValueError)


def test_sha256_is_checked_and_both_hashes_named(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_small(0).state_dict(), path)
    actual = sha256_file(path)
    with pytest.raises(PretrainedError, match=f"sha256 {actual}, expected {'0' * 64}"):
        load_pretrained(_small(1), path, sha256="0" * 64)
    assert load_pretrained(_small(1), path, sha256=actual.upper())["sha256"] == actual


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_missing_keys_are_listed_with_their_count_and_nothing_is_loaded(tmp_path: Path) -> None:
    sd = _small(0).state_dict()
    dropped = sorted(k for k in sd if not k.endswith("num_batches_tracked"))[:12]
    path = tmp_path / "w.pt"
    torch.save({k: v for k, v in sd.items() if k not in dropped}, path)
    target = _small(1)
    before = _state(target)
    with pytest.raises(PretrainedError, match="12 missing keys") as err:
        load_pretrained(target, path)
    message = str(err.value)
    assert sum(k in message for k in dropped) == 10 and "..." in message
    assert "unexpected" not in message and "exclude" in message
    _assert_unchanged(target, before)


def test_unexpected_keys_and_shape_mismatches_are_listed(tmp_path: Path) -> None:
    sd = dict(_small(0, num_classes=100).state_dict())
    sd["head_dist.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    target = _small(1)
    before = _state(target)
    with pytest.raises(PretrainedError) as err:
        load_pretrained(target, path)
    message = str(err.value)
    assert "1 unexpected keys: head_dist.weight" in message
    assert (
        "2 shape mismatches" in message
        and "fc.weight (100, 16) in the file, (10, 16) in the model" in message
    )
    assert "missing" not in message
    _assert_unchanged(target, before)


def test_exclude_globs_skip_keys_that_keep_their_initialization(tmp_path: Path) -> None:
    source = _trained_source()
    sd = dict(_small(0, num_classes=100).state_dict())
    sd.update({k: v for k, v in source.state_dict().items() if not k.startswith("fc.")})
    sd["head_dist.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    target = _small(1)
    fc_before = _state(target.fc)
    record = load_pretrained(target, path, exclude=("fc.*", "head_dist.*"))
    assert record["excluded"] == ["fc.bias", "fc.weight", "head_dist.weight"]
    assert record["tensors"] == len(sd) - 3
    _assert_unchanged(target.fc, fc_before)
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))


def test_an_exclude_glob_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_small(0).state_dict(), path)
    with pytest.raises(PretrainedError, match=r"\['classifier\.\*'\] match no key"):
        load_pretrained(_small(1), path, exclude=["fc.*", "classifier.*"])


def test_batch_norm_counters_are_not_required(tmp_path: Path) -> None:
    source = _trained_source()
    path = tmp_path / "w.pt"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    target = _small(1)
    record = load_pretrained(target, path)
    counters = [k for k in target.state_dict() if k.endswith("num_batches_tracked")]
    assert counters and record["tensors"] == len(target.state_dict()) - len(counters)
    assert all(target.state_dict()[k].item() == 0 for k in counters)
    with torch.no_grad():
        assert torch.equal(target(X), source(X))


@pytest.mark.parametrize(
    ("content", "match"),
    [({"epoch": 3, "optimizer": {}}, "not a state dict"), ([torch.zeros(2)], "not a state dict")],
)
def test_a_file_without_a_state_dict_is_an_error(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(content, path)
    with pytest.raises(PretrainedError, match=match):
        load_pretrained(_small(1), path)


def test_a_pickled_module_or_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save(copy.deepcopy(_small(0)), pickled)  # needs unpickling code: weights_only refuses it
    with pytest.raises(PretrainedError, match="cannot be read"):
        load_pretrained(_small(1), pickled)
    corrupt = tmp_path / "w.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(PretrainedError, match=r"w\.safetensors: cannot be read"):
        load_pretrained(_small(1), corrupt)
