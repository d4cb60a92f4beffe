"""How a run ended: the ``status`` of its model.pt (``train``), metrics.json and runs.csv row.

- ``completed``: trained and evaluated; the only status the analysis uses.
- ``diverged``: the training loss became NaN/inf (qgen.train.loop); its metrics are null.
- ``degenerate``: training ended with a finite loss, but the model learned nothing usable. Its metrics are
  kept (they are the evidence), its measures are not computed (they would be NaN or fail), and
  ``fit.degenerate_reason`` says why:

  - ``non_finite_ce``: the cross-entropy of the model as deployed (eval mode) is NaN or inf, on the
    training set (found by training) or the test set (found by evaluation);
  - ``chance_accuracy``: its training accuracy is at chance, i.e. not above :func:`chance_accuracy`.

"At chance" is our definition, not a paper's: training accuracy ≤ p + Z·√(p(1 − p)/n), with p the
majority-class rate of the training set, n its size and Z = :data:`CHANCE_Z` = 3. A classifier that ignores
its input has expected accuracy ≤ p (the most it can do is always predict the majority class); guessing at
random, its accuracy on n examples has standard deviation about √(p(1 − p)/n), so it passes the bound with
probability ≈ 0.13 % (one-sided, normal approximation). A model at or below it shows no sign of having
used its input (e.g. fixed point with too few bits, whose outputs all round to zero). On the digits split
(1347 examples, p = 137/1347) the bound is 0.1264. It is a documented constant of the evaluation, not a
run setting: it never enters a run spec or run id.
This module imports nothing heavy, so the analysis and report steps can use its names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

COMPLETED, DIVERGED, DEGENERATE = "completed", "diverged", "degenerate"
STATUSES = (COMPLETED, DIVERGED, DEGENERATE)
#: the statuses the analysis and the tables leave out (and count)
LEFT_OUT = (DIVERGED, DEGENERATE)
#: the reasons a run is degenerate (``fit.degenerate_reason``)
DEGENERATE_REASONS = ("non_finite_ce", "chance_accuracy")
#: standard errors above the majority-class rate that still count as chance
CHANCE_Z = 3.0


def chance_accuracy(class_counts: Sequence[int]) -> float:
    """The highest training accuracy that counts as chance, for a training set with these class counts."""
    n = sum(class_counts)
    if n <= 0:
        raise ValueError(f"class counts {list(class_counts)} hold no examples")
    p = max(class_counts) / n
    return p + CHANCE_Z * math.sqrt(p * (1 - p) / n)


def degenerate_reason(
    train_acc: float, cross_entropies: Iterable[float], class_counts: Sequence[int]
) -> str | None:
    """Why a run that trained with a finite loss is degenerate (see the module docstring), or None.

    ``cross_entropies``: the evaluation cross-entropies at hand (training set, and test set once evaluated);
    ``class_counts``: examples per class of the training set (prepared data's ``meta.json``)."""
    if not all(math.isfinite(ce) for ce in cross_entropies):
        return "non_finite_ce"
    if train_acc <= chance_accuracy(class_counts):
        return "chance_accuracy"
    return None
