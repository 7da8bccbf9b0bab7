"""Model versions in the registry: their tags, and the champion / challenger decision.

Every new version gets the alias ``challenger``; ``champion`` moves only when the
version's validation pAUC is lower (better) than the current champion's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aikd.distill.model import QualityModel
from aikd.registry.settings import RegisterSettings
from aikd.registry.sources import RunSource
from aikd.tracking import dvc_lock_hashes, flatten, git_commit

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
_TAG_VALUE_MAX = 5000


def evaluation_tags(path: str | Path, method: str) -> dict[str, str]:
    """``eval.mean_pauc.<variant>.<detector>`` of this label method from the evaluation
    stage's summary (absent file or method: no tags)."""
    p = Path(path)
    if not p.is_file():
        return {}
    tree = (json.loads(p.read_text()).get("mean_pauc") or {}).get(method) or {}
    tags: dict[str, str] = {}
    for variant, by_det in tree.items():
        for det, value in (by_det or {}).items():
            tags[f"eval.mean_pauc.{variant}.{det}"] = "nan" if value is None else f"{value:.6g}"
    return tags


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_TAG_VALUE_MAX]


def version_tags(
    source: RunSource, model: QualityModel, cfg: RegisterSettings, code: Mapping[str, Any],
    sha: str,
) -> dict[str, str]:
    """What a version records: run, model, code, validation metrics, evaluation, dvc."""
    tags: dict[str, Any] = {
        "aikd.run": source.run, "aikd.method": source.method, "aikd.variant": source.variant,
        "aikd.source": source.origin, "aikd.detector": cfg.detector,
        "aikd.template": model.template, "aikd.backbone": model.backbone_name,
        "aikd.label_norm": model.label_norm.kind, "aikd.model_sha256": sha,
        "aikd.version": code["aikd_version"], "aikd.commit": code["git_commit"],
        "aikd.dirty": str(code["git_dirty"]).lower(), "git.commit": git_commit(),
    }
    tags.update({f"metric.{k}": f"{v:.10g}" for k, v in source.metrics.items()})
    tags.update(evaluation_tags(cfg.evaluation, source.method))
    tags.update({f"param.{k}": v for k, v in flatten(model.config).items()})
    tags.update(dict(list(dvc_lock_hashes().items())[:200]))
    return {k[:250]: _tag_value(v) for k, v in tags.items()}


def decide_champion(
    client: MlflowClient, name: str, version: str, metric: str, value: float
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` iff its ``metric`` is lower than the champion's.

    The decision (and why) is stored as the version tag ``aikd.champion_decision`` and
    returned for the stage's JSON.
    """
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    prev_value = math.nan
    if champ is not None:
        prev_value = float(champ.tags.get(f"metric.{metric}", "nan"))
    if champ is not None and str(champ.version) == str(version):
        promoted, reason = True, f"version {version} is already the champion"
    elif not math.isfinite(value):
        promoted, reason = False, f"version {version} has no finite {metric}"
    elif champ is None:
        promoted, reason = True, f"no champion yet; {metric}={value:.6g}"
    elif not math.isfinite(prev_value):
        promoted, reason = True, f"champion v{champ.version} has no finite {metric}"
    elif value < prev_value:
        promoted, reason = True, (f"{metric} {value:.6g} < {prev_value:.6g} of champion "
                                  f"v{champ.version} (lower is better)")
    else:
        promoted, reason = False, (f"{metric} {value:.6g} >= {prev_value:.6g} of champion "
                                   f"v{champ.version} (lower is better)")
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "aikd.champion_decision", reason)
    log.info("%s v%s: %s -> %s", name, version, reason,
             "champion" if promoted else "stays challenger")
    return {
        "metric": metric, "value": _json_float(value), "promoted": promoted, "reason": reason,
        "previous_champion": None if champ is None else str(champ.version),
        "previous_value": _json_float(prev_value),
    }


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def identical_version(client: MlflowClient, name: str, sha: str) -> str | None:
    """The newest version of ``name`` whose model.pt has this sha256, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.tags.get("aikd.model_sha256") == sha]
    return str(max(int(v.version) for v in same)) if same else None
