"""Per-cell pAUC maths: the rows of the results frame for one (benchmark, detector) cell.

The evaluate stage calls ``evaluate_cell`` once per quality method and ``context_rows``
once per cell, and concatenates the rows into the long results frame that
``aikd.evaluation.tables`` reads. A leaf like ``edc`` (numpy and pandas only), so that
training, tuning and the registry may use it without the report, tables, plots or MLflow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.columns import CONTEXT_VARIANT
from aikd.evaluation.edc import (
    UndefinedPAUCWarning,
    edc_curve,
    interval,
    pair_weights,
    pauc,
    pauc_points,
    pauc_resamples,
    random_quality_modes,
)
from aikd.evaluation.stats import (
    bootstrap_p_value,
    bootstrap_z_p_value,
    person_codes,
    resample_weights,
)

__all__ = [
    "PERSON_COLUMNS",
    "bootstrap_weights",
    "context_rows",
    "difference_from_resamples",
    "evaluate_cell",
    "no_quality_curve",
    "paired_pauc_difference",
    "persons_of",
]

#: The pairs' columns naming the person of each image; they switch on the person bootstrap.
PERSON_COLUMNS = ("person_a", "person_b")
Mode = tuple[float, str]


def persons_of(pairs: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(person_a, person_b) of the pairs, or (None, None): then the bootstrap is over pairs."""
    if all(c in pairs.columns for c in PERSON_COLUMNS):
        return pairs["person_a"].to_numpy(), pairs["person_b"].to_numpy()
    return None, None


def bootstrap_weights(n_pairs: int, *, n_boot: int, seed: int, person_a: Any = None,
                      person_b: Any = None) -> Iterator[np.ndarray]:
    """Per-pair multiplicities of ``n_boot`` resamples: of people when ``person_a`` and
    ``person_b`` are given (``stats.resample_weights``: a mated pair of person p counts
    draws[p] times, a non-mated pair of p and q draws[p] * draws[q] times, so it is kept
    only when both its people are drawn), else of pairs. One ``seed`` = one set of
    resamples, shared by every method scored with it."""
    if person_a is None or person_b is None:
        return pair_weights(int(n_pairs), n_boot=n_boot, seed=seed)
    ca, cb, n_people = person_codes(person_a, person_b)
    if ca.shape[0] != n_pairs:
        raise ValueError(f"person_a/person_b have {ca.shape[0]} entries for {n_pairs} pairs")
    return resample_weights(int(n_pairs), ca, cb, n_people, int(n_boot), int(seed))


def bootstrap_kind(pairs: pd.DataFrame) -> str:
    """``person`` when the pairs name their people, else ``pair``."""
    return "pair" if persons_of(pairs)[0] is None else "person"


def _mated(pairs: pd.DataFrame, similarity: Any) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 1 or sim.shape[0] != len(pairs):
        raise ValueError(f"similarity has shape {sim.shape}, expected ({len(pairs)},)")
    return sim, pairs["mated"].to_numpy(dtype=bool)


def _fnmr0(sim: np.ndarray, mated: np.ndarray, fmr: float) -> float:
    """FNMR with nothing discarded, by ``edc``'s threshold rule (the (m+1)-th largest
    non-mated similarity, m = floor(fmr * n + 1e-9); a match is similarity > threshold),
    found by a partial sort: quality plays no part at zero discard."""
    nm = sim[~mated]
    mt = sim[mated]
    if nm.size == 0 or mt.size == 0:  # edc_curve raises the same error
        return _fnmr0_sorted(sim, mated, fmr)
    m = math.floor(fmr * nm.size + 1e-9)
    tau = -math.inf if m >= nm.size else float(-np.partition(-nm, m)[m])
    return float(np.count_nonzero(mt <= tau) / mt.size)


def _fnmr0_sorted(sim: np.ndarray, mated: np.ndarray, fmr: float) -> float:
    """``_fnmr0`` the straightforward way, through ``edc_curve`` (the reference in tests)."""
    flat = np.zeros(sim.shape[0])
    return float(edc_curve(sim, mated, flat, flat, fmr=fmr, discard_rates=[0.0])["fnmr"].iloc[0])


def _base_row(keys: Mapping[str, Any] | None, sim: np.ndarray, mated: np.ndarray) -> dict:
    n_mated = int(mated.sum())
    return {
        **(keys or {}),
        "n_pairs": int(sim.shape[0]),
        "n_mated": n_mated,
        "n_nonmated": int(sim.shape[0] - n_mated),
    }


def _fail_row(fnmr0: float, n_mated: int) -> dict[str, Any]:
    """FNMR(0) and the number of failing mated pairs it rests on (pAUC is normalised by it)."""
    return {"fnmr0": fnmr0, "n_fail0": int(round(fnmr0 * n_mated)) if math.isfinite(fnmr0)
            else -1}


def _is_interval_mode(mode: Mode, interval_modes: Sequence[Mode] | None) -> bool:
    if interval_modes is None:
        return True
    return any(math.isclose(mode[0], f, rel_tol=1e-6) and mode[1] == t
               for f, t in interval_modes)


def evaluate_cell(
    pairs: pd.DataFrame,
    similarity: Any,
    quality_a: Any,
    quality_b: Any,
    *,
    fmrs: Sequence[float] = (1e-3, 1e-2),
    thresholds: Sequence[str] = ("recomputed", "fixed"),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    keys: Mapping[str, Any] | None = None,
    interval_modes: Sequence[Mode] | None = None,
    resamples: dict[Mode, np.ndarray] | None = None,
    weights: Sequence[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """pAUC with a bootstrap interval for every FMR x threshold mode of one quality method.

    One row per mode: ``keys`` (e.g. fr_model, detector, benchmark, method, variant), fmr,
    threshold, pauc, pauc_low, pauc_high, pauc_std, fnmr0, n_fail0, n_pairs, n_mated,
    n_nonmated, bootstrap (``person``, ``pair`` or ``none``). The bootstrap resamples people
    when ``pairs`` has person_a/person_b (see ``edc.pauc_bootstrap`` for the non-mated
    pairs), else pairs. The same ``seed`` for every method of a cell draws the same
    resamples for all of them, so their intervals (and differences) are paired.
    ``interval_modes`` limits the intervals to those (fmr, threshold) modes (None: all);
    the others get the point estimate only. ``resamples``, if given, receives the pAUC of
    every resample per interval mode (for paired differences). ``weights`` (the per-pair
    multiplicities of the resamples, ``bootstrap_weights`` made once per cell) saves drawing
    them again for every method; it replaces ``n_boot``/``seed``. ``n_boot=0`` skips the
    bootstrap everywhere.
    """
    sim, mated = _mated(pairs, similarity)
    person_a, person_b = persons_of(pairs)
    kind = bootstrap_kind(pairs)
    qa = np.asarray(quality_a, dtype=np.float64)
    qb = np.asarray(quality_b, dtype=np.float64)
    points = pauc_points(sim, mated, qa, qb, [(f, t) for f in fmrs for t in thresholds])
    rows = []
    for fmr in fmrs:
        fnmr0 = _fnmr0(sim, mated, fmr)
        for mode in thresholds:
            point = points[(float(fmr), mode)]
            if math.isnan(point):
                warnings.warn(f"pAUC is NaN at FMR {fmr:g}, {mode} threshold (FNMR(0) = 0 or "
                              "no mated pair left)", UndefinedPAUCWarning, stacklevel=2)
            spread = {"low": math.nan, "high": math.nan, "std": math.nan}
            boot = "none"
            if n_boot > 0 and _is_interval_mode((float(fmr), mode), interval_modes):
                draws = weights if weights is not None else bootstrap_weights(
                    sim.shape[0], n_boot=n_boot, seed=seed, person_a=person_a,
                    person_b=person_b)
                values = pauc_resamples(sim, mated, qa, qb, draws, fmr=fmr, threshold=mode)
                n_undefined = int(np.isnan(values).sum())
                if n_undefined:
                    warnings.warn(f"{n_undefined} of {values.size} bootstrap resamples had an "
                                  "undefined pAUC and were dropped", UndefinedPAUCWarning,
                                  stacklevel=2)
                spread = interval(values, ci)
                boot = kind
                if resamples is not None:
                    resamples[(float(fmr), mode)] = values
            rows.append(
                {
                    **_base_row(keys, sim, mated),
                    "fmr": float(fmr),
                    "threshold": mode,
                    "pauc": point,
                    "pauc_low": spread["low"],
                    "pauc_high": spread["high"],
                    "pauc_std": spread["std"],
                    **_fail_row(fnmr0, int(mated.sum())),
                    "bootstrap": boot,
                }
            )
    return rows


def no_quality_curve(
    similarity: Any,
    mated: Any,
    *,
    fmr: float = 1e-3,
    discard_rates: Any = None,
) -> pd.DataFrame:
    """The EDC of "no quality" for the figures: FNMR flat at FNMR(0), like the pAUC of 1.

    Feeding a constant quality to ``edc_curve`` would not give this: its stable sort then
    discards pairs in input order (e.g. all mated pairs first), which is not "no quality".
    Pair counts are the expected ones after discarding a share r at random.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    m = np.asarray(mated, dtype=bool)
    flat = np.zeros(sim.shape[0])
    start = edc_curve(sim, m, flat, flat, fmr=fmr, discard_rates=[0.0])
    rates = edc_curve(sim, m, flat, flat, fmr=fmr, discard_rates=discard_rates)["discard_rate"]
    keep = 1.0 - rates.to_numpy()
    return pd.DataFrame(
        {
            "discard_rate": rates.to_numpy(),
            "fnmr": float(start["fnmr"].iloc[0]),
            "threshold": float(start["threshold"].iloc[0]),
            "n_mated": np.rint(keep * int(start["n_mated"].iloc[0])).astype(np.int64),
            "n_nonmated": np.rint(keep * int(start["n_nonmated"].iloc[0])).astype(np.int64),
        }
    )


def context_rows(
    pairs: pd.DataFrame,
    similarity: Any,
    *,
    fmrs: Sequence[float] = (1e-3, 1e-2),
    thresholds: Sequence[str] = ("recomputed", "fixed"),
    n_seeds: int = 20,
    seed: int = 0,
    ci: float = 0.95,
    keys: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The two rows every table needs to be read: no quality and random quality.

    ``none``: discarding nothing useful keeps FNMR flat, so pAUC is 1 by definition (NaN if
    FNMR(0) = 0); its row still carries FNMR(0) and n_fail0. ``random``: mean pAUC over
    ``n_seeds`` random qualities, one uniform draw per *image* (pairs' path_a/path_b, when
    present, so an image in several pairs keeps its quality), with pauc_low/high the
    ``ci`` quantiles over the seeds and pauc_std their SD: the spread a method gets by
    chance. Rows use variant ``-``; ``keys`` should not contain method or variant.
    """
    sim, mated = _mated(pairs, similarity)
    images = ({"image_a": pairs["path_a"].to_numpy(), "image_b": pairs["path_b"].to_numpy()}
              if {"path_a", "path_b"} <= set(pairs.columns) else {})
    alpha = (1.0 - ci) / 2.0
    randoms = random_quality_modes(sim, mated, [(float(f), t) for f in fmrs for t in thresholds],
                                   n_seeds=n_seeds, seed=seed, **images)
    rows = []
    for fmr in fmrs:
        fnmr0 = _fnmr0(sim, mated, fmr)
        none_pauc = 1.0 if fnmr0 > 0 else math.nan
        for mode in thresholds:
            base = {**_base_row(keys, sim, mated), "variant": CONTEXT_VARIANT,
                    "fmr": float(fmr), "threshold": mode, **_fail_row(fnmr0, int(mated.sum()))}
            rows.append({**base, "method": "none", "pauc": none_pauc, "pauc_low": none_pauc,
                         "pauc_high": none_pauc, "pauc_std": 0.0, "bootstrap": "none"})
            values = randoms[(float(fmr), mode)]
            valid = values[~np.isnan(values)]
            if valid.size:
                mean = float(valid.mean())
                low, high = (float(v) for v in np.quantile(valid, [alpha, 1.0 - alpha]))
                sd = float(np.std(valid, ddof=1)) if valid.size > 1 else 0.0
            else:
                mean = low = high = sd = math.nan
            rows.append({**base, "method": "random", "pauc": mean, "pauc_low": low,
                         "pauc_high": high, "pauc_std": sd, "bootstrap": "seeds"})
    return rows


def difference_from_resamples(point_t: float, point_base: float, values_t: np.ndarray,
                              values_base: np.ndarray, ci: float = 0.95) -> dict[str, float]:
    """pAUC(T) - pAUC(base) from the two methods' pAUCs on the *same* resamples.

    Returns delta, delta_low, delta_high (percentile interval), p_value (two-sided z-test
    of delta = 0 with the bootstrap standard error, ``stats.bootstrap_z_p_value``; what
    Holm adjusts), p_percentile (the percentile-bootstrap p-value, floored at ~2 / n) and
    n_valid (resamples where both pAUCs were defined).
    """
    d = np.asarray(values_t, dtype=np.float64) - np.asarray(values_base, dtype=np.float64)
    valid = d[~np.isnan(d)]
    delta = float(point_t - point_base)
    if valid.size == 0:
        return {"delta": delta, "delta_low": math.nan, "delta_high": math.nan,
                "p_value": math.nan, "p_percentile": math.nan, "n_valid": 0}
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    return {"delta": delta, "delta_low": float(low), "delta_high": float(high),
            "p_value": bootstrap_z_p_value(delta, valid),
            "p_percentile": bootstrap_p_value(valid), "n_valid": int(valid.size)}


def paired_pauc_difference(
    similarity: Any,
    mated: Any,
    quality_b: tuple[Any, Any],
    quality_t: tuple[Any, Any],
    *,
    fmr: float = 1e-3,
    threshold: str = "recomputed",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    person_a: Any = None,
    person_b: Any = None,
) -> dict[str, float]:
    """pAUC(T) - pAUC(B) with a paired percentile bootstrap (of people, given person_a/b).

    B and T are scored on the same pairs, so most sampling noise is shared; resampling
    once for both and bootstrapping the difference is much sharper than asking whether two
    separate intervals overlap. ``quality_b``/``quality_t`` are each (quality_a, quality_b)
    per pair. Returns delta, delta_low, delta_high, p_value, n_valid (resamples where both
    pAUCs were defined); see ``difference_from_resamples``.
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    sim = np.asarray(similarity, dtype=np.float64)
    m = np.asarray(mated, dtype=bool)
    qb = [np.asarray(q, dtype=np.float64) for q in quality_b]
    qt = [np.asarray(q, dtype=np.float64) for q in quality_t]
    kw = {"fmr": fmr, "threshold": threshold}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedPAUCWarning)
        point_t, point_b = pauc(sim, m, *qt, **kw), pauc(sim, m, *qb, **kw)

        def values(q: list[np.ndarray]) -> np.ndarray:
            w = bootstrap_weights(sim.shape[0], n_boot=n_boot, seed=seed, person_a=person_a,
                                  person_b=person_b)
            return pauc_resamples(sim, m, q[0], q[1], w, **kw)

        return difference_from_resamples(point_t, point_b, values(qt), values(qb), ci)
