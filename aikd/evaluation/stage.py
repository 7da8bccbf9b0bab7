"""The DVC stages `pairs@<benchmark>`, `evaluate` and `report`.

`pairs` writes each benchmark's verification pairs once (a versioned file, so every model
is compared on the same pairs). `evaluate` scores every (benchmark, detector, quality
method) cell: similarity from the FR embeddings of the faces as *that* detector aligned
them, quality from the quality stage on the same crops; pAUC with bootstrap intervals for
both threshold modes at two FMRs, the no-quality and random anchors, EDC curves and the
paired B-vs-T bootstrap. `report` turns that into the tables, figures and metrics.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from aikd.config import section
from aikd.evaluation.benchmarks import _benchmarks, benchmark_pairs
from aikd.paths import pairs_path

log = logging.getLogger("aikd")

CURVE_KEYS = ["fr_model", "detector", "benchmark", "method", "variant"]


def pairs_stage(params: Mapping[str, Any], benchmark: str) -> pd.DataFrame:
    """Write the benchmark's pairs: ``kind`` lfw (View 2), ytf (test identities) or csv."""
    from aikd.evaluation.benchmarks import lfw_pairs, user_pairs, ytf_pairs
    from aikd.paths import manifest_path

    benches = _benchmarks(params)
    if benchmark not in benches:
        raise KeyError(f"benchmark {benchmark!r} is not in params evaluate.benchmarks "
                       f"({', '.join(benches)})")
    cfg = benches[benchmark]
    dataset = cfg.get("dataset", benchmark)
    kind = cfg.get("kind", benchmark)
    if kind == "lfw":
        root = section(params, "datasets")[dataset]["root"]
        pairs = lfw_pairs(root)
    elif kind == "ytf":
        pairs = ytf_pairs(manifest_path(params, dataset), split=cfg.get("split", "test"),
                          max_mated=cfg.get("max_mated"), seed=int(params.get("seed", 0)))
    elif kind == "identities":  # every within-identity pair of a split (any data set)
        man = pd.read_parquet(manifest_path(params, dataset))
        man = man.assign(video=np.arange(len(man)))  # each image its own "video"
        pairs = ytf_pairs(man, split=cfg.get("split", "test"), max_mated=cfg.get("max_mated"),
                          seed=int(params.get("seed", 0)))
        pairs["benchmark"] = benchmark
        pairs["dataset"] = dataset
    elif kind == "csv":
        pairs = user_pairs(cfg["path"], dataset, benchmark=benchmark)
    else:
        raise ValueError(f"evaluate.benchmarks.{benchmark}.kind={kind!r}; expected lfw, ytf, "
                         "identities, csv")
    manifest = pd.read_parquet(manifest_path(params, dataset))
    unknown = ~(pairs["path_a"].isin(manifest["path"]) & pairs["path_b"].isin(manifest["path"]))
    if unknown.any():
        bad = pairs[unknown].iloc[0]
        raise ValueError(f"benchmark {benchmark}: {int(unknown.sum())} pairs name images that "
                         f"are not in the {dataset} manifest (e.g. {bad['path_a']}, "
                         f"{bad['path_b']})")
    if cfg.get("split"):
        split = manifest.set_index("path")["split"]
        leaked = ~(pairs["path_a"].map(split).eq(cfg["split"])
                   & pairs["path_b"].map(split).eq(cfg["split"]))
        if leaked.any():
            raise ValueError(f"benchmark {benchmark}: {int(leaked.sum())} pairs use images "
                             f"outside split {cfg['split']!r}")
    out = pairs_path(params, benchmark)
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(out, index=False)
    print(f"pairs {benchmark}: {int(pairs['mated'].sum())} mated, "
          f"{int((~pairs['mated']).sum())} non-mated")
    return pairs


def _quality_of(table: pd.DataFrame, column: str, paths: pd.Series) -> np.ndarray:
    return paths.map(table.set_index("path")[column]).to_numpy(dtype=np.float64)


def evaluate_stage(params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Every cell of the comparison; writes results, curves and B-vs-T differences."""
    from aikd.data.io import read_vectors, write_parquet_atomic
    from aikd.evaluation.benchmarks import pair_scores
    from aikd.evaluation.edc import edc_curve
    from aikd.evaluation.report import (
        MAIN_FMR,
        MAIN_THRESHOLD,
        context_rows,
        evaluate_cell,
        no_quality_curve,
        paired_pauc_difference,
    )
    from aikd.evaluation.tables import method_columns, split_method
    from aikd.paths import embeddings_path, quality_path

    cfg = section(params, "evaluate")
    fr_model = section(params, "embed")["backbone"]
    detectors = list(cfg.get("detectors") or section(params, "landmarks")["detectors"])
    fmrs = [float(f) for f in cfg.get("fmrs", [1e-3, 1e-2])]
    modes = list(cfg.get("thresholds", ["recomputed", "fixed"]))
    n_boot = int(cfg.get("n_boot", 200))
    seed = int(params.get("seed", 0))
    results: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    diffs: list[dict[str, Any]] = []
    cells = [(b, d) for b in _benchmarks(params) for d in detectors]
    for bench, det in tqdm(cells, desc="evaluate", unit="cell"):
        dataset = _benchmarks(params)[bench].get("dataset", bench)
        pairs = benchmark_pairs(params, bench)
        meta, vectors = read_vectors(embeddings_path(params, dataset, det))
        scored = pair_scores(pairs, meta, vectors)
        qtable = pd.read_parquet(quality_path(params, dataset, det))
        qa = {c: _quality_of(qtable, c, scored.pairs["path_a"]) for c in method_columns(qtable)}
        qb = {c: _quality_of(qtable, c, scored.pairs["path_b"]) for c in method_columns(qtable)}
        # A face the FR model embedded but a quality method could not score would bias
        # that method's cell; keep the pairs every method scored, count the rest.
        ok = np.ones(len(scored.pairs), bool)
        for c in qa:
            ok &= np.isfinite(qa[c]) & np.isfinite(qb[c])
        sim = scored.similarity[ok]
        kept = scored.pairs[ok].reset_index(drop=True)
        n_dropped = scored.n_dropped + int((~ok).sum())
        mated = kept["mated"].to_numpy(bool)
        keys = {"fr_model": fr_model, "detector": det, "benchmark": bench}
        for row in context_rows(kept, sim, fmrs=fmrs, thresholds=modes, seed=seed, keys=keys,
                                n_seeds=int(cfg.get("random_seeds", 20))):
            results.append({**row, "n_dropped": n_dropped})
        curve = no_quality_curve(sim, mated, fmr=MAIN_FMR)
        curves.append(curve.assign(**keys, method="none", variant="-"))
        for col in qa:
            method, variant = split_method(col)
            ck = {**keys, "method": method, "variant": variant}
            for row in evaluate_cell(kept, sim, qa[col][ok], qb[col][ok], fmrs=fmrs,
                                     thresholds=modes, n_boot=n_boot, seed=seed, keys=ck):
                results.append({**row, "n_dropped": n_dropped})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve = edc_curve(sim, mated, qa[col][ok], qb[col][ok], fmr=MAIN_FMR,
                                  threshold=MAIN_THRESHOLD)
            curves.append(curve.assign(**ck))
        for col in qa:
            method, variant = split_method(col)
            partner = f"{method}-B"
            if variant != "T" or partner not in qa:
                continue
            for fmr in fmrs:
                for mode in modes:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        d = paired_pauc_difference(
                            sim, mated, (qa[partner][ok], qb[partner][ok]),
                            (qa[col][ok], qb[col][ok]), fmr=fmr, threshold=mode,
                            n_boot=n_boot, seed=seed)
                    diffs.append({**keys, "method": method, "fmr": fmr, "threshold": mode, **d})
    out_dir = Path(cfg["out_dir"])
    frames = {"results": pd.DataFrame(results), "curves": pd.concat(curves, ignore_index=True),
              "differences": pd.DataFrame(diffs)}
    for name, frame in frames.items():
        write_parquet_atomic(frame, out_dir / f"{name}.parquet")
    print(f"evaluate: {len(frames['results'])} result rows over {len(cells)} "
          "(benchmark, detector) cells")
    return frames


def report_stage(params: Mapping[str, Any]) -> dict[str, Path]:
    """Tables (CSV + Markdown), EDC PNGs, summary and metrics/evaluation.json, in MLflow."""
    from aikd.evaluation.report import write_report
    from aikd.tracking import stage_run

    cfg = section(params, "evaluate")
    src = Path(cfg["out_dir"])
    results = pd.read_parquet(src / "results.parquet")
    curve_frame = pd.read_parquet(src / "curves.parquet")
    diffs = pd.read_parquet(src / "differences.parquet")
    curves = {tuple(str(v) for v in key): g.drop(columns=CURVE_KEYS).reset_index(drop=True)
              for key, g in curve_frame.groupby(CURVE_KEYS, sort=False)}
    detectors = list(cfg.get("detectors") or section(params, "landmarks")["detectors"])
    fr_models = [section(params, "embed")["backbone"]]
    with stage_run("report", params, run_name="report",
                   log_params={"evaluate": dict(cfg)}):
        written = write_report(results, curves, ".", fr_models=fr_models, detectors=detectors,
                               differences=diffs if len(diffs) else None,
                               reports_subdir=cfg.get("reports_dir", "reports/evaluation"))
    print((Path(cfg.get("reports_dir", "reports/evaluation")) / "summary.md").read_text())
    return written
