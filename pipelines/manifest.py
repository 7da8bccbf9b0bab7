"""DVC stage `manifest@<dataset>`: list a data set's images with identity, person, split
(one per person over all data sets, docs/splits.md) and size."""

from _common import stage_args

from aikd.data.stage import manifest_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "dataset")
    manifest_stage(params, args.dataset)
