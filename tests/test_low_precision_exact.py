"""Bit-identity of the fused low-precision arithmetic (Courbariaux et al. 2014) with the code before it was
fused (issue 16): rounding, saturation and overflow counting in one pass per tensor, in place where the
optimizer owns the tensor, and the optimizer's counts of u and W taken when they are rounded.

The unfused code lives on here only, as the reference (:func:`reference_fixed_point` is the closed form of
qgen.quant.fixed_point's docstring as it was computed, :func:`reference_rates` the old ``observe``,
:class:`ReferenceArithmetic` the old rounding of values, gradients, weights and the old optimizer step):

- property tests: the fused rounding and its counts equal the reference bit for bit (NaN where NaN;
  signed zeros included) over random values, bit widths and ranges, ties and saturation included;
- an oracle: training steps of every format through the pipeline's step (qgen.train.loop.batch_step)
  give bit-identical weights, ranges, overflow sums and momentum updates with the reference patched in;
- frozen runs: small runs through qgen.train.loop compared with digests recorded from the unfused code
  (commit 4be068d). The digests hash raw bytes, so even the sign of a zero counts. Float matrix products
  may round differently on another CPU or BLAS, so those tests first check a fingerprint of plain float
  products of the same shapes and skip (saying so) where it differs; the oracle still holds there.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.measures.gap import generalization_metrics
from qgen.models import build_model
from qgen.quant.fixed_point import (
    Arithmetic,
    FixedPointWeight,
    NumberGroup,
    fixed_point,
    fixed_point_counts,
    half_float,
    straight_through,
)
from qgen.train import checkpoint
from qgen.train.loop import batch_step
from qgen.train.low_precision import LowPrecisionSGD
from tests.test_training import train

# --- the unfused code, as reference --------------------------------------------------------------------


def reference_fixed_point(x: torch.Tensor, nob: int, noib: int) -> torch.Tensor:
    """The unfused closed form: clip(sign(v)·floor(|v| + 0.5), ±(2^nob − 1))/2^k, v = x·2^k."""
    power = 2.0 ** (nob - noib)
    top = float(2**nob - 1)
    v = x * power
    return torch.clamp(torch.sign(v) * torch.floor(v.abs() + 0.5), -top, top) / power


def reference_rates(x: torch.Tensor, nob: int, noib: int) -> torch.Tensor:
    """The unfused ``observe``: fractions of |x| at or beyond the limit and half of it, float64."""
    limit = (2.0**nob - 1) / 2.0 ** (nob - noib)
    a = x.detach().abs()
    return torch.stack([(a >= limit).sum(), (a >= limit / 2).sum()]).double() / a.numel()


class ReferenceArithmetic:
    """Patches the unfused rounding of values and gradients, parameter views and optimizer step in."""

    @staticmethod
    def quantize(group: NumberGroup, x, precision=None, observe=False, out=None, scale=1.0):
        a = group.arithmetic
        if a.format == "float":
            q = x
        elif a.format == "half":
            q = half_float(x)
        else:
            q = reference_fixed_point(x, a.nob(precision or group.precision), int(group.range))
        if observe:
            ReferenceArithmetic.observe(group, q, precision)
        if scale != 1:
            raise NotImplementedError("the unfused code had no scaled rounding")
        return q if out is None else out.copy_(q)

    @staticmethod
    def observe(group: NumberGroup, x, precision=None, counts=None) -> None:
        a = group.arithmetic
        if a.dynamic:
            group.overflow += reference_rates(x, a.nob(precision or group.precision), int(group.range))

    @staticmethod
    def weight(view: FixedPointWeight, v: torch.Tensor) -> torch.Tensor:
        return straight_through(v, ReferenceArithmetic.quantize(view.group, v.detach(), "prop"))

    @staticmethod
    @torch.no_grad()
    def step(opt: LowPrecisionSGD, closure=None) -> None:
        q, observe = ReferenceArithmetic.quantize, ReferenceArithmetic.observe
        group = opt.param_groups[0]
        lr, momentum, limit = group["lr"], group["momentum"], group["max_col_norm"]
        for layer in opt.layers:
            g = layer.groups
            for kind, p in (("w", layer.weight), ("b", layer.bias)):
                if p.grad is None:
                    continue
                grad = q(g[f"dEd{kind}"], p.grad)
                observe(g[f"dEd{kind}"], grad)
                state = opt.state[p]
                update = state.get("update")
                if update is None:
                    update = state["update"] = torch.zeros_like(p)
                observe(g[f"update_{kind}"], update)
                observe(g[kind], p)
                update.copy_(q(g[f"update_{kind}"], momentum * update - lr * grad))
                new = q(g[kind], p + update, "update")
                if kind == "w" and limit is not None:
                    norms = new.norm(dim=1, keepdim=True)
                    new = q(g["w"], new * (norms.clamp(max=limit) / (1e-7 + norms)), "update")
                p.copy_(new)

    @classmethod
    @contextlib.contextmanager
    def patched(cls, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        with monkeypatch.context() as m:
            m.setattr(NumberGroup, "quantize", cls.quantize)
            m.setattr(NumberGroup, "observe", cls.observe)
            m.setattr(FixedPointWeight, "forward", cls.weight)
            m.setattr(LowPrecisionSGD, "step", cls.step)
            yield


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape, NaN positions and the raw bits of everything else (the sign of zero too)."""
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return False
    ints = {torch.float32: torch.int32, torch.float64: torch.int64}
    if a.dtype not in ints:
        return torch.equal(a, b)
    return torch.equal(a[~a.isnan()].view(ints[a.dtype]), b[~b.isnan()].view(ints[b.dtype]))


# --- property tests: the fused rounding and counts are the reference's ----------------------------------

DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def values_on_and_off_the_grid(draw, nob: int, noib: int) -> list[float]:
    """Grid points, exact ties (half steps), near-ties, values beyond saturation, and arbitrary floats
    (signed zeros, subnormals, infinities, NaN)."""
    step = 2.0 ** (noib - nob)
    top = 2**nob - 1
    steps = st.integers(-(top + 3), top + 3) | st.integers(-3, 3) | st.sampled_from([top, -top, top + 1])
    fractions = st.sampled_from([0.0, 0.5, -0.5, 0.25, 0.499999, 0.500001, -0.499999])
    on_grid = st.builds(lambda j, f: (j + f) * step, steps, fractions)
    anything = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=32)
    # signed zeros; the smallest subnormals of float32 and float64, which x·2^k (k < 0) flushes to ±0
    special = st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 5e-324, -5e-324, float("inf"), float("nan")])
    return draw(st.lists(on_grid | anything | special, min_size=1, max_size=60))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), nob=st.integers(1, 31), noib=st.integers(-12, 12), dtype=DTYPES)
def test_fused_rounding_is_the_closed_form_bit_for_bit(data, nob, noib, dtype) -> None:
    x = torch.tensor(data.draw(values_on_and_off_the_grid(nob, noib)), dtype=dtype)
    expected = reference_fixed_point(x, nob, noib)
    assert same_bits(fixed_point(x, nob, noib), expected)
    assert same_bits(fixed_point(x.clone(), nob, torch.tensor(noib), out=torch.empty_like(x)), expected)
    y = x.clone()
    assert fixed_point(y, nob, noib, out=y) is y and same_bits(y, expected)  # in place
    scale = data.draw(st.sampled_from([0.0, 0.05, 0.0123, 3.0]))
    assert same_bits(fixed_point(x, nob, noib, scale=scale), expected * scale)  # ε·fmt(g) as one product
    finite = x.isfinite()  # a parameter view: straight_through's q + 0 turns −0 into +0
    plus_zero = fixed_point(x, nob, noib, positive_zero=True)[finite]
    assert same_bits(plus_zero, straight_through(x, expected)[finite])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), nob=st.integers(1, 31), noib=st.integers(-12, 12), dtype=DTYPES)
def test_fused_overflow_counts_are_the_unfused_rates(data, nob, noib, dtype) -> None:
    batches = [torch.tensor(data.draw(values_on_and_off_the_grid(nob, noib)), dtype=dtype) for _ in range(3)]
    q, counts = fixed_point_counts(batches[0], nob, noib)
    assert same_bits(q, reference_fixed_point(batches[0], nob, noib))
    assert torch.equal(counts.double() / q.numel(), reference_rates(q, nob, noib))
    arith = Arithmetic(format="dynamic_fixed", prop_nob=nob, update_nob=nob, initial_range=noib)
    rounded, stored = NumberGroup(arith, "prop"), NumberGroup(arith, "prop")
    sums, stored_sums = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for x in batches:  # rates summed over batches, in float64 as the reference adds them
        assert same_bits(rounded.quantize(x, observe=True), reference_fixed_point(x, nob, noib))
        sums += reference_rates(reference_fixed_point(x, nob, noib), nob, noib)
        stored.observe(x)  # values off the grid: counted as they are
        stored_sums += reference_rates(x, nob, noib)
    assert same_bits(rounded.overflow, sums) and same_bits(stored.overflow, stored_sums)


def test_fused_rounding_vectorizes_under_vmap_as_the_measures_use_it() -> None:
    x = torch.randn(3, 5, 4) * 4
    batched = torch.func.vmap(lambda t: fixed_point(t, 6, 2))(x)
    assert same_bits(batched, reference_fixed_point(x, 6, 2))
    assert same_bits(torch.func.vmap(lambda t: fixed_point(t, 2, 5))(x), reference_fixed_point(x, 2, 5))


@pytest.mark.parametrize(("nob", "noib", "scale"), [(9, -117, 1.0), (3, 131, 1.0), (9, -90, 1e-20)])
def test_a_grid_outside_the_normal_numbers_is_refused(nob, noib, scale) -> None:
    """There the closed form loses its exactness (2^k overflows, the grid underflows): a clear error."""
    with pytest.raises(ValueError, match=f"nob={nob}, noib={noib}"):
        fixed_point(torch.ones(3), nob, noib, scale=scale)


def test_training_weight_view_is_straight_through_of_the_rounding() -> None:
    arith = Arithmetic(format="fixed", prop_nob=5, update_nob=9, initial_range=1)
    view = FixedPointWeight(NumberGroup(arith, "update"))
    v = torch.tensor([[-0.01, 0.3, -0.0, 2.9], [-3.0, 0.0, 0.0312, -0.03]], requires_grad=True)
    g = torch.randn(2, 4)
    expected = straight_through(v, reference_fixed_point(v.detach(), 5, 1))
    (expected_grad,) = torch.autograd.grad(expected, v, g)
    for training in (True, False):
        out = view.train(training)(v)
        (grad,) = torch.autograd.grad(out, v, g)
        assert same_bits(out.detach(), expected.detach()) and same_bits(grad, expected_grad)
    assert expected.detach()[0, 0].item() == 0 and not expected.detach()[0, 0].signbit()


# --- oracle: training steps with the reference patched in -------------------------------------------


def _oracle_model(quant: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {
        "model": {
            "name": "maxout",
            "depth": 2,
            "width": 6,
            "pieces": 3,
            "dropout": 0.5,
            "input_dropout": 0.2,
        },
        "quant": quant,
    }
    return build_model(spec, (1, 2, 4), 4).train()


def _oracle_run(quant: dict, steps: int = 12) -> dict[str, torch.Tensor]:
    model = _oracle_model(quant)
    opt = LowPrecisionSGD(model.low_precision_layers(), lr=0.1, momentum=0.6, max_col_norm=0.8)
    step = batch_step(model, opt, "ce")
    g = torch.Generator().manual_seed(1)
    with model.range_search_precision(31):  # the range initialization's bit width first
        for _ in range(3):
            step(torch.randn(16, 1, 2, 4, generator=g), torch.randint(0, 4, (16,), generator=g))
    for _ in range(steps):
        step(torch.randn(16, 1, 2, 4, generator=g) * 3, torch.randint(0, 4, (16,), generator=g))
    updates = {f"update.{i}": s["update"] for i, s in enumerate(opt.state.values())}
    return {**model.state_dict(), **updates}


ORACLE_QUANT = {
    "float": {"method": "float"},
    "half": {"method": "half"},
    "fixed": {"method": "fixed", "prop_bits": 8, "update_bits": 12, "initial_range": 1},
    "fixed, integer grid": {"method": "fixed", "prop_bits": 4, "update_bits": 6, "initial_range": 5},
    "dynamic_fixed": {
        "method": "dynamic_fixed",
        "prop_bits": 6,
        "update_bits": 8,
        "initial_range": 0,
        "range_update_every": 2,
        "max_overflow": 1e-2,
    },
}


@pytest.mark.parametrize("case", list(ORACLE_QUANT))
def test_training_steps_are_bit_identical_to_the_unfused_arithmetic(case, monkeypatch) -> None:
    fused = _oracle_run(ORACLE_QUANT[case])
    with ReferenceArithmetic.patched(monkeypatch):
        unfused = _oracle_run(ORACLE_QUANT[case])
    assert fused.keys() == unfused.keys()
    assert [k for k in fused if not same_bits(fused[k], unfused[k])] == []
    if case == "dynamic_fixed":  # the ranges moved, so the kept counts were dropped and recounted
        assert any(int(v) != 0 for k, v in fused.items() if k.endswith(".range"))


CHANGES_BETWEEN_STEPS = {
    "values": lambda model: [p.mul_(8) for p in model.parameters()],  # as the range initialization's reset
    "ranges": lambda model: [g.range.add_(1) for g in model.modules() if isinstance(g, NumberGroup)],
    "bit width": lambda model: model.arithmetic.__setattr__("update_nob", 31),  # as range_search_precision
}


@pytest.mark.parametrize("change", list(CHANGES_BETWEEN_STEPS))
def test_kept_counts_are_recounted_when_what_they_count_changed(change, monkeypatch) -> None:
    """The optimizer adds the counts of u and W taken when it rounded them; after a change of the values,
    the group's range or the bit width since then it counts them afresh, as the reference always does."""
    quant = {"method": "dynamic_fixed", "prop_bits": 3, "update_bits": 3, "initial_range": -1,
             "range_update_every": 1000, "max_overflow": 1e-2}  # fmt: skip
    results = []
    for patched in (False, True):
        with ReferenceArithmetic.patched(monkeypatch) if patched else contextlib.nullcontext():
            model = _oracle_model(quant)
            opt = LowPrecisionSGD(model.low_precision_layers(), lr=0.1, momentum=0.6)
            step = batch_step(model, opt, "ce")
            g = torch.Generator().manual_seed(2)
            for i in range(3):
                step(torch.randn(16, 1, 2, 4, generator=g) * 3, torch.randint(0, 4, (16,), generator=g))
                if i == 0:
                    with torch.no_grad():
                        CHANGES_BETWEEN_STEPS[change](model)
            results.append(model.state_dict())
    fused, unfused = results
    assert [k for k in fused if not same_bits(fused[k], unfused[k])] == []


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of ``tensors``: first 16 hex digits."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def float_fingerprint() -> str:
    """The platform's float32 products at the shapes these runs use (forward, both backward products)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g) for s in ((100, 64), (72, 64), (72,)))
    grad = torch.randn(100, 72, generator=g)
    return digest({"z": F.linear(x, w, b), "dx": grad @ w, "dw": grad.t() @ x})


RECORDED_FINGERPRINT = "f04020458a5718d5"

MODEL = {"name": "maxout", "depth": 2, "width": 24, "pieces": 3, "dropout": 0.5, "input_dropout": 0.2}
OPTIM = {
    "name": "sgd",
    "lr": 0.05,
    "momentum": 0.5,
    "momentum_final": 0.7,
    "momentum_saturate": 2,
    "schedule": "linear",
    "lr_final": 0.01,
    "lr_saturate": 3,
    "max_col_norm": 1.9365,
    "batch_size": 100,
}
QUANT = {
    "float": {"method": "float"},
    "half": {"method": "half"},
    "fixed": {"method": "fixed", "prop_bits": 12, "update_bits": 14, "initial_range": 3},
    "dynamic_fixed": {
        "method": "dynamic_fixed",
        "prop_bits": 10,
        "update_bits": 12,
        "initial_range": 3,
        "range_update_every": 3,
        "max_overflow": 1e-3,
        "range_init_epochs": 1,
    },
    # narrow formats: many values saturate or round to (signed) zero
    "fixed 8/10": {"method": "fixed", "prop_bits": 8, "update_bits": 10, "initial_range": -1},
    "dynamic_fixed 8/10": {
        "method": "dynamic_fixed",
        "prop_bits": 8,
        "update_bits": 10,
        "initial_range": 0,
        "range_update_every": 2,
        "max_overflow": 1e-4,
    },
}

#: recorded from the unfused code (commit 4be068d): model state_dict, momentum updates, metrics (hex), per
#: CPU instruction set torch dispatches to (torch.backends.cpu.get_cpu_capability(): its vectorized kernels
#: round differently; the AVX2 values were recorded from 4be068d on an AVX2 machine on 2026-12-02)
FROZEN: dict[str, dict[str, dict[str, str]]] = {
    "AVX512": {
        "float": {
            "state": "004941f5b714f600",
            "updates": "f2f44a4a38b78d85",
            "train_ce": "0x1.082130bb3bcd7p+0",
            "test_ce": "0x1.1220b2f79580bp+0",
            "test_acc": "0x1.79be02468acf1p-1",
        },
        "half": {
            "state": "6a6f381dfb16b4a9",
            "updates": "b6d31a5b92aa52f6",
            "train_ce": "0x1.08538baccde28p+0",
            "test_ce": "0x1.12480b038bbe3p+0",
            "test_acc": "0x1.7c048d159e26bp-1",
        },
        "fixed": {
            "state": "ea8423454cb06589",
            "updates": "4bd609a872040336",
            "train_ce": "0x1.538939876fd50p+0",
            "test_ce": "0x1.5bd0c0044f9ffp+0",
            "test_acc": "0x1.69d0369d0369dp-1",
        },
        "dynamic_fixed": {
            "state": "5f4f5fdf296ba09b",
            "updates": "97a82037950fd5e4",
            "train_ce": "0x1.029160363577cp+0",
            "test_ce": "0x1.0b4765a98a147p+0",
            "test_acc": "0x1.6d3a06d3a06d4p-1",
        },
        "fixed 8/10": {
            "state": "513ad55d3d0c1957",
            "updates": "d77f55800bf43179",
            "train_ce": "0x1.24c78aaceda13p+1",
            "test_ce": "0x1.24c611ff7a4bep+1",
            "test_acc": "0x1.0c83fb72ea61ep-3",
        },
        "dynamic_fixed 8/10": {
            "state": "99524d47a7b20fc5",
            "updates": "3b0fe3e730d75bec",
            "train_ce": "0x1.f41c6cbfcb278p-1",
            "test_ce": "0x1.04627af284751p+0",
            "test_acc": "0x1.740da740da741p-1",
        },
    },
    "AVX2": {
        "float": {
            "state": "e90d37acd7b1447d",
            "updates": "6074a52cebb58570",
            "train_ce": "0x1.082130a7fbfe6p+0",
            "test_ce": "0x1.1220b2e412206p+0",
            "test_acc": "0x1.79be02468acf1p-1",
        },
        "half": {
            "state": "574a0346dad8fcef",
            "updates": "bc9254d3731780f7",
            "train_ce": "0x1.08479d1775baap+0",
            "test_ce": "0x1.1236f2fa3f00cp+0",
            "test_acc": "0x1.7c048d159e26bp-1",
        },
        "fixed": {
            "state": "ea8423454cb06589",
            "updates": "4bd609a872040336",
            "train_ce": "0x1.538939876fd4fp+0",
            "test_ce": "0x1.5bd0c0044f9ffp+0",
            "test_acc": "0x1.69d0369d0369dp-1",
        },
        "dynamic_fixed": {
            "state": "5f4f5fdf296ba09b",
            "updates": "97a82037950fd5e4",
            "train_ce": "0x1.029160363577cp+0",
            "test_ce": "0x1.0b4765a98a146p+0",
            "test_acc": "0x1.6d3a06d3a06d4p-1",
        },
        "fixed 8/10": {
            "state": "513ad55d3d0c1957",
            "updates": "d77f55800bf43179",
            "train_ce": "0x1.24c78aaceda13p+1",
            "test_ce": "0x1.24c611ff7a4bep+1",
            "test_acc": "0x1.0c83fb72ea61ep-3",
        },
        "dynamic_fixed 8/10": {
            "state": "99524d47a7b20fc5",
            "updates": "3b0fe3e730d75bec",
            "train_ce": "0x1.f41c6cbfcb278p-1",
            "test_ce": "0x1.04627af284751p+0",
            "test_acc": "0x1.740da740da741p-1",
        },
    },
}


def frozen_run(case: str, digits, spec_factory, tmp_path) -> dict[str, str]:
    spec = spec_factory(
        model=MODEL, quant=QUANT[case], optim=OPTIM, train={"max_epochs": 4, "target_ce": None}
    )
    out = tmp_path / case.replace(" ", "_").replace("/", "_")
    model, _, result = train(spec, digits, out, checkpoint_every=100)
    optimizer = checkpoint.load(checkpoint.path_in(out))["optimizer"]  # the final checkpoint
    updates = {f"update.{k}": s["update"] for k, s in optimizer["state"].items()}
    metrics = generalization_metrics(model, digits)
    return {
        "state": digest(model.state_dict()),  # weights and buffers: ranges, overflow sums, batch counter
        "updates": digest(updates),
        "train_ce": float(result.final_train_ce).hex(),
        "test_ce": float(metrics["test_ce"]).hex(),
        "test_acc": float(metrics["test_acc"]).hex(),
    }


@pytest.mark.parametrize("case", list(QUANT))
def test_frozen_low_precision_run_is_bit_identical_to_the_unfused_code(
    case, digits, spec_factory, tmp_path
) -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in FROZEN or float_fingerprint() != RECORDED_FINGERPRINT:
        pytest.skip(
            f"digests recorded on {sorted(FROZEN)} with other float products; this CPU is {capability}"
        )
    assert frozen_run(case, digits, spec_factory, tmp_path) == FROZEN[capability][case]
