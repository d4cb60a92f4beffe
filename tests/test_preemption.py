"""Preemption: a signal mid-epoch writes a checkpoint at the next batch boundary, and the resumed run
ends bit-identical to an uninterrupted one (in process and through a real `qgen train` process). A signal
or a crash while the training job evaluates and measures keeps the finished training: the rerun does not
train again."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qgen import cli, runner, runtime
from qgen.measures import run as measures_run
from qgen.measures.gap import generalization_metrics
from qgen.train import checkpoint, loop, preemption, train_run
from tests.conftest import make_spec, train_command

RUNTIME = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 100}

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can only be installed in the main thread",
)


def train(spec, data, out_dir):
    device = runtime.configure(RUNTIME)
    return train_run(spec, data, out_dir, RUNTIME, device, progress=False)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("signum", "quant"),
    [(signal.SIGTERM, {"method": "lsq"}), (signal.SIGUSR1, {"method": "binary", "stochastic": True})],
)
def test_signal_mid_epoch_checkpoints_at_the_next_batch_and_resumes_identically(
    tmp_path, digits, spec_factory, monkeypatch, signum, quant
) -> None:
    # dropout and stochastic binarization draw from the RNG, so the checkpointed RNG state matters
    spec = spec_factory(quant=quant, model={"dropout": 0.2}, train={"max_epochs": 4})
    reference, _, ref_result = train(spec, digits, tmp_path / "ref")
    steps_per_epoch = -(-len(digits.train) // 64)  # batch size 64
    stop_at = steps_per_epoch + 8  # the 8th batch of the second epoch

    real_step, calls = loop.constrain_latent_weights, {"n": 0}

    def signal_at_step(*args):
        real_step(*args)
        calls["n"] += 1
        if calls["n"] == stop_at:
            os.kill(os.getpid(), signum)  # handled before the loop's next check

    monkeypatch.setattr(loop, "constrain_latent_weights", signal_at_step)
    before = signal.getsignal(signum)
    with pytest.raises(preemption.TrainingInterrupted) as stopped:
        train(spec, digits, tmp_path / "run")
    monkeypatch.setattr(loop, "constrain_latent_weights", real_step)
    assert stopped.value.code == 128 + signum and calls["n"] == stop_at  # not one step further
    assert signal.getsignal(signum) == before  # handlers restored on the way out
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["partial"]["batch_start"] == 8 * 64
    assert len(state["log"]) == 1 and not (tmp_path / "run" / "train_log.csv").exists()

    resumed, _, result = train(spec, digits, tmp_path / "run")
    assert result.resumed_from_epoch == 1
    assert state_equal(reference, resumed)
    assert generalization_metrics(reference, digits) == generalization_metrics(resumed, digits)
    assert (result.final_train_ce, result.epochs) == (ref_result.final_train_ce, ref_result.epochs)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    ref_log = (tmp_path / "ref" / "train_log.csv").read_text().splitlines()
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731 (drop the seconds column)
    assert strip(log) == strip(ref_log)


def test_training_restores_the_previous_handlers(tmp_path, digits, spec_factory) -> None:
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    train(spec_factory(train={"max_epochs": 1}), digits, tmp_path)
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_second_signal_stops_at_once_and_a_late_request_is_delivered_again() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))
    try:
        stop = preemption.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested and received == []
        with pytest.raises(KeyboardInterrupt, match="second signal SIGUSR2"):
            os.kill(os.getpid(), signal.SIGUSR2)
        assert received == []  # the second signal interrupted; the old handler is back

        late = preemption.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        late.restore()  # training ended before the loop saw it: the previous handler gets it
        assert received == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_to_a_qgen_train_process_resumes_with_identical_metrics(
    tmp_path, digits_dir, spec_factory
) -> None:
    """A real SIGTERM mid-epoch (what `scontrol requeue` and preemption send) to a real `qgen train`
    process: it exits 143 after a mid-epoch checkpoint; the same command then finishes the run with
    the metrics of an uninterrupted run."""
    spec = spec_factory(
        model={"name": "nin", "depth": 2, "width": 2, "base_width": 25},
        optim={"batch_size": 16},
        train={"max_epochs": 6, "target_ce": None},
    )
    spec_json = json.dumps({"run_id": "digits-nin2x2-lsq_w4a4-00000000", "spec": spec})
    meta = str(digits_dir / "meta.json")
    env = {**os.environ, "QGEN_RUNTIME": "", "QGEN_MEASURES": ""}
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    # no end-of-epoch checkpoint: only the signal writes one
    ref_cmd, run_cmd = (train_command(spec_json, meta, d, checkpoint_every=100) for d in (ref, run))
    subprocess.run(ref_cmd, env=env, check=True, capture_output=True)

    proc = subprocess.Popen(run_cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # one line per finished epoch: signal during the second epoch
        lines.append(line)
        if line.startswith("epoch 1/6"):
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(lines)
    err = "".join(lines)
    assert "SIGTERM received; stopping after the current batch" in err
    assert "training interrupted by SIGTERM: checkpoint at epoch 1, example" in err
    assert "Traceback" not in err and not os.path.exists(f"{run}/model.pt")
    state = checkpoint.load(f"{run}/checkpoint.pt")
    assert state["epoch"] == 1 and 0 < state["partial"]["batch_start"] <= 1347

    resumed = subprocess.run(run_cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing epoch 2 at example {state['partial']['batch_start']}" in resumed.stderr
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ref", "run"))
    assert a["metrics"] == b["metrics"] and a["fit"] == b["fit"]
    assert b["provenance"]["resumed_from_epoch"] == 1
    assert not os.path.exists(f"{run}/checkpoint.pt")


# ---- the run's work after training: evaluating and measuring (`qgen train --measure-cache`) ---------------

MEASURES = json.dumps(
    {
        "examples": 300,
        "hessian": {"examples": 128, "max_probes": 10},
        "worst_case": {"examples": 200, "depth": 6},
        "pacbayes": {"depth": 8},
    }
)
MEASURED_RUN = "digits-mlp2x16-lsq_w4a4-00000000"


def measured_train_args(spec, meta: str, out) -> list[str]:
    """`qgen train` arguments (without the interpreter) of a run evaluated and measured into the measure
    cache beside its model, as the workflow's train rule calls it."""
    record = json.dumps({"run_id": MEASURED_RUN, "spec": spec})
    cmd = train_command(record, meta, str(out), checkpoint_every=100)[3:]  # from "train" on
    return [*cmd, "--measure-cache", f"{out}/measures.cache.json"]


def measure_body(cache) -> dict:
    body = json.loads(Path(cache).read_text())["record"]
    body.pop("provenance")  # wall times and the process
    return body


@pytest.fixture(scope="module")
def measured_reference(tmp_path_factory, digits_dir):
    """An uninterrupted run: its spec, metrics.json and measures (the cache body, without provenance)."""
    spec = make_spec(model={"width": 16}, train={"max_epochs": 2})
    out = tmp_path_factory.mktemp("measured-reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QGEN_MEASURES", MEASURES)
        mp.setenv("QGEN_RUNTIME", "")
        assert cli.main(measured_train_args(spec, str(digits_dir / "meta.json"), out)) == 0
    return spec, json.loads((out / "metrics.json").read_text()), measure_body(out / "measures.cache.json")


@contextlib.contextmanager
def sigterm_guard() -> Iterator[list[int]]:
    """A SIGTERM that qgen leaves unhandled is recorded (the list) instead of killing the tests; on the
    way out, qgen must have put back the handler it found."""
    received: list[int] = []

    def catch(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, catch)
    try:
        yield received
        gc.collect()  # the loop's stop request, held by a traceback, must not put a handler back
        assert signal.getsignal(signal.SIGTERM) is catch
    finally:
        signal.signal(signal.SIGTERM, previous)


def forget_failed_job_outputs(out) -> None:
    """What Snakemake does with the declared outputs of a failed job."""
    for name in ("model.pt", "train_log.csv", "metrics.json"):
        (out / name).unlink(missing_ok=True)


@pytest.mark.parametrize("interruption", ["SIGTERM", "exception"])
def test_interrupted_measuring_keeps_the_training_and_the_rerun_does_not_train_again(
    tmp_path, digits_dir, measured_reference, monkeypatch, caplog, interruption
) -> None:
    """A SIGTERM (a real signal to this process) or a crash while the training job measures: the final
    checkpoint stays, the process ends with 128 + 15 (SIGTERM) or the exception; the rerun takes no
    training step and ends with the metrics and measures of an uninterrupted run."""
    spec, ref_metrics, ref_measures = measured_reference
    monkeypatch.setenv("QGEN_MEASURES", MEASURES)
    monkeypatch.setenv("QGEN_RUNTIME", "")
    args = measured_train_args(spec, str(digits_dir / "meta.json"), tmp_path)
    real_measure = measures_run.measure_run

    def interrupted_measure(*a, **k):
        if interruption == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
        raise RuntimeError("simulated crash while measuring")

    monkeypatch.setattr(measures_run, "measure_run", interrupted_measure)
    expected = preemption.Interrupted if interruption == "SIGTERM" else RuntimeError
    with sigterm_guard() as unhandled, pytest.raises(expected) as stopped:
        cli.main(args)
    assert unhandled == []  # qgen's handler ended the process
    if interruption == "SIGTERM":
        assert stopped.value.code == 128 + signal.SIGTERM
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2 and state["finished"]["status"] == "completed"
    assert not (tmp_path / "measures.cache.json").exists()
    forget_failed_job_outputs(tmp_path)

    monkeypatch.setattr(measures_run, "measure_run", real_measure)
    real_step, steps = loop.constrain_latent_weights, {"n": 0}

    def counted_step(*a):
        steps["n"] += 1
        real_step(*a)

    monkeypatch.setattr(loop, "constrain_latent_weights", counted_step)
    caplog.set_level(logging.INFO, logger="qgen.train")
    assert cli.main(args) == 0
    assert steps["n"] == 0 and "training already finished at epoch 2 (max_epochs): not training again" in (
        caplog.text
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["status"], metrics["fit"], metrics["metrics"]) == (
        ref_metrics["status"], ref_metrics["fit"], ref_metrics["metrics"]
    )  # fmt: skip
    assert metrics["provenance"]["resumed_from_epoch"] == 2
    assert measure_body(tmp_path / "measures.cache.json") == ref_measures
    assert not (tmp_path / "checkpoint.pt").exists()  # deleted once metrics and measures are written


def test_sigterm_to_a_measuring_qgen_train_process_exits_143_and_the_rerun_does_not_train_again(
    tmp_path, digits_dir, measured_reference
) -> None:
    """A real SIGTERM (what `scontrol requeue` and preemption send) to a real `qgen train` process while it
    measures: it exits 143 with a message and no traceback, keeping its final checkpoint; the same command
    then trains nothing and writes the metrics and measures of an uninterrupted run."""
    spec, ref_metrics, ref_measures = measured_reference
    env = {**os.environ, "QGEN_RUNTIME": "", "QGEN_MEASURES": MEASURES}
    cmd = [sys.executable, "-m", "qgen", *measured_train_args(spec, str(digits_dir / "meta.json"), tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if f"{MEASURED_RUN}: measuring" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    err = "".join(lines)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, err
    assert f"{MEASURED_RUN}: evaluating and measuring interrupted by SIGTERM; the finished training" in err
    assert "Traceback" not in err and not (tmp_path / "measures.cache.json").exists()
    assert checkpoint.load(tmp_path / "checkpoint.pt")["finished"]["stop_reason"] == "max_epochs"
    forget_failed_job_outputs(tmp_path)

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "training already finished at epoch 2" in rerun.stderr and "epoch 1/2" not in rerun.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["fit"], metrics["metrics"]) == (ref_metrics["fit"], ref_metrics["metrics"])
    assert measure_body(tmp_path / "measures.cache.json") == ref_measures
    assert not (tmp_path / "checkpoint.pt").exists()


def test_sigterm_while_the_measure_rule_measures_exits_at_once_and_writes_nothing(
    tmp_path, monkeypatch
) -> None:
    (tmp_path / "model.pt").write_bytes(b"a model file")

    def measuring(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
        raise AssertionError("SIGTERM did not end the measuring")

    monkeypatch.setattr(runner, "measure_model_file", measuring)
    out = tmp_path / "measures.json"
    argv = ["measure", "--model", str(tmp_path / "model.pt"), "--data-meta", "meta.json", "--out", str(out)]
    with sigterm_guard() as unhandled, pytest.raises(preemption.Interrupted, match="measuring interrupted"):
        cli.main([*argv, "--device", "cpu"])
    assert unhandled == [] and not out.exists()
