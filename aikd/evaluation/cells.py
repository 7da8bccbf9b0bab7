"""Per-cell pAUC maths: the rows of the results frame for one (benchmark, detector) cell.

The evaluate stage calls ``evaluate_cell`` once per quality method and ``context_rows``
once per cell, and concatenates the rows into the long results frame that
``aikd.evaluation.tables`` reads. A leaf like ``edc`` (numpy and pandas only), so that
training, tuning and the registry may use it without the report, tables, plots or MLflow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.columns import CONTEXT_VARIANT
from aikd.evaluation.edc import (
    UndefinedPAUCWarning,
    edc_curve,
    pauc,
    pauc_bootstrap,
    random_quality_pauc,
)

__all__ = [
    "context_rows",
    "evaluate_cell",
    "no_quality_curve",
    "paired_pauc_difference",
]


def _mated(pairs: pd.DataFrame, similarity: Any) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 1 or sim.shape[0] != len(pairs):
        raise ValueError(f"similarity has shape {sim.shape}, expected ({len(pairs)},)")
    return sim, pairs["mated"].to_numpy(dtype=bool)


def _fnmr0(sim: np.ndarray, mated: np.ndarray, fmr: float) -> float:
    """FNMR with nothing discarded; quality is irrelevant there, so a constant one is used."""
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
) -> list[dict[str, Any]]:
    """pAUC with a bootstrap interval for every FMR x threshold mode of one quality method.

    One row per mode: ``keys`` (e.g. fr_model, detector, benchmark, method, variant), fmr,
    threshold, pauc, pauc_low, pauc_high, pauc_std, fnmr0, n_pairs, n_mated, n_nonmated.
    The same ``seed`` for every method of a benchmark draws the same resamples for all of
    them, so their intervals reflect the same pair-sampling noise. ``n_boot=0`` skips the
    bootstrap (interval NaN) for quick looks.
    """
    sim, mated = _mated(pairs, similarity)
    rows = []
    for fmr in fmrs:
        fnmr0 = _fnmr0(sim, mated, fmr)
        for mode in thresholds:
            if n_boot > 0:
                boot = pauc_bootstrap(sim, mated, quality_a, quality_b, n_boot=n_boot, seed=seed,
                                      ci=ci, fmr=fmr, threshold=mode)
            else:
                point = pauc(sim, mated, quality_a, quality_b, fmr=fmr, threshold=mode)
                boot = {"pauc": point, "low": math.nan, "high": math.nan, "std": math.nan}
            rows.append(
                {
                    **_base_row(keys, sim, mated),
                    "fmr": float(fmr),
                    "threshold": mode,
                    "pauc": boot["pauc"],
                    "pauc_low": boot["low"],
                    "pauc_high": boot["high"],
                    "pauc_std": boot["std"],
                    "fnmr0": fnmr0,
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
    keys: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The two rows every table needs to be read: no quality and random quality.

    ``none``: discarding nothing useful keeps FNMR flat, so pAUC is 1 by definition (NaN if
    FNMR(0) = 0); its row still carries FNMR(0). ``random``: mean pAUC over ``n_seeds``
    random qualities, with pauc_low/high = mean -/+ SD, the spread a method gets by chance.
    Rows use variant ``-``; ``keys`` should not contain method or variant.
    """
    sim, mated = _mated(pairs, similarity)
    rows = []
    for fmr in fmrs:
        fnmr0 = _fnmr0(sim, mated, fmr)
        none_pauc = 1.0 if fnmr0 > 0 else math.nan
        for mode in thresholds:
            base = {**_base_row(keys, sim, mated), "variant": CONTEXT_VARIANT,
                    "fmr": float(fmr), "threshold": mode, "fnmr0": fnmr0}
            rows.append({**base, "method": "none", "pauc": none_pauc, "pauc_low": none_pauc,
                         "pauc_high": none_pauc, "pauc_std": 0.0})
            mean, sd = random_quality_pauc(sim, mated, n_seeds=n_seeds, seed=seed, fmr=fmr,
                                           threshold=mode)
            rows.append({**base, "method": "random", "pauc": mean, "pauc_low": mean - sd,
                         "pauc_high": mean + sd, "pauc_std": sd})
    return rows


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
) -> dict[str, float]:
    """pAUC(T) - pAUC(B) with a paired percentile bootstrap over pairs.

    B and T are scored on the same pairs, so most pair-sampling noise is shared; resampling
    the pairs once for both and bootstrapping the difference is much sharper than asking
    whether two separate intervals overlap. ``quality_b``/``quality_t`` are each
    (quality_a, quality_b) per pair. Returns delta, delta_low, delta_high, n_valid (resamples
    where both pAUCs were defined).
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    sim = np.asarray(similarity, dtype=np.float64)
    m = np.asarray(mated, dtype=bool)
    qb = [np.asarray(q, dtype=np.float64) for q in quality_b]
    qt = [np.asarray(q, dtype=np.float64) for q in quality_t]
    kw = {"fmr": fmr, "threshold": threshold}
    delta = pauc(sim, m, *qt, **kw) - pauc(sim, m, *qb, **kw)
    rng = np.random.default_rng(seed)
    n = sim.shape[0]
    values = np.full(int(n_boot), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedPAUCWarning)
        for b in range(int(n_boot)):
            idx = rng.integers(0, n, size=n)
            n_m = int(m[idx].sum())
            if n_m in (0, n):
                continue
            t = pauc(sim[idx], m[idx], qt[0][idx], qt[1][idx], **kw)
            values[b] = t - pauc(sim[idx], m[idx], qb[0][idx], qb[1][idx], **kw)
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return {"delta": delta, "delta_low": math.nan, "delta_high": math.nan, "n_valid": 0}
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    return {"delta": float(delta), "delta_low": float(low), "delta_high": float(high),
            "n_valid": int(valid.size)}
