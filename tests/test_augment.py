"""Augmentation (random crop with zero padding, horizontal flip) and BinaryConnect's GCN + ZCA whitening.

The crops are checked against torchvision's own pad/crop/flip functions; the whitening against a
whole-matrix numpy transcription of pylearn2's formulas (qgen.data.whiten's docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as tvf

from qgen.data.augment import Augment, Draws
from qgen.data.whiten import GcnZca, fit_gcn_zca, global_contrast_normalize

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, c: int, h: int, w: int, seed: int = 0, low: int = 1) -> torch.Tensor:
    """Random uint8 images with no zero pixel (low = 1), so padding zeros are told apart from the image."""
    return torch.randint(low, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def torchvision_crop(image: torch.Tensor, p: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """RandomCrop(padding=p, fill=0) at offset (dy, dx), then RandomHorizontalFlip, by torchvision."""
    h, w = image.shape[-2:]
    out = tvf.crop(tvf.pad(image, [p], fill=0), dy, dx, h, w)
    return tvf.horizontal_flip(out) if flip else out


# --- the spec -------------------------------------------------------------------------------------------


def test_from_spec_reads_the_spec_and_round_trips() -> None:
    augment = Augment.from_spec({"crop_padding": 4, "flip": True})
    assert augment == Augment(crop_padding=4, flip=True)
    assert augment.to_spec() == {"crop_padding": 4, "flip": True}
    assert Augment.from_spec(augment.to_spec()) == augment
    assert Augment.from_spec({"flip": True}) == Augment(0, True)


@pytest.mark.parametrize("spec", [None, {}, {"crop_padding": 0, "flip": False}])
def test_from_spec_that_does_nothing_is_none(spec) -> None:
    assert Augment.from_spec(spec) is None


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"crop_padding": -1}, "crop_padding"),
        ({"crop_padding": 2.0}, "crop_padding"),
        ({"crop_padding": True}, "crop_padding"),
        ({"flip": "yes"}, "flip"),
        ({"crop_pad": 4}, "crop_pad"),
    ],
)
def test_bad_spec_names_the_key(spec, key) -> None:
    with pytest.raises(ValueError, match=key):
        Augment.from_spec(spec)


# --- determinism and devices ----------------------------------------------------------------------------


def test_same_seed_same_output_other_seed_differs() -> None:
    x, augment = images(16, 3, 8, 8), Augment(crop_padding=2, flip=True)
    first, again, other = augment(x, gen(5)), augment(x, gen(5)), augment(x, gen(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_call_uses_the_draws_of_draw() -> None:
    x, augment = images(10, 3, 6, 7), Augment(crop_padding=3, flip=True)
    assert torch.equal(augment(x, gen(1)), augment.apply(x, augment.draw(len(x), gen(1))))


@pytest.mark.gpu
@needs_cuda
def test_cuda_sees_the_same_augmentation_as_cpu() -> None:
    x, augment = images(64, 3, 32, 32), Augment(crop_padding=4, flip=True)
    on_cpu = augment(x, gen(3))
    on_cuda = augment(x.cuda(), gen(3))
    assert on_cuda.device.type == "cuda" and on_cuda.dtype == torch.uint8
    assert torch.equal(on_cuda.cpu(), on_cpu)


def test_draw_rejects_a_generator_off_the_cpu() -> None:
    class Elsewhere:
        device = torch.device("meta")

    with pytest.raises(ValueError, match="CPU generator"):
        Augment(1, True).draw(4, Elsewhere())  # type: ignore[arg-type]


# --- the definition -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    p=st.integers(0, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    b=st.integers(1, 6),
    c=st.integers(1, 3),
    flip=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_each_image_is_exactly_its_drawn_crop_flipped_exactly_when_drawn(p, h, w, b, c, flip, seed) -> None:
    x, augment = images(b, c, h, w, seed), Augment(crop_padding=p, flip=flip)
    draws = augment.draw(b, gen(seed))
    out = augment.apply(x, draws)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert draws.offsets.dtype == torch.int64 and draws.offsets.shape == (b, 2)
    assert int(draws.offsets.min()) >= 0 and int(draws.offsets.max()) <= 2 * p
    assert flip or not draws.flips.any()
    for i in range(b):
        dy, dx = (int(v) for v in draws.offsets[i])
        assert torch.equal(out[i], torchvision_crop(x[i], p, dy, dx, bool(draws.flips[i])))


def test_each_image_is_some_crop_in_range() -> None:
    """Without looking at the draws: every output image is one of the (2p+1)² crops, flipped or not."""
    p, x = 2, images(24, 3, 5, 6, seed=4)
    out = Augment(crop_padding=p, flip=True)(x, gen(9))
    for i in range(len(x)):
        candidates = [
            torchvision_crop(x[i], p, dy, dx, flip)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            for flip in (False, True)
        ]
        assert any(torch.equal(out[i], candidate) for candidate in candidates)


def test_offsets_cover_the_whole_range_and_flips_are_fair() -> None:
    p, n = 4, 4000
    draws = Augment(crop_padding=p, flip=True).draw(n, gen(0))
    pairs = {(int(dy), int(dx)) for dy, dx in draws.offsets}
    assert pairs == {(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
    assert abs(draws.flips.float().mean().item() - 0.5) < 0.03  # 4σ for n = 4000


def test_padding_zero_and_no_flip_is_the_identity() -> None:
    x = images(5, 3, 4, 4)
    assert torch.equal(Augment()(x, gen(0)), x)
    assert torch.equal(
        Augment().apply(x, Draws(torch.zeros(5, 2, dtype=torch.int64), torch.zeros(5, dtype=torch.bool))), x
    )


def test_flip_only_mirrors_the_flipped_images_and_keeps_the_others() -> None:
    x, augment = images(32, 2, 3, 5), Augment(flip=True)
    draws = augment.draw(len(x), gen(2))
    out = augment.apply(x, draws)
    assert 0 < int(draws.flips.sum()) < len(x)
    assert torch.equal(out[draws.flips], x[draws.flips].flip(-1))
    assert torch.equal(out[~draws.flips], x[~draws.flips])


def test_uint8_stays_uint8_padding_is_zero_and_the_rest_is_the_input() -> None:
    p, (h, w) = 3, (6, 5)
    x, augment = images(40, 3, h, w, seed=7), Augment(crop_padding=p)
    draws = augment.draw(len(x), gen(1))
    out = augment.apply(x, draws)
    assert out.dtype == torch.uint8
    for i, (dy, dx) in enumerate(draws.offsets.tolist()):
        rows = torch.arange(h) + dy - p  # the input row each output row reads (outside 0..h−1: padding)
        cols = torch.arange(w) + dx - p
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        assert torch.all(out[i][:, ~inside] == 0)
        expected = x[i][:, rows.clamp(0, h - 1)][:, :, cols.clamp(0, w - 1)]
        assert torch.equal(out[i][:, inside], expected[:, inside])


def test_float_input_keeps_its_dtype_and_values() -> None:
    x = torch.rand(4, 1, 5, 5, generator=gen(0), dtype=torch.float64) + 1.0
    augment = Augment(crop_padding=1, flip=True)
    out = augment(x, gen(3))
    assert out.dtype == torch.float64
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


# --- GCN ------------------------------------------------------------------------------------------------


def numpy_gcn(
    x: np.ndarray, scale: float, subtract_mean: bool, use_std: bool, sqrt_bias: float
) -> np.ndarray:
    """pylearn2.expr.preprocessing.global_contrast_normalize, transcribed from its documented formula."""
    x = x - x.mean(axis=1, keepdims=True) if subtract_mean else x.copy()
    spread = x.var(axis=1, ddof=1) if use_std else (x**2).sum(axis=1)
    divisor = np.sqrt(sqrt_bias + spread) / scale
    divisor[divisor < 1e-8] = 1.0
    return x / divisor[:, None]


def test_gcn_rows_have_zero_mean_and_norm_scale() -> None:
    x = torch.randint(0, 256, (20, 48), generator=gen(0)).double()
    out = global_contrast_normalize(x, scale=55.0)
    assert torch.allclose(out.mean(dim=1), torch.zeros(20, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.norm(dim=1), torch.full((20,), 55.0, dtype=torch.float64))
    with_std = global_contrast_normalize(x, scale=2.0, use_std=True)
    assert torch.allclose(with_std.std(dim=1), torch.full((20,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("subtract_mean", [True, False])
@pytest.mark.parametrize("use_std", [True, False])
@pytest.mark.parametrize("sqrt_bias", [0.0, 10.0])
def test_gcn_equals_the_pylearn2_formula(subtract_mean, use_std, sqrt_bias) -> None:
    x = np.random.default_rng(0).integers(0, 256, (12, 30)).astype(np.float64)
    ours = global_contrast_normalize(torch.from_numpy(x), 3.0, subtract_mean, use_std, sqrt_bias)
    np.testing.assert_allclose(ours.numpy(), numpy_gcn(x, 3.0, subtract_mean, use_std, sqrt_bias), rtol=1e-12)


def test_gcn_leaves_a_divisor_below_min_divisor_unapplied() -> None:
    constant = torch.full((1, 48), 7.0, dtype=torch.float64)
    assert torch.equal(global_contrast_normalize(constant), torch.zeros(1, 48, dtype=torch.float64))
    # norm ≈ 1.1e-7 is above min_divisor, but the divisor norm/scale ≈ 2e-9 is below it
    tiny = torch.tensor([[0.0, 5e-8, -5e-8, 1e-7]], dtype=torch.float64)
    out = global_contrast_normalize(tiny, scale=55.0)
    assert torch.equal(out, tiny - tiny.mean())
    assert torch.isfinite(out).all()


def test_gcn_rejects_integer_input() -> None:
    with pytest.raises(ValueError, match="float matrix"):
        global_contrast_normalize(torch.zeros(2, 3, dtype=torch.uint8))


# --- ZCA ------------------------------------------------------------------------------------------------

SHAPE = (3, 4, 4)  # D = 48


def raw_images(n: int, seed: int = 0) -> torch.Tensor:
    """Correlated uint8 images (a smooth random field plus noise), so the ZCA has work to do."""
    g = gen(seed)
    base = torch.rand(n, 1, 1, 1, generator=g) * 120
    noise = torch.rand(n, *SHAPE, generator=g) * 100
    ramp = torch.linspace(0, 30, SHAPE[-1]) * torch.rand(n, 1, 1, 1, generator=g)
    return (base + noise + ramp).round().clamp(0, 255).to(torch.uint8)


def numpy_zca(x: torch.Tensor, scale: float, filter_bias: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GCN, then pylearn2's ZCA.fit on the whole design matrix: mean, P, and the eigenvalues λ of C."""
    rows = numpy_gcn(x.reshape(len(x), -1).numpy().astype(np.float64), scale, True, False, 0.0)
    mean = rows.mean(axis=0)
    centered = rows - mean
    eigenvalues, eigenvectors = np.linalg.eigh(
        centered.T @ centered / len(rows) + filter_bias * np.eye(rows.shape[1])
    )
    matrix = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
    return mean, matrix, eigenvalues - filter_bias


def test_streamed_fit_equals_the_whole_matrix_reference() -> None:
    x = raw_images(300)
    state = fit_gcn_zca(x, batch_size=64, scale=55.0, filter_bias=0.1)
    mean, matrix, _ = numpy_zca(x, 55.0, 0.1)
    assert state["mean"].dtype == state["matrix"].dtype == torch.float32
    assert state["mean"].shape == (48,) and state["matrix"].shape == (48, 48)
    np.testing.assert_allclose(state["mean"].numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["matrix"].numpy(), matrix, rtol=1e-4, atol=1e-6)
    assert float(state["scale"]) == 55.0 and float(state["filter_bias"]) == 0.1


def test_fit_does_not_depend_on_the_batch_size() -> None:
    x = raw_images(250, seed=1)
    small, whole = fit_gcn_zca(x, batch_size=7), fit_gcn_zca(x, batch_size=1000)
    assert torch.allclose(small["mean"], whole["mean"], rtol=1e-6, atol=1e-6)
    assert torch.allclose(small["matrix"], whole["matrix"], rtol=1e-5, atol=1e-7)


def whitened_covariance_in_eigenbasis(x: torch.Tensor, filter_bias: float) -> tuple[np.ndarray, np.ndarray]:
    """U^T Cov(whitened training data) U, and the eigenvalues λ of the GCN'd data's covariance."""
    whiten = GcnZca.from_state(fit_gcn_zca(x, batch_size=100, filter_bias=filter_bias))
    out = whiten(x).reshape(len(x), -1).double().numpy()
    rows = numpy_gcn(x.reshape(len(x), -1).numpy().astype(np.float64), 55.0, True, False, 0.0)
    centered = rows - rows.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered / len(rows))
    assert np.abs(out.mean(axis=0)).max() < 1e-3  # centred on the training mean
    covariance = out.T @ out / len(out)
    return eigenvectors.T @ covariance @ eigenvectors, eigenvalues


@pytest.mark.parametrize("filter_bias", [0.1, 20.0, 200.0])
def test_whitened_training_covariance_is_lambda_over_lambda_plus_bias(filter_bias) -> None:
    rotated, eigenvalues = whitened_covariance_in_eigenbasis(raw_images(600, seed=2), filter_bias)
    expected = np.diag(eigenvalues.clip(min=0) / (eigenvalues.clip(min=0) + filter_bias))
    np.testing.assert_allclose(rotated, expected, atol=2e-4)


def test_whitened_training_covariance_is_the_identity_as_the_bias_vanishes() -> None:
    rotated, eigenvalues = whitened_covariance_in_eigenbasis(raw_images(600, seed=3), 1e-6)
    assert eigenvalues[0] < 1e-9 < eigenvalues[1]  # GCN'd rows sum to 0: one null direction, first
    np.testing.assert_allclose(rotated[1:, 1:], np.eye(47), atol=2e-3)


def test_fit_rejects_a_bias_that_cannot_whiten() -> None:
    with pytest.raises(ValueError, match="filter_bias"):
        fit_gcn_zca(raw_images(10), filter_bias=0.0)


# --- applying it ----------------------------------------------------------------------------------------


def test_gcn_zca_maps_raw_batches_to_whitened_float32_images() -> None:
    x = raw_images(200, seed=4)
    state = fit_gcn_zca(x)
    whiten = GcnZca.from_state(state)
    out = whiten(x[:17])
    assert out.dtype == torch.float32 and out.shape == (17, *SHAPE)
    mean, matrix, _ = numpy_zca(x, 55.0, 0.1)
    rows = numpy_gcn(x[:17].reshape(17, -1).numpy().astype(np.float64), 55.0, True, False, 0.0)
    np.testing.assert_allclose(out.reshape(17, -1).numpy(), (rows - mean) @ matrix, atol=2e-4)
    scaled = whiten(x[:17].float() / 255.0)  # GCN is invariant to the pixels' scale
    assert torch.allclose(scaled, out, atol=1e-4)
    assert torch.allclose(whiten(x[:5]), out[:5], atol=1e-6)  # row-wise: the batch does not matter
    again = GcnZca.from_state(whiten.state())
    assert torch.equal(again(x[:17]), out)
    assert whiten.settings()["gcn"]["scale"] == 55.0 and whiten.settings()["zca"]["filter_bias"] == 0.1


def test_gcn_zca_names_what_is_wrong() -> None:
    state = fit_gcn_zca(raw_images(20))
    with pytest.raises(ValueError, match="48 features"):
        GcnZca.from_state(state)(torch.zeros(2, 3, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="filter_bias"):
        GcnZca.from_state({"mean": state["mean"], "matrix": state["matrix"], "scale": state["scale"]})


@pytest.mark.gpu
@needs_cuda
def test_gcn_zca_on_cuda_equals_cpu() -> None:
    x = raw_images(100, seed=5)
    whiten = GcnZca.from_state(fit_gcn_zca(x))
    on_cuda = whiten(x.cuda())
    assert on_cuda.device.type == "cuda"
    assert torch.allclose(on_cuda.cpu(), whiten(x), atol=1e-4)
