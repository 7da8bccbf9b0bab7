"""The written summary (``summary.md``) and the headline metrics of the report.

Every number in the summary's sentences is computed from the results; the primary
(FMR, threshold) mode of ``evaluate.primary`` is the one the verdict is given for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.columns import REFERENCE_DETECTOR
from aikd.evaluation.settings import PrimaryMode
from aikd.evaluation.tables import (
    bt_pairs,
    mode_rows,
    significant_differences,
    to_markdown,
    win_share,
)

__all__ = ["headline_metrics", "json_number", "summary_text"]


def json_number(value: Any) -> float | None:
    """JSON has no NaN: an undefined number is written as null."""
    v = float(value)
    return v if math.isfinite(v) else None


def _mean_pauc_tree(main: pd.DataFrame) -> dict[str, dict[str, dict[str, float | None]]]:
    """{method: {variant: {detector: mean pAUC over benchmarks (and FR models)}}}."""
    tree: dict[str, dict[str, dict[str, float | None]]] = {}
    means = main.groupby(["method", "variant", "detector"], sort=False)["pauc"].mean()
    for (method, variant, det), value in means.items():
        tree.setdefault(str(method), {}).setdefault(str(variant), {})[str(det)] = (
            json_number(value)
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
    cells = bt_pairs(mode_rows(results, fmr, threshold), misaligned_only=True)
    cells = cells[cells["delta"].notna()]
    where = f"At FMR {fmr:g} with the {threshold} threshold"
    if cells.empty:
        return f"{where} there are no misaligned cells with both B and T results.\n"
    n, wins = len(cells), int((cells["delta"] < 0).sum())
    d = cells["delta"]
    main_sig = mode_rows(sig, fmr, threshold)
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
    rnd = mode_rows(results, fmr, threshold, method="random")
    sd = (rnd["pauc_high"] - rnd["pauc_low"]) / 2.0
    sd = sd[np.isfinite(sd)]
    if not sd.empty:
        text += (
            f" Random qualities, which can only help by chance, spread with an SD of up to "
            f"{sd.max():.3f} pAUC (median {sd.median():.3f}) over seeds, so a difference "
            f"smaller than about {2 * sd.median():.3f} is noise whatever the test says."
        )
    return text + "\n"


def summary_text(
    results: pd.DataFrame,
    misaligned: list[str],
    differences: pd.DataFrame | None,
    fr_models: Sequence[str],
    detectors: Sequence[str],
    missing: list[str],
    primary: PrimaryMode,
) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``summary.md`` and the tallies it is made of: (text, win share on misaligned
    detectors, win share on the reference alignment, significant B-vs-T differences)."""
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
        _noise_paragraph(results, sig, test_name, primary.fmr, primary.threshold),
        "\n## Share of cells where T beats B (misaligned detectors)\n\n",
        _md_frame(ws_mis),
    ]
    if not ws_ref.empty:
        out += ["\n## Share of cells where T beats B (reference alignment)\n\n", _md_frame(ws_ref)]
    out += [f"\n## Significant B-vs-T differences ({test_name})\n\n"]
    cols = ["fmr", "threshold", "fr_model", "detector", "benchmark", "method", "pauc_B",
            "pauc_T", "delta", "better"]
    out.append(_md_frame(sig[cols]))
    rnd = mode_rows(results, primary.fmr, primary.threshold, method="random")
    if not rnd.empty:
        noise = rnd.assign(sd=(rnd["pauc_high"] - rnd["pauc_low"]) / 2.0)
        noise = noise[["fr_model", "detector", "benchmark", "pauc", "sd"]]
        out += [f"\n## Noise floor: random quality, mean and SD over seeds "
                f"(FMR {primary.fmr:g}, {primary.threshold} threshold)\n\n",
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


def headline_metrics(
    results: pd.DataFrame,
    ws_mis: pd.DataFrame,
    sig: pd.DataFrame,
    fr_models: Sequence[str],
    primary: PrimaryMode,
) -> dict[str, Any]:
    """``metrics/evaluation.json``: win share of T, significant differences and mean pAUC.

    ``aikd_win_share`` is the share of misaligned cells with pAUC(T) < pAUC(B) in the
    primary mode; ``win_share`` has it for every mode.
    """
    main_ws = mode_rows(ws_mis, primary.fmr, primary.threshold)
    main_sig = mode_rows(sig, primary.fmr, primary.threshold)
    main_sig = main_sig[main_sig["detector"] != REFERENCE_DETECTOR]
    main = mode_rows(results, primary.fmr, primary.threshold)
    # "fmr_1e-03" (not naming.fmr_tag's "1e-3"): the key metrics/evaluation.json has always had.
    metrics: dict[str, Any] = {
        "aikd_win_share": json_number(main_ws["win_share"].iloc[0]) if len(main_ws) else None,
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
        metrics["win_share"][f"fmr_{r.fmr:.0e}"][r.threshold] = json_number(r.win_share)
    return metrics
