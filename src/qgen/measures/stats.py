"""Summary statistics of Monte-Carlo estimates shared by the measures (Hutchinson probes, noise draws)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The sample mean and its standard error √(s²/n), s² with n − 1 degrees of freedom (NaN for n < 2)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
