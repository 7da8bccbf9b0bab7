"""The DVC stage `distill@<run>`: one AI-KD model (T) or its no-AI-KD baseline (B).

params.yaml's ``distill`` section holds the :class:`DistillConfig` fields shared by every
run plus three keys of its own: ``out_dir``, ``runs`` (``<name>: {labels: <method>,
variant: B|T[, overrides: {...}]}``) and ``variants`` (the config changes that define a
variant: B is ``max_shift: 0, w: 0``, plain quality regression from the same code).
``val_detectors`` adds a validation pAUC per misaligning detector, which the registry
uses to decide whether a new model beats the champion.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from aikd.config import section
from aikd.distill.config import DistillConfig

log = logging.getLogger("aikd")

#: Keys of the ``distill`` params section that are not DistillConfig fields.
STAGE_KEYS = ("out_dir", "work_dir", "runs", "variants", "val_detectors")
#: What the stage publishes from a run's work directory (checkpoints stay behind).
PUBLISHED = ("model.pt", "metrics.json", "history.csv", "skipped.csv")


def run_spec(params: Mapping[str, Any], run: str) -> dict[str, Any]:
    """``{labels, variant, overrides}`` of one named run (KeyError lists the known runs)."""
    runs = section(params, "distill").get("runs") or {}
    if run not in runs:
        raise KeyError(f"distill run {run!r} is not in params distill.runs ({', '.join(runs)})")
    spec = dict(runs[run])
    if "labels" not in spec:
        raise ValueError(f"distill.runs.{run} needs a 'labels' method")
    spec.setdefault("variant", "T")
    spec.setdefault("overrides", {})
    return spec


def config_with(params: Mapping[str, Any], *changes: Mapping[str, Any] | None) -> DistillConfig:
    """The ``distill`` section's shared settings (its stage keys removed), then each of
    ``changes`` in order (a variant, a run's overrides, ...), the global seed unless set.
    The one place that turns params into a DistillConfig (stage runs and tuning trials)."""
    cfg = {k: v for k, v in (params.get("distill") or {}).items() if k not in STAGE_KEYS}
    for change in changes:
        cfg.update(change or {})
    cfg.setdefault("seed", int(params.get("seed", 0)))
    return DistillConfig.from_dict(cfg)


def run_config(params: Mapping[str, Any], run: str) -> DistillConfig:
    """The run's DistillConfig: shared section, then its variant, then its own overrides."""
    spec = run_spec(params, run)
    variants = section(params, "distill").get("variants") or {}
    if spec["variant"] not in variants:
        raise KeyError(f"distill.runs.{run}: variant {spec['variant']!r} is not in "
                       f"distill.variants ({', '.join(variants)})")
    return config_with(params, variants[spec["variant"]], spec["overrides"])


def run_dir(params: Mapping[str, Any], run: str) -> Path:
    """Where the finished model of a run lives (DVC-tracked, read by later stages)."""
    return Path(section(params, "distill").get("out_dir", "models")) / run


def work_dir(params: Mapping[str, Any], run: str) -> Path:
    """Where a run trains and keeps its checkpoints (untracked, survives a killed stage)."""
    return Path(section(params, "distill").get("work_dir", "checkpoints")) / run


def _labelled_rows(params: Mapping[str, Any], method: str) -> tuple[pd.DataFrame, int]:
    """Training-detector rows of the label data sets that have a finite label."""
    from aikd.data.training import training_rows
    from aikd.distill.data import read_labels
    from aikd.paths import labels_path

    rows = training_rows(params)
    labels = read_labels(labels_path(params, method))
    rows = rows.merge(labels[["path", "quality"]], on="path", how="left")
    finite = np.isfinite(rows["quality"].to_numpy(dtype=np.float64))
    return rows[finite].reset_index(drop=True), int((~finite).sum())


def _val_landmarks(params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    from aikd.paths import landmarks_path

    tables: dict[str, pd.DataFrame] = {}
    for det in section(params, "distill").get("val_detectors") or []:
        frames = [pd.read_parquet(landmarks_path(params, ds, det))
                  for ds in section(params, "labels")["datasets"]
                  if landmarks_path(params, ds, det).is_file()]
        if not frames:
            raise FileNotFoundError(f"distill.val_detectors: no landmarks of {det!r}; run "
                                    f"`dvc repro landmarks` with it in landmarks.detectors")
        tables[det] = pd.concat(frames, ignore_index=True)
    return tables


def distill_stage(params: Mapping[str, Any], run: str, *, resume: bool = True) -> Path:
    """Train one run into ``<out_dir>/<run>/``; an interrupted run resumes from its last
    checkpoint (``resume``) unless its config changed, which starts it over."""
    from aikd.distill.train import train_distill
    from aikd.paths import embeddings_path
    from aikd.tracking import stage_run

    spec = run_spec(params, run)
    cfg = run_config(params, run)
    rows, unlabelled = _labelled_rows(params, spec["labels"])
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    val = rows[rows["split"] == "val"].reset_index(drop=True)
    if unlabelled:
        log.warning("distill %s: %d training images have no %s label (e.g. a singleton "
                    "identity) and are left out", run, unlabelled, spec["labels"])
    detector = section(params, "landmarks").get("training_detector", "reference")
    cache = [embeddings_path(params, ds, detector) for ds in section(params, "labels")["datasets"]]
    out = run_dir(params, run)
    work = work_dir(params, run)
    log_params = {"run": run, "labels": spec["labels"], "variant": spec["variant"],
                  "unlabelled_images": unlabelled, **cfg.to_dict()}
    with stage_run("distill", params, run_name=f"distill-{run}", log_params=log_params):
        mlflow.set_tags({"aikd.label_method": spec["labels"], "aikd.variant": spec["variant"]})
        kw = dict(labels=None, teacher_cache=[str(c) for c in cache],
                  val_landmarks=_val_landmarks(params) or None)
        try:
            result = train_distill(cfg, train, val, work, resume=resume, **kw)
        except ValueError as exc:
            if not (resume and str(exc).startswith("cannot resume")):
                raise
            log.warning("%s; starting %s over", exc, run)
            result = train_distill(cfg, train, val, work, resume=False, **kw)
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        shutil.copy2(work / name, out / name)
    print(f"distill {run}: {result.steps} steps on {result.train_images} images in "
          f"{result.seconds:.0f} s; {result.metrics}")
    return out
