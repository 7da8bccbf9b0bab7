"""What ``aikd register`` registers: a distill run's ``model.pt`` and validation metrics,
from its folder (``models/<run>``) or from its MLflow run."""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aikd.errors import UsageError
from aikd.naming import split_run_name
from aikd.registry.settings import RegisterSettings
from aikd.scoring.load import missing_model_error

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def read_run_metrics(path: str | Path) -> dict[str, float]:
    """Validation metrics of a distill run: its ``metrics.json`` (the ``metrics`` block the
    trainer writes, or a flat mapping); non-numeric entries are dropped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: distill metrics not found")
    data = json.loads(p.read_text())
    if not isinstance(data, Mapping):
        raise ValueError(f"{p}: expected a JSON object")
    block = data.get("metrics", data)
    if not isinstance(block, Mapping):
        raise ValueError(f"{p}: 'metrics' is not an object")
    out: dict[str, float] = {}
    for key, value in block.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(key)] = float(value)
        elif value is None:
            out[str(key)] = math.nan
    return out


@dataclass
class RunSource:
    """A distilled model to register: where its files are and what it is."""

    run: str
    method: str
    variant: str
    model_path: Path
    metrics: dict[str, float]
    origin: str  # the folder, or runs:/<id> for an MLflow run
    mlflow_run_id: str | None = None
    _tmp: Any = field(default=None, repr=False)  # keeps a download folder alive


def resolve_source(
    ref: str, cfg: RegisterSettings, *, run_name: str | None = None
) -> RunSource:
    """A run name (``models_dir/<run>``), a run folder, or an MLflow run id (32 hex).

    For a run id the trainer's ``distill/model.pt`` and ``distill/metrics.json`` artifacts
    are downloaded; the run name (method-variant) comes from ``run_name`` or the MLflow
    run's name (a ``distill-`` prefix is ignored).
    """
    folder = Path(ref)
    if not folder.is_dir() and not _RUN_ID.match(ref):
        folder = Path(cfg.models_dir) / ref
    if folder.is_dir():
        return _folder_source(folder, run_name)
    if not _RUN_ID.match(ref):
        raise UsageError(
            f"{ref}: not a run folder, not {folder}, and not an MLflow run id; make the run "
            f"with `make repro` or `dvc repro distill@{ref}`"
        )
    return _mlflow_source(ref, run_name)


def _folder_source(folder: Path, run_name: str | None) -> RunSource:
    model_path = folder / "model.pt"
    if not model_path.is_file():
        raise missing_model_error(str(model_path))
    metrics_path = folder / "metrics.json"
    metrics = read_run_metrics(metrics_path) if metrics_path.is_file() else {}
    if not metrics:
        log.warning("%s: no validation metrics; it cannot become champion", folder)
    run = run_name or folder.name
    method, variant = split_run_name(run)
    return RunSource(run, method, variant, model_path, metrics, str(folder))


def _mlflow_source(ref: str, run_name: str | None) -> RunSource:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        mrun = MlflowClient().get_run(ref)
    except MlflowException as exc:
        raise UsageError(f"MLflow run {ref} not found in the tracking store ({exc}); "
                         "check MLFLOW_TRACKING_URI or params mlflow.tracking_uri") from exc
    tmp = tempfile.TemporaryDirectory(prefix="aikd-register-")
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=ref, artifact_path="distill", dst_path=tmp.name
        ))
    except Exception as exc:
        tmp.cleanup()
        raise UsageError(f"MLflow run {ref} has no distill/ artifacts ({exc}); "
                         "pass the id of a distill run") from exc
    model_path = local / "model.pt"
    if not model_path.is_file():
        raise UsageError(f"MLflow run {ref}: distill/model.pt not among its artifacts; "
                         "pass the id of a finished distill run")
    if (local / "metrics.json").is_file():
        metrics = read_run_metrics(local / "metrics.json")
    else:
        metrics = {k.removeprefix("final_"): float(v) for k, v in mrun.data.metrics.items()
                   if k.startswith("final_val_")}
    run = run_name or re.sub(r"^distill[-@]", "", mrun.info.run_name or "")
    method, variant = split_run_name(run)
    return RunSource(run, method, variant, model_path, metrics, f"runs:/{ref}", ref, tmp)
