"""The sweep on Ray: start or join Ray, build the Tuner (search algorithm, ASHA), run it.

No dashboard, usage stats off (``aikd/__init__.py``), temp dir under the project; an
address from params or ``RAY_ADDRESS`` runs the same sweep on a cluster.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aikd.errors import UsageError
from aikd.tuning.data import SweepData
from aikd.tuning.results import ParentRun, SweepResult, collect_results
from aikd.tuning.settings import TuneSettings, search_params, trial_config
from aikd.tuning.trial import TrialJob, run_trial, trial_dirname

if TYPE_CHECKING:
    from aikd.distill.config import DistillConfig

#: AF_UNIX socket paths are limited to 107 bytes on Linux; Ray puts its sockets at
#: ``<temp_dir>/session_<date>_<usec>_<pid>/sockets/plasma_store`` (temp_dir + 64 bytes
#: with a 7-digit pid), so the temp dir may be at most this long.
MAX_RAY_TEMP_DIR = 107 - 64


def ray_temp_dir(path: str | Path) -> Path:
    """Absolute Ray temp dir, refused if Ray's socket paths under it would be too long."""
    p = Path(path).resolve()
    if len(str(p).encode()) > MAX_RAY_TEMP_DIR:
        raise UsageError(
            f"Ray temp dir {p} is {len(str(p).encode())} bytes; Ray's unix sockets below it "
            f"need it to be at most {MAX_RAY_TEMP_DIR} (set tune.ray.temp_dir to a short path)")
    return p


def init_ray(settings: TuneSettings) -> bool:
    """Connect to / start Ray; True if this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    cfg = settings.ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        temp = ray_temp_dir(cfg.temp_dir)
        temp.mkdir(parents=True, exist_ok=True)
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, _temp_dir=str(temp))
    return True


def search_algorithm(settings: TuneSettings) -> Any:
    """Ray's search algorithm for ``tune.search``, seeded with ``tune.seed``."""
    if settings.search == "random":
        from ray.tune.search import BasicVariantGenerator

        # a SearchAlgorithm, not a Searcher: it limits concurrency itself
        return BasicVariantGenerator(random_state=settings.seed,
                                     max_concurrent=settings.max_concurrent)
    module = {"optuna": "optuna", "hyperopt": "hyperopt"}[settings.search]
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"tune.search: {settings.search} needs the '{module}' package, which "
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


def asha_scheduler(settings: TuneSettings, probe: DistillConfig, steps: int) -> Any:
    """ASHA on the objective with rungs in optimizer steps, or None when disabled."""
    if settings.asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    if not probe.val_every or probe.val_every >= steps:
        raise UsageError(f"ASHA needs intermediate validations: tune.trial.val_every="
                         f"{probe.val_every} with {steps} steps per trial; lower it or set "
                         f"tune.asha: null")
    grace = int(settings.asha.grace_period)
    if grace > steps:
        raise UsageError(f"tune.asha.grace_period {grace} exceeds the {steps} trial steps; "
                         f"lower it")
    return ASHAScheduler(time_attr="step", max_t=steps, grace_period=grace,
                         reduction_factor=float(settings.asha.reduction_factor))


def _tuner(trainable: Any, space: list[Any], settings: TuneSettings, name: str,
           storage: Path, scheduler: Any, search_alg: Any) -> Any:
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space={p.name: p.to_ray() for p in space},
        tune_config=tune.TuneConfig(
            metric="objective", mode="min", search_alg=search_alg, scheduler=scheduler,
            num_samples=settings.num_samples,
            max_concurrent_trials=None if settings.search == "random"
            else settings.max_concurrent,
            time_budget_s=settings.time_budget_s,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
    )


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

    space = search_params(settings, base)
    probe = trial_config(base, settings, {})
    steps = planned_steps(len(data.train), probe)
    if steps < 1:
        raise UsageError(f"{len(data.train)} train images x {probe.epochs} epochs at batch "
                         f"{probe.batch_size} give no optimizer step; raise tune.train_images "
                         f"or tune.trial.epochs")
    scheduler = asha_scheduler(settings, probe, steps)
    search_alg = search_algorithm(settings)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(settings.ray.storage_path).resolve()
    work = Path(settings.ray.work_dir).resolve()
    name = time.strftime("tune-%Y%m%d-%H%M%S")
    started = init_ray(settings)
    try:
        with ParentRun(params, settings, base, data, mlflow_enabled) as parent:
            job = TrialJob(data, base.to_dict(), settings, parent, str(work / name))
            trainable = tune.with_resources(tune.with_parameters(run_trial, job=job),
                                            {k: float(v) for k, v in settings.resources.items()
                                             if v})
            grid = _tuner(trainable, space, settings, name, storage, scheduler,
                          search_alg).fit()
            # trials Ray stopped were killed before their own clean-up: drop checkpoints
            for ckpt in (work / name).glob("*/checkpoints"):
                shutil.rmtree(ckpt, ignore_errors=True)
            result = collect_results(grid, space, settings, steps, out, data, parent)
    finally:
        if started:
            import ray

            ray.shutdown()
    return result
