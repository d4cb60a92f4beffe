"""Preemption: a signal ends training at the next batch boundary, after an atomic mid-epoch checkpoint.

SLURM preempts or requeues a job (``scontrol requeue``, preemption, node shutdown) by sending SIGTERM
to every process of the job and SIGKILL ``KillWait`` seconds later (30 s by default); ``sbatch
--signal=USR1@120`` sends SIGUSR1 before the time limit; Ctrl-C sends SIGINT. While a run trains,
:func:`install` turns any of these into a request: the loop checks it after every optimizer step,
writes ``checkpoint.pt`` with the batch offset reached and the partial epoch sums, and the process
exits with status 128 + signal number and a message that says where to resume. Data order is a pure
function of (seed, epoch) and the checkpoint holds the RNG state, so the resumed run continues with
exactly the batches and random draws the uninterrupted run would have used: on CPU it ends with
bit-identical metrics. A second signal while the checkpoint is being written stops at once.

Outside the training loop (setting up, evaluating, measuring) there is no state worth a checkpoint:
:func:`exit_on_signal` makes the same signals end the process at once with the same status and a
message, no traceback. What is on disk stays: the final training checkpoint is kept until the run's
metrics and measures are written, so the rerun evaluates and measures again but does not retrain.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from qgen.train import checkpoint

log = logging.getLogger("qgen.train")

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after writing its checkpoint; the exit status is 128 + signal."""

    def __init__(self, signum: int, path: Path, epoch: int, batch_start: int) -> None:
        super().__init__(128 + signum)
        self.signum, self.path, self.epoch, self.batch_start = signum, path, epoch, batch_start

    def __str__(self) -> str:
        return (
            f"training interrupted by {signal.Signals(self.signum).name}: checkpoint at epoch "
            f"{self.epoch}, example {self.batch_start} written to {self.path}; run the same command "
            "again to resume"
        )


class Interrupted(SystemExit):
    """A signal outside the training loop ended ``doing`` at once; the exit status is 128 + signal."""

    def __init__(self, signum: int, doing: str, resume: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.doing, self.resume = signum, doing, resume

    def __str__(self) -> str:
        return f"{self.doing} interrupted by {signal.Signals(self.signum).name}; {self.resume}"


@contextlib.contextmanager
def exit_on_signal(doing: str, resume: str) -> Iterator[None]:
    """While the block runs, SIGTERM/SIGINT/SIGUSR1/SIGUSR2 raise :class:`Interrupted` at once (logged
    with ``resume``: what the rerun continues from). The training loop's :class:`StopRequest` takes
    over inside it and hands back to it (a request the loop no longer acts on ends the process here).
    Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        err = Interrupted(signum, doing, resume)
        log.warning("%s", err)
        raise err

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        _restore_handlers(previous)


class StopRequest:
    """Signal handlers that record a stop request instead of killing the process.

    Installed only in the main thread (Python delivers signals there); elsewhere it never requests
    a stop. :meth:`restore` puts the previous handlers back; it also runs when the object is
    garbage-collected, so an exception out of the training loop does not leave them installed (there
    it leaves alone a signal whose handler someone else has set since, e.g. :func:`exit_on_signal`
    ending its block while the exception still holds the loop's frame).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        previous: dict[int, Any] = {}
        ref = weakref.ref(self)  # the handler must not keep this object alive

        def handler(signum: int, frame: Any) -> None:
            request = ref()
            if request is not None:
                request._handle(signum, frame)

        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous[sig] = signal.signal(sig, handler)
        self._restore = weakref.finalize(self, _restore_handlers, previous, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now, without a checkpoint
            self._restore()
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name} while stopping")
        self.signum = signum
        print(
            f"qgen: {signal.Signals(signum).name} received; stopping after the current batch",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        """Put the previous handlers back. A request that arrived too late for the loop to act on
        (after the last batch) is delivered again to them, so the sender's signal still counts."""
        self._restore()
        if self.signum is not None:
            signum, self.signum = self.signum, None
            signal.raise_signal(signum)

    def checkpoint_and_exit(
        self, path: Path, state: dict[str, Any], *, batch_start: int, loss_sum: torch.Tensor
    ) -> None:
        """Write ``state`` (qgen.train.checkpoint.training_state after ``state["epoch"]`` finished epochs)
        as a mid-epoch checkpoint whose next batch starts at example ``batch_start`` of the epoch's order,
        then raise :class:`TrainingInterrupted`."""
        assert self.signum is not None
        state = {**state, "partial": {"batch_start": batch_start, "loss_sum": loss_sum.detach().cpu()}}
        t0 = time.perf_counter()
        checkpoint.save(path, state)
        self._restore()
        err = TrainingInterrupted(self.signum, path, state["epoch"], batch_start)
        log.warning("%s (checkpoint written in %.2f s)", err, time.perf_counter() - t0)
        raise err


def _restore_handlers(previous: dict[int, Any], installed: Any = None) -> None:
    """Put ``previous`` back; with ``installed``, only for signals whose handler is still that one."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in previous.items():
        if installed is None or signal.getsignal(sig) is installed:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    previous.clear()


def install() -> StopRequest:
    """Start turning SIGTERM/SIGINT/SIGUSR1/SIGUSR2 into a stop request for the training loop."""
    return StopRequest()


def continue_epoch(state: dict[str, Any] | None, device: torch.device) -> tuple[int, torch.Tensor]:
    """Where an epoch starts: (example offset, loss sum so far).

    ``(0, 0)`` unless ``state`` is a just-loaded mid-epoch checkpoint: then its offset and partial sum,
    taken out of ``state`` so that only the first resumed epoch continues."""
    partial = state.pop("partial", None) if state is not None else None
    if partial is None:
        return 0, torch.zeros((), device=device)
    log.info("continuing epoch %d at example %d", state["epoch"] + 1, partial["batch_start"])
    return int(partial["batch_start"]), partial["loss_sum"].to(device)
