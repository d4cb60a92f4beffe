"""Accuracy and cross-entropy of a model over a stream of batches, in eval mode, without gradients; for
segmentation models (one logit channel, binary masks) the dice score and the dice losses.

Dice score as the U-Net reference code computes it (AskariHemmat et al. 2019, ``metrics.py``, the
validation loop of ``em_unet.py``/``gmchallenge_unet.py``): predictions binarized, sigmoid(logit) ≥
threshold (the reference thresholds its sigmoid output at 0.999; default here 0.5, the issue's), then per
image dice = 2·TP/(2·TP + FP + FN) (``1 − scipy.spatial.distance.dice``), averaged over images
(``MetricManager`` sums per image and divides by the number of images). Reported as a fraction in [0, 1]
(the reference multiplies by 100: dice points). An image whose prediction and mask are both empty has
0/0: scipy gives NaN and the reference counts it as **0**; here it counts ``empty`` (default 1: a correct
empty prediction overlaps perfectly; ``empty=0.0`` is the reference's choice).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: anything that maps a batch of inputs to logits: a module, or a measured view with its weights
Forward = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _eval_mode(model: nn.Module | Forward):
    """Eval mode for a module (its prior mode restored afterwards); any other callable as it is."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def dice_score(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, empty: float = 1.0
) -> torch.Tensor:
    """Per-image dice of the binarized predictions sigmoid(logits) ≥ ``threshold`` against the binary
    masks ``target`` (logits' shape, or without their channel dimension), float64, shape (N,); an image
    with both empty scores ``empty`` (module docstring)."""
    if not 0 < threshold < 1:
        raise ValueError(f"dice threshold must lie in (0, 1), got {threshold}")
    if target.shape != logits.shape and target.ndim == logits.ndim - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(f"dice: target of shape {tuple(target.shape)} does not match {tuple(logits.shape)}")
    # sigmoid(z) ≥ t ⇔ z ≥ log(t/(1 − t)): compared on the logits, no rounding of the sigmoid near 1
    pred = (logits >= math.log(threshold / (1 - threshold))).flatten(1)
    truth = (target != 0).flatten(1)
    tp = (pred & truth).sum(dim=1, dtype=torch.float64)
    total = pred.sum(dim=1, dtype=torch.float64) + truth.sum(dim=1, dtype=torch.float64)  # 2TP + FP + FN
    return torch.where(total > 0, 2 * tp / total.clamp_min(1), torch.full_like(total, float(empty)))


@torch.no_grad()
def dice_and_loss(
    model: nn.Module | Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: str = "dice",
    threshold: float = 0.5,
    empty: float = 1.0,
) -> tuple[float, float]:
    """(mean dice score, mean loss) of ``model`` over ``batches``, both **per image** and averaged over the
    images, summed in float64 (eval mode, as :func:`accuracy_and_ce`). ``loss``: ``dice`` or ``bce_dice``
    (qgen.train.losses), evaluated per image so that the value does not depend on how the set is batched;
    training's loss is the batch-level soft dice, and the reference's validation loss is the mean of its
    batch losses (which depends on the batch size)."""
    objective = Objective("segmentation", loss, threshold, empty)  # checks the loss and the threshold
    total_dice: torch.Tensor | float = 0.0
    total_loss: torch.Tensor | float = 0.0
    n = 0
    with _eval_mode(model):
        for xb, yb in batches:
            logits = model(xb)
            total_dice = total_dice + objective.scores(logits, yb).sum()
            total_loss = total_loss + objective.losses(logits.double(), yb).sum()
            n += len(yb)
    if n == 0:
        raise ValueError("dice_and_loss: no examples")
    return float(total_dice) / n, float(total_loss) / n


@torch.no_grad()
def accuracy_and_ce(
    model: nn.Module | Forward, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` over ``batches`` (e.g. a split's
    :class:`~qgen.data.batches.Examples`), summed in float64 on the batches' device; a module is
    evaluated in eval mode and left in its prior mode."""
    correct: torch.Tensor | float = 0.0
    total_ce: torch.Tensor | float = 0.0
    n = 0
    with _eval_mode(model):
        for xb, yb in batches:
            logits = model(xb)
            total_ce = total_ce + F.cross_entropy(logits.double(), yb, reduction="sum")
            correct = correct + (logits.argmax(dim=1) == yb).sum()
            n += len(yb)
    if n == 0:
        raise ValueError("accuracy_and_ce: no examples")
    return float(correct) / n, float(total_ce) / n


# ---- what "accuracy" and "loss" mean for a run's task -----------------------------------------------------

TASKS = ("classification", "segmentation")
SEGMENTATION_LOSSES = ("dice", "bce_dice")
#: the default dice threshold (``train.dice_threshold``; the U-Net reference code uses 0.999)
DICE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Objective:
    """The per-example score and loss every evaluation and measure of a run uses.

    - ``classification``: score = 1 if argmax(logits) is the label (accuracy), loss = cross-entropy;
    - ``segmentation``: score = the per-image dice of the binarized prediction (:func:`dice_score`,
      sigmoid ≥ ``threshold``), loss = the run's training loss ``loss`` (``dice`` or ``bce_dice``)
      evaluated per image (:func:`dice_and_loss`). The batch-level soft dice that training minimizes is
      not a sum over examples, so it cannot be accumulated over mini-batches; its per-image form can.

    The searches of qgen.measures.sharpness use the mean score as their "accuracy" (σ′: the dice drop
    under noise reaches ``target``; α′: the worst-case rise of 1 − dice), the Hessian the mean loss.
    """

    task: str = "classification"
    loss: str = "ce"
    threshold: float = DICE_THRESHOLD
    empty: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"objective: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.segmentation and self.loss not in SEGMENTATION_LOSSES:
            raise ValueError(
                f"a segmentation run needs train.loss in {', '.join(SEGMENTATION_LOSSES)}, got {self.loss!r}"
            )
        if not self.segmentation and self.loss in SEGMENTATION_LOSSES:
            raise ValueError(f"train.loss {self.loss} needs a segmentation dataset (masks as targets)")
        if not 0 < self.threshold < 1:
            raise ValueError(f"dice threshold must lie in (0, 1), got {self.threshold}")

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-example score: correctness (bool) or per-image dice (float64); vmap-safe."""
        if self.segmentation:
            return dice_score(logits, target, self.threshold, self.empty)
        return logits.argmax(-1) == target

    def losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-example loss (differentiable): cross-entropy, or the per-image segmentation loss."""
        if not self.segmentation:
            return F.cross_entropy(logits, target, reduction="none")
        from qgen.train.losses import bce_dice, soft_dice_loss

        if self.loss == "dice":
            return soft_dice_loss(logits, target, per_image=True)
        return bce_dice(logits, target, per_image=True)

    def describe(self) -> dict[str, object]:
        score = "dice" if self.segmentation else "accuracy"
        return {"task": self.task, "score": score, "loss": self.loss, "threshold": self.threshold}


def objective_for(spec: dict, task: str = "classification") -> Objective:
    """The objective of a run ``spec`` on a dataset of ``task`` (``train.loss``, ``train.dice_threshold``)."""
    train = spec.get("train", {})
    loss = train.get("loss", "ce")
    threshold = float(train.get("dice_threshold", DICE_THRESHOLD))
    if task != "segmentation" and loss not in SEGMENTATION_LOSSES:
        return Objective()
    return Objective(task=task, loss=loss, threshold=threshold)


@torch.no_grad()
def score_and_loss(
    model: nn.Module | Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    objective: Objective | None = None,
) -> tuple[float, float]:
    """(mean score, mean loss) under ``objective``: :func:`accuracy_and_ce` for classification (the
    same numbers), (dice, segmentation loss) per image for segmentation."""
    if objective is None or not objective.segmentation:
        return accuracy_and_ce(model, batches)
    return dice_and_loss(model, batches, objective.loss, objective.threshold, objective.empty)


@torch.no_grad()
def split_metrics(
    model: nn.Module | Forward,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    objective: Objective | None = None,
) -> dict[str, float]:
    """``acc`` and ``ce`` of a split and, for segmentation, ``dice`` and ``loss``, in one pass.

    Segmentation: ``acc`` is the **pixel accuracy** of the binarized prediction (sigmoid ≥ threshold) and
    ``ce`` the **pixel binary cross-entropy** of the logits, each averaged per image then over images (the
    images of a set have one size: the pixel means). They keep the generic columns (train_acc, gap_acc,
    train_ce, the degenerate check's chance level of the majority pixel class) meaningful."""
    if objective is None or not objective.segmentation:
        acc, ce = accuracy_and_ce(model, batches)
        return {"acc": acc, "ce": ce}
    from qgen.train.losses import mask_like

    cut = math.log(objective.threshold / (1 - objective.threshold))
    sums = {"acc": 0.0, "ce": 0.0, "dice": 0.0, "loss": 0.0}
    totals: dict[str, torch.Tensor | float] = dict(sums)
    n = 0
    with _eval_mode(model):
        for xb, yb in batches:
            logits = model(xb)
            z = logits.double()
            t = mask_like(z, yb)
            totals["acc"] = totals["acc"] + ((z >= cut) == (t != 0)).flatten(1).double().mean(1).sum()
            bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
            totals["ce"] = totals["ce"] + bce.flatten(1).mean(1).sum()
            totals["dice"] = totals["dice"] + objective.scores(logits, yb).sum()
            totals["loss"] = totals["loss"] + objective.losses(z, yb).sum()
            n += len(yb)
    if n == 0:
        raise ValueError("split_metrics: no examples")
    return {k: float(v) / n for k, v in totals.items()}
