"""Verification benchmarks (pairs of images) and the similarity of each pair.

Every benchmark is a DataFrame with the columns of ``BENCHMARK_COLUMNS``: ``benchmark``
names it in the tables, ``dataset`` says which embeddings the paths belong to (paths are
relative to that data set's root), ``mated`` is True for same-identity pairs, ``fold``
keeps LFW's 10-fold split (0 where a benchmark has none) and ``person_a``/``person_b`` name
the person of each image (the manifest's ``person``, else its ``identity``), so that the
evaluation can resample people rather than pairs. Builders that see no manifest
(``lfw_pairs``, ``user_pairs``) leave them empty; ``with_persons`` fills them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from aikd.config import section
from aikd.data.pairs import read_lfw_pairs, read_pairs_csv
from aikd.evaluation.settings import Benchmark, benchmark_from

__all__ = [
    "BENCHMARK_COLUMNS",
    "PairScores",
    "benchmark_pairs",
    "benchmark_specs",
    "benchmarks_of",
    "cap_per_person",
    "identity_pairs",
    "lfw_pairs",
    "pair_scores",
    "person_of",
    "restrict_to_split",
    "user_pairs",
    "with_persons",
    "ytf_pairs",
]

BENCHMARK_COLUMNS = ["benchmark", "dataset", "path_a", "path_b", "mated", "fold",
                     "person_a", "person_b"]


def person_of(manifest: pd.DataFrame) -> pd.Series:
    """The person of each manifest row: ``person`` (a name normalised across data sets)
    where the manifest has it, else ``identity`` (older manifests)."""
    column = "person" if "person" in manifest.columns else "identity"
    if column not in manifest.columns:
        raise ValueError("the manifest has neither a 'person' nor an 'identity' column")
    return manifest[column].astype(str)


def with_persons(pairs: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with ``person_a``/``person_b`` looked up in the manifest (by path)."""
    person = pd.Series(person_of(manifest).to_numpy(), index=manifest["path"].astype(str))
    person = person[~person.index.duplicated()]
    out = pairs.copy()
    out["person_a"] = out["path_a"].astype(str).map(person)
    out["person_b"] = out["path_b"].astype(str).map(person)
    missing = out["person_a"].isna() | out["person_b"].isna()
    if missing.any():
        bad = out[missing].iloc[0]
        raise ValueError(f"{int(missing.sum())} pairs name images that are not in the manifest "
                         f"(e.g. {bad['path_a']}, {bad['path_b']})")
    return out


def _with_names(pairs: pd.DataFrame, benchmark: str, dataset: str) -> pd.DataFrame:
    out = pairs.copy()
    out["benchmark"] = benchmark
    out["dataset"] = dataset
    out["mated"] = out["mated"].astype(bool)
    out["fold"] = out["fold"].astype(np.int64)
    for col in ("person_a", "person_b"):
        out[col] = out[col].astype(object) if col in out.columns else None
    return out[BENCHMARK_COLUMNS].reset_index(drop=True)


def lfw_pairs(root: str | Path) -> pd.DataFrame:
    """LFW's official View 2 protocol (``<root>/pairs.txt``: 10 folds x 300 mated + 300 not).

    The standard protocol is kept as is so numbers stay comparable with published ones;
    ``restrict_to_split`` keeps the pairs of one split's people.
    """
    return _with_names(read_lfw_pairs(Path(root) / "pairs.txt"), "lfw", "lfw")


def restrict_to_split(
    pairs: pd.DataFrame, manifest: pd.DataFrame, split: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The pairs whose two images both belong to people of ``split`` (by the manifest), and
    a summary of what was kept: pairs (all, mated, non-mated) and people, before and after.

    An image the manifest does not list has no split and its pairs are dropped. With
    person-disjoint splits this keeps exactly the pairs of the split's people.
    """
    person = pd.Series(person_of(manifest).to_numpy(), index=manifest["path"].astype(str))
    in_split = pd.Series((manifest["split"] == split).to_numpy(),
                         index=manifest["path"].astype(str))
    person = person[~person.index.duplicated()]
    in_split = in_split[~in_split.index.duplicated()]
    pa = pairs["path_a"].astype(str)
    pb = pairs["path_b"].astype(str)
    keep = (pa.map(in_split).fillna(False).astype(bool)
            & pb.map(in_split).fillna(False).astype(bool)).to_numpy()
    kept = pairs[keep].reset_index(drop=True)
    people_all = set(pa.map(person).dropna()) | set(pb.map(person).dropna())
    people_kept = (set(kept["path_a"].astype(str).map(person))
                   | set(kept["path_b"].astype(str).map(person)))
    summary = {
        "n_pairs_protocol": len(pairs),
        "n_pairs": len(kept),
        "n_mated_protocol": int(pairs["mated"].sum()),
        "n_mated": int(kept["mated"].sum()),
        "n_nonmated_protocol": int((~pairs["mated"].astype(bool)).sum()),
        "n_nonmated": int((~kept["mated"].astype(bool)).sum()),
        "n_people_protocol": len(people_all),
        "n_people": len(people_kept),
    }
    return kept, summary


def user_pairs(csv: str | Path, dataset: str, *, benchmark: str | None = None) -> pd.DataFrame:
    """A user's ``path_a,path_b,mated[,fold]`` file on data set ``dataset``.

    The benchmark is named after the data set unless ``benchmark`` is given, so a user's own
    data shows up in the tables under a name they recognise.
    """
    return _with_names(read_pairs_csv(csv), benchmark or dataset, dataset)


def _mated_pairs(identity: np.ndarray, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of frames of the same identity from different videos.

    Frames of one video are near-duplicates, which would make mated pairs trivially easy;
    across videos pose, lighting and resolution change, as in the YTF protocol.
    """
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    starts = np.flatnonzero(np.r_[True, identity[1:] != identity[:-1]])
    ends = np.r_[starts[1:], identity.shape[0]]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        i, j = np.triu_indices(hi - lo, k=1)
        keep = video[lo + i] != video[lo + j]
        firsts.append(lo + i[keep])
        seconds.append(lo + j[keep])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def _nonmated_pairs(
    codes: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct unordered pairs (i < j) of frames with different identities.

    Drawn uniformly over all such pairs by rejection sampling; when ``n`` is more than half
    of what exists, all candidates are enumerated instead so the loop cannot stall.
    """
    n_frames = codes.shape[0]
    sizes = np.bincount(codes).astype(np.int64)
    available = int((n_frames * n_frames - int((sizes * sizes).sum())) // 2)
    if n > available:
        raise ValueError(f"{n} non-mated pairs requested but only {available} exist")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if 2 * n > available:
        i, j = np.triu_indices(n_frames, k=1)
        keep = codes[i] != codes[j]
        pick = np.sort(rng.choice(int(keep.sum()), size=n, replace=False))
        return i[keep][pick].astype(np.int64), j[keep][pick].astype(np.int64)
    chosen: list[int] = []
    seen: set[int] = set()
    while len(chosen) < n:
        a = rng.integers(0, n_frames, size=2 * n)
        b = rng.integers(0, n_frames, size=2 * n)
        ok = codes[a] != codes[b]
        keys = np.minimum(a, b)[ok] * n_frames + np.maximum(a, b)[ok]
        for key in keys.tolist():
            if key not in seen:
                seen.add(key)
                chosen.append(key)
                if len(chosen) == n:
                    break
    keys_arr = np.sort(np.asarray(chosen, dtype=np.int64))
    return keys_arr // n_frames, keys_arr % n_frames


def _seeded_key(seed: int, path: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def cap_per_person(frames: pd.DataFrame, person: pd.Series, cap: int | None,
                   seed: int) -> pd.DataFrame:
    """At most ``cap`` rows per person: a seeded choice that depends on each image's path
    and the seed only (a hash), so neither the row order nor the other people change it."""
    if cap is None:
        return frames
    if int(cap) < 1:
        raise ValueError(f"max_images_per_identity must be >= 1, got {cap}")
    key = np.array([_seeded_key(seed, p) for p in frames["path"].astype(str)], dtype=np.uint64)
    order = pd.DataFrame({"person": person.to_numpy(), "key": key,
                          "path": frames["path"].astype(str).to_numpy()})
    order = order.sort_values(["person", "key", "path"], kind="stable")
    rank = order.groupby("person", sort=False).cumcount()
    keep = np.zeros(len(frames), bool)
    keep[order.index[rank.to_numpy() < int(cap)]] = True
    return frames[keep]


def identity_pairs(
    manifest: pd.DataFrame | str | Path,
    *,
    split: str = "test",
    by_video: bool = False,
    max_images_per_identity: int | None = None,
    max_mated: int | None = None,
    n_nonmated: int | None = None,
    seed: int = 0,
    benchmark: str = "identities",
) -> pd.DataFrame:
    """Verification pairs among the images of one split's people.

    People are the manifest's ``person`` (else ``identity``). Each person keeps at most
    ``max_images_per_identity`` images (``cap_per_person``). Mated: every pair of one
    person's kept images (with ``by_video``, only pairs from DIFFERENT videos: frames of
    one video are near-duplicates), or a seeded sample of ``max_mated`` of them.
    Non-mated: ``n_nonmated`` distinct pairs of kept images of different people (None: as
    many as the mated pairs), drawn uniformly with the seed. Images are ordered by (person,
    path) first, so the result depends only on the manifest's content and the seed, not on
    its row order. ``fold`` is 0.
    """
    df = pd.read_parquet(manifest) if isinstance(manifest, str | Path) else manifest
    needed = {"path", "split"} | ({"video"} if by_video else set())
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"manifest lacks columns {sorted(missing)}")
    for key, value in (("max_mated", max_mated), ("n_nonmated", n_nonmated)):
        if value is not None and int(value) < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    frames = df[df["split"] == split]
    if frames.empty:
        raise ValueError(f"no images in split {split!r}")
    if frames["path"].duplicated().any():
        raise ValueError("the manifest lists a path twice; pairs would be ambiguous")
    dataset = "ytf" if by_video else benchmark
    if "dataset" in frames.columns and frames["dataset"].nunique() == 1:
        dataset = str(frames["dataset"].iloc[0])
    frames = cap_per_person(frames, person_of(frames), max_images_per_identity, seed)
    frames = frames.assign(_person=person_of(frames))
    frames = frames.sort_values(["_person", "path"], kind="stable").reset_index(drop=True)
    paths = frames["path"].to_numpy(dtype=object)
    person = frames["_person"].to_numpy(dtype=object)
    codes = pd.factorize(frames["_person"], sort=True)[0].astype(np.int64)
    video = frames["video"].to_numpy() if by_video else np.arange(len(frames))

    mi, mj = _mated_pairs(codes, video)
    if max_mated is not None and int(max_mated) < mi.shape[0]:
        rng_m = np.random.default_rng([seed, 0])
        pick = np.sort(rng_m.choice(mi.shape[0], size=int(max_mated), replace=False))
        mi, mj = mi[pick], mj[pick]
    n_non = mi.shape[0] if n_nonmated is None else int(n_nonmated)
    ni, nj = _nonmated_pairs(codes, n_non, np.random.default_rng([seed, 1]))
    assert not (person[ni] == person[nj]).any()

    ia, ib = np.concatenate([mi, ni]), np.concatenate([mj, nj])
    out = pd.DataFrame(
        {
            "path_a": paths[ia],
            "path_b": paths[ib],
            "mated": np.r_[np.ones(mi.shape[0], bool), np.zeros(ni.shape[0], bool)],
            "fold": 0,
            "person_a": person[ia],
            "person_b": person[ib],
        }
    )
    return _with_names(out, benchmark, dataset)


def ytf_pairs(
    manifest: pd.DataFrame | str | Path,
    *,
    split: str = "test",
    max_mated: int | None = None,
    max_images_per_identity: int | None = None,
    n_nonmated: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Verification pairs among the YTF frames of one split: ``identity_pairs`` with mated
    pairs only across DIFFERENT videos (the YTF protocol: pose, lighting and resolution
    change between videos, while frames of one video are near-duplicates)."""
    df = pd.read_parquet(manifest) if isinstance(manifest, str | Path) else manifest
    missing = {"path", "identity", "split", "video"} - set(df.columns)
    if missing:
        raise ValueError(f"YTF manifest lacks columns {sorted(missing)}")
    return identity_pairs(df, split=split, by_video=True, max_mated=max_mated,
                          max_images_per_identity=max_images_per_identity,
                          n_nonmated=n_nonmated, seed=seed, benchmark="ytf")


class PairScores(NamedTuple):
    """Pairs that could be scored, their cosine similarity, and how many were dropped."""

    pairs: pd.DataFrame
    similarity: np.ndarray
    n_dropped: int


def pair_scores(
    pairs: pd.DataFrame, embeddings_meta: pd.DataFrame, embeddings: np.ndarray
) -> PairScores:
    """Cosine similarity of the L2-normalised embeddings of each pair.

    A pair is dropped when either image has no usable embedding (the detector found no
    face, or the vector is non-finite or zero): such an image cannot be verified at all, so
    it is reported as a coverage loss instead of being scored. The kept pairs keep their
    order (index reset, so they line up with ``similarity``). Paths are relative to one data
    set's root, so the pairs must all come from the data set the embeddings were made on.
    """
    if "dataset" in pairs.columns and pairs["dataset"].nunique() > 1:
        raise ValueError("pairs span several data sets; score each against its own embeddings")
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(embeddings_meta):
        raise ValueError(
            f"embeddings shape {emb.shape} does not match {len(embeddings_meta)} meta rows"
        )
    paths = embeddings_meta["path"].astype(str)
    if paths.duplicated().any():
        dup = paths[paths.duplicated()].iloc[0]
        raise ValueError(f"embedding for {dup!r} is listed twice")
    norms = np.linalg.norm(emb, axis=1)
    usable = np.isfinite(emb).all(axis=1) & (norms > 0)
    unit = np.zeros_like(emb)
    unit[usable] = emb[usable] / norms[usable, None]
    row_of = pd.Series(np.arange(len(paths)), index=paths.to_numpy())
    row_of = row_of[usable]

    ia = pairs["path_a"].astype(str).map(row_of)
    ib = pairs["path_b"].astype(str).map(row_of)
    keep = (ia.notna() & ib.notna()).to_numpy()
    a = ia.to_numpy()[keep].astype(np.int64)
    b = ib.to_numpy()[keep].astype(np.int64)
    similarity = np.einsum("ij,ij->i", unit[a], unit[b])
    kept = pairs[keep].reset_index(drop=True)
    return PairScores(kept, similarity, int((~keep).sum()))


def benchmark_specs(params: Mapping[str, Any]) -> dict[str, Benchmark]:
    """``evaluate.benchmarks`` of the params: name -> its typed entry."""
    specs = section(params, "evaluate")["benchmarks"]
    return {name: benchmark_from(name, spec) for name, spec in specs.items()}


def benchmarks_of(params: Mapping[str, Any], dataset: str) -> list[str]:
    """The benchmarks whose pairs are images of ``dataset``."""
    return [b for b, spec in benchmark_specs(params).items() if spec.dataset == dataset]


def benchmark_pairs(params: Mapping[str, Any], benchmark: str) -> pd.DataFrame:
    """The pairs the ``pairs@<benchmark>`` stage wrote."""
    from aikd.paths import pairs_path

    path = pairs_path(params, benchmark)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs of benchmark {benchmark!r} not written yet; "
                                f"run `dvc repro pairs@{benchmark}`")
    return pd.read_parquet(path)
