"""Record reference outputs of imagecorruptions 1.1.2 on a small image for tests/test_corruptions.py.

Run in an environment where ``pip install imagecorruptions==1.1.2`` works (it is not a qgen dependency):
    python tests/data/make_imagecorruptions_fixture.py tests/data/imagecorruptions_1.1.2.npz
Only calls the package's public corruption functions and helpers; the CIFAR-table defocus and brightness
use its ``disk`` kernel / scikit-image's HSV with the CIFAR-10-C parameters.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import skimage as sk
from imagecorruptions import corruptions as ic
from PIL import Image


def test_image(h: int, w: int, c: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(6 * xx + 2 * k) * np.cos(4 * yy - k) for k in range(c)]
    base = 0.5 + 0.4 * np.stack(channels, -1)
    noise = np.random.RandomState(0).uniform(-0.05, 0.05, base.shape)
    return np.clip((base + noise) * 255, 0, 255).astype(np.uint8)


def main(target: str) -> None:
    rgb, grey = test_image(32, 32, 3), test_image(28, 28, 1)[..., 0]
    out: dict[str, np.ndarray] = {"rgb": rgb, "grey": grey}
    for s in (1, 3, 5):
        out[f"imagenet_defocus_blur_{s}"] = ic.defocus_blur(rgb, s)
        out[f"imagenet_defocus_blur_grey_{s}"] = ic.defocus_blur(grey / 1.0, s)
        out[f"imagenet_brightness_{s}"] = ic.brightness(rgb, s)
        out[f"imagenet_contrast_{s}"] = ic.contrast(rgb, s)
        out[f"imagenet_jpeg_compression_{s}"] = np.asarray(ic.jpeg_compression(Image.fromarray(rgb), s))
    cifar_defocus = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]
    cifar_brightness = [0.05, 0.1, 0.15, 0.2, 0.3]
    for s in range(1, 6):
        kernel = ic.disk(radius=cifar_defocus[s - 1][0], alias_blur=cifar_defocus[s - 1][1])
        x = rgb / 255.0
        out[f"cifar_defocus_blur_{s}"] = (
            np.clip(np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(3)], -1), 0, 1) * 255
        )
        if s not in (1, 5):
            continue
        hsv = sk.color.rgb2hsv(rgb / 255.0)
        hsv[..., 2] = np.clip(hsv[..., 2] + cifar_brightness[s - 1], 0, 1)
        out[f"cifar_brightness_{s}"] = np.clip(sk.color.hsv2rgb(hsv), 0, 1) * 255
    for radius, sigma, angle in [(10, 3, 30.0), (15, 5, -20.0), (6, 2, 7.5)]:
        out[f"motion_{radius}_{sigma}_{angle}"] = ic._motion_blur(
            rgb, radius=radius, sigma=sigma, angle=angle
        )
    np.savez_compressed(
        target, **{k: np.asarray(v, dtype=np.float32) if v.dtype != np.uint8 else v for k, v in out.items()}
    )


if __name__ == "__main__":
    main(sys.argv[1])
