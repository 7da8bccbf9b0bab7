"""Does a student learn its labels? Its fit on validation people next to two floors.

A quality student is only worth distilling if it predicts its pseudo labels better than
what needs no training: a constant (the training median) and a ridge-regression probe on
the frozen teacher's embedding (closed form, fitted on the training images). Both floors
and the student are scored on the same validation people, by L1 on the normalised target
and by Spearman's rho (the order is what the EDC uses).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["LEARNABILITY_COLUMNS", "RIDGE_ALPHAS", "fit_ridge", "label_fit",
           "learnability_metrics", "learnability_table", "write_learnability"]

#: Ridge penalties tried; the one with the lowest leave-one-out error on TRAINING images wins.
RIDGE_ALPHAS = tuple(10.0 ** k for k in range(-3, 5))


def label_fit(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(L1, Spearman rho) of predictions against targets, over the rows both are finite.

    Spearman is NaN when either side is constant (a constant predictor has no order).
    """
    p = np.asarray(prediction, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"prediction {p.shape} and target {t.shape} must be 1-D of one length")
    ok = np.isfinite(p) & np.isfinite(t)
    if not ok.any():
        return math.nan, math.nan
    p, t = p[ok], t[ok]
    l1 = float(np.mean(np.abs(p - t)))
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        return l1, math.nan
    return l1, float(stats.spearmanr(p, t).statistic)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_ridge(
    x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS, unit: bool = True
) -> tuple[np.ndarray, float, float]:
    """Ridge regression ``y ~ x @ w + b`` on L2-normalised rows (``unit``; else the rows as
    given), alpha by exact LOO on x.

    Returns (w, b, alpha). The leave-one-out residuals of ridge have the closed form
    r_i / (1 - H_ii) (H the hat matrix of the centred design), computed for every alpha
    from one SVD, so the penalty is chosen on the training images alone.
    """
    xu = _unit(x) if unit else np.asarray(x, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    if xu.shape[0] != yv.shape[0] or xu.shape[0] < 2:
        raise ValueError(f"ridge needs >= 2 rows with one target each, got {xu.shape}, "
                         f"{yv.shape}")
    mx, my = xu.mean(axis=0), float(yv.mean())
    xc, yc = xu - mx, yv - my
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    n = xc.shape[0]
    best = (math.inf, alphas[0])
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink * uty)
        # Hat diagonal of the centred design, plus 1/n for the intercept.
        h = np.einsum("ij,j,ij->i", u, shrink, u) + 1.0 / n
        loo = np.mean(((yc - fitted) / np.maximum(1.0 - h, 1e-9)) ** 2)
        if loo < best[0]:
            best = (float(loo), alpha)
    alpha = best[1]
    w = vt.T @ (s / (s**2 + alpha) * uty)
    return w, my - float(mx @ w), alpha


def learnability_metrics(
    student_val: np.ndarray,
    target_val: np.ndarray,
    target_train: np.ndarray,
    teacher_train: np.ndarray | None = None,
    teacher_val: np.ndarray | None = None,
) -> dict[str, float]:
    """``val_l1``, ``val_spearman`` of the student; ``const_val_l1`` of the training median;
    ``ridge_val_l1``, ``ridge_val_spearman``, ``ridge_alpha`` of the teacher-embedding probe
    (left out when no teacher embeddings are given). Targets are normalised labels."""
    out: dict[str, float] = {}
    out["val_l1"], out["val_spearman"] = label_fit(student_val, target_val)
    const = np.full(np.shape(target_val), float(np.median(target_train)))
    out["const_val_l1"] = label_fit(const, target_val)[0]
    if teacher_train is not None and teacher_val is not None:
        keep = np.isfinite(teacher_train).all(axis=1) & np.isfinite(target_train)
        w, b, alpha = fit_ridge(teacher_train[keep], np.asarray(target_train)[keep])
        val_ok = np.isfinite(teacher_val).all(axis=1)
        pred = np.full(val_ok.shape[0], np.nan)
        pred[val_ok] = _unit(teacher_val[val_ok]) @ w + b
        out["ridge_val_l1"], out["ridge_val_spearman"] = label_fit(pred, target_val)
        out["ridge_alpha"] = float(alpha)
    return out


#: Columns of the learnability table, in order (NaN where a run did not log a figure).
LEARNABILITY_COLUMNS = ["run", "labels", "variant", "val_spearman", "ridge_val_spearman",
                        "val_l1", "ridge_val_l1", "const_val_l1", "beats_ridge"]
#: The figures averaged over training seeds.
FIGURES = LEARNABILITY_COLUMNS[3:-1]


def learnability_table(runs: dict[str, dict[str, str]], metrics_dir: str | Path,
                       seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per distill run and training seed from ``<metrics_dir>/<run>/seed<seed>/
    metrics.json`` (``seeds`` None: ``<metrics_dir>/<run>/metrics.json``, one unseeded row,
    as runs were laid out before seeds): the student's fit to its labels on validation
    people beside the constant and the ridge probe. Column ``seed`` follows ``run``."""
    from aikd.naming import seed_folder

    rows = []
    for run, spec in runs.items():
        for seed in (None,) if seeds is None else seeds:
            folder = Path(metrics_dir) / run
            path = (folder if seed is None else folder / seed_folder(seed)) / "metrics.json"
            if not path.is_file():  # a run not trained (yet): no row, said once
                print(f"learnability: {path} not found, run {run!r} left out")
                continue
            m = json.loads(path.read_text()).get("metrics", {})
            row = {"run": run, "seed": seed, "labels": spec.get("labels"),
                   "variant": spec.get("variant")}
            for key in FIGURES:
                value = m.get(key)
                row[key] = math.nan if value is None else float(value)
            row["beats_ridge"] = bool(row["val_spearman"] > row["ridge_val_spearman"])
            rows.append(row)
    columns = [LEARNABILITY_COLUMNS[0], "seed", *LEARNABILITY_COLUMNS[1:]]
    table = pd.DataFrame(rows, columns=columns)
    table["seed"] = table["seed"].astype("Int64")
    return table


def learnability_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``n_seeds``, each figure's mean over seeds and its SD
    (``<figure>_sd``, ddof 1; NaN for one seed) and ``beats_ridge`` as the share of seeds
    whose student beats the ridge probe."""
    rows = []
    for run, g in table.groupby("run", sort=False):
        row: dict[str, Any] = {"run": run, "labels": g["labels"].iloc[0],
                               "variant": g["variant"].iloc[0], "n_seeds": len(g)}
        for key in FIGURES:
            v = g[key].to_numpy(dtype=np.float64)
            row[key] = float(v.mean())
            row[f"{key}_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
        row["beats_ridge"] = float(g["beats_ridge"].astype(bool).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd_text(summary: pd.DataFrame) -> pd.DataFrame:
    """``0.612 ± 0.010`` per figure (the mean alone for one seed), for the Markdown."""
    out = summary[["run", "labels", "variant", "n_seeds"]].copy()
    for key in FIGURES:
        out[key] = [f"{m:.3f}" if not np.isfinite(sd) else f"{m:.3f} ± {sd:.3f}"
                    for m, sd in zip(summary[key], summary[f"{key}_sd"], strict=True)]
    out["beats_ridge"] = [f"{b:.0%}" for b in summary["beats_ridge"]]
    return out


def write_learnability(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``learnability.csv`` (one row per run and seed), ``learnability_seeds.csv`` (mean and
    SD over seeds per run) and ``learnability.md`` (mean ± SD, with what the floors mean)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "learnability.csv", out / "learnability.md"
    means = out / "learnability_seeds.csv"
    table.to_csv(csv, index=False)
    summary = learnability_over_seeds(table)
    summary.to_csv(means, index=False)
    md.write_text(
        "# Do the students learn their labels?\n\n"
        "Validation people, faces as aligned by the training alignment (no jitter); targets "
        "are the rank-normalised pseudo labels. `val_*`: the trained student; `ridge_*`: a "
        "ridge regression on the frozen teacher's embedding, fitted on the run's training "
        "images (penalty by leave-one-out on them), the floor a fine-tuned student must "
        "beat; `const_val_l1`: the training median as the prediction (its Spearman is "
        "undefined). Mean ± SD over the run's training seeds (`n_seeds`; one row per seed in "
        "learnability.csv); `beats_ridge`: the share of seeds whose student beats the "
        "ridge.\n\n" + _mean_sd_text(summary).to_markdown(index=False) + "\n")
    return [csv, means, md]
