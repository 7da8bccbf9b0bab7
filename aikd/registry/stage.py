"""DVC stage ``register@<run>``: log a distill run as a pyfunc model, register it as
``aikd-<method>``, tag it and move the aliases (see docs/registry.md)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

from aikd.align import get_template
from aikd.distill.model import QualityModel, load_quality_model
from aikd.errors import UsageError
from aikd.naming import seed_folder, split_seeded_name
from aikd.registry.pyfunc import (
    CONFIG_FORMAT,
    MODEL_CODE,
    code_version,
    file_sha256,
    input_example,
    model_signature,
    pip_requirements,
)
from aikd.registry.settings import RegisterSettings, register_settings
from aikd.registry.sources import RunSource, resolve_source
from aikd.registry.versions import (
    CHALLENGER,
    decide_champion,
    identical_version,
    version_tags,
)
from aikd.scoring import QualityScorer
from aikd.tracking import setup_mlflow, stage_run

log = logging.getLogger(__name__)


def bundle_config(
    source: RunSource, model: QualityModel, cfg: RegisterSettings, sha: str,
    code: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON shipped with the model: detector, alignment template, code version."""
    points, size = get_template(model.template)
    return {
        "format": CONFIG_FORMAT, "run": source.run, "method": source.method,
        "variant": source.variant, "detector": cfg.detector,
        "template": model.template,
        "template_points": points.tolist(),
        "template_size": list(size),
        "input_size": list(model.input_size), "backbone": model.backbone_name,
        "label_norm": model.label_norm.kind, "batch_size": int(cfg.batch_size),
        "model_sha256": sha, "source": source.origin, **code,
    }


def log_new_version(
    source: RunSource, params: Mapping[str, Any], cfg: RegisterSettings, model: QualityModel,
    name: str, tags: Mapping[str, str], config: Mapping[str, Any],
) -> tuple[str, str]:
    """Log the pyfunc model in a ``register`` MLflow run and register it: (version, run id)."""
    scorer = QualityScorer(model, cfg.detector, batch_size=int(cfg.batch_size))
    example = input_example(cfg.example_image, scorer)
    with stage_run("register", params, run_name=f"register-{source.run}",
                   log_params={"register": asdict(cfg), "model": model.config}) as run:
        # stage_run tagged the run with git commit and dvc hashes already.
        mlflow.set_tags({k: v for k, v in tags.items() if not k.startswith(("param.", "dvc."))})
        finite = {k: v for k, v in source.metrics.items() if math.isfinite(v)}
        if finite:
            mlflow.log_metrics(finite)
        with tempfile.TemporaryDirectory(prefix="aikd-register-") as tmp:
            config_path = Path(tmp) / "aikd_model.json"
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            code_path = Path(tmp) / "aikd_pyfunc.py"
            code_path.write_text(MODEL_CODE)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code_path),
                artifacts={"model": str(source.model_path), "config": str(config_path)},
                signature=model_signature(),
                input_example=example,
                pip_requirements=pip_requirements(cfg.detector),
                metadata={k: v for k, v in config.items() if k != "template_points"},
            )
        mv = mlflow.register_model(info.model_uri, name, tags=dict(tags))
        return str(mv.version), run.info.run_id


def register_model(source: RunSource, params: Mapping[str, Any]) -> dict[str, Any]:
    """Log ``source`` as a pyfunc model, register it, tag it, set the aliases.

    Returns the record written by the stage: name, version, model URI, aliases, champion
    decision, MLflow run id, model sha256 and whether an identical version was reused.
    """
    cfg = register_settings(params)
    setup_mlflow(params)
    client = MlflowClient()
    name = cfg.model_name.format(method=source.method, variant=source.variant, run=source.run)
    model = load_quality_model(source.model_path)
    sha = file_sha256(source.model_path)
    code = code_version()
    tags = version_tags(source, model, cfg, code, sha)
    metric = cfg.champion_metric
    value = source.metrics.get(metric, math.nan)
    if metric not in source.metrics:
        log.warning("%s: no %s among the metrics %s", source.origin, metric,
                    sorted(source.metrics))

    version = identical_version(client, name, sha) if cfg.reuse_identical else None
    reused = version is not None
    if version is not None:
        log.info("%s: identical to %s v%s; refreshing its tags", source.model_path, name, version)
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        run_id = client.get_model_version(name, version).run_id
    else:
        config = bundle_config(source, model, cfg, sha, code)
        version, run_id = log_new_version(source, params, cfg, model, name, tags, config)
        client.set_registered_model_alias(name, CHALLENGER, version)
        client.set_registered_model_tag(name, "aikd.method", source.method)
    decision = decide_champion(client, name, version, metric, value)
    aliases = sorted(client.get_model_version(name, version).aliases)
    return {
        "run": source.run, "name": name, "version": version,
        "model_uri": f"models:/{name}/{version}", "aliases": aliases,
        "champion": decision, "mlflow_run_id": run_id, "model_sha256": sha,
        "reused": reused, "detector": cfg.detector, "source": source.origin,
        "aikd_version": code["aikd_version"], "git_commit": code["git_commit"],
    }


def seeded_model_folder(params: Mapping[str, Any], ref: str, cfg: RegisterSettings,
                        run_name: str | None) -> tuple[str, str | None]:
    """(ref, run_name) with a run's name turned into one seed's model folder:
    ``sddfiqa-T@s1`` -> ``<models_dir>/sddfiqa-T/seed1``, a bare ``sddfiqa-T`` -> the first
    of params ``train_seeds`` (the model the register stage registers). Anything else (a
    folder, an MLflow run id, a run trained before seeds, ``<models_dir>/<run>/model.pt``)
    is passed on unchanged."""
    if Path(ref).is_dir():
        return ref, run_name
    try:
        run, seed = split_seeded_name(ref)
    except ValueError:
        return ref, run_name
    if seed is None:
        seeds = params.get("train_seeds") or []
        if not seeds:
            return ref, run_name
        seed = int(seeds[0])
    folder = Path(cfg.models_dir) / run / seed_folder(seed)
    if not folder.is_dir():
        if ref != run:  # a seed was asked for by name: say which folder is missing
            raise UsageError(f"{ref}: no model folder {folder}; train it with "
                             f"`dvc repro distill@{run}-{seed}`")
        return ref, run_name
    return str(folder), run_name or run


def register_stage(
    params: Mapping[str, Any], run: str, *, run_name: str | None = None
) -> dict[str, Any]:
    """DVC stage ``register``: register ``models_dir/<run>`` (or a run folder / MLflow run
    id) and write ``metrics_dir/register_<run>.json`` (the record of :func:`register_model`).
    """
    cfg = register_settings(params)
    setup_mlflow(params)  # a run id is looked up in the configured store
    ref, run_name = seeded_model_folder(params, run, cfg, run_name)
    source = resolve_source(ref, cfg, run_name=run_name)
    record = register_model(source, params)
    out = Path(cfg.metrics_dir) / f"register_{source.run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record
