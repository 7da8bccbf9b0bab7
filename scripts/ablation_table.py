"""Collect distill runs of one label method into the ablation table (mean and range over
seeds per variant), write it as Markdown/CSV and log it to MLflow as one run.

    python scripts/ablation_table.py models/sddfiqa-B models/sddfiqa-T ablation/sddfiqa-* \
        --out reports/ablation_sddfiqa

Each run directory holds the distill stage's ``metrics.json``; the variant is read from
the saved config (max_shift, w), the seed from the config too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from aikd.config import add_params_options, load_params, section
from aikd.naming import VALIDATION_FMRS, pauc_metric


def metric_names(val_detectors: list[str]) -> list[str]:
    """The columns of the table: losses, then pAUC on the reference alignment, then per
    detector of ``distill.val_detectors``."""
    return ["val_quality_loss", "val_cosine",
            *(pauc_metric(fmr, det) for det in [None, *val_detectors] for fmr in VALIDATION_FMRS)]


def variant_of(max_shift: float, w: float) -> str:
    if max_shift == 0 and w == 0:
        return "B: plain regression"
    if w == 0:
        return "J: jitter only"
    if max_shift == 0:
        return "C: consistency only"
    return "T: AI-KD"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="output prefix (no suffix)")
    ap.add_argument("--mlflow", action="store_true", help="log the table as an MLflow run")
    add_params_options(ap)
    args = ap.parse_args()
    params = load_params(args.params, args.set)
    metric_cols = metric_names(list(section(params, "distill").get("val_detectors") or []))
    rows = []
    for run in args.runs:
        metrics = json.loads((run / "metrics.json").read_text())["metrics"]
        cfg = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["config"]
        rows.append({"run": run.name, "variant": variant_of(cfg["max_shift"], cfg["w"]),
                     "max_shift": cfg["max_shift"], "w": cfg["w"], "seed": cfg["seed"],
                     **{m: metrics.get(m) for m in metric_cols}})
    runs = pd.DataFrame(rows).sort_values(["variant", "seed"])
    agg = runs.groupby("variant")[metric_cols].agg(["mean", "min", "max"])
    table = pd.DataFrame({"seeds": runs.groupby("variant")["seed"].apply(
        lambda s: ",".join(map(str, sorted(s))))})
    for m in metric_cols:
        table[m] = [f"{a:.3f} ({lo:.3f}-{hi:.3f})" for a, lo, hi in
                    zip(agg[(m, "mean")], agg[(m, "min")], agg[(m, "max")], strict=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out.with_suffix(".csv"), index=False)
    md = ("# Ablation: mean (min-max) over seeds\n\n" + table.reset_index().to_markdown(index=False)
          + "\n\n## Runs\n\n" + runs.to_markdown(index=False, floatfmt=".3f") + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    if args.mlflow:
        import mlflow

        from aikd.tracking import stage_run

        with stage_run("ablation", params, run_name=f"ablation-{args.out.name}",
                       log_params={"runs": [r.as_posix() for r in args.runs]}):
            for v, g in runs.groupby("variant"):
                key = v.split(":")[0]
                for m in metric_cols:
                    mlflow.log_metric(f"{key}.{m}.mean", float(g[m].mean()))
            mlflow.log_artifact(str(args.out.with_suffix(".md")))
            mlflow.log_artifact(str(args.out.with_suffix(".csv")))


if __name__ == "__main__":
    main()
