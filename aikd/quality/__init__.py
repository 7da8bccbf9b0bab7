"""Quality of the evaluation images under one detector's alignment, for every method.

:mod:`aikd.quality.scorers` holds the scorers (the distilled models T and baselines B,
SER-FIQ applied directly, the training-free anchors), :mod:`aikd.quality.table` runs them
on the same aligned crops into one resumable table, and :mod:`aikd.quality.stage` is the
DVC stage ``quality@<dataset>-<detector>``.
"""

from __future__ import annotations

from aikd.quality.scorers import ColumnScorer, Scorer, SharedTrunkScorer, shared_blocks
from aikd.quality.table import score_faces

__all__ = ["ColumnScorer", "Scorer", "SharedTrunkScorer", "score_faces", "shared_blocks"]
