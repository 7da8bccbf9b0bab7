"""DVC stage `manifest@<dataset>`: list a data set's images with identity, split and size."""

from _common import stage_args

from aikd.data.stage import manifest_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "dataset")
    manifest_stage(params, args.dataset)
