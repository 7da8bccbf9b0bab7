"""DVC stage ``manifest@<dataset>``: list a data set's images, split them, validate."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from aikd.config import global_seed
from aikd.data.datasets import dataset_entry, dataset_spec
from aikd.data.io import file_md5
from aikd.data.manifest import build_manifest
from aikd.data.validation import validate_manifest
from aikd.paths import manifest_path
from aikd.tracking import stage_run

log = logging.getLogger("aikd")


def manifest_stage(params: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """Write data/manifests/<dataset>.parquet (+ _rejected.csv, validation report)."""
    spec = dataset_spec(params, dataset)
    seed = global_seed(params)
    out = manifest_path(params, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = build_manifest(spec.kind, spec.root, fractions=spec.splits, seed=seed, dataset=dataset)
    if spec.subset:  # e.g. the smoke profile: {identities: 8, max_images: 4}
        from aikd.data.manifest import subset_manifest

        res = dataclasses.replace(res, manifest=subset_manifest(
            res.manifest, identities=int(spec.subset.identities),
            max_images=spec.subset.max_images, seed=seed))
    report = validate_manifest(res.manifest, dataset)
    report_path = report.write(out.parent / f"{dataset}_validation.md")
    rejected_path = out.parent / f"{dataset}_rejected.csv"
    res.rejected.to_csv(rejected_path, index=False)
    counts = res.manifest.groupby("split").size().to_dict()
    summary = {
        "images": len(res.manifest),
        "identities": int(res.manifest["identity"].nunique()),
        "rejected": len(res.rejected),
        **{f"split_{k}": int(v) for k, v in counts.items()},
    }
    (out.parent / f"{dataset}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # Hashes of the data set's side files (reference landmarks, pairs lists): stages that
    # read them depend on this file, so an edited landmark file re-runs them.
    sources = {f.name: file_md5(f) for f in sorted(Path(spec.root).glob("*")) if f.is_file()}
    (out.parent / f"{dataset}_sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    with stage_run(
        "manifest",
        params,
        run_name=f"manifest-{dataset}",
        log_params={"dataset": dataset_entry(params, dataset), "seed": seed},
    ):
        mlflow.log_metrics({f"manifest.{k}": float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(report_path))
        mlflow.log_artifact(str(rejected_path))
    for _, row in res.rejected.iterrows():
        log.warning("%s: skipped (%s)", Path(spec.root) / row["path"], row["reason"])
    report.raise_for_failure()
    res.manifest.to_parquet(out, index=False)
    print(f"manifest {dataset}: {summary}")
    return res.manifest
