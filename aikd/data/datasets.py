"""The `datasets` entries of params.yaml as typed specs (where a data set is, what kind), and
the top-level `splits` shares that assign every person to one split over all data sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aikd.config import from_mapping, from_section, section


@dataclass(frozen=True)
class SplitShares:
    """params.yaml ``splits``: the share of PEOPLE (not images) drawn into each split. One
    draw per normalised person name over the union of data sets (aikd.data.manifest), so a
    person is in the same split in every manifest. Shares are normalised by their sum."""

    train: float
    val: float
    test: float

    def __post_init__(self) -> None:
        values = dataclasses.asdict(self)
        if any(not isinstance(v, int | float) or v < 0 for v in values.values()):
            raise ValueError(f"params splits: shares must be non-negative numbers: {values}")
        if sum(values.values()) <= 0:
            raise ValueError(f"params splits: shares must sum to more than 0: {values}")

    def as_dict(self) -> dict[str, float]:
        """``{split: share}`` in the order train, val, test."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}


def split_shares(params: Mapping[str, Any]) -> SplitShares:
    """The top-level ``splits`` section as SplitShares (unknown or missing keys fail)."""
    return from_section(SplitShares, params, "splits")


@dataclass(frozen=True)
class Subset:
    """A seeded sample (e.g. the smoke profile's): ``identities`` people, at most
    ``max_images`` images each (all when None)."""

    identities: int
    max_images: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of params.yaml ``datasets``. ``kind``: lfw, ytf or folder
    (``<root>/<identity>/<image>``); ``subset`` is optional. Splits are not per data set:
    the top-level ``splits`` shares apply to every person of every data set."""

    kind: str
    root: str
    subset: Subset | None = None
    # Splits this data set contributes images to, e.g. [train, val] for a training-only
    # set (VGGFace2): its people drawn into other splits are left out, never moved, so a
    # person it shares with an evaluation set stays out of training. None: every split.
    use: list[str] | None = None


def dataset_entry(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The raw ``datasets.<name>`` mapping, with a clear error for an unknown name."""
    datasets = section(params, "datasets")
    if name not in datasets:
        raise KeyError(f"dataset {name!r} is not in params 'datasets' ({', '.join(datasets)})")
    return dict(datasets[name])


def dataset_spec(params: Mapping[str, Any], name: str) -> DatasetSpec:
    """``datasets.<name>`` as a DatasetSpec; unknown keys fail with the key named."""
    where = f"datasets.{name}"
    values = dataset_entry(params, name)
    if "splits" in values:
        raise ValueError(
            f"params {where}: a per-dataset 'splits' is no longer supported; set the "
            f"top-level 'splits' shares instead (one split per person over all data sets: "
            f"a per-dataset split would put a person shared by two data sets in two splits)")
    subset = values.pop("subset", None)  # an empty or null subset means the whole data set
    spec = from_mapping(DatasetSpec, values, where)
    if not subset:
        return spec
    return dataclasses.replace(spec, subset=from_mapping(Subset, subset, f"{where}.subset"))
