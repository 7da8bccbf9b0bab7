"""The DVC stage `distill@<run>`: one AI-KD model (T) or its no-AI-KD baseline (B).

params.yaml's ``distill`` section holds the :class:`DistillConfig` fields shared by every
run plus the stage's own keys (:class:`DistillStageSettings`): ``out_dir``, ``work_dir``,
``runs`` (``<name>: {labels: <method>, variant: B|T[, overrides: {...}]}``) and
``variants`` (the config changes that define a variant: B is ``max_shift: 0, w: 0``,
plain quality regression from the same code). ``val_detectors`` adds a validation pAUC
per misaligning detector, which the registry uses to decide whether a new model beats
the champion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from aikd.config import from_mapping, section
from aikd.distill.config import DistillConfig
from aikd.errors import UsageError

log = logging.getLogger("aikd")


@dataclass(frozen=True)
class DistillStageSettings:
    """The ``distill`` section's own keys; every other key is a DistillConfig field."""

    out_dir: str  # finished runs (DVC outputs)
    work_dir: str  # training state per run, for resuming
    runs: dict[str, dict[str, Any]]  # <name>: {labels, variant[, overrides]}
    variants: dict[str, dict[str, Any]]  # <variant>: DistillConfig changes
    val_detectors: list[str]  # extra validation pAUC per misaligning detector


#: Keys of the ``distill`` params section that are not DistillConfig fields.
STAGE_KEYS = tuple(f.name for f in dataclasses.fields(DistillStageSettings))
#: What the stage publishes from a run's work directory (checkpoints stay behind).
PUBLISHED = ("model.pt", "metrics.json", "history.csv", "skipped.csv")


def stage_settings(params: Mapping[str, Any]) -> DistillStageSettings:
    """The stage keys of params ``distill`` (a missing one is named)."""
    values = section(params, "distill")
    return from_mapping(DistillStageSettings, {k: v for k, v in values.items() if k in STAGE_KEYS},
                        "distill")


@dataclass(frozen=True)
class RunSpec:
    """One entry of params ``distill.runs``: its label method, variant and own changes."""

    labels: str
    variant: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_spec(params: Mapping[str, Any], run: str) -> RunSpec:
    """The named run of params ``distill.runs`` (an unknown name lists the known runs)."""
    runs = stage_settings(params).runs or {}
    if run not in runs:
        raise UsageError(f"distill run {run!r} is not in params distill.runs; pick one of "
                         f"{', '.join(runs)} or add it there")
    return from_mapping(RunSpec, runs[run], f"distill.runs.{run}")


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
    variants = stage_settings(params).variants or {}
    if spec.variant not in variants:
        raise UsageError(f"distill.runs.{run}: variant {spec.variant!r} is not in "
                         f"distill.variants; use one of {', '.join(variants)} or add it there")
    return config_with(params, variants[spec.variant], spec.overrides)


def run_dir(params: Mapping[str, Any], run: str) -> Path:
    """Where the finished model of a run lives (DVC-tracked, read by later stages)."""
    return Path(stage_settings(params).out_dir) / run


def work_dir(params: Mapping[str, Any], run: str) -> Path:
    """Where a run trains and keeps its checkpoints (untracked, survives a killed stage)."""
    return Path(stage_settings(params).work_dir) / run


def labelled_rows(params: Mapping[str, Any], method: str) -> tuple[pd.DataFrame, int]:
    """(rows, n_unlabelled): training-detector rows of the label data sets that have a
    finite ``method`` label, and how many rows were left out for having none."""
    from aikd.data.training import training_rows
    from aikd.distill.data import read_labels
    from aikd.paths import labels_path

    rows = training_rows(params)
    labels = read_labels(labels_path(params, method))
    rows = rows.merge(labels[["path", "quality"]], on="path", how="left")
    finite = np.isfinite(rows["quality"].to_numpy(dtype=np.float64))
    return rows[finite].reset_index(drop=True), int((~finite).sum())


def val_landmarks(params: Mapping[str, Any], detectors: Sequence[str]) -> dict[str, pd.DataFrame]:
    """``{detector: landmarks of every label data set}`` for the validation pAUC per detector."""
    from aikd.paths import landmarks_path

    tables: dict[str, pd.DataFrame] = {}
    for det in detectors:
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
    settings = stage_settings(params)
    rows, unlabelled = labelled_rows(params, spec.labels)
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    val = rows[rows["split"] == "val"].reset_index(drop=True)
    if unlabelled:
        log.warning("distill %s: %d training images have no %s label (e.g. a singleton "
                    "identity) and are left out", run, unlabelled, spec.labels)
    detector = section(params, "landmarks")["training_detector"]
    cache = [embeddings_path(params, ds, detector) for ds in section(params, "labels")["datasets"]]
    out = run_dir(params, run)
    work = work_dir(params, run)
    # Under `accelerate launch` every process runs this; one of them records and publishes.
    main = int(os.environ.get("RANK", "0")) == 0
    log_params = {"run": run, "labels": spec.labels, "variant": spec.variant,
                  "unlabelled_images": unlabelled, **cfg.to_dict()}
    tracked = (stage_run("distill", params, run_name=f"distill-{run}", log_params=log_params)
               if main else contextlib.nullcontext())
    with tracked:
        if main:
            mlflow.set_tags({"aikd.label_method": spec.labels, "aikd.variant": spec.variant})
        kw = dict(labels=None, teacher_cache=[str(c) for c in cache],
                  val_landmarks=val_landmarks(params, settings.val_detectors) or None)
        try:
            result = train_distill(cfg, train, val, work, resume=resume, **kw)
        except ValueError as exc:
            if not (resume and str(exc).startswith("cannot resume")):
                raise
            log.warning("%s; starting %s over", exc, run)
            result = train_distill(cfg, train, val, work, resume=False, **kw)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED:
            shutil.copy2(work / name, out / name)
        print(f"distill {run}: {result.steps} steps on {result.train_images} images in "
              f"{result.seconds:.0f} s; {result.metrics}")
    return out
