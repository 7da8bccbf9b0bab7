"""DVC stage `tune` (frozen by default): Ray Tune sweep of jitter range and learning rate."""

from _common import stage_args

from aikd.tuning import tune_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__)
    tune_stage(params)
