"""The DVC stage `distill@<run>-<seed>`: one AI-KD model (T), its no-AI-KD baseline (B)
or its consistency-only control (C), trained with one seed of params ``train_seeds``.

params.yaml's ``distill`` section holds the :class:`DistillConfig` fields shared by every
run plus the stage's own keys (:class:`DistillStageSettings`): ``out_dir``, ``work_dir``,
``runs`` (``<name>: {labels: <method>, variant: B|T[, overrides: {...}]}``) and
``variants`` (the config changes that define a variant: B is ``max_shift: 0, w: 0``,
plain quality regression from the same code). ``val_detectors`` adds a validation pAUC
per misaligning detector, which the registry uses to decide whether a new model beats
the champion.

Every run is trained once per seed of the top-level ``train_seeds`` (kept outside the
``distill`` section on purpose: the stage depends on ``distill``, so adding a seed to a
list inside it would re-train every seed already trained). One seed's model is
``<run>@s<seed>`` (``aikd.naming.seeded_name``) in ``<out_dir>/<run>/seed<seed>/``.
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
from aikd.naming import seed_folder, seeded_name, split_seeded_name

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


def train_seeds(params: Mapping[str, Any]) -> list[int]:
    """params ``train_seeds``: the seeds every run is trained with (absent: the global
    ``seed`` alone). Distinct non-negative integers, in the order given; the first is the
    seed a bare run name stands for (``aikd distill sddfiqa-T``, the register stage)."""
    raw = params.get("train_seeds")
    seeds = [params.get("seed", 0)] if raw is None else list(raw)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                        for s in seeds):
        raise UsageError(f"params train_seeds must be a non-empty list of non-negative "
                         f"integers, got {raw!r}")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"params train_seeds lists a seed twice: {seeds}")
    return [int(s) for s in seeds]


def seeded_run(params: Mapping[str, Any], name: str) -> tuple[str, int]:
    """``sddfiqa-T@s1`` -> (sddfiqa-T, 1); a bare ``sddfiqa-T`` is its first training seed."""
    run, seed = split_seeded_name(name)
    return run, train_seeds(params)[0] if seed is None else seed


def trained_models(params: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """``{<run>@s<seed>: (run, seed)}`` for every run of ``distill.runs`` and every seed of
    ``train_seeds``: the models the quality stage scores, run-major, seeds in order."""
    runs = stage_settings(params).runs or {}
    return {seeded_name(run, seed): (run, seed)
            for run in runs for seed in train_seeds(params)}


def run_config(params: Mapping[str, Any], run: str, seed: int | None = None) -> DistillConfig:
    """The run's DistillConfig: shared section, then its variant, then its own overrides,
    then ``seed`` (the training seed wins over any seed set above; None: left as set)."""
    spec = run_spec(params, run)
    variants = stage_settings(params).variants or {}
    if spec.variant not in variants:
        raise UsageError(f"distill.runs.{run}: variant {spec.variant!r} is not in "
                         f"distill.variants; use one of {', '.join(variants)} or add it there")
    return config_with(params, variants[spec.variant], spec.overrides,
                       None if seed is None else {"seed": int(seed)})


def run_dir(params: Mapping[str, Any], run: str, seed: int | None = None) -> Path:
    """Where the finished model of a run's ``seed`` lives (DVC-tracked, read by later
    stages): ``<out_dir>/<run>/seed<seed>``; ``seed`` None: the run's folder itself."""
    base = Path(stage_settings(params).out_dir) / run
    return base if seed is None else base / seed_folder(seed)


def work_dir(params: Mapping[str, Any], run: str, seed: int | None = None) -> Path:
    """Where a run's ``seed`` trains and keeps its checkpoints (untracked, survives a killed
    stage); laid out like ``run_dir``."""
    base = Path(stage_settings(params).work_dir) / run
    return base if seed is None else base / seed_folder(seed)


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
    """Train one run's seed (``sddfiqa-T@s1``; a bare run name: its first training seed)
    into ``<out_dir>/<run>/seed<seed>/``; an interrupted run resumes from its last
    checkpoint (``resume``) unless its config changed, which starts it over."""
    from aikd.distill.train import train_distill
    from aikd.paths import embeddings_path
    from aikd.tracking import stage_run

    run, seed = seeded_run(params, run)
    name = seeded_name(run, seed)
    spec = run_spec(params, run)
    cfg = run_config(params, run, seed)
    settings = stage_settings(params)
    rows, unlabelled = labelled_rows(params, spec.labels)
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    val = rows[rows["split"] == "val"].reset_index(drop=True)
    if unlabelled:
        log.warning("distill %s: %d training images have no %s label (e.g. a singleton "
                    "identity) and are left out", run, unlabelled, spec.labels)
    detector = section(params, "landmarks")["training_detector"]
    cache = [embeddings_path(params, ds, detector) for ds in section(params, "labels")["datasets"]]
    out = run_dir(params, run, seed)
    work = work_dir(params, run, seed)
    # Under `accelerate launch` every process runs this; one of them records and publishes.
    main = int(os.environ.get("RANK", "0")) == 0
    log_params = {"run": run, "labels": spec.labels, "variant": spec.variant,
                  "train_seed": seed, "unlabelled_images": unlabelled, **cfg.to_dict()}
    tracked = (stage_run("distill", params, run_name=f"distill-{name}", log_params=log_params)
               if main else contextlib.nullcontext())
    with tracked:
        if main:
            mlflow.set_tags({"aikd.label_method": spec.labels, "aikd.variant": spec.variant,
                             "aikd.train_seed": str(seed)})
        kw = dict(labels=None, teacher_cache=[str(c) for c in cache],
                  val_landmarks=val_landmarks(params, settings.val_detectors) or None)
        try:
            result = train_distill(cfg, train, val, work, resume=resume, **kw)
        except ValueError as exc:
            if not (resume and str(exc).startswith("cannot resume")):
                raise
            log.warning("%s; starting %s over", exc, name)
            result = train_distill(cfg, train, val, work, resume=False, **kw)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED:
            shutil.copy2(work / name, out / name)
        print(f"distill {name}: {result.steps} steps on {result.train_images} images in "
              f"{result.seconds:.0f} s; {result.metrics}")
    return out
