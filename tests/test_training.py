"""Training: determinism, resume after interruption, the stopping rule and divergence."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from qgen import runtime
from qgen.measures.gap import generalization_metrics
from qgen.train import checkpoint, lr_at, train_run
from tests.conftest import train_command

RUNTIME = {"device": "cpu", "threads": 1, "compile": False, "checkpoint_every": 2}


def train(spec, data, out_dir, **runtime_overrides):
    run_cfg = {**RUNTIME, **runtime_overrides}
    device = runtime.configure(run_cfg)
    return train_run(spec, data, out_dir, run_cfg, device, progress=False)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_twice_gives_identical_model_and_metrics(tmp_path, digits, spec_factory) -> None:
    spec = spec_factory(train={"max_epochs": 3})
    m1, _, r1 = train(spec, digits, tmp_path / "a")
    m2, _, r2 = train(spec, digits, tmp_path / "b")
    assert state_equal(m1, m2)
    assert generalization_metrics(m1, digits) == generalization_metrics(m2, digits)
    assert (r1.final_train_ce, r1.epochs, r1.stop_reason) == (r2.final_train_ce, r2.epochs, r2.stop_reason)
    assert (tmp_path / "a" / "train_log.csv").read_text().split("\n")[1:] != []
    m3, _, _ = train(spec_factory(train={"max_epochs": 3}, seed=1), digits, tmp_path / "c")
    assert not state_equal(m1, m3)


def kill_after_second_checkpoint(monkeypatch, spec, data, out_dir) -> None:
    """Train ``spec`` into ``out_dir`` and simulate a kill right after its second checkpoint."""
    real_save, calls = checkpoint.save, {"n": 0}

    def crash_after_second_checkpoint(path, state):
        real_save(path, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill after the second checkpoint")

    monkeypatch.setattr(checkpoint, "save", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(spec, data, out_dir)
    monkeypatch.setattr(checkpoint, "save", real_save)


@pytest.mark.parametrize("quant", [{"method": "lsq"}, {"method": "uniform"}, {"method": "float"}])
def test_interrupted_training_resumes_to_the_same_result(
    tmp_path, digits, spec_factory, monkeypatch, quant
) -> None:
    spec = spec_factory(quant=quant, model={"dropout": 0.1}, train={"max_epochs": 7})
    reference, _, ref_result = train(spec, digits, tmp_path / "ref")

    kill_after_second_checkpoint(monkeypatch, spec, digits, tmp_path / "run")
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["epoch"] == 4

    resumed, _, result = train(spec, digits, tmp_path / "run")
    assert result.resumed_from_epoch == 4
    assert state_equal(reference, resumed)
    assert generalization_metrics(reference, digits) == generalization_metrics(resumed, digits)
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == [str(e) for e in range(1, 8)]
    assert result.epochs == ref_result.epochs == 7


def test_checkpoint_of_another_spec_is_not_resumed(tmp_path, digits, spec_factory) -> None:
    spec = spec_factory(train={"max_epochs": 2})
    train(spec, digits, tmp_path)
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    state["spec_hash"] = "somebody-else"
    checkpoint.save(tmp_path / "checkpoint.pt", state)
    _, _, result = train(spec, digits, tmp_path)
    assert result.resumed_from_epoch is None


def test_stopping_rule_records_what_ended_the_run(tmp_path, digits, spec_factory) -> None:
    spec = spec_factory(
        quant={"method": "float"}, model={"width": 64}, train={"max_epochs": 80, "target_ce": 0.05}
    )
    _, _, result = train(spec, digits, tmp_path / "t")
    assert result.stop_reason == "target_ce" and result.epochs < 80
    assert result.final_train_ce <= 0.05
    _, _, capped = train(spec_factory(train={"max_epochs": 2, "target_ce": 1e-6}), digits, tmp_path / "m")
    assert capped.stop_reason == "max_epochs" and capped.epochs == 2 and capped.final_train_ce > 1e-6


def test_diverged_run_is_recorded_not_raised(tmp_path, digits, spec_factory) -> None:
    spec = spec_factory(
        quant={"method": "float"}, optim={"lr": 1e12, "momentum": 0.9}, train={"max_epochs": 5}
    )
    _, _, result = train(spec, digits, tmp_path)
    assert result.status == "diverged" and result.stop_reason == "diverged"
    assert result.diverged_epoch is not None and result.diverged_epoch <= 5
    assert math.isnan(result.final_train_ce)
    assert (tmp_path / "train_log.csv").exists()


def test_lr_schedules() -> None:
    assert lr_at({"lr": 0.1, "schedule": "constant"}, 7, 10) == 0.1
    assert lr_at({"lr": 0.1, "schedule": "cosine"}, 0, 10) == pytest.approx(0.1)
    assert lr_at({"lr": 0.1, "schedule": "cosine"}, 5, 10) == pytest.approx(0.05)
    step = {"lr": 1.0, "schedule": "step", "milestones": [2, 4], "gamma": 0.5}
    assert [lr_at(step, e, 6) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def _train_cli(spec_json: str, meta: str, out: str, env: dict) -> subprocess.Popen:
    cmd = train_command(spec_json, meta, out, checkpoint_every=1)
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def _evaluate_cli(out: str, meta: str) -> dict:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qgen",
            "evaluate",
            "--model",
            f"{out}/model.pt",
            "--data-meta",
            meta,
            "--out",
            f"{out}/metrics.json",
            "--device",
            "cpu",
        ],
        check=True,
    )
    return json.loads(open(f"{out}/metrics.json").read())


def test_killed_training_process_resumes_with_identical_metrics(tmp_path, digits_dir, spec_factory) -> None:
    """SIGKILL a real `qgen train` process after its first checkpoint; re-running it finishes the
    run from that checkpoint with the same metrics as an uninterrupted run."""
    spec = spec_factory(
        model={"name": "nin", "depth": 2, "width": 2, "base_width": 25},
        train={"max_epochs": 12, "target_ce": None},
    )
    spec_json = json.dumps({"run_id": "digits-nin2x2-lsq_w4a4-00000000", "spec": spec})
    meta = str(digits_dir / "meta.json")
    env = {**os.environ, "QGEN_RUNTIME": ""}
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    assert _train_cli(spec_json, meta, ref, env).wait(timeout=300) == 0

    proc = _train_cli(spec_json, meta, run, env)
    deadline = time.time() + 120
    while not os.path.exists(f"{run}/checkpoint.pt") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(f"{run}/model.pt")
    killed_at = checkpoint.load(f"{run}/checkpoint.pt")["epoch"]
    assert 1 <= killed_at < 12

    resumed = _train_cli(spec_json, meta, run, env)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed from {run}/checkpoint.pt at epoch {killed_at}" in err
    a, b = _evaluate_cli(ref, meta), _evaluate_cli(run, meta)
    assert a["metrics"] == b["metrics"] and a["fit"] == b["fit"]
    assert b["provenance"]["resumed_from_epoch"] == killed_at
    assert not os.path.exists(f"{run}/checkpoint.pt")


def test_best_val_selection_ends_with_the_weights_of_the_lowest_validation_error(
    tmp_path, digits_prepared, spec_factory, monkeypatch
) -> None:
    from qgen.data.run_data import open_run_data

    spec = spec_factory(data={"val_size": 300}, train={"max_epochs": 6, "select": "best_val"})
    data = open_run_data(digits_prepared, spec["data"])
    assert len(data.val) == 300 and data.m == len(digits_prepared.train["y"]) - 300
    model, _, result = train(spec, data, tmp_path / "a")
    log = [line.split(",") for line in (tmp_path / "a" / "train_log.csv").read_text().splitlines()]
    header, rows = log[0], log[1:]
    val_acc = [float(r[header.index("val_acc")]) for r in rows]
    best = val_acc.index(max(val_acc)) + 1  # the earliest epoch of the highest validation accuracy
    assert result.selected_epoch == best and result.epochs == 6
    metrics = generalization_metrics(model, data)
    assert metrics["val_acc"] == pytest.approx(max(val_acc), abs=1e-12)
    assert result.final_train_ce == pytest.approx(float(rows[best - 1][header.index("train_ce")]))
    # the same run interrupted after its second checkpoint resumes to the same selected weights
    kill_after_second_checkpoint(monkeypatch, spec, data, tmp_path / "b")
    resumed, _, again = train(spec, data, tmp_path / "b")
    assert again.resumed_from_epoch == 4 and again.selected_epoch == best
    assert state_equal(model, resumed)


def test_best_val_without_a_validation_split_is_a_config_error(spec_factory) -> None:
    from qgen.config import ConfigError

    with pytest.raises(ConfigError, match="best_val needs a validation split"):
        spec_factory(train={"select": "best_val"})


def test_no_forward_pass_of_training_or_evaluation_sees_more_rows_than_its_batch(
    tmp_path, digits_prepared, spec_factory, monkeypatch
) -> None:
    """Memory is bounded by the batch: training steps see optim.batch_size rows, evaluation passes (the
    stopping rule, validation, test metrics) runtime.eval_batch_size, whatever the split's size."""
    from qgen.data.run_data import open_run_data
    from qgen.train import loop

    seen: list[int] = []
    real_build = loop.build_model

    def counted(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
        return model

    monkeypatch.setattr(loop, "build_model", counted)
    spec = spec_factory(data={"val_size": 200}, optim={"batch_size": 50}, train={"max_epochs": 2})
    data = open_run_data(digits_prepared, spec["data"])
    model, _, _ = train(spec, data, tmp_path, eval_batch_size=128)
    generalization_metrics(model, data, batch_size=128)
    assert max(seen) == 256  # the quantizers' calibration batch (CALIBRATION_EXAMPLES), once
    assert seen.count(256) == 1 and max(seen[1:]) == 128 and 50 in seen
    assert len(data.train) > 1000  # the split is many batches


def test_warmup_then_schedule_over_the_remaining_epochs() -> None:
    from qgen.train.optim import lr_at

    optim = {"lr": 0.1, "schedule": "cosine", "warmup_epochs": 4}
    rates = [lr_at(optim, e, 14) for e in range(14)]
    assert rates[:4] == pytest.approx([0.02, 0.04, 0.06, 0.08])  # lr*(e+1)/(w+1)
    assert rates[4] == pytest.approx(0.1)  # the schedule's epoch 0 of the remaining 10
    assert rates[9] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lr_at({"lr": 0.1, "schedule": "cosine"}, 3, 10) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(0.3 * math.pi))
    )


def test_adamw_decays_the_weights_decoupled_and_never_the_steps() -> None:
    from torch import nn

    from qgen.quant.replace import quantize_model
    from qgen.train.optim import build_optimizer

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    quantize_model(
        model, {"method": "lsq", "weight_bits": 4, "act_bits": 4, "first_layer": "same", "last_layer": "same"}
    )
    opt = build_optimizer(model, {"name": "adamw", "lr": 0.1, "weight_decay": 0.5})
    assert isinstance(opt, torch.optim.AdamW)
    w = model[0].weight.detach().clone()
    step = model[0].weight_quant.scale.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: AdamW moves the weights by -lr*wd*w only (decoupled decay)
    torch.testing.assert_close(model[0].weight, w * (1 - 0.1 * 0.5))
    assert torch.equal(model[0].weight_quant.scale, step)
