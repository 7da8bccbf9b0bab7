"""The written report: tables (CSV + Markdown), EDC figures, summary and metrics.

The evaluate stage (``aikd.evaluation.stage``) computes the long results frame described
in ``aikd.evaluation.tables``; ``write_report`` turns it into files, and ``report_stage``
is the DVC stage `report` that calls it. The stage lives here, not in ``stage.py``, so
that editing the report re-runs only `report`, never the evaluation.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.config import section
from aikd.evaluation.columns import CONTEXT_VARIANT
from aikd.evaluation.settings import PrimaryMode, evaluate_settings
from aikd.evaluation.summary import headline_metrics, summary_text
from aikd.evaluation.tables import (
    check_results,
    combined_misaligned_table,
    fnmr0_table,
    interval_table,
    misaligned_footer,
    mode_order,
    mode_rows,
    pauc_table,
    seed_means,
    seed_spread_table,
    to_markdown,
)

__all__ = ["CURVE_KEYS", "benchmarks_table", "cross_model_note", "evaluated_networks",
           "report_stage", "write_benchmarks", "write_report"]

CURVE_KEYS = ["fr_model", "detector", "benchmark", "method", "variant"]
CurveKey = tuple[str, str, str, str, str]  # fr_model, detector, benchmark, method, variant


def _slug(text: str) -> str:
    """File-name-safe component (detector or model names may contain '/' or spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _mode_title(fmr: float, threshold: str, primary: PrimaryMode) -> str:
    is_primary = math.isclose(fmr, primary.fmr) and threshold == primary.threshold
    label = (" (primary)" if is_primary else
             " (secondary: point estimates only, no intervals)")
    return f"FMR {fmr:g}, {threshold} threshold{label}"


def _csv_block(table: pd.DataFrame, footer: pd.DataFrame | None, fmr: float,
               threshold: str) -> pd.DataFrame:
    """One table in long-wide CSV form: fmr, threshold, metric, method, variant, columns."""
    body = table.reset_index()
    body.insert(0, "metric", "pauc")
    parts = [body]
    if footer is not None:
        foot = footer.reset_index(names="method")
        names = {"FNMR(0)": "fnmr0", "failing mated pairs": "n_fail0", "pairs": "n_pairs",
                 "random low": "random_low", "random high": "random_high",
                 "FNMR(0) (mean)": "fnmr0_mean",
                 "failing mated pairs (fewest)": "n_fail0_min",
                 "pairs (fewest)": "n_pairs_min", "random low (lowest)": "random_low_min",
                 "random high (highest)": "random_high_max"}
        foot.insert(0, "metric", foot["method"].map(names).fillna(foot["method"]))
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
    "for the training alignment; C: consistency only; T: alignment-invariant (AI-KD). "
    "Context rows (variant -): `none` = no quality (1 by definition), `random` = mean over "
    "random qualities (one draw per image). Footer (the noise floor): *FNMR(0)* is the "
    "error before discarding, *failing mated pairs* the errors it rests on, *pairs* the "
    "pairs scored, *random low/high* the 2.5-97.5 % range of the random qualities' pAUC "
    "(under the misaligned mean: the mean FNMR(0), and the fewest failures and widest "
    "random range over those detectors). Only the primary setting has intervals (person-"
    "level bootstrap, shown under its table); the secondary ones are point estimates.\n"
)


def _write_table_pair(blocks: list[pd.DataFrame], md: list[str], base: Path) -> list[Path]:
    """``<base>.csv`` (all modes stacked) and ``<base>.md``; nothing if no mode had rows."""
    if not blocks:
        return []
    pd.concat(blocks, ignore_index=True).to_csv(base.with_suffix(".csv"), index=False)
    base.with_suffix(".md").write_text("".join(md))
    return [base.with_suffix(".csv"), base.with_suffix(".md")]


def _write_cell_tables(results: pd.DataFrame, fr: str, det: str, rep: Path,
                       primary: PrimaryMode) -> list[Path]:
    blocks, md = [], [f"# pAUC: {fr} / {det}\n\n", _PREAMBLE]
    for fmr, mode in mode_order(results):
        if mode_rows(results, fmr, mode, fr_model=fr, detector=det).empty:
            continue
        table = pauc_table(results, fr, det, fmr=fmr, threshold=mode)
        footer = fnmr0_table(results, fr, det, fmr=fmr, threshold=mode)
        md += [f"\n## {_mode_title(fmr, mode, primary)}\n\n",
               to_markdown(table, footer=footer)]
        blocks.append(_csv_block(table, footer, fmr, mode))
        ci = interval_table(results, fr, det, fmr=fmr, threshold=mode)
        ci = ci[[m != "none" for m, _ in ci.index]]
        methods = ci[[v != CONTEXT_VARIANT for _, v in ci.index]]
        if (methods != "").to_numpy().any():  # the primary setting
            md += ["\n95 % intervals (bootstrap; random: over seeds):\n\n",
                   to_markdown(ci, mark_best=False)]
        spread = seed_spread_table(results, fr, det, fmr=fmr, threshold=mode)
        if not spread.empty:
            md += ["\nSeed spread of the trained variants' means above (SD over training "
                   "seeds, min-max, number of seeds):\n\n", to_markdown(spread, mark_best=False)]
    return _write_table_pair(blocks, md, rep / f"pauc_{_slug(fr)}_{_slug(det)}")


def _write_misaligned_tables(
    results: pd.DataFrame, fr: str, misaligned: list[str], rep: Path, primary: PrimaryMode,
    reference: str,
) -> list[Path]:
    blocks = []
    md = [f"# pAUC: {fr}, mean over misaligned detectors\n\n",
          f"Detectors: {', '.join(misaligned)} (every detector but `{reference}`, the "
          "training alignment). A cell missing for any of them is left empty.\n", _PREAMBLE]
    for fmr, mode in mode_order(results):
        sub = mode_rows(results, fmr, mode, fr_model=fr)
        if sub[sub["detector"].isin(misaligned)].empty:
            continue
        table = combined_misaligned_table(results, misaligned, reference=reference,
                                          fr_model=fr, fmr=fmr, threshold=mode)
        footer = misaligned_footer(results, misaligned, reference=reference, fr_model=fr,
                                   fmr=fmr, threshold=mode)
        md += [f"\n## {_mode_title(fmr, mode, primary)}\n\n",
               to_markdown(table, footer=footer)]
        blocks.append(_csv_block(table, footer, fmr, mode))
    return _write_table_pair(blocks, md, rep / f"pauc_{_slug(fr)}_misaligned")


def _write_figures(
    results: pd.DataFrame,
    curves: Mapping[CurveKey, pd.DataFrame],
    fr_models: Sequence[str],
    detectors: Sequence[str],
    rep: Path,
    primary: PrimaryMode,
) -> list[Path]:
    """One EDC figure per (fr_model, detector, benchmark): context lines, then B and T.

    The curves were computed in the primary mode (by the evaluate stage), so are the
    pAUCs in the legend."""
    from aikd.evaluation.plots import plot_edc  # matplotlib costs ~1 s; only load it here

    groups: dict[tuple[str, str, str], list[CurveKey]] = {}
    for key in curves:
        fr, det, bench, _, _ = key
        if fr in fr_models and det in detectors:
            groups.setdefault((fr, det, bench), []).append(key)
    fmr, threshold = primary.fmr, primary.threshold
    main = mode_rows(results, fmr, threshold)
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
        title = f"{fr} / {det} / {bench} (primary: {threshold} threshold)"
        written.append(plot_edc(lines, path, title, fmr, paucs=paucs))
    return written


def benchmarks_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per benchmark: identities, pairs, identity-disjointness, FNMR(0) per alignment.

    ``n_identities`` is -1 where the pairs name no people; ``identity_disjoint`` is True
    for benchmarks whose pairs all lie in the test split (the evaluate stage records it).
    ``fnmr0_<fmr>_<detector>`` / ``n_fail0_<fmr>_<detector>``: FNMR before discarding and
    the failing mated pairs it rests on (FMR spelled as ``naming.fmr_tag``), from the
    ``none`` rows (every method of a cell shares the pairs).
    """
    from aikd.naming import fmr_tag

    rows = []
    none = results[results["method"] == "none"] if (results["method"] == "none").any() \
        else results
    for bench in pd.unique(results["benchmark"]):
        sub = none[none["benchmark"] == bench]
        first = sub.iloc[0]
        row: dict[str, Any] = {
            "benchmark": bench,
            "n_identities": int(first["n_identities"]) if "n_identities" in sub else -1,
            "n_mated": int(first["n_mated"]) if "n_mated" in sub else -1,
            "n_nonmated": int(first["n_nonmated"]) if "n_nonmated" in sub else -1,
            "identity_disjoint": bool(first["identity_disjoint"])
            if "identity_disjoint" in sub else False,
        }
        for fmr in sorted({float(f) for f in sub["fmr"]}):
            at = sub[np.isclose(sub["fmr"].to_numpy(dtype=np.float64), fmr, rtol=1e-6)]
            for det in pd.unique(at["detector"]):
                r = at[at["detector"] == det].iloc[0]
                row[f"fnmr0_{fmr_tag(fmr)}_{det}"] = float(r["fnmr0"])
                if "n_fail0" in at.columns:
                    row[f"n_fail0_{fmr_tag(fmr)}_{det}"] = int(r["n_fail0"])
        rows.append(row)
    return pd.DataFrame(rows)


def write_benchmarks(results: pd.DataFrame, rep: Path, suffix: str = "") -> list[Path]:
    """``benchmarks<suffix>.csv`` and ``.md`` (see ``benchmarks_table``)."""
    table = benchmarks_table(results)
    csv, md = rep / f"benchmarks{suffix}.csv", rep / f"benchmarks{suffix}.md"
    table.to_csv(csv, index=False)
    md.write_text("# Benchmarks\n\nIdentities, pairs and FNMR before discarding (with the "
                  "failing mated pairs it rests on) per FMR and alignment. identity_disjoint: "
                  "every pair lies in the test split, whose people no model was trained "
                  "on.\n\n" + to_markdown(table.set_index("benchmark"), mark_best=False,
                                              decimals=4))
    return [csv, md]


def _log_mlflow(written: dict[str, Path], results: pd.DataFrame, metrics: dict,
                primary: PrimaryMode, prefix: str = "") -> None:
    """Log to the active MLflow run, if any; never imports MLflow just to find out."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    for rel, path in written.items():
        parent = str(Path(rel).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)
    flat = {}
    for key in ("aikd_win_share", "win_share_p_value", "aikd_win_share_t_vs_c",
                "win_share_p_value_t_vs_c"):
        if metrics.get(key) is not None:
            flat[key] = metrics[key]
    for key in ("significant_after_holm", "significant_after_holm_t_vs_c"):
        for better, n in metrics.get(key, {}).items():
            flat[f"{key}/{better}"] = n
    for r in mode_rows(results, primary.fmr, primary.threshold).itertuples(index=False):
        if np.isfinite(r.pauc):
            name = r.method if r.variant == CONTEXT_VARIANT else f"{r.method}_{r.variant}"
            key = "/".join(_slug(x) for x in (r.fr_model, r.detector, r.benchmark, name))
            flat[f"pauc/{key}"] = float(r.pauc)
    mlflow.log_metrics({(f"{prefix}/{k}" if prefix and not k.startswith("pauc/") else k): v
                        for k, v in flat.items()})


def write_report(
    results: pd.DataFrame,
    curves: Mapping[CurveKey, pd.DataFrame],
    out_dir: str | Path,
    *,
    fr_models: Sequence[str],
    detectors: Sequence[str],
    primary: PrimaryMode,
    reference: str,
    differences: pd.DataFrame | None = None,
    reports_subdir: str = "reports",
    suffix: str = "",
    extra_metrics: Mapping[str, Any] | None = None,
    metrics_out: dict[str, Any] | None = None,
    summary_tail: str = "",
) -> dict[str, Path]:
    """Write every table, figure, the summary and the metrics; return {relative path: path}.

    Under ``out_dir``: ``reports/pauc_<fr>_<detector>.csv|.md`` (all FMR x threshold modes,
    FNMR(0) footer), ``reports/pauc_<fr>_misaligned.csv|.md``, ``reports/edc/<fr>_<det>_
    <benchmark>.png`` (from ``curves``, keyed (fr_model, detector, benchmark, method,
    variant), computed in the ``primary`` mode), ``reports/results_long.csv``,
    ``reports/summary.md`` and ``metrics/evaluation.json``. ``primary`` (params
    ``evaluate.primary``) is the (FMR, threshold) mode of the headline numbers, e.g.
    ``aikd_win_share``: the share of misaligned cells with pAUC(T) < pAUC(B).
    ``reference`` (params ``landmarks.training_detector``) is the alignment the models were
    trained on; every other detector is misaligned. ``reports/benchmarks.csv|.md`` has one
    row per benchmark (identities, pairs, FNMR(0) and its failing pairs per FMR and
    alignment). ``differences`` (optional, paired bootstrap per cell: T-B and T-C with
    p-values) sharpens the significance test and gives the Holm-corrected counts.
    ``reports_subdir`` renames ``reports/`` (the DVC stage writes ``reports/evaluation``
    so that its output directory does not overlap other stages' reports).
    Results may carry an ``n_dropped`` column (pairs lost to missing faces); it is shown.
    ``suffix`` (a cross-model network's report, ``_<network>``) names the summary,
    benchmarks and long tables ``summary<suffix>.md`` etc.; its metrics go to
    ``metrics_out`` (a dict filled in place), not to a file. ``extra_metrics`` are added
    to ``metrics/evaluation.json`` (the cross-model block), ``summary_tail`` to the end of
    the summary.
    """
    check_results(results)
    results = results[results["fr_model"].isin(fr_models) & results["detector"].isin(detectors)]
    long, results = results, seed_means(results)
    diff_long = differences
    if differences is not None:
        differences = seed_means(differences)
    if results.empty:
        raise ValueError(f"no results for FR models {list(fr_models)} and detectors "
                         f"{list(detectors)}")
    out = Path(out_dir)
    rep, met = out / reports_subdir, out / "metrics"
    rep.mkdir(parents=True, exist_ok=True)
    met.mkdir(parents=True, exist_ok=True)
    misaligned = [d for d in detectors if d != reference]
    paths, missing = _write_tables(results, fr_models, detectors, misaligned, rep, primary,
                                   reference)
    paths += write_benchmarks(results, rep, suffix)
    paths += _write_figures(results, curves, fr_models, detectors, rep, primary)
    long_path = rep / f"results_long{suffix}.csv"
    long.to_csv(long_path, index=False)
    paths.append(long_path)
    if diff_long is not None:
        diff_path = rep / f"differences_long{suffix}.csv"
        diff_long.to_csv(diff_path, index=False)
        paths.append(diff_path)

    text, tallies = summary_text(results, misaligned, differences, fr_models, detectors,
                                 missing, primary, reference)
    summary_path = rep / f"summary{suffix}.md"
    summary_path.write_text(text + summary_tail)
    paths.append(summary_path)

    metrics = headline_metrics(results, tallies, fr_models, primary, reference)
    metrics.update(seed_metrics(long))
    metrics.update(extra_metrics or {})
    if metrics_out is not None:
        metrics_out.update(metrics)
    if not suffix:
        metrics_path = met / "evaluation.json"
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
        paths.append(metrics_path)

    written = {p.relative_to(out).as_posix(): p for p in paths}
    _log_mlflow(written, results, metrics, primary, prefix=suffix.strip("_"))
    return written


#: What metrics/evaluation.json's numbers of trained variants are, when they have seeds.
SEED_AGGREGATION = {
    "pauc": "mean over training seeds (seed spread: reports/evaluation/pauc_*.md, "
            "results_long.csv rows with a seed)",
    "differences": "seed-mean of per-seed paired differences: T and B (C) of the same "
                   "training seed on the same resamples of people, averaged over seeds; "
                   "win shares, sign tests and Holm count the seed-mean differences",
}


def seed_metrics(results: pd.DataFrame) -> dict[str, Any]:
    """``train_seeds`` (the seeds in the results), ``n_seeds`` (most seeds behind one
    seed-mean row) and, when there are seeds, ``aggregation`` (``SEED_AGGREGATION``):
    what the headline numbers average. Nothing for results without seeds."""
    if "seed" not in results.columns or results["seed"].isna().all():
        return {}
    seeds = sorted(int(s) for s in pd.unique(results["seed"].dropna()))
    n = results["n_seeds"].dropna() if "n_seeds" in results.columns else pd.Series([])
    return {"train_seeds": seeds, "n_seeds": int(n.max()) if len(n) else len(seeds),
            "aggregation": SEED_AGGREGATION}


def _write_tables(
    results: pd.DataFrame,
    fr_models: Sequence[str],
    detectors: Sequence[str],
    misaligned: list[str],
    rep: Path,
    primary: PrimaryMode,
    reference: str,
) -> tuple[list[Path], list[str]]:
    """Per-(FR model, detector) and misaligned-mean tables; also the pairs without results."""
    present = set(zip(results["fr_model"], results["detector"], strict=True))
    paths: list[Path] = []
    missing = []
    for fr in fr_models:
        for det in detectors:
            if (fr, det) not in present:
                missing.append(f"{fr}/{det}")
                continue
            paths += _write_cell_tables(results, fr, det, rep, primary)
        with_results = [d for d in misaligned if (fr, d) in present]  # missing: in summary
        if with_results:
            paths += _write_misaligned_tables(results, fr, with_results, rep, primary,
                                              reference)
    return paths, missing


def report_stage(params: Mapping[str, Any]) -> dict[str, Path]:
    """DVC stage `report`: tables (CSV + Markdown), EDC PNGs, summary and
    metrics/evaluation.json from the evaluate stage's output, logged to MLflow."""
    import mlflow

    from aikd.distill.learnability import learnability_table, write_learnability
    from aikd.tracking import stage_run

    settings = evaluate_settings(params)
    src = Path(settings.out_dir)
    results = pd.read_parquet(src / "results.parquet")
    curve_frame = seed_means(pd.read_parquet(src / "curves.parquet"))  # seed-mean curves
    curve_frame = curve_frame.drop(columns=[c for c in ("seed",) if c in curve_frame.columns])
    diffs = pd.read_parquet(src / "differences.parquet")
    curves = {tuple(str(v) for v in key): g.drop(columns=CURVE_KEYS).reset_index(drop=True)
              for key, g in curve_frame.groupby(CURVE_KEYS, sort=False)}
    main_fr = str(section(params, "embed")["backbone"])
    evaluated = evaluated_networks(src, main_fr)
    common = {"detectors": settings.detectors_of(params), "primary": settings.primary,
              "reference": settings.training_detector(params),
              "differences": diffs if len(diffs) else None,
              "reports_subdir": settings.reports_dir}
    with stage_run("report", params, run_name="report",
                   log_params={"evaluate": section(params, "evaluate")}):
        cross: dict[str, Any] = {}
        written: dict[str, Path] = {}
        for fr in evaluated["evaluated"]:
            if fr == main_fr:
                continue
            cross[fr] = {"evaluated": True}
            written.update(write_report(results, curves, ".", fr_models=[fr],
                                        suffix=f"_{_slug(fr)}", metrics_out=cross[fr],
                                        **common))
        for fr, reason in evaluated["not_evaluated"].items():
            cross[fr] = {"evaluated": False, "reason": reason}
        extra = {"fr_model": main_fr, "cross_model": cross} if cross else {"fr_model": main_fr}
        written.update(write_report(results, curves, ".", fr_models=[main_fr],
                                    extra_metrics=extra,
                                    summary_tail=cross_model_note(main_fr, cross,
                                                                  settings.primary),
                                    **common))
        distill = params.get("distill") or {"runs": {}, "out_dir": "models"}
        table = learnability_table(distill["runs"], distill["out_dir"],
                                   seeds=params.get("train_seeds"))
        for path in write_learnability(table, settings.reports_dir) if len(table) else []:
            written[path.as_posix()] = path
            mlflow.log_artifact(str(path))
    print((Path(settings.reports_dir) / "summary.md").read_text())
    return written


def evaluated_networks(evaluation_dir: str | Path, main: str) -> dict[str, Any]:
    """The evaluate stage's ``fr_models.json`` ({evaluated: [...], not_evaluated: {net:
    why}}); results written before it existed are of ``main`` alone."""
    path = Path(evaluation_dir) / "fr_models.json"
    if not path.is_file():
        return {"evaluated": [main], "not_evaluated": {}}
    return json.loads(path.read_text())


def cross_model_note(main: str, cross: Mapping[str, Mapping[str, Any]],
                     primary: PrimaryMode) -> str:
    """The end of summary.md: each cross-model network's T-vs-B verdict in the primary
    setting (its own summary and tables: ``summary_<network>.md``, ``pauc_<network>_*``),
    or why it was not evaluated."""
    lines = ["", "## Cross-model evaluation", "",
             f"The quality models were trained against {main}; the tables above compare "
             f"pairs with {main}'s scores. Below, the same quality scores rank the pairs as "
             "another FR network compares them (the faces aligned to that network's own "
             "template from the same detector's landmarks).", ""]
    if not cross:
        lines.append("No cross-model network is configured (params `cross_model.backbones`).")
    for fr, m in cross.items():
        if not m.get("evaluated"):
            lines.append(f"- **{fr}**: not evaluated ({m.get('reason', 'no reason recorded')}).")
            continue
        wins, cells = m.get("aikd_wins"), m.get("aikd_cells")
        p = m.get("win_share_p_value")
        holm = m.get("significant_after_holm", {})
        text = (f"- **{fr}** (summary_{_slug(fr)}.md): at FMR {primary.fmr:g}, "
                f"{primary.threshold} threshold, T has the lower pAUC than B in {wins} of "
                f"{cells} misaligned cells")
        if p is not None:
            text += f" (one-sided sign test p = {p:.3g})"
        text += (f"; after Holm, T is better in {holm.get('T', 0)} and B in "
                 f"{holm.get('B', 0)}.")
        if m.get("aikd_cells_t_vs_c"):
            text += (f" T beats C in {m.get('aikd_wins_t_vs_c')} of "
                     f"{m.get('aikd_cells_t_vs_c')}.")
        lines.append(text)
    return "\n".join(lines) + "\n"
