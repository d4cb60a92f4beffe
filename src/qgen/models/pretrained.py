"""Full-precision pretrained weights from a file the user gives, loaded into the float model before QAT.

SAQ and LSQ start their ImageNet QAT from a pretrained full-precision model (papers.md §6 and the LSQ
addition); qgen loads such weights from a local file only (nothing from a hub at run time), then quantizes
the model, so the quantizers' steps are initialized from the loaded weights.

Formats: ``.safetensors`` (read with ``safetensors.torch.load_file``) or anything ``torch.load`` reads with
``weights_only=True`` (no pickled code runs). The common containers are unwrapped (``{"model": sd}`` as the
DeiT release, ``{"state_dict": sd}``, ``{"model_state_dict": sd}``), and a ``module.`` (DataParallel) or
``_orig_mod.`` (``torch.compile``) prefix on every key is stripped. Every model key must be in the file and
every file key in the model, with equal shapes, unless an ``exclude`` glob (fnmatch) names it (e.g. ``fc.*``
or ``head.*`` when the number of classes differs; the excluded tensors keep their initialization).
BatchNorm's ``num_batches_tracked`` counters are never required: a file without them (older torchvision
checkpoints) leaves the model's count, a counter the model does not have is ignored; it only matters
for BN with ``momentum=None``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qgen.io import sha256_file

CONTAINER_KEYS = ("model", "state_dict", "model_state_dict")
PREFIXES = ("module.", "_orig_mod.")
SHOWN = 10  # keys listed per kind of mismatch


class PretrainedError(ValueError):
    """A pretrained-weights file that is missing, corrupt or does not fit the model."""


def _read(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise PretrainedError(
            f"pretrained weights {path}: cannot be read ({type(exc).__name__}: {exc})"
        ) from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: containers unwrapped, a whole-dict ``module.`` prefix stripped."""
    while not _is_state_dict(obj):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj, Mapping) and k in obj), None)
        if inner is None:
            found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise PretrainedError(
                f"pretrained weights {path}: not a state dict (a mapping of names to tensors) nor a "
                f"container with one under {', '.join(CONTAINER_KEYS)}; found {found}"
            )
        obj = obj[inner]
    sd = {str(k): v for k, v in obj.items()}
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _listed(kind: str, items: list[str]) -> str:
    shown = "; ".join(items[:SHOWN]) + ("; ..." if len(items) > SHOWN else "")
    return f"{len(items)} {kind}: {shown}"


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    sha256: str | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """Load the file's float weights into ``model`` in place, or raise :class:`PretrainedError` unchanged.

    Returns ``{"path", "sha256" (of the file), "tensors" (number loaded), "excluded" (keys not loaded,
    from the model and the file)}``.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained weights: no file {path}")
    digest = sha256_file(path)
    if sha256 is not None and sha256.lower() != digest:
        raise PretrainedError(f"pretrained weights {path}: sha256 {digest}, expected {sha256}")
    patterns = list(exclude)
    sd = state_dict_from(_read(path), path)
    own = model.state_dict()
    keys = set(own) | set(sd)
    unused = [p for p in patterns if not any(fnmatchcase(k, p) for k in keys)]
    if unused:
        raise PretrainedError(f"pretrained weights {path}: exclude pattern(s) {unused} match no key")
    excluded = sorted(k for k in keys if any(fnmatchcase(k, p) for p in patterns))
    skip = set(excluded)
    missing = sorted(k for k in own if k not in sd and k not in skip and not _is_counter(k))
    unexpected = sorted(k for k in sd if k not in own and k not in skip and not _is_counter(k))
    shapes = sorted(
        f"{k} {tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in own
        if k in sd and k not in skip and sd[k].shape != own[k].shape
    )
    problems = [
        _listed(kind, items)
        for kind, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        raise PretrainedError(
            f"pretrained weights {path} do not fit the model ({'; '.join(problems)}); "
            "name keys not to load with exclude globs (e.g. 'fc.*' when the number of classes differs)"
        )
    load = {k: v for k, v in sd.items() if k in own and k not in skip}
    result = model.load_state_dict(load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return {"path": str(path), "sha256": digest, "tensors": len(load), "excluded": excluded}
