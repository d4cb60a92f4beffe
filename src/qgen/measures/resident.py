"""A measure's subset gathered and normalized once, then read from memory by every pass over it.

The searches read their subset hundreds of times (σ′: draws × bisection steps; α′: ascent steps × steps;
the Hessian: one product per probe and iteration): :class:`ResidentExamples` keeps the batches
:class:`~qgen.data.batches.Examples` yields (the same tensors, in the same order and batch size, so every
value computed from them is bit-identical) instead of gathering and normalizing them again on each pass.
It is used when the subset's batches take at most ``max_bytes`` (:data:`RESIDENT_BYTES`; a subset of
ImageNet-size images stays streamed, its memory bounded by the batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from qgen.data.batches import Batch, Examples

#: the most memory (bytes of inputs and labels, on the measuring device) a resident subset may take
RESIDENT_BYTES = 256 * 2**20


@dataclass
class ResidentExamples(Examples):
    """The batches of an :class:`~qgen.data.batches.Examples`, held; iterating gives the same tensors."""

    held: list[Batch] = field(default_factory=list, repr=False)
    _versions: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def __iter__(self) -> Iterator[Batch]:
        if [(x._version, y._version) for x, y in self.held] != self._versions:
            raise RuntimeError("a resident measure subset was modified in place by the pass that read it")
        return iter(self.held)

    def rebatched(self, batch_size: int) -> Examples:
        return Examples(self.split, self.order, batch_size)


def resident(examples: Examples, max_bytes: int = RESIDENT_BYTES) -> Examples:
    """``examples`` as :class:`ResidentExamples` when its batches fit in ``max_bytes`` (judged from the
    first batch), else as given (streamed)."""
    n = len(examples)
    held: list[Batch] = []
    for xb, yb in examples:
        held.append((xb, yb))
        per_row = (xb.element_size() * xb.numel() + yb.element_size() * yb.numel()) / max(len(yb), 1)
        if per_row * n > max_bytes:
            return examples
    versions = [(x._version, y._version) for x, y in held]
    return ResidentExamples(examples.split, examples.order, examples.batch_size, held, versions)
