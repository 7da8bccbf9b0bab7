"""What one Ray trial runs: an ordinary ``train_distill`` with the sampled values, which
reports the sweep objective to Ray (and MLflow) after every validation.

Runs in a Ray worker, so every path it gets is absolute; Ray, torch and MLflow load in
the worker, not when this module is imported.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aikd.naming import pauc_metric
from aikd.tuning.data import SweepData
from aikd.tuning.settings import TuneSettings, trial_config


def sweep_objective(metrics: Mapping[str, float], detectors: Sequence[str], fmr: float) -> float:
    """Mean validation pAUC over the detectors' alignments (lower is better).

    A detector's pAUC is NaN when undefined on the pairs (no mated pair fails at that FMR);
    whether it is depends on the fixed pairs, not on the trial, so the NaN-skipping mean
    stays comparable across trials. NaN only if every detector's pAUC is undefined.
    """
    keys = [pauc_metric(fmr, d) for d in detectors] or [pauc_metric(fmr)]
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"validation metrics lack {missing} (have {sorted(metrics)})")
    values = np.array([float(metrics[k]) for k in keys])
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass
class TrialJob:
    """Everything a trial needs; put into Ray's object store once by with_parameters."""

    data: SweepData
    base: dict[str, Any]  # the base DistillConfig as a dict
    settings: TuneSettings
    mlflow: dict[str, str] | None  # tracking_uri, experiment_id, parent_run_id
    work_dir: str  # absolute; train_distill's out_dir is <work_dir>/<trial id>


def _start_child_run(parent: Mapping[str, str], config: Mapping[str, Any],
                     trial_id: str) -> None:
    """This trial's MLflow run, a child of the sweep's parent run."""
    from ray.air.integrations.mlflow import setup_mlflow

    setup_mlflow({k: str(v) for k, v in config.items()},
                 tracking_uri=parent["tracking_uri"],
                 experiment_id=parent["experiment_id"],
                 run_name=f"trial-{trial_id}",
                 tags={"mlflow.parentRunId": parent["parent_run_id"],
                       "ray.trial_id": trial_id, "aikd.stage": "tune-trial"})


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """One Ray Tune trial: train_distill with the sampled values, reporting every validation.

    With MLflow on, the trial opens a child run of the sweep's parent run; train_distill
    logs its per-step losses, lr, validation metrics and model into it as in
    ``aikd distill``.
    """
    import mlflow
    from ray import tune

    from aikd.distill.config import DistillConfig
    from aikd.distill.train import train_distill

    settings = job.settings
    cfg = trial_config(DistillConfig.from_dict(job.base), settings, config)
    ctx = tune.get_context()
    # Not the Ray trial dir: Ray copies that to its storage while the trial writes into it.
    out = Path(job.work_dir) / ctx.get_trial_id()
    if job.mlflow is not None:
        _start_child_run(job.mlflow, cfg.to_dict(), ctx.get_trial_id())
    finished = False

    def report(step: int, metrics: dict[str, float], final: bool) -> None:
        nonlocal finished
        value = sweep_objective(metrics, settings.detectors, settings.fmr)
        if mlflow.active_run() is not None and math.isfinite(value):
            mlflow.log_metric("objective", value, step=step)
        finished = final
        tune.report({"step": step, "objective": value, "final": final, **metrics})

    status = "FAILED"
    try:
        train_distill(cfg, job.data.train, job.data.val, out,
                      teacher_cache=job.data.teacher_cache, val_landmarks=job.data.val_landmarks,
                      on_validation=report)
        status = "FINISHED"
    except SystemExit:  # Ray stops a trial from inside tune.report
        status = "FINISHED" if finished else "KILLED"
        raise
    finally:
        if job.mlflow is not None and mlflow.active_run() is not None:
            mlflow.end_run(status)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)


def trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)
