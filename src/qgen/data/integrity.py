"""Integrity of a dataset's files: the errors a bad dataset raises, md5/sha256 digests, and manifests.

Raw files are checked against the md5 lists torchvision knows (what it checks itself) and their sha256 is
recorded; prepared files are checked against the sha256 in ``meta.json``; a folder dataset (ImageNet size)
keeps a ``manifest.tsv`` of every image's size and sha256, hashed once, with sizes checked on every load.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from qgen.io import atomic_open, sha256_file

T = TypeVar("T")
R = TypeVar("R")


class DatasetError(RuntimeError):
    """A dataset's files are missing, corrupt or not what the loader expects."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset's root folder or some of its files do not exist."""


class DataIntegrityError(DatasetError):
    """A file does not match its recorded checksum, size or shape, or data was prepared differently."""


def file_digests(
    path: str | os.PathLike[str], algorithms: Sequence[str] = ("md5", "sha256")
) -> dict[str, str]:
    """Hex digests of one file by each of ``algorithms``, in one read (sha256 alone: qgen.io.sha256_file)."""
    hashes = [hashlib.new(name) for name in algorithms]
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            for h in hashes:
                h.update(block)
    return {name: h.hexdigest() for name, h in zip(algorithms, hashes, strict=True)}


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool, in chunks (bounded memory for millions of items).

    For I/O-bound work (stat, hashing: hashlib releases the GIL on large blocks)."""
    workers = workers or min(16, os.cpu_count() or 1)
    if workers == 1 or len(items) < 64:
        return [fn(x) for x in items]
    out: list[R] = []
    chunk = 4096
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), chunk):
            out.extend(pool.map(fn, items[start : start + chunk]))
    return out


def check_files(
    dataset: str, folder: Path, expected: Iterable[tuple[str, str | None]], hint: str = ""
) -> list[dict[str, Any]]:
    """Check that every ``(name, md5 or None)`` exists in ``folder`` and matches its md5.

    Returns one record per file (name relative to ``folder``, size, md5, sha256, whether the md5 was
    checked). Raises :class:`DatasetNotFoundError` naming all missing files (``hint`` appended), or
    :class:`DataIntegrityError` naming the first file whose md5 differs, with both digests."""
    expected = list(expected)
    missing = [name for name, _ in expected if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{dataset}: {len(missing)} of the {len(expected)} files expected in {folder} are missing: "
            f"{', '.join(missing)} (expected: {', '.join(name for name, _ in expected)}){hint}"
        )
    records = []
    for name, md5 in expected:
        path = folder / name
        digests = file_digests(path, ("md5", "sha256"))
        if md5 is not None and digests["md5"] != md5:
            raise DataIntegrityError(
                f"{dataset}: {path} has md5 {digests['md5']}, expected {md5} (torchvision's list): the file "
                "is corrupt, truncated or another version; replace it with the official one"
            )
        records.append({"file": name, "size": path.stat().st_size, **digests, "md5_checked": md5 is not None})
    return records


def check_images(source: str, n_labels: int, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Raise :class:`DataIntegrityError` unless images of ``shape`` [N, ...] have the ``expected``
    per-image shape and one label each (``source`` names the files they were read from)."""
    if tuple(shape[1:]) != tuple(expected):
        raise DataIntegrityError(
            f"{source}: images of shape {tuple(shape[1:])} (array {tuple(shape)}), expected {tuple(expected)}"
        )
    if shape[0] != n_labels:
        raise DataIntegrityError(f"{source}: {shape[0]} images but {n_labels} labels")


# --- manifests of folder datasets: one line "relative path<TAB>size<TAB>sha256" per file ----------------


def write_manifest(target: Path, root: Path, files: Sequence[str], workers: int | None = None) -> None:
    """Hash every file (relative to ``root``) once and write the manifest atomically."""
    bad = [f for f in files if "\t" in f or "\n" in f]
    if bad:
        raise DatasetError(f"file names with a tab or newline cannot go into a manifest: {bad[:3]}")

    def line(rel: str) -> str:
        path = root / rel
        return f"{rel}\t{path.stat().st_size}\t{sha256_file(path)}\n"

    lines = parallel_map(line, files, workers)
    with atomic_open(target) as fh:
        fh.writelines(lines)


def read_manifest(path: Path) -> list[tuple[str, int, str]]:
    """The (relative path, size, sha256) entries of a manifest."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for row in fh:
            rel, size, digest = row.rstrip("\n").split("\t")
            out.append((rel, int(size), digest))
    return out


def check_sizes(root: Path, files: Sequence[str], sizes: Sequence[int], workers: int | None = None) -> None:
    """Raise naming the first listed file that is missing or whose size (os.stat) changed."""

    def actual(rel: str) -> int:
        try:
            return os.stat(root / rel).st_size
        except FileNotFoundError:
            return -1

    for rel, want, got in zip(files, sizes, parallel_map(actual, files, workers), strict=True):
        if got < 0:
            raise DatasetNotFoundError(
                f"{root / rel} is listed in the prepared dataset but missing; restore it or re-run "
                "prepare_data"
            )
        if got != int(want):
            raise DataIntegrityError(
                f"{root / rel} has {got} bytes, {int(want)} when the dataset was prepared: the file changed; "
                "restore it or re-run prepare_data"
            )


def check_manifest(root: Path, manifest: Path, workers: int | None = None) -> int:
    """Re-hash every file of the manifest (the full check); raise naming the first that differs.

    Returns the number of files checked."""
    entries = read_manifest(manifest)
    check_sizes(root, [e[0] for e in entries], [e[1] for e in entries], workers)
    digests = parallel_map(lambda e: sha256_file(root / e[0]), entries, workers)
    for (rel, _, want), got in zip(entries, digests, strict=True):
        if got != want:
            raise DataIntegrityError(
                f"{root / rel}: sha256 {got[:12]}… does not match {want[:12]}… in {manifest}: the file's "
                "content changed (same size); restore it or re-run prepare_data"
            )
    return len(entries)


def combined_checksum(files: dict[str, str]) -> str:
    """One sha256 over the per-file sha256s (sorted by name): the dataset's identity in provenance."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name]}\n".encode())
    return h.hexdigest()
