"""Rank correlation of measures with the generalization gap (Jiang et al. 2019, §2 and §6).

- Kendall τ (Jiang Eq. 1): τ = Σ_{i≠j} sign(μ_i − μ_j)·sign(g_i − g_j) / (n(n−1)), i.e. Kendall's τ_a
  (ties count as 0). It equals ``scipy.stats.kendalltau`` (τ_b) when nothing is tied (tested).
- Its 95 % interval is a percentile bootstrap that resamples runs with replacement and takes τ over
  the pairs of *distinct* original runs, each weighted by how often both were drawn:
  τ* = Σ_{i≠j} w_i w_j s_ij / Σ_{i≠j} w_i w_j (w = draw counts, s_ij the sign product). The plain
  bootstrap (τ_a of the resampled table) also pairs each run with its own copies; those pairs are tied
  in both variables and count 0, which shrinks every resample toward 0 by about (n−2)/(n−1) (a
  perfectly monotone table of 20 runs got an interval ending at 0.95). Dropping the self-pairs keeps
  a resampling interval, with ``analysis.bootstrap`` resamples, without that bias; a jackknife would be
  unbiased too but gives only a symmetric normal-theory interval.
- Granulated Kendall Ψ (Jiang Eq. 3-4): for each hyperparameter axis i, group the runs by the values
  of all other axes, take τ within each group where axis i varies, average → ψ_i; Ψ = mean of ψ_i.
  Bit width is one axis. Seeds are not an axis: runs that differ only in seed fall in one group.
  ``psi`` uses Jiang's τ_a inside each group and is the one the claims use; ``psi_tau_b`` is the
  reference code's variant (``scipy.stats.kendalltau``, i.e. τ_b, inside each group; groups where τ_b
  is undefined, all measures or all gaps tied, are skipped). The two differ only through ties.
- Conditional mutual information (Jiang §6, reconstruction [M]): over all ordered pairs of distinct
  runs, V_μ = sign of the measure difference and V_g = sign of the gap difference (pairs with equal
  gaps dropped); for each conditioning set S of at most ``max_condition`` hyperparameters, U_S = the
  pair's values of S; I(V_μ; V_g | U_S) normalized by H(V_g | U_S); the score is the minimum over S
  (a measure whose relation to the gap is explained away by some hyperparameter scores near 0).
  Both orders of every pair count, so the score does not depend on the row order of the table.

All of it comes from exact integer counts of concordant and discordant pairs, obtained in O(n log n) by
a merge-sort count (:func:`_merge_levels`) instead of materializing the n² pairs; the bootstrap counts
its resamples together, as weights, level by level.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: resamples counted together in one pass of the bootstrap (keeps its arrays at a few MB)
_CHUNK = 64


# ---------------------------------------------------------------- counting pairs in O(n log n)


@dataclass(frozen=True)
class _Levels:
    """Merge levels over positions 0..size−1 that hold ranks (padding beyond the data weighs 0).

    At level h the positions form parents of 2h: a left block of h, then a right block of h. ``seq``
    lists the left-block positions by (parent, rank descending); ``above[k]`` is the index in ``seq``
    that follows the left elements of the k-th right position's parent ranking strictly higher than it.
    The levels start at h = ``block`` (size = block·2^levels); with ``block`` > 1, ``masks`` holds the
    pairs inside each block, masks[b, u, v] = 1 where u < v and rank_u > rank_v (one matrix product).
    """

    size: int
    block: int
    masks: np.ndarray | None
    levels: tuple[tuple[int, np.ndarray, np.ndarray], ...]


def _dense_ranks(*keys: np.ndarray) -> np.ndarray:
    """Ranks 0..k−1 of the rows of ``keys`` in lexicographic order (first key first; ties share one)."""
    order = np.lexsort(keys[::-1])
    changed = np.zeros(len(order), dtype=bool)
    for key in keys:
        sorted_key = key[order]
        changed[1:] |= sorted_key[1:] != sorted_key[:-1]
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.cumsum(changed)
    return ranks


def _merge_levels(rank: np.ndarray, dense: int = 1) -> _Levels:
    """The levels for counting, at each position, the weight of earlier positions that rank higher.

    ``dense`` > 1: blocks of between dense/2 and ``dense`` positions are counted densely (``masks``)."""
    n = len(rank)
    doublings = max(0, math.ceil(math.log2(n / dense))) if n > dense else 0
    block = max(1, -(-n // 2**doublings))
    size = block * 2**doublings
    padded = np.zeros(size, dtype=np.int64)
    padded[:n] = rank
    masks = None
    if block > 1:
        blocks = padded.reshape(-1, block)
        later = np.triu(np.ones((block, block), dtype=bool), k=1)
        masks = ((blocks[:, :, None] > blocks[:, None, :]) & later).astype(np.float32)
    k = int(padded.max()) + 1
    by_rank = np.argsort(-padded, kind="stable")
    positions = np.arange(size)
    levels = []
    h = block
    while h < size:
        parent = by_rank // (2 * h)
        small = np.uint16 if size // (2 * h) <= np.iinfo(np.uint16).max else np.int64
        grouped = by_rank[np.argsort(parent.astype(small), kind="stable")]  # a radix sort for uint16
        seq = grouped[grouped % (2 * h) < h]
        keys = (seq // (2 * h)) * k + (k - 1 - padded[seq])  # ascending along seq
        right = positions[positions % (2 * h) >= h]
        above = np.searchsorted(keys, (right // (2 * h)) * k + (k - 1 - padded[right]), side="left")
        levels.append((h, seq, above))
        h *= 2
    return _Levels(size, block, masks, tuple(levels))


#: blocks of at most this many positions are counted by one matrix product instead of merge levels
#: (small enough that OpenBLAS stays on one thread)
_DENSE = 64


def _higher_before(levels: _Levels, weights: np.ndarray) -> np.ndarray:
    """out[r, v] = Σ_{u < v, rank_u > rank_v} weights[r, u], positions as the levels were built."""
    rows, n = weights.shape
    w = np.zeros((rows, levels.size), dtype=np.int64)
    w[:, :n] = weights
    out = np.zeros_like(w)
    if levels.masks is not None:  # exact: float64 holds these integers
        blocks = w.reshape(rows, -1, levels.block).transpose(1, 0, 2).astype(float)
        inside = np.matmul(blocks, levels.masks.astype(float)).transpose(1, 0, 2).reshape(rows, -1)
        out += np.rint(inside).astype(np.int64)
    prefix = np.zeros((rows, levels.size // 2 + 1), dtype=np.int64)
    for h, seq, above in levels.levels:
        parents = levels.size // (2 * h)
        np.cumsum(np.take(w, seq, axis=1), axis=1, out=prefix[:, 1:])
        start = prefix[:, : levels.size // 2 : h, None]  # before each parent's left elements
        higher = np.take(prefix, above, axis=1).reshape(rows, parents, h) - start
        out.reshape(rows, parents, 2 * h)[:, :, h:] += higher
    return out[:, :n]


def _weighted_discordant(levels: _Levels, w: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """Σ_{u < v, rank_u > rank_v} w_u·w_v for every row of ``w`` (rows × ``levels.size``, zero-padded;
    ``cumulative``: its cumulative sums with a leading 0): the bootstrap's inner loop, equal to
    ``(w * _higher_before(levels, w)).sum(1)`` in fewer passes. Sums must fit ``w.dtype``."""
    rows, half = w.shape[0], levels.size // 2
    total = np.zeros(rows, dtype=np.int64)
    if levels.masks is not None:  # exact in float32: each entry is at most Σw = n < 2^24
        blocks = w.reshape(rows, -1, levels.block)
        inside = np.matmul(blocks.transpose(1, 0, 2).astype(np.float32), levels.masks)
        total += np.einsum("rpb,prb->r", blocks, inside.astype(w.dtype))
    prefix = np.zeros((rows, half + 1), dtype=w.dtype)
    for h, seq, above in levels.levels:
        parents = levels.size // (2 * h)
        np.cumsum(np.take(w, seq, axis=1), axis=1, out=prefix[:, 1:])
        right = w.reshape(rows, parents, 2 * h)[:, :, h:]
        higher = np.take(prefix, above, axis=1).reshape(rows, parents, h)
        right_sums = cumulative[:, 2 * h :: 2 * h] - cumulative[:, h :: 2 * h]
        total += np.einsum("rpk,rpk->r", right, higher)
        total -= np.einsum("rp,rp->r", prefix[:, :half:h], right_sums)
    return total


def _run_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of every run of equal consecutive rows of ``sorted_keys``."""
    new = np.zeros(len(sorted_keys[0]), dtype=bool)
    new[:1] = True
    for key in sorted_keys:
        new[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(new)


def _cumulative(w: np.ndarray) -> np.ndarray:
    """Cumulative sums along the rows of ``w`` with a leading 0 column (same dtype)."""
    out = np.zeros((w.shape[0], w.shape[1] + 1), dtype=w.dtype)
    np.cumsum(w, axis=1, out=out[:, 1:])
    return out


@dataclass(frozen=True)
class _Ties:
    """The runs of at least two equal values in a sorted order: ``starts`` and ``ends`` (positions in
    that order) and ``members`` (the positions in them, run after run)."""

    starts: np.ndarray
    ends: np.ndarray
    members: np.ndarray

    @classmethod
    def of(cls, *sorted_keys: np.ndarray) -> _Ties:
        """The ties of the rows of ``sorted_keys`` (equal in all of them; rows already sorted)."""
        starts = _run_starts(*sorted_keys)
        lengths = np.diff(np.append(starts, len(sorted_keys[0])))
        starts, lengths = starts[lengths > 1], lengths[lengths > 1]
        return cls(starts, starts + lengths, np.repeat(starts, lengths) + _ranges(lengths))

    def among_members(self) -> _Ties:
        """The same runs, positioned in the array of the members alone."""
        ends = np.cumsum(self.ends - self.starts)
        return _Ties(ends - (self.ends - self.starts), ends, np.arange(len(self.members)))

    def pairs(self, cumulative: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """Σ over runs of Σ_{u<v in run} w_u·w_v for every row, from the cumulative sums of w and w²
        along the sorted order (leading 0 column)."""

        def run_sums(c: np.ndarray) -> np.ndarray:
            return (np.take(c, self.ends, axis=1) - np.take(c, self.starts, axis=1)).astype(np.int64)

        sums = run_sums(cumulative)
        return (np.einsum("rk,rk->r", sums, sums) - run_sums(squares).sum(axis=1)) // 2


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """0..l−1 for every l in ``lengths``, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)


@dataclass(frozen=True)
class PairSums:
    """Sums over the unordered pairs of distinct runs, one entry per group or per resample: ``s`` =
    Σ sign(Δx)·sign(Δy) (concordant − discordant), ``pairs``, and the pairs not tied in x / in y
    (for a resample, pair (i, j) counts w_i·w_j times)."""

    s: np.ndarray
    pairs: np.ndarray
    untied_x: np.ndarray
    untied_y: np.ndarray

    def tau_a(self) -> np.ndarray:
        """Jiang's Eq. 1 (ties count 0): 2s / (2·pairs), as n(n−1) in the definition; NaN without pairs."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (2 * self.s).astype(float) / (2 * self.pairs).astype(float)

    def tau_b(self) -> np.ndarray:
        """Kendall's τ_b (scipy's default): NaN where all x or all y are tied."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.s / np.sqrt(self.untied_x.astype(float) * self.untied_y.astype(float))


#: groups are enumerated pair by pair while they hold at most this many pairs per run
_ENUMERATE = 32


def pair_sums(x: np.ndarray, y: np.ndarray, group: np.ndarray | None = None, groups: int = 1) -> PairSums:
    """Exact pair sums of ``x`` against ``y`` over the pairs inside each group (codes 0..groups−1):
    small groups pair by pair, large ones by the merge count, O(n log n)."""
    n = len(x)
    group = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
    size = np.bincount(group, minlength=groups)
    pairs = size * (size - 1) // 2
    if pairs.sum() <= _ENUMERATE * n:
        by_group = np.argsort(group, kind="stable")
        later = np.repeat(np.cumsum(size) - 1, size) - np.arange(n)  # later members of one's group
        i = np.repeat(by_group, later)
        j = by_group[np.repeat(np.arange(n), later) + 1 + _ranges(later)]
        sx, sy, g = np.sign(x[i] - x[j]), np.sign(y[i] - y[j]), group[i]
        tied_x, tied_y = (np.bincount(g, t == 0, minlength=groups).astype(np.int64) for t in (sx, sy))
        s = np.bincount(g, sx * sy, minlength=groups).astype(np.int64)
        return PairSums(s, pairs, pairs - tied_x, pairs - tied_y)
    order = np.lexsort((y, x, group))
    gs = group[order]
    # group first in both orders: pairs across groups never count
    levels = _merge_levels(_dense_ranks(gs, y[order]), dense=_DENSE)
    discordant = np.bincount(gs, _higher_before(levels, np.ones((1, n), dtype=np.int64))[0], minlength=groups)

    def tied(sort: np.ndarray, *keys: np.ndarray) -> np.ndarray:
        starts = _run_starts(group[sort], *(k[sort] for k in keys))
        lengths = np.diff(np.append(starts, n))
        return np.bincount(group[sort][starts], lengths * (lengths - 1) // 2, minlength=groups).astype(int)

    tied_x, tied_xy = tied(order, x), tied(order, x, y)
    tied_y = tied(np.lexsort((y, group)), y)
    s = pairs - tied_x - tied_y + tied_xy - 2 * discordant.astype(np.int64)
    return PairSums(s, pairs, pairs - tied_x, pairs - tied_y)


def _finite(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_a of Jiang et al. (Eq. 1) over the finite pairs; NaN with fewer than 2."""
    a, b = _finite(x, y)
    if len(a) < 2:
        return float("nan")
    return float(pair_sums(a, b).tau_a()[0])


# ---------------------------------------------------------------- bootstrap


@functools.lru_cache(maxsize=4)
def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """Draw counts of ``n`` runs in each of ``resamples`` resamples of n draws with replacement
    (read-only, cached: every measure of a table is resampled alike)."""
    draws = np.random.default_rng(seed).integers(0, n, (resamples, n))
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.int32)
    counts.flags.writeable = False
    return counts


def bootstrap_taus(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """τ over the pairs of distinct runs, pair (i, j) weighted by w_i·w_j, for every row w of ``weights``."""
    n = len(a)
    order, by_y = np.lexsort((b, a)), np.lexsort((a, b))
    levels = _merge_levels(_dense_ranks(b[order]), dense=_DENSE)
    tied_x, tied_xy = _Ties.of(a[order]), _Ties.of(a[order], b[order])
    tied_y = _Ties.of(b[by_y])
    y_members, y_runs = by_y[tied_y.members], tied_y.among_members()  # gathered alone
    largest = int(weights.sum(axis=1, dtype=np.int64).max(initial=0))
    dtype = np.int32 if largest**2 < np.iinfo(np.int32).max else np.int64  # no sum exceeds largest²
    taus = np.empty(weights.shape[0])
    for first in range(0, weights.shape[0], _CHUNK):
        chunk = weights[first : first + _CHUNK].astype(dtype, copy=False)
        w = np.zeros((chunk.shape[0], levels.size), dtype=dtype)
        np.take(chunk, order, axis=1, out=w[:, :n])
        cumulative, squares = _cumulative(w), _cumulative(w * w)
        pairs = (cumulative[:, -1].astype(np.int64) ** 2 - squares[:, -1]) // 2
        wy = np.take(chunk, y_members, axis=1)
        untied = pairs - tied_x.pairs(cumulative, squares) + tied_xy.pairs(cumulative, squares)
        untied -= y_runs.pairs(_cumulative(wy), _cumulative(wy * wy))
        s = untied - 2 * _weighted_discordant(levels, w, cumulative)
        with np.errstate(invalid="ignore", divide="ignore"):
            taus[first : first + len(chunk)] = s / pairs.astype(float)
    return taus


def bootstrap_tau(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of τ: runs resampled with replacement, self-pairs dropped (see the
    module docstring); NaN with fewer than 3 finite pairs."""
    a, b = _finite(x, y)
    if len(a) < 3:
        return float("nan"), float("nan")
    taus = bootstrap_taus(a, b, resample_counts(len(a), resamples, seed))
    lo, hi = np.nanquantile(taus, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------- granulated Kendall


@dataclass(frozen=True)
class _Grouping:
    """The groups of one axis (runs equal in every other axis, in groupby order) and whether it varies."""

    group: np.ndarray
    varies: np.ndarray


def _groupings(df: pd.DataFrame, axes: Sequence[str]) -> dict[str, _Grouping]:
    out = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        group = (
            df.groupby(others, dropna=False, sort=True).ngroup().to_numpy()
            if others
            else np.zeros(len(df), dtype=np.int64)
        )
        varies = df[axis].groupby(group).nunique().to_numpy() > 1
        out[axis] = _Grouping(group, varies)
    return out


def _psi(mu: np.ndarray, g: np.ndarray, groupings: dict[str, _Grouping]) -> dict[str, dict[str, float]]:
    """{variant: {axis: ψ_i}} for the τ_a and τ_b variants, from one pair count per axis."""
    ok = np.isfinite(mu) & np.isfinite(g)
    psi: dict[str, dict[str, float]] = {"tau_a": {}, "tau_b": {}}
    for axis, grouping in groupings.items():
        sums = pair_sums(mu[ok], g[ok], grouping.group[ok], len(grouping.varies))
        for variant, taus in (("tau_a", sums.tau_a()), ("tau_b", sums.tau_b())):
            used = taus[grouping.varies & np.isfinite(taus)]
            psi[variant][axis] = float(np.mean(used)) if len(used) else float("nan")
    return psi


def _mean_finite(values: dict[str, float]) -> float:
    finite = [v for v in values.values() if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def granulated_kendall(
    df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str], *, variant: str = "tau_a"
) -> tuple[float, dict[str, float]]:
    """(Ψ, {axis: ψ_i}) of ``measure`` against ``gap`` over the hyperparameter ``axes``.

    ``variant``: ``tau_a`` (Jiang's Eq. 1 inside each group, used by the claims) or ``tau_b`` (the
    reference code's scipy τ_b inside each group, groups where it is undefined skipped)."""
    if variant not in ("tau_a", "tau_b"):
        raise ValueError(f"granulated_kendall: variant must be tau_a or tau_b, got {variant!r}")
    psi = _psi(df[measure].to_numpy(float), df[gap].to_numpy(float), _groupings(df, axes))[variant]
    return _mean_finite(psi), psi


# ---------------------------------------------------------------- conditional mutual information


def _entropy_rows(counts: np.ndarray) -> np.ndarray:
    """Entropy of each row of a count matrix (natural log)."""
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts, dtype=float), where=total > 0)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)).sum(axis=1)


def _sign_counts(mu: np.ndarray, g: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """J[p, q, V_μ + 1, V_g + 1]: ordered pairs (u, v) of distinct runs with classes (p, q), where the
    classes are the rows of ``onehot`` (classes × runs); V_g = 0 never occurs (equal gaps dropped).
    The products are integer matmuls: exact, and without BLAS threads (the analyse job has one core)."""
    n, c = len(mu), onehot.shape[0]

    def before(order: np.ndarray, *run_keys: np.ndarray) -> np.ndarray:
        """Class counts of the elements (in ``order``) before each element's run of equal ``run_keys``."""
        cumulative = _cumulative(onehot[:, order])
        starts = _run_starts(*(k[order] for k in run_keys))
        return cumulative[:, np.repeat(starts, np.diff(np.append(starts, n)))]

    by_g, by_mu_g = np.argsort(g, kind="stable"), np.lexsort((g, mu))
    gap_larger = onehot[:, by_g] @ before(by_g, g).T  # [p, q]: g_u > g_v
    inside = before(by_mu_g, mu, g) - before(by_mu_g, mu)
    tied_mu = onehot[:, by_mu_g] @ inside.T  # μ_u = μ_v, g_u > g_v
    by_mu = np.lexsort((-g, mu))  # μ ascending, ties by g descending: no pair inside a tie counts
    hot = onehot[:, by_mu]
    both_larger = hot @ _higher_before(_merge_levels(_dense_ranks(-g[by_mu]), dense=_DENSE), hot).T
    counts = np.zeros((c, c, 3, 3), dtype=np.int64)
    counts[:, :, 2, 2] = both_larger  # μ_u > μ_v and g_u > g_v
    counts[:, :, 1, 2] = tied_mu
    counts[:, :, 0, 2] = gap_larger - tied_mu - both_larger
    counts[:, :, :, 0] = counts.transpose(1, 0, 2, 3)[:, :, ::-1, 2]  # (v, u): both signs flip
    return counts


@dataclass(frozen=True)
class _Conditions:
    """The conditioning sets S of the CMI score and the class (value of S) of every run, one-hot."""

    subsets: list[tuple[str, ...]]
    onehot: np.ndarray  # Σ_S classes(S) × runs
    offsets: np.ndarray  # rows of subset i: offsets[i]:offsets[i + 1]


def _conditions(df: pd.DataFrame, axes: Sequence[str], max_condition: int) -> _Conditions:
    n = len(df)
    codes = {a: pd.factorize(df[a].astype(str), use_na_sentinel=False)[0] for a in axes}  # NaN: a value
    subsets = [s for size in range(max_condition + 1) for s in itertools.combinations(axes, size)]
    cells = []
    for subset in subsets:
        code = np.zeros(n, dtype=np.int64)
        for a in subset:
            code = code * (codes[a].max() + 1) + codes[a]
        cells.append(pd.factorize(code)[0])
    offsets = np.cumsum([0, *(int(cell.max(initial=-1)) + 1 for cell in cells)])
    onehot = np.zeros((offsets[-1], n), dtype=np.int64)
    for offset, cell in zip(offsets[:-1], cells, strict=True):
        onehot[offset + cell, np.arange(n)] = 1
    return _Conditions(subsets, onehot, offsets)


def _cmi(mu: np.ndarray, g: np.ndarray, conditions: _Conditions, rows: np.ndarray) -> tuple[float, str]:
    """The CMI score of ``mu`` against ``g`` (the runs ``rows`` of the table ``conditions`` came from)."""
    n = len(mu)
    _, tie_sizes = np.unique(g, return_counts=True)
    if (n * (n - 1) - int((tie_sizes * (tie_sizes - 1)).sum())) // 2 < 2:
        return float("nan"), ""
    counts = _sign_counts(mu, g, conditions.onehot[:, rows])
    best, best_set = float("inf"), ""
    bounds = zip(conditions.subsets, conditions.offsets[:-1], conditions.offsets[1:], strict=True)
    for subset, lo, hi in bounds:
        joint = counts[lo:hi, lo:hi].reshape(-1, 9).astype(float)
        p_cell = joint.sum(axis=1) / joint.sum()
        cm = joint.reshape(-1, 3, 3).sum(axis=2)
        cg = joint.reshape(-1, 3, 3).sum(axis=1)
        mi = _entropy_rows(cm) + _entropy_rows(cg) - _entropy_rows(joint)
        h = float((p_cell * _entropy_rows(cg)).sum())
        score = float((p_cell * mi).sum()) / h if h > 0 else float("nan")
        if np.isfinite(score) and score < best:
            best, best_set = score, "+".join(subset) or "∅"
    return (best if np.isfinite(best) else float("nan")), best_set


def conditional_mutual_information(
    df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str], max_condition: int = 1
) -> tuple[float, str]:
    """(min over S of I(V_μ; V_g | U_S)/H(V_g | U_S), the minimizing S written as 'a+b' or '∅')."""
    mu, g = df[measure].to_numpy(float), df[gap].to_numpy(float)
    rows = np.flatnonzero(~np.isnan(mu) & ~np.isnan(g))
    return _cmi(mu[rows], g[rows], _conditions(df, axes, max_condition), rows)


# ---------------------------------------------------------------- the table


def correlation_table(
    df: pd.DataFrame,
    measures: Sequence[str],
    gaps: Sequence[str],
    axes: Sequence[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    max_condition: int = 1,
) -> pd.DataFrame:
    """One row per (measure, gap): τ with its bootstrap interval, Ψ and each ψ_i (Jiang's τ_a: ``psi``,
    ``psi[axis]``; the reference code's τ_b: ``psi_tau_b``, ``psi_tau_b[axis]``), and the CMI score."""
    groupings, conditions = _groupings(df, axes), _conditions(df, axes, max_condition)
    rows = []
    for gap in gaps:
        for measure in measures:
            if measure not in df.columns or df[measure].notna().sum() < 3:
                continue
            mu, g = df[measure].to_numpy(float), df[gap].to_numpy(float)
            lo, hi = bootstrap_tau(mu, g, resamples=resamples, seed=seed)
            psi = _psi(mu, g, groupings)
            defined = np.flatnonzero(~np.isnan(mu) & ~np.isnan(g))
            cmi, cond = _cmi(mu[defined], g[defined], conditions, defined)
            rows.append(
                {
                    "measure": measure,
                    "gap": gap,
                    "n": len(defined),
                    "tau": kendall_tau(mu, g),
                    "tau_lo": lo,
                    "tau_hi": hi,
                    "psi": _mean_finite(psi["tau_a"]),
                    **{f"psi[{a}]": v for a, v in psi["tau_a"].items()},
                    "psi_tau_b": _mean_finite(psi["tau_b"]),
                    **{f"psi_tau_b[{a}]": v for a, v in psi["tau_b"].items()},
                    "cmi": cmi,
                    "cmi_condition": cond,
                }
            )
    return pd.DataFrame(rows)
