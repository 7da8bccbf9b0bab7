"""DVC stage `landmark_report`: how far each detector lands from the reference points."""

from _common import stage_args

from aikd.landmarks.stage import landmark_report_stage

if __name__ == "__main__":
    _, params = stage_args(__doc__)
    landmark_report_stage(params)
