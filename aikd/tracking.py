"""MLflow set-up shared by every stage: one tracking URI, one run per stage run.

The URI comes from `MLFLOW_TRACKING_URI` or params (`mlflow.tracking_uri`), so a team
server works unchanged; the default is the project's sqlite store under `mlruns/`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml

from aikd.config import from_mapping

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "aikd"


@dataclass(frozen=True)
class MlflowSettings:
    """params.yaml ``mlflow``. The defaults serve `aikd score` run outside a project,
    where there is no params.yaml."""

    tracking_uri: str = DEFAULT_URI
    experiment: str = DEFAULT_EXPERIMENT
    artifact_root: str = "mlruns/artifacts"  # of a new experiment in a sqlite store


def mlflow_settings(params: Mapping[str, Any] | None) -> MlflowSettings:
    """The ``mlflow`` section (absent or empty: the defaults)."""
    return from_mapping(MlflowSettings, (params or {}).get("mlflow"), "mlflow")


def tracking_uri(params: Mapping[str, Any] | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return str(mlflow_settings(params).tracking_uri)


def setup_mlflow(params: Mapping[str, Any] | None = None) -> str:
    """Point MLflow at the configured store and make sure the experiment exists."""
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    cfg = mlflow_settings(params)
    name = str(cfg.experiment)
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = Path(cfg.artifact_root).resolve().as_uri()
        mlflow.create_experiment(name, artifact_location=artifacts)
    mlflow.set_experiment(name)
    return uri


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for mlflow.log_params."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_lock_hashes(lock: str | Path = "dvc.lock", stage: str | None = None) -> dict[str, str]:
    """md5 of each dep/out recorded in dvc.lock (optionally for stages matching a prefix)."""
    p = Path(lock)
    if not p.is_file():
        return {}
    data = yaml.safe_load(p.read_text()) or {}
    out: dict[str, str] = {}
    for name, st in (data.get("stages") or {}).items():
        if stage and not name.startswith(stage):
            continue
        for kind in ("deps", "outs"):
            for item in st.get(kind) or []:
                if "md5" in item:
                    out[f"dvc.{item['path']}"] = str(item["md5"])
    return out


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any],
    *,
    run_name: str | None = None,
    log_params: Mapping[str, Any] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one DVC stage run, tagged with git commit and data hashes."""
    setup_mlflow(params)
    with mlflow.start_run(run_name=run_name or stage) as run:
        mlflow.set_tags({"aikd.stage": stage, "git.commit": git_commit()})
        flat = flatten(log_params if log_params is not None else params)
        # MLflow caps param values at a few thousand characters.
        mlflow.log_params({k: str(v)[:5000] for k, v in flat.items()})
        hashes = dvc_lock_hashes()
        if hashes:
            mlflow.set_tags({k[:250]: v for k, v in list(hashes.items())[:200]})
        yield run
