"""DVC stage `alignment`: FNMR at fixed FMR of the FR network under each detector's alignment,
on validation people (reports/landmarks/alignment_fnmr.csv and .md)."""

from _common import stage_args

from aikd.evaluation.alignment import alignment_stage

if __name__ == "__main__":
    _, params = stage_args(__doc__)
    alignment_stage(params)
