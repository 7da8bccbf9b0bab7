"""params.yaml ``register`` as a typed dataclass (docs/registry.md explains each key)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aikd.config import from_section
from aikd.naming import pauc_metric
from aikd.scoring import DEFAULT_BATCH_SIZE

_PAUC_NAME = re.compile(r"^(?P<prefix>.+?)_fmr(?P<tag>[^_]+)(?:_(?P<detector>.+))?$")


def checked_pauc_metric(name: str, where: str) -> str:
    """``name`` if it is spelled as training spells a pAUC metric (`aikd.naming`): a
    champion metric that no run writes would leave every version a challenger."""
    match = _PAUC_NAME.match(name)
    try:
        spelled = match and pauc_metric(float(match["tag"]), match["detector"],
                                        prefix=match["prefix"])
    except ValueError:
        spelled = None
    if spelled != name:
        raise ValueError(f"params {where}: {name!r} is not a pAUC metric name as training "
                         f"writes them, e.g. {pauc_metric(0.001)}")
    return name


@dataclass(frozen=True)
class RegisterSettings:
    """Where distilled runs are, how their registered models are named and judged."""

    model_name: str  # "aikd-{method}": {method}, {variant} and {run} are filled in
    runs: list[str]  # what `dvc repro register` / a bare `aikd register` registers
    detector: str  # landmark detector bundled with the model
    champion_metric: str  # validation metric of models/<run>/metrics.json, lower is better
    evaluation: str  # the evaluate stage's summary, for eval.* version tags
    example_image: str | None  # photo of MLflow's input example (None: no example)
    models_dir: str = "models"
    metrics_dir: str = "metrics"
    batch_size: int = DEFAULT_BATCH_SIZE
    reuse_identical: bool = True  # same model.pt sha256: refresh tags, no new version

    def __post_init__(self) -> None:
        if "_fmr" in self.champion_metric:
            checked_pauc_metric(self.champion_metric, "register.champion_metric")


def register_settings(params: Mapping[str, Any]) -> RegisterSettings:
    """The ``register`` section; unknown keys are refused with the key named."""
    return from_section(RegisterSettings, params, "register")
