"""Dataset manifests: one parquet row per image with identity, person, split and size.

Every later stage (landmarks, embeddings, labels, training, evaluation) starts from a
manifest, so a user's own data set only needs a manifest to run the same DAG. Paths are
stored relative to the dataset root (`root` column), which keeps manifests portable.

Splits are per PERSON over the union of data sets (docs/splits.md): a person's split is a
seeded hash draw on the normalised name (`person`), so every manifest stage assigns the
same person to the same split without reading the other data sets.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from aikd.data.pairs import read_lfw_pairs

#: Files a data set root may hold beside its identity folders (landmarks, pairs).
DATASET_FILES = {"landmarks_5pt.csv", "keypoints_68pt.csv", "pairs.txt"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MANIFEST_COLUMNS = [
    "root",
    "path",
    "identity",
    "person",
    "dataset",
    "split",
    "width",
    "height",
    "in_eval_pairs",
]
_SEPARATORS = re.compile(r"[\s_\-]+")


@dataclass
class ManifestResult:
    """A manifest and the files that could not be listed in it (with the reason)."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame


def normalise_person(name: str) -> str:
    """The person key shared by all data sets: Unicode NFC, lower case, runs of spaces,
    underscores and hyphens collapsed to one space, stripped (``John_Smith`` and
    ``john  smith`` are one person)."""
    text = unicodedata.normalize("NFC", str(name)).lower()
    return _SEPARATORS.sub(" ", text).strip()


def person_draw(person: str, seed: int) -> float:
    """A deterministic uniform draw in [0, 1) for a normalised person name and the seed."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{person}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _check_shares(fractions: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    if not fractions:
        raise ValueError("split fractions are empty")
    total = float(sum(fractions.values()))
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum > 0: {dict(fractions)}")
    names = list(fractions)
    bounds = np.cumsum([fractions[n] / total for n in names])
    bounds[-1] = 1.0  # no draw falls past the last split through rounding
    return names, bounds


def person_split(name: str, fractions: Mapping[str, float], seed: int) -> str:
    """The split of one person (any spelling of the name): the hash draw mapped through the
    cumulative shares, independent of every other person and data set."""
    names, bounds = _check_shares(fractions)
    u = person_draw(normalise_person(name), seed)
    return names[int(np.searchsorted(bounds, u, side="right"))]


def split_identities(
    identities: Iterable[str], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Assign whole identities to splits: ``{identity: split}`` by `person_split`, so the
    same person gets the same split in every data set (and adding people moves nobody)."""
    _check_shares(fractions)  # fails on bad shares even without identities
    return {i: person_split(i, fractions, seed) for i in sorted(set(identities))}


def _scan_identity_folders(images_dir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """List `<identity>/<image>` files; anything else is returned as (path, reason)."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: image folder not found")
    found: list[tuple[str, str]] = []
    rejected: list[tuple[str, str]] = []
    for entry in sorted(images_dir.iterdir()):
        if entry.name in DATASET_FILES:  # the data set's own landmarks / pairs, not junk
            continue
        if not entry.is_dir():
            rejected.append((entry.name, "not an identity folder"))
            continue
        for f in sorted(entry.iterdir()):
            rel = f"{entry.name}/{f.name}"
            if f.is_dir():
                rejected.append((rel, "nested folder ignored"))
            elif f.suffix.lower() not in IMAGE_SUFFIXES:
                rejected.append((rel, f"not an image file (suffix {f.suffix or 'none'})"))
            else:
                found.append((entry.name, rel))
    return found, rejected


def _image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) from the file header, or a reason string when it cannot be read."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"unreadable image header: {exc}"


def _build(
    root: Path,
    prefix: str,
    dataset: str,
    files: list[tuple[str, str]],
    rejected: list[tuple[str, str]],
    splits: Mapping[str, str],
    eval_paths: set[str],
) -> ManifestResult:
    rows = []
    bad = [(f"{prefix}{p}", why) for p, why in rejected]
    for identity, rel in files:
        path = f"{prefix}{rel}"
        size = _image_size(root / path)
        if isinstance(size, str):
            bad.append((path, size))
            continue
        rows.append(
            (
                str(root),
                path,
                identity,
                normalise_person(identity),
                dataset,
                splits[identity],
                size[0],
                size[1],
                path in eval_paths,
            )
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest["width"] = manifest["width"].astype("int32")
    manifest["height"] = manifest["height"].astype("int32")
    return ManifestResult(manifest, pd.DataFrame(bad, columns=["path", "reason"]))


def folder_manifest(
    root: str | Path,
    dataset: str,
    *,
    fractions: Mapping[str, float],
    seed: int,
    images_subdir: str = "",
    eval_paths: set[str] | None = None,
) -> ManifestResult:
    """Manifest of a `<root>/<images_subdir>/<identity>/<image>` folder: each identity's
    split is its person's hash draw (`split_identities`). ``eval_paths`` only flags images
    (`in_eval_pairs`); it does not move them to a split."""
    root = Path(root)
    images_dir = root / images_subdir if images_subdir else root
    files, rejected = _scan_identity_folders(images_dir)
    prefix = f"{images_subdir.strip('/')}/" if images_subdir else ""
    splits = split_identities([i for i, _ in files], fractions, seed)
    return _build(root, prefix, dataset, files, rejected, splits, eval_paths or set())


def lfw_manifest(root: str | Path, *, fractions: Mapping[str, float], seed: int) -> ManifestResult:
    """LFW, split by person like every data set; `in_eval_pairs` flags the View 2 pair
    images (for the secondary View 2 table), whatever split their person drew."""
    root = Path(root)
    pairs = read_lfw_pairs(root / "pairs.txt")
    eval_paths = set(pairs["path_a"]) | set(pairs["path_b"])
    return folder_manifest(
        root, "lfw", fractions=fractions, seed=seed, images_subdir="images", eval_paths=eval_paths
    )


def ytf_manifest(root: str | Path, *, fractions: Mapping[str, float], seed: int) -> ManifestResult:
    """YouTube Faces frames `<Name>_<video><frame>.jpg`, split by person; adds `video`."""
    res = folder_manifest(root, "ytf", fractions=fractions, seed=seed, images_subdir="images")
    stem = res.manifest["path"].str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
    video = stem.str.extract(r"_(\d)\d+$", expand=False)
    odd = video.isna()
    if odd.any():  # a stray file in a frame folder: reported, not a crash of the whole stage
        extra = pd.DataFrame({"path": res.manifest.loc[odd, "path"],
                              "reason": "not a YTF frame name <Name>_<video><frame>.<ext>"})
        res = ManifestResult(res.manifest[~odd].reset_index(drop=True),
                             pd.concat([res.rejected, extra], ignore_index=True))
        video = video[~odd].reset_index(drop=True)
    res.manifest["video"] = video.astype("int16").to_numpy()
    return res


def build_manifest(
    kind: str,
    root: str | Path,
    *,
    fractions: Mapping[str, float],
    seed: int,
    dataset: str | None = None,
) -> ManifestResult:
    """Dispatch on the dataset kind: `lfw`, `ytf` or `folder` (a user's identity folders).
    ``fractions``: the top-level ``splits`` shares of people."""
    if kind == "lfw":
        return lfw_manifest(root, fractions=fractions, seed=seed)
    if kind == "ytf":
        return ytf_manifest(root, fractions=fractions, seed=seed)
    if kind == "folder":
        return folder_manifest(root, dataset or Path(root).name, fractions=fractions, seed=seed)
    raise ValueError(f"unknown dataset kind {kind!r}; expected lfw, ytf or folder")


def with_person(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with a `person` column (derived from `identity` for a manifest written
    before the column existed)."""
    if "person" in manifest.columns:
        return manifest
    return manifest.assign(person=manifest["identity"].map(normalise_person))


def subset_manifest(
    manifest: pd.DataFrame, *, identities: int, max_images: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """A seeded, identity-level sample of a manifest: per split, ``identities`` identities
    (those with at least two images first, so verification pairs exist) with at most
    ``max_images`` images each. For smoke runs and quick experiments on a small budget.
    """
    rng = np.random.default_rng([int(seed), 29])
    keep = []
    for _, part in manifest.groupby("split", sort=True):
        counts = part.groupby("identity").size()
        multi = sorted(counts[counts >= 2].index)
        single = sorted(counts[counts < 2].index)
        order = list(rng.permutation(multi)) + list(rng.permutation(single))
        chosen = set(order[:identities])
        sel = part[part["identity"].isin(chosen)].sort_values("path")
        if max_images:
            sel = sel.groupby("identity", sort=False).head(max_images)
        keep.append(sel)
    return pd.concat(keep).sort_values("path").reset_index(drop=True)


def image_file(row: Mapping[str, object]) -> Path:
    """The file of a manifest row."""
    return Path(str(row["root"])) / str(row["path"])
