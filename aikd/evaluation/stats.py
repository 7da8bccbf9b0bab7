"""Statistics that separate a gain from noise: person-level resampling, Holm, sign test.

Verification pairs are not independent: every pair of one person shares that person's
images, so a bootstrap over pairs understates the spread when a benchmark has many pairs
from few people (YTF: 3,633 mated pairs of 104 people). Resampling *people* keeps each
person's pairs together. A pair of two people (non-mated) is kept as many times as the
product of its two people's draws, the usual two-sample extension for U-statistic-like
pair sets; a mated pair as many times as its person was drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def person_codes(person_a: Sequence[Any],
                 person_b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of the two people of each pair over one shared vocabulary."""
    a = np.asarray(person_a, dtype=object)
    b = np.asarray(person_b, dtype=object)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"person_a and person_b must be 1-D of one length, got {a.shape}, "
                         f"{b.shape}")
    vocab, codes = np.unique(np.concatenate([a, b]).astype(str), return_inverse=True)
    return codes[: a.size], codes[a.size:], int(vocab.size)


def pair_multiplicity(code_a: np.ndarray, code_b: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """How often each pair enters a resample in which person k was drawn ``draws[k]`` times:
    ``draws[a]`` for a pair of one person, ``draws[a] * draws[b]`` for two people."""
    same = code_a == code_b
    return np.where(same, draws[code_a], draws[code_a] * draws[code_b])


def person_resample(code_a: np.ndarray, code_b: np.ndarray, n_people: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Pair indices of one person-level bootstrap resample (people drawn with replacement)."""
    draws = np.bincount(rng.integers(0, n_people, size=n_people), minlength=n_people)
    return np.repeat(np.arange(code_a.size), pair_multiplicity(code_a, code_b, draws))


def resample_weights(n_pairs: int, code_a: np.ndarray | None, code_b: np.ndarray | None,
                     n_people: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """``n_boot`` vectors of per-pair multiplicities, one per bootstrap resample.

    With person codes: people drawn with replacement (``pair_multiplicity``). Without
    (``code_a is None``): the pair bootstrap, each pair's count among n draws of pairs.
    The same ``seed`` gives the same resamples, so methods scored with it are paired.
    """
    rng = np.random.default_rng(seed)
    for _ in range(int(n_boot)):
        if code_a is None or code_b is None:
            yield np.bincount(rng.integers(0, n_pairs, size=n_pairs), minlength=n_pairs)
        else:
            draws = np.bincount(rng.integers(0, n_people, size=n_people), minlength=n_people)
            yield pair_multiplicity(code_a, code_b, draws)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def sign_test(wins: int, n: int) -> float:
    """One-sided sign test: P(at least ``wins`` successes of ``n`` | p = 1/2)."""
    if not 0 <= wins <= n:
        raise ValueError(f"wins must be in [0, n], got {wins} of {n}")
    if n == 0:
        return float("nan")
    from scipy import stats  # imported here so the per-cell maths can use this module

    return float(stats.binom.sf(wins - 1, n, 0.5))


def bootstrap_z_p_value(delta: float, deltas: np.ndarray) -> float:
    """Two-sided p-value of ``delta == 0`` from the bootstrap standard error (Wald test):
    ``2 * Phi(-|delta| / sd(deltas))``.

    Why not the percentile p-value: with n resamples it cannot go below ~2 / n, so with
    200 resamples no cell can survive Holm over 27 cells (needs p < 0.05 / 27). The
    bootstrap SE is well estimated from a few hundred resamples and the z-test has no
    such floor; the percentile interval is still what the tables show.
    """
    d = np.asarray(deltas, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size < 2 or not np.isfinite(delta):
        return float("nan")
    se = float(np.std(d, ddof=1))
    if se == 0.0:
        return 1.0 if delta == 0.0 else 0.0
    from scipy import stats

    return float(2.0 * stats.norm.sf(abs(float(delta)) / se))


def bootstrap_p_value(deltas: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of ``delta == 0``: twice the smaller share of
    resampled differences on either side of zero (at least 1 / (n + 1))."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    below = (np.count_nonzero(d <= 0) + 1) / (d.size + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))
