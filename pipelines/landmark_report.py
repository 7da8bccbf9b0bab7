"""DVC stage `landmark_report`: how far each detector lands from the reference points, and
from the training alignment on validation images (the suggested jitter range p)."""

from _common import stage_args

from aikd.landmarks.report import add_training_disagreement
from aikd.landmarks.stage import landmark_report_stage

if __name__ == "__main__":
    _, params = stage_args(__doc__)
    landmark_report_stage(params)
    add_training_disagreement(params)
