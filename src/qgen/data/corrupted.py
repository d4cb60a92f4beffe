"""Corrupted test sets for robustness: released CIFAR-10-C / CIFAR-100-C and ImageNet-C, and sets generated
with qgen.data.corruptions, all read through the same two readers.

**npy layout** (CIFAR-10-C / CIFAR-100-C as released, Hendrycks & Dietterich 2019, and every generated set):
``<root>/<corruption>.npy`` uint8 (S*N, H, W, C), the severities stacked in N-row blocks (block k holds
``stored_severities[k]``, 1..5 for the released sets), each block in test-set order; ``<root>/labels.npy``
integers (S*N,), the same N labels in every block. :func:`read_npy_set` memory-maps the files.

**ImageNet-C layout**: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``, listed as torchvision's
``make_dataset`` lists ImageNet folders (qgen.data.imagenet), classes indexed in the order given (default:
the sorted wnid folders of the first corruption/severity, as ImageFolder indexes them).

**Prepared sets** (``out_dir/meta.json``): :func:`generate_set` writes a generated npy set into ``out_dir``;
:func:`prepare_released` checks a user's CIFAR-C root and records its files' sizes and sha256 without copying
them; :func:`prepare_released_imagenet_c` records an ImageNet-C root in ``manifest.tsv`` (size and sha256 of
every image, hashed once). :func:`load_corrupted` checks sizes on every load (sha256 with ``full=True``) and
returns the reader. numpy only: no torch import (a torch tensor is accepted as input).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qgen.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptionOptions, corrupt
from qgen.data.integrity import (
    DataIntegrityError,
    DatasetError,
    DatasetNotFoundError,
    check_manifest,
    check_sizes,
    combined_checksum,
    read_manifest,
    write_manifest,
)
from qgen.io import atomic_path, read_json, sha256_file, write_json

LABELS = "labels.npy"
META = "meta.json"
MANIFEST = "manifest.tsv"
FORMAT_VERSION = 1


def _severities(values: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(int(s) for s in values)
    bad = [s for s in out if s not in SEVERITIES]
    if bad or not out or len(set(out)) != len(out):
        raise ValueError(f"{what}: expected distinct severities among 1..5, got {list(values)}")
    return out


def _corruption_names(values: Sequence[str] | None) -> tuple[str, ...]:
    out = CORRUPTIONS if values is None else tuple(values)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"corruptions: expected distinct names, got {list(out)}")
    return out


# --- npy sets ------------------------------------------------------------------------------------------


@dataclass
class NpyCorruptedSet:
    """A corrupted set in the npy layout; ``images`` and ``labels`` are read-only memory-mapped slices."""

    root: Path
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    stored_severities: tuple[int, ...]
    n: int
    image_shape: tuple[int, int, int]
    _arrays: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def _block(self, severity: int) -> slice:
        if severity not in self.severities:
            raise KeyError(f"severity {severity} is not in this set (severities {list(self.severities)})")
        k = self.stored_severities.index(severity)
        return slice(k * self.n, (k + 1) * self.n)

    def labels(self, severity: int) -> np.ndarray:
        """The N labels of a severity's block (int64)."""
        return np.asarray(self._arrays[LABELS][self._block(severity)], dtype=np.int64)

    def images(self, corruption: str, severity: int) -> np.ndarray:
        """uint8 (N, H, W, C) images of one corruption and severity (a memory-mapped view)."""
        if corruption not in self.corruptions:
            raise KeyError(f"corruption {corruption!r} is not in this set ({', '.join(self.corruptions)})")
        return self._arrays[corruption][self._block(severity)]


def read_npy_set(
    root: str | os.PathLike[str],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    expected_n: int | None = None,
    expected_shape: Sequence[int] | None = None,
    stored_severities: Sequence[int] = SEVERITIES,
) -> NpyCorruptedSet:
    """Open ``<root>/<corruption>.npy`` and ``labels.npy`` (default corruptions: the 15 of ImageNet-C).

    Raises DatasetNotFoundError naming every missing file, DataIntegrityError for a wrong dtype or shape, a
    row count that is not len(stored_severities) blocks of N (``expected_n`` when given), or labels that
    differ between blocks."""
    root = Path(root)
    names = _corruption_names(corruptions)
    stored = _severities(stored_severities, "stored_severities")
    wanted = _severities(severities, "severities")
    if not set(wanted) <= set(stored):
        raise DatasetNotFoundError(
            f"{root}: severities {sorted(set(wanted) - set(stored))} are not stored (stored: {list(stored)})"
        )
    if not root.is_dir():
        raise DatasetNotFoundError(f"corrupted set root {root} does not exist")
    missing = [f"{n}.npy" for n in names if not (root / f"{n}.npy").is_file()]
    missing += [LABELS] if not (root / LABELS).is_file() else []
    if missing:
        raise DatasetNotFoundError(
            f"{root}: {len(missing)} files of the corrupted set are missing: {', '.join(missing)} (layout: "
            "<root>/<corruption>.npy uint8 (5*N, H, W, C) and <root>/labels.npy)"
        )
    blocks = len(stored)

    def load(name: str) -> np.ndarray:
        try:
            return np.load(root / name, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise DataIntegrityError(f"{root / name} is not a readable .npy array: {err}") from None

    labels = load(LABELS)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataIntegrityError(
            f"{root / LABELS}: expected integer labels of shape (S*N,), got {labels.dtype} {labels.shape}"
        )
    rows = len(labels)
    if rows % blocks or (expected_n is not None and rows != blocks * expected_n):
        raise DataIntegrityError(
            f"{root / LABELS}: {rows} rows are not {blocks} severity blocks of "
            f"{expected_n if expected_n is not None else 'N'} images"
        )
    n = rows // blocks
    first = np.asarray(labels[:n])
    for k in range(1, blocks):
        if not np.array_equal(first, labels[k * n : (k + 1) * n]):
            raise DataIntegrityError(
                f"{root / LABELS}: the labels of severity block {k + 1} differ from block 1 (every block "
                "must hold the test set in the same order)"
            )
    arrays: dict[str, np.ndarray] = {LABELS: labels}
    image_shape: tuple[int, ...] | None = None
    for name in names:
        a = load(f"{name}.npy")
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] not in (1, 3):
            raise DataIntegrityError(
                f"{root / name}.npy: expected uint8 (S*N, H, W, C) with C in 1, 3, got {a.dtype} {a.shape}"
            )
        if len(a) != rows:
            raise DataIntegrityError(
                f"{root / name}.npy has {len(a)} rows, labels.npy {rows} ({blocks} severity blocks of {n})"
            )
        if expected_shape is not None and tuple(a.shape[1:]) != tuple(expected_shape):
            raise DataIntegrityError(
                f"{root / name}.npy: images of shape {tuple(a.shape[1:])}, expected {tuple(expected_shape)}"
            )
        if image_shape is not None and tuple(a.shape[1:]) != image_shape:
            raise DataIntegrityError(f"{root / name}.npy: images {a.shape[1:]} differ from {image_shape}")
        image_shape = tuple(a.shape[1:])
        arrays[name] = a
    assert image_shape is not None
    return NpyCorruptedSet(root, names, wanted, stored, n, image_shape, arrays)  # type: ignore[arg-type]


# --- ImageNet-C folders ----------------------------------------------------------------------------------


@dataclass
class FolderCorruptedSet:
    """An ImageNet-C folder tree: files relative to ``root`` and labels per corruption and severity."""

    root: Path
    classes: tuple[str, ...]
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    _lists: dict[tuple[str, int], tuple[list[str], np.ndarray]] = field(repr=False, default_factory=dict)

    def files(self, corruption: str, severity: int) -> tuple[list[str], np.ndarray]:
        """(files relative to root, int64 labels) of one corruption and severity, sorted by class, file."""
        try:
            files, labels = self._lists[(corruption, severity)]
        except KeyError:
            raise KeyError(
                f"({corruption!r}, {severity}) is not in this set (corruptions "
                f"{', '.join(self.corruptions)}; severities {list(self.severities)})"
            ) from None
        return list(files), labels.copy()


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def read_imagenet_c(
    root: str | os.PathLike[str],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    classes: Sequence[str] | None = None,
) -> FolderCorruptedSet:
    """List ``<root>/<corruption>/<severity>/<wnid>/*`` (torchvision's image extensions).

    ``classes`` (e.g. a prepared ImageNet's ``meta["classes"]``) fixes the label of each wnid, and only
    those folders are read; by default every folder, in sorted order. Raises DatasetNotFoundError for a
    missing root, corruption, severity or class folder (or one with no image), DataIntegrityError when the
    class folders differ between corruptions/severities."""
    from qgen.data.imagenet import _list_split

    root = Path(root)
    names = _corruption_names(corruptions)
    wanted = _severities(severities, "severities")
    if not root.is_dir():
        raise DatasetNotFoundError(f"imagenet-c: root {root} does not exist")
    missing = [f"{c}/{s}" for c in names for s in wanted if not (root / c / str(s)).is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"imagenet-c: {root} lacks {len(missing)} folders: {', '.join(missing[:10])}"
            f"{' …' if len(missing) > 10 else ''} (layout <root>/<corruption>/<severity>/<wnid>/*.JPEG)"
        )
    found = _class_folders(root / names[0] / str(wanted[0]))
    for c in names:
        for s in wanted:
            here = _class_folders(root / c / str(s))
            if classes is None and here != found:
                only = sorted(set(here) ^ set(found))
                raise DataIntegrityError(
                    f"imagenet-c: {root / c / str(s)} has other class folders than "
                    f"{root / names[0] / str(wanted[0])} ({len(only)} differ, e.g. {', '.join(only[:5])})"
                )
            if classes is not None and (absent := sorted(set(classes) - set(here))):
                raise DatasetNotFoundError(
                    f"imagenet-c: {root / c / str(s)} has no folder for {len(absent)} of the classes: "
                    f"{', '.join(absent[:5])}"
                )
    class_list = tuple(found if classes is None else classes)
    class_to_idx = {name: i for i, name in enumerate(class_list)}
    lists = {}
    for c in names:
        for s in wanted:
            files, labels = _list_split(root, f"{c}/{s}", class_to_idx)
            lists[(c, s)] = (files, np.asarray(labels, dtype=np.int64))
    return FolderCorruptedSet(root, class_list, names, wanted, lists)


# --- prepared sets: generate, record, load ---------------------------------------------------------------


def _to_nhwc(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, as qgen's prepared test.pt stores it
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, C, H, W) with C in 1, 3, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _file_records(folder: Path, names: Sequence[str], hash_files: bool = True) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "size": (folder / name).stat().st_size,
            **({"sha256": sha256_file(folder / name)} if hash_files else {}),
        }
        for name in names
    }


def generate_set(
    x: Any,
    y: Any,
    out_dir: str | os.PathLike[str],
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    options: CorruptionOptions | None = None,
    source: Mapping[str, Any] | None = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Corrupt test images ``x`` (uint8 (N, C, H, W), numpy or torch) with labels ``y`` into ``out_dir`` in
    the npy layout (blocks in the order of ``severities``), each file written atomically, ``meta.json``
    last (so a set is complete exactly when its meta.json exists). ``source`` (e.g. the prepared dataset's
    name and checksum) is recorded. Memory: one ``chunk`` of images at a time. Returns the meta."""
    out_dir = Path(out_dir)
    images = _to_nhwc(x)
    labels = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers (N,) for N = {len(images)} images, got {labels.dtype} {labels.shape}"
        )
    names = _corruption_names(corruptions)
    unknown = [c for c in names if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; expected names among {', '.join(CORRUPTIONS)}")
    sevs = _severities(severities, "severities")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    options = options or CorruptionOptions()
    n = len(images)
    (out_dir / META).unlink(missing_ok=True)  # the folder is incomplete until the new meta.json is written
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / LABELS) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.tile(labels.astype(np.int64), len(sevs)))
    for name in names:
        with atomic_path(out_dir / f"{name}.npy") as tmp:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(sevs) * n, *images.shape[1:])
            )
            for k, severity in enumerate(sevs):
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    out[k * n + start : k * n + stop] = corrupt(
                        images[start:stop], name, severity, int(seed), options=options, index_offset=start
                    )
            out.flush()
            del out
    files = _file_records(out_dir, [LABELS, *(f"{c}.npy" for c in names)])
    meta = {
        "kind": "corrupted_npy",
        "format_version": FORMAT_VERSION,
        "origin": "generated",
        "generator": "qgen.data.corruptions (Hendrycks & Dietterich 2019 definitions)",
        "corruptions": list(names),
        "severities": list(sevs),
        "stored_severities": list(sevs),
        "seed": int(seed),
        "options": options.to_dict(),
        "n": n,
        "image_shape": list(images.shape[1:]),
        "source": dict(source or {}),
        "files": files,
        "checksum": combined_checksum({k: v["sha256"] for k, v in files.items()}),
    }
    write_json(out_dir / META, meta)
    return meta


def prepare_released(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    expected_n: int | None = 10000,
    expected_shape: Sequence[int] | None = (32, 32, 3),
    hash_files: bool = True,
) -> dict[str, Any]:
    """Check a released CIFAR-10-C / CIFAR-100-C root (read_npy_set) and write ``out_dir/meta.json`` with
    its files' sizes and sha256 (``hash_files``; not copying them). Returns the meta."""
    root = Path(root).expanduser().resolve()
    data = read_npy_set(root, corruptions, severities, expected_n, expected_shape)
    files = _file_records(root, [LABELS, *(f"{c}.npy" for c in data.corruptions)], hash_files)
    meta = {
        "kind": "corrupted_npy",
        "format_version": FORMAT_VERSION,
        "origin": "released",
        "root": str(root),
        "corruptions": list(data.corruptions),
        "severities": list(data.severities),
        "stored_severities": list(data.stored_severities),
        "n": data.n,
        "image_shape": list(data.image_shape),
        "files": files,
        **({"checksum": combined_checksum({k: v["sha256"] for k, v in files.items()})} if hash_files else {}),
    }
    write_json(Path(out_dir) / META, meta)
    return meta


def prepare_released_imagenet_c(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """List an ImageNet-C root (read_imagenet_c), hash every image once into ``out_dir/manifest.tsv`` and
    write ``out_dir/meta.json`` (classes, per-folder counts, the manifest's sha256). Returns the meta."""
    root = Path(root).expanduser().resolve()
    out_dir = Path(out_dir)
    data = read_imagenet_c(root, corruptions, severities, classes)
    listed = [f for c in data.corruptions for s in data.severities for f in data.files(c, s)[0]]
    write_manifest(out_dir / MANIFEST, root, listed)
    meta = {
        "kind": "corrupted_folders",
        "format_version": FORMAT_VERSION,
        "origin": "released",
        "root": str(root),
        "corruptions": list(data.corruptions),
        "severities": list(data.severities),
        "classes": list(data.classes),
        "counts": {f"{c}/{s}": len(data.files(c, s)[0]) for c in data.corruptions for s in data.severities},
        "files": {
            MANIFEST: {"size": (out_dir / MANIFEST).stat().st_size, "sha256": sha256_file(out_dir / MANIFEST)}
        },
    }
    meta["checksum"] = meta["files"][MANIFEST]["sha256"]
    write_json(out_dir / META, meta)
    return meta


def _check_files(folder: Path, files: Mapping[str, Mapping[str, Any]], meta_path: Path, full: bool) -> None:
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{path} (listed in {meta_path}) is missing; restore it or prepare again"
            )
        size = path.stat().st_size
        if size != int(record["size"]):
            raise DataIntegrityError(
                f"{path} has {size} bytes, {record['size']} when {meta_path} was written: the file changed"
            )
        if full and "sha256" in record and (actual := sha256_file(path)) != record["sha256"]:
            raise DataIntegrityError(
                f"{path}: sha256 {actual[:12]}… does not match {record['sha256'][:12]}… in {meta_path}"
            )


def load_corrupted(
    out_dir: str | os.PathLike[str], full: bool = False
) -> NpyCorruptedSet | FolderCorruptedSet:
    """Read ``out_dir/meta.json``, check every recorded file's size (and sha256 with ``full``; for an
    ImageNet-C set the manifest's sha256 always, every image's size, and every image's sha256 with
    ``full``) and return the reader."""
    out_dir = Path(out_dir)
    meta_path = out_dir / META
    if not meta_path.is_file():
        raise DatasetNotFoundError(f"{meta_path} not found: generate or prepare the corrupted set first")
    meta = read_json(meta_path)
    kind = meta.get("kind")
    if kind == "corrupted_npy":
        folder = Path(meta["root"]) if meta.get("root") else out_dir
        _check_files(folder, meta["files"], meta_path, full)
        return read_npy_set(
            folder,
            meta["corruptions"],
            meta["severities"],
            expected_n=int(meta["n"]),
            expected_shape=meta["image_shape"],
            stored_severities=meta["stored_severities"],
        )
    if kind == "corrupted_folders":
        _check_files(out_dir, meta["files"], meta_path, full=True)
        root = Path(meta["root"])
        if not root.is_dir():
            raise DatasetNotFoundError(f"imagenet-c: root {root} recorded in {meta_path} is gone")
        entries = read_manifest(out_dir / MANIFEST)
        if full:
            check_manifest(root, out_dir / MANIFEST)
        else:
            check_sizes(root, [e[0] for e in entries], [e[1] for e in entries])
        class_to_idx = {c: i for i, c in enumerate(meta["classes"])}
        lists: dict[tuple[str, int], tuple[list[str], list[int]]] = {
            (c, int(s)): ([], []) for c in meta["corruptions"] for s in meta["severities"]
        }
        for rel, _, _ in entries:
            corruption, severity, wnid = Path(rel).parts[:3]
            files, labels = lists[(corruption, int(severity))]
            files.append(rel)
            labels.append(class_to_idx[wnid])
        return FolderCorruptedSet(
            root,
            tuple(meta["classes"]),
            tuple(meta["corruptions"]),
            tuple(int(s) for s in meta["severities"]),
            {k: (f, np.asarray(lab, dtype=np.int64)) for k, (f, lab) in lists.items()},
        )
    raise DataIntegrityError(
        f"{meta_path}: unknown kind {kind!r} (expected corrupted_npy or corrupted_folders)"
    )


def prepare_corrupted(
    params: Mapping[str, Any], prepared_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """The corrupted test set of one prepared dataset (``data/corrupted/<dataset>``), from ``params``
    (qgen.experiments.corrupted_params): the released files under ``params["released"]`` (kind npy or
    imagenet_c), else generated from the prepared test split (``prepared_dir/test.pt``) with the
    corruptions, severities, seed and small-image rule given. Returns the meta."""
    meta = _prepare_corrupted(params, prepared_dir, out_dir)
    meta["params"] = dict(params)  # what qgen.dvc_stage compares with the config (stale sets are rebuilt)
    write_json(Path(out_dir) / META, meta)
    return meta


def _prepare_corrupted(
    params: Mapping[str, Any], prepared_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    released = params.get("released")
    corruptions, severities = params["corruptions"], params["severities"]
    names = None if corruptions == "all" else list(corruptions)
    if released:
        if released["kind"] == "imagenet_c":
            return prepare_released_imagenet_c(released["root"], out_dir, names, severities)
        return prepare_released(
            released["root"], out_dir, names, severities, expected_n=None, expected_shape=None
        )
    import torch

    prepared_dir = Path(prepared_dir)
    test = torch.load(prepared_dir / "test.pt", weights_only=True)
    if "x" not in test:
        raise DatasetError(
            f"{prepared_dir}: a folder set has no prepared images to corrupt; give its released set"
        )
    source = {"dataset": prepared_dir.name, "checksum": read_json(prepared_dir / "meta.json")["checksum"]}
    options = CorruptionOptions(
        small_images=params["small_images"], frost_textures=params.get("frost_textures")
    )
    return generate_set(
        test["x"], test["y"], out_dir, names or CORRUPTIONS, severities, int(params["seed"]), options, source
    )
