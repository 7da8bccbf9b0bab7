"""``aikd tune``: Ray Tune sweeps over the jitter range p, the learning rate (and optionally
the loss weight w) of AI-KD training, tracked in MLflow.

The paper fixes p = 3 px and lr = 0.05 for VGGFace2 crops and an iResNet; this project
trains a dlib ResNet on LFW/YTF with the jitter in inter-ocular units, so both are searched
here. Each trial is one ordinary :func:`aikd.distill.train_distill` run on a sized-down
training subset; its objective is the validation pAUC (lower is better) of the student's
quality on held-out *validation* identities aligned by the misaligning detectors, never
the ``test`` (benchmark) images. Intermediate validations are reported to Ray so ASHA
stops bad trials early. See docs/tuning.md for the settings and the measured sweep.

Public API::

    summary = tune_stage(params)            # the DVC stage / ``aikd tune`` body
    settings = TuneSettings.from_params(params)
    data = load_sweep_data(params, settings)
    result = run_sweep(data, base_config, settings, out_dir=..., params=params)

This module imports only light dependencies at import time (``aikd tune --help`` stays
fast); Ray, torch and MLflow load when a sweep starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

if TYPE_CHECKING:
    from aikd.distill.config import DistillConfig

log = logging.getLogger(__name__)

#: Eye distance of the 112-px ArcFace template the paper's p = 3 px refers to.
ARCFACE112_IOD_PX = 35.2377

#: Upper end of the paper-centred jitter range, [0, 6] px at the 112-px template.
MAX_SHIFT_HIGH_PX = 6.0

#: AF_UNIX socket paths are limited to 107 bytes on Linux; Ray puts its sockets at
#: ``<temp_dir>/session_<date>_<usec>_<pid>/sockets/plasma_store`` (temp_dir + 64 bytes
#: with a 7-digit pid), so the temp dir may be at most this long.
MAX_RAY_TEMP_DIR = 107 - 64

SEARCH_ALGORITHMS = ("random", "optuna", "hyperopt")
_FMR_TAGS = {0.01: "1e-2", 0.001: "1e-3"}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SearchParam:
    """One searched DistillConfig field: ``uniform``/``loguniform`` over [low, high] or a
    ``choice`` among ``values``."""

    name: str
    dist: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> SearchParam:
        unknown = sorted(set(spec) - {"dist", "low", "high", "values"})
        if unknown:
            raise ValueError(f"tune.space.{name}: unknown keys {unknown}")
        dist = str(spec.get("dist", "uniform"))
        if dist in ("uniform", "loguniform"):
            if spec.get("low") is None or spec.get("high") is None:
                raise ValueError(f"tune.space.{name}: {dist} needs low and high")
            low, high = float(spec["low"]), float(spec["high"])
            if not low < high:
                raise ValueError(f"tune.space.{name}: low {low} must be < high {high}")
            if dist == "loguniform" and low <= 0:
                raise ValueError(f"tune.space.{name}: loguniform needs low > 0, got {low}")
            return cls(name, dist, low, high)
        if dist == "choice":
            values = tuple(spec.get("values") or ())
            if not values:
                raise ValueError(f"tune.space.{name}: choice needs a non-empty 'values' list")
            return cls(name, dist, values=values)
        raise ValueError(f"tune.space.{name}: dist must be uniform, loguniform or choice, "
                         f"got {dist!r}")

    def to_ray(self) -> Any:
        from ray import tune

        if self.dist == "uniform":
            return tune.uniform(self.low, self.high)
        if self.dist == "loguniform":
            return tune.loguniform(self.low, self.high)
        return tune.choice(list(self.values))

    def contains(self, value: Any) -> bool:
        if self.dist == "choice":
            return value in self.values
        return bool(self.low <= float(value) <= self.high)  # type: ignore[operator]

    def extremes(self) -> list[Any]:
        return list(self.values) if self.dist == "choice" else [self.low, self.high]


def default_space(units: str) -> dict[str, dict[str, Any]]:
    """The issue's default space: p over [0, 6] px (or the same range in IOD units at the
    112-px ArcFace template, [0, 0.17]), lr log-uniform over [1e-3, 0.2]."""
    high = MAX_SHIFT_HIGH_PX if units == "px" else round(MAX_SHIFT_HIGH_PX / ARCFACE112_IOD_PX, 3)
    return {"max_shift": {"dist": "uniform", "low": 0.0, "high": high},
            "lr": {"dist": "loguniform", "low": 1e-3, "high": 0.2}}


@dataclass
class TuneSettings:
    """params.yaml ``tune:`` section (see docs/tuning.md); unknown keys are refused."""

    out_dir: str = "tune"
    label_method: str = "sddfiqa"  # data/labels/<method>.parquet
    variant: str = "T"  # distill.variants entry the trials start from (T: AI-KD)
    datasets: list[str] | None = None  # None: params labels.datasets, else [lfw, ytf]
    #: Objective: mean val pAUC over faces aligned by these detectors ([]: jittered faces).
    detectors: list[str] = field(
        default_factory=lambda: ["retinaface", "mtcnn", "dlib", "centerface"])
    fmr: float = 1e-2  # 1e-2 or 1e-3 (the two validate_quality reports)
    train_images: int = 1000
    val_images: int = 200
    val_per_identity: int = 8  # cap, so one large identity cannot fill the val subset
    teacher_cache: bool = True  # read data/embeddings/<detector>/<ds>_<backbone>.parquet
    space: dict[str, dict[str, Any]] | None = None  # None: default_space(jitter units)
    #: SWALR anneals to swa_lr for the second half of a run; tie it to lr so "the learning
    #: rate" is what the official config means (lr = swa_lr = 0.05).
    tie_swa_lr: bool = True
    #: DistillConfig overrides for the trials only (the sweep budget; not in the command).
    trial: dict[str, Any] = field(default_factory=lambda: {
        "epochs": 5.0, "val_every": 50, "val_subset": None, "checkpoint_every": 0,
        "keep_checkpoints": 1, "progress": False})
    num_samples: int = 8
    max_concurrent: int = 2
    search: str = "random"
    seed: int = 0
    #: ASHA on the objective, in optimizer steps; null disables early stopping.
    asha: dict[str, Any] | None = field(
        default_factory=lambda: {"grace_period": 50, "reduction_factor": 2})
    time_budget_s: float | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    #: address: null (RAY_ADDRESS or a new local instance) | "auto" | "ray://host:10001";
    #: temp_dir/num_cpus apply to a new local instance only; storage_path holds Ray's
    #: results, work_dir each trial's train_distill output (model.pt, history.csv).
    ray: dict[str, Any] = field(default_factory=lambda: {
        "address": None, "temp_dir": ".ray", "num_cpus": None, "storage_path": ".ray/results",
        "work_dir": ".ray/trials"})

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TuneSettings:
        values = dict(params.get("tune") or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tune keys: {unknown} (known: {sorted(known)})")
        defaults = cls()
        for name in ("trial", "ray", "resources"):  # nested sections merge with defaults
            if name in values and values[name] is not None:
                values[name] = {**getattr(defaults, name), **dict(values[name])}
        out = cls(**values)
        out.validate()
        return out

    def validate(self) -> None:
        if self.search not in SEARCH_ALGORITHMS:
            raise ValueError(f"tune.search must be one of {SEARCH_ALGORITHMS}, got {self.search!r}")
        if self.fmr not in _FMR_TAGS:
            raise ValueError(f"tune.fmr must be 1e-2 or 1e-3 (validate_quality's), got {self.fmr}")
        for name in ("train_images", "val_images", "val_per_identity", "num_samples",
                     "max_concurrent"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"tune.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_per_identity < 2:
            raise ValueError("tune.val_per_identity must be >= 2 (mated pairs need two images)")
        unknown = sorted(set(self.ray) - {"address", "temp_dir", "num_cpus", "storage_path",
                                          "work_dir"})
        if unknown:
            raise ValueError(f"tune.ray: unknown keys {unknown}")
        if self.asha is not None:
            unknown = sorted(set(self.asha) - {"grace_period", "reduction_factor"})
            if unknown:
                raise ValueError(f"tune.asha: unknown keys {unknown}")
            if int(self.asha.get("grace_period", 1)) < 1:
                raise ValueError("tune.asha.grace_period must be >= 1 optimizer step")
            if float(self.asha.get("reduction_factor", 2)) <= 1:
                raise ValueError("tune.asha.reduction_factor must be > 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def base_distill_config(params: Mapping[str, Any], variant: str = "T") -> DistillConfig:
    """The config ``distill@<labels>-<variant>`` trains with, as the distill stage builds
    it: params ``distill:`` minus the stage's own keys (``out_dir``, ``runs``, ...), then
    the variant's changes, the global seed unless set."""
    from aikd.distill.stage import config_with

    variants = (params.get("distill") or {}).get("variants") or {}
    if variants and variant not in variants:
        raise KeyError(f"tune.variant {variant!r} is not in distill.variants "
                       f"({', '.join(variants)})")
    return config_with(params, variants.get(variant))


def search_params(settings: TuneSettings, base: DistillConfig) -> list[SearchParam]:
    """The searched fields, checked against DistillConfig and the jitter units."""
    spec = settings.space if settings.space is not None else default_space(base.jitter_units)
    if not spec:
        raise ValueError("tune.space is empty: nothing to search")
    fields = {f.name for f in dataclasses.fields(base)}
    out = []
    for name, s in spec.items():
        if name not in fields:
            raise ValueError(f"tune.space.{name} is not a DistillConfig field")
        if name == "swa_lr" and settings.tie_swa_lr:
            raise ValueError("tune.space.swa_lr conflicts with tune.tie_swa_lr: true")
        out.append(SearchParam.from_spec(name, s or {}))
    for p in out:
        if p.name == "max_shift" and p.dist != "choice":
            if base.jitter_units == "iod" and p.high > 1.0:  # type: ignore[operator]
                raise ValueError(
                    f"tune.space.max_shift high={p.high} with distill.jitter_units 'iod' is "
                    f"{p.high} eye distances: give IOD fractions (3 px at the 112-px template "
                    f"is {3 / ARCFACE112_IOD_PX:.3f}) or set distill.jitter_units: px")
            if base.jitter_units == "px" and p.high < 1.0:  # type: ignore[operator]
                log.warning("tune.space.max_shift high=%s px is under one pixel: IOD values "
                            "with jitter_units px?", p.high)
        for value in p.extremes():  # every bound must be a valid config on its own
            trial_config(base, settings, {p.name: value})
    return out


def trial_config(base: DistillConfig, settings: TuneSettings,
                 sampled: Mapping[str, Any]) -> DistillConfig:
    """The config one trial trains with: base, trial budget overrides, sampled values."""
    from aikd.distill.config import DistillConfig

    values = {**base.to_dict(), **settings.trial, "train_subset": None, **sampled}
    if settings.tie_swa_lr and "lr" in sampled:
        values["swa_lr"] = sampled["lr"]
    return DistillConfig.from_dict(values)


def objective_key(fmr: float, detector: str | None) -> str:
    return f"val_pauc_fmr{_FMR_TAGS[fmr]}" + (f"_{detector}" if detector else "")


def sweep_objective(metrics: Mapping[str, float], detectors: Sequence[str], fmr: float) -> float:
    """Mean validation pAUC over the detectors' alignments (lower is better).

    A detector's pAUC is NaN when undefined on the pairs (no mated pair fails at that FMR);
    whether it is depends on the fixed pairs, not on the trial, so the NaN-skipping mean
    stays comparable across trials. NaN only if every detector's pAUC is undefined.
    """
    keys = [objective_key(fmr, d) for d in detectors] or [objective_key(fmr, None)]
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise KeyError(f"validation metrics lack {missing} (have {sorted(metrics)})")
    values = np.array([float(metrics[k]) for k in keys])
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


# --------------------------------------------------------------------------- data


@dataclass
class SweepData:
    """What every trial trains and validates on (shipped to the trials once)."""

    train: pd.DataFrame  # root (absolute), path, x0..y4, quality
    val: pd.DataFrame  # + identity
    val_landmarks: dict[str, pd.DataFrame]  # detector -> path, x0..y4, status
    teacher_cache: dict[str, np.ndarray] | None
    info: dict[str, Any] = field(default_factory=dict)


def _need(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} ({hint})")
    return path


def sample_validation(val: pd.DataFrame, n: int, per_identity: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` val rows from identities with >= 2 images, at most ``per_identity`` each,
    whole identities in a seeded order (every image then takes part in mated pairs)."""
    rng = np.random.default_rng([int(seed), 23])
    counts = val["identity"].value_counts()
    ids = np.array(sorted(counts.index[counts >= 2]))
    if ids.size == 0:
        raise ValueError("no validation identity has two labelled images: no mated pairs")
    picked: list[pd.DataFrame] = []
    total = 0
    for ident in ids[rng.permutation(ids.size)]:
        group = val[val["identity"] == ident]
        if len(group) > per_identity:
            group = group.iloc[np.sort(rng.choice(len(group), per_identity, replace=False))]
        take = min(len(group), n - total)
        if take < 2:
            break
        picked.append(group.iloc[:take])
        total += take
        if total >= n:
            break
    return pd.concat(picked).sort_values("path").reset_index(drop=True)


def load_sweep_data(params: Mapping[str, Any], settings: TuneSettings) -> SweepData:
    """Train/val rows with labels, the detectors' val landmarks and the teacher cache.

    The same files as the distill stage: ``data/manifests/<ds>.parquet`` joined with the
    training detector's landmarks (``train`` split to train, ``val`` to validate; images
    of the evaluation pairs and the ``test`` split are never read), labels from
    ``data/labels/<method>.parquet`` (rows without a finite label are dropped and counted).
    """
    from aikd.distill.data import load_rows, read_labels
    from aikd.paths import embeddings_path, labels_path, landmarks_path, manifest_path

    datasets = settings.datasets or list((params.get("labels") or {}).get("datasets")
                                         or ["lfw", "ytf"])
    ref = str((params.get("landmarks") or {}).get("training_detector", "reference"))
    hint = "run the pipeline first: dvc repro"
    labels = read_labels(_need(labels_path(params, settings.label_method),
                               f"labels of {settings.label_method!r}",
                               f"dvc repro labels@{settings.label_method}"))
    quality = labels.set_index("path")["quality"]
    frames: dict[str, list[pd.DataFrame]] = {"train": [], "val": []}
    info: dict[str, Any] = {"datasets": datasets, "label_method": settings.label_method}
    for ds in datasets:
        manifest = pd.read_parquet(_need(manifest_path(params, ds), f"{ds} manifest", hint))
        if "in_eval_pairs" in manifest.columns:
            manifest = manifest[~manifest["in_eval_pairs"].astype(bool)]
        marks = pd.read_parquet(_need(landmarks_path(params, ds, ref), f"{ds} {ref} landmarks",
                                      hint))
        for split in frames:
            rows = load_rows(manifest, marks, split)
            rows["root"] = [str(Path(r).resolve()) for r in rows["root"]]
            rows["quality"] = rows["path"].map(quality).astype(float)
            ok = np.isfinite(rows["quality"].to_numpy())
            info[f"{ds}_{split}_unlabelled"] = int((~ok).sum())
            frames[split].append(rows[ok])
    train_all = pd.concat(frames["train"], ignore_index=True)
    val_all = pd.concat(frames["val"], ignore_index=True)
    if train_all.empty or val_all.empty:
        raise ValueError(f"no labelled train or val rows in {datasets}")
    rng = np.random.default_rng([settings.seed, 29])
    n_train = min(settings.train_images, len(train_all))
    train = train_all.iloc[np.sort(rng.choice(len(train_all), n_train, replace=False))]
    train = train.reset_index(drop=True)
    val = sample_validation(val_all, settings.val_images, settings.val_per_identity,
                            settings.seed)
    tables: dict[str, pd.DataFrame] = {}
    for det in settings.detectors:
        parts = [pd.read_parquet(_need(landmarks_path(params, ds, det), f"{ds} {det} landmarks",
                                       f"add {det} to landmarks.detectors and dvc repro"))
                 for ds in datasets]
        table = pd.concat(parts, ignore_index=True)
        tables[det] = table[table["path"].isin(val["path"])].reset_index(drop=True)
        found = int((tables[det].get("status", pd.Series("ok", index=tables[det].index))
                     == "ok").sum())
        info[f"val_found_{det}"] = found
    cache = None
    if settings.teacher_cache:
        from aikd.distill.train import read_teacher_cache

        files = [_need(embeddings_path(params, ds, ref), f"{ds} teacher embeddings",
                       "dvc repro embed, or tune.teacher_cache: false") for ds in datasets]
        wanted = set(train["path"]) | set(val["path"])
        cache = {p: v for p, v in read_teacher_cache(files).items() if p in wanted}
    info.update(train_images=len(train), train_available=len(train_all), val_images=len(val),
                val_available=len(val_all), val_identities=int(val["identity"].nunique()))
    return SweepData(train, val, tables, cache, info)


# --------------------------------------------------------------------------- trials


@dataclass
class _TrialJob:
    """Everything a trial needs; put into Ray's object store once by with_parameters."""

    data: SweepData
    base: dict[str, Any]
    settings: dict[str, Any]
    mlflow: dict[str, str] | None  # tracking_uri, experiment_id, parent_run_id
    work_dir: str  # absolute; train_distill's out_dir is <work_dir>/<trial id>


def _trial(config: dict[str, Any], job: _TrialJob) -> None:
    """One Ray Tune trial: train_distill with the sampled values, reporting every validation.

    Runs in a Ray worker (so every path is absolute). With MLflow on, the trial opens a
    child run of the sweep's parent run; train_distill logs its per-step losses, lr,
    validation metrics and model into it as in ``aikd distill``.
    """
    import mlflow
    from ray import tune

    from aikd.distill.config import DistillConfig
    from aikd.distill.train import train_distill

    settings = TuneSettings(**job.settings)
    cfg = trial_config(DistillConfig.from_dict(job.base), settings, config)
    ctx = tune.get_context()
    # Not the Ray trial dir: Ray copies that to its storage while the trial writes into it.
    out = Path(job.work_dir) / ctx.get_trial_id()
    if job.mlflow is not None:
        from ray.air.integrations.mlflow import setup_mlflow

        setup_mlflow({k: str(v) for k, v in cfg.to_dict().items()},
                     tracking_uri=job.mlflow["tracking_uri"],
                     experiment_id=job.mlflow["experiment_id"],
                     run_name=f"trial-{ctx.get_trial_id()}",
                     tags={"mlflow.parentRunId": job.mlflow["parent_run_id"],
                           "ray.trial_id": ctx.get_trial_id(), "aikd.stage": "tune-trial"})
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


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


# --------------------------------------------------------------------------- Ray


def ray_temp_dir(path: str | Path) -> Path:
    """Absolute Ray temp dir, refused if Ray's socket paths under it would be too long."""
    p = Path(path).resolve()
    if len(str(p).encode()) > MAX_RAY_TEMP_DIR:
        raise ValueError(
            f"Ray temp dir {p} is {len(str(p).encode())} bytes; Ray's unix sockets below it "
            f"need it to be at most {MAX_RAY_TEMP_DIR} (set tune.ray.temp_dir to a short path)")
    return p


def init_ray(settings: TuneSettings) -> bool:
    """Connect to / start Ray; True if this call started it (the caller shuts it down).

    No dashboard, usage stats off (aikd/__init__.py), temp dir under the project. An
    address from params or RAY_ADDRESS runs the same sweep on a cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    cfg = settings.ray
    address = cfg.get("address") or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        temp = ray_temp_dir(cfg.get("temp_dir") or ".ray")
        temp.mkdir(parents=True, exist_ok=True)
        ray.init(num_cpus=cfg.get("num_cpus"), include_dashboard=False, _temp_dir=str(temp))
    return True


def _search_algorithm(settings: TuneSettings) -> Any:
    if settings.search == "random":
        from ray.tune.search import BasicVariantGenerator

        # a SearchAlgorithm, not a Searcher: it limits concurrency itself
        return BasicVariantGenerator(random_state=settings.seed,
                                     max_concurrent=settings.max_concurrent)
    module = {"optuna": "optuna", "hyperopt": "hyperopt"}[settings.search]
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(f"tune.search: {settings.search} needs the '{module}' package, which "
                           "is not installed here; install it or use search: random")
    if settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=settings.seed)
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(random_state_seed=settings.seed)


def planned_steps(n_train: int, cfg: DistillConfig) -> int:
    """Optimizer steps of one single-process trial (train_distill's arithmetic)."""
    per_epoch = n_train // cfg.batch_size
    micro = int(cfg.epochs * per_epoch) // cfg.grad_accum * cfg.grad_accum
    return micro // cfg.grad_accum


# --------------------------------------------------------------------------- the sweep


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


def run_sweep(
    data: SweepData,
    base: DistillConfig,
    settings: TuneSettings,
    *,
    out_dir: str | Path,
    params: Mapping[str, Any] | None = None,
    mlflow_enabled: bool = True,
) -> SweepResult:
    """Run the sweep on Ray (started here unless already running) and write the outputs.

    MLflow: one parent run (``aikd.tracking.stage_run``) holding the settings, the best
    score and the artifacts; one child run per trial (tag ``mlflow.parentRunId``).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = search_params(settings, base)
    probe = trial_config(base, settings, {})
    steps = planned_steps(len(data.train), probe)
    if steps < 1:
        raise ValueError(f"{len(data.train)} train images x {probe.epochs} epochs at batch "
                         f"{probe.batch_size} give no optimizer step")
    scheduler = None
    if settings.asha is not None:
        if not probe.val_every or probe.val_every >= steps:
            raise ValueError(f"ASHA needs intermediate validations: tune.trial.val_every="
                             f"{probe.val_every} with {steps} steps per trial")
        grace = int(settings.asha.get("grace_period", probe.val_every))
        if grace > steps:
            raise ValueError(f"tune.asha.grace_period {grace} exceeds the {steps} trial steps")
        scheduler = ASHAScheduler(time_attr="step", max_t=steps, grace_period=grace,
                                  reduction_factor=float(settings.asha.get("reduction_factor",
                                                                           2)))
    search_alg = _search_algorithm(settings)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(str(settings.ray.get("storage_path") or ".ray/results")).resolve()
    work = Path(str(settings.ray.get("work_dir") or ".ray/trials")).resolve()
    name = time.strftime("tune-%Y%m%d-%H%M%S")
    started = init_ray(settings)
    try:
        with _ParentRun(params, settings, base, data, mlflow_enabled) as parent:
            job = _TrialJob(data, base.to_dict(), settings.to_dict(), parent,
                            str(work / name))
            trainable = tune.with_resources(tune.with_parameters(_trial, job=job),
                                            {k: float(v) for k, v in settings.resources.items()
                                             if v})
            tuner = tune.Tuner(
                trainable,
                param_space={p.name: p.to_ray() for p in space},
                tune_config=tune.TuneConfig(
                    metric="objective", mode="min", search_alg=search_alg, scheduler=scheduler,
                    num_samples=settings.num_samples,
                    max_concurrent_trials=None if settings.search == "random"
                    else settings.max_concurrent,
                    time_budget_s=settings.time_budget_s,
                    trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
            )
            grid = tuner.fit()
            # trials Ray stopped were killed before their own clean-up: drop checkpoints
            for ckpt in (work / name).glob("*/checkpoints"):
                shutil.rmtree(ckpt, ignore_errors=True)
            result = _collect(grid, space, settings, steps, out, data, parent)
    finally:
        if started:
            import ray

            ray.shutdown()
    return result


class _ParentRun:
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


def _collect(grid: Any, space: list[SearchParam], settings: TuneSettings, steps: int,
             out: Path, data: SweepData, parent: dict[str, str] | None) -> SweepResult:
    """trials.csv, best.yaml and the plot from Ray's results; child runs closed in MLflow."""
    names = [p.name for p in space]
    runs = _child_runs(parent)
    rows, reports = [], []
    for res in grid:
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
        rows.append(row)
        if len(hist):
            keep = [c for c in ("step", "objective", "final") if c in hist]
            reports.append(hist[keep].assign(trial_id=trial_id))
    trials = pd.DataFrame(rows)
    _close_child_runs(parent, trials)
    done = trials[(trials["status"] == "completed") & np.isfinite(trials["objective"])]
    if done.empty:
        counts = trials["status"].value_counts().to_dict()
        errors = trials["error"][trials["error"] != ""].tolist()[:3]
        raise RuntimeError(
            f"no trial completed with a defined objective ({counts}); errors: {errors}")
    trials = trials.sort_values(["objective"], kind="stable", na_position="last")
    trials = trials.reset_index(drop=True)
    best_row = trials[trials["trial_id"] == done.loc[done["objective"].idxmin(), "trial_id"]]
    best_row = best_row.iloc[0]
    best_config = {n: _plain(best_row[n]) for n in names}
    if settings.tie_swa_lr and "lr" in names:
        best_config["swa_lr"] = best_config["lr"]
    dets = settings.detectors
    best = {
        "objective": {
            "name": f"mean val pAUC at FMR {settings.fmr:g} over "
                    + (", ".join(dets) + " alignments" if dets else "jittered faces"),
            "mode": "min", "value": float(best_row["objective"])},
        "config": best_config,
        "command": apply_command(best_config),
        "trial": {"id": str(best_row["trial_id"]), "steps": int(best_row["step"]),
                  "mlflow_run_id": str(best_row["mlflow_run_id"])},
        "sweep": {"trials": len(trials),
                  **{s: int((trials["status"] == s).sum())
                     for s in ("completed", "stopped", "error")},
                  "steps_per_trial": steps, "search": settings.search,
                  "space": {p.name: ({"dist": p.dist, "values": list(p.values)}
                                     if p.dist == "choice"
                                     else {"dist": p.dist, "low": p.low, "high": p.high})
                            for p in space},
                  "data": {k: _plain(v) for k, v in data.info.items()},
                  "mlflow_parent_run_id": parent["parent_run_id"] if parent else None},
    }
    paths = {"trials": out / "trials.csv", "best": out / "best.yaml", "plot": out / "sweep.png"}
    trials.to_csv(paths["trials"], index=False)
    paths["best"].write_text(yaml.safe_dump(best, sort_keys=False))
    plot_sweep(trials, names, paths["plot"], title=best["objective"]["name"])
    all_reports = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame()
    if parent is not None:
        import mlflow

        mlflow.log_metrics({"best_objective": best["objective"]["value"],
                            **{f"trials_{s}": float(best["sweep"][s])
                               for s in ("completed", "stopped", "error")}})
        for p in paths.values():
            mlflow.log_artifact(str(p), artifact_path="tune")
    print(f"best of {len(trials)} trials: objective {best['objective']['value']:.4f} with "
          f"{best_config}\napply it with:\n  {best['command']}")
    return SweepResult(trials, best, all_reports, paths)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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


# --------------------------------------------------------------------------- stage and CLI


def tune_stage(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tune`` stage: load the data named in params, sweep, write ``tune.out_dir``.

    Returns best.yaml's content plus the output paths.
    """
    settings = TuneSettings.from_params(params)
    base = base_distill_config(params, settings.variant)
    search_params(settings, base)  # refuse a bad space before loading data or starting Ray
    data = load_sweep_data(params, settings)
    log.info("tune: %s", data.info)
    result = run_sweep(data, base, settings, out_dir=settings.out_dir, params=params)
    return {**result.best, "paths": {k: str(v) for k, v in result.paths.items()}}


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``aikd tune`` to the aikd CLI's subparsers."""
    p = subparsers.add_parser(
        "tune", help="Ray Tune sweep over the jitter range p and lr (MLflow-tracked)",
        description="Sweep AI-KD training settings (params 'tune:'); writes best.yaml, "
                    "trials.csv and sweep.png and prints the dvc exp run command.")
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, e.g. -S tune.num_samples=4")
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Body of ``aikd tune``."""
    from aikd.config import load_params

    summary = tune_stage(load_params(args.params, args.set))
    print(f"wrote {summary['paths']['best']}")
    return 0
