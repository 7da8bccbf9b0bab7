"""DVC stage `report`: pAUC tables, EDC figures, summary and metrics/evaluation.json."""

from _common import stage_args

from aikd.evaluation.report import report_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__)
    report_stage(params)
