"""DVC stage ``manifest@<dataset>``: list a data set's images, split them by person, validate
(the manifest alone, then every person's split against the other manifests already written)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aikd.config import global_seed
from aikd.data.datasets import dataset_entry, dataset_spec, split_shares
from aikd.data.io import file_md5
from aikd.data.manifest import build_manifest, with_person
from aikd.data.validation import validate_manifest, validate_person_splits
from aikd.paths import manifest_path
from aikd.tracking import stage_run

log = logging.getLogger("aikd")


#: Parquet schema metadata key of a manifest: the split rule (shares, seed) it was drawn with.
SPLIT_RULE_KEY = b"aikd.split_rule"


def split_rule(shares: Mapping[str, float], seed: int) -> str:
    """The split rule a manifest records: the person shares and the seed, as JSON."""
    return json.dumps({"seed": int(seed), "splits": dict(shares)}, sort_keys=True)


def write_manifest(manifest: pd.DataFrame, out: Path, rule: str) -> None:
    """The manifest parquet, with its split rule in the schema metadata."""
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    meta = {**(table.schema.metadata or {}), SPLIT_RULE_KEY: rule.encode()}
    pq.write_table(table.replace_schema_metadata(meta), out)


def other_manifests(out: Path, rule: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The other manifests in the manifest folder (``<name>.parquet`` beside ``out``)
    written with the same split rule, as (person, split) tables, and the names of those
    skipped as stale: written with other shares or seed (or before persons had splits), so
    DVC re-runs their stage, whose own gate then checks them against this one."""
    found, stale = {}, []
    for path in sorted(out.parent.glob("*.parquet")):
        if path.resolve() == out.resolve():
            continue
        schema = pq.read_schema(path)
        if (schema.metadata or {}).get(SPLIT_RULE_KEY, b"").decode() != rule:
            stale.append(path.stem)
            continue
        cols = [c for c in ("identity", "person", "split") if c in schema.names]
        found[path.stem] = with_person(pd.read_parquet(path, columns=cols))[["person", "split"]]
    return found, stale


def manifest_stage(params: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """Write data/manifests/<dataset>.parquet (+ _rejected.csv, validation report)."""
    spec = dataset_spec(params, dataset)
    shares = split_shares(params)
    seed = global_seed(params)
    out = manifest_path(params, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = build_manifest(spec.kind, spec.root, fractions=shares.as_dict(), seed=seed,
                         dataset=dataset)
    if spec.subset:  # e.g. the smoke profile: {identities: 8, max_images: 4}
        from aikd.data.manifest import subset_manifest

        res = dataclasses.replace(res, manifest=subset_manifest(
            res.manifest, identities=int(spec.subset.identities),
            max_images=spec.subset.max_images, seed=seed))
    left_out = 0
    if spec.use is not None:  # a training-only data set: drop, never move, other people
        unknown = sorted(set(spec.use) - set(shares.as_dict()))
        if unknown:
            raise ValueError(f"params datasets.{dataset}.use: unknown splits {unknown}; use "
                             f"some of {', '.join(shares.as_dict())}")
        keep = res.manifest["split"].isin(spec.use)
        left_out = int(res.manifest.loc[~keep, "person"].nunique())
        res = dataclasses.replace(res, manifest=res.manifest[keep].reset_index(drop=True))
    report = validate_manifest(res.manifest, dataset)
    # Nobody in two splits anywhere: this manifest against every other one written so far
    # (each manifest stage draws splits from the names alone; this catches a stale
    # manifest from other shares or seed, or a data set whose splits were edited).
    rule = split_rule(shares.as_dict(), seed)
    others, stale = other_manifests(out, rule)
    persons = validate_person_splits({dataset: res.manifest, **others},
                                     f"person_splits_{dataset}")
    if stale:
        persons.notes.append(f"Not compared (written with another split rule, to be re-run): "
                             f"{', '.join(stale)}.")
    report_path = out.parent / f"{dataset}_validation.md"
    report_path.write_text(report.to_markdown() + "\n" + persons.to_markdown())
    report.path = persons.path = report_path
    rejected_path = out.parent / f"{dataset}_rejected.csv"
    res.rejected.to_csv(rejected_path, index=False)
    counts = res.manifest.groupby("split").size().to_dict()
    summary = {
        "images": len(res.manifest),
        "identities": int(res.manifest["identity"].nunique()),
        "persons": int(res.manifest["person"].nunique()),
        "persons_left_out": left_out,  # drawn into a split outside datasets.<name>.use
        "rejected": len(res.rejected),
        **{f"split_{k}": int(v) for k, v in counts.items()},
    }
    (out.parent / f"{dataset}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # Hashes of the data set's side files (reference landmarks, pairs lists): stages that
    # read them depend on this file, so an edited landmark file re-runs them.
    sources = {f.name: file_md5(f) for f in sorted(Path(spec.root).glob("*")) if f.is_file()}
    (out.parent / f"{dataset}_sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    with stage_run(
        "manifest",
        params,
        run_name=f"manifest-{dataset}",
        log_params={"dataset": dataset_entry(params, dataset), "seed": seed,
                    "splits": shares.as_dict()},
    ):
        mlflow.log_metrics({f"manifest.{k}": float(v) for k, v in summary.items()})
        mlflow.log_artifact(str(report_path))
        mlflow.log_artifact(str(rejected_path))
    for _, row in res.rejected.iterrows():
        log.warning("%s: skipped (%s)", Path(spec.root) / row["path"], row["reason"])
    report.raise_for_failure()
    persons.raise_for_failure()
    write_manifest(res.manifest, out, rule)
    print(f"manifest {dataset}: {summary}; {persons.notes[0]}")
    return res.manifest
