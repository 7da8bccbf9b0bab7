"""The training-recipe study (docs/recipe.md): do the students learn their labels?

Usage::

    python benchmarks/recipe.py probe [--data DIR] [--labels sddfiqa crfiqa serfiq]
    python benchmarks/recipe.py train NAME --labels sddfiqa [--variant T] [--data DIR]
        [-S distill.lr=0.01 ...]

``--data`` is the repository whose DVC outputs (manifests, training landmarks, teacher
embeddings, labels) are read, by absolute path, so a worktree without them can run the
study; results are appended to ``--out`` (JSON lines), one record per run with its
settings, validation metrics and wall time.

* ``probe``: no images. For each label method and training-set size (every labelled
  training image, and the old 3,500 subset), the validation fit of the ridge probe and of
  the LP-FT head (``aikd.distill.head_init``, on the unit or the raw embedding) on the
  frozen teacher embeddings, i.e. where fine-tuning starts. Seconds.
* ``train``: one real ``train_distill`` run of ``<labels>-<variant>`` on the training
  people, validated on the validation people only (never test), with the learnability
  figures (``val_spearman`` vs ``ridge_val_spearman``) and the head's fit before
  fine-tuning (``init_val_spearman``). The validation pAUC of other detectors' alignment is
  left out (``val_landmarks=None``) and the validation faces are not jittered by default
  (``val_max_shift 0``): the learnability figures, which are computed on the faces as
  aligned, do not change, and the run saves two scoring passes over the validation set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aikd.config import load_params
from aikd.distill.data import LabelNorm
from aikd.distill.head_init import initialise_head
from aikd.distill.learnability import learnability_metrics
from aikd.distill.model import QualityHead
from aikd.distill.prepare import prepare_rows, subset_rows
from aikd.distill.stage import config_with, labelled_rows, stage_settings
from aikd.distill.teacher import read_teacher_cache
from aikd.paths import embeddings_path

#: The sections whose out_dir is read from ``--data`` (the DVC outputs a run learns from).
DATA_SECTIONS = ("manifest", "landmarks", "embed", "labels")


def study_params(data: Path, overrides: list[str]) -> dict[str, Any]:
    """params.yaml of this checkout with the data outputs read from ``data``."""
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", overrides)
    for name in DATA_SECTIONS:
        params[name]["out_dir"] = str(data / params[name]["out_dir"])
    return params


def split_rows(params: dict[str, Any], method: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows with a finite ``method`` label, as the distill stage selects them."""
    rows, _ = labelled_rows(params, method)
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    val = rows[rows["split"] == "val"].reset_index(drop=True)
    return train, val


def teacher_cache(params: dict[str, Any]) -> list[str]:
    detector = params["landmarks"]["training_detector"]
    return [str(embeddings_path(params, ds, detector)) for ds in params["labels"]["datasets"]]


def probe(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ridge probe and LP-FT head on the frozen embeddings, per method and training size."""
    params = study_params(args.data, args.set)
    cache = read_teacher_cache(teacher_cache(params))
    torch.set_num_threads(1)
    records = []
    for method in args.labels:
        cfg = config_with(params, stage_settings(params).variants["T"])
        train_all, val = split_rows(params, method)
        train_all = prepare_rows(train_all, None, "train")
        val = prepare_rows(val, None, "val", need_identity=True)
        norm = LabelNorm.fit(train_all["quality"].to_numpy(), cfg.label_norm)
        val_e = np.stack([cache[p] for p in val["path"]])
        val_t = norm.transform(val["quality"].to_numpy())
        for size in args.sizes:
            train = subset_rows(train_all, size, cfg.seed)
            train_e = np.stack([cache[p] for p in train["path"]])
            train_t = norm.transform(train["quality"].to_numpy())
            t0 = time.perf_counter()
            ridge = learnability_metrics(np.zeros(len(val_t)), val_t, train_t, train_e, val_e)
            t_ridge = time.perf_counter() - t0
            rec: dict[str, Any] = {
                "kind": "probe", "labels": method, "train_images": len(train),
                "val_images": len(val), "label_norm": cfg.label_norm,
                "ridge_val_spearman": ridge["ridge_val_spearman"],
                "ridge_val_l1": ridge["ridge_val_l1"], "ridge_alpha": ridge["ridge_alpha"],
                "const_val_l1": ridge["const_val_l1"], "ridge_s": t_ridge,
            }
            for head_input in ("unit", "raw"):
                for init in ("random", "probe"):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(cfg.seed)
                        head = QualityHead(val_e.shape[1], unit_input=head_input == "unit")
                    t0 = time.perf_counter()
                    fit = initialise_head(init, head, train_e, train_t, val_features=val_e,
                                          val_targets=val_t)
                    key = f"{head_input}_{init}"
                    rec.update({f"{key}_{k}": v for k, v in fit.items()})
                    rec[f"{key}_s"] = time.perf_counter() - t0
            print(json.dumps(rec))
            records.append(rec)
    return records


def train(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One training run on the study's data; its record."""
    from aikd.distill.train import train_distill

    defaults = ["distill.val_max_shift=0.0", "distill.check_images=false",
                "distill.progress=false"]
    params = study_params(args.data, defaults + args.set)
    variant = stage_settings(params).variants[args.variant]
    cfg = config_with(params, variant)
    train_rows, val = split_rows(params, args.labels)
    out = args.work / args.name
    t0 = time.perf_counter()
    result = train_distill(cfg, train_rows, val, out, teacher_cache=teacher_cache(params))
    wall = time.perf_counter() - t0
    rec = {"kind": "train", "name": args.name, "labels": args.labels, "variant": args.variant,
           "overrides": args.set, "train_images": result.train_images, "steps": result.steps,
           "wall_s": wall, "images_per_s": result.images_per_s, "timings": result.timings,
           "metrics": result.metrics,
           "config": {k: result.config[k] for k in (
               "train_subset", "epochs", "lr", "swa_lr", "trainable", "head_init", "head_input",
               "label_norm", "batch_size", "max_shift", "w", "seed")}}
    print(json.dumps(rec))
    return [rec]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("probe", "train"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1],
                       help="repository whose DVC outputs the study reads (default: this one)")
        p.add_argument("-S", "--set", action="append", default=[],
                       help="params override, e.g. distill.lr=0.01")
        p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe.jsonl"))
    p_probe = sub.choices["probe"]
    p_probe.add_argument("--labels", nargs="+", default=["sddfiqa", "crfiqa", "serfiq"])
    p_probe.add_argument("--sizes", nargs="+", type=lambda s: None if s == "all" else int(s),
                         default=[None, 3500], help="training images ('all' or a count)")
    p_train = sub.choices["train"]
    p_train.add_argument("name")
    p_train.add_argument("--labels", required=True)
    p_train.add_argument("--variant", default="T")
    p_train.add_argument("--work", type=Path, default=Path("/tmp/recipe-runs"))
    args = parser.parse_args()
    records = probe(args) if args.cmd == "probe" else train(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
