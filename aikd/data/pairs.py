"""Verification pairs files: LFW's official View 2 protocol and a generic CSV layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAIRS_COLUMNS = ["path_a", "path_b", "mated", "fold"]


def lfw_image_path(name: str, number: int) -> str:
    """Path of LFW image `number` (1-based) of `name`, relative to the LFW root."""
    return f"images/{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(path: str | Path) -> pd.DataFrame:
    """Parse LFW `pairs.txt` (View 2): a header `folds n`, then per fold n mated, n non-mated.

    Returns columns path_a, path_b (relative to the LFW root), mated (bool), fold (int).
    """
    p = Path(path)
    lines = [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2:
        raise ValueError(f"{p}: first line must be '<folds> <pairs per fold>'")
    folds, per_fold = int(lines[0][0]), int(lines[0][1])
    body = lines[1:]
    if len(body) != folds * 2 * per_fold:
        raise ValueError(
            f"{p}: expected {folds * 2 * per_fold} pair lines for {folds} folds x 2 x "
            f"{per_fold}, found {len(body)}"
        )
    rows = []
    for i, tok in enumerate(body):
        fold = i // (2 * per_fold)
        if len(tok) in (3, 4):  # name n1 n2 (mated) | name1 n1 name2 n2 (non-mated)
            mated = len(tok) == 3
            other = (tok[0], tok[2]) if mated else (tok[2], tok[3])
            rows.append((lfw_image_path(tok[0], int(tok[1])),
                         lfw_image_path(other[0], int(other[1])), mated, fold))
        else:
            raise ValueError(f"{p}: line {i + 2} has {len(tok)} fields, expected 3 or 4")
    return pd.DataFrame(rows, columns=PAIRS_COLUMNS)


def read_pairs_csv(path: str | Path) -> pd.DataFrame:
    """A user's pairs file `path_a,path_b,mated[,fold]` (paths relative to the dataset root)."""
    p = Path(path)
    df = pd.read_csv(p)
    missing = {"path_a", "path_b", "mated"} - set(df.columns)
    if missing:
        raise ValueError(f"{p}: missing columns {sorted(missing)}")
    if "fold" not in df.columns:
        df["fold"] = 0
    df["mated"] = _parse_mated(df["mated"], p)
    return df[PAIRS_COLUMNS]


_TRUE = {"1", "true", "yes", "mated", "genuine"}
_FALSE = {"0", "false", "no", "non-mated", "nonmated", "impostor"}


def _parse_mated(col: pd.Series, source: Path) -> pd.Series:
    """Strictly parse a mated flag: a typo must not silently become True."""
    text = col.astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        lines = (bad[bad].index[:5] + 2).tolist()
        values = col[bad].head(5).tolist()
        raise ValueError(f"{source}: 'mated' must be 1/0 or true/false; lines {lines}: {values}")
    return text.isin(_TRUE)
