"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set): 1797 images, 10 classes.

Real data shipped inside the scikit-learn wheel, so the default pipeline needs no download.
Pixels (0..16) are stored as uint8; each batch is scaled to [0, 1] and standardized with the training
split's mean and std on the device (qgen.data.batches.Standardize).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qgen.data.registry import Split, register


@register("digits", input_shape=(1, 8, 8), num_classes=10, description="scikit-learn load_digits, 8x8")
def build_digits(params: dict[str, Any]) -> tuple[Split, Split, dict[str, Any]]:
    import sklearn
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=params["test_fraction"], random_state=params["split_seed"], stratify=y
    )
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def split(xs: np.ndarray, ys: np.ndarray) -> Split:
        pixels = np.rint(xs * 16.0).astype(np.uint8)  # exact: the values were integers 0..16
        return {"x": torch.from_numpy(np.ascontiguousarray(pixels[:, None])), "y": torch.from_numpy(ys)}

    info = {
        "source": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        "normalization": {"scale": 1 / 16, "mean": [mean], "std": [std]},
    }
    return split(x_tr, y_tr), split(x_te, y_te), info
