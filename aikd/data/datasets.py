"""The `datasets` entries of params.yaml as typed specs: where a data set is, how it splits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aikd.config import from_mapping, section

#: Split fractions of a data set whose entry has no `splits` (whole identities per split).
DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class Subset:
    """A seeded sample (e.g. the smoke profile's): ``identities`` people, at most
    ``max_images`` images each (all when None)."""

    identities: int
    max_images: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of params.yaml ``datasets``. ``kind``: lfw, ytf or folder
    (``<root>/<identity>/<image>``); ``splits`` and ``subset`` are optional per entry."""

    kind: str
    root: str
    splits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    subset: Subset | None = None


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
    subset = values.pop("subset", None)  # an empty or null subset means the whole data set
    spec = from_mapping(DatasetSpec, values, where)
    if not subset:
        return spec
    return dataclasses.replace(spec, subset=from_mapping(Subset, subset, f"{where}.subset"))
