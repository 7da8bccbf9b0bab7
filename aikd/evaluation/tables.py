"""The paper's comparison tables (pAUC per method x {B, T} and benchmark) and B-vs-T tallies.

All functions read one long results frame, one row per (fr_model, detector, benchmark,
method, variant, fmr, threshold), with the columns of ``RESULT_COLUMNS``:

* ``variant`` is ``B`` (labels/model trained on the base alignment) or ``T`` (the
  alignment-invariant AI-KD model) for label methods, and ``-`` for context rows
  (``none``: no quality, ``random``: random quality, single-score baselines);
* ``pauc_low``/``pauc_high`` bound the pAUC (bootstrap interval; mean -/+ SD for random);
* ``fnmr0`` is the FNMR before any discard, ``n_pairs`` the pairs scored; optional
  ``n_fail0`` is the number of failing mated pairs FNMR(0) rests on;
* optional ``seed``: the training seed of a row of one trained model; a trained variant
  also has a row with ``seed`` empty, the mean over its seeds (``n_seeds``, ``seed_sd``,
  ``seed_min``, ``seed_max``; ``aikd.evaluation.seeds``). The tables read the rows whose
  ``seed`` is empty (``seed_means``): seed means and the untrained rows.

"Misaligned" detectors are all but the ``reference`` one passed in: the alignment the
models were trained on (params ``landmarks.training_detector``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.columns import (  # noqa: F401  (method_columns, split_method: old home)
    CONTEXT_VARIANT,
    method_columns,
    split_method,
)

__all__ = [
    "RESULT_COLUMNS",
    "bt_pairs",
    "combined_misaligned_table",
    "misaligned_footer",
    "fnmr0_table",
    "interval_table",
    "mode_order",
    "mode_rows",
    "pauc_table",
    "seed_means",
    "seed_spread_table",
    "significant_differences",
    "to_markdown",
    "win_share",
]

RESULT_COLUMNS = [
    "fr_model",
    "detector",
    "benchmark",
    "method",
    "variant",
    "fmr",
    "threshold",
    "pauc",
    "pauc_low",
    "pauc_high",
    "fnmr0",
    "n_pairs",
]
_CELL_KEYS = ["fr_model", "detector", "benchmark", "method", "fmr", "threshold"]
_VARIANT_ORDER = {"B": 0, "C": 1, "T": 2}


def check_results(results: pd.DataFrame) -> pd.DataFrame:
    """Raise if a column is missing or a cell is listed twice (it would be averaged silently)."""
    missing = set(RESULT_COLUMNS) - set(results.columns)
    if missing:
        raise ValueError(f"results lack columns {sorted(missing)}")
    keys = [*_CELL_KEYS, "variant", *(["seed"] if "seed" in results.columns else [])]
    dup = results.duplicated(subset=keys)
    if dup.any():
        row = results.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"results list a cell twice: {row}")
    return results


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows the tables read: those without a training ``seed`` (a trained variant's
    mean over seeds, untrained methods); a frame without seeds is returned as it is."""
    if "seed" not in frame.columns:
        return frame
    return frame[frame["seed"].isna().to_numpy()]


def mode_order(frame: pd.DataFrame) -> list[tuple[float, str]]:
    """(fmr, threshold) modes in reading order: lowest FMR first, recomputed before fixed."""
    rank = {"recomputed": 0, "fixed": 1}
    modes = frame[["fmr", "threshold"]].drop_duplicates()
    return sorted(((float(f), str(t)) for f, t in modes.itertuples(index=False)),
                  key=lambda m: (m[0], rank.get(m[1], 2), m[1]))


def _fmr_mask(values: pd.Series, fmr: float) -> np.ndarray:
    """FMRs compared with a relative tolerance: 1e-3 read back from a CSV may differ in ulps."""
    return np.isclose(values.to_numpy(dtype=np.float64), float(fmr), rtol=1e-6, atol=0.0)


def mode_rows(frame: pd.DataFrame, fmr: float, threshold: str, **equal: str) -> pd.DataFrame:
    """The rows of one (fmr, threshold) mode whose other ``equal`` columns match."""
    mask = _fmr_mask(frame["fmr"], fmr) & (frame["threshold"] == threshold).to_numpy()
    for column, value in equal.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def _select(
    results: pd.DataFrame,
    *,
    fr_model: str | None,
    detectors: Iterable[str] | None,
    fmr: float,
    threshold: str,
) -> pd.DataFrame:
    check_results(results)
    mask = _fmr_mask(results["fmr"], fmr) & (results["threshold"] == threshold).to_numpy()
    if fr_model is not None:
        mask &= (results["fr_model"] == fr_model).to_numpy()
    if detectors is not None:
        mask &= results["detector"].isin(list(detectors)).to_numpy()
    return results[mask]


def _single_fr_model(results: pd.DataFrame, fr_model: str | None) -> str | None:
    """Averaging across FR models would mix incomparable numbers; demand a choice."""
    if fr_model is None and results["fr_model"].nunique() > 1:
        raise ValueError("results hold several FR models; pass fr_model")
    return fr_model


def _row_order(index: pd.MultiIndex, results: pd.DataFrame) -> list[tuple[str, str]]:
    """Context rows first, then label methods; each in order of first appearance, B before T."""
    first_seen = {m: i for i, m in enumerate(pd.unique(results["method"]))}

    def key(row: tuple[str, str]) -> tuple[int, int, int, str]:
        method, variant = row
        is_label = int(variant != CONTEXT_VARIANT)
        return (is_label, first_seen.get(method, len(first_seen)),
                _VARIANT_ORDER.get(variant, 2), variant)

    return sorted(index.tolist(), key=key)


def _wide(values: pd.DataFrame, results: pd.DataFrame, value: str) -> pd.DataFrame:
    """(method, variant) x benchmark table of ``value`` plus the mean over benchmarks.

    The mean is NaN when a benchmark is missing for a row: a mean over fewer benchmarks
    would not be comparable with the other rows.
    """
    benchmarks = [b for b in pd.unique(results["benchmark"]) if b in set(values["benchmark"])]
    wide = values.pivot(index=["method", "variant"], columns="benchmark", values=value)
    wide = wide.reindex(index=_row_order(wide.index, results), columns=benchmarks)
    wide.index = pd.MultiIndex.from_tuples(wide.index.tolist(), names=["method", "variant"])
    wide.columns.name = None
    wide["mean"] = wide[benchmarks].mean(axis=1, skipna=False)
    return wide


def pauc_table(
    results: pd.DataFrame,
    fr_model: str,
    detector: str,
    *,
    fmr: float = 1e-3,
    threshold: str = "recomputed",
) -> pd.DataFrame:
    """pAUC of every (method, variant) on every benchmark for one FR model and detector.

    Rows are indexed by (method, variant); columns are the benchmarks plus ``mean``.
    """
    return _wide(_cell_selection(results, fr_model, detector, fmr, threshold), results, "pauc")


def interval_table(
    results: pd.DataFrame,
    fr_model: str,
    detector: str,
    *,
    fmr: float = 1e-3,
    threshold: str = "recomputed",
) -> pd.DataFrame:
    """``[low, high]`` of every (method, variant) on every benchmark (strings; empty where
    no interval was computed), rows in ``pauc_table``'s order: the intervals beside it."""
    sel = _cell_selection(results, fr_model, detector, fmr, threshold)
    text = [("" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.3f}, {hi:.3f}]")
            for lo, hi in zip(sel["pauc_low"].astype(float), sel["pauc_high"].astype(float),
                              strict=True)]
    return _text_table(sel.assign(interval=text), results, "interval")


def seed_spread_table(
    results: pd.DataFrame,
    fr_model: str,
    detector: str,
    *,
    fmr: float = 1e-3,
    threshold: str = "recomputed",
) -> pd.DataFrame:
    """``± SD (min-max, n seeds)`` of the seed-mean rows of every trained (method, variant)
    on every benchmark (strings; rows without seeds are left out): the seed spread beside
    ``pauc_table``'s means. Empty when the results have no seed-mean rows."""
    if "n_seeds" not in results.columns:
        return pd.DataFrame()
    sel = _cell_selection(results, fr_model, detector, fmr, threshold)
    sel = sel[sel["n_seeds"].notna().to_numpy()]
    if sel.empty:
        return pd.DataFrame()

    def text(r: Any) -> str:
        n = int(r.n_seeds)
        if n < 2 or not np.isfinite(float(r.seed_sd)):
            return f"(n {n})"
        return f"± {r.seed_sd:.3f} ({r.seed_min:.3f}-{r.seed_max:.3f}, n {n})"

    spread = [text(r) for r in sel.itertuples(index=False)]
    return _text_table(sel.assign(spread=spread), results, "spread")


def _text_table(sel: pd.DataFrame, results: pd.DataFrame, column: str) -> pd.DataFrame:
    """(method, variant) x benchmark table of the strings in ``column``, rows and columns
    in ``pauc_table``'s order, empty strings where a cell has none."""
    wide = sel.pivot(index=["method", "variant"], columns="benchmark", values=column)
    benchmarks = [b for b in pd.unique(results["benchmark"]) if b in set(sel["benchmark"])]
    wide = wide.reindex(index=_row_order(wide.index, results), columns=benchmarks)
    wide.index = pd.MultiIndex.from_tuples(wide.index.tolist(), names=["method", "variant"])
    wide.columns.name = None
    return wide.fillna("")


def _cell_selection(results: pd.DataFrame, fr_model: str, detector: str, fmr: float,
                    threshold: str) -> pd.DataFrame:
    sel = _select(results, fr_model=fr_model, detectors=[detector], fmr=fmr, threshold=threshold)
    if sel.empty:
        raise ValueError(f"no results for {fr_model}/{detector} at FMR {fmr:g}, {threshold}")
    return sel


def fnmr0_table(results: pd.DataFrame, fr_model: str, detector: str, **mode: Any
                ) -> pd.DataFrame:
    """FNMR before discarding, the failing mated pairs it rests on, pairs scored and the
    random-quality interval, per benchmark: the footer (noise floor) of a pAUC table.

    pAUC is normalised by FNMR(0), so the same pAUC means more on a benchmark with higher
    FNMR(0), and little when FNMR(0) rests on a handful of failing pairs; the reader needs
    both. Values come from the ``none`` row when present (all
    methods share the pairs), else the first row of each benchmark. ``mode``: ``fmr`` and
    ``threshold`` as for :func:`pauc_table`.
    """
    settings = {"fmr": 1e-3, "threshold": "recomputed", **mode}
    sel = _cell_selection(results, fr_model, detector, settings["fmr"], settings["threshold"])
    sel = sel.assign(_pref=(sel["method"] != "none").astype(int)).sort_values(
        "_pref", kind="stable"
    )
    cols = {"fnmr0": "FNMR(0)", "n_fail0": "failing mated pairs", "n_pairs": "pairs"}
    cols = {k: v for k, v in cols.items() if k in sel.columns}
    first = sel.groupby("benchmark", sort=False)[list(cols)].first()
    benchmarks = [b for b in pd.unique(results["benchmark"]) if b in first.index]
    out = first.loc[benchmarks].astype(object).T
    out.index = pd.Index(list(cols.values()))
    rnd = sel[sel["method"] == "random"].groupby("benchmark", sort=False)[
        ["pauc_low", "pauc_high"]].first()
    if not rnd.empty:  # the noise floor: where random qualities land (quantiles over seeds)
        rnd = rnd.reindex(benchmarks)
        out.loc["random low"] = rnd["pauc_low"].astype(object)
        out.loc["random high"] = rnd["pauc_high"].astype(object)
    out.columns.name = None
    return out


def misaligned_footer(
    results: pd.DataFrame,
    detectors: Sequence[str],
    *,
    reference: str,
    fr_model: str | None = None,
    fmr: float = 1e-3,
    threshold: str = "recomputed",
) -> pd.DataFrame:
    """The noise floor under ``combined_misaligned_table``, per benchmark over the
    misaligned detectors: FNMR(0) (mean), the fewest failing mated pairs, the pairs scored
    (fewest), and the widest random-quality range (lowest low, highest high)."""
    dets = [d for d in detectors if d != reference]
    sel = _select(results, fr_model=fr_model, detectors=dets, fmr=fmr, threshold=threshold)
    rows = {}
    by = sel[sel["method"] == "none"].groupby("benchmark", sort=False)
    if "fnmr0" in sel.columns:
        rows["FNMR(0) (mean)"] = by["fnmr0"].mean()
    if "n_fail0" in sel.columns:
        rows["failing mated pairs (fewest)"] = by["n_fail0"].min()
    rows["pairs (fewest)"] = by["n_pairs"].min()
    rnd = sel[sel["method"] == "random"].groupby("benchmark", sort=False)
    if len(sel[sel["method"] == "random"]):
        rows["random low (lowest)"] = rnd["pauc_low"].min()
        rows["random high (highest)"] = rnd["pauc_high"].max()
    benchmarks = [b for b in pd.unique(results["benchmark"]) if b in set(sel["benchmark"])]
    out = pd.DataFrame({k: v.reindex(benchmarks) for k, v in rows.items()}).T.astype(object)
    out.columns.name = None
    return out


def combined_misaligned_table(
    results: pd.DataFrame,
    detectors: Sequence[str] | None = None,
    *,
    reference: str,
    fr_model: str | None = None,
    fmr: float = 1e-3,
    threshold: str = "recomputed",
) -> pd.DataFrame:
    """pAUC averaged over the misaligned detectors (every one but ``reference``), Table VI.

    ``detectors`` defaults to all in ``results``; ``reference`` (the training alignment,
    params ``landmarks.training_detector``) is excluded even if listed.
    A (method, variant, benchmark) cell missing for some detector is NaN rather than an
    average over fewer detectors.
    """
    fr_model = _single_fr_model(results, fr_model)
    pool = detectors if detectors is not None else pd.unique(results["detector"]).tolist()
    dets = [d for d in pool if d != reference]
    if not dets:
        raise ValueError("no misaligned detector to average over")
    sel = _select(results, fr_model=fr_model, detectors=dets, fmr=fmr, threshold=threshold)
    if sel.empty:
        raise ValueError(f"no results for detectors {dets} at FMR {fmr:g}, {threshold}")
    agg = sel.groupby(["method", "variant", "benchmark"], sort=False)["pauc"].agg(["mean", "count"])
    agg["pauc"] = agg["mean"].where(agg["count"] == len(dets))
    return _wide(agg.reset_index(), results, "pauc")


def _fmt(value: object, decimals: int) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.{decimals}f}"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value)


def to_markdown(
    table: pd.DataFrame,
    mark_best: bool = True,
    *,
    decimals: int = 3,
    footer: pd.DataFrame | None = None,
) -> str:
    """A GitHub markdown table; the lowest value of each column in bold (lower pAUC wins).

    Ties at the shown precision are all bold, since the reader cannot tell them apart.
    ``footer`` rows (e.g. ``fnmr0_table``) are appended in italics and never marked.
    """
    index_names = [str(n) if n is not None else "" for n in table.index.names]
    columns = [str(c) for c in table.columns]
    header = [*index_names, *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]

    numeric = np.column_stack(
        [pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64)
         for c in table.columns]
    ) if len(table.columns) else np.zeros((len(table), 0))
    best = np.full(numeric.shape[1], np.nan)
    if mark_best:
        for j in range(numeric.shape[1]):
            if np.isfinite(numeric[:, j]).any():
                best[j] = round(float(np.nanmin(numeric[:, j])), decimals)
    for i, idx in enumerate(table.index):
        labels = [str(x) for x in (idx if isinstance(idx, tuple) else (idx,))]
        cells = []
        for j in range(len(table.columns)):
            text = _fmt(table.iat[i, j], decimals)
            value = numeric[i, j]
            if text and np.isfinite(value) and round(float(value), decimals) == best[j]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([*labels, *cells]) + " |")
    if footer is not None:
        pad = [""] * (len(index_names) - 1)
        for idx in footer.index:
            cells = [_fmt(footer.at[idx, c], decimals) if c in footer.columns else ""
                     for c in table.columns]
            lines.append("| " + " | ".join([f"*{idx}*", *pad, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _misaligned(frame: pd.DataFrame, misaligned_only: bool, reference: str | None
                ) -> pd.DataFrame:
    if not misaligned_only:
        return frame
    if reference is None:
        raise ValueError("misaligned_only needs the reference (training) detector")
    return frame[frame["detector"] != reference]


def bt_pairs(results: pd.DataFrame, *, misaligned_only: bool = False,
             reference: str | None = None, baseline: str = "B") -> pd.DataFrame:
    """One row per (fr_model, detector, benchmark, method, fmr, threshold) with both
    ``baseline`` (B, or C) and T.

    Columns: the keys, ``pauc_<baseline>``, ``pauc_T``, ``low_<baseline>``/``high_<...>``,
    ``low_T``/``high_T`` and ``delta`` = pauc_T - pauc_<baseline> (negative: the
    alignment-invariant model is better). ``misaligned_only`` leaves out ``reference``.
    """
    check_results(results)
    labels = _misaligned(results[results["variant"].isin([baseline, "T"])], misaligned_only,
                         reference)
    cols = {"pauc": "pauc", "pauc_low": "low", "pauc_high": "high"}
    parts = []
    for variant in (baseline, "T"):
        part = labels[labels["variant"] == variant][[*_CELL_KEYS, *cols]]
        parts.append(part.rename(columns={k: f"{v}_{variant}" for k, v in cols.items()}))
    out = parts[0].merge(parts[1], on=_CELL_KEYS, how="inner")
    out["delta"] = out["pauc_T"] - out[f"pauc_{baseline}"]
    return out.reset_index(drop=True)


def win_share(results: pd.DataFrame, misaligned_only: bool = True, *,
              reference: str | None = None, baseline: str = "B") -> pd.DataFrame:
    """Share of (fr_model, method, detector, benchmark) cells where T's pAUC is below the
    ``baseline`` variant's (B or C).

    One row per (fmr, threshold) mode with ``n_cells``, ``n_wins`` and ``win_share`` (the
    summary adds the sign test). Ties count as no win; cells where either pAUC is NaN are
    left out of ``n_cells``.
    """
    pairs = bt_pairs(results, misaligned_only=misaligned_only, reference=reference,
                     baseline=baseline)
    pairs = pairs[pairs["delta"].notna()]
    rows = []
    for fmr, threshold in mode_order(results):
        cell = pairs[_fmr_mask(pairs["fmr"], fmr) & (pairs["threshold"] == threshold).to_numpy()]
        n = len(cell)
        wins = int((cell["delta"] < 0).sum())
        rows.append(
            {
                "fmr": float(fmr),
                "threshold": threshold,
                "n_cells": n,
                "n_wins": wins,
                "win_share": wins / n if n else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["fmr", "threshold", "n_cells", "n_wins", "win_share"])


def significant_differences(
    results: pd.DataFrame,
    *,
    misaligned_only: bool = False,
    reference: str | None = None,
    differences: pd.DataFrame | None = None,
    baseline: str = "B",
) -> pd.DataFrame:
    """Baseline-vs-T cells (baseline B or C) whose difference exceeds the bootstrap noise,
    with ``better`` = the baseline or T (uncorrected; see ``holm_significance``).

    Without ``differences`` a cell counts when the two intervals do not overlap, which is
    conservative (B and T are scored on the same pairs, so their errors correlate).
    ``differences`` (keys plus ``delta_low``/``delta_high``, e.g. from
    ``report.paired_pauc_difference``) switches to the paired test: the interval of
    pauc_T - pauc_B excludes 0. Adds a ``test`` column naming the rule used.
    """
    pairs = bt_pairs(results, misaligned_only=misaligned_only, reference=reference,
                     baseline=baseline)
    if differences is not None:
        missing = {*_CELL_KEYS, "delta_low", "delta_high"} - set(differences.columns)
        if missing:
            raise ValueError(f"differences lack columns {sorted(missing)}")
        if "baseline" in differences.columns:
            differences = differences[differences["baseline"] == baseline]
        diffs = differences[[*_CELL_KEYS, "delta_low", "delta_high"]].copy()
        diffs["fmr"] = diffs["fmr"].astype(np.float64)
        pairs = pairs.assign(fmr=pairs["fmr"].astype(np.float64))
        pairs = pairs.merge(diffs, on=_CELL_KEYS, how="inner")
        t_better = pairs["delta_high"] < 0
        b_better = pairs["delta_low"] > 0
        test = f"paired bootstrap of pauc_T - pauc_{baseline} excludes 0"
    else:
        t_better = pairs["high_T"] < pairs[f"low_{baseline}"]
        b_better = pairs[f"high_{baseline}"] < pairs["low_T"]
        test = f"{baseline} and T intervals do not overlap"
    out = pairs[t_better | b_better].copy()
    out["better"] = np.where(t_better[t_better | b_better], "T", baseline)
    out["test"] = test
    rank = {m: i for i, m in enumerate(mode_order(out))}
    out["_mode"] = [rank[(float(f), str(t))] for f, t in zip(out["fmr"], out["threshold"],
                                                               strict=True)]
    out = out.sort_values(["_mode", "fr_model", "detector", "benchmark", "method"], kind="stable")
    return out.drop(columns="_mode").reset_index(drop=True)
