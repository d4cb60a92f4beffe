"""The training loop: one run spec in, one trained (quantized) model out.

- Data: every batch comes from the run's splits (qgen.data.run_data) through the one batch iterator
  (qgen.data.batches), normalized and, for training batches, augmented on the training device.
- Stopping rule of Jiang et al. (2019): after each epoch the cross-entropy of the model on the
  whole training set (eval mode, i.e. the quantized model as deployed, in batches of
  ``runtime.eval_batch_size``) is computed; training stops when it is at or below ``train.target_ce``
  or after ``train.max_epochs``. Which one ended the run is recorded (``stop_reason``).
- Segmentation runs (a segmentation dataset, ``train.loss`` dice or bce_dice; qgen.metrics.Objective)
  train for a fixed ``max_epochs`` as the U-Net reference does (``train.target_ce`` must be null: a
  cross-entropy target has no meaning for a dice loss). Each epoch logs ``train_dice`` and ``train_loss``
  (per-image dice at ``train.dice_threshold`` and the per-image training loss) beside ``train_acc`` /
  ``train_ce``, which are the pixel accuracy and pixel BCE (qgen.metrics.split_metrics); the degenerate
  check compares that pixel accuracy with the majority-pixel rate (a model that paints every pixel one
  class is at chance). ``best_val`` selects on the validation dice.
- With a validation split (``data.val_size``) its accuracy and cross-entropy are logged every epoch;
  ``train.select: best_val`` keeps the weights of the epoch with the lowest validation error (the
  earliest on ties) and ends the run with them, as BinaryConnect reports the test error at the best
  validation epoch; ``last`` (default) keeps the last epoch's.
- A non-finite training loss marks the run ``diverged`` (with its epoch); a run that ends with a
  finite loss but a non-finite training CE or a training accuracy at chance is ``degenerate``
  (qgen.run_status, with its reason). Either way the run still writes its outputs so the sweep goes
  on and the tables can count it.
- Every ``checkpoint_every`` epochs the full training state (model, optimizer, RNG, log) is
  written atomically to ``checkpoint.pt``; a restarted run resumes from it and ends with the same
  result as an uninterrupted one. Data order is a pure function of (seed, epoch).
- When training ends, a final checkpoint records the finished state and how the run ended
  (``finished``). The caller deletes it once the run's metrics and measures are written
  (``qgen train``); a rerun after a crash or preemption while evaluating or measuring loads it and
  does not train again.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qgen.data.batches import DEFAULT_BATCH, Examples, Split
from qgen.data.run_data import RunData
from qgen.experiments import spec_hash
from qgen.io import atomic_open
from qgen.metrics import objective_for, split_metrics
from qgen.models import build_model
from qgen.quant import BinaryQuantizer, constrain_latent_weights, init_quantizers, quant_layers
from qgen.quant.noise import prepare_compile
from qgen.run_status import COMPLETED, DEGENERATE, DIVERGED, chance_accuracy, degenerate_reason
from qgen.train import checkpoint, preemption
from qgen.train.losses import training_loss
from qgen.train.optim import build_optimizer, lr_at, momentum_at, set_lr, set_momentum
from qgen.train.sam import SAM, SAMSettings

log = logging.getLogger("qgen.train")

LOG_FIELDS = ("epoch", "lr", "loss", "train_ce", "train_acc", "seconds")
VAL_FIELDS = ("val_ce", "val_acc")
SEG_FIELDS = ("train_dice", "train_loss")
SEG_VAL_FIELDS = ("val_dice", "val_loss")
CALIBRATION_EXAMPLES = 256


@dataclass
class TrainResult:
    status: str  # "completed", "diverged" or "degenerate" (qgen.run_status)
    stop_reason: str  # "target_ce", "max_epochs" or "diverged"
    epochs: int
    diverged_epoch: int | None
    final_train_ce: float
    final_train_acc: float
    train_seconds: float
    resumed_from_epoch: int | None
    degenerate_reason: str | None = None  # "non_finite_ce" or "chance_accuracy" when degenerate
    selected_epoch: int | None = None  # the epoch whose weights the run ends with (train.select)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _write_log(path: Path, rows: list[dict[str, Any]], validation: bool, segmentation: bool = False) -> None:
    fields = LOG_FIELDS + (SEG_FIELDS if segmentation else ())
    fields += (VAL_FIELDS + (SEG_VAL_FIELDS if segmentation else ())) if validation else ()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, float("nan")) for k in fields})
    with atomic_open(path) as fh:
        fh.write(buf.getvalue())


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True, leave=False)


def batch_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: str = "ce",
    forward: nn.Module | None = None,
    sam: dict[str, Any] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimizer step on a batch, with what a method adds after the update: BinaryConnect clips
    its latent weights to [−H, H]; dynamic fixed point counts batches and moves its ranges.

    With ``sam`` (the spec's ``optim.sam``) the step is SAM's or SAQ's: two forward/backward passes
    (qgen.train.sam). SAQ cases 1 and 3 perturb through module hooks, which torch.compile does not
    guard, so they run the eager model even with ``runtime.compile``."""
    loss_fn = training_loss(loss, model)
    binary = [
        (m, m.weight_quant) for _, m in quant_layers(model) if isinstance(m.weight_quant, BinaryQuantizer)
    ]
    after_step = getattr(model, "after_step", None)
    forward = forward or model
    if sam is not None:
        sharp = SAM(model, optimizer, SAMSettings.from_spec(sam))
        sam_forward = model if sharp.settings.after_quantization else forward
        if sam_forward is not forward:
            log.warning(
                "SAQ case %d runs the eager model: runtime.compile is not applied", sharp.settings.case
            )

        def sam_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            value = sharp.step(lambda: loss_fn(sam_forward(x), y))
            constrain_latent_weights(binary)
            if after_step is not None:
                after_step()
            return value

        return sam_step

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = loss_fn(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        constrain_latent_weights(binary)
        if after_step is not None:
            after_step()
        return value.detach()

    return step


def train_run(
    spec: dict[str, Any],
    data: RunData,
    out_dir: str | Path,
    runtime: dict[str, Any],
    device: torch.device,
    progress: bool | None = None,
    log_path: str | Path | None = None,
    pretrained: str | Path | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor], TrainResult]:
    """Train the run described by ``spec`` on ``data`` into ``out_dir`` (resuming from its checkpoint).

    Returns the trained model (eval mode), its initial state (after quantizer calibration, for
    distance-from-initialization measures) and the training summary. The final checkpoint stays in
    ``out_dir``: the caller deletes it when the run's results are written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint.path_in(out_dir)
    progress = sys.stderr.isatty() if progress is None else progress
    seed, optim_spec, train_spec = spec["seed"], spec["optim"], spec["train"]
    max_epochs, target = train_spec["max_epochs"], train_spec.get("target_ce")
    select = train_spec.get("select", "last")
    identity = spec_hash(spec)
    train, val = data.train, data.val
    if select == "best_val" and val is None:
        raise ValueError("train.select: best_val needs a validation split (data.val_size > 0)")
    objective = objective_for(spec, data.task)
    if objective.segmentation and target is not None:
        raise ValueError(
            "a segmentation run trains for a fixed number of epochs: set train.target_ce: null "
            "(a cross-entropy target has no meaning for a dice loss)"
        )
    n = len(train)
    eval_batch = int(runtime.get("eval_batch_size", DEFAULT_BATCH))
    train_examples = Examples(train, None, eval_batch)
    val_examples = Examples(val, None, eval_batch) if val is not None else None

    torch.manual_seed(seed)
    state = checkpoint.load(ckpt_path, device) if ckpt_path.exists() else None
    if state is not None and state.get("spec_hash") != identity:
        log.warning("ignoring %s: it belongs to another run spec", ckpt_path)
        state = None
    if spec["model"].get("pretrained") is not None and pretrained is None and state is None:
        raise ValueError(
            f"run starts from pretrained weights {spec['model']['pretrained']['name']!r}: give their file"
        )
    # QAT fine-tuning: pretrained weights load into the float model, before quantizer calibration
    model = build_model(spec, data.input_shape, data.num_classes, pretrained if state is None else None)
    model = model.to(device)
    optimizer = build_optimizer(model, optim_spec)
    batch_size = optim_spec["batch_size"]
    step_model: nn.Module = model
    if runtime.get("compile"):
        prepare_compile()
        step_model = torch.compile(model)
    step = batch_step(model, optimizer, train_spec.get("loss", "ce"), step_model, optim_spec.get("sam"))

    rows: list[dict[str, Any]] = []
    start_epoch, elapsed, resumed = 0, 0.0, None
    init_state: dict[str, torch.Tensor]
    best: dict[str, Any] | None = None  # train.select best_val: {"epoch", "val_error", "model"}

    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        init_state = state["init_state"]
        rows, start_epoch, elapsed = state["log"], state["epoch"], state["elapsed"]
        best = state.get("best")
        resumed = start_epoch
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    else:
        calib = _epoch_order(n, seed, -1)[:CALIBRATION_EXAMPLES]
        init_quantizers(model, next(iter(train.batches(CALIBRATION_EXAMPLES, calib)))[0])
        _initialize_ranges(model, step, optimizer, optim_spec, train, seed, batch_size, max_epochs)
        init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save_state(epoch: int, **extra: Any) -> dict[str, Any]:
        state = checkpoint.training_state(
            identity, epoch, model, optimizer, init_state, rows, elapsed, device
        )
        if best is not None:
            state["best"] = best
        return {**state, **extra}

    status, stop_reason, diverged_epoch = COMPLETED, "max_epochs", None
    finished = state.pop("finished", None) if state is not None else None
    if finished is not None:  # training ended; what came after it (evaluating, measuring) did not
        status, stop_reason, diverged_epoch = (
            finished[k] for k in ("status", "stop_reason", "diverged_epoch")
        )
        start_epoch = max_epochs
        log.info("training already finished at epoch %d (%s): not training again", len(rows), stop_reason)
    elif rows and target is not None and rows[-1]["train_ce"] <= target:
        stop_reason, start_epoch = "target_ce", max_epochs  # finished before the interruption
    bar = _progress(max_epochs, start_epoch, progress)
    stop = preemption.install()  # SIGTERM/SIGINT/SIGUSR*: checkpoint at the next batch, then exit
    for epoch in range(start_epoch, max_epochs):
        t0 = time.perf_counter()
        lr = lr_at(optim_spec, epoch, max_epochs)
        set_lr(optimizer, lr)
        set_momentum(optimizer, momentum_at(optim_spec, epoch))
        model.train()
        order = _epoch_order(n, seed, epoch)
        first, loss_sum = preemption.continue_epoch(state, device)  # mid-epoch checkpoint: its offset
        position = first
        batches = train.batches(batch_size, order[first:], augment=True, seed=seed, epoch=epoch, offset=first)
        for xb, yb in batches:
            loss_sum += step(xb, yb) * len(yb)
            position += len(yb)
            if stop.requested:  # checkpoint mid-epoch (same contents as below, plus the offset)
                elapsed_now = elapsed + time.perf_counter() - t0
                partial = checkpoint.training_state(
                    identity, epoch, model, optimizer, init_state, rows, elapsed_now, device
                )
                if best is not None:
                    partial["best"] = best
                stop.checkpoint_and_exit(ckpt_path, partial, batch_start=position, loss_sum=loss_sum)
        mean_loss = float(loss_sum) / n
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": mean_loss}
        if not torch.isfinite(torch.tensor(mean_loss)):
            status, stop_reason, diverged_epoch = DIVERGED, "diverged", epoch + 1
            row.update(train_acc=float("nan"), train_ce=float("nan"))
        else:
            row.update(_epoch_metrics(split_metrics(model, train_examples, objective), "train"))
            if val_examples is not None:
                row.update(_epoch_metrics(split_metrics(model, val_examples, objective), "val"))
                val_error = 1 - row["val_dice" if objective.segmentation else "val_acc"]
                if select == "best_val" and (best is None or val_error < best["val_error"]):
                    best = {
                        "epoch": epoch + 1,
                        "val_error": val_error,
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    }
        elapsed += time.perf_counter() - t0
        row["seconds"] = round(elapsed, 3)
        rows.append(row)
        train_ce, train_acc = row["train_ce"], row["train_acc"]
        message = (
            f"epoch {epoch + 1}/{max_epochs} lr {lr:.4g} loss {mean_loss:.4f} "
            f"train_ce {train_ce:.4f} train_acc {train_acc:.4f}"
            + (f" train_dice {row['train_dice']:.4f}" if "train_dice" in row else "")
            + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else "")
            + f" ({elapsed:.1f} s)"
        )
        if bar is not None:
            bar.set_postfix_str(f"loss {mean_loss:.4f} train_ce {train_ce:.4f}")
            bar.update(1)
        else:
            print(message, file=sys.stderr, flush=True)
        if status == DIVERGED:
            log.warning("run diverged at epoch %d (loss %s); recording it and stopping", epoch + 1, mean_loss)
            break
        if target is not None and train_ce <= target:
            stop_reason = "target_ce"
            break
        if (epoch + 1) % runtime.get("checkpoint_every", 5) == 0 and epoch + 1 < max_epochs:
            checkpoint.save(ckpt_path, save_state(epoch + 1))
    if finished is None:  # the final checkpoint, kept until the run's metrics and measures are written
        state = save_state(len(rows))
        state["finished"] = {"status": status, "stop_reason": stop_reason, "diverged_epoch": diverged_epoch}
        checkpoint.save(ckpt_path, state)
    if bar is not None:
        bar.close()
    stop.restore()

    selected = len(rows) if rows else None
    if select == "best_val" and best is not None and status != DIVERGED:
        model.load_state_dict(best["model"])
        selected = best["epoch"]
        log.info("ending with the weights of epoch %d (lowest validation error)", selected)
    last = rows[selected - 1] if selected else {"train_ce": float("nan"), "train_acc": float("nan")}
    reason = None
    counts = data.train_class_counts()
    if status == COMPLETED:
        reason = degenerate_reason(last["train_acc"], [last["train_ce"]], counts)
    if reason is not None:
        status = DEGENERATE
        log.warning(
            "run is degenerate (%s): train CE %s, train accuracy %.4f (chance: ≤ %.4f); recording it",
            reason, last["train_ce"], last["train_acc"], chance_accuracy(counts),
        )  # fmt: skip
    result = TrainResult(
        status=status,
        stop_reason=stop_reason,
        epochs=len(rows),
        diverged_epoch=diverged_epoch,
        final_train_ce=last["train_ce"],
        final_train_acc=last["train_acc"],
        train_seconds=round(elapsed, 3),
        resumed_from_epoch=resumed,
        degenerate_reason=reason,
        selected_epoch=selected if select != "last" else None,
    )
    log_file = Path(log_path) if log_path else out_dir / "train_log.csv"
    _write_log(log_file, rows, val is not None, objective.segmentation)
    model.train(False)
    return model, init_state, result


def _epoch_metrics(metrics: dict[str, float], split: str) -> dict[str, float]:
    """A log row's ``<split>_acc``/``_ce`` (segmentation: and ``_dice``/``_loss``) from split_metrics."""
    return {f"{split}_{k}": v for k, v in metrics.items()}


def _initialize_ranges(
    model: nn.Module,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    optim_spec: dict[str, Any],
    train: Split,
    seed: int,
    batch_size: int,
    max_epochs: int,
) -> None:
    """Dynamic fixed point (Courbariaux et al. 2014, code ``init_range``): train ``range_init_epochs``
    epochs at 31 bits so that every group's range settles, then put the parameters back to their
    initial values. As in the reference, the ranges and the momentum updates are kept."""
    arithmetic = getattr(model, "arithmetic", None)
    epochs = arithmetic.range_init_epochs if arithmetic is not None else 0
    if not epochs:
        return
    initial = {k: p.detach().clone() for k, p in model.named_parameters()}
    set_lr(optimizer, lr_at(optim_spec, 0, max_epochs))
    set_momentum(optimizer, momentum_at(optim_spec, 0))
    model.train()
    with model.range_search_precision(31):
        for k in range(epochs):
            order = _epoch_order(len(train), seed, -2 - k)
            for xb, yb in train.batches(batch_size, order, augment=True, seed=seed, epoch=-2 - k):
                step(xb, yb)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(initial[name])
    log.info("dynamic fixed point ranges after %d epochs at 31 bits: %s", epochs, model.ranges())


def save_model(
    path: str | Path,
    model: nn.Module,
    init_state: dict[str, torch.Tensor],
    spec: dict[str, Any],
    run_id: str,
    result: TrainResult,
    provenance: dict[str, Any],
) -> None:
    """The run's final model file: weights, initial weights (for distance-from-init measures),
    the spec and the training summary."""
    checkpoint.save(
        path,
        {
            "run_id": run_id,
            "spec": spec,
            "state_dict": model.state_dict(),
            "init_state": init_state,
            "train": asdict(result),
            "provenance": provenance,
        },
    )
