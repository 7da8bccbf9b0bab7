"""The ``tune:`` section of params.yaml as typed settings, and the search space.

params.yaml is the only source of the sweep's defaults: a key it sets has no default here,
and an unknown key is refused with its name. Every error a user can fix in params.yaml
(or with ``-S``) is a :class:`aikd.errors.UsageError`. Only light imports at module level.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aikd.config import from_mapping, section
from aikd.errors import UsageError
from aikd.naming import VALIDATION_FMRS

if TYPE_CHECKING:
    from aikd.distill.config import DistillConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Eye distance of the 112-px ArcFace template the paper's p = 3 px refers to.
ARCFACE112_IOD_PX = 35.2377

SEARCH_ALGORITHMS = ("random", "optuna", "hyperopt")

#: The FMRs whose validation pAUC ``validate_quality`` reports (the objective's choices).

#: What every trial is, whatever the distill section says: Ray stops trials by killing
#: them, so they keep no checkpoints, draw no progress bars and validate on the whole
#: (already subsetted) val rows. ``tune.trial`` may still override any of these.
TRIAL_RUNTIME: dict[str, Any] = {"val_subset": None, "checkpoint_every": 0,
                                 "keep_checkpoints": 1, "progress": False}

_FIX = "fix it in params.yaml or with -S"


def _typed(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """``from_mapping`` with its errors (unknown or missing keys) as usage errors."""
    try:
        return from_mapping(cls, values, where)
    except ValueError as exc:
        raise UsageError(f"{exc}; {_FIX}") from exc


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
        where = f"tune.space.{name}"
        unknown = sorted(set(spec) - {"dist", "low", "high", "values"})
        if unknown:
            raise UsageError(f"{where}: unknown keys {unknown}; give dist, low/high or values")
        dist = str(spec.get("dist", "uniform"))
        if dist in ("uniform", "loguniform"):
            if spec.get("low") is None or spec.get("high") is None:
                raise UsageError(f"{where}: {dist} needs low and high; add both")
            low, high = float(spec["low"]), float(spec["high"])
            if not low < high:
                raise UsageError(f"{where}: low {low} must be < high {high}")
            if dist == "loguniform" and low <= 0:
                raise UsageError(f"{where}: loguniform needs low > 0, got {low}")
            return cls(name, dist, low, high)
        if dist == "choice":
            values = tuple(spec.get("values") or ())
            if not values:
                raise UsageError(f"{where}: choice needs a non-empty 'values' list")
            return cls(name, dist, values=values)
        raise UsageError(f"{where}: dist must be uniform, loguniform or choice, got {dist!r}")

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

    def describe(self) -> dict[str, Any]:
        """The distribution as best.yaml records it."""
        if self.dist == "choice":
            return {"dist": self.dist, "values": list(self.values)}
        return {"dist": self.dist, "low": self.low, "high": self.high}


@dataclass
class AshaSettings:
    """``tune.asha``: ASHA on the objective, in optimizer steps (null disables it)."""

    grace_period: int
    reduction_factor: float

    def __post_init__(self) -> None:
        if int(self.grace_period) < 1:
            raise UsageError("tune.asha.grace_period must be >= 1 optimizer step")
        if float(self.reduction_factor) <= 1:
            raise UsageError("tune.asha.reduction_factor must be > 1")


@dataclass
class RaySettings:
    """``tune.ray``. address: null (RAY_ADDRESS or a new local instance) | "auto" |
    "ray://host:10001"; temp_dir and num_cpus apply to a new local instance only;
    storage_path holds Ray's results, work_dir each trial's train_distill output."""

    address: str | None
    temp_dir: str
    storage_path: str
    work_dir: str
    num_cpus: int | None = None  # null: all of the machine's


@dataclass
class TuneSettings:
    """params.yaml ``tune:`` (see docs/tuning.md); build with :meth:`from_params`."""

    out_dir: str
    label_method: str  # data/labels/<method>.parquet
    variant: str  # distill.variants entry the trials start from (T: AI-KD)
    #: Objective: mean val pAUC over faces aligned by these detectors ([]: jittered faces).
    detectors: list[str]
    fmr: float  # one of VALIDATION_FMRS
    train_images: int
    val_images: int
    val_per_identity: int  # cap, so one large identity cannot fill the val subset
    teacher_cache: bool  # read data/embeddings/<training detector>/<ds>_<backbone>.parquet
    space: dict[str, dict[str, Any]]  # DistillConfig field -> distribution
    #: SWALR anneals to swa_lr for the second half of a run; tie it to lr so "the learning
    #: rate" is what the official config means (lr = swa_lr = 0.05).
    tie_swa_lr: bool
    trial: dict[str, Any]  # DistillConfig overrides for the trials only (the budget)
    num_samples: int
    max_concurrent: int
    search: str  # one of SEARCH_ALGORITHMS
    seed: int
    asha: AshaSettings | None
    resources: dict[str, float]  # per trial, e.g. {cpu: 1, gpu: 0}
    ray: RaySettings
    datasets: list[str] | None = None  # null: params labels.datasets
    time_budget_s: float | None = None  # null: no limit

    def __post_init__(self) -> None:
        if isinstance(self.asha, Mapping):
            self.asha = _typed(AshaSettings, self.asha, "tune.asha")
        if isinstance(self.ray, Mapping):
            self.ray = _typed(RaySettings, self.ray, "tune.ray")
        self.validate()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TuneSettings:
        """The ``tune`` section of ``params``; unknown or missing keys are named."""
        if not isinstance(params.get("tune"), Mapping):
            raise UsageError("params has no 'tune' section; copy it from the repository's "
                             "params.yaml")
        return _typed(cls, section(params, "tune"), "tune")

    def validate(self) -> None:
        if self.search not in SEARCH_ALGORITHMS:
            raise UsageError(f"tune.search must be one of {', '.join(SEARCH_ALGORITHMS)}, "
                             f"got {self.search!r}; {_FIX}")
        if self.fmr not in VALIDATION_FMRS:
            raise UsageError(f"tune.fmr must be 1e-2 or 1e-3 (validate_quality's), got "
                             f"{self.fmr}; {_FIX}")
        for name in ("train_images", "val_images", "val_per_identity", "num_samples",
                     "max_concurrent"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"tune.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_per_identity < 2:
            raise UsageError("tune.val_per_identity must be >= 2 (mated pairs need two images)")
        if not self.space:
            raise UsageError(f"tune.space is empty: nothing to search; {_FIX}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def base_distill_config(params: Mapping[str, Any], variant: str) -> DistillConfig:
    """The config ``distill@<labels>-<variant>`` trains with, as the distill stage builds
    it: params ``distill:`` minus the stage's own keys (``out_dir``, ``runs``, ...), then
    the variant's changes, the global seed unless set."""
    from aikd.distill.stage import config_with

    variants = (params.get("distill") or {}).get("variants") or {}
    if variants and variant not in variants:
        raise UsageError(f"tune.variant {variant!r} is not in distill.variants; use one of "
                         f"{', '.join(variants)}")
    return config_with(params, variants.get(variant))


def trial_config(base: DistillConfig, settings: TuneSettings,
                 sampled: Mapping[str, Any]) -> DistillConfig:
    """The config one trial trains with: base, trial budget overrides, sampled values."""
    from aikd.distill.config import DistillConfig

    values = {**base.to_dict(), **TRIAL_RUNTIME, **settings.trial, "train_subset": None,
              **sampled}
    if settings.tie_swa_lr and "lr" in sampled:
        values["swa_lr"] = sampled["lr"]
    return DistillConfig.from_dict(values)


def search_params(settings: TuneSettings, base: DistillConfig) -> list[SearchParam]:
    """The searched fields, checked against DistillConfig and the jitter units; every
    bound must give a valid trial config on its own."""
    fields = {f.name for f in dataclasses.fields(base)}
    out = []
    for name, spec in settings.space.items():
        if name not in fields:
            raise UsageError(f"tune.space.{name} is not a DistillConfig field; search one "
                             f"of the distill settings (e.g. max_shift, lr, w)")
        if name == "swa_lr" and settings.tie_swa_lr:
            raise UsageError("tune.space.swa_lr conflicts with tune.tie_swa_lr: true; drop "
                             "one of them")
        out.append(SearchParam.from_spec(name, spec or {}))
    for p in out:
        if p.name == "max_shift" and p.dist != "choice":
            _check_shift_units(p, base.jitter_units)
        for value in p.extremes():
            try:
                trial_config(base, settings, {p.name: value})
            except ValueError as exc:
                raise UsageError(f"tune.space.{p.name}: bound {value!r} is no valid trial "
                                 f"config ({exc}); narrow the range") from exc
    return out


def _check_shift_units(p: SearchParam, units: str) -> None:
    """A max_shift range in the wrong units is the likely mistake: refuse or warn."""
    if units == "iod" and p.high > 1.0:  # type: ignore[operator]
        raise UsageError(
            f"tune.space.max_shift high={p.high} with distill.jitter_units 'iod' is "
            f"{p.high} eye distances: give IOD fractions (3 px at the 112-px template "
            f"is {3 / ARCFACE112_IOD_PX:.3f}) or set distill.jitter_units: px")
    if units == "px" and p.high < 1.0:  # type: ignore[operator]
        log.warning("tune.space.max_shift high=%s px is under one pixel: IOD values "
                    "with jitter_units px?", p.high)
