"""The ``tune`` stage: load the data params name, sweep, write ``tune.out_dir``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aikd.tuning.settings import TuneSettings, base_distill_config, search_params

log = logging.getLogger(__name__)


def tune_stage(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sweep as params' ``tune`` section says; returns best.yaml's content plus the
    output paths. A bad setting or space is refused before data load or Ray start."""
    from aikd.tuning.data import load_sweep_data
    from aikd.tuning.runner import run_sweep

    settings = TuneSettings.from_params(params)
    base = base_distill_config(params, settings.variant)
    search_params(settings, base)
    data = load_sweep_data(params, settings)
    log.info("tune: %s", data.info)
    result = run_sweep(data, base, settings, out_dir=settings.out_dir, params=params)
    return {**result.best, "paths": {k: str(v) for k, v in result.paths.items()}}
