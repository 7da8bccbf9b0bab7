"""What ``aikd score`` reads: the image list of a folder or manifest, and each image.

Reading never raises per image: a missing or corrupt file becomes its ``ImageReadError``,
which the scorer turns into an ``unreadable`` row. A wrong *input* as a whole (no such
folder, no images in it, a manifest without ``path``) is a `UsageError`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aikd.data.images import ImageReadError, read_rgb
from aikd.errors import UsageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jp2"}
)


def list_images(source: str | Path) -> pd.DataFrame:
    """``root, path`` rows of the images to score.

    ``source`` is a directory (searched recursively for common image extensions, sorted)
    or a manifest (``.parquet`` / ``.csv``) with a ``path`` column and optionally ``root``.
    A relative ``root`` is taken from the working directory, like the project's manifests;
    without ``root``, relative paths are relative to the manifest's own folder.
    """
    src = Path(source)
    if src.is_dir():
        files = sorted(
            p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise UsageError(
                f"{src}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, "
                "recursively); pass a folder that holds photos"
            )
        return pd.DataFrame(
            {"root": str(src), "path": [p.relative_to(src).as_posix() for p in files]}
        )
    if not src.is_file():
        raise UsageError(f"{src}: no such image folder or manifest; pass a folder of photos "
                         "or a .parquet/.csv manifest with a 'path' column")
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(src)
    elif suffix == ".csv":
        table = pd.read_csv(src)
    else:
        raise UsageError(f"{src}: a manifest must be .parquet or .csv, got "
                         f"{suffix or 'no suffix'}; or pass a folder of photos")
    if "path" not in table.columns:
        raise UsageError(f"{src}: manifest has no 'path' column (columns: "
                         f"{list(table.columns)}); add one with the image paths")
    if len(table) == 0:
        raise UsageError(f"{src}: manifest is empty; list at least one image in it")
    root = table["root"].astype(str) if "root" in table.columns else str(src.parent)
    return pd.DataFrame({"root": root, "path": table["path"].astype(str)}).reset_index(drop=True)


def decode_image_bytes(data: bytes, label: str) -> np.ndarray:
    """Decode encoded image bytes (a request's ``image`` column) with ``read_rgb``.

    Going through a temporary file keeps ``read_rgb`` the one place that decides how a
    file becomes RGB (grey expansion, alpha, 16-bit), so bytes and paths score alike.
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise ImageReadError(label, "image bytes are empty")
    with tempfile.NamedTemporaryFile(suffix=".img") as tmp:
        tmp.write(bytes(data))
        tmp.flush()
        try:
            return read_rgb(tmp.name)
        except ImageReadError as exc:
            raise ImageReadError(label, exc.problem) from None


def read_image(root: str | None, path: str, data: Any) -> np.ndarray | ImageReadError:
    """One image or the error that explains why it cannot be used (never raises)."""
    file = Path(path) if root is None else Path(root) / path
    try:
        if data is not None and not (isinstance(data, float) and math.isnan(data)):
            return decode_image_bytes(data, f"{path} (image bytes)")
        return read_rgb(file)
    except ImageReadError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - e.g. an OS error on a network share
        return ImageReadError(file, f"{type(exc).__name__}: {exc}")
