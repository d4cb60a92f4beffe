"""What one ``qgen`` job costs, split into its overhead and its work (issue 16).

Every ``qgen`` command ends by writing one line to stderr, which the workflow sends to the rule's log:

    qgen timing {"command": "report", "wall": 6.1, "cpu": 6.0, "startup": 0.31, "imports": 2.4, ...}

- ``startup``: from the process start (interpreter start included, Linux ``/proc``) until the command's
  function is entered, i.e. the interpreter and ``import qgen.cli``;
- ``imports``: time spent inside ``import`` statements while the command ran (outermost statements only:
  torch, pandas, matplotlib ...; modules imported through ``importlib.import_module`` alone are not seen);
- ``wall`` and ``cpu``: the whole process, CPU as user + system time of the process and of the child
  processes it waited for (a shard job's workers, a notebook's kernel);
- ``work``: ``wall − startup − imports``, what is left for the job's own computation;
- ``end``: when it ended (epoch seconds), so a build's span needs no file modification times.

Snakemake's ``benchmark:`` files (``logs/benchmarks/<rule>/...``) time the same job from outside (the
shell included) and poll its memory; :mod:`qgen.pipeline_cost` reads both. Torch-free.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

#: the prefix of the timing line in a job's log
TIMING_PREFIX = "qgen timing "


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): the interpreter start counts too."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ImportClock:
    """Sums the wall time the main thread spends in (outermost) ``import`` statements while installed
    (imports in other threads run alongside the main thread's work and are not counted)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._original: Any = None
        self._main = threading.main_thread()

    def _import(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._depth or threading.current_thread() is not self._main:
            return self._original(name, *args, **kwargs)
        t0 = time.perf_counter()
        try:
            self._depth += 1
            return self._original(name, *args, **kwargs)
        finally:
            self._depth = 0
            self.seconds += time.perf_counter() - t0

    def install(self) -> ImportClock:
        self._original = builtins.__import__
        builtins.__import__ = self._import
        return self

    def uninstall(self) -> None:
        if builtins.__import__ == self._import:
            builtins.__import__ = self._original


class JobClock:
    """The clock of one command: started when its function is entered, :meth:`record` at its end."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.startup = process_age()
        self._t0 = time.perf_counter()
        self.imports = ImportClock().install()

    def record(self) -> dict[str, Any]:
        self.imports.uninstall()
        run = time.perf_counter() - self._t0
        imports = self.imports.seconds
        return {
            "command": self.command,
            "wall": round(self.startup + run, 3),
            "cpu": round(cpu_seconds(), 3),
            "startup": round(self.startup, 3),
            "imports": round(imports, 3),
            "work": round(max(0.0, run - imports), 3),
            "end": round(time.time(), 3),
        }

    def write(self, stream: TextIO | None = None) -> dict[str, Any]:
        body = self.record()
        # a closed or broken stderr must not hide the command's exit status
        with contextlib.suppress(OSError, ValueError):
            print(TIMING_PREFIX + json.dumps(body, sort_keys=True), file=stream or sys.stderr, flush=True)
        return body


def read_timing(log: Path) -> dict[str, Any] | None:
    """The last timing line of a job's log (None: no such line, e.g. the job failed or is not qgen's)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if line.startswith(TIMING_PREFIX):
            try:
                body = json.loads(line[len(TIMING_PREFIX) :])
            except json.JSONDecodeError:
                return None
            return body if isinstance(body, dict) else None
    return None
