"""Evaluation of face image quality: EDC curves, normalised pAUC and their uncertainty."""

from aikd.evaluation.edc import (
    DEFAULT_DISCARD_RATES,
    UndefinedPAUCWarning,
    edc_curve,
    pauc,
    pauc_bootstrap,
    random_quality_pauc,
)

__all__ = [
    "DEFAULT_DISCARD_RATES",
    "UndefinedPAUCWarning",
    "edc_curve",
    "pauc",
    "pauc_bootstrap",
    "random_quality_pauc",
]

from aikd.evaluation.benchmarks import (  # noqa: E402
    PairScores,
    lfw_pairs,
    pair_scores,
    user_pairs,
    ytf_pairs,
)
from aikd.evaluation.report import (  # noqa: E402
    context_rows,
    evaluate_cell,
    no_quality_curve,
    paired_pauc_difference,
    write_report,
)
from aikd.evaluation.tables import (  # noqa: E402
    bt_pairs,
    combined_misaligned_table,
    fnmr0_table,
    pauc_table,
    significant_differences,
    to_markdown,
    win_share,
)

__all__ += [
    "PairScores",
    "bt_pairs",
    "combined_misaligned_table",
    "context_rows",
    "evaluate_cell",
    "fnmr0_table",
    "lfw_pairs",
    "no_quality_curve",
    "pair_scores",
    "paired_pauc_difference",
    "pauc_table",
    "significant_differences",
    "to_markdown",
    "user_pairs",
    "win_share",
    "write_report",
    "ytf_pairs",
]
