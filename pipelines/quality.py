"""DVC stage `quality@<dataset>-<detector>`: every quality method on the evaluation faces."""

from _common import stage_args

from aikd.quality.stage import quality_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "dataset", "detector")
    quality_stage(params, args.dataset, args.detector)
