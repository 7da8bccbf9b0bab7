"""DVC stage `labels@<method>`: pseudo quality labels on reference-aligned training images."""

from _common import stage_args

from aikd.fiqa.stage import labels_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "method")
    labels_stage(params, args.method)
