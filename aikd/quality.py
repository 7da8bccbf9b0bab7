"""Quality of the evaluation images under one detector's alignment, for every method.

The evaluation compares quality methods on the same faces, so every method scores the
same aligned crop: each image is decoded and aligned once per batch and handed to all
scorers (the distilled models T and baselines B, SER-FIQ applied directly, and the
training-free anchors). The work is cut into chunks written as shards, so an
interrupted stage resumes where it stopped; a signature of the scorers guards the shards
against being reused for another set of models.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from aikd.config import section
from aikd.data.io import write_parquet_atomic
from aikd.embed import iter_aligned, landmarks_array
from aikd.evaluation.tables import method_columns
from aikd.paths import quality_path

log = logging.getLogger("aikd")

#: A scorer maps a batch (float NCHW RGB in [0, 255], aligned) to one quality per face
#: for each name in its ``columns`` (one scorer may fill several, sharing work).
Scorer = Callable[[torch.Tensor], Mapping[str, np.ndarray]]


class ColumnScorer:
    """One quality function as a one-column scorer."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], np.ndarray]) -> None:
        self.columns = [name]
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        return {self.columns[0]: np.asarray(self.fn(x), dtype=np.float64)}


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def shared_blocks(reference: torch.nn.Module, other: torch.nn.Module) -> int:
    """How many leading residual blocks of two dlib ResNets are bit-identical (-1: even
    the stem differs). Students train only their last stages, so their first blocks are
    still the pretrained ones and need to run once per image, not once per model."""
    from aikd.models.dlib_resnet import DlibResNet

    if not (isinstance(reference, DlibResNet) and isinstance(other, DlibResNet)):
        return -1
    if not (_same_tensors(reference.conv1, other.conv1) and _same_tensors(reference.aff1,
                                                                          other.aff1)
            and torch.equal(reference.rgb_mean, other.rgb_mean)):
        return -1
    k = 0
    for ra, ob in zip(reference.blocks, other.blocks, strict=True):
        if not _same_tensors(ra, ob):
            break
        k += 1
    return k


class SharedTrunkScorer:
    """Several quality models (and the FR model's own flip consistency) on one batch,
    running the blocks they share with the pretrained network once.

    Every column equals what the model computes on its own (tested); on the dlib net with
    the last three stages trained this halves the cost of each extra model.
    """

    def __init__(self, reference: torch.nn.Module, models: Mapping[str, torch.nn.Module],
                 *, flip: bool = False) -> None:
        self.reference = reference
        self.models = dict(models)
        self.flip = flip
        ks = [shared_blocks(reference, m.backbone) for m in self.models.values()]
        self.k = min(ks) if ks else -1
        if self.k < 0:
            log.info("quality models share no trunk with the FR model: full forward each")

    @property
    def columns(self) -> list[str]:
        return [*self.models, *(["flip"] if self.flip else [])]

    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference.blocks[: self.k](self.reference.stem(x))

    @staticmethod
    def _tail(backbone: torch.nn.Module, h: torch.Tensor, k: int) -> torch.Tensor:
        return backbone.embed_from_features(backbone.blocks[k:](h).mean(dim=(2, 3)))

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.k < 0:
            for name, m in self.models.items():
                out[name] = m(x).float().numpy()
            if self.flip:
                from aikd.fiqa import flip_consistency

                out["flip"] = flip_consistency(self.reference, x)
            return out
        h = self._prefix(x)
        for name, m in self.models.items():
            t = m.head(self._tail(m.backbone, h, self.k)).squeeze(-1)
            out[name] = m.to_label_scale(t.float()).numpy()
        if self.flip:
            e = self._tail(self.reference, h, self.k)
            ef = self.reference(x.flip(-1))
            out["flip"] = torch.nn.functional.cosine_similarity(
                e.double(), ef.double(), dim=1).numpy()
        return out


def score_faces(
    rows: pd.DataFrame,
    scorers: Sequence[Scorer],
    template: str,
    out_path: str | Path,
    *,
    signature: str = "",
    batch_size: int = 64,
    chunk_size: int = 1024,
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every row (``root``, ``path``, x0..y4; NaN landmarks = no face) with every
    scorer; write ``out_path`` (``path``, ``status``, one column per scorer column) and
    return it. Every scorer names its output columns in a ``columns`` attribute.

    ``status`` is ``ok``, ``no_landmarks`` or the read/alignment error; qualities are NaN
    for rows that are not ok. Finished chunks are kept beside the output until the end.
    """
    out = Path(out_path)
    shard_dir = out.with_name(out.name + ".shards")
    sig_file = shard_dir / "signature.txt"
    if shard_dir.exists() and (not sig_file.is_file() or sig_file.read_text() != signature):
        log.warning("%s: shards of another scorer set; starting over", shard_dir)
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    sig_file.write_text(signature)
    files = [str(Path(r) / p) for r, p in zip(rows["root"], rows["path"], strict=True)]
    lms = landmarks_array(rows)
    has_face = np.isfinite(lms).all(axis=(1, 2))
    names = [c for sc in scorers for c in sc.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"scorers produce duplicate columns: {names}")
    n_chunks = (len(rows) + chunk_size - 1) // chunk_size
    bar = tqdm(total=len(rows), desc=f"quality {out.stem}", unit="img", disable=not progress)
    for c in range(n_chunks):
        shard = shard_dir / f"{c:05d}.parquet"
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, len(rows))
        if shard.is_file():
            bar.update(hi - lo)
            continue
        values = {n: np.full(hi - lo, np.nan) for n in names}
        status = np.where(has_face[lo:hi], "ok", "no_landmarks").astype(object)
        todo = np.flatnonzero(has_face[lo:hi])
        start = time.perf_counter()
        done = 0
        for idx, batch, bad in iter_aligned([files[lo + i] for i in todo], lms[lo + todo],
                                            template, batch_size=batch_size, workers=workers):
            for i, msg in bad:
                status[todo[i]] = msg
            if batch is not None:
                where = todo[np.asarray(idx)]
                for scorer in scorers:
                    for n, v in scorer(batch).items():
                        values[n][where] = v
            done += len(idx) + len(bad)
            bar.update(len(idx) + len(bad))
            bar.set_postfix(img_s=f"{done / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.update((hi - lo) - todo.size)
        frame = pd.DataFrame({"path": rows["path"].iloc[lo:hi].to_numpy(), "status": status,
                              **values})
        write_parquet_atomic(frame, shard)
    bar.close()
    shards = [pd.read_parquet(shard_dir / f"{c:05d}.parquet") for c in range(n_chunks)]
    table = (pd.concat(shards, ignore_index=True) if shards
             else pd.DataFrame(columns=["path", "status", *names]))
    write_parquet_atomic(table, out)
    shutil.rmtree(shard_dir)
    for r in table[~table["status"].isin(["ok", "no_landmarks"])].itertuples():
        log.warning("quality %s: %s", r.path, r.status)
    return table


# --------------------------------------------------------------------------- the stage


def eval_rows(params: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """The images the benchmarks of ``dataset`` compare (``root``, ``path``), sorted."""
    from aikd.evaluation.benchmarks import benchmark_pairs, benchmarks_of
    from aikd.paths import manifest_path

    manifest = pd.read_parquet(manifest_path(params, dataset))
    used: set[str] = set()
    for bench in benchmarks_of(params, dataset):
        pairs = benchmark_pairs(params, bench)
        used |= set(pairs["path_a"]) | set(pairs["path_b"])
    rows = manifest[manifest["path"].isin(used)]
    missing = used - set(rows["path"])
    if missing:
        raise ValueError(f"{len(missing)} pair images are not in the {dataset} manifest, e.g. "
                         f"{sorted(missing)[:3]}")
    return rows[["root", "path"]].sort_values("path").reset_index(drop=True)


def build_scorers(params: Mapping[str, Any]) -> tuple[list[Scorer], str, str]:
    """(scorers, template, signature) for the quality stage.

    Columns: every distill run (``<method>-<variant>``), ``<method>-B`` for methods applied
    directly to the images (``quality.direct``: SER-FIQ needs no training), and the
    ``quality.baselines`` anchors (``flip``, ``sharpness``).
    """
    from aikd.data.io import file_md5
    from aikd.distill import load_quality_model
    from aikd.distill.stage import run_dir
    from aikd.fiqa import serfiq_scores, sharpness
    from aikd.models import load_backbone

    cfg = section(params, "quality")
    sig: dict[str, Any] = {"backbone": section(params, "embed")["backbone"]}
    backbone = load_backbone(sig["backbone"]).eval().to(memory_format=torch.channels_last)
    templates = {backbone.template}
    models = {}
    for run in section(params, "distill").get("runs") or {}:
        path = run_dir(params, run) / "model.pt"
        models[run] = load_quality_model(path).to(memory_format=torch.channels_last)
        templates.add(models[run].template)
        sig[run] = file_md5(path)
    baselines = list(cfg.get("baselines") or [])
    unknown = set(baselines) - {"flip", "sharpness"}
    if unknown:
        raise ValueError(f"quality.baselines: unknown {sorted(unknown)}; expected flip, sharpness")
    scorers: list[Scorer] = [SharedTrunkScorer(backbone, models, flip="flip" in baselines)]
    seed = int(params.get("seed", 0))
    for method in cfg.get("direct") or []:
        if method != "serfiq":
            raise ValueError(f"quality.direct: {method!r} cannot be applied directly; only "
                             "'serfiq' needs no training")
        s = {**section(params, "labels").get("serfiq", {}), **(cfg.get("serfiq") or {})}
        scorers.append(ColumnScorer("serfiq-B", lambda x, s=s: serfiq_scores(
            backbone, x, T=int(s.get("T", 30)), rate=float(s.get("rate", 0.02)),
            placement=s.get("placement", "stage3"), dropout=s.get("dropout", "element"),
            seed=seed)))
        sig["serfiq-B"] = s
    if "sharpness" in baselines:
        scorers.append(ColumnScorer("sharpness", lambda x: sharpness(
            x.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy())))
    sig["baselines"] = baselines
    if len(templates) != 1:
        raise ValueError(f"quality models use different templates {sorted(templates)}; score "
                         "them in separate stages")
    return scorers, templates.pop(), json.dumps(sig, sort_keys=True, default=str)


def quality_stage(params: Mapping[str, Any], dataset: str, detector: str) -> pd.DataFrame:
    """Write data/quality/<dataset>/<detector>.parquet for every quality method."""
    import mlflow

    from aikd.paths import landmarks_path
    from aikd.tracking import stage_run

    cfg = section(params, "quality")
    torch.set_num_threads(int(cfg.get("threads", 2)))
    rows = eval_rows(params, dataset)
    marks = pd.read_parquet(landmarks_path(params, dataset, detector))
    marks = marks[marks["status"] == "ok"].drop_duplicates("path")
    from aikd.landmarks.base import POINT_COLUMNS

    rows = rows.merge(marks[["path", *POINT_COLUMNS]], on="path", how="left")
    scorers, template, signature = build_scorers(params)
    out = quality_path(params, dataset, detector)
    with torch.inference_mode():
        table = score_faces(rows, scorers, template, out, signature=signature,
                            batch_size=int(cfg.get("batch_size", 64)),
                            workers=int(cfg.get("workers", 1)))
    counts = table["status"].where(table["status"].isin(["ok", "no_landmarks"]),
                                   "error").value_counts().to_dict()
    with stage_run("quality", params, run_name=f"quality-{dataset}-{detector}",
                   log_params={"dataset": dataset, "detector": detector,
                               "methods": method_columns(table), **cfg}):
        mlflow.log_metrics({f"quality.{k}": float(v) for k, v in counts.items()})
    print(f"quality {dataset}/{detector}: {len(table)} images {counts}; "
          f"methods {method_columns(table)}")
    return table


__all__: Sequence[str] = ["ColumnScorer", "SharedTrunkScorer", "build_scorers", "eval_rows",
                          "quality_stage", "score_faces", "shared_blocks"]
