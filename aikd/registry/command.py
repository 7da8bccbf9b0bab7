"""``aikd register`` and ``aikd score``: arguments and bodies for the CLI's command table.

``aikd.cli`` adds ``--params`` / ``-S`` (so ``args.params`` and ``args.set`` exist), prints
an `AikdError` as one line and exits with its code.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aikd.config import load_params
from aikd.errors import UsageError
from aikd.scoring import BACKENDS, DEFAULT_BATCH_SIZE

log = logging.getLogger(__name__)

REGISTER_HELP = "register distilled models in the MLflow model registry"
REGISTER_DESCRIPTION = (
    "Log distill runs as MLflow pyfunc models scoring raw photos, register them as "
    "aikd-<method>, set aliases challenger/champion."
)
SCORE_HELP = "score raw photos with a registered or local quality model"
SCORE_DESCRIPTION = (
    "Detect, align and score every image; writes path,quality,status,x0..y4,message. Bad "
    "files become rows with a status, never a crash. A local model.pt comes from `make "
    "repro` (or `dvc repro distill@<run>`), registered models from `dvc repro register`."
)


def add_register_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``aikd register`` (without --params / -S)."""
    parser.add_argument("run", nargs="*",
                        help="run name (models/<run>), run folder or MLflow run id; "
                             "default: params register.runs")
    parser.add_argument("--as", dest="run_name", metavar="METHOD-VARIANT",
                        help="run name for a folder/run id not named <method>-<variant>")


def run_register(args: argparse.Namespace) -> int:
    """Register each run and print its name, version, aliases and champion decision."""
    from aikd.registry.settings import register_settings
    from aikd.registry.stage import register_stage

    params = load_params(args.params, args.set)
    runs = list(args.run) or list(register_settings(params).runs)
    if not runs:
        raise UsageError("no run given and params register.runs is empty; name a run, "
                         "e.g. `aikd register sddfiqa-T`")
    if args.run_name and len(runs) != 1:
        raise UsageError(f"--as names exactly one run, got {len(runs)}; register them one "
                         "at a time")
    for run in runs:
        record = register_stage(params, run, run_name=args.run_name)
        print(json.dumps({k: record[k] for k in ("name", "version", "aliases")}
                         | {"champion": record["champion"]["reason"]}))
    return 0


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``aikd score`` (without --params / -S)."""
    parser.add_argument("--model", required=True,
                        help="models:/aikd-serfiq@champion, models:/<name>/<version>, runs:/... "
                             "or a local models/<run>/model.pt")
    parser.add_argument("--images", required=True, help="image folder (recursive) or manifest "
                        "parquet/CSV with 'path' (and optional 'root')")
    parser.add_argument("--detector", default=None,
                        help="landmark detector (default: the model's, or retinaface)")
    parser.add_argument("--out", default="scores.csv", help="output CSV (default scores.csv)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="student runtime: onnx (onnxruntime, ~1.3x faster end to end; "
                             "needs the onnx package to export), torch, or auto (default: "
                             "onnx for jobs of 1000+ images when onnx is installed, else torch)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and detector intra-op threads (default: library defaults)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def params_or_empty(path: str, overrides: Sequence[str]) -> dict[str, Any]:
    """params.yaml when present: scoring only needs the tracking URI from it, so it also
    runs outside a project."""
    if Path(path).is_file():
        return load_params(path, overrides)
    if overrides or path != "params.yaml":
        return load_params(path, overrides)  # an explicit file must exist: clear error
    return {}


def run_score(args: argparse.Namespace) -> int:
    """Score the images into ``args.out`` and print the per-status summary."""
    import torch

    from aikd.engine import engine_settings
    from aikd.scoring import list_images, load_scorer, score_to_csv
    from aikd.tracking import tracking_uri

    params = params_or_empty(args.params, args.set)
    rows = list_images(args.images)  # a wrong --images fails before the model loads
    if args.threads:
        torch.set_num_threads(int(args.threads))
    scorer = load_scorer(
        args.model, detector=args.detector, batch_size=args.batch_size,
        threads=args.threads, tracking_uri=tracking_uri(params), backend=args.backend,
    )
    engine = engine_settings(params)  # -S engine.kind=ray: score on Ray (docs/engine.md)
    summary = score_to_csv(scorer, rows, args.out, progress=not args.no_progress,
                           engine=engine)
    print(f"{summary.line()} [{scorer.detector_name}, student on {scorer.backend}, "
          f"{engine.kind} engine] "
          f"-> {args.out}")
    return 0
