"""Ray Tune sweeps over the jitter range p, the learning rate (and optionally the loss
weight w) of AI-KD training, tracked in MLflow (``aikd tune``, docs/tuning.md).

The paper fixes p = 3 px and lr = 0.05 for VGGFace2 crops and an iResNet; this project
trains a dlib ResNet on LFW/YTF with the jitter in inter-ocular units, so both are
searched. Each trial is one ordinary ``train_distill`` run on a seeded training subset;
its objective is the validation pAUC (lower is better) of the student's quality on
held-out *validation* identities aligned by the misaligning detectors.

Modules, by concern: :mod:`~aikd.tuning.settings` (the ``tune:`` section, the search
space, a trial's DistillConfig), :mod:`~aikd.tuning.data` (the distill stage's rows,
subsetted), :mod:`~aikd.tuning.trial` (what one Ray trial runs, the objective),
:mod:`~aikd.tuning.runner` (Ray, the Tuner, ASHA), :mod:`~aikd.tuning.results`
(trials.csv, best.yaml, sweep.png, MLflow runs), :mod:`~aikd.tuning.stage`
(``tune_stage``) and :mod:`~aikd.tuning.command` (``aikd tune``).

Import names from their module (``from aikd.tuning.stage import tune_stage``); this
package file imports nothing, so ``import aikd.tuning`` loads neither Ray, torch nor
MLflow and ``aikd tune --help`` stays fast.
"""
