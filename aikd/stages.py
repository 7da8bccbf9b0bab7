"""The DVC stages as library functions: `pipelines/*.py` and `aikd <stage>` both call these.

Each reads its params section, calls the library, writes its outs, validates them with
great-expectations and records the run in MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from aikd.config import section
from aikd.data.manifest import build_manifest
from aikd.data.validation import validate_landmarks, validate_manifest
from aikd.tracking import stage_run

log = logging.getLogger("aikd")


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dataset_cfg(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    datasets = section(params, "datasets")
    if dataset not in datasets:
        raise KeyError(f"dataset {dataset!r} is not in params 'datasets' ({', '.join(datasets)})")
    return dict(datasets[dataset])


def manifest_path(params: Mapping[str, Any], dataset: str) -> Path:
    return Path(section(params, "manifest")["out_dir"]) / f"{dataset}.parquet"


def manifest_stage(params: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """Write data/manifests/<dataset>.parquet (+ _rejected.csv, validation report)."""
    cfg = _dataset_cfg(params, dataset)
    out = manifest_path(params, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = build_manifest(
        cfg["kind"],
        cfg["root"],
        fractions=cfg.get("splits", {"train": 0.8, "val": 0.1, "test": 0.1}),
        seed=int(params.get("seed", 0)),
        dataset=dataset,
    )
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
    sources = {f.name: file_md5(f) for f in sorted(Path(cfg["root"]).glob("*")) if f.is_file()}
    (out.parent / f"{dataset}_sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    with stage_run(
        "manifest",
        params,
        run_name=f"manifest-{dataset}",
        log_params={"dataset": cfg, "seed": params.get("seed", 0)},
    ):
        mlflow.log_metrics({f"manifest.{k}": float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(report_path))
        mlflow.log_artifact(str(rejected_path))
    for _, row in res.rejected.iterrows():
        log.warning("%s: skipped (%s)", Path(cfg["root"]) / row["path"], row["reason"])
    report.raise_for_failure()
    res.manifest.to_parquet(out, index=False)
    print(f"manifest {dataset}: {summary}")
    return res.manifest


def landmarks_path(params: Mapping[str, Any], dataset: str, detector: str) -> Path:
    return Path(section(params, "landmarks")["out_dir"]) / dataset / f"{detector}.parquet"


def landmark_rows(params: Mapping[str, Any], manifest: pd.DataFrame, detector: str) -> pd.DataFrame:
    """Which images a detector runs on: all for the training detector, else some splits."""
    cfg = section(params, "landmarks")
    if detector == cfg.get("training_detector", "reference"):
        return manifest
    splits = cfg.get("other_detector_splits") or ["train", "val", "test"]
    return manifest[manifest["split"].isin(splits)].reset_index(drop=True)


def landmarks_stage(params: Mapping[str, Any], dataset: str, detector: str) -> pd.DataFrame:
    """Detect 5 landmarks with one detector on one data set (resumable), then validate."""
    from aikd.landmarks import run_landmarks

    cfg = section(params, "landmarks")
    manifest = pd.read_parquet(manifest_path(params, dataset))
    rows = landmark_rows(params, manifest, detector)
    out = landmarks_path(params, dataset, detector)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = run_landmarks(
        rows,
        detector,
        out,
        batch_size=int(cfg.get("batch_size", 32)),
        checkpoint_every=int(cfg.get("checkpoint_every", 500)),
        threads=int(cfg.get("threads", 2)),
    )
    report = validate_landmarks(
        table, manifest, f"{dataset}_{detector}", float(cfg.get("max_failure_rate", 0.2))
    )
    report_path = report.write(out.with_name(f"{detector}_validation.md"))
    status = table["status"].value_counts().to_dict()
    with stage_run(
        "landmarks",
        params,
        run_name=f"landmarks-{dataset}-{detector}",
        log_params={"dataset": dataset, "detector": detector, **cfg},
    ):
        mlflow.log_metrics({f"landmarks.{k}": float(v) for k, v in status.items()})
        mlflow.log_metric("landmarks.found_share", status.get("ok", 0) / max(len(table), 1))
        mlflow.log_artifact(str(report_path))
    for _, row in table[table["status"] != "ok"].head(20).iterrows():
        log.warning("%s %s: %s %s", detector, row["path"], row["status"], row.get("message", ""))
    print(f"landmarks {dataset}/{detector}: {status}")
    report.raise_for_failure()
    return table
