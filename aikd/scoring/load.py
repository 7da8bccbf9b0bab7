"""Which model ``aikd score`` runs: a registered MLflow model or a distilled checkpoint.

A reference that names nothing is the newcomer's most common mistake (no ``make repro``
yet, a typo in a registered name or alias), so it is diagnosed as a `UsageError` that
says what exists and which command makes what is missing.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aikd.distill.model import load_quality_model
from aikd.errors import AikdError, UsageError
from aikd.naming import split_run_name
from aikd.scoring import DEFAULT_BATCH_SIZE, DEFAULT_DETECTOR
from aikd.scoring.scorer import QualityScorer

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")
_REGISTER_FIX = "`dvc repro register` (or `aikd register <run>`) registers the distilled models"


def is_mlflow_uri(ref: str) -> bool:
    return ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/")) or "://" in ref


def missing_model_error(ref: str) -> UsageError:
    """``models/<run>/model.pt`` does not exist: say which command makes it."""
    path = Path(ref)
    run = path.parent.name if path.name == "model.pt" else path.name
    try:
        split_run_name(run)
    except ValueError:
        run = "<run>"
    return UsageError(
        f"{ref}: model not found; make it with `make repro` or `dvc repro distill@{run}` "
        f"(registered models, models:/aikd-<method>@champion, come from `dvc repro register`)"
    )


def registry_problem(ref: str) -> str | None:
    """Why ``models:/<name>[@alias|/version]`` names nothing in the registry, listing what
    is there; None when it exists, when ``ref`` is no such URI or the store cannot say."""
    match = _MODEL_URI.match(ref)
    if match is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        known = sorted(m.name for m in client.search_registered_models())
        if name not in known:
            return (f"{ref}: no registered model {name!r} (registered: "
                    f"{', '.join(known) or 'none'}); {_REGISTER_FIX}")
        if alias:
            aliases = sorted(client.get_registered_model(name).aliases)
            if alias not in aliases:
                return (f"{ref}: {name} has no alias {alias!r} (aliases: "
                        f"{', '.join(aliases) or 'none'}); use one, or models:/{name}/<version>")
        if version:
            versions = sorted(int(v.version) for v in
                              client.search_model_versions(f"name='{name}'"))
            if version not in map(str, versions):
                return (f"{ref}: {name} has no version {version} (versions: "
                        f"{', '.join(map(str, versions)) or 'none'}); {_REGISTER_FIX}")
    except MlflowException:
        return None
    return None


def load_scorer(
    model: str | Path,
    *,
    detector: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    tracking_uri: str | None = None,
    backend: str = "auto",
) -> QualityScorer:
    """A scorer for a registered model (``models:/aikd-serfiq@champion``, ``runs:/...``, a
    local MLflow model folder) or a distilled checkpoint (``models/<run>/model.pt`` or its
    folder). ``detector`` overrides the one bundled with a registered model (default
    retinaface for a checkpoint).
    """
    ref = str(model)
    local = Path(ref)
    if not is_mlflow_uri(ref) and not (local / "MLmodel").is_file():
        pt = local / "model.pt" if local.is_dir() else local
        if not pt.is_file():
            raise missing_model_error(ref)
        return QualityScorer(
            load_quality_model(pt), detector or DEFAULT_DETECTOR,
            batch_size=batch_size, threads=threads, backend=backend,
        )
    import mlflow.pyfunc

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(ref)
    except Exception as exc:
        problem = registry_problem(ref)
        if problem:
            raise UsageError(problem) from exc
        raise AikdError(f"cannot load MLflow model {ref}: {type(exc).__name__}: {exc}") from exc
    inner = loaded.unwrap_python_model()
    scorer = getattr(inner, "scorer", None)
    if not isinstance(scorer, QualityScorer):
        raise UsageError(f"{ref} is not an aikd quality model (python model "
                         f"{type(inner).__name__}); pass one registered by `aikd register`")
    if detector and detector != scorer.detector_name:
        log.warning("%s was registered with detector %s; scoring with %s as requested",
                    ref, scorer.detector_name, detector)
        scorer.set_detector(detector)
    scorer.batch_size = int(batch_size)
    scorer.threads = threads
    scorer.set_backend(backend)
    return scorer
