"""The written summary (``summary.md``) and the headline metrics of the report.

Every number in the summary's sentences is computed from the results; the primary
(FMR, threshold) mode of ``evaluate.primary`` is the one the verdict is given for, and
every other mode is labelled secondary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.settings import PrimaryMode
from aikd.evaluation.stats import holm, sign_test
from aikd.evaluation.tables import (
    bt_pairs,
    mode_rows,
    significant_differences,
    to_markdown,
    win_share,
)

__all__ = ["headline_metrics", "holm_significance", "json_number", "summary_text",
           "win_share_tested"]


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
    results: pd.DataFrame, sig: pd.DataFrame, test_name: str, fmr: float, threshold: str,
    reference: str, baseline: str = "B", holm_frame: pd.DataFrame | None = None,
) -> str:
    """The verdict in words, every number taken from the results."""
    cells = bt_pairs(mode_rows(results, fmr, threshold), misaligned_only=True,
                     reference=reference, baseline=baseline)
    cells = cells[cells["delta"].notna()]
    where = f"At FMR {fmr:g} with the {threshold} threshold (primary setting)"
    if cells.empty:
        return (f"{where} there are no misaligned cells with both {baseline} and T "
                "results.\n")
    n, wins = len(cells), int((cells["delta"] < 0).sum())
    d = cells["delta"]
    main_sig = mode_rows(sig, fmr, threshold)
    main_sig = main_sig[main_sig["detector"] != reference]
    k_t = int((main_sig["better"] == "T").sum())
    k_b = int((main_sig["better"] == baseline).sum())
    text = (
        f"{where}, T has the lower pAUC than {baseline} in {wins} of {n} misaligned (FR "
        f"model, method, detector, benchmark) cells ({wins / n:.0%}; one-sided sign test "
        f"p = {sign_p(wins, n):.3g}). The difference T - {baseline} has median "
        f"{d.median():+.3f} (from {d.min():+.3f} to {d.max():+.3f}). "
        f"{k_t + k_b} of the {n} differences exceed the noise ({test_name}, uncorrected): "
        f"T is better in {k_t} and {baseline} in {k_b}; the other {n - k_t - k_b} are within "
        "the bootstrap uncertainty, so their sign should not be read as a result."
    )
    if holm_frame is not None and len(holm_frame):
        h = holm_frame[holm_frame["baseline"] == baseline]
        if len(h):
            text += (f" After Holm's correction over these {len(h)} cells, T is better in "
                     f"{int((h['better'] == 'T').sum())} and {baseline} in "
                     f"{int((h['better'] == baseline).sum())} (familywise alpha 0.05).")
    widths = pd.concat([cells[f"high_{baseline}"] - cells[f"low_{baseline}"],
                        cells["high_T"] - cells["low_T"]])
    widths = widths[np.isfinite(widths)]
    if widths.empty:
        text += " No bootstrap intervals were computed (n_boot = 0), so no test was possible."
    else:
        text += f" The median interval width is {widths.median():.3f} pAUC."
    rnd = mode_rows(results, fmr, threshold, method="random")
    sd = rnd["pauc_std"] if "pauc_std" in rnd.columns else (
        rnd["pauc_high"] - rnd["pauc_low"]) / 2.0
    sd = sd[np.isfinite(sd)]
    if not sd.empty and baseline == "B":
        text += (
            f" Random qualities, which can only help by chance, spread with an SD of up to "
            f"{sd.max():.3f} pAUC (median {sd.median():.3f}) over seeds, so a difference "
            f"smaller than about {2 * sd.median():.3f} is noise whatever the test says."
        )
    return text + "\n"


def sign_p(wins: int, n: int) -> float:
    return sign_test(wins, n) if n else math.nan


def win_share_tested(results: pd.DataFrame, *, reference: str, baseline: str) -> pd.DataFrame:
    """``tables.win_share`` on the misaligned detectors plus ``sign_p``: the one-sided
    sign-test p-value of so many wins if T and the baseline were equally likely to win a
    cell (cells share methods and people, so they are not independent: read it as a guide).
    """
    ws = win_share(results, misaligned_only=True, reference=reference, baseline=baseline)
    return ws.assign(sign_p=[sign_p(int(w), int(n)) for w, n in
                             zip(ws["n_wins"], ws["n_cells"], strict=True)])


def holm_significance(differences: pd.DataFrame, *, fmr: float, threshold: str,
                      reference: str, alpha: float = 0.05) -> pd.DataFrame:
    """The paired differences of one mode on the misaligned detectors, Holm-corrected.

    ``differences`` has one row per cell and comparison (``baseline`` B or C, absent: B)
    with ``delta`` and ``p_value`` (two-sided, bootstrap-SE z-test). The family is every misaligned
    cell of one comparison: Holm's step-down adjustment is applied per ``baseline``.
    Adds ``p_holm`` and ``better`` (``T``, the baseline, or ``-`` when p_holm >= alpha).
    """
    d = mode_rows(differences, fmr, threshold)
    d = d[d["detector"] != reference].copy()
    if "baseline" not in d.columns:
        d["baseline"] = "B"
    d["p_holm"] = np.nan
    for _, idx in d.groupby("baseline").groups.items():
        d.loc[idx, "p_holm"] = holm(d.loc[idx, "p_value"].to_numpy(dtype=np.float64))
    sig = d["p_holm"] < alpha
    d["better"] = np.where(sig & (d["delta"] < 0), "T",
                           np.where(sig & (d["delta"] > 0), d["baseline"], "-"))
    return d.reset_index(drop=True)


def _setting(frame: pd.DataFrame, primary: PrimaryMode) -> pd.DataFrame:
    """A ``setting`` column: primary for ``evaluate.primary``, secondary otherwise."""
    is_primary = (np.isclose(frame["fmr"].to_numpy(dtype=np.float64), primary.fmr, rtol=1e-6)
                  & (frame["threshold"] == primary.threshold).to_numpy())
    out = frame.copy()
    out.insert(0, "setting", np.where(is_primary, "primary", "secondary"))
    return out


def _has_variant(results: pd.DataFrame, variant: str) -> bool:
    return bool((results["variant"] == variant).any())


def _seeds_paragraph(results: pd.DataFrame) -> list[str]:
    """What a trained variant's number is when it was trained with several seeds."""
    if "n_seeds" not in results.columns or results["n_seeds"].isna().all():
        return []
    n = sorted({int(v) for v in results["n_seeds"].dropna()})
    count = str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"
    return [f"\nTrained variants (B, C, T): the mean over {count} training seeds (params "
            "`train_seeds`); their spread over seeds is under each per-detector table and "
            "their per-seed rows in results_long.csv. T-B and T-C are paired by seed (T and "
            "B or C of the same seed, on the same resamples of people) and averaged over "
            "seeds; every count, sign test and Holm correction below is of these seed-mean "
            "differences, whose intervals cover the sampling of people (the per-seed "
            "differences: differences_long.csv; `seed_sd`, `seed_min`, `seed_max`: their "
            "spread).\n"]


def summary_text(
    results: pd.DataFrame,
    misaligned: list[str],
    differences: pd.DataFrame | None,
    fr_models: Sequence[str],
    detectors: Sequence[str],
    missing: list[str],
    primary: PrimaryMode,
    reference: str,
) -> tuple[str, dict[str, Any]]:
    """``summary.md`` and the tallies it is made of: {"win_share": {baseline: win share on
    misaligned detectors}, "win_share_reference": ..., "significant": {baseline: frame},
    "holm": Holm-corrected paired differences (primary setting, misaligned cells)}."""
    baselines = [b for b in ("B", "C") if _has_variant(results, b)] or ["B"]
    ws = {b: win_share_tested(results, reference=reference, baseline=b) for b in baselines}
    ref = results[results["detector"] == reference]
    ws_ref = (win_share(ref, misaligned_only=False, baseline="B") if not ref.empty
              else ws["B"].iloc[0:0] if "B" in ws else pd.DataFrame())
    sig = {b: significant_differences(results, differences=differences, baseline=b)
           for b in baselines}
    holm_frame = (holm_significance(differences, fmr=primary.fmr, threshold=primary.threshold,
                                    reference=reference)
                  if differences is not None and "p_value" in differences.columns
                  else pd.DataFrame())
    out = [
        "# FIQA evaluation summary\n\n",
        f"FR models: {', '.join(fr_models)}. Detectors: {', '.join(detectors)} "
        f"(training alignment: {reference}; misaligned: {', '.join(misaligned) or 'none'}). "
        f"Benchmarks: {', '.join(map(str, pd.unique(results['benchmark'])))}. "
        f"Primary setting: FMR {primary.fmr:g}, {primary.threshold} threshold (declared in "
        "params before looking); every other setting is secondary and shown with point "
        "estimates only.\n",
    ]
    boot = set(results.get("bootstrap", pd.Series(dtype=str)).dropna()) - {"none", "seeds"}
    if boot:
        kinds = {"person": "people (drawn with replacement; a mated pair counts as often as "
                           "its person was drawn, a non-mated pair as the product of its two "
                           "people's draws)",
                 "pair": "pairs (the pairs name no people: narrower than it should be)"}
        out.append("\nIntervals (primary setting only): percentile bootstrap over "
                   + " and over ".join(kinds.get(k, k) for k in sorted(boot)) + ".\n")
    out += _seeds_paragraph(results)
    if missing:
        out.append(f"\nNo results for: {', '.join(missing)}.\n")
    out += ["\n## Which differences exceed the noise\n\n"]
    for b in baselines:
        test_name = (sig[b]["test"].iloc[0] if not sig[b].empty else
                     f"paired bootstrap of pauc_T - pauc_{b} excludes 0"
                     if differences is not None else f"{b} and T intervals do not overlap")
        out += [_noise_paragraph(results, sig[b], test_name, primary.fmr, primary.threshold,
                                 reference, baseline=b, holm_frame=holm_frame), "\n"]
    for b in baselines:
        out += [f"\n## Share of cells where T beats {b} (misaligned detectors)\n\n",
                "`sign_p`: one-sided sign test of the wins against 1/2.\n\n",
                _md_frame(_setting(ws[b], primary).set_index("setting").reset_index())]
    if not ws_ref.empty:
        out += ["\n## Share of cells where T beats B (training alignment)\n\n",
                _md_frame(_setting(ws_ref, primary))]
    if len(holm_frame):
        out += ["\n## Paired differences, Holm-corrected (primary setting, misaligned "
                "detectors; family = the cells of one comparison)\n\n"]
        cols = ["baseline", "fr_model", "detector", "benchmark", "method", "delta",
                "delta_low", "delta_high", "p_value", "p_holm", "better"]
        cols += [c for c in ("n_seeds", "seed_sd", "seed_min", "seed_max")
                 if c in holm_frame.columns and holm_frame[c].notna().any()]
        out.append(_md_frame(holm_frame[cols], decimals=4))
    for b in baselines:
        s_b = sig[b]
        test_name = s_b["test"].iloc[0] if not s_b.empty else ""
        out += [f"\n## Significant {b}-vs-T differences, uncorrected ({test_name or 'none'})"
                "\n\n"]
        cols = ["fmr", "threshold", "fr_model", "detector", "benchmark", "method",
                f"pauc_{b}", "pauc_T", "delta", "better"]
        out.append(_md_frame(_setting(s_b[cols], primary) if len(s_b) else s_b))
    rnd = mode_rows(results, primary.fmr, primary.threshold, method="random")
    if not rnd.empty:
        cols = ["fr_model", "detector", "benchmark", "pauc", "pauc_low", "pauc_high",
                "pauc_std", "fnmr0"] + (["n_fail0"] if "n_fail0" in rnd.columns else [])
        out += ["\n## Noise floor: random quality, one draw per image (mean, 2.5-97.5 % over "
                f"seeds, SD), primary setting (FMR {primary.fmr:g}, {primary.threshold} "
                "threshold)\n\n",
                "`n_fail0`: the failing mated pairs FNMR(0) rests on; a pAUC normalised by "
                "a handful of failures is noisy whatever its interval says.\n\n",
                _md_frame(rnd[cols].rename(columns={"pauc": "mean_pauc"}))]
    cov_cols = ["fr_model", "detector", "benchmark", "fmr", "fnmr0", "n_pairs"]
    cov_cols += [c for c in ("n_fail0", "n_dropped") if c in results.columns]
    cov = results[cov_cols].drop_duplicates(["fr_model", "detector", "benchmark", "fmr"])
    out += ["\n## Coverage and FNMR before discarding (every FMR; FNMR(0) does not depend "
            "on the threshold mode)\n\n",
            "Pairs where an image has no embedding (no face found) are dropped before "
            "scoring; `n_dropped` counts them when the evaluate stage reports it. "
            f"FMR {primary.fmr:g} is the primary setting's, the others secondary.\n\n",
            _md_frame(cov, decimals=4)]
    tallies = {"win_share": ws, "win_share_reference": ws_ref, "significant": sig,
               "holm": holm_frame}
    return "".join(out), tallies


def _win_block(ws: pd.DataFrame, primary: PrimaryMode) -> dict[str, Any]:
    main = mode_rows(ws, primary.fmr, primary.threshold)
    if not len(main):
        return {"win_share": None, "wins": 0, "cells": 0, "p_value": None}
    r = main.iloc[0]
    return {"win_share": json_number(r["win_share"]), "wins": int(r["n_wins"]),
            "cells": int(r["n_cells"]), "p_value": json_number(r["sign_p"])}


def _holm_counts(holm_frame: pd.DataFrame, baseline: str) -> dict[str, int]:
    if not len(holm_frame):
        return {"T": 0, baseline: 0}
    h = holm_frame[holm_frame["baseline"] == baseline]
    return {"T": int((h["better"] == "T").sum()), baseline: int((h["better"] == baseline).sum())}


def headline_metrics(
    results: pd.DataFrame,
    tallies: dict[str, Any],
    fr_models: Sequence[str],
    primary: PrimaryMode,
    reference: str,
) -> dict[str, Any]:
    """``metrics/evaluation.json``: win share of T, significant differences and mean pAUC.

    All headline numbers are in the ``primary`` setting (also written, as ``primary``):
    ``aikd_win_share`` is the share of misaligned cells with pAUC(T) < pAUC(B),
    ``win_share_p_value`` its one-sided sign-test p-value, ``significant_after_holm`` the
    cells where the paired person-bootstrap difference T - B is significant after Holm's
    correction over the misaligned cells ({T: T better, B: B better}); the ``_t_vs_c``
    keys are the same for T against C (null/zero when there is no C). ``win_share`` has
    the T-vs-B share for every setting.
    """
    ws = tallies["win_share"]
    ws_b = ws.get("B", pd.DataFrame(columns=["fmr", "threshold", "n_cells", "n_wins",
                                             "win_share", "sign_p"]))
    b = _win_block(ws_b, primary)
    c = _win_block(ws["C"], primary) if "C" in ws else _win_block(ws_b.iloc[0:0], primary)
    sig = tallies["significant"].get("B", pd.DataFrame(columns=["fmr", "threshold",
                                                                "detector", "better"]))
    main_sig = mode_rows(sig, primary.fmr, primary.threshold)
    main_sig = main_sig[main_sig["detector"] != reference]
    main = mode_rows(results, primary.fmr, primary.threshold)
    # "fmr_1e-03" (not naming.fmr_tag's "1e-3"): the key metrics/evaluation.json has always had.
    metrics: dict[str, Any] = {
        "primary": {"fmr": primary.fmr, "threshold": primary.threshold},
        "training_detector": reference,
        "aikd_win_share": b["win_share"],
        "aikd_wins": b["wins"],
        "aikd_cells": b["cells"],
        "win_share_p_value": b["p_value"],
        "significant_misaligned": {"T": int((main_sig["better"] == "T").sum()),
                                   "B": int((main_sig["better"] == "B").sum())},
        "significant_after_holm": _holm_counts(tallies["holm"], "B"),
        "aikd_win_share_t_vs_c": c["win_share"],
        "aikd_wins_t_vs_c": c["wins"],
        "aikd_cells_t_vs_c": c["cells"],
        "win_share_p_value_t_vs_c": c["p_value"],
        "significant_after_holm_t_vs_c": _holm_counts(tallies["holm"], "C"),
        "win_share": {
            f"fmr_{r.fmr:.0e}": {} for r in ws_b.itertuples(index=False)
        },
        "mean_pauc": _mean_pauc_tree(main),
        "mean_pauc_by_fr_model": {
            str(fr): _mean_pauc_tree(main[main["fr_model"] == fr]) for fr in fr_models
            if (main["fr_model"] == fr).any()
        },
    }
    for r in ws_b.itertuples(index=False):
        metrics["win_share"][f"fmr_{r.fmr:.0e}"][r.threshold] = json_number(r.win_share)
    return metrics
