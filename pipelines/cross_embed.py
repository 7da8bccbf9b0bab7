"""DVC stage `cross_embed@<dataset>-<detector>-<backbone>`: a cross-model FR network's
embeddings of the validation and test faces (aikd.cross_model)."""

from _common import stage_args

from aikd.cross_model.stage import cross_embed_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "dataset", "detector", "backbone")
    cross_embed_stage(params, args.dataset, args.detector, args.backbone)
