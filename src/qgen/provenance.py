"""The provenance record stored with every result file.

It names what produced the numbers: run id and spec, code version (git commit and a dirty flag),
data checksum, library versions, device and runtime settings. Fields that vary between two builds
of the same target (wall time, host, date) live here and never among the metrics, so the metrics
of a rebuilt run can be compared for identity.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import socket
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import qgen

_LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "snakemake", "dvc")


@cache
def code_version() -> dict[str, Any]:
    """Git commit of the qgen checkout and whether its tracked files differ from that commit."""
    root = Path(qgen.__file__).resolve().parents[2]
    info: dict[str, Any] = {"qgen": qgen.__version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


@cache
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: Any) -> dict[str, Any]:
    import torch

    from qgen.runtime import determinism

    info: dict[str, Any] = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "determinism": determinism(),
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def record(**fields: Any) -> dict[str, Any]:
    """A provenance record: code, libraries, host and time, plus the caller's fields."""
    return {
        "code": code_version(),
        "libraries": library_versions(),
        "host": socket.gethostname(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }
