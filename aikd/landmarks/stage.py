"""DVC stages ``landmarks@<dataset>-<detector>`` and ``landmark_report``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from aikd.config import from_section, section
from aikd.data.validation import validate_landmarks
from aikd.paths import landmarks_path, manifest_path
from aikd.tracking import stage_run

log = logging.getLogger("aikd")


@dataclass(frozen=True)
class LandmarksSettings:
    """params.yaml ``landmarks`` (the only source of their values)."""

    out_dir: str
    training_detector: str  # runs on every image; the others only on some splits
    other_detector_splits: list[str]
    detectors: list[str]
    batch_size: int
    checkpoint_every: int  # images between partial-file flushes (resumable runs)
    threads: int
    max_failure_rate: float  # validation gate: share of images without landmarks


@dataclass(frozen=True)
class LandmarkReportSettings:
    """params.yaml ``landmark_report``."""

    out_dir: str


def landmarks_settings(params: Mapping[str, Any]) -> LandmarksSettings:
    return from_section(LandmarksSettings, params, "landmarks")


def landmark_rows(params: Mapping[str, Any], manifest: pd.DataFrame, detector: str) -> pd.DataFrame:
    """Which images a detector runs on: all for the training detector, else some splits."""
    cfg = landmarks_settings(params)
    if detector == cfg.training_detector:
        return manifest
    return manifest[manifest["split"].isin(cfg.other_detector_splits)].reset_index(drop=True)


def landmarks_stage(params: Mapping[str, Any], dataset: str, detector: str) -> pd.DataFrame:
    """Detect 5 landmarks with one detector on one data set (resumable), then validate."""
    from aikd.engine import engine_settings
    from aikd.landmarks.runner import run_landmarks

    cfg = landmarks_settings(params)
    engine = engine_settings(params)
    manifest = pd.read_parquet(manifest_path(params, dataset))
    rows = landmark_rows(params, manifest, detector)
    out = landmarks_path(params, dataset, detector)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = run_landmarks(
        rows,
        detector,
        out,
        batch_size=int(cfg.batch_size),
        checkpoint_every=int(cfg.checkpoint_every),
        threads=int(cfg.threads),
        engine=engine,
    )
    report = validate_landmarks(
        table, manifest, f"{dataset}_{detector}", float(cfg.max_failure_rate)
    )
    report_path = report.write(out.with_name(f"{dataset}_validation.md"))
    status = table["status"].value_counts().to_dict()
    with stage_run(
        "landmarks",
        params,
        run_name=f"landmarks-{dataset}-{detector}",
        log_params={"dataset": dataset, "detector": detector, **asdict(cfg),
                    "engine": engine.kind},
    ):
        mlflow.log_metrics({f"landmarks.{k}": float(v) for k, v in status.items()})
        mlflow.log_metric("landmarks.found_share", status.get("ok", 0) / max(len(table), 1))
        mlflow.log_artifact(str(report_path))
    for _, row in table[table["status"] != "ok"].head(20).iterrows():
        log.warning("%s %s: %s %s", detector, row["path"], row["status"], row.get("message", ""))
    print(f"landmarks {dataset}/{detector}: {status}")
    report.raise_for_failure()
    return table


def landmark_report_stage(params: Mapping[str, Any]) -> pd.DataFrame:
    """Detector agreement: found share and NME to `reference`, per data set and detector."""
    from aikd.landmarks.report import landmark_agreement, plot_nme

    cfg = from_section(LandmarkReportSettings, params, "landmark_report")
    detectors = list(landmarks_settings(params).detectors)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[pd.DataFrame]] = {d: [] for d in detectors}
    for dataset in section(params, "datasets"):
        for det in detectors:
            path = landmarks_path(params, dataset, det)
            if path.is_file():
                tables[det].append(pd.read_parquet(path))
    merged = {d: pd.concat(t, ignore_index=True) for d, t in tables.items() if t}
    if "reference" not in merged:
        raise ValueError("landmark_report needs the 'reference' detector in landmarks.detectors")
    reference = merged["reference"]
    others = {d: t for d, t in merged.items() if d != "reference"}
    table = landmark_agreement({"reference": reference, **others}, reference)
    table.to_csv(out_dir / "agreement.csv", index=False)
    (out_dir / "agreement.md").write_text(
        "# Landmark agreement with the reference points\n\n"
        "NME = mean distance of the 5 points to reference / reference inter-ocular distance.\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    plot = plot_nme(others, reference, out_dir / "nme_ecdf.png")
    metrics = {
        f"{r.dataset}/{r.detector}": {
            "found_share": round(float(r.found_share), 4),
            "nme_median": round(float(r.nme_median), 4),
            "nme_p90": round(float(r.nme_p90), 4),
        }
        for r in table.itertuples()
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with stage_run("landmark_report", params, run_name="landmark-report",
                   log_params={"detectors": detectors}):
        for key, vals in metrics.items():
            for name, v in vals.items():
                if v == v:  # skip NaN
                    mlflow.log_metric(f"{key.replace('/', '.')}.{name}", v)
        for f in ("agreement.csv", "agreement.md"):
            mlflow.log_artifact(str(out_dir / f))
        mlflow.log_artifact(str(plot))
    print(table.to_string(index=False))
    return table
