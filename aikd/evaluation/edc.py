"""Error-versus-Discard Characteristic (EDC) curves and their normalised partial AUC.

A quality score is useful for face recognition if rejecting the lowest-quality comparisons
removes the recognition errors. The EDC measures exactly that: the false non-match rate
(FNMR) at a fixed false match rate (FMR) as a growing share of low-quality pairs is
discarded. Its partial area, normalised by the area a useless quality would give, is one
number per quality method (1.0 = no help, lower = better).

Conventions (other code relies on them, see ``edc_curve``):

* pair quality = min(quality_a, quality_b); pairs are ordered by it with a stable sort,
  so ties keep input order and results are reproducible;
* at discard rate r the first k = floor(r*N + 1e-9) pairs of that order are dropped;
  the epsilon absorbs binary rounding (0.29 * 100 = 28.999...);
* the threshold at FMR f over n non-mated similarities is S_desc[m], m = floor(f*n + 1e-9)
  (-inf if m >= n), and a comparison matches iff similarity > threshold, so FMR <= f.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_DISCARD_RATES",
    "UndefinedPAUCWarning",
    "edc_curve",
    "interval",
    "pauc",
    "pair_weights",
    "pauc_bootstrap",
    "pauc_points",
    "pauc_resamples",
    "random_quality_pauc",
    "random_quality_modes",
    "random_quality_paucs",
]

ThresholdMode = Literal["recomputed", "fixed"]
_MODES: tuple[str, ...] = ("recomputed", "fixed")
_EPS = 1e-9

#: Default EDC grid: 0, 0.01, ..., 0.30 (computed as i/100 so every point is the nearest float).
DEFAULT_DISCARD_RATES: np.ndarray = np.arange(31) / 100.0


class UndefinedPAUCWarning(UserWarning, RuntimeWarning):
    """pAUC could not be computed (FNMR(0) = 0 or no mated pair left); the value is NaN.

    Subclasses both UserWarning (what a bare ``warnings.warn`` emits) and RuntimeWarning,
    so callers filtering on either category see it.
    """


# --------------------------------------------------------------------------- validation


def _validate_pairs(
    similarity: Any, mated: Any, quality_a: Any, quality_b: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the four per-pair arrays and return (similarity, mated, pair quality).

    Every problem is a ValueError naming it, because silently broadcasting or propagating
    NaN through a sort would produce a plausible-looking but meaningless curve.
    """
    arrays = {
        "similarity": np.asarray(similarity),
        "mated": np.asarray(mated),
        "quality_a": np.asarray(quality_a),
        "quality_b": np.asarray(quality_b),
    }
    for name, arr in arrays.items():
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"length mismatch between inputs: {lengths}")
    if lengths["similarity"] == 0:
        raise ValueError("no pairs given (inputs are empty)")

    sim = _as_float(arrays["similarity"], "similarity")
    qa = _as_float(arrays["quality_a"], "quality_a")
    qb = _as_float(arrays["quality_b"], "quality_b")
    if np.isnan(sim).any():
        raise ValueError("similarity contains NaN")
    if np.isnan(qa).any() or np.isnan(qb).any():
        raise ValueError("quality contains NaN (quality_a or quality_b)")

    m = arrays["mated"]
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
            raise ValueError("mated must be boolean (or 0/1 values)")
        m = m.astype(bool)
    n_mated = int(np.count_nonzero(m))
    if n_mated == 0:
        raise ValueError("no mated pair in the input")
    if n_mated == m.shape[0]:
        raise ValueError("no non-mated pair in the input")
    return sim, m, np.minimum(qa, qb)


def _as_float(arr: np.ndarray, name: str) -> np.ndarray:
    """Cast to float64 so NaN checks and comparisons behave the same for every input dtype."""
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _validate_fmr(fmr: float) -> float:
    """FMR is a rate; outside [0, 1] the threshold rule has no meaning."""
    f = float(fmr)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"fmr must be in [0, 1], got {fmr}")
    return f


def _validate_mode(threshold: str) -> str:
    if threshold not in _MODES:
        raise ValueError(f"unknown threshold mode {threshold!r}; expected one of {_MODES}")
    return threshold


def _validate_rates(discard_rates: Any) -> np.ndarray:
    """Discard rates must lie in [0, 1): discarding everything leaves nothing to measure."""
    rates = np.asarray(DEFAULT_DISCARD_RATES if discard_rates is None else discard_rates)
    rates = np.atleast_1d(rates)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError("discard_rates must be a non-empty 1-D array")
    rates = _as_float(rates, "discard_rates")
    if np.isnan(rates).any() or (rates < 0.0).any() or (rates >= 1.0).any():
        raise ValueError(f"discard rate outside [0, 1): {rates[(rates < 0) | ~(rates < 1)]}")
    return rates


# --------------------------------------------------------------------------- core


def _threshold(nonmated_sorted_desc: np.ndarray, fmr: float) -> float:
    """Threshold at FMR ``fmr`` for non-mated similarities already sorted descending."""
    n = nonmated_sorted_desc.shape[0]
    m = math.floor(fmr * n + _EPS)
    return float(nonmated_sorted_desc[m]) if m < n else -math.inf


class _Sorted(NamedTuple):
    """The sorted arrays the EDC is computed from (see ``_edc_core``), pairs in quality order.

    A pair may stand for several identical copies (a bootstrap resample): ``cum_w`` is the
    number of copies up to and including each pair, ``cum_nm`` the non-mated ones among them.
    """

    cum_w: np.ndarray  # copies up to and including each pair, lowest quality first
    cum_nm: np.ndarray  # non-mated copies up to and including each pair
    is_nm_q: np.ndarray  # non-mated flag of each pair, lowest quality first
    mt_q: np.ndarray  # mated similarities (one per copy), lowest quality first
    desc_pos: np.ndarray  # quality positions among the non-mated copies, descending similarity
    desc_val: np.ndarray  # the non-mated similarities in that descending order
    mt_sorted: np.ndarray  # mated similarities ascending
    n_nm: int  # non-mated copies; desc_pos/desc_val may hold only the prefix the EDC reads


def _sorted_arrays(sim: np.ndarray, mated: np.ndarray, pair_quality: np.ndarray) -> _Sorted:
    """One stable sort by quality, one of the non-mated and one of the mated similarities."""
    order = np.argsort(pair_quality, kind="stable")
    mated_q = mated[order]
    sim_q = sim[order]
    nm_q = sim_q[~mated_q]
    mt_q = sim_q[mated_q]
    desc_pos = np.argsort(nm_q, kind="stable")[::-1]
    is_nm = ~mated_q
    return _Sorted(np.arange(1, order.shape[0] + 1), np.cumsum(is_nm, dtype=np.int64), is_nm,
                   mt_q, desc_pos, nm_q[desc_pos], np.sort(mt_q), int(nm_q.shape[0]))


def _edc_arrays(
    sim: np.ndarray,
    mated: np.ndarray,
    pair_quality: np.ndarray,
    rates: np.ndarray,
    fmr: float,
    mode: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised EDC on validated inputs: (fnmr, threshold, n_mated, n_nonmated) per rate."""
    return _edc_core(_sorted_arrays(sim, mated, pair_quality), rates, fmr, mode)


def _edc_core(
    s: _Sorted, rates: np.ndarray, fmr: float, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The EDC from the sorted arrays: (fnmr, threshold, n_mated, n_nonmated) per rate.

    After one stable sort by quality, the pairs left at rate r are a suffix of that order, so
    the remaining mated and non-mated similarities are suffixes of two fixed arrays. Only
    the recomputed threshold needs per-rate work: the (m+1)-th largest non-mated similarity
    among those with quality position >= j is found by walking the single descending sort
    of all non-mated similarities and skipping the (at most j) discarded ones. FNMR counts
    use one ascending sort of the mated similarities plus a count over the shorter side of
    the discard boundary. Nothing is re-sorted per rate. (Ties among equal non-mated
    similarities may be in any order in ``desc_pos``: only their value is used.)
    """
    cum_w, cum_nm, is_nm_q, mt_q, desc_pos, desc_val, mt_sorted, n_nm_total = s
    n_pairs = int(cum_w[-1])
    n_mt_total = mt_q.shape[0]

    ks = np.minimum(np.floor(rates * n_pairs + _EPS).astype(np.int64), n_pairs)
    # non-mated copies among the first k: whole pairs before the boundary, plus the part of
    # the pair (of identical copies) the boundary cuts through
    whole = np.searchsorted(cum_w, ks, side="right")
    prev_w = np.where(whole > 0, cum_w[np.maximum(whole - 1, 0)], 0)
    prev_nm = np.where(whole > 0, cum_nm[np.maximum(whole - 1, 0)], 0)
    cut = np.minimum(whole, cum_w.shape[0] - 1)
    j_nm = prev_nm + np.where(whole < cum_w.shape[0], (ks - prev_w) * is_nm_q[cut], 0)
    j_mt = ks - j_nm  # mated pairs discarded at each rate
    n_nm = n_nm_total - j_nm
    n_mt = n_mt_total - j_mt

    if mode == "fixed":
        m0 = math.floor(fmr * n_nm_total + _EPS)
        tau0 = float(desc_val[m0]) if m0 < n_nm_total else -math.inf
        taus = np.full(rates.shape[0], tau0)
        fail_before = np.concatenate(([0], np.cumsum(mt_q <= tau0, dtype=np.int64)))
        fails = fail_before[-1] - fail_before[j_mt]
    else:
        taus = np.empty(rates.shape[0])
        fails = np.empty(rates.shape[0], dtype=np.int64)
        ms = np.floor(fmr * n_nm + _EPS).astype(np.int64)
        for i, (j, m, jm) in enumerate(zip(j_nm, ms, j_mt, strict=True)):
            if m >= n_nm[i]:
                tau = -math.inf
            elif j == 0:
                tau = float(desc_val[m])
            else:
                # The answer lies among the first m+1+j of the full descending order,
                # because at most j of those can have been discarded.
                window = desc_pos[: m + 1 + j]
                kept = np.flatnonzero(window >= j)
                tau = float(desc_val[kept[m]])
            taus[i] = tau
            if jm <= n_mt[i]:
                total_le = int(np.searchsorted(mt_sorted, tau, side="right"))
                fails[i] = total_le - int(np.count_nonzero(mt_q[:jm] <= tau))
            else:
                fails[i] = int(np.count_nonzero(mt_q[jm:] <= tau))

    with np.errstate(invalid="ignore", divide="ignore"):
        fnmr = np.where(n_mt > 0, fails / np.maximum(n_mt, 1), np.nan)
    return fnmr, taus, n_mt, n_nm


class _Expander:
    """EDCs of resamples of one set of pairs without sorting again (the bootstrap fast path).

    A bootstrap resample is the original pairs, pair i taken ``w[i]`` times (``w`` integer).
    Sorting the expanded pairs stably by quality gives the original quality order with each
    pair's copies adjacent, so every sorted array of ``_Sorted`` is the original one with
    ``np.repeat`` by the weights; only the positions of the non-mated copies need arithmetic.
    ``edc(w)`` equals ``_edc_arrays`` on ``np.repeat(arange(n), w)`` exactly (tested).
    """

    def __init__(self, sim: np.ndarray, mated: np.ndarray, pair_quality: np.ndarray) -> None:
        order = np.argsort(pair_quality, kind="stable")
        self.order = order
        mated_q = mated[order]
        self.is_nm_q = ~mated_q
        sim_q = sim[order]
        self.nm_idx = order[~mated_q]  # original index of each non-mated, quality order
        self.mt_idx = order[mated_q]
        nm_q = sim_q[~mated_q]
        self.mt_q = sim_q[mated_q]
        self.desc0 = np.argsort(nm_q, kind="stable")[::-1]  # into nm_q
        self.desc_val0 = nm_q[self.desc0]
        self.desc_idx = self.nm_idx[self.desc0]  # original index, descending similarity
        self.mt_asc0 = np.argsort(self.mt_q, kind="stable")  # into mt_q
        self.mt_asc_val0 = self.mt_q[self.mt_asc0]

    def sorted_arrays(self, weights: np.ndarray, rates: np.ndarray | None = None,
                      fmr: float = 1.0, mode: str = "recomputed") -> _Sorted:
        """The sorted arrays of the resample; with ``rates``/``fmr``/``mode`` only the prefix
        of the descending non-mated order that the EDC reads is expanded: the (m+1)-th
        largest kept similarity lies among the first m+1+j (recomputed) or is the (m0+1)-th
        (fixed), so at most floor(fmr*n)+1+k_max entries are needed."""
        w = np.asarray(weights, dtype=np.int64)
        w_q = w[self.order]
        w_nm = w[self.nm_idx]
        w_mt = w[self.mt_idx]
        cum_w = np.cumsum(w_q)
        cum_nm = np.cumsum(np.where(self.is_nm_q, w_q, 0))
        n_nm = int(cum_nm[-1]) if cum_nm.size else 0
        mt_q = np.repeat(self.mt_q, w_mt)
        start = np.cumsum(w_nm) - w_nm  # first expanded position of each non-mated pair
        w_desc = w[self.desc_idx]
        desc0 = self.desc0
        desc_val0 = self.desc_val0
        cum_desc = np.cumsum(w_desc)
        if rates is not None:
            need = math.floor(fmr * n_nm + _EPS) + 1
            if mode != "fixed":
                n_pairs = int(cum_w[-1]) if cum_w.size else 0
                need += math.floor(float(np.max(rates)) * n_pairs + _EPS)
            cut = int(np.searchsorted(cum_desc, min(need, n_nm), side="left")) + 1
            desc0, desc_val0 = desc0[:cut], desc_val0[:cut]
            w_desc, cum_desc = w_desc[:cut], cum_desc[:cut]
        # copy c of a pair has position start + c; arange(total) - (copies before the pair
        # in descending order) is c
        shift = start[desc0] - (cum_desc - w_desc)
        total = int(cum_desc[-1]) if cum_desc.size else 0
        desc_pos = np.repeat(shift, w_desc) + np.arange(total)
        desc_val = np.repeat(desc_val0, w_desc)
        mt_sorted = np.repeat(self.mt_asc_val0, w_mt[self.mt_asc0])
        return _Sorted(cum_w, cum_nm, self.is_nm_q, mt_q, desc_pos, desc_val, mt_sorted, n_nm)

    def edc(self, weights: np.ndarray, rates: np.ndarray, fmr: float, mode: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return _edc_core(self.sorted_arrays(weights, rates, fmr, mode), rates, fmr, mode)


# --------------------------------------------------------------------------- public API


def edc_curve(
    similarity: Any,
    mated: Any,
    quality_a: Any,
    quality_b: Any,
    *,
    fmr: float = 1e-3,
    discard_rates: Any = None,
    threshold: ThresholdMode = "recomputed",
) -> pd.DataFrame:
    """FNMR at FMR ``fmr`` after discarding the lowest-quality pairs, one row per rate.

    ``threshold="recomputed"`` re-derives the threshold from the non-mated pairs left at
    each rate (the operating point a deployed system would recalibrate to);
    ``"fixed"`` keeps the threshold computed on all pairs (r = 0). Rates may be any values
    in [0, 1) (default 0, 0.01, ..., 0.30). ``fnmr`` is NaN where no mated pair remains.

    Returns a DataFrame with columns discard_rate, fnmr, threshold, n_mated, n_nonmated.
    """
    _validate_mode(threshold)
    f = _validate_fmr(fmr)
    rates = _validate_rates(discard_rates)
    sim, m, q = _validate_pairs(similarity, mated, quality_a, quality_b)
    fnmr, taus, n_mt, n_nm = _edc_arrays(sim, m, q, rates, f, threshold)
    return pd.DataFrame(
        {
            "discard_rate": rates,
            "fnmr": fnmr,
            "threshold": taus,
            "n_mated": n_mt,
            "n_nonmated": n_nm,
        }
    )


def _pauc_grid(max_discard: float, step: float) -> np.ndarray:
    """The grid i*step, i = 0..round(max_discard/step), checked to stay inside [0, 1)."""
    if not 0.0 < max_discard < 1.0:
        raise ValueError(f"max_discard must be in (0, 1), got {max_discard}")
    if not step > 0.0:
        raise ValueError(f"step must be > 0, got {step}")
    n_steps = round(max_discard / step)
    if n_steps < 1:
        raise ValueError(f"step {step} is larger than max_discard {max_discard}")
    grid = np.arange(n_steps + 1) * float(step)
    if grid[-1] >= 1.0:
        raise ValueError(f"discard rate outside [0, 1): grid reaches {grid[-1]}")
    return grid


def _pauc_settings(kwargs: dict[str, Any]) -> tuple[float, float, float, str, np.ndarray]:
    """Validate the keyword arguments shared with ``pauc``: (fmr, max_discard, step, mode, grid).

    Unknown keys are an error so a typo (``max_discrad``) cannot silently use the default.
    """
    unknown = set(kwargs) - {"fmr", "max_discard", "step", "threshold"}
    if unknown:
        raise ValueError(f"unknown pauc arguments: {sorted(unknown)}")
    fmr = _validate_fmr(kwargs.get("fmr", 1e-3))
    max_discard = float(kwargs.get("max_discard", 0.3))
    step = float(kwargs.get("step", 0.01))
    mode = _validate_mode(kwargs.get("threshold", "recomputed"))
    return fmr, max_discard, step, mode, _pauc_grid(max_discard, step)


def _pauc_from_fnmr(fnmr: np.ndarray, step: float, max_discard: float) -> tuple[float, str]:
    """Normalised trapezoidal area; NaN plus the reason when it is undefined."""
    if np.isnan(fnmr).any():
        return math.nan, "no mated pair remains at some discard rate"
    if fnmr[0] == 0.0:
        return math.nan, "FNMR at zero discard is 0, so the normalised pAUC is undefined"
    area = float(np.trapezoid(fnmr, dx=step))
    return area / (max_discard * float(fnmr[0])), ""


def pauc(
    similarity: Any,
    mated: Any,
    quality_a: Any,
    quality_b: Any,
    *,
    fmr: float = 1e-3,
    max_discard: float = 0.3,
    step: float = 0.01,
    threshold: ThresholdMode = "recomputed",
) -> float:
    """Normalised partial area under the EDC up to ``max_discard``.

    Area of FNMR over the grid i*step (trapezoidal) divided by max_discard * FNMR(0), i.e.
    by the area of a flat curve, so 1.0 means quality did not help and lower is better.
    Returns NaN with a warning if FNMR(0) = 0 or no mated pair remains on the grid.
    """
    grid = _pauc_grid(max_discard, step)
    curve = edc_curve(
        similarity, mated, quality_a, quality_b, fmr=fmr, discard_rates=grid, threshold=threshold
    )
    value, reason = _pauc_from_fnmr(curve["fnmr"].to_numpy(), step, max_discard)
    if reason:
        warnings.warn(f"pAUC is NaN: {reason}", UndefinedPAUCWarning, stacklevel=2)
    return value


def pair_weights(n_pairs: int, *, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Per-pair multiplicities of ``n_boot`` pair-bootstrap resamples (n pairs drawn with
    replacement). The person-level bootstrap is ``aikd.evaluation.stats.resample_weights``."""
    rng = np.random.default_rng(seed)
    for _ in range(int(n_boot)):
        yield np.bincount(rng.integers(0, n_pairs, size=n_pairs), minlength=n_pairs)


def pauc_points(
    similarity: Any,
    mated: Any,
    quality_a: Any,
    quality_b: Any,
    modes: Iterable[tuple[float, str]],
    *,
    max_discard: float = 0.3,
    step: float = 0.01,
) -> dict[tuple[float, str], float]:
    """pAUC in every (fmr, threshold) mode from one set of sorts; equal to ``pauc`` per mode
    (NaN, without a warning, where undefined)."""
    grid = _pauc_grid(max_discard, step)
    sim, m, q = _validate_pairs(similarity, mated, quality_a, quality_b)
    s = _sorted_arrays(sim, m, q)
    out = {}
    for fmr, mode in modes:
        fnmr = _edc_core(s, grid, _validate_fmr(fmr), _validate_mode(mode))[0]
        out[(float(fmr), mode)] = _pauc_from_fnmr(fnmr, step, max_discard)[0]
    return out


def pauc_resamples(
    similarity: Any,
    mated: Any,
    quality_a: Any,
    quality_b: Any,
    weights: Iterable[np.ndarray],
    **pauc_kwargs: Any,
) -> np.ndarray:
    """pAUC of each resample given by its per-pair multiplicities (NaN where undefined).

    A resample with multiplicities ``w`` is the pairs ``np.repeat(arange(n), w)``; its EDC
    is computed from the original sorts (``_Expander``) instead of sorting again, which is
    what makes a 1,000-resample interval on 100k pairs affordable. Feeding the same
    ``weights`` to two quality methods gives paired resamples (differences of the arrays).
    """
    fmr, max_discard, step, mode, grid = _pauc_settings(pauc_kwargs)
    sim, m, q = _validate_pairs(similarity, mated, quality_a, quality_b)
    exp = _Expander(sim, m, q)
    values = []
    for w in weights:
        w = np.asarray(w)
        if w.shape != sim.shape:
            raise ValueError(f"weights have shape {w.shape}, expected {sim.shape}")
        n_mated = int(w[m].sum())
        if n_mated == 0 or n_mated == int(w.sum()):
            values.append(math.nan)
            continue
        fnmr = exp.edc(w, grid, fmr, mode)[0]
        values.append(_pauc_from_fnmr(fnmr, step, max_discard)[0])
    return np.asarray(values, dtype=np.float64)


def interval(values: np.ndarray, ci: float = 0.95) -> dict[str, float]:
    """Percentile interval and SD of the defined (non-NaN) resampled values."""
    valid = np.asarray(values, dtype=np.float64)
    valid = valid[~np.isnan(valid)]
    if valid.size == 0:
        return {"low": math.nan, "high": math.nan, "std": math.nan}
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    std = float(np.std(valid, ddof=1)) if valid.size > 1 else 0.0
    return {"low": float(low), "high": float(high), "std": std}


def pauc_bootstrap(
    similarity: Any,
    mated: Any,
    quality_a: Any,
    quality_b: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    weights: Iterable[np.ndarray] | None = None,
    **pauc_kwargs: Any,
) -> dict[str, float]:
    """pAUC with a percentile bootstrap interval.

    By default the pairs are resampled with replacement. ``weights`` replaces that by
    any resampling given as per-pair multiplicities, e.g. the person-level bootstrap of
    ``aikd.evaluation.stats.resample_weights`` (people drawn with replacement; a mated pair
    counts draws[p] times, a non-mated pair draws[p] * draws[q] times), which the evaluate
    stage uses: pairs of one person share images and are not independent. ``pauc`` is the
    estimate on the original pairs; ``low``/``high``/``std`` come from the resamples
    (``n_boot`` is ignored when ``weights`` is given). Resamples where pAUC is undefined
    (no mated or non-mated pair drawn, FNMR(0) = 0) are dropped with one warning.
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    fmr, max_discard, step, mode, grid = _pauc_settings(pauc_kwargs)
    sim, m, q = _validate_pairs(similarity, mated, quality_a, quality_b)

    point, reason = _pauc_from_fnmr(_edc_arrays(sim, m, q, grid, fmr, mode)[0], step, max_discard)
    if reason:
        warnings.warn(f"pAUC is NaN: {reason}", UndefinedPAUCWarning, stacklevel=2)

    if weights is None:
        weights = pair_weights(sim.shape[0], n_boot=n_boot, seed=seed)
    values = pauc_resamples(sim, m, q, q, weights, **pauc_kwargs)
    n_undefined = int(np.isnan(values).sum())
    if n_undefined:
        warnings.warn(
            f"{n_undefined} of {values.size} bootstrap resamples had an undefined "
            "pAUC and were dropped",
            UndefinedPAUCWarning,
            stacklevel=2,
        )
    return {"pauc": point, **interval(values, ci)}


def random_quality_paucs(
    similarity: Any,
    mated: Any,
    *,
    n_seeds: int = 20,
    seed: int = 0,
    image_a: Any = None,
    image_b: Any = None,
    **kw: Any,
) -> np.ndarray:
    """pAUC for ``n_seeds`` random qualities, one value per seed (NaN where undefined).

    Each *image* gets one uniform random quality per seed: with ``image_a``/``image_b``
    (a key of each pair's two images, e.g. their paths) an image in several pairs keeps
    its draw in all of them, as a real quality would; without them every pair's two
    images are taken as distinct. The pair's quality is the worse (min) of its two images.
    ``kw`` goes to ``pauc`` (fmr, max_discard, step, threshold).
    """
    fmr, max_discard, step, mode, _ = _pauc_settings(kw)
    return random_quality_modes(similarity, mated, [(fmr, mode)], n_seeds=n_seeds, seed=seed,
                                image_a=image_a, image_b=image_b, max_discard=max_discard,
                                step=step)[(fmr, mode)]


def random_quality_modes(
    similarity: Any,
    mated: Any,
    modes: Sequence[tuple[float, str]],
    *,
    n_seeds: int = 20,
    seed: int = 0,
    image_a: Any = None,
    image_b: Any = None,
    max_discard: float = 0.3,
    step: float = 0.01,
) -> dict[tuple[float, str], np.ndarray]:
    """``random_quality_paucs`` for several (fmr, threshold) modes, one sort per seed; the
    same ``seed`` draws the same qualities for every mode."""
    if int(n_seeds) < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    grid = _pauc_grid(max_discard, step)
    modes = [(_validate_fmr(f), _validate_mode(t)) for f, t in modes]
    sim_arr = np.asarray(similarity)
    n = sim_arr.shape[0] if sim_arr.ndim == 1 else 0
    placeholder = np.zeros(n)
    sim, m, _ = _validate_pairs(sim_arr, mated, placeholder, placeholder)
    if image_a is None and image_b is None:
        code_a, code_b, n_images = np.arange(n), np.arange(n, 2 * n), 2 * n
    elif image_a is None or image_b is None:
        raise ValueError("give both image_a and image_b, or neither")
    else:
        keys = np.concatenate([np.asarray(image_a), np.asarray(image_b)]).astype(str)
        if keys.shape[0] != 2 * n:
            raise ValueError(f"image_a/image_b have {keys.shape[0] // 2} entries for {n} pairs")
        _, codes = np.unique(keys, return_inverse=True)
        code_a, code_b, n_images = codes[:n], codes[n:], int(codes.max()) + 1

    rng = np.random.default_rng(seed)
    values = {mode: np.empty(int(n_seeds)) for mode in modes}
    reasons: set[str] = set()
    for i in range(int(n_seeds)):
        u = rng.random(n_images)  # one draw per image
        s = _sorted_arrays(sim, m, np.minimum(u[code_a], u[code_b]))
        for fmr, mode in modes:
            fnmr = _edc_core(s, grid, fmr, mode)[0]
            values[(fmr, mode)][i], reason = _pauc_from_fnmr(fnmr, step, max_discard)
            if reason:
                reasons.add(reason)
    for reason in sorted(reasons):  # once per reason, not once per seed
        warnings.warn(f"pAUC is NaN for some seeds: {reason}", UndefinedPAUCWarning, stacklevel=2)
    return values


def random_quality_pauc(
    similarity: Any,
    mated: Any,
    *,
    n_seeds: int = 20,
    seed: int = 0,
    **kw: Any,
) -> tuple[float, float]:
    """Mean and sample SD of pAUC when each image gets a uniformly random quality.

    A random quality keeps the FNMR flat only in expectation; finite samples wander, so the
    honest baseline for a method is this distribution, not the ideal 1.0. ``kw`` goes to
    ``random_quality_paucs`` (image_a, image_b, fmr, max_discard, step, threshold). The SD
    is 0.0 for a single seed.
    """
    values = random_quality_paucs(similarity, mated, n_seeds=n_seeds, seed=seed, **kw)
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return math.nan, math.nan
    sd = float(np.std(valid, ddof=1)) if valid.size > 1 else 0.0
    return float(valid.mean()), sd
