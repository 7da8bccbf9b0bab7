"""Names shared by the quality tables, the per-cell maths and the report tables.

Kept apart from the maths and the tables so that the quality stage, which only needs to
know which columns of its table are methods, depends on nothing else of the evaluation.
"""

from __future__ import annotations

import pandas as pd

from aikd.naming import split_run_name, split_seeded_name

__all__ = ["CONTEXT_VARIANT", "LABEL_VARIANTS", "method_columns", "split_column", "split_method"]

# The alignment the models were trained on (every other detector is "misaligned") is
# params ``landmarks.training_detector``, passed to the tables, summary and report.

#: Variant of the rows that are no trained model: no quality, random quality, baselines.
CONTEXT_VARIANT = "-"
#: Variants compared in the tables: B (base alignment), C (consistency only) and T
#: (alignment-invariant, AI-KD).
LABEL_VARIANTS = ("B", "C", "T")


def method_columns(table: pd.DataFrame) -> list[str]:
    """The quality-method columns of a quality table (all but ``path`` and ``status``)."""
    return [c for c in table.columns if c not in ("path", "status")]


def split_method(column: str) -> tuple[str, str]:
    """``sddfiqa-T`` -> (sddfiqa, T); an anchor like ``flip`` -> (flip, -)."""
    try:
        return split_run_name(column, variants=LABEL_VARIANTS)
    except ValueError:
        return column, CONTEXT_VARIANT


def split_column(column: str) -> tuple[str, str, int | None]:
    """``sddfiqa-T@s1`` -> (sddfiqa, T, 1): one training seed's model; a column without a
    seed (``serfiq-B`` applied directly, ``flip``, a table written before seeds) -> seed
    None, as ``split_method`` reads it."""
    name, seed = split_seeded_name(column)
    method, variant = split_method(name)
    return method, variant, seed
