"""Per-cell pAUC evaluation and the written report: tables, EDC figures, summary, metrics.

The evaluate stage calls ``evaluate_cell`` (and ``context_rows``) once per (fr_model,
detector, benchmark, method, variant), concatenates the rows into the long results frame
described in ``aikd.evaluation.tables`` and hands it to ``write_report``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.edc import (
    UndefinedPAUCWarning,
    edc_curve,
    pauc,
    pauc_bootstrap,
    random_quality_pauc,
)
from aikd.evaluation.tables import (
    CONTEXT_VARIANT,
    REFERENCE_DETECTOR,
    bt_pairs,
    check_results,
    combined_misaligned_table,
    fnmr0_table,
    mode_order,
    pauc_table,
    significant_differences,
    to_markdown,
    win_share,
)

__all__ = [
    "MAIN_FMR",
    "MAIN_THRESHOLD",
    "context_rows",
    "evaluate_cell",
    "no_quality_curve",
    "paired_pauc_difference",
    "write_report",
]

MAIN_FMR = 1e-3
MAIN_THRESHOLD = "recomputed"
CurveKey = tuple[str, str, str, str, str]  # fr_model, detector, benchmark, method, variant


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
    fmr: float = MAIN_FMR,
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
    fmr: float = MAIN_FMR,
    threshold: str = MAIN_THRESHOLD,
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


# --------------------------------------------------------------------------- report


def _slug(text: str) -> str:
    """File-name-safe component (detector or model names may contain '/' or spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _mode_title(fmr: float, threshold: str) -> str:
    main = " (main)" if math.isclose(fmr, MAIN_FMR) and threshold == MAIN_THRESHOLD else ""
    return f"FMR {fmr:g}, {threshold} threshold{main}"


def _has(results: pd.DataFrame, fmr: float, threshold: str, **eq: str) -> pd.DataFrame:
    mask = np.isclose(results["fmr"].to_numpy(dtype=np.float64), fmr, rtol=1e-6, atol=0.0)
    mask &= (results["threshold"] == threshold).to_numpy()
    for col, val in eq.items():
        mask &= (results[col] == val).to_numpy()
    return results[mask]


def _csv_block(table: pd.DataFrame, footer: pd.DataFrame | None, fmr: float,
               threshold: str) -> pd.DataFrame:
    """One table in long-wide CSV form: fmr, threshold, metric, method, variant, columns."""
    body = table.reset_index()
    body.insert(0, "metric", "pauc")
    parts = [body]
    if footer is not None:
        foot = footer.reset_index(names="method")
        foot.insert(0, "metric", foot["method"].map({"FNMR(0)": "fnmr0", "pairs": "n_pairs"}))
        foot["method"] = ""
        foot.insert(2, "variant", "")
        parts.append(foot)
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "threshold", threshold)
    out.insert(0, "fmr", fmr)
    return out


_PREAMBLE = (
    "Normalised pAUC of the EDC up to 30 % discarded pairs (lower is better; 1.000 means the "
    "quality did not help). Best (lowest) per column in **bold**. Variant B: labels/model "
    "for the reference alignment; T: alignment-invariant (AI-KD). Context rows (variant -): "
    "`none` = no quality (1 by definition), `random` = mean over random qualities. "
    "*FNMR(0)* is the error before discarding, *pairs* the pairs scored.\n"
)


def _write_cell_tables(results: pd.DataFrame, fr: str, det: str, rep: Path) -> list[Path]:
    blocks, md = [], [f"# pAUC: {fr} / {det}\n\n", _PREAMBLE]
    for fmr, mode in mode_order(results):
        if _has(results, fmr, mode, fr_model=fr, detector=det).empty:
            continue
        table = pauc_table(results, fr, det, fmr=fmr, threshold=mode)
        footer = fnmr0_table(results, fr, det, fmr=fmr, threshold=mode)
        md += [f"\n## {_mode_title(fmr, mode)}\n\n", to_markdown(table, footer=footer)]
        blocks.append(_csv_block(table, footer, fmr, mode))
    if not blocks:
        return []
    base = rep / f"pauc_{_slug(fr)}_{_slug(det)}"
    pd.concat(blocks, ignore_index=True).to_csv(base.with_suffix(".csv"), index=False)
    base.with_suffix(".md").write_text("".join(md))
    return [base.with_suffix(".csv"), base.with_suffix(".md")]


def _write_misaligned_tables(
    results: pd.DataFrame, fr: str, misaligned: list[str], rep: Path
) -> list[Path]:
    blocks = []
    md = [f"# pAUC: {fr}, mean over misaligned detectors\n\n",
          f"Detectors: {', '.join(misaligned)} (every detector but `{REFERENCE_DETECTOR}`). "
          "A cell missing for any of them is left empty.\n", _PREAMBLE]
    for fmr, mode in mode_order(results):
        sub = _has(results, fmr, mode, fr_model=fr)
        if sub[sub["detector"].isin(misaligned)].empty:
            continue
        table = combined_misaligned_table(results, misaligned, fr_model=fr, fmr=fmr,
                                          threshold=mode)
        md += [f"\n## {_mode_title(fmr, mode)}\n\n", to_markdown(table)]
        blocks.append(_csv_block(table, None, fmr, mode))
    if not blocks:
        return []
    base = rep / f"pauc_{_slug(fr)}_misaligned"
    pd.concat(blocks, ignore_index=True).to_csv(base.with_suffix(".csv"), index=False)
    base.with_suffix(".md").write_text("".join(md))
    return [base.with_suffix(".csv"), base.with_suffix(".md")]


def _write_figures(
    results: pd.DataFrame,
    curves: Mapping[CurveKey, pd.DataFrame],
    fr_models: Sequence[str],
    detectors: Sequence[str],
    rep: Path,
    fmr: float,
    threshold: str,
) -> list[Path]:
    """One EDC figure per (fr_model, detector, benchmark): context lines, then B and T."""
    from aikd.evaluation.plots import plot_edc  # matplotlib costs ~1 s; only load it here

    groups: dict[tuple[str, str, str], list[CurveKey]] = {}
    for key in curves:
        fr, det, bench, _, _ = key
        if fr in fr_models and det in detectors:
            groups.setdefault((fr, det, bench), []).append(key)
    main = _has(results, fmr, threshold)
    paucs_all = {(r.fr_model, r.detector, r.benchmark, r.method, r.variant): r.pauc
                 for r in main.itertuples(index=False)}
    written = []
    for (fr, det, bench), keys in sorted(groups.items()):
        keys.sort(key=lambda k: (k[4] != CONTEXT_VARIANT, k[3], k[4]))
        lines, paucs = {}, {}
        for key in keys:
            label = key[3] if key[4] == CONTEXT_VARIANT else f"{key[3]} ({key[4]})"
            lines[label] = curves[key]
            value = paucs_all.get(key)
            if value is not None and np.isfinite(value):
                paucs[label] = float(value)
        path = rep / "edc" / f"{_slug(fr)}_{_slug(det)}_{_slug(bench)}.png"
        title = f"{fr} / {det} / {bench} ({threshold} threshold)"
        written.append(plot_edc(lines, path, title, fmr, paucs=paucs))
    return written


def _json_number(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _mean_pauc_tree(main: pd.DataFrame) -> dict[str, dict[str, dict[str, float | None]]]:
    """{method: {variant: {detector: mean pAUC over benchmarks (and FR models)}}}."""
    tree: dict[str, dict[str, dict[str, float | None]]] = {}
    means = main.groupby(["method", "variant", "detector"], sort=False)["pauc"].mean()
    for (method, variant, det), value in means.items():
        tree.setdefault(str(method), {}).setdefault(str(variant), {})[str(det)] = (
            _json_number(value)
        )
    return tree


def _md_frame(df: pd.DataFrame, decimals: int = 3) -> str:
    """Plain markdown of a small frame (no bold), for the summary's supporting tables."""
    if df.empty:
        return "_none_\n"
    if "fmr" in df.columns:  # 0.001 and 0.01 read better as 1e-3 style than fixed decimals
        df = df.assign(fmr=[f"{float(x):g}" for x in df["fmr"]])
    return to_markdown(df.set_index(df.columns[0]), mark_best=False, decimals=decimals)


def _noise_paragraph(
    results: pd.DataFrame, sig: pd.DataFrame, test_name: str, fmr: float, threshold: str
) -> str:
    """The verdict in words, every number taken from the results."""
    cells = bt_pairs(_has(results, fmr, threshold), misaligned_only=True)
    cells = cells[cells["delta"].notna()]
    where = f"At FMR {fmr:g} with the {threshold} threshold"
    if cells.empty:
        return f"{where} there are no misaligned cells with both B and T results.\n"
    n, wins = len(cells), int((cells["delta"] < 0).sum())
    d = cells["delta"]
    main_sig = _has(sig, fmr, threshold)
    main_sig = main_sig[main_sig["detector"] != REFERENCE_DETECTOR]
    k_t = int((main_sig["better"] == "T").sum())
    k_b = int((main_sig["better"] == "B").sum())
    text = (
        f"{where}, T has the lower pAUC in {wins} of {n} misaligned (FR model, method, "
        f"detector, benchmark) cells ({wins / n:.0%}). The difference T - B has median "
        f"{d.median():+.3f} (from {d.min():+.3f} to {d.max():+.3f}). "
        f"{k_t + k_b} of the {n} differences exceed the noise ({test_name}): T is better in "
        f"{k_t} and B in {k_b}; the other {n - k_t - k_b} are within the bootstrap "
        "uncertainty, so their sign should not be read as a result."
    )
    widths = pd.concat([cells["high_B"] - cells["low_B"], cells["high_T"] - cells["low_T"]])
    widths = widths[np.isfinite(widths)]
    if widths.empty:
        text += " No bootstrap intervals were computed (n_boot = 0), so no test was possible."
    else:
        text += f" The median interval width is {widths.median():.3f} pAUC."
    rnd = _has(results, fmr, threshold, method="random")
    sd = (rnd["pauc_high"] - rnd["pauc_low"]) / 2.0
    sd = sd[np.isfinite(sd)]
    if not sd.empty:
        text += (
            f" Random qualities, which can only help by chance, spread with an SD of up to "
            f"{sd.max():.3f} pAUC (median {sd.median():.3f}) over seeds, so a difference "
            f"smaller than about {2 * sd.median():.3f} is noise whatever the test says."
        )
    return text + "\n"


def _summary(
    results: pd.DataFrame,
    misaligned: list[str],
    differences: pd.DataFrame | None,
    fr_models: Sequence[str],
    detectors: Sequence[str],
    missing: list[str],
) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ws_mis = win_share(results, misaligned_only=True)
    ref = results[results["detector"] == REFERENCE_DETECTOR]
    ws_ref = win_share(ref, misaligned_only=False) if not ref.empty else ws_mis.iloc[0:0]
    sig = significant_differences(results, differences=differences)
    test_name = (sig["test"].iloc[0] if not sig.empty else
                 "paired bootstrap of pauc_T - pauc_B excludes 0" if differences is not None
                 else "B and T intervals do not overlap")
    out = [
        "# FIQA evaluation summary\n\n",
        f"FR models: {', '.join(fr_models)}. Detectors: {', '.join(detectors)} "
        f"(misaligned: {', '.join(misaligned) or 'none'}). "
        f"Benchmarks: {', '.join(map(str, pd.unique(results['benchmark'])))}.\n",
    ]
    if missing:
        out.append(f"\nNo results for: {', '.join(missing)}.\n")
    out += [
        "\n## Which differences exceed the noise\n\n",
        _noise_paragraph(results, sig, test_name, MAIN_FMR, MAIN_THRESHOLD),
        "\n## Share of cells where T beats B (misaligned detectors)\n\n",
        _md_frame(ws_mis),
    ]
    if not ws_ref.empty:
        out += ["\n## Share of cells where T beats B (reference alignment)\n\n", _md_frame(ws_ref)]
    out += [f"\n## Significant B-vs-T differences ({test_name})\n\n"]
    cols = ["fmr", "threshold", "fr_model", "detector", "benchmark", "method", "pauc_B",
            "pauc_T", "delta", "better"]
    out.append(_md_frame(sig[cols]))
    rnd = _has(results, MAIN_FMR, MAIN_THRESHOLD, method="random")
    if not rnd.empty:
        noise = rnd.assign(sd=(rnd["pauc_high"] - rnd["pauc_low"]) / 2.0)
        noise = noise[["fr_model", "detector", "benchmark", "pauc", "sd"]]
        out += [f"\n## Noise floor: random quality, mean and SD over seeds "
                f"(FMR {MAIN_FMR:g}, {MAIN_THRESHOLD} threshold)\n\n",
                _md_frame(noise.rename(columns={"pauc": "mean_pauc"}))]
    cov_cols = ["fr_model", "detector", "benchmark", "fmr", "fnmr0", "n_pairs"]
    if "n_dropped" in results.columns:
        cov_cols.append("n_dropped")
    cov = results[cov_cols].drop_duplicates(["fr_model", "detector", "benchmark", "fmr"])
    out += ["\n## Coverage and FNMR before discarding\n\n",
            "Pairs where an image has no embedding (no face found) are dropped before "
            "scoring; `n_dropped` counts them when the evaluate stage reports it.\n\n",
            _md_frame(cov, decimals=4)]
    return "".join(out), ws_mis, ws_ref, sig


def _log_mlflow(written: dict[str, Path], results: pd.DataFrame, metrics: dict) -> None:
    """Log to the active MLflow run, if any; never imports MLflow just to find out."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    for rel, path in written.items():
        parent = str(Path(rel).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)
    flat = {}
    if metrics["aikd_win_share"] is not None:
        flat["aikd_win_share"] = metrics["aikd_win_share"]
    for r in _has(results, MAIN_FMR, MAIN_THRESHOLD).itertuples(index=False):
        if np.isfinite(r.pauc):
            name = r.method if r.variant == CONTEXT_VARIANT else f"{r.method}_{r.variant}"
            key = "/".join(_slug(x) for x in (r.fr_model, r.detector, r.benchmark, name))
            flat[f"pauc/{key}"] = float(r.pauc)
    mlflow.log_metrics(flat)


def write_report(
    results: pd.DataFrame,
    curves: Mapping[CurveKey, pd.DataFrame],
    out_dir: str | Path,
    *,
    fr_models: Sequence[str],
    detectors: Sequence[str],
    differences: pd.DataFrame | None = None,
    curve_fmr: float = MAIN_FMR,
    curve_threshold: str = MAIN_THRESHOLD,
    reports_subdir: str = "reports",
) -> dict[str, Path]:
    """Write every table, figure, the summary and the metrics; return {relative path: path}.

    Under ``out_dir``: ``reports/pauc_<fr>_<detector>.csv|.md`` (all FMR x threshold modes,
    FNMR(0) footer), ``reports/pauc_<fr>_misaligned.csv|.md``, ``reports/edc/<fr>_<det>_
    <benchmark>.png`` (from ``curves``, keyed (fr_model, detector, benchmark, method,
    variant), computed at ``curve_fmr``/``curve_threshold``), ``reports/results_long.csv``,
    ``reports/summary.md`` and ``metrics/evaluation.json``. ``aikd_win_share`` there is the
    share of misaligned cells with pAUC(T) < pAUC(B) at FMR 1e-3, recomputed threshold.
    ``differences`` (optional, paired bootstrap per cell) sharpens the significance test.
    ``reports_subdir`` renames ``reports/`` (the DVC stage writes ``reports/evaluation``
    so that its output directory does not overlap other stages' reports).
    Results may carry an ``n_dropped`` column (pairs lost to missing faces); it is shown.
    """
    check_results(results)
    results = results[results["fr_model"].isin(fr_models) & results["detector"].isin(detectors)]
    if results.empty:
        raise ValueError(f"no results for FR models {list(fr_models)} and detectors "
                         f"{list(detectors)}")
    out = Path(out_dir)
    rep, met = out / reports_subdir, out / "metrics"
    rep.mkdir(parents=True, exist_ok=True)
    met.mkdir(parents=True, exist_ok=True)
    misaligned = [d for d in detectors if d != REFERENCE_DETECTOR]
    present = set(zip(results["fr_model"], results["detector"], strict=True))

    paths: list[Path] = []
    missing = []
    for fr in fr_models:
        for det in detectors:
            if (fr, det) not in present:
                missing.append(f"{fr}/{det}")
                continue
            paths += _write_cell_tables(results, fr, det, rep)
        with_results = [d for d in misaligned if (fr, d) in present]  # missing: in summary
        if with_results:
            paths += _write_misaligned_tables(results, fr, with_results, rep)
    paths += _write_figures(results, curves, fr_models, detectors, rep, curve_fmr,
                            curve_threshold)
    long_path = rep / "results_long.csv"
    results.to_csv(long_path, index=False)
    paths.append(long_path)

    text, ws_mis, ws_ref, sig = _summary(results, misaligned, differences, fr_models,
                                         detectors, missing)
    summary_path = rep / "summary.md"
    summary_path.write_text(text)
    paths.append(summary_path)

    main_ws = _has(ws_mis, MAIN_FMR, MAIN_THRESHOLD)
    main_sig = _has(sig, MAIN_FMR, MAIN_THRESHOLD)
    main_sig = main_sig[main_sig["detector"] != REFERENCE_DETECTOR]
    main = _has(results, MAIN_FMR, MAIN_THRESHOLD)
    metrics: dict[str, Any] = {
        "aikd_win_share": _json_number(main_ws["win_share"].iloc[0]) if len(main_ws) else None,
        "aikd_wins": int(main_ws["n_wins"].iloc[0]) if len(main_ws) else 0,
        "aikd_cells": int(main_ws["n_cells"].iloc[0]) if len(main_ws) else 0,
        "significant_misaligned": {"T": int((main_sig["better"] == "T").sum()),
                                   "B": int((main_sig["better"] == "B").sum())},
        "win_share": {
            f"fmr_{r.fmr:.0e}": {} for r in ws_mis.itertuples(index=False)
        },
        "mean_pauc": _mean_pauc_tree(main),
        "mean_pauc_by_fr_model": {
            str(fr): _mean_pauc_tree(main[main["fr_model"] == fr]) for fr in fr_models
            if (main["fr_model"] == fr).any()
        },
    }
    for r in ws_mis.itertuples(index=False):
        metrics["win_share"][f"fmr_{r.fmr:.0e}"][r.threshold] = _json_number(r.win_share)
    metrics_path = met / "evaluation.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    paths.append(metrics_path)

    written = {p.relative_to(out).as_posix(): p for p in paths}
    _log_mlflow(written, results, metrics)
    return written
