"""Print the README's result tables from what `dvc repro` wrote (no number typed by hand).

Usage: python scripts/readme_tables.py [--root DIR]

``--root`` reads a results snapshot instead of the workspace (a folder with the same
layout, e.g. ``reports/snapshots/three_seeds`` from ``scripts/snapshot_results.py``).

Reads reports/evaluation/{results_long,benchmarks,learnability}.csv,
data/evaluation/differences.parquet and reports/landmarks/alignment_fnmr.csv and prints
Markdown blocks: the benchmarks, the primary-setting pAUC per cell with its person-level
interval, the paired T-B / T-C differences, and the learnability of every run. A trained
variant's numbers are its mean over training seeds (params ``train_seeds``) with the SD
over seeds (``± sd``, docs/seeds.md); T-B / T-C are paired by seed, then averaged.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import yaml

VARIANT_ORDER = {"-": 0, "B": 1, "C": 2, "T": 3}


def _cell(p: float, lo: float, hi: float, sd: float = math.nan) -> str:
    """``0.812 ± 0.010 [0.78, 0.85]``: mean over seeds, SD over seeds, person interval."""
    if not math.isfinite(p):
        return "—"
    text = f"{p:.3f}" + (f" ± {sd:.3f}" if math.isfinite(sd) else "")
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{text} [{lo:.2f}, {hi:.2f}]"
    return text


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows without a training seed: seed means of trained variants, untrained methods."""
    return frame[frame["seed"].isna()] if "seed" in frame.columns else frame


def primary_table(results: pd.DataFrame, fmr: float, threshold: str, detectors: list[str],
                  benchmarks: list[str]) -> str:
    results = seed_means(results)
    sel = results[(results["fmr"].sub(fmr).abs() < 1e-12) & (results["threshold"] == threshold)
                  & (results["method"] != "none")]
    cols = [(b, d) for b in benchmarks for d in detectors]
    rows = sorted({(m, v) for m, v in zip(sel["method"], sel["variant"], strict=True)},
                  key=lambda mv: (mv[0] != "random", mv[0], VARIANT_ORDER.get(mv[1], 9)))
    head = "| method | variant | " + " | ".join(f"{b} {d}" for b, d in cols) + " |"
    lines = [head, "|---|---|" + "---|" * len(cols)]
    idx = sel.set_index(["method", "variant", "benchmark", "detector"])
    for m, v in rows:
        cells = []
        for b, d in cols:
            if (m, v, b, d) in idx.index:
                r = idx.loc[(m, v, b, d)]
                sd = float(r["seed_sd"]) if "seed_sd" in r.index else math.nan
                cells.append(_cell(float(r["pauc"]), float(r["pauc_low"]),
                                   float(r["pauc_high"]), sd))
            else:
                cells.append("—")
        lines.append(f"| {m} | {v} | " + " | ".join(cells) + " |")
    floor = sel[sel["method"] == "random"].set_index(["benchmark", "detector"])
    fnmr = [f"{100 * float(floor.loc[(b, d), 'fnmr0']):.1f} % ({int(floor.loc[(b, d), 'n_fail0'])})"
            if (b, d) in floor.index else "—" for b, d in cols]
    lines.append("| *FNMR(0) (failing mated pairs)* | | " + " | ".join(fnmr) + " |")
    return "\n".join(lines)


def differences_table(diffs: pd.DataFrame, fmr: float, threshold: str,
                      training: str) -> str:
    diffs = seed_means(diffs)  # seed mean of the per-seed paired differences
    sel = diffs[(diffs["fmr"].sub(fmr).abs() < 1e-12) & (diffs["threshold"] == threshold)
                & (diffs["detector"] != training)].copy()
    keep = [c for c in ("baseline", "method", "benchmark", "detector", "delta", "delta_low",
                        "delta_high", "p_value", "n_seeds", "seed_sd", "seed_min", "seed_max")
            if c in sel.columns]
    sel = sel[keep].sort_values([c for c in ("baseline", "method", "benchmark", "detector")
                                 if c in sel.columns])
    return sel.to_markdown(index=False, floatfmt=".3f")


def win_counts_table(diffs: pd.DataFrame, fmr: float, threshold: str,
                     training: str) -> str:
    """How often T is the lower (better) pAUC in the misaligned cells, per FR network,
    baseline (B, C) and method, from the seed means and from each seed: the README's
    "T < B in k of n" sentences. ``beyond`` counts cells whose person-level interval of
    the seed-mean difference excludes 0 (uncorrected), for each side."""
    sel = diffs[(diffs["fmr"].sub(fmr).abs() < 1e-12) & (diffs["threshold"] == threshold)
                & (diffs["detector"] != training)]
    lines = ["| FR network | T vs | method | T lower (seed means) | T better beyond interval "
             "| baseline better beyond interval | median T − baseline | range | T lower per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (net, base), group in sel.groupby(["fr_model", "baseline"], sort=False):
        for method in [*sorted(group["method"].unique()), "all"]:
            g = group if method == "all" else group[group["method"] == method]
            means = seed_means(g)
            per_seed = g[g["seed"].notna()] if "seed" in g.columns else g.iloc[:0]
            seeds = ", ".join(f"s{int(s)}: {int((x['delta'] < 0).sum())}"
                              for s, x in per_seed.groupby("seed"))
            lines.append(
                f"| {net} | {base} | {method} | {int((means['delta'] < 0).sum())} of "
                f"{len(means)} | {int((means['delta_high'] < 0).sum())} | "
                f"{int((means['delta_low'] > 0).sum())} | {means['delta'].median():+.3f} | "
                f"{means['delta'].min():+.3f} to {means['delta'].max():+.3f} | {seeds or '—'} |")
    return "\n".join(lines)


def network_headline(results: dict[str, pd.DataFrame], fmr: float, threshold: str,
                     training: str, benchmarks: list[str]) -> str:
    """Mean primary pAUC over ``benchmarks`` per FR network, alignment (the training one,
    the misaligned mean) and trained method: B, C, T and T - B (seed means). The
    same-model row (the network the students were trained against) beside the
    cross-model rows."""
    lines = ["| FR network | alignment | method | B | C | T | T − B |",
             "|---|---|---|---|---|---|---|"]
    for net, frame in results.items():
        sel = seed_means(frame)
        sel = sel[(sel["fmr"].sub(fmr).abs() < 1e-12) & (sel["threshold"] == threshold)
                  & sel["benchmark"].isin(benchmarks) & sel["variant"].isin(["B", "C", "T"])]
        sel = sel.assign(alignment=sel["detector"].where(sel["detector"] == training,
                                                         "misaligned (mean)"))
        table = sel.groupby(["alignment", "method", "variant"])["pauc"].mean().unstack()
        order = sorted(table.index, key=lambda k: (k[0] != training, k[1]))
        for align, method in order:
            row = table.loc[(align, method)]
            vals = [row.get(v, math.nan) for v in ("B", "C", "T")]
            diff = vals[2] - vals[0]
            cells = [f"{v:.3f}" if math.isfinite(v) else "—" for v in vals]
            cells.append(f"{diff:+.3f}" if math.isfinite(diff) else "—")
            lines.append(f"| {net} | {align} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."),
                    help="the workspace (default) or a results snapshot of the same layout")
    args = ap.parse_args()
    root: Path = args.root
    params = yaml.safe_load((root / "params.yaml").read_text())
    ev = params["evaluate"]
    reports = root / ev["reports_dir"]
    primary = ev["primary"]
    fmr, threshold = float(primary["fmr"]), str(primary["threshold"])
    training = params["landmarks"]["training_detector"]
    detectors = [training] + [d for d in ev["detectors"] if d != training]
    results = pd.read_csv(reports / "results_long.csv")
    print("## Benchmarks\n")
    print(pd.read_csv(reports / "benchmarks.csv").to_markdown(index=False, floatfmt=".4f"))
    for group in (["lfw-id", "ytf-id"], ["lfw-view2"]):
        benches = [b for b in group if b in set(results["benchmark"])]
        if benches:
            title = f"Primary setting (FMR {fmr:g}, {threshold} threshold)"
            print(f"\n## {title}: {', '.join(benches)}\n")
            print(primary_table(results, fmr, threshold, detectors, benches))
    main_fr = params["embed"]["backbone"]
    diff_path = root / ev["out_dir"] / "differences.parquet"
    diffs = pd.read_parquet(diff_path) if diff_path.is_file() else None
    if diffs is not None:
        print("\n## Paired differences (misaligned cells, primary setting)\n")
        print(differences_table(diffs[diffs["fr_model"] == main_fr], fmr, threshold,
                                training))
        print("\n## Win counts (misaligned cells, primary setting; every FR network)\n")
        print(win_counts_table(diffs, fmr, threshold, training))
    nets = {main_fr: results}
    for net in (params.get("cross_model") or {}).get("backbones", []):
        path = reports / f"results_long_{net}.csv"
        if path.is_file():
            nets[net] = pd.read_csv(path)
    benches = [b for b in ("lfw-id", "ytf-id") if b in set(results["benchmark"])]
    print(f"\n## Same-model and cross-model headline (mean pAUC over {', '.join(benches)})\n")
    print(network_headline(nets, fmr, threshold, training, benches))
    for net, frame in nets.items():
        if net == main_fr:
            continue
        print(f"\n## Cross-model ({net}), primary setting: {', '.join(benches)}\n")
        print(primary_table(frame, fmr, threshold, detectors, benches))
        if diffs is not None:
            print(f"\n## Cross-model ({net}) paired differences\n")
            print(differences_table(diffs[diffs["fr_model"] == net], fmr, threshold,
                                    training))
    learn = reports / "learnability_seeds.csv"  # mean and SD over seeds per run
    if not learn.is_file():
        learn = reports / "learnability.csv"
    if learn.is_file():
        print("\n## Learnability\n")
        print(pd.read_csv(learn).to_markdown(index=False, floatfmt=".3f"))
    align = root / params["alignment"]["out_dir"] / "alignment_fnmr.csv"
    if align.is_file():
        table = pd.read_csv(align)
        cols = ["dataset", "detector", "n_people", "n_mated", "n_nonmated"] + [
            c for c in table.columns if c.startswith(("fnmr_", "n_fail_"))]
        print("\n## Alignment study (validation people)\n")
        print(table[cols].to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
