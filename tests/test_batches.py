"""The batch iterator: every example once, in the order asked, normalized on the device; validation splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.data.batches import Examples, Standardize, TensorSplit, examples, stratified_holdout


def _pixels(n: int = 50, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, 4, 4), generator=g, dtype=torch.uint8), torch.arange(n) % 5


def test_batches_cover_every_example_once_in_order_and_no_batch_is_larger() -> None:
    x, y = _pixels(53)
    split = TensorSplit(x, y)
    got = list(split.batches(10))
    assert [len(b[1]) for b in got] == [10, 10, 10, 10, 10, 3]
    assert torch.equal(torch.cat([b[0] for b in got]), x) and torch.equal(torch.cat([b[1] for b in got]), y)
    order = torch.randperm(53, generator=torch.Generator().manual_seed(1))[:20]
    xs = torch.cat([b[0] for b in split.batches(7, order)])
    assert torch.equal(xs, x[order])


def test_standardize_is_per_channel_on_scaled_pixels() -> None:
    x, y = _pixels()
    norm = Standardize(1 / 255, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    (xb, _), *_ = TensorSplit(x, y, norm).batches(100)
    expected = (x.double() / 255 - torch.tensor([0.1, 0.2, 0.3]).double().view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]
    ).double().view(1, 3, 1, 1)
    assert xb.dtype == torch.float32
    torch.testing.assert_close(xb.double(), expected, rtol=1e-6, atol=1e-6)
    assert Standardize.from_meta({"scale": 0.5, "mean": [1.0], "std": [2.0]}) == Standardize(
        0.5, (1.0,), (2.0,)
    )


def test_a_subset_is_a_view_through_an_index_and_nests() -> None:
    x, y = _pixels(30)
    split = TensorSplit(x, y)
    part = split.subset(torch.tensor([5, 3, 20, 7]))
    assert len(part) == 4 and part.x is split.x  # no copy of the examples
    assert torch.equal(part.labels, y[[5, 3, 20, 7]])
    assert torch.equal(next(iter(part.batches(10)))[0], x[[5, 3, 20, 7]])
    inner = part.subset(torch.tensor([2, 0]))
    assert torch.equal(next(iter(inner.batches(10)))[1], y[[20, 5]])


def test_augmentation_only_when_asked_and_seeded_by_epoch_and_position() -> None:
    x, y = _pixels(20)
    seen: list[int] = []

    def noise(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        value = int(torch.randint(0, 1000, (1,), generator=gen))
        seen.append(value)
        return batch + 0 * value

    split = TensorSplit(x, y, augment=noise)
    list(split.batches(8))
    assert seen == []  # evaluation batches are never augmented
    list(split.batches(8, torch.arange(20), augment=True, seed=3, epoch=1))
    first = list(seen)
    seen.clear()
    # resuming at position 8 draws what the uninterrupted epoch drew for its second and third batches
    list(split.batches(8, torch.arange(8, 20), augment=True, seed=3, epoch=1, offset=8))
    assert seen == first[1:]
    seen.clear()
    list(split.batches(8, torch.arange(20), augment=True, seed=3, epoch=2))
    assert seen != first


def test_examples_iterate_the_same_batches_twice_and_sample_is_seeded() -> None:
    x, y = _pixels(40)
    ex = examples(TensorSplit(x, y), 15, seed=4, batch_size=4)
    a, b = list(ex), list(ex)
    assert len(ex) == 15 and len(a) == 4
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(ex.order, examples(TensorSplit(x, y), 15, seed=5).order)
    assert examples(TensorSplit(x, y), None, seed=4).order is None  # all examples, in order
    assert len(Examples.from_tensors(x.float(), y, 16)) == 40


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=2, max_size=6),
    fraction=st.floats(0.05, 0.6),
    seed=st.integers(0, 10),
)
def test_stratified_holdout_sizes_shares_and_disjointness(
    counts: list[int], fraction: float, seed: int
) -> None:
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(99))]
    size = max(1, min(len(labels) - 1, round(fraction * len(labels))))
    kept, held = stratified_holdout(labels, size, seed)
    assert len(held) == size and len(kept) + len(held) == len(labels)
    assert set(kept.tolist()).isdisjoint(held.tolist())
    assert torch.equal(torch.sort(torch.cat([kept, held])).values, torch.arange(len(labels)))
    for c, total in enumerate(counts):  # every class gives its share, within one example
        assert abs(int((labels[held] == c).sum()) - total * size / len(labels)) < 1 + 1e-9
    again = stratified_holdout(labels, size, seed)
    assert torch.equal(again[1], held)


def test_stratified_holdout_refuses_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="cannot hold out"):
        stratified_holdout(torch.zeros(5, dtype=torch.int64), 5, 0)
