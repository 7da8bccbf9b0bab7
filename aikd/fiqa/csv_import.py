"""Import quality labels produced by any other FIQA method (DifFIQA, MagFace, ...) as CSV.

Other tools write paths their own way (absolute, relative to some other root, or just
``Name/Name_0001.jpg``), so rows are matched to the manifest exactly when possible and
otherwise by the longest path suffix on whole path components. Nothing is silently lost:
rows that match no manifest image, or several, come back in ``unmatched`` with a reason,
and malformed input (duplicates, non-numeric or non-finite quality) raises ValueError
naming the file, the CSV line numbers and the offending values.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

__all__ = ["import_label_csv"]

_MAX_LISTED = 10


def _norm(path: str) -> str:
    """Compare paths as '/'-separated components, ignoring './' and surrounding spaces."""
    p = path.strip().replace("\\", "/")
    parts = [c for c in p.split("/") if c not in ("", ".")]
    return "/".join(parts)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _suffix_index(manifest_paths: list[str]) -> dict[str, set[str]]:
    """Every whole-component suffix of every manifest path -> the manifest paths ending so."""
    index: dict[str, set[str]] = defaultdict(set)
    for mp in manifest_paths:
        parts = _norm(mp).split("/")
        for i in range(len(parts)):
            index["/".join(parts[i:])].add(mp)
    return index


def _match(path: str, exact: set[str], index: dict[str, set[str]]) -> tuple[str | None, str]:
    """(manifest path or None, reason if None) for one CSV path."""
    if path in exact:
        return path, ""
    parts = _norm(path).split("/")
    for i in range(len(parts)):  # longest suffix first
        hits = index.get("/".join(parts[i:]))
        if hits:
            if len(hits) == 1:
                return next(iter(hits)), ""
            return None, f"ambiguous: suffix {'/'.join(parts[i:])!r} matches {len(hits)} images"
    return None, "no manifest path matches"


def import_label_csv(
    csv_path: str | Path, manifest: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``path,quality`` rows and attach them to manifest paths.

    Returns ``(labels, unmatched)``: ``labels`` has columns ``path`` (the manifest's path)
    and ``quality`` (float), in CSV order; ``unmatched`` has ``line``, ``path``, ``quality``
    and ``reason`` for rows that match no (or more than one) manifest image.
    Raises ValueError for missing columns, duplicate paths (also two spellings of the same
    image) and quality values that are not finite numbers.
    """
    src = Path(csv_path)
    if "path" not in manifest.columns:
        raise ValueError("manifest has no 'path' column")
    if not src.is_file():
        raise FileNotFoundError(f"label CSV not found: {src}")
    lines, paths, texts = _read_rows(src)

    bad: list[str] = []
    values: list[float] = []
    for line, text in zip(lines, texts, strict=True):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            bad.append(f"line {line}: {text!r}")
        values.append(v)
    if bad:
        raise ValueError(
            f"{src}: quality is not a finite number on {len(bad)} row(s): {_listing(bad)}"
        )

    _raise_duplicates(src, lines, [_norm(p) for p in paths], "duplicate path")

    manifest_paths = list(dict.fromkeys(manifest["path"].astype(str)))
    exact = set(manifest_paths)
    index = _suffix_index(manifest_paths)
    matched: list[tuple[int, str, float]] = []
    unmatched: list[tuple[int, str, float, str]] = []
    for line, path, v in zip(lines, paths, values, strict=True):
        hit, reason = _match(path, exact, index)
        if hit is None:
            unmatched.append((line, path, v, reason))
        else:
            matched.append((line, hit, v))

    _raise_duplicates(
        src,
        [m[0] for m in matched],
        [m[1] for m in matched],
        "rows resolve to the same manifest image",
    )
    labels = pd.DataFrame(
        {"path": [m[1] for m in matched], "quality": [m[2] for m in matched]}
    ).astype({"path": object, "quality": float})
    unmatched_df = pd.DataFrame(unmatched, columns=["line", "path", "quality", "reason"])
    return labels, unmatched_df


def _read_rows(src: Path) -> tuple[list[int], list[str], list[str]]:
    """(line numbers, paths, quality texts) of the data rows; blank lines are skipped but
    still counted, so reported line numbers are the ones an editor shows."""
    with src.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, skipinitialspace=True)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{src}: file is empty (expected a 'path,quality' header)")
        cols = [c.strip() for c in header]
        missing = [c for c in ("path", "quality") if c not in cols]
        if missing:
            raise ValueError(
                f"{src}: missing column(s) {missing}; found {cols} "
                "(expected a header 'path,quality')"
            )
        i_path, i_quality = cols.index("path"), cols.index("quality")
        lines: list[int] = []
        paths: list[str] = []
        texts: list[str] = []
        for rec in reader:
            if not any(field.strip() for field in rec):
                continue
            if len(rec) != len(cols):
                raise ValueError(
                    f"{src}: line {reader.line_num} has {len(rec)} field(s), header has "
                    f"{len(cols)}: {rec!r}"
                )
            lines.append(reader.line_num)
            paths.append(rec[i_path].strip())
            texts.append(rec[i_quality].strip())
    return lines, paths, texts


def _raise_duplicates(src: Path, lines: list[int], keys: list[str], what: str) -> None:
    """Raise ValueError listing every key that occurs more than once, with its lines."""
    where: dict[str, list[int]] = defaultdict(list)
    for line, key in zip(lines, keys, strict=True):
        where[key].append(line)
    dups = [f"{k!r} on lines {', '.join(map(str, v))}" for k, v in where.items() if len(v) > 1]
    if dups:
        raise ValueError(f"{src}: {what}: {_listing(dups)}")
