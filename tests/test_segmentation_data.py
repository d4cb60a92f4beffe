"""Segmentation sets (qgen.data.segmentation): the synthetic EM set and the loaders of the real sets, read
from tiny files written in their true formats (multi-page TIFF, NIfTI, DICOM), through prepare → load →
the batch iterator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qgen.config import ConfigError
from qgen.data import load_prepared, prepare
from qgen.data.augment import Augment
from qgen.data.batches import TensorSplit
from qgen.data.integrity import DataIntegrityError, DatasetNotFoundError
from qgen.data.registry import get
from qgen.data.run_data import open_run_data, random_holdout
from qgen.data.segmentation import center_crop, held_out_patients, roi_box, synth_em
from qgen.io import sha256_file

SMALL_EM = {"n_train": 6, "n_test": 3, "size": 32, "seed": 0}


# --- em_synth ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def em_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("em_synth")
    prepare("em_synth", dict(SMALL_EM), out)
    return out


def test_em_synth_is_deterministic_and_the_seed_matters(tmp_path, em_dir) -> None:
    prepare("em_synth", dict(SMALL_EM), tmp_path / "same")
    prepare("em_synth", {**SMALL_EM, "seed": 1}, tmp_path / "other")
    for name in ("train.pt", "test.pt", "meta.json"):
        assert (tmp_path / "same" / name).read_bytes() == (em_dir / name).read_bytes()
    a, b = load_prepared(em_dir), load_prepared(tmp_path / "other")
    assert not torch.equal(a.train["x"], b.train["x"]) and not torch.equal(a.train["y"], b.train["y"])
    # the test images do not depend on how many training images are drawn
    x_test, _ = synth_em(3, 32, 0, 1)
    assert np.array_equal(x_test, a.test["x"][:, 0].numpy())
    assert np.array_equal(synth_em(2, 32, 0, 1)[0], x_test[:2])


def test_em_synth_masks_are_exact_binary_with_membranes_and_images_are_noisy(em_dir) -> None:
    data = load_prepared(em_dir)
    x, y = data.train["x"][:, 0].double() / 255, data.train["y"][:, 0]
    assert data.train["x"].dtype == torch.uint8 and data.train["y"].dtype == torch.uint8
    assert set(torch.unique(y).tolist()) == {0, 1}
    for img, mask in zip(x, y, strict=True):
        membrane = float((mask == 0).double().mean())
        assert 0.05 < membrane < 0.6  # every image has membranes and cells
        cells, walls = img[mask == 1], img[mask == 0]
        assert cells.mean() > walls.mean() + 0.25  # membranes are dark
        assert cells.std() > 0.05 and walls.std() > 0.02  # texture, blur and noise: not the mask itself
    assert not torch.equal((x > 0.5).to(torch.uint8), y)  # thresholding the image does not give the mask


def test_em_synth_prepared_meta_round_trip(em_dir) -> None:
    meta = json.loads((em_dir / "meta.json").read_text())
    data = load_prepared(em_dir, expected_params=dict(SMALL_EM))
    assert data.task == "segmentation" and data.num_classes == 1 and data.input_shape == (1, 32, 32)
    assert "class_counts" not in meta and meta["synthetic"] is True
    for split in ("train", "test"):
        assert meta["files"][f"{split}.pt"] == sha256_file(em_dir / f"{split}.pt")
        y = getattr(data, split)["y"]
        assert meta["foreground_fraction"][split] == pytest.approx(float(y.double().mean()), abs=0)
    assert meta["n"] == {"train": 6, "test": 3}
    with pytest.raises(DataIntegrityError, match="different settings"):
        load_prepared(em_dir, expected_params={**SMALL_EM, "seed": 3})


def test_em_synth_bad_settings_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"datasets\.em_synth\.size"):
        prepare("em_synth", {**SMALL_EM, "size": 8}, tmp_path)
    with pytest.raises(ConfigError, match=r"datasets\.em_synth\.n_train"):
        prepare("em_synth", {**SMALL_EM, "n_train": 0}, tmp_path)
    assert not (tmp_path / "meta.json").exists()


def test_batch_iterator_yields_normalized_images_and_mask_targets(em_dir) -> None:
    prepared = load_prepared(em_dir)
    data = open_run_data(prepared, {"name": "em_synth", **SMALL_EM})
    batches = list(data.train.batches(4))
    assert [len(x) for x, _ in batches] == [4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (6, 1, 32, 32)
    assert abs(float(x.mean())) < 1e-5 and float(x.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    assert y.dtype == torch.uint8 and torch.equal(y, prepared.train["y"])
    order = torch.tensor([5, 0])
    (xo, yo), *_ = data.train.batches(2, order)
    assert torch.equal(yo, prepared.train["y"][order]) and torch.allclose(xo, x[order])
    # pixels per class [background, foreground] of the training masks
    counts = data.train_class_counts()
    assert counts == [int((y == 0).sum()), int((y == 1).sum())]


def test_validation_split_of_a_segmentation_set_is_a_seeded_uniform_draw(em_dir) -> None:
    prepared = load_prepared(em_dir)
    data = open_run_data(prepared, {"val_size": 2, "val_seed": 4})
    assert len(data.train) == 4 and data.val is not None and len(data.val) == 2
    kept, held = random_holdout(6, 2, 4)
    assert torch.equal(data.val.labels, prepared.train["y"][held])
    assert sorted([*kept.tolist(), *held.tolist()]) == list(range(6))
    assert torch.equal(random_holdout(6, 2, 4)[1], held) and not torch.equal(random_holdout(6, 2, 5)[1], held)
    with pytest.raises(ValueError, match="cannot hold out"):
        random_holdout(6, 6, 0)


def test_mask_targets_refuse_augmentation() -> None:
    x, y = torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="misalign"):
        TensorSplit(x, y, augment=Augment(crop_padding=2, flip=True))
    TensorSplit(x, torch.zeros(2, dtype=torch.int64), augment=Augment(flip=True))  # labels: fine


def test_registry_describes_the_segmentation_sets() -> None:
    for name in ("em_synth", "isbi2012_em", "spinal_gm", "nih_pancreas"):
        info = get(name)
        assert info.task == "segmentation" and info.num_classes == 1 and info.augment_default is None
        assert info.needs_root == (name != "em_synth")
    assert get("digits").task == "classification"


# --- helpers ------------------------------------------------------------------------------------------------


def test_center_crop_matches_the_reference_box_and_pads_with_zeros() -> None:
    a = np.arange(256 * 256).reshape(256, 256)
    crop = center_crop(a, 200, 200)
    assert np.array_equal(crop, a[28:228, 28:228])  # the reference's box [28, 28, 228, 228]
    small = np.ones((4, 6))
    padded = center_crop(small, 8, 8)
    assert padded.sum() == 24 and np.array_equal(padded[2:6, 1:7], small)
    assert np.array_equal(center_crop(small, 2, 2), small[1:3, 2:4])


def test_roi_box_is_centred_on_the_middle_label_pixel_and_refuses_boxes_outside() -> None:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[8:11, 10:13] = 1  # nonzero in row-major order; 9 pixels, middle index round(4.5) = 4 → (9, 11)
    assert roi_box(mask, 4, 6) == (7, 8)
    mask2 = np.zeros((20, 30), dtype=np.uint8)
    mask2[1, 1] = 1
    assert roi_box(mask2, 4, 6) is None


def test_held_out_patients_reach_the_fraction_with_whole_patients() -> None:
    assert held_out_patients([10, 10, 10, 10], 0.1) == 1
    assert held_out_patients([10, 10, 10, 10], 0.5) == 2
    assert held_out_patients([10, 10, 10, 1], 0.1) == 2  # the last patient alone has too few slices
    assert held_out_patients([1, 100], 0.99) == 1  # always one patient left to train


# --- isbi2012_em: multi-page TIFF --------------------------------------------------------------------------


def write_isbi(root: Path, n: int = 3, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = np.where(rng.random((n, size, size)) < 0.7, 255, 0).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for name, stack in (("train-volume.tif", volume), ("train-labels.tif", labels)):
        tifffile.imwrite(root / name, stack, photometric="minisblack")  # one grayscale page per slice
        with tifffile.TiffFile(root / name) as tif:
            assert len(tif.pages) == n
    return volume, labels


def test_isbi_reads_the_tif_stacks_binarizes_255_as_cell_and_holds_out_the_last_slices(tmp_path) -> None:
    volume, labels = write_isbi(tmp_path / "isbi")
    given = {"root": str(tmp_path / "isbi"), "test_slices": 1, "resize": 32, "crop": 24}
    meta = prepare("isbi2012_em", given, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.input_shape == (1, 24, 24) and meta["slices"] == {"train": [0, 1], "test": [2]}
    # 64 → 32 keeps pixels 2i+1; the centred 24 of 32 starts at 4
    expect_x = volume[:, 1::2, 1::2][:, 4:28, 4:28]
    expect_y = (labels[:, 1::2, 1::2] == 255)[:, 4:28, 4:28]
    assert np.array_equal(data.train["x"][:, 0].numpy(), expect_x[:2])
    assert np.array_equal(data.test["x"][:, 0].numpy(), expect_x[2:])
    assert np.array_equal(data.train["y"][:, 0].numpy(), expect_y[:2])
    assert np.array_equal(data.test["y"][:, 0].numpy(), expect_y[2:])
    records = {r["file"]: r for r in meta["source_files"]}
    assert records["train-labels.tif"]["sha256"] == sha256_file(tmp_path / "isbi" / "train-labels.tif")
    full = prepare("isbi2012_em", {"root": str(tmp_path / "isbi"), "resize": None, "crop": None,
                                   "test_slices": 2}, tmp_path / "full")  # fmt: skip
    assert full["input_shape"] == [1, 64, 64] and full["n"] == {"train": 1, "test": 2}


def test_isbi_missing_or_malformed_files_are_clear_errors(tmp_path) -> None:
    write_isbi(tmp_path)
    (tmp_path / "train-labels.tif").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"train-labels\.tif"):
        prepare("isbi2012_em", {"root": str(tmp_path)}, tmp_path / "out")
    import tifffile

    tifffile.imwrite(tmp_path / "train-labels.tif", np.zeros((64, 64), dtype=np.uint8))  # one page
    with pytest.raises(DataIntegrityError, match="stack of 2-D slices"):
        prepare("isbi2012_em", {"root": str(tmp_path)}, tmp_path / "out")
    tifffile.imwrite(tmp_path / "train-labels.tif", np.zeros((3, 64, 64), dtype=np.uint8), photometric="rgb")
    with pytest.raises(DataIntegrityError, match="one grayscale page per slice"):
        prepare("isbi2012_em", {"root": str(tmp_path)}, tmp_path / "out")
    (tmp_path / "train-labels.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataIntegrityError, match="not a readable TIFF"):
        prepare("isbi2012_em", {"root": str(tmp_path)}, tmp_path / "out")
    with pytest.raises(ConfigError, match="test_slices"):
        write_isbi(tmp_path)
        prepare("isbi2012_em", {"root": str(tmp_path), "test_slices": 3}, tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


# --- spinal_gm: NIfTI volumes -------------------------------------------------------------------------------


def save_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def write_gm(root: Path, shape: tuple[int, int, int] = (12, 10, 3)) -> None:
    rng = np.random.default_rng(1)
    for subject in range(1, 11):
        save_nifti(
            root / f"site1-sc{subject:02d}-image.nii.gz", rng.uniform(0, 500, shape).astype(np.float32)
        )
        for rater in (1, 2):
            mask = np.zeros(shape, dtype=np.float32)
            mask[3:8, 2:7, :] = 1.0
            mask[4, 4, :] = 0.3  # a resampled mask's fraction below one half: background
            mask[9, 1, :] = 0.7  # and above: grey matter
            if subject == 1 and rater == 1:
                mask[:, :, 0] = 0  # an empty training slice: dropped
            save_nifti(root / f"site1-sc{subject:02d}-mask-r{rater}.nii.gz", mask)


GM = {"sites": [1], "raters": [1, 2], "crop": 8}


def test_spinal_gm_pairs_every_rater_holds_out_subjects_and_normalizes_each_slice(tmp_path) -> None:
    import nibabel as nib

    write_gm(tmp_path / "gm")
    meta = prepare("spinal_gm", {"root": str(tmp_path / "gm"), **GM}, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert meta["subjects"] == {"train": list(range(1, 9)), "test": [9, 10]}
    # 8 train subjects × 2 raters × 3 slices, one empty slice dropped; test keeps every slice
    assert meta["n"] == {"train": 47, "test": 12} and meta["train_slices_dropped"] == 1
    assert data.input_shape == (1, 8, 8) and data.train["x"].dtype == torch.float32
    x = data.train["x"][:, 0].double()
    assert torch.allclose(x.mean((1, 2)), torch.zeros(47, dtype=torch.double), atol=1e-5)
    assert torch.allclose(x.flatten(1).std(1), torch.ones(47, dtype=torch.double), atol=1e-5)
    # the first test pair: subject 9, rater 1, slice 0; a centred 8×8 crop of 12×10 starts at (2, 1)
    image = nib.load(str(tmp_path / "gm" / "site1-sc09-image.nii.gz")).get_fdata()[:, :, 0][2:10, 1:9]
    expect = (image - image.mean()) / image.std(ddof=1)
    assert np.allclose(data.test["x"][0, 0].numpy(), expect, atol=1e-5)
    mask = np.zeros((12, 10))
    mask[3:8, 2:7] = 1
    mask[4, 4], mask[9, 1] = 0, 1
    assert np.array_equal(data.test["y"][0, 0].numpy(), mask[2:10, 1:9])
    assert set(torch.unique(data.train["y"]).tolist()) == {0, 1}
    assert meta["normalization"]["mean"] == [0.0] and meta["normalization"]["std"] == [1.0]
    assert len(meta["source_files"]) == 30 and all(len(r["sha256"]) == 64 for r in meta["source_files"])
    run = open_run_data(data, {})
    (xb, yb), *_ = run.test.batches(12)
    assert torch.equal(xb, data.test["x"]) and torch.equal(yb, data.test["y"])


def test_spinal_gm_missing_file_and_non_binary_mask_are_clear_errors(tmp_path) -> None:
    write_gm(tmp_path)
    (tmp_path / "site1-sc04-mask-r2.nii.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"site1-sc04-mask-r2\.nii\.gz"):
        prepare("spinal_gm", {"root": str(tmp_path), **GM}, tmp_path / "out")
    save_nifti(tmp_path / "site1-sc04-mask-r2.nii.gz", np.full((12, 10, 3), 2.0, dtype=np.float32))
    with pytest.raises(DataIntegrityError, match="binary mask"):
        prepare("spinal_gm", {"root": str(tmp_path), **GM}, tmp_path / "out")
    save_nifti(tmp_path / "site1-sc04-mask-r2.nii.gz", np.zeros((12, 10, 4), dtype=np.float32))
    with pytest.raises(DataIntegrityError, match="shape"):
        prepare("spinal_gm", {"root": str(tmp_path), **GM}, tmp_path / "out")
    with pytest.raises(ConfigError, match="test_subjects"):
        prepare("spinal_gm", {"root": str(tmp_path), **GM, "test_subjects": [11]}, tmp_path / "out")


# --- nih_pancreas: DICOM series and NIfTI -------------------------------------------------------------------

ROWS, COLS, SLICES = 10, 12, 4


def ct_hu() -> np.ndarray:
    """HU of the test CT as DICOM rows × columns × slices: value encodes (row, column, slice)."""
    r, c, k = np.meshgrid(np.arange(ROWS), np.arange(COLS), np.arange(SLICES), indexing="ij")
    return (-150 + 30 * c + 3 * r + k).astype(np.float32)


def write_dicom_series(folder: Path, hu: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = hu.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[:, :, k] + 1024).astype(np.uint16).tobytes()
        # files named out of order: slices are ordered by InstanceNumber, not by name
        ds.save_as(folder / f"1-{(SLICES - k):03d}.dcm", enforce_file_format=True)


def nih_label(labelled: tuple[int, ...]) -> np.ndarray:
    """A label volume in NIfTI array order (columns, rows, slices) with pancreas on ``labelled`` slices."""
    label = np.zeros((COLS, ROWS, SLICES), dtype=np.uint8)
    for k in labelled:
        label[3:9, 2:7, k] = 1
    return label


def write_nih(root: Path) -> None:
    labels = root / "TCIA_pancreas_labels-02-05-2017"
    save_nifti(labels / "label0001.nii.gz", nih_label((1, 2)))
    save_nifti(labels / "label0002.nii.gz", nih_label((0, 3)))
    save_nifti(labels / "label0003.nii.gz", nih_label((2, 3)))
    write_dicom_series(root / "Pancreas-CT" / "PANCREAS_0001" / "11-24-2015-x" / "Pancreatic-y", ct_hu())
    for pid in ("0002", "0003"):  # NIfTI conversions: stored in the label's (columns, rows) order
        save_nifti(root / "Pancreas-CT" / f"PANCREAS_{pid}.nii.gz", ct_hu().transpose(1, 0, 2).copy())


def window(hu: np.ndarray, low: float = -100, high: float = 240) -> np.ndarray:
    return np.rint((np.clip(hu, low, high) - low) * 255 / (high - low)).astype(np.uint8)


def test_nih_reads_dicom_and_nifti_aligned_with_the_labels_and_holds_out_the_last_patient(tmp_path) -> None:
    write_nih(tmp_path / "nih")
    given = {"root": str(tmp_path / "nih"), "roi": None, "test_fraction": 0.3}
    meta = prepare("nih_pancreas", given, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert meta["patients"] == {"train": ["0001", "0002"], "test": ["0003"]}
    assert data.input_shape == (1, COLS, ROWS) and meta["n"] == {"train": 4, "test": 2}
    expect = window(ct_hu().transpose(1, 0, 2))  # DICOM pixel_array transposed to the label's order
    x, y = data.train["x"][:, 0].numpy(), data.train["y"][:, 0].numpy()
    # patient 1 (DICOM): labelled slices 1, 2; patient 2 (NIfTI): slices 0, 3
    for i, k in enumerate((1, 2, 0, 3)):
        assert np.array_equal(x[i], expect[:, :, k]), i
        assert np.array_equal(y[i], nih_label((k,))[:, :, k])
    assert np.array_equal(data.test["x"][:, 0].numpy(), expect[:, :, 2:4].transpose(2, 0, 1))
    assert window(np.array([-500.0, -100, 70, 240, 1000])).tolist() == [0, 0, 128, 255, 255]
    series = [r for r in meta["source_files"] if r["file"] == "Pancreas-CT/PANCREAS_0001"]
    assert len(series) == 1 and series[0]["files"] == SLICES and len(series[0]["sha256"]) == 64
    labels = {r["file"]: r["sha256"] for r in meta["source_files"]}
    label1 = tmp_path / "nih" / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz"
    assert labels["TCIA_pancreas_labels-02-05-2017/label0001.nii.gz"] == sha256_file(label1)


def test_nih_roi_crops_around_the_label(tmp_path) -> None:
    write_nih(tmp_path)
    meta = prepare("nih_pancreas", {"root": str(tmp_path), "roi": [4, 4]}, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.input_shape == (1, 4, 4) and meta["roi_from_ground_truth"] and meta["roi_dropped"] == 0
    # the label block, rows 3..8 × columns 2..6 (30 pixels): middle pixel (index 15) is (6, 2)
    assert roi_box(nih_label((1,))[:, :, 1], 4, 4) == (4, 0)
    expect = window(ct_hu().transpose(1, 0, 2))[4:8, 0:4, 1]
    assert np.array_equal(data.train["x"][0, 0].numpy(), expect)
    assert np.array_equal(data.train["y"][0, 0].numpy(), nih_label((1,))[4:8, 0:4, 1])
    # a box that leaves the slice drops it (here every slice: nothing is left to split)
    with pytest.raises(DataIntegrityError, match="fewer than two patients"):
        prepare("nih_pancreas", {"root": str(tmp_path), "roi": [4, 6]}, tmp_path / "out2")


def test_nih_missing_images_and_broken_series_are_clear_errors(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="TCIA_pancreas_labels"):
        prepare("nih_pancreas", {"root": str(tmp_path)}, tmp_path / "out")
    write_nih(tmp_path)
    (tmp_path / "Pancreas-CT" / "PANCREAS_0002.nii.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="PANCREAS_0002"):
        prepare("nih_pancreas", {"root": str(tmp_path)}, tmp_path / "out")
    write_nih(tmp_path)
    next((tmp_path / "Pancreas-CT" / "PANCREAS_0001").rglob("1-003.dcm")).unlink()  # InstanceNumber 2
    with pytest.raises(DataIntegrityError, match="InstanceNumbers"):
        prepare("nih_pancreas", {"root": str(tmp_path)}, tmp_path / "out")
    with pytest.raises(ConfigError, match="hu_window"):
        prepare("nih_pancreas", {"root": str(tmp_path), "hu_window": [240, -100]}, tmp_path / "out")
