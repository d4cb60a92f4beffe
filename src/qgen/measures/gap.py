"""Generalization gap of the quantized model as deployed (eval mode, quantizers active).

QGen's exact gap definition is not verified (papers.md §1d), so both are reported:
  gap_acc  = train accuracy − test accuracy
  gap_loss = test cross-entropy − train cross-entropy
The training set is the run's training split (validation examples held out of it excluded); the test
set is the prepared test split (the official one where the dataset has it). A run with a validation
split also gets ``val_acc``/``val_ce``/``val_error``.
"""

from __future__ import annotations

from torch import nn

from qgen.data.batches import DEFAULT_BATCH, Examples
from qgen.data.run_data import RunData
from qgen.metrics import accuracy_and_ce


def generalization_metrics(
    model: nn.Module, data: RunData, batch_size: int = DEFAULT_BATCH
) -> dict[str, float]:
    train_acc, train_ce = accuracy_and_ce(model, Examples(data.train, None, batch_size))
    test_acc, test_ce = accuracy_and_ce(model, Examples(data.test, None, batch_size))
    out = {
        "train_acc": train_acc,
        "test_acc": test_acc,
        "train_ce": train_ce,
        "test_ce": test_ce,
        "train_error": 1 - train_acc,
        "test_error": 1 - test_acc,
        "gap_acc": train_acc - test_acc,
        "gap_loss": test_ce - train_ce,
    }
    if data.val is not None:
        val_acc, val_ce = accuracy_and_ce(model, Examples(data.val, None, batch_size))
        out.update(val_acc=val_acc, val_ce=val_ce, val_error=1 - val_acc)
    return out
