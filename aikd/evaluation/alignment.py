"""Which alignment suits the FR network best: FNMR at fixed FMR under each detector's landmarks.

The alignment study of issue #13 (part 3). On the images of one split's people (validation:
the study steers a choice, so it must not look at test people), every within-person pair
(at most ``max_images_per_identity`` images per person, as in the ``lfw-id`` benchmark) is
a mated pair and every pair of different people (or a large seeded sample) a non-mated
one. Only images that EVERY detector aligned and every FR network embedded are used, so
all detectors are compared on the same pairs and a detector is not rewarded for skipping
hard faces (how many images each one lost is reported beside). FNMR at FMR f follows the
conventions of ``aikd.evaluation.edc`` (``edc_curve`` at discard rate 0: the threshold is
the ``floor(f * n)``-th highest non-mated similarity, a pair matches iff similarity >
threshold).

Column names carry the FMR and the network (``fnmr_1e-3_dlib_resnet``), so a second FR
network adds columns to the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.evaluation.benchmarks import cap_per_person, identity_pairs, pair_scores, person_of
from aikd.evaluation.edc import edc_curve
from aikd.naming import fmr_tag

__all__ = ["NoPairsError", "alignment_table", "fnmr_at_fmr", "write_alignment_report"]


class NoPairsError(ValueError):
    """A data set's split has no mated or no non-mated pair (e.g. one person)."""


def fnmr_at_fmr(similarity: np.ndarray, mated: np.ndarray, fmr: float) -> tuple[float, float, int]:
    """(FNMR, threshold, failing mated pairs) at FMR ``fmr``, by ``edc_curve``'s conventions."""
    sim = np.asarray(similarity, dtype=np.float64)
    zeros = np.zeros(sim.shape[0])
    row = edc_curve(sim, np.asarray(mated, bool), zeros, zeros, fmr=fmr,
                    discard_rates=[0.0]).iloc[0]
    fnmr = float(row["fnmr"])
    n_fail = int(round(fnmr * int(row["n_mated"]))) if np.isfinite(fnmr) else 0
    return fnmr, float(row["threshold"]), n_fail


def _usable_paths(meta: pd.DataFrame, vectors: np.ndarray) -> set[str]:
    vec = np.asarray(vectors, dtype=np.float64)
    ok = np.isfinite(vec).all(axis=1) & (np.linalg.norm(vec, axis=1) > 0)
    return set(meta["path"].astype(str)[ok])


def _found_paths(landmarks: pd.DataFrame) -> set[str]:
    ok = landmarks["status"] == "ok" if "status" in landmarks.columns else \
        pd.Series(True, index=landmarks.index)
    return set(landmarks.loc[ok, "path"].astype(str))


def _n_available_nonmated(person: pd.Series) -> int:
    sizes = person.value_counts().to_numpy(dtype=np.int64)
    total = int(sizes.sum())
    return int((total * total - int((sizes * sizes).sum())) // 2)


def alignment_table(
    manifest: pd.DataFrame,
    embeddings: Mapping[tuple[str, str], tuple[pd.DataFrame, np.ndarray]],
    *,
    landmarks: Mapping[str, pd.DataFrame] | None = None,
    split: str = "val",
    fmrs: Sequence[float] = (1e-3, 1e-2),
    max_images_per_identity: int | None = 30,
    n_nonmated: int | None = None,
    seed: int = 0,
    dataset: str | None = None,
) -> pd.DataFrame:
    """One row per detector of FNMR at each FMR for each network, on one data set.

    ``embeddings`` maps (detector, network) -> (meta with ``path``, vectors);
    ``landmarks`` (optional) maps detector -> its landmark table, to count the images it
    found no face in. ``n_nonmated`` None: every different-person pair of the common
    images; else a seeded sample of that many (all, where fewer exist).
    """
    detectors = list(dict.fromkeys(d for d, _ in embeddings))
    networks = list(dict.fromkeys(n for _, n in embeddings))
    missing = [(d, n) for d in detectors for n in networks if (d, n) not in embeddings]
    if missing:
        raise ValueError(f"embeddings missing for (detector, network) {missing}")
    images = manifest[manifest["split"] == split]
    if images.empty:
        raise ValueError(f"no images in split {split!r}")
    split_paths = set(images["path"].astype(str))
    usable = {key: _usable_paths(*embeddings[key]) & split_paths for key in embeddings}
    common = set.intersection(*usable.values()) if usable else set()
    used = images[images["path"].astype(str).isin(common)]
    if used.empty:
        raise ValueError(f"no {split} image has an embedding under every detector")
    used = cap_per_person(used, person_of(used), max_images_per_identity, seed)
    available = _n_available_nonmated(person_of(used))
    n_non = available if n_nonmated is None else min(int(n_nonmated), available)
    pairs = identity_pairs(used, split=split, n_nonmated=n_non, seed=seed,
                           benchmark="alignment")
    mated = pairs["mated"].to_numpy(dtype=bool)
    if not mated.any() or mated.all():
        raise NoPairsError(f"{dataset or 'data set'}: the {split} people give "
                           f"{int(mated.sum())} mated and {int((~mated).sum())} non-mated "
                           "pairs; FNMR at a fixed FMR needs both")
    name = dataset or str(pairs["dataset"].iloc[0])
    rows = []
    for det in detectors:
        found = _found_paths(landmarks[det]) & split_paths if landmarks and det in landmarks \
            else None
        row: dict[str, Any] = {
            "dataset": name,
            "detector": det,
            "n_images_split": len(split_paths),
            "n_no_landmarks": len(split_paths - found) if found is not None else np.nan,
        }
        for net in networks:
            have = usable[(det, net)]
            row[f"n_no_embedding_{net}"] = (len(found - have) if found is not None
                                            else len(split_paths - have))
        row.update({"n_images_common": len(common), "n_images": len(used),
                    "n_people": int(person_of(used).nunique()), "n_mated": int(mated.sum()),
                    "n_nonmated": int((~mated).sum())})
        for net in networks:
            scored = pair_scores(pairs, *embeddings[(det, net)])
            if scored.n_dropped:
                raise AssertionError("a pair of common images lost its embedding")
            sim_mated = scored.pairs["mated"].to_numpy(dtype=bool)
            for fmr in fmrs:
                fnmr, _, n_fail = fnmr_at_fmr(scored.similarity, sim_mated, fmr)
                row[f"fnmr_{fmr_tag(fmr)}_{net}"] = fnmr
                row[f"n_fail_{fmr_tag(fmr)}_{net}"] = n_fail
        rows.append(row)
    return pd.DataFrame(rows)


def write_alignment_report(table: pd.DataFrame, out_dir: str | Path, *, split: str,
                           max_images_per_identity: int | None,
                           fmrs: Sequence[float],
                           unavailable: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """``alignment_fnmr.csv`` and ``alignment_fnmr.md`` (the table, how its pairs were made
    and which alignment gives the lowest FNMR per data set, network and FMR; networks that
    could not be evaluated, ``unavailable``: {network: why}, are named under it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "alignment_fnmr.csv"
    table.to_csv(csv, index=False)
    cap = "every image" if max_images_per_identity is None else \
        f"at most {max_images_per_identity} images per person (a seeded choice)"
    lines = [
        "# FR verification error under each detector's alignment",
        "",
        f"People of the `{split}` split only, each data set separately. Mated pairs: every "
        f"within-person pair ({cap}); non-mated: every pair of different people, or a seeded "
        "sample (`n_nonmated`). Only images that EVERY detector aligned and embedded are "
        "used, so every detector is scored on the same pairs; `n_no_landmarks` and "
        "`n_no_embedding_<network>` count the split's images each detector lost, "
        "`n_images_common` the images every detector kept, `n_images` those used after the "
        "cap. FNMR at "
        "FMR f: threshold = the floor(f n)-th highest non-mated similarity "
        "(aikd.evaluation.edc); `n_fail` = mated pairs at or below it.",
        "",
        table.to_markdown(index=False, floatfmt=".4f"),
        "",
        "## Lowest FNMR",
        "",
    ]
    for col in [c for c in table.columns if c.startswith("fnmr_")]:
        for ds, group in table.groupby("dataset", sort=True):
            g = group.dropna(subset=[col])
            if g.empty:
                continue
            best = g.loc[g[col].idxmin()]
            ties = g.loc[g[col] == best[col], "detector"].tolist()
            lines.append(f"- {ds}, `{col}`: {', '.join(ties)} ({best[col]:.4f}; "
                         f"{int(best['n_mated'])} mated pairs, so one pair = "
                         f"{1 / max(int(best['n_mated']), 1):.4f})")
    for net, reason in (unavailable or {}).items():
        lines.append(f"- network `{net}` not evaluated: {reason}")
    md = out / "alignment_fnmr.md"
    md.write_text("\n".join(lines) + "\n")
    return csv, md


def alignment_stage(params: Mapping[str, Any]) -> pd.DataFrame:
    """DVC stage ``alignment``: the table for every data set and every
    ``landmarks.detectors`` entry, with the ``embed.backbone`` network and every available
    cross-model network (``cross_model.backbones``; one not on disk is named in the
    report, not an error)."""
    from aikd.config import section
    from aikd.cross_model import fr_models_of
    from aikd.data.io import read_vectors
    from aikd.paths import embeddings_path, landmarks_path, manifest_path

    cfg = dict(section(params, "alignment"))
    detectors = list(section(params, "landmarks")["detectors"])
    datasets = list(section(params, "datasets"))
    networks, unavailable = fr_models_of(params, [(ds, det) for ds in datasets
                                                  for det in detectors])
    for net, reason in unavailable.items():
        print(f"alignment: network {net} left out: {reason}")
    fmrs = [float(f) for f in cfg["fmrs"]]
    tables = []
    for dataset in datasets:
        manifest = pd.read_parquet(manifest_path(params, dataset))
        if not (manifest["split"] == cfg["split"]).any():
            print(f"alignment: {dataset} has no {cfg['split']} images, skipped")
            continue
        embeddings = {(det, net): read_vectors(embeddings_path(params, dataset, det, net))
                      for det in detectors for net in networks}
        marks = {det: pd.read_parquet(landmarks_path(params, dataset, det))
                 for det in detectors}
        try:
            tables.append(alignment_table(
                manifest, embeddings, landmarks=marks, split=cfg["split"], fmrs=fmrs,
                max_images_per_identity=cfg["max_images_per_identity"],
                n_nonmated=cfg["n_nonmated"], seed=int(params["seed"]), dataset=dataset))
        except NoPairsError as exc:  # a tiny data set: reported, not a failed stage
            print(f"alignment: {exc}; skipped")
    if not tables:
        raise NoPairsError(f"alignment: no data set has both mated and non-mated pairs among "
                           f"its {cfg['split']} people")
    table = pd.concat(tables, ignore_index=True)
    write_alignment_report(table, cfg["out_dir"], split=cfg["split"],
                           max_images_per_identity=cfg["max_images_per_identity"], fmrs=fmrs,
                           unavailable=unavailable)
    print(table.to_string(index=False))
    return table
