"""``DistillConfig``: every knob of one AI-KD training run, with the measured defaults.

The defaults are chosen for the demo pipeline (LFW + YTF train splits, dlib's 5.6 M-param
ResNet, 2 CPU cores, six runs in ~45 minutes); docs/distillation.md records the
measurements behind each and a full-size GPU profile. A config round-trips through a
plain dict (``to_dict``/``from_dict``), which is what params.yaml, the saved model file
and MLflow see; unknown keys are refused so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

QualityLoss = Literal["l1", "smooth_l1"]
LabelNormKind = Literal["rank", "minmax", "none"]
Precision = Literal["auto", "fp32", "bf16"]
HeadInitKind = Literal["probe", "ridge", "random"]
HeadInputKind = Literal["unit", "raw"]

_TRAINABLE_RE = re.compile(r"^(all|head|last_n_stages:\d+|last_n_tensors:\d+)$")


@dataclass
class DistillConfig:
    """One training run. Defaults: AI-KD with the dlib ResNet inside the CPU budget."""

    # --- model
    backbone: str = "dlib_resnet"
    backbone_weights: str | None = None  # None: load_backbone's default weights
    #: "last_n_stages:N" | "last_n_tensors:N" | "all" | "head" (see model.select_trainable)
    trainable: str = "last_n_stages:3"
    # --- AI-KD
    #: Landmark jitter U[-max_shift, max_shift] per coordinate; 0 disables misalignment.
    max_shift: float = 0.1
    jitter_units: Literal["px", "iod"] = "iod"
    #: Probability that the student's training face is mirrored (data augmentation for
    #: every variant; the teacher's target stays that of the unflipped aligned face).
    hflip: float = 0.0
    #: Jitter of the validation faces; fixed apart from max_shift so that the baseline
    #: (max_shift 0) and AI-KD models are validated under the same misalignment.
    val_max_shift: float = 0.1
    #: Weight of the feature-consistency term; 0 gives plain quality regression.
    w: float = 0.5
    quality_loss: QualityLoss = "l1"
    smooth_l1_beta: float = 0.5
    label_norm: LabelNormKind = "rank"
    #: "probe": fit the quality head on the frozen teacher embeddings of the training images
    #: before fine-tuning (LP-FT, aikd.distill.head_init; docs/recipe.md); "ridge": the head
    #: computes exactly the ridge probe on its input at step 0; "random": the
    #: seeded random init of the official code. The code default stays "random" because
    #: a probe head at the default lr 0.05 collapses (docs/recipe.md, run A); params.yaml
    #: pairs "probe" with lr 3e-4.
    head_init: HeadInitKind = "random"
    #: What the head reads: "unit" the L2-normalised embedding, "raw" the embedding as is
    #: (the official code); see model.QualityHead.
    head_input: HeadInputKind = "unit"
    # --- data
    #: Train on a seeded random subset of this many images (None: all of them); 3500 x 3
    #: epochs is ~400 s on the loaded demo box, ~4 min on idle cores (docs/distillation.md).
    train_subset: int | None = 3500
    epochs: float = 3.0
    batch_size: int = 32
    grad_accum: int = 1
    num_workers: int = 1
    check_images: bool = True  # decode every image once up front, skip and report bad ones
    # --- optimisation (official AI-KD values)
    lr: float = 0.05
    head_momentum: float = 0.9
    head_weight_decay: float = 5e-4
    backbone_momentum: float = 0.1
    backbone_weight_decay: float = 0.0
    warmup_steps: int = 20
    clip_grad_norm: float = 5.0
    # --- stochastic weight averaging
    swa_start: float = 0.5  # fraction of the optimizer steps after which averaging starts
    swa_lr: float = 0.05
    swa_anneal_steps: int = 10
    swa_every: int = 1  # average every k-th optimizer step once SWA has started
    # --- bookkeeping
    seed: int = 0
    channels_last: bool = True
    #: Forward passes under bf16 autocast (fp32 weights, optimizer and loss) or in fp32.
    #: "auto": bf16 on a GPU; on a CPU with bf16 kernels, whichever is faster there, as
    #: timed on one student step at start-up (bf16 is 2.6x fp32 with AMX, 1.5x on an AMD
    #: EPYC without AMX, 0.9x on an Intel Xeon without AMX: aikd.distill.precision). "bf16"
    #: on a CPU without bf16 kernels falls back to fp32.
    precision: Precision = "auto"
    #: Run the student's frozen stem and leading blocks as a folded inference copy
    #: (aikd.distill.fast.FrozenPrefix): the same function, ~3.7x faster in bf16.
    fuse_frozen: bool = True
    #: torch intra-op threads for this run; None: one per core this process may use. On
    #: the idle 2-core demo box two threads train 1.6x faster than one (train_step); one
    #: thread is for a box shared with another job, where two threads' OpenMP barriers
    #: stall whenever the other process holds a core (21.3 vs 52.9 images/s,
    #: docs/distillation.md).
    torch_threads: int | None = None
    checkpoint_every: int = 50  # optimizer steps between accelerate.save_state
    keep_checkpoints: int = 2
    val_every: int = 0  # optimizer steps between validations (0: only at the end)
    val_subset: int | None = 256  # images used for the intermediate validations
    log_every: int = 5
    progress: bool = True
    #: Write per-rank traces (indices seen, weight digest) for the multi-process test.
    trace: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not _TRAINABLE_RE.match(self.trainable):
            raise ValueError(
                f"trainable={self.trainable!r}; expected 'all', 'head', 'last_n_stages:N' "
                "or 'last_n_tensors:N'"
            )
        if self.max_shift < 0 or self.val_max_shift < 0:
            raise ValueError(
                f"max_shift/val_max_shift must be >= 0, got {self.max_shift}/{self.val_max_shift}"
            )
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {self.hflip}")
        if self.jitter_units not in ("px", "iod"):
            raise ValueError(f"jitter_units must be 'px' or 'iod', got {self.jitter_units!r}")
        if not 0.0 <= self.w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {self.w}")
        if self.quality_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"quality_loss must be 'l1' or 'smooth_l1', got {self.quality_loss!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(
                f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.label_norm not in ("rank", "minmax", "none"):
            raise ValueError(
                f"label_norm must be 'rank', 'minmax' or 'none', got {self.label_norm!r}"
            )
        if self.head_init not in ("probe", "ridge", "random"):
            raise ValueError(
                f"head_init must be 'probe', 'ridge' or 'random', got {self.head_init!r}")
        if self.head_input not in ("unit", "raw"):
            raise ValueError(f"head_input must be 'unit' or 'raw', got {self.head_input!r}")
        for name in ("batch_size", "grad_accum", "swa_every", "log_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.swa_start < 1.0:
            raise ValueError(f"swa_start must be in [0, 1), got {self.swa_start}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or None, got {self.train_subset}")
        for name in ("warmup_steps", "checkpoint_every", "val_every", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def baseline(self) -> bool:
        """True for the plain quality-regression model B (no misalignment, no consistency)."""
        return self.max_shift == 0 and self.w == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DistillConfig:
        """Build from a mapping (e.g. params.yaml's ``distill`` section); unknown keys fail."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown distill config keys: {unknown} (known: {sorted(known)})")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, section: str | None = None) -> DistillConfig:
        """Read a YAML file; ``section`` picks a sub-mapping (e.g. ``distill``)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if section is not None:
            data = data.get(section) or {}
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)
