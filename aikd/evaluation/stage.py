"""The DVC stages `pairs@<benchmark>` and `evaluate`.

`pairs` writes each benchmark's verification pairs once (a versioned file, so every model
is compared on the same pairs). `evaluate` scores every (benchmark, detector, quality
method) cell: similarity from the FR embeddings of the faces as *that* detector aligned
them, quality from the quality stage on the same crops; pAUC for both threshold modes at
two FMRs, with a person-level bootstrap interval in the primary mode (``evaluate.primary``;
point estimates in the secondary ones), the no-quality and random anchors, EDC curves and
the paired T-B and T-C differences (primary mode, same resamples of people). A trained
model's column is one training seed's (``<run>@s<seed>``): its rows carry ``seed``, and
each trained variant also gets seed-mean rows, T-B / T-C paired by seed and averaged
(``aikd.evaluation.seeds``, docs/seeds.md). The `report`
stage, which turns that into the tables, figures and metrics, is
``aikd.evaluation.report.report_stage``: kept beside the report so that editing the
report's code re-runs only `report`, not the evaluation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from aikd.config import section
from aikd.errors import UsageError
from aikd.evaluation.benchmarks import benchmark_pairs, benchmark_specs
from aikd.evaluation.cells import (
    bootstrap_kind,
    bootstrap_weights,
    context_rows,
    difference_from_resamples,
    evaluate_cell,
    no_quality_curve,
    persons_of,
)
from aikd.evaluation.columns import CONTEXT_VARIANT, method_columns, split_column
from aikd.evaluation.edc import UndefinedPAUCWarning, edc_curve
from aikd.evaluation.seeds import seed_mean_curve, seed_mean_difference, seed_mean_row
from aikd.evaluation.settings import EvaluateSettings, evaluate_settings
from aikd.paths import pairs_path


def pairs_stage(params: Mapping[str, Any], benchmark: str) -> pd.DataFrame:
    """Write the benchmark's pairs (``data/pairs/<benchmark>.parquet``, with the person of
    each image) and a summary beside it (``<benchmark>_summary.json``, a DVC metric: pairs
    and people, and for View 2 restricted to a split how many of its pairs and people were
    kept). ``kind`` lfw (View 2), ytf, identities or csv."""
    import json

    from aikd.evaluation.benchmarks import (
        identity_pairs,
        lfw_pairs,
        restrict_to_split,
        user_pairs,
        with_persons,
        ytf_pairs,
    )
    from aikd.paths import manifest_path

    benches = benchmark_specs(params)
    if benchmark not in benches:
        raise UsageError(f"benchmark {benchmark!r} is not in params evaluate.benchmarks; use "
                         f"one of {', '.join(benches)} or add it there")
    spec = benches[benchmark]
    dataset = spec.dataset
    seed = int(params["seed"])
    manifest = pd.read_parquet(manifest_path(params, dataset))
    summary: dict[str, Any] = {}
    if spec.kind == "lfw":
        root = section(params, "datasets")[dataset]["root"]
        pairs = lfw_pairs(root)
        if spec.split:  # View 2 pairs whose two people are in the split
            pairs, summary = restrict_to_split(pairs, manifest, spec.split)
            print(f"pairs {benchmark}: kept {summary['n_pairs']} of View 2's "
                  f"{summary['n_pairs_protocol']} pairs ({summary['n_mated']} mated, "
                  f"{summary['n_nonmated']} non-mated) and {summary['n_people']} of its "
                  f"{summary['n_people_protocol']} people (both people in split "
                  f"{spec.split!r})")
    elif spec.kind in ("ytf", "identities"):
        # ytf: mated pairs across videos; identities: each image its own "video"
        build = ytf_pairs if spec.kind == "ytf" else identity_pairs
        pairs = build(manifest, split=spec.split, max_mated=spec.max_mated,
                      max_images_per_identity=spec.max_images_per_identity,
                      n_nonmated=spec.n_nonmated, seed=seed)
    else:  # csv (Benchmark.check allows no other kind)
        pairs = user_pairs(spec.path, dataset, benchmark=benchmark)
    pairs["benchmark"] = benchmark
    pairs["dataset"] = dataset
    unknown = ~(pairs["path_a"].isin(manifest["path"]) & pairs["path_b"].isin(manifest["path"]))
    if unknown.any():
        bad = pairs[unknown].iloc[0]
        raise ValueError(f"benchmark {benchmark}: {int(unknown.sum())} pairs name images that "
                         f"are not in the {dataset} manifest (e.g. {bad['path_a']}, "
                         f"{bad['path_b']})")
    if spec.split:
        split = manifest.set_index("path")["split"]
        leaked = ~(pairs["path_a"].map(split).eq(spec.split)
                   & pairs["path_b"].map(split).eq(spec.split))
        if leaked.any():
            raise ValueError(f"benchmark {benchmark}: {int(leaked.sum())} pairs use images "
                             f"outside split {spec.split!r}")
    pairs = with_persons(pairs, manifest)
    mated = pairs["mated"].to_numpy(dtype=bool)
    disagree = (pairs["person_a"] == pairs["person_b"]).to_numpy() != mated
    if disagree.any():
        msg = (f"benchmark {benchmark}: {int(disagree.sum())} pairs are mated but of two "
               "people, or non-mated but of one person, by the manifest's person")
        if spec.kind != "csv":  # a user's own labels may be coarser than the manifest's
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    out = pairs_path(params, benchmark)
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(out, index=False)
    people = set(pairs["person_a"]) | set(pairs["person_b"])
    summary = {"benchmark": benchmark, "kind": spec.kind, "dataset": dataset,
               "split": spec.split, **summary, "n_pairs": len(pairs),
               "n_mated": int(mated.sum()), "n_nonmated": int((~mated).sum()),
               "n_people": len(people),
               "n_images": len(set(pairs["path_a"]) | set(pairs["path_b"]))}
    out.with_name(f"{benchmark}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"pairs {benchmark}: {summary['n_mated']} mated, {summary['n_nonmated']} non-mated, "
          f"{summary['n_people']} people, {summary['n_images']} images")
    return pairs


class _Cell(NamedTuple):
    """One (benchmark, detector) cell's pairs, similarities and per-method qualities."""

    pairs: pd.DataFrame  # the pairs every quality method scored
    similarity: np.ndarray
    mated: np.ndarray
    quality_a: dict[str, np.ndarray]  # quality column -> quality of each pair's first image
    quality_b: dict[str, np.ndarray]
    n_dropped: int  # pairs lost to a missing embedding or quality


def _quality_of(table: pd.DataFrame, column: str, paths: pd.Series) -> np.ndarray:
    return paths.map(table.set_index("path")[column]).to_numpy(dtype=np.float64)


def _load_cell(params: Mapping[str, Any], bench: str, det: str,
               fr_model: str | None = None) -> _Cell:
    """Similarity from ``fr_model``'s embeddings (default ``embed.backbone``) of the faces
    ``det`` aligned; quality from the quality stage on that detector's crops (the quality
    models' own template), whichever network compares the faces."""
    from aikd.data.io import read_vectors
    from aikd.evaluation.benchmarks import pair_scores
    from aikd.paths import embeddings_path, quality_path

    dataset = benchmark_specs(params)[bench].dataset
    pairs = benchmark_pairs(params, bench)
    meta, vectors = read_vectors(embeddings_path(params, dataset, det, fr_model))
    scored = pair_scores(pairs, meta, vectors)
    qtable = pd.read_parquet(quality_path(params, dataset, det))
    qa = {c: _quality_of(qtable, c, scored.pairs["path_a"]) for c in method_columns(qtable)}
    qb = {c: _quality_of(qtable, c, scored.pairs["path_b"]) for c in method_columns(qtable)}
    # A face the FR model embedded but a quality method could not score would bias
    # that method's cell; keep the pairs every method scored, count the rest.
    ok = np.ones(len(scored.pairs), bool)
    for c in qa:
        ok &= np.isfinite(qa[c]) & np.isfinite(qb[c])
    kept = scored.pairs[ok].reset_index(drop=True)
    return _Cell(kept, scored.similarity[ok], kept["mated"].to_numpy(bool),
                 {c: q[ok] for c, q in qa.items()}, {c: q[ok] for c, q in qb.items()},
                 scored.n_dropped + int((~ok).sum()))


def column_keys(columns: list[str]) -> dict[str, tuple[str, str, int | None]]:
    """Quality column -> (method, variant, training seed) as the tables show it.

    ``sddfiqa-T@s1`` -> (sddfiqa, T, 1); ``sddfiqa-T`` (a table without seeds) ->
    (sddfiqa, T, None); a bare column whose ``-T`` exists (``serfiq`` beside ``serfiq-T``:
    SER-FIQ applied directly) is that method's B, unless a ``-B`` column exists too; every
    other bare column (flip, sharpness) is a context row (variant -). Untrained columns
    have seed None.
    """
    split = {col: split_column(col) for col in columns}
    present = {(m, v) for m, v, _ in split.values()}
    out = {}
    for col, (method, variant, seed) in split.items():
        if (variant == CONTEXT_VARIANT and (col, "T") in present
                and (col, "B") not in present):
            variant = "B"
        out[col] = (method, variant, seed)
    return out


def method_variants(columns: list[str]) -> dict[str, tuple[str, str]]:
    """Quality column -> (method, variant), its training seed dropped (``column_keys``)."""
    return {col: (m, v) for col, (m, v, _) in column_keys(columns).items()}


#: The paired comparisons: T (AI-KD) against B (base alignment) and C (consistency only).
COMPARISONS = ("B", "C")


def _cell_facts(cell: _Cell, spec_split: str | None) -> dict[str, Any]:
    """Per-cell facts every row carries: dropped pairs, identities, identity-disjointness."""
    person_a, person_b = persons_of(cell.pairs)
    n_ids = (int(pd.unique(np.concatenate([person_a, person_b]).astype(str)).size)
             if person_a is not None else -1)
    return {"n_dropped": cell.n_dropped, "n_identities": n_ids,
            "identity_disjoint": spec_split == "test"}


def _cell_weights(cell: _Cell, n_boot: int, seed: int) -> list[np.ndarray] | None:
    """The cell's resamples (per-pair multiplicities), drawn once and shared by every method,
    stored in the smallest integer type that holds them (200 x 112k pairs: ~22 MB)."""
    if n_boot <= 0:
        return None
    person_a, person_b = persons_of(cell.pairs)
    out = []
    for w in bootstrap_weights(len(cell.pairs), n_boot=n_boot, seed=seed, person_a=person_a,
                               person_b=person_b):
        out.append(w.astype(np.min_scalar_type(int(w.max()) if w.size else 0)))
    return out


#: A cell's per-column primary pAUC and its resampled pAUCs (None: no interval drawn).
Resampled = dict[str, tuple[float, np.ndarray]]


def _score_cell(cell: _Cell, keys: dict[str, str], settings: EvaluateSettings, seed: int,
                results: list[dict[str, Any]], curves: list[pd.DataFrame],
                facts: dict[str, Any] | None = None) -> Resampled:
    """Append the cell's result rows (context rows first) and its EDC curves.

    One row per quality column (a trained model's carries its training ``seed``), then,
    per trained (method, variant), the seed-mean rows (``seed`` empty, ``n_seeds`` and the
    seed spread; ``aikd.evaluation.seeds``), whose curve is the seeds' mean curve.
    Intervals are computed in the primary (fmr, threshold) mode only (point estimates in
    the secondary ones); returns {quality column: (primary pAUC, its resampled pAUCs)},
    from which ``_paired_differences`` takes the T-B and T-C differences.
    """
    primary = settings.primary
    mode = (primary.fmr, primary.threshold)
    facts = facts or {"n_dropped": cell.n_dropped}
    sim, mated = cell.similarity, cell.mated
    weights = _cell_weights(cell, settings.n_boot, seed)
    for row in context_rows(cell.pairs, sim, fmrs=settings.fmrs, thresholds=settings.thresholds,
                            seed=seed, keys=keys, n_seeds=settings.random_seeds):
        results.append({**row, "seed": None, **facts})
    curve = no_quality_curve(sim, mated, fmr=primary.fmr)
    curves.append(curve.assign(**keys, method="none", variant=CONTEXT_VARIANT, seed=None))
    resampled: Resampled = {}
    rows_of: dict[str, list[dict[str, Any]]] = {}
    curve_of: dict[str, pd.DataFrame] = {}
    seeded: dict[tuple[str, str], list[str]] = {}
    for col, (method, variant, train_seed) in column_keys(list(cell.quality_a)).items():
        ck = {**keys, "method": method, "variant": variant}
        qa, qb = cell.quality_a[col], cell.quality_b[col]
        got: dict[tuple[float, str], np.ndarray] = {}
        point = math.nan
        rows_of[col] = []
        for row in evaluate_cell(cell.pairs, sim, qa, qb, fmrs=settings.fmrs,
                                 thresholds=settings.thresholds, n_boot=settings.n_boot,
                                 seed=seed, keys=ck, interval_modes=[mode], resamples=got,
                                 weights=weights):
            row = {**row, "seed": train_seed, **facts}
            results.append(row)
            rows_of[col].append(row)
            if (math.isclose(row["fmr"], primary.fmr, rel_tol=1e-6)
                    and row["threshold"] == primary.threshold):
                point = row["pauc"]
        for values in got.values():
            resampled[col] = (point, values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            curve_of[col] = edc_curve(sim, mated, qa, qb, fmr=primary.fmr,
                                      threshold=primary.threshold)
        curves.append(curve_of[col].assign(**ck, seed=train_seed))
        if train_seed is not None:
            seeded.setdefault((method, variant), []).append(col)
    for (method, variant), cols in seeded.items():
        draws = [resampled[c][1] for c in cols if c in resampled]
        for i in range(len(rows_of[cols[0]])):  # the same modes, in order, for every seed
            per_seed = [rows_of[c][i] for c in cols]
            in_mode = _is_primary(per_seed[0], primary) and len(draws) == len(cols)
            results.append(seed_mean_row(per_seed, draws if in_mode else None))
        curves.append(seed_mean_curve([curve_of[c] for c in cols]).assign(
            **keys, method=method, variant=variant, seed=None))
    return resampled


def _is_primary(row: Mapping[str, Any], primary: Any) -> bool:
    return (math.isclose(row["fmr"], primary.fmr, rel_tol=1e-6)
            and row["threshold"] == primary.threshold)


def _paired_differences(cell: _Cell, keys: dict[str, str], settings: EvaluateSettings,
                        resampled: Resampled) -> list[dict[str, Any]]:
    """pAUC(T) - pAUC(B) and pAUC(T) - pAUC(C) for every method with those variants.

    Primary mode only. Both methods' pAUCs come from the same resamples of people (the
    same seed), so the difference is paired; ``baseline`` names B or C. Paired by training
    seed too: T of seed s against B (C) of seed s, one row per seed (``seed`` s), then one
    row of their mean over seeds (``seed`` empty, ``n_seeds`` and the seed spread of the
    per-seed differences; ``seeds.seed_mean_difference``): the row the summary, win counts
    and Holm read. A base without seeds (SER-FIQ's B is its direct column, ``serfiq-B`` or
    a bare ``serfiq``, see ``column_keys``) is paired with every seed of T.
    """
    diffs = []
    keyed = column_keys(list(cell.quality_a))
    by_key = {k: col for col, k in keyed.items()}
    common = {**keys, "fmr": settings.primary.fmr, "threshold": settings.primary.threshold,
              "bootstrap": bootstrap_kind(cell.pairs)}
    t_cols: dict[str, list[tuple[int | None, str]]] = {}
    for col, (method, variant, train_seed) in keyed.items():
        if variant == "T" and col in resampled:
            t_cols.setdefault(method, []).append((train_seed, col))
    for method, ts in t_cols.items():
        for base in COMPARISONS:
            pairs = []
            for train_seed, col in ts:
                partner = by_key.get((method, base, train_seed)) or by_key.get(
                    (method, base, None))
                if partner is not None and partner in resampled:
                    pairs.append((train_seed, resampled[col], resampled[partner]))
            for train_seed, (pt, vt), (pb, vb) in pairs:
                diffs.append({**common, "method": method, "baseline": base,
                              "seed": train_seed, **difference_from_resamples(pt, pb, vt, vb)})
            if any(s is not None for s, _, _ in pairs):
                diffs.append({**common, "method": method, "baseline": base, "seed": None,
                              **seed_mean_difference([t[0] for _, t, _ in pairs],
                                                     [b[0] for _, _, b in pairs],
                                                     [t[1] for _, t, _ in pairs],
                                                     [b[1] for _, _, b in pairs])})
    return diffs


def undefined_pauc_note(results: pd.DataFrame, caught: list[warnings.WarningMessage]) -> str:
    """One line in place of the UndefinedPAUCWarnings of every cell: how many, and why."""
    undefined = results[results["pauc"].isna()]
    no_error = int((undefined["fnmr0"] == 0).sum())
    reasons = {"FNMR(0) = 0, no mated pair fails before discarding": no_error,
               "no mated pair is left at some discard rate": len(undefined) - no_error}
    parts = [f"{n} because {why}" for why, n in reasons.items() if n]
    dropped = sum("bootstrap resamples" in str(w.message) for w in caught)
    if not parts and not dropped:
        return ""
    text = "evaluate: "
    if parts:
        text += (f"pAUC undefined (NaN) in {len(undefined)} of {len(results)} result rows: "
                 f"{', '.join(parts)}; ")
    if dropped:
        text += f"{dropped} bootstrap intervals left out resamples with an undefined pAUC; "
    return text + "expected on tiny data (UndefinedPAUCWarning, not shown one by one)"


def _reemit_other_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Show the recorded warnings that are not the expected UndefinedPAUCWarning."""
    for w in caught:
        if not issubclass(w.category, UndefinedPAUCWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def evaluate_stage(params: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Every cell of the comparison; writes results, curves and T-B / T-C differences.

    A cell is (FR model, benchmark, detector): ``embed.backbone`` and every cross-model
    network whose embeddings exist (``aikd.cross_model``); ``fr_models.json`` beside the
    results names the networks evaluated and why any other was not.
    pAUC is undefined in many cells of a tiny benchmark (no error to remove); instead of
    one UndefinedPAUCWarning per cell the stage prints one line saying how many and why.
    """
    import json

    from aikd.cross_model import fr_models_of
    from aikd.data.io import write_parquet_atomic

    settings = evaluate_settings(params)
    seed = int(params["seed"])
    results: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    diffs: list[dict[str, Any]] = []
    specs = benchmark_specs(params)
    detectors = settings.detectors_of(params)
    fr_models, unavailable = fr_models_of(
        params, sorted({(spec.dataset, d) for spec in specs.values() for d in detectors}))
    for net, reason in unavailable.items():
        print(f"evaluate: FR network {net} not evaluated: {reason}")
    cells = [(fr, b, d) for fr in fr_models for b in specs for d in detectors]
    no_people: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedPAUCWarning)
        for fr_model, bench, det in tqdm(cells, desc="evaluate", unit="cell"):
            cell = _load_cell(params, bench, det, fr_model)
            if bootstrap_kind(cell.pairs) == "pair":
                no_people.add(bench)
            keys = {"fr_model": fr_model, "detector": det, "benchmark": bench}
            facts = _cell_facts(cell, specs[bench].split)
            resampled = _score_cell(cell, keys, settings, seed, results, curves, facts)
            diffs += _paired_differences(cell, keys, settings, resampled)
    _reemit_other_warnings(caught)
    for bench in sorted(no_people):
        warnings.warn(f"evaluate: the pairs of {bench} have no person_a/person_b columns; its "
                      "intervals resample pairs, which understates the spread when pairs "
                      "share people (re-run its pairs stage)", UserWarning, stacklevel=2)
    out_dir = Path(settings.out_dir)
    frames = {"results": pd.DataFrame(results), "curves": pd.concat(curves, ignore_index=True),
              "differences": pd.DataFrame(diffs)}
    for frame in frames.values():  # training seed: an integer, empty where no single seed
        for col in ("seed", "n_seeds"):
            if col in frame.columns:
                frame[col] = frame[col].astype("Int64")
    for name, frame in frames.items():
        write_parquet_atomic(frame, out_dir / f"{name}.parquet")
    (out_dir / "fr_models.json").write_text(json.dumps(
        {"evaluated": fr_models, "not_evaluated": unavailable}, indent=2) + "\n")
    print(f"evaluate: {len(frames['results'])} result rows over {len(cells)} "
          "(FR model, benchmark, detector) cells")
    note = undefined_pauc_note(frames["results"], caught)
    if note:
        print(note)
    return frames
