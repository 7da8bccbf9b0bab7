"""The ``evaluate`` section of params.yaml as typed settings (pairs, evaluate, report stages).

params.yaml is the one source of these values: no field has a default here, and an
unknown key is an error naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aikd.config import from_mapping, from_section, section
from aikd.errors import UsageError

__all__ = ["Benchmark", "EvaluateSettings", "PrimaryMode", "benchmark_from", "evaluate_settings"]

#: How a benchmark's pairs are made (see ``aikd.evaluation.stage.pairs_stage``).
BENCHMARK_KINDS = ("lfw", "ytf", "identities", "csv")


@dataclass(frozen=True)
class Benchmark:
    """One entry of ``evaluate.benchmarks``; the optional fields belong to some kinds only."""

    kind: str  # lfw (View 2 pairs), ytf, identities (within-identity pairs of a split), csv
    dataset: str  # the data set whose images (and embeddings) the pairs compare
    #: ytf, identities: only images of this split (required); lfw: only the View 2 pairs
    #: whose two people are in this split (None keeps all 6,000); csv: checked, not filtered
    split: str | None = None
    max_mated: int | None = None  # ytf, identities: cap on the mated pairs
    #: ytf, identities: at most this many images per person (a seeded choice), so a person
    #: with hundreds of images cannot dominate the mated pairs; None: every image
    max_images_per_identity: int | None = None
    #: ytf, identities: non-mated pairs drawn among the (capped) images of different
    #: people; None: as many as the mated pairs
    n_nonmated: int | None = None
    path: str | None = None  # csv: the pairs file

    def check(self, where: str) -> Benchmark:
        """This benchmark, or a UsageError naming the key ``where`` lacks."""
        if self.kind not in BENCHMARK_KINDS:
            raise UsageError(f"params {where}.kind={self.kind!r}; use one of "
                             f"{', '.join(BENCHMARK_KINDS)}")
        if self.kind in ("ytf", "identities") and not self.split:
            raise UsageError(f"params {where}: kind {self.kind} needs a split (e.g. split: test)")
        if self.kind == "csv" and not self.path:
            raise UsageError(f"params {where}: kind csv needs the path of the pairs file")
        if self.kind not in ("ytf", "identities"):
            for key in ("max_mated", "max_images_per_identity", "n_nonmated"):
                if getattr(self, key) is not None:
                    raise UsageError(f"params {where}.{key}: only kinds ytf and identities "
                                     f"take it, not {self.kind}")
        for key in ("max_mated", "max_images_per_identity", "n_nonmated"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (1 if key == "max_images_per_identity"
                                                  else 0)):
                raise UsageError(f"params {where}.{key}={value!r}; use a whole number "
                                 f"({'>= 1' if key == 'max_images_per_identity' else '>= 0'}) "
                                 "or null")
        return self


def benchmark_from(name: str, spec: Mapping[str, Any]) -> Benchmark:
    """The typed ``evaluate.benchmarks.<name>`` entry."""
    where = f"evaluate.benchmarks.{name}"
    return from_mapping(Benchmark, spec, where).check(where)


@dataclass(frozen=True)
class PrimaryMode:
    """The (FMR, threshold mode) the report headlines: figures, summary and metrics."""

    fmr: float
    threshold: str


@dataclass
class EvaluateSettings:
    """``evaluate``: benchmarks, detectors and the (FMR, threshold) modes compared."""

    pairs_dir: str
    out_dir: str
    reports_dir: str
    benchmarks: dict[str, Benchmark]
    detectors: list[str] | None  # null: every detector of ``landmarks.detectors``
    fmrs: list[float]
    thresholds: list[str]
    n_boot: int  # bootstrap resamples per pAUC interval
    random_seeds: int  # random qualities averaged for the ``random`` context row
    primary: PrimaryMode

    def __post_init__(self) -> None:
        if isinstance(self.primary, Mapping):
            self.primary = from_mapping(PrimaryMode, self.primary, "evaluate.primary")
        self.primary = PrimaryMode(float(self.primary.fmr), str(self.primary.threshold))
        self.benchmarks = {name: spec if isinstance(spec, Benchmark) else
                           benchmark_from(name, spec) for name, spec in self.benchmarks.items()}
        self.fmrs = [float(f) for f in self.fmrs]
        self.thresholds = list(self.thresholds)
        self.n_boot = int(self.n_boot)
        self.random_seeds = int(self.random_seeds)
        if not any(math.isclose(self.primary.fmr, f, rel_tol=1e-6) for f in self.fmrs):
            raise UsageError(f"params evaluate.primary.fmr={self.primary.fmr:g} is not among "
                             f"evaluate.fmrs {self.fmrs}; set it to one of them")
        if self.primary.threshold not in self.thresholds:
            raise UsageError(f"params evaluate.primary.threshold={self.primary.threshold!r} is "
                             f"not among evaluate.thresholds {self.thresholds}; set it to one "
                             "of them")

    def detectors_of(self, params: Mapping[str, Any]) -> list[str]:
        """The detectors compared: ``evaluate.detectors``, else ``landmarks.detectors``."""
        return list(self.detectors or section(params, "landmarks")["detectors"])

    @staticmethod
    def training_detector(params: Mapping[str, Any]) -> str:
        """``landmarks.training_detector``: the alignment the models were trained on; every
        other detector is "misaligned" in the tables, summary and metrics."""
        return str(section(params, "landmarks")["training_detector"])


def evaluate_settings(params: Mapping[str, Any]) -> EvaluateSettings:
    """The typed ``evaluate`` section of ``params``."""
    return from_section(EvaluateSettings, params, "evaluate")
