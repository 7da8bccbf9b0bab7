"""DVC stage `distill@<run>`: train one AI-KD model (T) or its no-AI-KD baseline (B)."""

from _common import stage_args

from aikd.distill.stage import distill_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "run")
    distill_stage(params, args.run)
