"""Which precision a training run computes in: fp32 or bf16 autocast, chosen per machine.

bf16 is not faster on every CPU that has bf16 kernels. Measured with
``benchmarks/train_step.py``: 2.6x fp32 with AMX tiles (Intel Xeon), 1.5x on an AMD EPYC
with AVX-512 BF16 and no AMX, and 10 % *slower* than fp32 on an Intel Xeon with AVX-512
BF16 and no AMX. No CPU flag separates the last two, so ``precision: auto`` times one
student step in each precision at start-up (a few seconds) and takes bf16 only where it
is clearly faster. The choice is recorded in ``metrics.json`` and kept in the run's
checkpoint folder, so a resumed run continues in the precision it started with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aikd.distill.config import DistillConfig
from aikd.distill.fast import fold_frozen_prefix, follow_input_dtype
from aikd.distill.loss import AIKDLoss
from aikd.distill.model import build_models, to_channels_last

log = logging.getLogger(__name__)

#: bf16 must be at least this much faster than fp32 per step for ``auto`` to take it: a
#: margin that timing noise between two runs on one machine does not cross (the measured
#: ratios are 0.9, 1.5 and 2.6), so a machine keeps one choice.
BF16_MIN_SPEEDUP = 1.15
#: The file in a run's checkpoint folder that keeps the precision it started with.
CHOICE_FILE = "precision.json"


def cpu_has_bf16() -> bool:
    """oneDNN has bf16 convolution kernels on this CPU (AVX-512 BF16 / AMX, AVX-NE-CONVERT);
    on an AVX2-only CPU its fused bf16 convolutions refuse to run."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_amx() -> bool:
    """This CPU has AMX tiles (reported by the benchmarks beside the measured speeds)."""
    return bool(torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why (``reason``); the probe's seconds per student step
    when ``auto`` timed them on this CPU."""

    precision: str
    reason: str
    fp32_s: float | None = None
    bf16_s: float | None = None

    @property
    def bf16_speedup(self) -> float | None:
        if self.fp32_s is None or self.bf16_s is None:
            return None
        return self.fp32_s / self.bf16_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "bf16_speedup": self.bf16_speedup}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionChoice:
        return cls(d["precision"], d["reason"], d.get("fp32_s"), d.get("bf16_s"))


#: ``timer(cfg, precision) -> seconds per student step``; injectable for tests.
StepTimer = Callable[[DistillConfig, str], float]


def time_student_step(cfg: DistillConfig, precision: str, *, warmup: int = 2,
                      steps: int = 3) -> float:
    """Median seconds of one forward + loss + backward of a fresh student of ``cfg`` (its
    backbone, trainable depth, batch size, channels-last and folded prefix) in
    ``precision``, on random faces. Touches no global random state and no run's model."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = build_models(cfg.backbone, cfg.backbone_weights, cfg.trainable, cfg.seed,
                               unit_input=cfg.head_input == "unit")[1]
        if cfg.channels_last:
            to_channels_last(student)
        if precision == "bf16":
            follow_input_dtype(student)
        if cfg.fuse_frozen:
            fold_frozen_prefix(student, dtype, cfg.channels_last)
        h, w = student.backbone.input_size
        x = torch.rand(cfg.batch_size, 3, h, w) * 255.0
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        e = torch.nn.functional.normalize(torch.randn(cfg.batch_size,
                                                      student.backbone.embedding_dim), dim=1)
        q = torch.rand(cfg.batch_size)
        loss_fn = AIKDLoss(cfg.w, cfg.quality_loss, cfg.smooth_l1_beta)
        student.train()
        times = []
        for i in range(warmup + steps):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                e_hat, q_hat = student(x)
            loss_fn(e_hat, q_hat, q, e).total.backward()
            student.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def choose_precision(cfg: DistillConfig, *, has_bf16: bool | None = None,
                     cuda: bool | None = None, timer: StepTimer | None = None,
                     ) -> PrecisionChoice:
    """The precision ``cfg`` trains in here. ``fp32`` stays; ``bf16`` stays on a GPU and
    on a CPU with bf16 kernels, else falls back to fp32 with a warning; ``auto`` is bf16
    on a GPU and, on a CPU with bf16 kernels, bf16 only if the timed student step is at
    least :data:`BF16_MIN_SPEEDUP` times faster in it than in fp32."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cfg.precision == "fp32":
        return PrecisionChoice("fp32", "asked")
    if cuda:
        return PrecisionChoice("bf16", "GPU")
    if has_bf16 is None:
        has_bf16 = cpu_has_bf16()
    if not has_bf16:
        if cfg.precision == "bf16":
            log.warning("distill: this CPU has no bf16 kernels (oneDNN); training in fp32 "
                        "instead of precision: bf16")
        return PrecisionChoice("fp32", "no bf16 kernels on this CPU")
    if cfg.precision == "bf16":
        return PrecisionChoice("bf16", "asked")
    timer = timer or time_student_step
    fp32_s, bf16_s = timer(cfg, "fp32"), timer(cfg, "bf16")
    chosen = "bf16" if fp32_s >= BF16_MIN_SPEEDUP * bf16_s else "fp32"
    choice = PrecisionChoice(chosen, f"timed: bf16 {fp32_s / bf16_s:.2f}x fp32 per step "
                             f"(bf16 from {BF16_MIN_SPEEDUP}x)", fp32_s, bf16_s)
    log.info("distill: precision auto -> %s (%s)", chosen, choice.reason)
    return choice


def effective_precision(cfg: DistillConfig, **kwargs: Any) -> DistillConfig:
    """``cfg`` with the precision it runs in here (:func:`choose_precision`)."""
    return dataclasses.replace(cfg, precision=choose_precision(cfg, **kwargs).precision)


def kept_choice(ckpt_dir: Path) -> PrecisionChoice | None:
    """The precision a run in ``ckpt_dir`` started with, if it recorded one."""
    path = ckpt_dir / CHOICE_FILE
    if not path.exists():
        return None
    return PrecisionChoice.from_dict(json.loads(path.read_text()))


def keep_choice(ckpt_dir: Path, choice: PrecisionChoice) -> None:
    (ckpt_dir / CHOICE_FILE).write_text(json.dumps(choice.to_dict(), indent=2) + "\n")
