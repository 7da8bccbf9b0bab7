"""DVC stage `evaluate`: pAUC, EDC curves and B-vs-T differences for every cell."""

from _common import stage_args

from aikd.evaluation.stage import evaluate_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__)
    evaluate_stage(params)
