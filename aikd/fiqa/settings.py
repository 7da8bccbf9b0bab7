"""The `labels` section of params.yaml as typed settings, one dataclass per label method.

params.yaml is the only source of these values (no defaults here); an unknown or missing
key fails with the key named."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aikd.config import from_mapping, section


@dataclass(frozen=True)
class SerfiqSettings:
    """SER-FIQ: ``T`` passes with ``dropout`` at ``rate`` placed at ``placement``
    (docs/serfiq-dropout.md)."""

    T: int
    rate: float
    placement: str
    dropout: str


@dataclass(frozen=True)
class SddfiqaSettings:
    """SDD-FIQA: ``m`` sampled pairs per image, ``k`` repetitions."""

    m: int
    k: int


@dataclass(frozen=True)
class CrfiqaSettings:
    """CR-FIQA's label ``variant`` (paper or ratio) and how CCS's ``centre`` is estimated
    (loo or debiased, :func:`aikd.fiqa.crfiqa.crfiqa_components`)."""

    variant: str
    centre: str


@dataclass(frozen=True)
class CsvSettings:
    """Method ``csv``: the ``path,quality`` file of another FIQA method (None: not set)."""

    path: str | None


#: Each method's subsection of `labels` and its settings class.
METHOD_SETTINGS: dict[str, type] = {
    "serfiq": SerfiqSettings, "sddfiqa": SddfiqaSettings, "crfiqa": CrfiqaSettings,
    "csv": CsvSettings}


@dataclass(frozen=True)
class LabelsSettings:
    """Which images get labels (``datasets`` x ``splits``), the coverage gate, the methods."""

    out_dir: str
    methods: list[str]
    datasets: list[str]
    splits: list[str]
    min_coverage: float
    serfiq: SerfiqSettings
    sddfiqa: SddfiqaSettings
    crfiqa: CrfiqaSettings
    csv: CsvSettings


def labels_settings(params: Mapping[str, Any]) -> LabelsSettings:
    """params.yaml ``labels`` with each method's subsection typed."""
    values = section(params, "labels")
    for name, cls in METHOD_SETTINGS.items():
        values[name] = from_mapping(cls, values.get(name), f"labels.{name}")
    return from_mapping(LabelsSettings, values, "labels")
