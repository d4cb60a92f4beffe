"""Generalization gap of the quantized model as deployed (eval mode, quantizers active).

QGen's exact gap definition is not verified (papers.md §1d), so both are reported:
  gap_acc  = train accuracy − test accuracy
  gap_loss = test cross-entropy − train cross-entropy
The training set is the run's training split (validation examples held out of it excluded); the test
set is the prepared test split (the official one where the dataset has it). A run with a validation
split also gets ``val_acc``/``val_ce``/``val_error``.

Segmentation runs (a segmentation dataset, ``train.loss`` dice or bce_dice; qgen.metrics.Objective) add
``train_dice``/``test_dice`` (per-image dice at ``train.dice_threshold``, mean over images),
``train_loss``/``test_loss`` (the training loss per image, mean over images) and
``gap_dice = train dice − test dice``; their ``gap_loss`` is ``test_loss − train_loss`` (the gap in the
loss the run trained on), while ``*_acc`` are pixel accuracies and ``*_ce`` pixel binary cross-entropies
(:func:`qgen.metrics.split_metrics`), so the generic tables and claims read meaningful numbers.
"""

from __future__ import annotations

from torch import nn

from qgen.data.batches import DEFAULT_BATCH, Examples
from qgen.data.run_data import RunData
from qgen.metrics import Objective, split_metrics


def generalization_metrics(
    model: nn.Module, data: RunData, batch_size: int = DEFAULT_BATCH, objective: Objective | None = None
) -> dict[str, float]:
    splits = {"train": data.train, "test": data.test, **({"val": data.val} if data.val is not None else {})}
    got = {
        name: split_metrics(model, Examples(split, None, batch_size), objective)
        for name, split in splits.items()
    }
    tr, te = got["train"], got["test"]
    out = {
        "train_acc": tr["acc"],
        "test_acc": te["acc"],
        "train_ce": tr["ce"],
        "test_ce": te["ce"],
        "train_error": 1 - tr["acc"],
        "test_error": 1 - te["acc"],
        "gap_acc": tr["acc"] - te["acc"],
        "gap_loss": te["ce"] - tr["ce"],
    }
    if "dice" in tr:
        out.update(
            train_dice=tr["dice"],
            test_dice=te["dice"],
            train_loss=tr["loss"],
            test_loss=te["loss"],
            gap_dice=tr["dice"] - te["dice"],
            gap_loss=te["loss"] - tr["loss"],
        )
    if "val" in got:
        val = got["val"]
        out.update(val_acc=val["acc"], val_ce=val["ce"], val_error=1 - val["acc"])
        if "dice" in val:
            out.update(val_dice=val["dice"], val_loss=val["loss"])
    return out
