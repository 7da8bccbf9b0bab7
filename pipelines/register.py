"""DVC stage `register@<run>`: log a distilled model to the MLflow registry, move aliases."""

from _common import stage_args

from aikd.registry.stage import register_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "run")
    register_stage(params, args.run)
