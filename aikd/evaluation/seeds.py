"""Mean over training seeds: the numbers the tables report for a trained variant.

Every run is trained with several seeds (params ``train_seeds``); one seed's model is a
noisy draw of what the recipe gives, so a table row of a trained variant is the mean over
its seeds, with the seed spread (SD, min, max) beside it. Its interval comes from the
same resamples of people for every seed (a cell draws them once for all methods): the
mean over seeds is taken per resample, so the interval is that of the seed-averaged
model's pAUC under people-sampling noise. T-B and T-C are paired by seed (T and B of the
same seed, the same resamples) and averaged over seeds the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.cells import difference_from_resamples
from aikd.evaluation.edc import interval

__all__ = ["SEED_STATS", "seed_mean_curve", "seed_mean_difference", "seed_mean_row",
           "seed_spread"]

#: Columns of a seed-mean row: how many seeds it averages and their spread.
SEED_STATS = ("n_seeds", "seed_sd", "seed_min", "seed_max")


def seed_spread(values: Sequence[float]) -> dict[str, float | int]:
    """n_seeds, SD (ddof 1; NaN for one seed: no spread to estimate), min and max of one
    number per seed. An undefined (NaN) value makes the spread undefined too."""
    v = np.asarray(values, dtype=np.float64)
    defined = v.size > 0 and not np.isnan(v).any()
    return {"n_seeds": int(v.size),
            "seed_sd": float(np.std(v, ddof=1)) if defined and v.size > 1 else math.nan,
            "seed_min": float(v.min()) if defined else math.nan,
            "seed_max": float(v.max()) if defined else math.nan}


def _mean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()) if v.size else math.nan


def _mean_resamples(values: Sequence[np.ndarray]) -> np.ndarray:
    """Per-resample mean over seeds (NaN where a seed's pAUC is undefined in a resample)."""
    return np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)


def seed_mean_row(rows: Sequence[dict[str, Any]], resamples: Sequence[np.ndarray] | None,
                  ci: float = 0.95) -> dict[str, Any]:
    """One result row from the rows of one (cell, method, variant, mode), one per seed.

    pauc: the mean over seeds (NaN if a seed's is undefined); pauc_low/high/std: from the
    per-resample means of ``resamples`` (one array per seed, same resamples; None: no
    interval, a secondary mode); seed: None; plus ``SEED_STATS``. The other columns (pairs,
    FNMR(0), ...) are the cell's, shared by every seed: taken from the first row.
    """
    if not rows:
        raise ValueError("no per-seed rows to average")
    paucs = [float(r["pauc"]) for r in rows]
    out = {**rows[0], "seed": None, "pauc": _mean(paucs), **seed_spread(paucs)}
    if resamples is not None and len(resamples) == len(rows):
        spread = interval(_mean_resamples(resamples), ci)
        out.update(pauc_low=spread["low"], pauc_high=spread["high"], pauc_std=spread["std"])
    else:
        out.update(pauc_low=math.nan, pauc_high=math.nan, pauc_std=math.nan)
    return out


def seed_mean_difference(points_t: Sequence[float], points_base: Sequence[float],
                         values_t: Sequence[np.ndarray], values_base: Sequence[np.ndarray],
                         ci: float = 0.95) -> dict[str, Any]:
    """The mean over seeds of pAUC(T_s) - pAUC(base_s), T and base of the same seed s.

    delta, its interval and p-value as ``difference_from_resamples`` gives them for the
    seed-averaged T and base on the shared resamples (the mean of the differences is the
    difference of the means), plus ``SEED_STATS`` of the per-seed point differences.
    """
    if not points_t or len(points_t) != len(points_base):
        raise ValueError("need one T and one base pAUC per seed")
    deltas = np.asarray(points_t, dtype=np.float64) - np.asarray(points_base, dtype=np.float64)
    out = difference_from_resamples(_mean(points_t), _mean(points_base),
                                    _mean_resamples(values_t), _mean_resamples(values_base), ci)
    return {**out, **seed_spread(deltas.tolist())}


def seed_mean_curve(curves: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The EDC of the seed-averaged model for the figures: the seeds' curves (same discard
    rates) averaged point by point (FNMR, threshold, pairs kept)."""
    if not curves:
        raise ValueError("no curves to average")
    rates = curves[0]["discard_rate"].to_numpy()
    for c in curves[1:]:
        if not np.array_equal(c["discard_rate"].to_numpy(), rates):
            raise ValueError("the seeds' EDC curves have different discard rates")
    numeric = [c for c in curves[0].columns
               if c != "discard_rate" and pd.api.types.is_numeric_dtype(curves[0][c])]
    out = curves[0].copy()
    for col in numeric:
        out[col] = np.mean(np.stack([c[col].to_numpy(dtype=np.float64) for c in curves]),
                           axis=0)
    return out
