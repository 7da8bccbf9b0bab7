"""A sweep's outputs: ``trials.csv`` (every trial), ``best.yaml`` (the best config, its
score and the ``dvc exp run`` command that applies it), ``sweep.png``; and its MLflow
runs (one parent per sweep, one child per trial, closed here when Ray killed the trial).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from aikd.tuning.data import SweepData
from aikd.tuning.settings import SearchParam, TuneSettings

if TYPE_CHECKING:
    from aikd.distill.config import DistillConfig

TRIAL_STATUSES = ("completed", "stopped", "error")


@dataclass
class SweepResult:
    trials: pd.DataFrame  # one row per trial, best first
    best: dict[str, Any]  # what best.yaml holds
    reports: pd.DataFrame  # every reported result (trial_id, step, objective, ...)
    paths: dict[str, Path]


def format_value(value: Any) -> str:
    """A value for ``dvc exp run -S`` that YAML reads back as the same type (4 significant
    digits for floats, never exponent notation, which PyYAML would read as a string)."""
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).split("\n")[0]
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return np.format_float_positional(float(value), precision=4, unique=False,
                                          fractional=False, trim="0")
    return str(value)


def apply_command(best_config: Mapping[str, Any]) -> str:
    return "dvc exp run " + " ".join(f"-S distill.{k}={format_value(v)}"
                                     for k, v in best_config.items())


# --------------------------------------------------------------------------- MLflow


class ParentRun:
    """Parent MLflow run of the sweep (or nothing); yields the trials' MLflow coordinates."""

    def __init__(self, params: Mapping[str, Any] | None, settings: TuneSettings,
                 base: DistillConfig, data: SweepData, enabled: bool) -> None:
        self.args = (params or {}, settings, base, data)
        self.enabled = enabled
        self.ctx: Any = None

    def __enter__(self) -> dict[str, str] | None:
        if not self.enabled:
            return None
        import mlflow

        from aikd.tracking import stage_run

        params, settings, base, data = self.args
        self.ctx = stage_run("tune", params, run_name="tune",
                             log_params={"tune": settings.to_dict(), "distill": base.to_dict(),
                                         "data": data.info})
        run = self.ctx.__enter__()
        return {"tracking_uri": absolute_tracking_uri(mlflow.get_tracking_uri()),
                "experiment_id": run.info.experiment_id, "parent_run_id": run.info.run_id}

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def absolute_tracking_uri(uri: str) -> str:
    """Trials run in other processes and directories: make a relative sqlite path absolute."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _child_runs(parent: dict[str, str] | None) -> dict[str, str]:
    if parent is None:
        return {}
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [parent["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent['parent_run_id']}'")
    return {r.data.tags.get("ray.trial_id", ""): r.info.run_id for r in runs}


def _close_child_runs(parent: dict[str, str] | None, trials: pd.DataFrame) -> None:
    """Trials Ray stopped were killed mid-run: mark their child runs KILLED (or FINISHED
    if the final report got out), so none stays RUNNING in the MLflow UI."""
    if parent is None:
        return
    import mlflow

    client = mlflow.MlflowClient()
    for _, row in trials.iterrows():
        if not row["mlflow_run_id"]:
            continue
        run = client.get_run(row["mlflow_run_id"])
        if run.info.status == "RUNNING":
            status = {"completed": "FINISHED", "error": "FAILED"}.get(row["status"], "KILLED")
            client.set_terminated(row["mlflow_run_id"], status)
        client.set_tag(row["mlflow_run_id"], "tune.status", row["status"])


def _log_to_parent(best: Mapping[str, Any], paths: Mapping[str, Path]) -> None:
    import mlflow

    mlflow.log_metrics({"best_objective": best["objective"]["value"],
                        **{f"trials_{s}": float(best["sweep"][s]) for s in TRIAL_STATUSES}})
    for p in paths.values():
        mlflow.log_artifact(str(p), artifact_path="tune")


# --------------------------------------------------------------------------- results


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _trial_row(res: Any, names: Sequence[str], settings: TuneSettings,
               runs: Mapping[str, str]) -> dict[str, Any]:
    """One trials.csv row from a Ray result: status, sampled values, last and best score."""
    trial_id = Path(res.path).name
    hist = res.metrics_dataframe if res.metrics_dataframe is not None else pd.DataFrame()
    last = dict(res.metrics or {})
    if res.error is not None:
        status = "error"
    elif last.get("final"):
        status = "completed"
    else:
        status = "stopped"
    row: dict[str, Any] = {"trial_id": trial_id, "status": status}
    row.update({n: res.config.get(n) for n in names})
    if settings.tie_swa_lr and "lr" in names:
        row["swa_lr"] = res.config.get("lr")
    row["step"] = last.get("step", 0)
    row["objective"] = last.get("objective", math.nan)
    obj = hist["objective"] if "objective" in hist else pd.Series(dtype=float)
    row["min_objective"] = float(obj.min()) if obj.notna().any() else math.nan
    row["reports"] = len(hist)
    row.update({k: v for k, v in last.items() if k.startswith("val_")})
    row["error"] = str(res.error).splitlines()[0][:300] if res.error is not None else ""
    row["mlflow_run_id"] = runs.get(trial_id, "")
    return row


def _reports(res: Any) -> pd.DataFrame | None:
    hist = res.metrics_dataframe
    if hist is None or not len(hist):
        return None
    keep = [c for c in ("step", "objective", "final") if c in hist]
    return hist[keep].assign(trial_id=Path(res.path).name)


def _best_summary(trials: pd.DataFrame, space: list[SearchParam], settings: TuneSettings,
                  steps: int, data: SweepData, parent: dict[str, str] | None
                  ) -> dict[str, Any]:
    """What best.yaml holds: the completed trial with the lowest final objective."""
    done = trials[(trials["status"] == "completed") & np.isfinite(trials["objective"])]
    if done.empty:
        counts = trials["status"].value_counts().to_dict()
        errors = trials["error"][trials["error"] != ""].tolist()[:3]
        raise RuntimeError(
            f"no trial completed with a defined objective ({counts}); errors: {errors}")
    names = [p.name for p in space]
    best_row = trials[trials["trial_id"] == done.loc[done["objective"].idxmin(), "trial_id"]]
    best_row = best_row.iloc[0]
    best_config = {n: _plain(best_row[n]) for n in names}
    if settings.tie_swa_lr and "lr" in names:
        best_config["swa_lr"] = best_config["lr"]
    dets = settings.detectors
    return {
        "objective": {
            "name": f"mean val pAUC at FMR {settings.fmr:g} over "
                    + (", ".join(dets) + " alignments" if dets else "jittered faces"),
            "mode": "min", "value": float(best_row["objective"])},
        "config": best_config,
        "command": apply_command(best_config),
        "trial": {"id": str(best_row["trial_id"]), "steps": int(best_row["step"]),
                  "mlflow_run_id": str(best_row["mlflow_run_id"])},
        "sweep": {"trials": len(trials),
                  **{s: int((trials["status"] == s).sum()) for s in TRIAL_STATUSES},
                  "steps_per_trial": steps, "search": settings.search,
                  "space": {p.name: p.describe() for p in space},
                  "data": {k: _plain(v) for k, v in data.info.items()},
                  "mlflow_parent_run_id": parent["parent_run_id"] if parent else None},
    }


def collect_results(grid: Any, space: list[SearchParam], settings: TuneSettings, steps: int,
                    out: Path, data: SweepData, parent: dict[str, str] | None) -> SweepResult:
    """trials.csv, best.yaml and the plot from Ray's results; child runs closed in MLflow."""
    names = [p.name for p in space]
    runs = _child_runs(parent)
    results = list(grid)
    trials = pd.DataFrame([_trial_row(res, names, settings, runs) for res in results])
    reports = [r for r in map(_reports, results) if r is not None]
    _close_child_runs(parent, trials)
    trials = trials.sort_values(["objective"], kind="stable", na_position="last")
    trials = trials.reset_index(drop=True)
    best = _best_summary(trials, space, settings, steps, data, parent)
    paths = {"trials": out / "trials.csv", "best": out / "best.yaml", "plot": out / "sweep.png"}
    trials.to_csv(paths["trials"], index=False)
    paths["best"].write_text(yaml.safe_dump(best, sort_keys=False))
    plot_sweep(trials, names, paths["plot"], title=best["objective"]["name"])
    all_reports = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame()
    if parent is not None:
        _log_to_parent(best, paths)
    print(f"best of {len(trials)} trials: objective {best['objective']['value']:.4f} with "
          f"{best['config']}\napply it with:\n  {best['command']}")
    return SweepResult(trials, best, all_reports, paths)


# --------------------------------------------------------------------------- plot


def plot_sweep(trials: pd.DataFrame, names: Sequence[str], path: str | Path,
               title: str = "objective") -> Path:
    """Scatter of the searched values against the objective (one panel per parameter, plus
    p against lr coloured by the objective); stopped trials hollow, the best a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    numeric = [n for n in names if pd.api.types.is_numeric_dtype(trials[n])]
    pair = ("lr", "max_shift") if {"lr", "max_shift"} <= set(numeric) else None
    panels = len(numeric) + (1 if pair else 0)
    fig = Figure(figsize=(4.2 * max(panels, 1), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ok = np.isfinite(trials["objective"].to_numpy(float))
    done = (trials["status"] == "completed").to_numpy()
    best = int(np.nanargmin(np.where(done & ok, trials["objective"], np.nan))) \
        if (done & ok).any() else None
    k = 1
    if pair:
        ax = fig.add_subplot(1, panels, k)
        k += 1
        sc = ax.scatter(trials[pair[0]][ok], trials[pair[1]][ok], c=trials["objective"][ok],
                        cmap="viridis_r", s=40, edgecolors="k")
        fig.colorbar(sc, ax=ax, label="objective (lower is better)")
        if best is not None:
            ax.scatter([trials[pair[0]][best]], [trials[pair[1]][best]], marker="*", s=250,
                       c="red", label="best")
            ax.legend(loc="best", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("lr")
        ax.set_ylabel("max_shift (p)")
    for name in numeric:
        ax = fig.add_subplot(1, panels, k)
        k += 1
        x, y = trials[name].to_numpy(float), trials["objective"].to_numpy(float)
        ax.scatter(x[done & ok], y[done & ok], c="tab:blue", s=36, label="completed")
        ax.scatter(x[~done & ok], y[~done & ok], facecolors="none", edgecolors="tab:orange",
                   s=36, label="stopped early (last report)")
        if best is not None:
            ax.scatter([x[best]], [y[best]], marker="*", s=250, c="red", label="best")
        if name == "lr" or name.endswith("lr"):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("objective")
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
