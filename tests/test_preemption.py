"""Preemption: a signal mid-epoch writes a checkpoint at the next batch boundary, and the resumed run
ends bit-identical to an uninterrupted one (in process and through a real `qgen train` process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import pytest
import torch

from qgen import runtime
from qgen.measures.gap import generalization_metrics
from qgen.train import checkpoint, loop, preemption, train_run
from tests.conftest import train_command

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
    steps_per_epoch = -(-len(digits.train["y"]) // 64)  # batch size 64
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
