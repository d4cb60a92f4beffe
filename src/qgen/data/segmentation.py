"""Binary segmentation sets of the U-Net fixed-point paper (AskariHemmat et al. 2019; papers.md §3, issue 19).

Every set is a tensor set with ``task: segmentation``: ``x`` [N, 1, H, W] 2-D slices and ``y`` uint8 masks
[N, 1, H, W] with 1 = foreground (qgen.data.prepared). The splits follow the reference code
(hossein1387/U-Net-Fixed-Point-Quantization-for-Medical-Image-Segmentation, read for understanding) where it
can be followed, with one deliberate difference everywhere: the reference keeps the checkpoint with the
best *validation* dice and reports that dice, so its validation split doubles as the test split. Here the
held-out split is a test split that nothing selects on (a run's validation split, ``data.val_size``, is
carved from the training split). No set is augmented (qgen.data.batches: crops and flips would move the
image and not its mask); the reference's random elastic/affine transforms are not reproduced.

- ``em_synth`` (embedded): **synthetic** EM-like images generated from a seed, no download. Cells are the
  Voronoi cells of random seeds; pixels within a few pixels of a cell boundary are membrane. Cells get a
  per-cell grey level, a smooth intracellular texture and dark organelle blobs (labelled cell), membranes
  are dark; the image is blurred and noised. The mask is exact, in the ISBI convention: 1 = cell,
  0 = membrane. Not real data: tables must say so.
- ``isbi2012_em``: the ISBI 2012 EM challenge training stack, ``<root>/train-volume.tif`` and
  ``<root>/train-labels.tif`` (30 slices of 512×512 uint8; labels 255 = cell, 0 = membrane), read with
  ``tifffile``.
- ``spinal_gm``: the Spinal Cord Gray Matter segmentation challenge training data (Prados et al. 2017),
  ``<root>/site{1..4}-sc{01..10}-image.nii.gz`` and ``...-mask-r{1..4}.nii.gz``, read with ``nibabel``.
- ``nih_pancreas``: NIH Pancreas-CT (TCIA): labels ``label00XX.nii.gz`` as released, images as DICOM
  series (TCIA) or NIfTI conversions, read with ``pydicom`` / ``nibabel``.

What was verified in the reference code and what is reconstructed is stated in each builder's docstring.
Every loader records the md5 and sha256 of each upstream file it read in meta.json (``source_files``; a
DICOM series as one record whose sha256 is taken over its files' sha256s) and raises
:class:`~qgen.data.integrity.DatasetNotFoundError` naming the missing files, or
:class:`~qgen.data.integrity.DataIntegrityError` for a file that is unreadable or of the wrong shape.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgen.config import ConfigError
from qgen.data.integrity import DataIntegrityError, DatasetNotFoundError, check_files, file_digests
from qgen.data.registry import Split, register

#: bumped whenever the em_synth generator changes what it draws (recorded in meta.json)
EM_SYNTH_VERSION = 1

ISBI_VOLUME, ISBI_LABELS = "train-volume.tif", "train-labels.tif"
GM_SITES, GM_SUBJECTS, GM_RATERS = (1, 2, 3, 4), tuple(range(1, 11)), (1, 2, 3, 4)
NIH_LABEL_DIRS = ("TCIA_pancreas_labels-02-05-2017", "labels")
NIH_IMAGE_DIR = "Pancreas-CT"

# --- shared helpers ----------------------------------------------------------------------------------------


def _int_param(dataset: str, key: str, value: Any, low: int, *, none_ok: bool = False) -> int | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(
            f"datasets.{dataset}.{key}: expected an integer >= {low}{' or null' if none_ok else ''}, "
            f"got {value!r}"
        )
    return value


def _id_list(dataset: str, key: str, value: Any, allowed: Sequence[int]) -> list[int]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v not in allowed for v in value)
        or len(set(value)) != len(value)
    ):
        raise ConfigError(
            f"datasets.{dataset}.{key}: expected a non-empty list of distinct ids from {list(allowed)}, "
            f"got {value!r}"
        )
    return sorted(value)


def center_crop(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The centred ``rows``×``cols`` window of a 2-D array, zero-padded where it leaves the array.

    Offsets are ``round((H − rows) / 2)`` (Python rounding), as the reference's ``CenterCrop2D`` (PIL
    crop, which pads with zeros) computes them: 256 → 200 is the box [28, 28, 228, 228]."""
    h, w = image.shape
    top, left = round((h - rows) / 2), round((w - cols) / 2)
    out = np.zeros((rows, cols), dtype=image.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + rows, h), min(left + cols, w)
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = image[r0:r1, c0:c1]
    return out


def _stack(images: list[np.ndarray], masks: list[np.ndarray], float_x: bool = False) -> Split:
    import torch

    if not images:
        raise DataIntegrityError("a split holds no slices")
    x = np.stack(images)[:, None].astype(np.float32 if float_x else np.uint8)
    y = np.stack(masks)[:, None].astype(np.uint8)
    return {"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(np.ascontiguousarray(y))}


def _series_record(folder: Path, files: Sequence[Path], rel: str) -> dict[str, Any]:
    """One record for a DICOM series: file count, total size and a sha256 over its files' sha256s."""
    h = hashlib.sha256()
    size = 0
    for path in sorted(files):
        h.update(
            f"{path.relative_to(folder).as_posix()}:{file_digests(path, ('sha256',))['sha256']}\n".encode()
        )
        size += path.stat().st_size
    return {"file": rel, "files": len(files), "size": size, "sha256": h.hexdigest(), "md5_checked": False}


# --- em_synth: synthetic EM-like cells (embedded) -----------------------------------------------------------


def synth_em_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic EM-like image and its exact mask, both uint8 [size, size] (mask: 1 cell, 0 membrane).

    Cells: the Voronoi cells of ~size²/180 seeds drawn uniformly over the image and a 4-pixel margin.
    A pixel is membrane when its distance to the bisector between its nearest seed and its second or
    third nearest is below a half-width drawn in [0.9, 1.6] px (membranes 2–3 px wide). The grey image is
    rendered from the mask: cells at a per-cell level in [0.55, 0.8] plus a smooth texture (σ = 2 px
    filtered noise) minus dark organelle disks (radius 1–2.5 px, inside cells, labelled cell), membranes
    at a per-image level in [0.1, 0.2]; then a Gaussian blur (σ in [0.6, 1.0] px) and additive noise
    (σ = 0.05), clipped to [0, 1] and stored as 0..255.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    margin = 4.0
    n_cells = max(4, int(rng.poisson(size * size / 180.0)))
    seeds = rng.uniform(-margin, size + margin, size=(n_cells, 2))
    rr, cc = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    points = np.stack([rr.ravel(), cc.ravel()], axis=1)
    dist, idx = cKDTree(seeds).query(points, k=3)
    nearest = seeds[idx[:, 0]]
    # distance from p to the bisector of seeds a (nearest) and b: (|p−b|² − |p−a|²) / (2|a−b|)
    to_edge = np.full(len(points), np.inf)
    for j in (1, 2):
        other = seeds[idx[:, j]]
        gap = np.linalg.norm(other - nearest, axis=1)
        to_edge = np.minimum(to_edge, (dist[:, j] ** 2 - dist[:, 0] ** 2) / (2.0 * gap))
    half_width = rng.uniform(0.9, 1.6)
    mask = (to_edge >= half_width).reshape(size, size)
    cell_level = rng.uniform(0.55, 0.8, size=n_cells)[idx[:, 0]].reshape(size, size)
    texture = gaussian_filter(rng.standard_normal((size, size)), sigma=2.0)
    texture *= 0.06 / max(float(texture.std()), 1e-12)
    organelles = np.zeros((size, size))
    for _ in range(int(rng.poisson(size * size / 400.0))):
        r0, c0 = rng.uniform(0, size, size=2)
        radius, depth = rng.uniform(1.0, 2.5), rng.uniform(0.2, 0.35)
        organelles = np.maximum(organelles, depth * (((rr - r0) ** 2 + (cc - c0) ** 2) <= radius**2))
    membrane_level = rng.uniform(0.1, 0.2)
    image = np.where(mask, cell_level + texture - organelles, membrane_level)
    image = gaussian_filter(image, sigma=rng.uniform(0.6, 1.0))
    image = image + rng.normal(0.0, 0.05, size=(size, size))
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels, mask.astype(np.uint8)


def synth_em(n: int, size: int, seed: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images and masks [n, size, size] of split ``part`` (0 train, 1 test): image ``i`` is drawn
    from ``SeedSequence([seed, part, i])``, so the test images do not depend on ``n_train``."""
    images, masks = [], []
    for i in range(n):
        image, mask = synth_em_image(np.random.default_rng(np.random.SeedSequence([seed, part, i])), size)
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


@register(
    "em_synth",
    input_shape=(1, 64, 64),
    num_classes=1,
    description="SYNTHETIC EM-like cells (Voronoi membranes, texture, blur, noise), exact masks",
    prep_keys={"n_train": 48, "n_test": 16, "size": 64, "seed": 0},
    task="segmentation",
)
def build_em_synth(params: dict[str, Any]) -> tuple[Split, Split, dict[str, Any]]:
    """The synthetic set (:func:`synth_em_image`): ``n_train`` / ``n_test`` images of ``size``² pixels
    generated from ``seed`` (deterministic: the same settings give the same bytes)."""
    n_train = _int_param("em_synth", "n_train", params["n_train"], 1)
    n_test = _int_param("em_synth", "n_test", params["n_test"], 1)
    size = _int_param("em_synth", "size", params["size"], 16)
    seed = _int_param("em_synth", "seed", params["seed"], 0)
    assert n_train is not None and n_test is not None and size is not None and seed is not None
    splits = []
    for part, n in enumerate((n_train, n_test)):
        images, masks = synth_em(n, size, seed, part)
        splits.append(_stack(list(images), list(masks)))
    info = {
        "source": f"qgen.data.segmentation.synth_em_image v{EM_SYNTH_VERSION}: SYNTHETIC EM-like images "
        "generated from the seed (no upstream files); mask 1 = cell, 0 = membrane (ISBI convention)",
        "synthetic": True,
        "input_shape": [1, size, size],
    }
    return splits[0], splits[1], info


# --- isbi2012_em: ISBI 2012 EM stack (tifffile) -------------------------------------------------------------


def _read_tif(dataset: str, path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            array, pages = tif.asarray(), len(tif.pages)
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as err:
        raise DataIntegrityError(
            f"{dataset}: {path} is not a readable TIFF ({type(err).__name__}: {err})"
        ) from None
    if array.ndim != 3:
        raise DataIntegrityError(
            f"{dataset}: {path} holds an array of shape {array.shape}; expected a stack of 2-D slices "
            "[slices, H, W] (a multi-page grayscale TIFF)"
        )
    if pages != array.shape[0]:
        raise DataIntegrityError(
            f"{dataset}: {path} has {pages} page(s) but reads as an array of shape {array.shape}; expected "
            "one grayscale page per slice (not colour samples)"
        )
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
        raise DataIntegrityError(f"{dataset}: {path} must hold 8-bit values 0..255, got {array.dtype}")
    return array


@register(
    "isbi2012_em",
    input_shape=(1, 200, 200),
    num_classes=1,
    description="ISBI 2012 EM segmentation training stack (30 slices 512x512), last slices held out",
    prep_keys={"test_slices": 5, "resize": 256, "crop": 200},
    needs_root=True,
    layout=f"<root>/{ISBI_VOLUME} and <root>/{ISBI_LABELS} (multi-page TIFF, labels 255 = cell)",
    task="segmentation",
)
def build_isbi2012_em(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    """ISBI 2012 EM: the 30 labelled training slices; the last ``test_slices`` are the test split.

    Masks: label > 127 → 1 (cell), else 0 (membrane), the ISBI convention the reference keeps (its
    ``adjustData`` thresholds mask/255 at 0.5).

    Verified in the reference: EM images were 256×256 PNGs (``preprocessing/EM_Dataset``: zhixuhao/unet's
    ``data/membrane/train/aug``, i.e. the 512×512 slices resized by Keras and augmented offline) cropped to
    the box [28, 28, 228, 228], a centred 200×200 window (``crop: 200``); the training code reads the
    PNGs with ``ToTensor`` only (x/255). Its split script moves ``w[round(0.01·len):]`` to validation
    (99 %, not the 1 % the code seems to intend) and the validation dice is the one reported.
    Reconstructed: ``resize: 256`` downsamples by an integer factor f = H/256 keeping pixel
    (f·i + f//2) (what PIL/Keras nearest-neighbour resizing picks for an integer factor); null keeps
    512. The test split holds out whole slices (the last ``test_slices``, default 5 of 30) because the
    official test volume has no public labels and augmented copies of one slice must not straddle the
    split; no offline augmentation is made.
    """
    dataset = "isbi2012_em"
    test_slices = _int_param(dataset, "test_slices", params["test_slices"], 1)
    resize = _int_param(dataset, "resize", params["resize"], 1, none_ok=True)
    crop = _int_param(dataset, "crop", params["crop"], 1, none_ok=True)
    assert test_slices is not None
    records = check_files(dataset, root, [(ISBI_VOLUME, None), (ISBI_LABELS, None)])
    volume, labels = _read_tif(dataset, root / ISBI_VOLUME), _read_tif(dataset, root / ISBI_LABELS)
    if volume.shape != labels.shape:
        raise DataIntegrityError(
            f"{dataset}: {root / ISBI_VOLUME} has shape {volume.shape} but {root / ISBI_LABELS} has "
            f"{labels.shape}; expected one label slice per image slice"
        )
    n, h, w = volume.shape
    if test_slices >= n:
        raise ConfigError(
            f"datasets.{dataset}.test_slices: {test_slices} leaves none of the {n} slices to train"
        )
    masks = (labels > 127).astype(np.uint8)
    if resize is not None:
        if h % resize or w % resize or h != w:
            raise ConfigError(
                f"datasets.{dataset}.resize: {resize} does not divide the {h}×{w} slices by an integer factor"
            )
        f = h // resize
        volume, masks = volume[:, f // 2 :: f, f // 2 :: f], masks[:, f // 2 :: f, f // 2 :: f]
    if crop is not None:
        if crop > volume.shape[1]:
            raise ConfigError(f"datasets.{dataset}.crop: {crop} exceeds the {volume.shape[1]}-pixel slices")
        volume = np.stack([center_crop(s, crop, crop) for s in volume])
        masks = np.stack([center_crop(s, crop, crop) for s in masks])
    cut = n - test_slices
    train, test = _stack(list(volume[:cut]), list(masks[:cut])), _stack(list(volume[cut:]), list(masks[cut:]))
    info = {
        "source": f"ISBI 2012 EM segmentation challenge training data, read with tifffile from {root}",
        "source_files": records,
        "slices": {"train": list(range(cut)), "test": list(range(cut, n))},
        "input_shape": [1, *volume.shape[1:]],
    }
    return train, test, info


# --- spinal_gm: Spinal Cord Gray Matter challenge (nibabel) -------------------------------------------------


def _load_nifti(dataset: str, path: Path) -> Any:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(path)
        shape = image.shape
    except (ImageFileError, OSError, EOFError, ValueError) as err:
        raise DataIntegrityError(
            f"{dataset}: {path} is not a readable NIfTI file ({type(err).__name__}: {err})"
        ) from None
    if len(shape) != 3:
        raise DataIntegrityError(f"{dataset}: {path} holds a volume of shape {shape}; expected a 3-D volume")
    return image


def _nifti_array(dataset: str, path: Path) -> np.ndarray:
    image = _load_nifti(dataset, path)
    try:
        return np.asarray(image.get_fdata(dtype=np.float32))
    except (OSError, EOFError, ValueError, zlib.error) as err:  # zlib.error: a corrupt .gz
        raise DataIntegrityError(
            f"{dataset}: {path}: its data could not be read ({type(err).__name__}: {err})"
        ) from None


def _binary(dataset: str, path: Path, mask: np.ndarray, threshold: float) -> np.ndarray:
    if mask.size and (float(mask.min()) < 0 or float(mask.max()) > 1):
        raise DataIntegrityError(
            f"{dataset}: {path} holds values in [{float(mask.min())}, {float(mask.max())}]; a binary mask "
            "(0 background, 1 foreground, or a fraction of a resampled one) was expected"
        )
    return (mask >= threshold).astype(np.uint8)


def _instance_normalize(image: np.ndarray) -> np.ndarray:
    """(x − mean) / std of one slice (std with Bessel's correction, as torch's ``Tensor.std``, which the
    reference's ``NormalizeInstance`` uses); a constant slice becomes zeros."""
    image = image.astype(np.float64)
    mean = image.mean()
    std = image.std(ddof=1) if image.size > 1 else 0.0
    return ((image - mean) / std if std > 0 else image - mean).astype(np.float32)


def gm_file(site: int, subject: int, rater: int | None = None) -> str:
    """The challenge's file name of a subject's image (``rater`` None) or of one rater's GM mask."""
    stem = f"site{site:d}-sc{subject:02d}"
    return f"{stem}-image.nii.gz" if rater is None else f"{stem}-mask-r{rater:d}.nii.gz"


@register(
    "spinal_gm",
    input_shape=(1, 200, 200),
    num_classes=1,
    description="Spinal Cord Gray Matter challenge (4 sites x 10 subjects, 4 raters), axial slices",
    prep_keys={"test_subjects": [9, 10], "sites": [1, 2, 3, 4], "raters": [1, 2, 3, 4], "crop": 200},
    needs_root=True,
    layout="<root>/site{1..4}-sc{01..10}-image.nii.gz and <root>/site{1..4}-sc{01..10}-mask-r{1..4}.nii.gz",
    task="segmentation",
)
def build_spinal_gm(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    """Spinal cord GM: 2-D slices along the third volume axis, subjects ``test_subjects`` held out.

    Verified in the reference (``UNET_GM_DATASET/*/gmchallenge_unet.py`` and its medicaltorch-derived
    ``datasets.py``): file names ``site{s}-sc{nn}-image.nii.gz`` / ``site{s}-sc{nn}-mask-r{r}.nii.gz``;
    all four sites, subjects 1–8 train and 9–10 validation (= our test); every rater's mask is its own
    (image, mask) pair, so each slice appears once per rater; slices along axis 2; training slices with an
    empty mask or an empty image are dropped (``SliceFilter``), validation slices are all kept; a centred
    200×200 crop (``CenterCrop2D``, zero-padded when the slice is smaller), then per-slice normalization
    (``NormalizeInstance``: (x − mean)/std of the cropped slice), stored here as float32 at preparation.
    Masks binarized at 0.5 (1 = grey matter).
    Not reproduced [NF]: the reference assumes the data "was previously resampled" without saying to
    what; the volumes are used at their native resolution.
    """
    dataset = "spinal_gm"
    test_subjects = _id_list(dataset, "test_subjects", params["test_subjects"], GM_SUBJECTS)
    sites = _id_list(dataset, "sites", params["sites"], GM_SITES)
    raters = _id_list(dataset, "raters", params["raters"], GM_RATERS)
    crop = _int_param(dataset, "crop", params["crop"], 1)
    assert crop is not None
    train_subjects = [s for s in GM_SUBJECTS if s not in test_subjects]
    if not train_subjects:
        raise ConfigError(
            f"datasets.{dataset}.test_subjects: holding out all 10 subjects leaves none to train"
        )
    names = [
        name
        for site in sites
        for subject in GM_SUBJECTS
        for name in (gm_file(site, subject), *(gm_file(site, subject, r) for r in raters))
    ]
    records = check_files(dataset, root, [(name, None) for name in names])
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    dropped = 0
    for site in sites:
        for subject in GM_SUBJECTS:
            split = "test" if subject in test_subjects else "train"
            image_path = root / gm_file(site, subject)
            image = _nifti_array(dataset, image_path)
            for rater in raters:
                mask_path = root / gm_file(site, subject, rater)
                mask = _binary(dataset, mask_path, _nifti_array(dataset, mask_path), 0.5)
                if mask.shape != image.shape:
                    raise DataIntegrityError(
                        f"{dataset}: {mask_path} has shape {mask.shape} but {image_path.name} has "
                        f"{image.shape}"
                    )
                for k in range(image.shape[2]):
                    inp, gt = image[:, :, k], mask[:, :, k]
                    if split == "train" and (not gt.any() or not inp.any()):
                        dropped += 1
                        continue
                    parts[split][0].append(_instance_normalize(center_crop(inp, crop, crop)))
                    parts[split][1].append(center_crop(gt, crop, crop))
    train = _stack(*parts["train"], float_x=True)
    test = _stack(*parts["test"], float_x=True)
    info = {
        "source": f"Spinal Cord Gray Matter challenge (Prados et al. 2017), read with nibabel from {root}",
        "source_files": records,
        "normalization": {
            "scale": 1.0,
            "mean": [0.0],
            "std": [1.0],
            "method": "per slice at preparation: (x - mean) / std (the reference's NormalizeInstance)",
        },
        "subjects": {"train": train_subjects, "test": test_subjects},
        "train_slices_dropped": dropped,
        "input_shape": [1, crop, crop],
    }
    return train, test, info


# --- nih_pancreas: NIH Pancreas-CT (pydicom / nibabel) ------------------------------------------------------


def _nih_patients(root: Path) -> tuple[Path, list[tuple[str, Path]]]:
    """The label folder and (patient id "00XX", label file) of every ``label00XX.nii[.gz]`` in it."""
    folder = next((root / d for d in NIH_LABEL_DIRS if (root / d).is_dir()), None)
    if folder is None:
        raise DatasetNotFoundError(
            f"nih_pancreas: no label folder in {root}: expected {' or '.join(NIH_LABEL_DIRS)}/ holding "
            "label00XX.nii.gz (the TCIA release's TCIA_pancreas_labels-02-05-2017.zip, extracted)"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        for suffix in (".nii.gz", ".nii"):
            stem = name.removesuffix(suffix)
            if name.endswith(suffix) and stem.startswith("label") and stem[5:].isdigit() and len(stem) == 9:
                found.setdefault(stem[5:], path)
    if not found:
        raise DatasetNotFoundError(f"nih_pancreas: {folder} holds no label00XX.nii.gz files")
    return folder, sorted(found.items())


def _nih_image(root: Path, pid: str) -> Path | None:
    """The patient's image: ``Pancreas-CT/PANCREAS_00XX.nii[.gz]`` (a NIfTI conversion) or the folder
    ``Pancreas-CT/PANCREAS_00XX/`` holding its DICOM series (TCIA's layout, any depth)."""
    base = root / NIH_IMAGE_DIR
    for suffix in (".nii.gz", ".nii"):
        if (base / f"PANCREAS_{pid}{suffix}").is_file():
            return base / f"PANCREAS_{pid}{suffix}"
    folder = base / f"PANCREAS_{pid}"
    if folder.is_dir() and any(folder.rglob("*.dcm")):
        return folder
    return None


def read_dicom_series(folder: Path, slices: Sequence[int] | None = None) -> tuple[np.ndarray, list[Path]]:
    """Hounsfield units [columns, rows, N] of the DICOM series under ``folder`` (slice k: InstanceNumber
    k + 1; pixel values × RescaleSlope + RescaleIntercept), transposed so that slice k lines up with
    ``label[:, :, k]`` of the released NIfTI labels, and the files read.

    Only the slices in ``slices`` (all when None) are decoded; the others stay zero. The InstanceNumbers
    must be exactly 1..N."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(folder.rglob("*.dcm"))
    headers = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            headers[path] = (int(ds.InstanceNumber), int(ds.Rows), int(ds.Columns))
        except (InvalidDicomError, AttributeError, ValueError, TypeError, OSError) as err:
            raise DataIntegrityError(
                f"nih_pancreas: {path} is not a readable CT DICOM slice with InstanceNumber, Rows and "
                f"Columns ({type(err).__name__}: {err})"
            ) from None
    numbers = sorted(h[0] for h in headers.values())
    if numbers != list(range(1, len(files) + 1)):
        raise DataIntegrityError(
            f"nih_pancreas: the {len(files)} DICOM files under {folder} have InstanceNumbers {numbers[:5]}…; "
            "expected exactly 1..N, one series per patient"
        )
    sizes = {(h[1], h[2]) for h in headers.values()}
    if len(sizes) != 1:
        raise DataIntegrityError(f"nih_pancreas: the slices under {folder} differ in size: {sorted(sizes)}")
    rows, cols = sizes.pop()
    volume = np.zeros((cols, rows, len(files)), dtype=np.float32)
    wanted = set(range(len(files))) if slices is None else set(slices)
    for path, (number, _, _) in headers.items():
        if number - 1 not in wanted:
            continue
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32)
        except (InvalidDicomError, AttributeError, ValueError, TypeError, OSError, RuntimeError) as err:
            raise DataIntegrityError(
                f"nih_pancreas: {path}: pixel data unreadable ({type(err).__name__}: {err})"
            ) from None
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        volume[:, :, number - 1] = (pixels * slope + intercept).T
    return volume, files


def _window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """HU clipped to [low, high] and mapped linearly to 0..255 (uint8)."""
    return np.rint((np.clip(hu, low, high) - low) * (255.0 / (high - low))).astype(np.uint8)


def roi_box(mask: np.ndarray, rows: int, cols: int) -> tuple[int, int] | None:
    """Top-left corner of the reference's ROI: a ``rows``×``cols`` box centred on the middle foreground
    pixel of ``mask`` (``np.nonzero`` order, index round(n/2)); None when the box leaves the slice."""
    nz = np.nonzero(mask)
    index = int(np.round(len(nz[0]) / 2))
    top, left = int(nz[0][index]) - rows // 2, int(nz[1][index]) - cols // 2
    if top < 0 or left < 0 or top + rows > mask.shape[0] or left + cols > mask.shape[1]:
        return None
    return top, left


def _nih_params(params: dict[str, Any]) -> tuple[float, tuple[float, float], tuple[int, int] | None]:
    fraction = params["test_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ConfigError(
            f"datasets.nih_pancreas.test_fraction: expected a number in (0, 1), got {fraction!r}"
        )
    window = params["hu_window"]
    if (
        not isinstance(window, list | tuple)
        or len(window) != 2
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in window)
        or not window[0] < window[1]
    ):
        raise ConfigError(
            f"datasets.nih_pancreas.hu_window: expected [low, high] HU with low < high, got {window!r}"
        )
    roi = params["roi"]
    if roi is not None and (
        not isinstance(roi, list | tuple)
        or len(roi) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in roi)
    ):
        raise ConfigError(
            f"datasets.nih_pancreas.roi: expected [rows, cols] (positive integers) or null, got {roi!r}"
        )
    return float(fraction), (float(window[0]), float(window[1])), (tuple(roi) if roi is not None else None)


def held_out_patients(counts: Sequence[int], fraction: float) -> int:
    """How many patients, taken from the end of the ordered list, the test split holds: the fewest whose
    slices reach round(fraction × all slices), at least one, leaving at least one to train."""
    total = sum(counts)
    target = max(1, round(fraction * total))
    held, k = 0, 0
    while held < target and k < len(counts) - 1:
        k += 1
        held += counts[-k]
    return max(k, 1)


@register(
    "nih_pancreas",
    input_shape=(1, 112, 176),
    num_classes=1,
    description="NIH Pancreas-CT (TCIA, 82 CT volumes), labelled axial slices, last patients held out",
    prep_keys={"test_fraction": 0.1, "hu_window": [-100, 240], "roi": [112, 176]},
    needs_root=True,
    layout=(
        "<root>/TCIA_pancreas_labels-02-05-2017/label00XX.nii.gz (or <root>/labels/) and, per patient, "
        "<root>/Pancreas-CT/PANCREAS_00XX/**/*.dcm (TCIA DICOM) or <root>/Pancreas-CT/PANCREAS_00XX.nii.gz"
    ),
    task="segmentation",
)
def build_nih_pancreas(params: dict[str, Any], root: Path) -> tuple[Split, Split, dict[str, Any]]:
    """NIH pancreas: the axial slices that hold pancreas, CT windowed to uint8, the last patients held out.

    Formats: TCIA distributes the CT images as DICOM series (``PANCREAS_00XX/<study>/<series>/*.dcm``) and
    the labels as NIfTI ``label00XX.nii.gz`` in ``TCIA_pancreas_labels-02-05-2017.zip`` (checked against
    public preprocessing code, not against the archive itself). The reference worked from NIfTI
    conversions of the images (an Academic Torrents copy, realigned with ``fslswapdim x -y z``); both are
    read. Slice alignment [reconstruction, the convention of public NIH-pancreas code]: DICOM slice with
    InstanceNumber k + 1 is label slice k, and ``pixel_array`` (rows × columns) is ``label[:, :, k]``
    transposed; a NIfTI image is taken slice by slice as stored, which must match the label's shape.
    Masks: label > 0 → 1 (pancreas).

    Verified in the reference (``preprocessing/NIH_dataset``): only slices whose label is non-empty are
    kept; each is cropped to a 112×176 box (rows × columns of the label array as stored) centred on its
    middle label pixel, and slices whose box leaves the image are left out of training (the script warns
    and skips the crop; here they are dropped and counted), ``roi: null`` keeps whole slices. The box is
    placed from the ground truth, for the test slices too: a label leak the reference has; it is kept
    as the default for comparability and recorded. The reference moved "roughly the last ten percent"
    of the slices to validation (= its test); here the last whole patients (by id) whose slices reach
    ``test_fraction`` of all kept slices are held out, so no patient straddles the split.
    Reconstructed: the reference's 8-bit PNG conversion of HU is not reproducible from its scripts; CT is
    clipped to ``hu_window`` (default [-100, 240] HU, the abdominal window of public pancreas
    segmentation code) and mapped to 0..255.
    """
    dataset = "nih_pancreas"
    fraction, (low, high), roi = _nih_params(params)
    label_dir, labels = _nih_patients(root)
    images = {pid: _nih_image(root, pid) for pid, _ in labels}
    missing = [pid for pid, path in images.items() if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"{dataset}: no image for {len(missing)} of the {len(labels)} labelled patients "
            f"({', '.join('PANCREAS_' + p for p in missing[:10])}{'…' if len(missing) > 10 else ''}): "
            "expected "
            f"{root / NIH_IMAGE_DIR}/PANCREAS_00XX/ with its DICOM files, or PANCREAS_00XX.nii.gz"
        )
    records = check_files(dataset, root, [(str(p.relative_to(root)), None) for _, p in labels])
    nifti_images = [p for p in images.values() if p is not None and p.is_file()]
    records += check_files(dataset, root, [(str(p.relative_to(root)), None) for p in nifti_images])
    per_patient: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = []
    dropped = 0
    for pid, label_path in labels:
        label = _nifti_array(dataset, label_path)
        if float(label.min()) < 0:
            raise DataIntegrityError(f"{dataset}: {label_path} holds negative labels")
        mask = (label > 0).astype(np.uint8)
        keep = [k for k in range(mask.shape[2]) if mask[:, :, k].any()]
        image_path = images[pid]
        assert image_path is not None
        if image_path.is_dir():
            hu, files = read_dicom_series(image_path, keep)
            records.append(_series_record(root, files, str(image_path.relative_to(root))))
        else:
            hu = _nifti_array(dataset, image_path)
        if hu.shape != mask.shape:
            raise DataIntegrityError(
                f"{dataset}: the image of PANCREAS_{pid} ({image_path}) has shape {hu.shape} (columns, rows, "
                f"slices) but {label_path.name} has {mask.shape}"
            )
        xs, ys = [], []
        for k in keep:
            m, x = mask[:, :, k], _window(hu[:, :, k], low, high)
            if roi is not None:
                corner = roi_box(m, *roi)
                if corner is None:
                    dropped += 1
                    continue
                (t, left), (r, c) = corner, roi
                m, x = m[t : t + r, left : left + c], x[t : t + r, left : left + c]
            xs.append(x)
            ys.append(m)
        per_patient.append((pid, xs, ys))
    per_patient = [p for p in per_patient if p[1]]
    if len(per_patient) < 2:
        raise DataIntegrityError(f"{dataset}: fewer than two patients with labelled slices under {root}")
    shapes = {x.shape for _, xs, _ in per_patient for x in xs}
    if len(shapes) != 1:
        raise DataIntegrityError(
            f"{dataset}: slices of different sizes {sorted(shapes)} cannot be stacked; "
            f"set datasets.{dataset}.roi"
        )
    n_test = held_out_patients([len(xs) for _, xs, _ in per_patient], fraction)
    train_p, test_p = per_patient[:-n_test], per_patient[-n_test:]

    def split(group: list[tuple[str, list[np.ndarray], list[np.ndarray]]]) -> Split:
        return _stack([x for _, xs, _ in group for x in xs], [y for _, _, ys in group for y in ys])

    info = {
        "source": f"NIH Pancreas-CT (TCIA): labels NIfTI from {label_dir.name}, images DICOM (pydicom) or "
        f"NIfTI (nibabel), from {root}",
        "source_files": records,
        "patients": {"train": [p for p, _, _ in train_p], "test": [p for p, _, _ in test_p]},
        "roi_dropped": dropped,
        "roi_from_ground_truth": roi is not None,
        "input_shape": [1, *shapes.pop()],
    }
    return split(train_p), split(test_p), info


__all__ = [
    "EM_SYNTH_VERSION",
    "build_em_synth",
    "build_isbi2012_em",
    "build_nih_pancreas",
    "build_spinal_gm",
    "center_crop",
    "gm_file",
    "held_out_patients",
    "read_dicom_series",
    "roi_box",
    "synth_em",
    "synth_em_image",
]
