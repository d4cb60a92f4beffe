"""The 15 ImageNet-C corruptions of Hendrycks & Dietterich (2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR), severities 1-5, in numpy, scipy and Pillow only.

``corrupt(images, name, severity, seed)`` takes uint8 images (N, H, W, C), C = 1 or 3, and returns uint8
images of the same shape. Each corruption is the reference definition (make_cifar_c.py / make_imagenet_c.py
of github.com/hendrycks/robustness, read for the formulas and parameters; this is an independent
implementation) with the reference's final cast: clip to [0, 255], then truncate (``np.uint8``).

**Parameter table** (``CorruptionOptions.table``): ``"auto"`` uses the CIFAR-10-C table for images whose
smaller side is below ``cifar_below`` (64) and the ImageNet-C table otherwise. Where the reference hard-codes
the image side (32 or 224: glass-blur loop bounds, the fog map, the frost crop, elastic's ``IMSIZE``), the
actual size is used; the ImageNet-C elastic constants (``244 * k``) and the frost photographs are scaled by
side/224, the CIFAR frost photographs by 0.2 * side/32 (the reference's 0.2 at 32).

**Small images** (smaller side below ``min_side`` = 32, e.g. qgen's 8x8 ``digits`` and 28x28 ``mnist5k``),
``CorruptionOptions.small_images``:

- ``"residual"`` (default): resize bilinearly so that the smaller side is 32, corrupt at that size with the
  CIFAR table, and add the box-downsampled change (corrupted - resized clean) to the original image. An
  identity corruption leaves the image exactly as it was and the resize round trip adds no blur of its own;
  per-pixel noise is averaged over the upsampling factor (its std falls by about that factor).
- ``"roundtrip"``: resize up, corrupt, box-downsample the corrupted image itself.
- ``"native"``: corrupt at the native size with the CIFAR table (sizes taken from the image as above).

**Grey images** (C = 1) are corrupted as one channel; every colour step reduces to its value on a grey RGB
image (HSV brightness is x + c, the snow mix uses the grey image itself), frost textures are converted with
the ITU-R 601 luma weights.

**Determinism**: every image has its own ``numpy.random.Generator`` seeded by (seed, crc32 of the corruption
name, severity, index), where index = ``index_offset`` + the row in the call, so splitting a set into chunks
(each with its ``index_offset``) gives the same images as one call.

Reconstructions (the reference could not be followed exactly; each is a documented choice):

- *motion blur*: the reference calls ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` through Wand.
  Here the kernel is built as ImageMagick's MotionBlurImage builds it (as recalled from its effect.c, and
  checked against imagecorruptions' numpy port): width 2*ceil(radius)+1, one-sided Gaussian weights
  exp(-i^2/(2 sigma^2)) normalized to sum 1, tap i sampled at offset (x, y) = (ceil(i cos a - 1/2),
  ceil(i sin a - 1/2)), edge pixels repeated beyond the border, the result rounded to 8 bit as the
  reference's PNG round trip does.
- *frost*: the reference blends one of five frost photographs (frost1-5, shipped with its repository and with
  imagecorruptions), which are not part of qgen's dependencies. ``frost_textures`` may name a folder holding
  them (``frost1.png frost2.png frost3.png frost4.jpg frost5.jpg``), then the reference procedure is followed
  (random photograph, scaled as above, random crop). Without it (default) a procedural texture is used: a
  ridged multi-octave noise, given the per-channel mean and std of one of the five photographs (measured from
  imagecorruptions 1.1.2's files, ``FROST_STATS``), chosen at random. This is a reconstruction, not the
  ImageNet-C frost.
- *glass blur*: the reference's pixel "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on an (H, W, 3)
  array copies views, so it sets x[h, w] = x[h', w'] and leaves x[h', w'] as it was; that effective
  behaviour (the one the released CIFAR-10-C / ImageNet-C were made with) is used for every channel count.
- scikit-image's ``gaussian`` (mode nearest, truncate 4) and ``random_noise(mode='s&p')``, OpenCV's
  ``filter2D`` / ``GaussianBlur`` (border reflect-101), ``warpAffine`` and ``cvtColor`` are re-expressed with
  scipy.ndimage; OpenCV's fixed-point bilinear interpolation and its frost resize differ in the last bits.
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
Table = Literal["cifar", "imagenet"]

# --- parameter tables (per severity 1..5) ------------------------------------------------------------
# make_cifar_c.py (CIFAR-10-C / CIFAR-100-C)
CIFAR_PARAMS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # multiples of the image side (IMSIZE): (alpha, sigma, affine jitter)
    "elastic_transform": (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}
# make_imagenet_c.py (ImageNet-C, 224x224)
IMAGENET_PARAMS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    # multiples of 244 (the reference's constant for 224-pixel images): (alpha, sigma, affine jitter)
    "elastic_transform": (
        (2, 0.7, 0.1),
        (2, 0.08, 0.2),
        (0.05, 0.01, 0.02),
        (0.07, 0.01, 0.02),
        (0.12, 0.01, 0.02),
    ),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}
PARAMS: dict[str, dict[str, tuple[Any, ...]]] = {"cifar": CIFAR_PARAMS, "imagenet": IMAGENET_PARAMS}

#: per-channel (RGB) mean and std of the reference frost photographs frost1-5 (imagecorruptions 1.1.2 files)
FROST_STATS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((77.7, 149.1, 165.7), (26.9, 16.5, 15.3)),
    ((200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
    ((200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
    ((137.6, 152.8, 165.2), (28.5, 28.5, 29.9)),
    ((112.4, 123.4, 134.8), (44.4, 43.3, 41.7)),
)
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, OpenCV's RGB2GRAY
SMALL_IMAGE_MODES = ("residual", "roundtrip", "native")


@dataclass(frozen=True)
class CorruptionOptions:
    """How images are corrupted beyond (name, severity, seed); recorded in a generated set's meta.json.

    ``table``: "auto" (CIFAR table below ``cifar_below`` pixels of smaller side, else ImageNet), "cifar" or
    "imagenet". ``small_images``: "residual", "roundtrip" or "native" for images whose smaller side is below
    ``min_side`` (module docstring). ``frost_textures``: a folder with the reference frost photographs, or
    None for the procedural reconstruction."""

    table: Literal["auto", "cifar", "imagenet"] = "auto"
    cifar_below: int = 64
    small_images: Literal["residual", "roundtrip", "native"] = "residual"
    min_side: int = 32
    frost_textures: str | None = None

    def __post_init__(self) -> None:
        if self.table not in ("auto", "cifar", "imagenet"):
            raise ValueError(f"table: expected 'auto', 'cifar' or 'imagenet', got {self.table!r}")
        if self.small_images not in SMALL_IMAGE_MODES:
            raise ValueError(f"small_images: expected one of {SMALL_IMAGE_MODES}, got {self.small_images!r}")
        if self.min_side < 1 or self.cifar_below < 1:
            raise ValueError("min_side and cifar_below must be positive")

    def table_for(self, height: int, width: int) -> Table:
        """The parameter table used for images of this size (after any small-image resize)."""
        if self.table != "auto":
            return self.table
        return "cifar" if min(height, width) < self.cifar_below else "imagenet"

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON, with the frost source (the textures' sha256 when a folder is given)."""
        out: dict[str, Any] = asdict(self)
        if self.frost_textures is None:
            out["frost_source"] = "procedural reconstruction (ridged noise with FROST_STATS)"
        else:
            from qgen.io import sha256_file

            folder = Path(self.frost_textures)
            out["frost_source"] = {name: sha256_file(folder / name) for name in FROST_FILES}
        return out


# --- helpers -----------------------------------------------------------------------------------------


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` for (seed, corruption, severity)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, index])


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``gaussian(x, sigma, channel_axis=-1)``: per-channel scipy Gaussian filter."""
    sigmas = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sigmas, mode=mode, truncate=truncate)


def _cv_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's getGaussianKernel(size, sigma) for sigma > 0."""
    i = np.arange(size) - (size - 1) / 2
    k = np.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a normalized disk of ``radius`` (17x17 up to radius 8), anti-aliased by a 3x3
    (radius <= 8) or 5x5 Gaussian of std ``alias_blur`` (OpenCV GaussianBlur, border reflect-101)."""
    half, ksize = (8, 3) if radius <= 8 else (math.ceil(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    kernel /= kernel.sum()
    g = _cv_gaussian_kernel(ksize, alias_blur)
    kernel = ndimage.correlate1d(kernel, g, axis=0, mode="mirror")
    return ndimage.correlate1d(kernel, g, axis=1, mode="mirror")


def motion_kernel(radius: float, sigma: float, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageMagick's motion-blur taps: weights and (dy, dx) offsets of each tap (module docstring)."""
    if radius <= 0 or sigma <= 0:
        raise ValueError(f"motion blur needs radius > 0 and sigma > 0, got {radius}, {sigma}")
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i**2) / (2 * sigma**2))
    weights /= weights.sum()
    a = math.radians(angle)
    dx = np.ceil(i * math.cos(a) - 0.5).astype(np.int64)
    dy = np.ceil(i * math.sin(a) - 0.5).astype(np.int64)
    return weights, dy, dx


def motion_blur_array(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion-blur an (H, W, C) float array: sum of weighted taps, edge pixels repeated (not rounded)."""
    weights, dy, dx = motion_kernel(radius, sigma, angle)
    h, w = x.shape[:2]
    rows, cols = np.arange(h), np.arange(w)
    out = np.zeros(x.shape, dtype=np.float64)
    for wt, oy, ox in zip(weights, dy, dx, strict=True):
        out += wt * x[np.clip(rows + oy, 0, h - 1)][:, np.clip(cols + ox, 0, w - 1)]
    return out


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of (H, W, ...) by ``factor`` >= 1 (linear interpolation), keeping the size."""
    out = x
    for axis in (0, 1):
        n = x.shape[axis]
        crop = math.ceil(n / factor)
        top = (n - crop) // 2
        out = np.take(out, np.arange(top, top + crop), axis=axis)
    zoom = [factor, factor] + [1] * (x.ndim - 2)
    out = ndimage.zoom(out, zoom, order=1)
    for axis in (0, 1):
        n = x.shape[axis]
        trim = (out.shape[axis] - n) // 2
        out = np.take(out, np.arange(trim, trim + n), axis=axis)
    return out


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map of side ``size`` (a power of two) in [0, 1]; the random offset of a new
    point is wibble * U(-wibble, wibble), wibble starting at 100 and divided by ``decay`` each level."""
    if size & (size - 1):
        raise ValueError(f"plasma_fractal: size must be a power of two, got {size}")
    m = np.zeros((size, size))
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = m[0::step, 0::step]
        total = corners + np.roll(corners, -1, axis=0)
        total = total + np.roll(total, -1, axis=1)
        m[half::step, half::step] = noisy_mean(total)
        centres, corners = m[half::step, half::step], m[0::step, 0::step]
        # points between horizontal neighbours: two corners (left/right) and two centres (above/below)
        m[0::step, half::step] = noisy_mean(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        )
        # points between vertical neighbours
        m[half::step, 0::step] = noisy_mean(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        )
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def glass_shuffle(x: np.ndarray, delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The glass-blur pixel moves on (H, W, C): for h = H-delta..delta+1 and w = W-delta..delta+1 (descending,
    row by row) x[h, w] = x[h + dy, w + dx] with (dx, dy) uniform in [-delta, delta) drawn per position.

    The sequential loop is resolved at once: a move reads the pixel's final value when its source was
    moved earlier in the pass and its original value otherwise (pointer jumping over those chains)."""
    h, w = x.shape[:2]
    hs, ws = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)
    if len(hs) == 0 or len(ws) == 0:
        return x
    flat = x.reshape(h * w, -1)
    dst = (hs[:, None] * w + ws[None, :]).ravel()
    order = np.arange(dst.size)
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(len(hs), len(ws), 2))
        src = ((hs[:, None] + offsets[..., 1]) * w + ws[None, :] + offsets[..., 0]).ravel()
        time = np.full(h * w, dst.size)
        time[dst] = order
        link = np.where(time[src] < order, time[src], -1)  # earlier move whose result is read
        value = src.copy()
        while (active := link >= 0).any():
            value = np.where(active, value[np.maximum(link, 0)], value)
            link = np.where(active, link[np.maximum(link, 0)], link)
        new = flat.copy()
        new[dst] = flat[value]
        flat = new
    return flat.reshape(x.shape)


def _pil(x: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(x[..., 0] if x.shape[2] == 1 else x, mode="L" if x.shape[2] == 1 else "RGB")


def _from_pil(image: Any, channels: int) -> np.ndarray:
    a = np.asarray(image)
    return a[..., None] if a.ndim == 2 else a[..., :channels]


def _resize_float(x: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """Resize an (H, W, C) float array per channel with Pillow's mode-F resampling."""
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}[method]
    return np.stack(
        [
            np.asarray(
                Image.fromarray(x[..., c].astype(np.float32), mode="F").resize((width, height), resample)
            )
            for c in range(x.shape[2])
        ],
        axis=-1,
    ).astype(np.float64)


def _grey(x: np.ndarray) -> np.ndarray:
    """(H, W, 1) luma of an (H, W, C) array (the array itself when C = 1)."""
    return x if x.shape[2] == 1 else (x @ LUMA)[..., None]


@functools.lru_cache(maxsize=64)
def _frost_photo(folder: str, index: int, scale: float, min_h: int, min_w: int) -> np.ndarray:
    from PIL import Image

    path = Path(folder) / FROST_FILES[index]
    if not path.is_file():
        from qgen.data.integrity import DatasetNotFoundError

        raise DatasetNotFoundError(
            f"frost texture {path} is missing (frost_textures must hold {', '.join(FROST_FILES)})"
        )
    photo = Image.open(path).convert("RGB")
    scale = max(scale, (min_h + 1) / photo.height, (min_w + 1) / photo.width)
    size = (max(min_w + 1, round(photo.width * scale)), max(min_h + 1, round(photo.height * scale)))
    return np.asarray(photo.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


def procedural_frost(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Reconstructed frost texture (H, W, 3) in [0, 255]: ridged 4-octave value noise (cells of side/4,
    halving per octave), standardized, given one reference photograph's channel mean and std."""
    side = min(height, width)
    total = np.zeros((height, width))
    for octave in range(4):
        cell = max(1.0, side / (4 * 2**octave))
        gh, gw = math.ceil(height / cell) + 2, math.ceil(width / cell) + 2
        grid = rng.standard_normal((gh, gw))
        yy = np.arange(height) / cell
        xx = np.arange(width) / cell
        coords = np.meshgrid(yy, xx, indexing="ij")
        layer = ndimage.map_coordinates(grid, coords, order=1, mode="nearest")
        total += 0.5**octave * (1 - np.abs(np.tanh(layer))) ** 2
    total = (total - total.mean()) / max(total.std(), 1e-12)
    mean, std = FROST_STATS[int(rng.integers(len(FROST_STATS)))]
    return np.clip(np.asarray(mean) + np.asarray(std) * total[..., None], 0, 255)


# --- the corruptions: (x float (H, W, C) in 0..255, parameter, rng, context) -> float in ~0..255 -------


@dataclass(frozen=True)
class _Context:
    table: Table
    options: CorruptionOptions


def _gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    return np.clip(x / 255 + rng.normal(scale=c, size=x.shape), 0, 1) * 255


def _shot_noise(x: np.ndarray, c: float, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    return np.clip(rng.poisson(x / 255 * c) / c, 0, 1) * 255


def _impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    """Salt and pepper: each value is replaced with probability c, by 1 or 0 with equal odds."""
    out = x / 255
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out * 255


def _defocus_blur(
    x: np.ndarray, c: tuple[float, float], rng: np.random.Generator, ctx: _Context
) -> np.ndarray:
    kernel = disk_kernel(c[0], c[1])
    out = np.stack([ndimage.correlate(x[..., d] / 255, kernel, mode="mirror") for d in range(x.shape[2])], -1)
    return np.clip(out, 0, 1) * 255


def _glass_blur(
    x: np.ndarray, c: tuple[float, int, int], rng: np.random.Generator, ctx: _Context
) -> np.ndarray:
    sigma, delta, iterations = c
    blurred = (_gaussian(x / 255, sigma) * 255).astype(np.uint8)
    shuffled = glass_shuffle(blurred, int(delta), int(iterations), rng)
    return np.clip(_gaussian(shuffled / 255, sigma), 0, 1) * 255


def _motion_blur(
    x: np.ndarray, c: tuple[float, float], rng: np.random.Generator, ctx: _Context
) -> np.ndarray:
    angle = rng.uniform(-45, 45)
    return np.round(np.clip(motion_blur_array(x, c[0], c[1], angle), 0, 255))


def _zoom_factors(c: tuple[float, float, float]) -> np.ndarray:
    return np.arange(*c)


def _zoom_blur(
    x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator, ctx: _Context
) -> np.ndarray:
    x = (x / 255).astype(np.float32)
    factors = _zoom_factors(c)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, float(factor))
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def _snow(x: np.ndarray, c: tuple[float, ...], rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, mix = c
    x = (x / 255).astype(np.float32)
    layer = rng.normal(loc=loc, scale=scale, size=x.shape[:2])
    layer = clipped_zoom(layer[..., None], zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8).astype(np.float64)
    layer = np.round(np.clip(motion_blur_array(layer, radius, sigma, rng.uniform(-135, -45)), 0, 255)) / 255
    x = mix * x + (1 - mix) * np.maximum(x, _grey(x) * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    h, w = x.shape[:2]
    folder = ctx.options.frost_textures
    if folder is None:
        texture = procedural_frost(h, w, rng)
    else:
        side = min(h, w)
        scale = 0.2 * side / 32 if ctx.table == "cifar" else side / 224
        photo = _frost_photo(str(folder), int(rng.integers(len(FROST_FILES))), scale, h, w)
        top = int(rng.integers(0, photo.shape[0] - h))
        left = int(rng.integers(0, photo.shape[1] - w))
        texture = photo[top : top + h, left : left + w]
    if x.shape[2] == 1:
        texture = _grey(texture)
    return np.clip(c[0] * x + c[1] * texture, 0, 255)


def _fog(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    h, w = x.shape[:2]
    size = 1 << (max(h, w) - 1).bit_length()
    x = x / 255
    peak = x.max()
    x = x + c[0] * plasma_fractal(size, c[1], rng)[:h, :w, None]
    return np.clip(x * peak / (peak + c[0]), 0, 1) * 255


def _brightness(x: np.ndarray, c: float, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    """V += c in HSV: with hue and saturation fixed, RGB scales with V (a black pixel becomes grey V)."""
    x = x / 255
    value = x.max(axis=2, keepdims=True)
    new = np.clip(value + c, 0, 1)
    out = np.where(value > 0, x * (new / np.where(value > 0, value, 1)), new)
    return np.clip(out, 0, 1) * 255


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    x = x / 255
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _elastic_transform(
    x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator, ctx: _Context
) -> np.ndarray:
    h, w = x.shape[:2]
    side = min(h, w)
    unit = side if ctx.table == "cifar" else 244 * side / 224
    alpha, sigma, jitter = (k * unit for k in c)
    x = (x / 255).astype(np.float32)
    # random affine: three points around the centre (x, y), each moved by U(-jitter, jitter)
    centre = np.array([w // 2, h // 2], dtype=np.float64)
    size = side // 3
    src = np.array([centre + size, [centre[0] + size, centre[1] - size], centre - size])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape)
    forward = np.linalg.solve(np.column_stack([src, np.ones(3)]), dst).T  # 2x3, (x, y) -> (x, y)
    inverse = np.linalg.inv(forward[:, :2])
    swap = np.array([[0, 1], [1, 0]])
    matrix = swap @ inverse @ swap  # (row, col) output -> (row, col) input
    offset = -(swap @ inverse @ forward[:, 2])
    x = np.stack(
        [
            ndimage.affine_transform(x[..., d], matrix, offset=offset, order=1, mode="mirror")
            for d in range(x.shape[2])
        ],
        -1,
    )
    dx = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    dy = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(
        np.float32
    )
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + dy, xx + dx]
    out = np.stack(
        [ndimage.map_coordinates(x[..., d], coords, order=1, mode="reflect") for d in range(x.shape[2])], -1
    )
    return np.clip(out, 0, 1) * 255


def _pixelate(x: np.ndarray, c: float, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    from PIL import Image

    h, w, ch = x.shape
    image = _pil(x.astype(np.uint8))
    small = image.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return _from_pil(small.resize((w, h), Image.Resampling.BOX), ch).astype(np.float64)


def _jpeg_compression(x: np.ndarray, c: int, rng: np.random.Generator, ctx: _Context) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    _pil(x.astype(np.uint8)).save(buffer, "JPEG", quality=int(c))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return _from_pil(decoded.convert("L" if x.shape[2] == 1 else "RGB"), x.shape[2]).astype(np.float64)


_FUNCTIONS: dict[str, Callable[[np.ndarray, Any, np.random.Generator, _Context], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
assert tuple(_FUNCTIONS) == CORRUPTIONS


def _check(name: str, severity: int) -> None:
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer 1..5, got {severity!r}")


def corrupt_image(
    image: np.ndarray,
    name: str,
    severity: int,
    rng: np.random.Generator,
    options: CorruptionOptions | None = None,
) -> np.ndarray:
    """One corrupted (H, W, C) uint8 image as float (H, W, C), before the final clip and cast.

    Small images are handled by ``options.small_images``; the table is chosen on the size corrupted."""
    _check(name, severity)
    options = options or CorruptionOptions()
    h, w, channels = image.shape
    fn = _FUNCTIONS[name]
    if min(h, w) >= options.min_side or options.small_images == "native":
        table = options.table_for(h, w)
        return fn(image.astype(np.float64), PARAMS[table][name][severity - 1], rng, _Context(table, options))
    from PIL import Image

    factor = options.min_side / min(h, w)
    big_h, big_w = round(h * factor), round(w * factor)
    big = _from_pil(_pil(image).resize((big_w, big_h), Image.Resampling.BILINEAR), channels).astype(
        np.float64
    )
    table = options.table_for(big_h, big_w)
    corrupted = fn(big.copy(), PARAMS[table][name][severity - 1], rng, _Context(table, options))
    if options.small_images == "roundtrip":
        return _resize_float(corrupted, h, w, "box")
    return image + _resize_float(corrupted - big, h, w, "box")


def corrupt(
    images: np.ndarray,
    name: str,
    severity: int,
    seed: int,
    *,
    options: CorruptionOptions | None = None,
    index_offset: int = 0,
) -> np.ndarray:
    """Corrupt uint8 images (N, H, W, C), C in {1, 3}, with corruption ``name`` at ``severity`` (1-5).

    Image i uses the generator :func:`image_rng` (seed, name, severity, index_offset + i), one image at a
    time (memory bounded by an image's temporaries); the result is clipped to [0, 255] and truncated to
    uint8 as the reference does."""
    _check(name, severity)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            "corrupt expects a uint8 numpy array (N, H, W, C), got "
            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        )
    if images.shape[3] not in (1, 3):
        raise ValueError(f"corrupt expects 1 or 3 channels last (N, H, W, C), got shape {images.shape}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if index_offset < 0:
        raise ValueError(f"index_offset must be >= 0, got {index_offset}")
    options = options or CorruptionOptions()
    out = np.empty_like(images)
    for i in range(len(images)):
        rng = image_rng(int(seed), name, int(severity), index_offset + i)
        result = corrupt_image(images[i], name, int(severity), rng, options)
        out[i] = np.clip(result, 0, 255).astype(np.uint8)
    return out
