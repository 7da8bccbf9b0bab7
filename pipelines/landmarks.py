"""DVC stage `landmarks@<dataset>-<detector>`: 5 landmarks per image (resumable)."""

from _common import stage_args

from aikd.landmarks.stage import landmarks_stage

if __name__ == "__main__":
    args, params = stage_args(__doc__, "dataset", "detector")
    landmarks_stage(params, args.dataset, args.detector)
