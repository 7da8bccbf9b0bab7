"""DVC stage `embed@<dataset>-<detector>`: FR embeddings of the faces a detector aligned."""

from _common import stage_args

from aikd.embed.stage import embed_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "dataset", "detector")
    embed_stage(params, args.dataset, args.detector)
