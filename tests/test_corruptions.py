"""Corruptions (qgen.data.corruptions) and corrupted test sets (qgen.data.corrupted)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from qgen.data import corruptions as C
from qgen.data.corrupted import (
    generate_set,
    load_corrupted,
    prepare_released,
    prepare_released_imagenet_c,
    read_imagenet_c,
    read_npy_set,
)
from qgen.data.integrity import DataIntegrityError, DatasetNotFoundError

FIXTURE = Path(__file__).parent / "data" / "imagecorruptions_1.1.2.npz"
RANDOM = {
    "gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
    "elastic_transform",
}  # fmt: skip
# mean |corrupted - clean| non-decreasing in severity by definition (a stronger parameter, same operation)
MONOTONE = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
)


def smooth_images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        f = rng.uniform(2, 8, size=(c, 2))
        phase = rng.uniform(0, 6, size=c)
        img = 0.5 + 0.35 * np.stack(
            [np.sin(f[k, 0] * xx + phase[k]) * np.cos(f[k, 1] * yy) for k in range(c)], -1
        )
        out.append(np.clip(img * 255 + rng.normal(0, 4, img.shape), 0, 255))
    return np.asarray(out).astype(np.uint8)


# --- corruptions -------------------------------------------------------------------------------------


def test_order_and_tables_complete() -> None:
    assert C.CORRUPTIONS[0] == "gaussian_noise" and C.CORRUPTIONS[-1] == "jpeg_compression"
    assert len(C.CORRUPTIONS) == 15
    for table in C.PARAMS.values():
        assert tuple(table) == C.CORRUPTIONS and all(len(v) == 5 for v in table.values())


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_every_corruption_every_size(shape: tuple[int, int, int]) -> None:
    x = smooth_images(2, *shape)
    for name in C.CORRUPTIONS:
        severe = C.corrupt(x, name, 5, seed=1)
        assert severe.shape == x.shape and severe.dtype == np.uint8
        assert np.abs(severe.astype(int) - x).mean() > 0.05, name  # changes the images


def test_deterministic_and_seed_dependent() -> None:
    x = smooth_images(3, 32, 32, 3)
    for name in C.CORRUPTIONS:
        a, b = C.corrupt(x, name, 3, seed=7), C.corrupt(x, name, 3, seed=7)
        assert np.array_equal(a, b), name
        other = C.corrupt(x, name, 3, seed=8)
        assert (not np.array_equal(a, other)) == (name in RANDOM), name


def test_chunks_equal_one_call() -> None:
    x = smooth_images(5, 28, 28, 1)
    for name in ("gaussian_noise", "glass_blur", "frost", "elastic_transform"):
        whole = C.corrupt(x, name, 4, seed=3)
        parts = [C.corrupt(x[a:b], name, 4, seed=3, index_offset=a) for a, b in ((0, 2), (2, 3), (3, 5))]
        assert np.array_equal(whole, np.concatenate(parts)), name
        # images of one call differ from each other's noise: the index enters the generator
        assert not np.array_equal(
            C.corrupt(x[:1], name, 4, seed=3), C.corrupt(x[:1], name, 4, seed=3, index_offset=1)
        )


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (64, 64, 3)])
def test_severity_increases_distortion(shape: tuple[int, int, int]) -> None:
    x = smooth_images(max(6, 4096 // int(np.prod(shape))), *shape, seed=2)  # enough values for the mean
    for name in MONOTONE:
        d = [np.abs(C.corrupt(x, name, s, seed=0).astype(float) - x).mean() for s in C.SEVERITIES]
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(d)), (name, d)
        assert d[-1] > d[0], (name, d)


def test_bad_input_errors() -> None:
    x = smooth_images(1, 32, 32, 3)
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupt(x, "rain", 1, 0)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(x, "fog", 6, 0)
    with pytest.raises(ValueError, match="uint8"):
        C.corrupt(x.astype(np.float32), "fog", 1, 0)
    with pytest.raises(ValueError, match="channels"):
        C.corrupt(np.zeros((1, 8, 8, 2), np.uint8), "fog", 1, 0)
    with pytest.raises(ValueError, match="seed"):
        C.corrupt(x, "fog", 1, -1)
    with pytest.raises(ValueError, match="small_images"):
        C.CorruptionOptions(small_images="stretch")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(C.CORRUPTIONS),
    severity=st.integers(1, 5),
    side=st.integers(4, 40),
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31),
    pixels=st.integers(0, 255),
)
def test_range_and_shape_property(
    name: str, severity: int, side: int, channels: int, seed: int, pixels: int
) -> None:
    rng = np.random.default_rng(seed)
    x = np.where(
        rng.random((2, side, side + 3, channels)) < 0.5,
        pixels,
        rng.integers(0, 256, (2, side, side + 3, channels)),
    )
    x = x.astype(np.uint8)
    y = C.corrupt(x, name, severity, seed)
    assert y.shape == x.shape and y.dtype == np.uint8


# --- against formulas and the reference package's outputs ----------------------------------------------


def _apply(name: str, x: np.ndarray, severity: int, table: C.Table, seed: int = 0) -> np.ndarray:
    ctx = C._Context(table, C.CorruptionOptions(table=table))
    fn = C._FUNCTIONS[name]
    return fn(x.astype(np.float64), C.PARAMS[table][name][severity - 1], np.random.default_rng(seed), ctx)


def test_matches_imagecorruptions_outputs() -> None:
    """Outputs of imagecorruptions 1.1.2 (numpy 2 / scikit-image 0.26; tests/data/make_..._fixture.py)."""
    ref = np.load(FIXTURE)
    rgb, grey = ref["rgb"], ref["grey"][..., None]
    for key in ref.files:
        if key in ("rgb", "grey"):
            continue
        want = ref[key].astype(np.float64)
        if key.startswith("motion_"):
            radius, sigma, angle = (float(v) for v in key.split("_")[1:])
            got = C.motion_blur_array(rgb.astype(np.float64), radius, sigma, angle)
        else:
            table, rest = key.split("_", 1)
            name, severity = rest.rsplit("_", 1)
            image = rgb
            if name.endswith("_grey"):
                name, image = name.removesuffix("_grey"), grey
            got = _apply(name, image, int(severity), table)  # type: ignore[arg-type]
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-3, err_msg=key)


def test_noise_formulas() -> None:
    x = np.full((64, 64, 3), 128, np.uint8)
    for s in C.SEVERITIES:
        sigma = C.CIFAR_PARAMS["gaussian_noise"][s - 1]
        out = _apply("gaussian_noise", x, s, "cifar") / 255 - 128 / 255
        assert abs(out.std() - sigma) < 0.1 * sigma
        amount = C.CIFAR_PARAMS["impulse_noise"][s - 1]
        imp = _apply("impulse_noise", x, s, "cifar")
        changed = imp != 128
        assert abs(changed.mean() - amount) < 0.3 * amount + 0.002
        assert set(np.unique(imp[changed])) <= {0.0, 255.0}
        lam = C.CIFAR_PARAMS["shot_noise"][s - 1]
        shot = _apply("shot_noise", x, s, "cifar") / 255
        assert (
            abs(shot.mean() - 128 / 255) < 0.01
            and abs(shot.var() - (128 / 255) / lam) < 0.2 * (128 / 255) / lam
        )


def test_contrast_brightness_formulas() -> None:
    x = smooth_images(1, 32, 32, 3)[0]
    got = _apply("contrast", x, 2, "cifar")
    mean = (x / 255).mean(axis=(0, 1))
    np.testing.assert_allclose(got, ((x / 255 - mean) * 0.5 + mean) * 255, atol=1e-9)
    grey = x[..., :1]
    np.testing.assert_allclose(_apply("brightness", grey, 5, "cifar"), np.clip(grey / 255 + 0.3, 0, 1) * 255)
    black = np.zeros((4, 4, 3), np.uint8)
    assert np.allclose(_apply("brightness", black, 1, "imagenet"), 0.1 * 255)


def test_glass_shuffle_equals_sequential_loop() -> None:
    """The vectorized moves equal the reference's loop (x[h, w] = x[h', w'], in order) on the same draws."""
    x = np.random.default_rng(0).integers(0, 256, (13, 11, 3)).astype(np.uint8)
    for delta, iterations in ((1, 1), (2, 3), (4, 2)):
        got = C.glass_shuffle(x.copy(), delta, iterations, np.random.default_rng(5))
        rng, want = np.random.default_rng(5), x.copy()
        hs, ws = np.arange(13 - delta, delta, -1), np.arange(11 - delta, delta, -1)
        for _ in range(iterations):
            off = rng.integers(-delta, delta, size=(len(hs), len(ws), 2))
            for i, h in enumerate(hs):
                for j, w in enumerate(ws):
                    want[h, w] = want[h + off[i, j, 1], w + off[i, j, 0]]
        assert np.array_equal(got, want), (delta, iterations)


def test_motion_kernel_imagemagick() -> None:
    weights, dy, dx = C.motion_kernel(6, 2, 0.0)
    assert len(weights) == 13 and np.isclose(weights.sum(), 1) and np.all(np.diff(weights) < 0)
    assert np.array_equal(dy, np.zeros(13)) and np.array_equal(dx, np.arange(13))
    _, dy, dx = C.motion_kernel(3, 1, 90.0)
    assert np.array_equal(dx, np.zeros(7)) and np.array_equal(dy, np.arange(7))


def test_small_image_modes() -> None:
    x = smooth_images(2, 8, 8, 1)
    identity = C.CorruptionOptions(small_images="residual")
    # contrast's change is linear: the residual path is close to contrast at the native size
    native = C.corrupt(x, "contrast", 1, 0, options=C.CorruptionOptions(small_images="native")).astype(int)
    residual = C.corrupt(x, "contrast", 1, 0, options=identity).astype(int)
    assert np.abs(native - residual).mean() < 3
    modes = {
        m: C.corrupt(x, "zoom_blur", 3, 0, options=C.CorruptionOptions(small_images=m))
        for m in C.SMALL_IMAGE_MODES
    }
    assert len({v.tobytes() for v in modes.values()}) == 3
    assert (
        C.CorruptionOptions().table_for(32, 32) == "cifar"
        and C.CorruptionOptions().table_for(64, 64) == "imagenet"
    )


def test_frost_textures_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in C.FROST_FILES:
        Image.fromarray(rng.integers(0, 256, (90, 120, 3)).astype(np.uint8)).save(tmp_path / name)
    x = smooth_images(2, 32, 32, 3)
    opts = C.CorruptionOptions(frost_textures=str(tmp_path))
    photo = C.corrupt(x, "frost", 2, 0, options=opts)
    assert not np.array_equal(photo, C.corrupt(x, "frost", 2, 0))
    assert set(opts.to_dict()["frost_source"]) == set(C.FROST_FILES)
    with pytest.raises(DatasetNotFoundError, match="frost texture"):
        C.corrupt(x, "frost", 2, 0, options=C.CorruptionOptions(frost_textures=str(tmp_path / "none")))


# --- corrupted sets ------------------------------------------------------------------------------------


def write_released(root: Path, names: tuple[str, ...] = ("fog", "snow"), n: int = 4) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n, dtype=np.uint8) % 3
    np.save(root / "labels.npy", np.tile(labels, 5))
    for k, name in enumerate(names):
        blocks = [np.full((n, 6, 5, 3), 10 * s + k, np.uint8) for s in C.SEVERITIES]
        for b in blocks:
            b[:, 0, 0, 0] = np.arange(n)  # image order inside the block
        np.save(root / f"{name}.npy", np.concatenate(blocks))
    return labels


def test_npy_reader_slices_severities(tmp_path: Path) -> None:
    labels = write_released(tmp_path)
    data = read_npy_set(tmp_path, ["fog", "snow"], expected_n=4, expected_shape=(6, 5, 3))
    assert data.n == 4 and data.image_shape == (6, 5, 3)
    for s in C.SEVERITIES:
        fog = data.images("fog", s)
        assert fog.shape == (4, 6, 5, 3) and np.all(fog[:, 1:] == 10 * s)
        assert np.array_equal(fog[:, 0, 0, 0], np.arange(4))
        assert np.all(data.images("snow", s)[:, 3] == 10 * s + 1)
        assert np.array_equal(data.labels(s), labels)
    assert isinstance(data.images("fog", 2).base, np.memmap) or isinstance(data.images("fog", 2), np.memmap)
    sub = read_npy_set(tmp_path, ["fog"], severities=(2, 5))
    assert sub.severities == (2, 5) and np.all(sub.images("fog", 5)[:, 2] == 50)
    with pytest.raises(KeyError):
        sub.images("fog", 1)


def test_npy_reader_errors(tmp_path: Path) -> None:
    write_released(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"gaussian_noise\.npy"):
        read_npy_set(tmp_path)  # the 15 corruptions by default
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        read_npy_set(tmp_path / "nowhere", ["fog"])
    with pytest.raises(DataIntegrityError, match="expected"):
        read_npy_set(tmp_path, ["fog"], expected_shape=(32, 32, 3))
    with pytest.raises(DataIntegrityError, match="severity blocks of 10"):
        read_npy_set(tmp_path, ["fog"], expected_n=10)
    np.save(tmp_path / "wrong.npy", np.zeros((20, 6, 5, 3), np.float32))
    with pytest.raises(DataIntegrityError, match="uint8"):
        read_npy_set(tmp_path, ["wrong"])
    np.save(tmp_path / "short.npy", np.zeros((16, 6, 5, 3), np.uint8))
    with pytest.raises(DataIntegrityError, match="16 rows"):
        read_npy_set(tmp_path, ["short"])
    bad = np.tile(np.arange(4), 5)
    bad[-1] = 3 - bad[-1]
    np.save(tmp_path / "labels.npy", bad)
    with pytest.raises(DataIntegrityError, match="block 5 differ"):
        read_npy_set(tmp_path, ["fog"])
    np.save(tmp_path / "labels.npy", np.arange(18))
    with pytest.raises(DataIntegrityError, match="not 5 severity blocks"):
        read_npy_set(tmp_path, ["fog"])


def test_generate_and_load(tmp_path: Path) -> None:
    x = smooth_images(7, 8, 8, 1).transpose(0, 3, 1, 2)  # (N, C, H, W) as prepared test.pt stores it
    y = np.arange(7) % 10
    out = tmp_path / "gen"
    meta = generate_set(
        x, y, out, ["gaussian_noise", "pixelate"], (1, 3), seed=4, chunk=3, source={"dataset": "digits"}
    )
    assert meta["n"] == 7 and meta["image_shape"] == [8, 8, 1] and meta["severities"] == [1, 3]
    on_disk = json.loads((out / "meta.json").read_text())
    assert set(on_disk["files"]) == {"labels.npy", "gaussian_noise.npy", "pixelate.npy"}
    assert on_disk["options"]["small_images"] == "residual" and on_disk["source"] == {"dataset": "digits"}
    data = load_corrupted(out, full=True)
    nhwc = x.transpose(0, 2, 3, 1)
    assert np.array_equal(data.images("gaussian_noise", 3), C.corrupt(nhwc, "gaussian_noise", 3, 4))
    assert np.array_equal(data.labels(1), y) and np.array_equal(data.labels(3), y)
    with pytest.raises(KeyError):
        data.images("gaussian_noise", 2)
    # a second generation gives identical files (deterministic) and a changed file is caught
    again = generate_set(x, y, tmp_path / "again", ["gaussian_noise", "pixelate"], (1, 3), seed=4)
    assert again["checksum"] == meta["checksum"]
    with open(out / "pixelate.npy", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(DataIntegrityError, match="bytes"):
        load_corrupted(out)
    (out / "pixelate.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing"):
        load_corrupted(out)
    with pytest.raises(DatasetNotFoundError, match=r"meta\.json"):
        load_corrupted(tmp_path / "nothing")


def test_generate_accepts_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(smooth_images(2, 8, 8, 3).transpose(0, 3, 1, 2).copy())
    meta = generate_set(x, torch.tensor([1, 2]), tmp_path, ["contrast"], (5,), seed=0)
    assert meta["image_shape"] == [8, 8, 3]
    assert np.array_equal(load_corrupted(tmp_path).labels(5), [1, 2])


def test_prepare_released(tmp_path: Path) -> None:
    write_released(tmp_path / "c10c")
    meta = prepare_released(
        tmp_path / "c10c", tmp_path / "out", ["fog", "snow"], expected_n=4, expected_shape=(6, 5, 3)
    )
    assert meta["origin"] == "released" and len(meta["files"]["fog.npy"]["sha256"]) == 64
    data = load_corrupted(tmp_path / "out", full=True)
    assert np.all(data.images("snow", 4)[:, 2] == 41)
    np.save(tmp_path / "c10c" / "fog.npy", np.zeros((20, 6, 5, 3), np.uint8))  # same size, other content
    load_corrupted(tmp_path / "out")  # sizes agree
    with pytest.raises(DataIntegrityError, match="sha256"):
        load_corrupted(tmp_path / "out", full=True)
    with pytest.raises(DataIntegrityError):
        prepare_released(tmp_path / "c10c", tmp_path / "out2", ["fog"])  # 4 images, not CIFAR's 10000


def write_imagenet_c(root: Path) -> None:
    for corruption in ("fog", "snow"):
        for s in (1, 2):
            for k, wnid in enumerate(("n01", "n02", "n03")):
                folder = root / corruption / str(s) / wnid
                folder.mkdir(parents=True)
                for i in range(k + 1):
                    Image.new("RGB", (4, 4), (k, i, s)).save(folder / f"img{i}.JPEG")


def test_imagenet_c_folders(tmp_path: Path) -> None:
    write_imagenet_c(tmp_path / "inc")
    data = read_imagenet_c(tmp_path / "inc", ["fog", "snow"], (1, 2))
    assert data.classes == ("n01", "n02", "n03")
    files, labels = data.files("snow", 2)
    assert files[0] == "snow/2/n01/img0.JPEG" and list(labels) == [0, 1, 1, 2, 2, 2]
    sub = read_imagenet_c(tmp_path / "inc", ["fog"], (1,), classes=["n02", "n03"])
    assert list(sub.files("fog", 1)[1]) == [0, 0, 1, 1, 1]
    with pytest.raises(DatasetNotFoundError, match="fog/3"):
        read_imagenet_c(tmp_path / "inc", ["fog"], (1, 3))
    with pytest.raises(DatasetNotFoundError, match="n09"):
        read_imagenet_c(tmp_path / "inc", ["fog"], (1,), classes=["n09"])
    meta = prepare_released_imagenet_c(tmp_path / "inc", tmp_path / "out", ["fog", "snow"], (1, 2))
    assert meta["counts"]["fog/1"] == 6
    loaded = load_corrupted(tmp_path / "out", full=True)
    assert loaded.files("snow", 2)[0] == files and list(loaded.files("snow", 2)[1]) == list(labels)
    (tmp_path / "inc" / "fog" / "1" / "n03" / "img2.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing"):
        load_corrupted(tmp_path / "out")
    (tmp_path / "inc" / "snow" / "1" / "n04").mkdir()
    with pytest.raises(DataIntegrityError, match="other class folders"):
        read_imagenet_c(tmp_path / "inc", ["fog", "snow"], (1, 2))
