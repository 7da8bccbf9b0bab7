"""DVC stage `pairs@<benchmark>`: the benchmark's verification pairs, written once."""

from _common import stage_args

from aikd.evaluation.stage import pairs_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "benchmark")
    pairs_stage(params, args.benchmark)
