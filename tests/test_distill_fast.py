"""The fast student path (aikd.distill.fast): same function, same parameters, same learning.

* the folded frozen prefix computes what the module computes (fp32, float rounding) and
  covers exactly the blocks before the first trainable stage;
* gradients of the trainable tensors are the module's with the prefix in place;
* the dtype-following affine changes no parameter and keeps bf16 activations bf16;
* a short seeded run in bf16 with the prefix (the default) follows the fp32 run's loss
  curve, and neither precision touches the teacher or the saved model's format.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import labelled_lfw_rows

from aikd.distill.config import DistillConfig
from aikd.distill.fast import (
    DtypeAffine2d,
    FrozenPrefix,
    fold_frozen_prefix,
    follow_input_dtype,
    frozen_blocks,
)
from aikd.distill.model import build_models, load_quality_model, to_channels_last
from aikd.distill.precision import (
    BF16_MIN_SPEEDUP,
    choose_precision,
    cpu_has_bf16,
    effective_precision,
    time_student_step,
)
from aikd.distill.train import default_threads, train_distill
from aikd.models import fused as fused_mod
from aikd.models.dlib_resnet import Affine2d

#: First block of each dlib ResNet level after the stem (35, 17, 8, 4, 2 px), from the
#: architecture (3 plain 32-ch blocks, then 1 + 3, 1 + 2, 1 + 2, 1 down/plain blocks).
LEVEL_STARTS = [0, 3, 7, 10, 13]
#: Largest per-step loss difference between the fp32 and the bf16 (+ prefix) tiny runs
#: (losses 0.12-0.42). Measured: 5.3e-3; fp32 with the prefix (a float32-rounding-size
#: change) drifts by 3.2e-3 on the same run, so the bound leaves room for the dynamics,
#: not for a wrong gradient (which moves the curve by ~0.1 within a few steps).
LOSS_ATOL = 0.01

#: The bf16 checks need oneDNN's bf16 kernels (AVX-512 BF16 / AMX or AVX-NE-CONVERT); an
#: AVX2-only CPU refuses them, and training there falls back to fp32 (effective_precision).
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 kernels")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def student():
    _, s = build_models("dlib_resnet", None, "last_n_stages:3", 0)
    return to_channels_last(s).train()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """Four random RGB 'images' in [0, 255], channels-last float NCHW like training input."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 150, 150, 3), generator=g, dtype=torch.uint8)
    return x.float().permute(0, 3, 1, 2)


@pytest.mark.parametrize(("trainable", "expected"), [
    ("last_n_stages:3", LEVEL_STARTS[2]), ("last_n_stages:2", LEVEL_STARTS[3]),
    ("last_n_stages:1", LEVEL_STARTS[4]), ("last_n_stages:5", 0), ("all", 0), ("head", 14),
])
def test_prefix_covers_the_blocks_before_the_first_trainable_stage(trainable, expected):
    _, s = build_models("dlib_resnet", None, trainable, 0)
    assert frozen_blocks(s.backbone) == expected
    assert fold_frozen_prefix(s, torch.float32, True) == expected
    assert (s.prefix is None) == (expected == 0)


@pytest.mark.parametrize("fused", [True, False], ids=["onednn-fused", "plain-ops"])
def test_prefix_computes_the_module_function(student, faces, fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(fused_mod, "_FUSED", None)
    with torch.no_grad():
        ref = student.backbone(faces)
        prefix = FrozenPrefix(student.backbone, 7, torch.float32)
        out = prefix.embed(student.backbone, faces)
    assert out.shape == ref.shape == (4, 128)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 1e-5, rel  # measured 7e-7: folding only reorders float32 arithmetic


@needs_bf16
def test_prefix_bf16_stays_close(student, faces):
    with torch.no_grad():
        ref = student.backbone(faces)
        s = follow_input_dtype(copy.deepcopy(student))
        fold_frozen_prefix(s, torch.bfloat16, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = s(faces)
    cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
    assert float(cos.min()) > 0.999  # measured > 0.99994


def test_prefix_gives_the_module_gradients(student, faces):
    plain = copy.deepcopy(student)
    fast = copy.deepcopy(student)
    assert fold_frozen_prefix(fast, torch.float32, True) == 7
    for model in (plain, fast):
        emb, q = model(faces)
        (emb.pow(2).mean() + q.sum()).backward()
    trainable = [n for n, p in plain.named_parameters() if p.requires_grad]
    assert len(trainable) > 20
    grads_plain = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        g_ref = grads_plain[name].grad
        if name in trainable:
            assert p.grad is not None and g_ref is not None, name
            rel = float((p.grad - g_ref).norm() / g_ref.norm().clamp_min(1e-12))
            assert rel < 1e-4, (name, rel)
        else:
            assert p.grad is None and g_ref is None, name


def test_prefix_is_outside_the_state_dict(student):
    s = copy.deepcopy(student)
    before = {k: v.clone() for k, v in s.state_dict().items()}
    n_params = len(list(s.parameters()))
    fold_frozen_prefix(s, torch.bfloat16, True)
    follow_input_dtype(s)
    assert s.state_dict().keys() == before.keys()
    assert all(torch.equal(s.state_dict()[k], v) for k, v in before.items())
    assert len(list(s.parameters())) == n_params


def test_affine_follows_the_input_dtype(student, faces):
    s = follow_input_dtype(copy.deepcopy(student))
    swapped = [m for m in s.modules() if isinstance(m, Affine2d)]
    assert swapped and all(type(m) is DtypeAffine2d for m in swapped)
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in swapped]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        s(faces)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    # fp32 is untouched: bit-identical to the plain module
    with torch.no_grad():
        assert torch.equal(s(faces)[0], student(faces)[0])


@pytest.fixture(scope="module")
def rows(lfw_root: Path, lfw_reference: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return labelled_lfw_rows(lfw_root, lfw_reference, 48, 12)


def test_bf16_falls_back_to_fp32_only_on_a_cpu_without_bf16() -> None:
    cfg = DistillConfig(precision="bf16")
    assert effective_precision(cfg, has_bf16=True, cuda=False).precision == "bf16"
    assert effective_precision(cfg, has_bf16=False, cuda=False).precision == "fp32"
    fp32 = DistillConfig(precision="fp32")
    assert effective_precision(fp32, has_bf16=True, cuda=False).precision == "fp32"
    # nothing else changes
    fell = effective_precision(cfg, has_bf16=False, cuda=False)
    assert {**fell.to_dict(), "precision": "bf16"} == cfg.to_dict()


def _timer(fp32_s: float, bf16_s: float, calls: list[str] | None = None):
    def timer(cfg: DistillConfig, precision: str) -> float:
        if calls is not None:
            calls.append(precision)
        return {"fp32": fp32_s, "bf16": bf16_s}[precision]
    return timer


def test_auto_precision_is_bf16_only_where_the_timed_step_is_clearly_faster() -> None:
    """auto: bf16 on a GPU; on a CPU with bf16 kernels bf16 only when its timed step beats
    fp32 by the margin (AMX 2.6x, the EPYC 1.5x: bf16; the Xeon without AMX 0.9x or a
    near tie: fp32); fp32 without bf16 kernels, and no timing where nothing is to choose."""
    auto = DistillConfig(precision="auto")
    assert DistillConfig().precision == "auto"
    for fp32_s, bf16_s, want in ((2.6, 1.0, "bf16"), (1.5, 1.0, "bf16"), (0.9, 1.0, "fp32"),
                                 (1.1, 1.0, "fp32"), (BF16_MIN_SPEEDUP, 1.0, "bf16")):
        choice = choose_precision(auto, has_bf16=True, cuda=False,
                                  timer=_timer(fp32_s, bf16_s))
        assert choice.precision == want, (fp32_s, bf16_s)
        assert choice.bf16_speedup == pytest.approx(fp32_s / bf16_s)
    calls: list[str] = []
    assert choose_precision(auto, has_bf16=False, cuda=False,
                            timer=_timer(3, 1, calls)).precision == "fp32"
    assert choose_precision(auto, has_bf16=True, cuda=True,
                            timer=_timer(1, 3, calls)).precision == "bf16"
    fp32, bf16 = DistillConfig(precision="fp32"), DistillConfig(precision="bf16")
    assert choose_precision(fp32, has_bf16=True, cuda=True, timer=_timer(3, 1, calls)
                            ).precision == "fp32"
    assert choose_precision(bf16, has_bf16=True, cuda=False, timer=_timer(1, 3, calls)
                            ).precision == "bf16"
    assert calls == []
    with pytest.raises(ValueError, match="precision"):
        DistillConfig(precision="fp16")


@needs_bf16
def test_the_precision_probe_times_a_real_step_without_touching_random_state() -> None:
    """The probe builds its own student: the global generator (which seeds the run's
    weights and batches) is where it was, and both precisions give a positive time."""
    cfg = DistillConfig(batch_size=2)
    before = torch.random.get_rng_state()
    times = {p: time_student_step(cfg, p, warmup=1, steps=1) for p in ("fp32", "bf16")}
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(0 < t < 60 for t in times.values()), times


def test_default_threads_share_the_cores_among_launched_processes(monkeypatch) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))
    assert default_threads() == 1


@needs_bf16
def test_bf16_run_follows_the_fp32_loss_curve(rows, tmp_path):
    """The default (bf16 + prefix) and fp32 without prefix, same seed and batches: the
    per-step losses agree within LOSS_ATOL and the runs end in nearby weights. lr 0.01:
    with the default 0.05 on batches of 8 random labels the L1 head's momentum makes
    the run chaotic (fp32 vs bf16 part at step 6: 0.20 vs 0.37; both precisions then
    settle at the same level), which would test the dynamics, not the arithmetic."""
    train, val = rows
    tiny = dict(trainable="last_n_stages:3", train_subset=None, epochs=2.0, batch_size=8,
                num_workers=0, warmup_steps=1, checkpoint_every=0, swa_start=0.5,
                progress=False, check_images=False, lr=0.01)
    results = {}
    for name, extra in (("fp32", dict(precision="fp32", fuse_frozen=False)),
                        ("bf16", dict(precision="bf16", fuse_frozen=True))):
        results[name] = train_distill(DistillConfig(**tiny, **extra), train, val,
                                      tmp_path / name)
    a, b = results["fp32"], results["bf16"]
    assert a.steps == b.steps == 12
    la, lb = a.history["loss"].to_numpy(), b.history["loss"].to_numpy()
    assert np.isfinite(la).all() and np.isfinite(lb).all()
    assert np.abs(la - lb).max() < LOSS_ATOL, np.abs(la - lb).max()
    assert a.teacher_digest == b.teacher_digest
    # bf16 trains: the losses differ from fp32's (else the switch did nothing) ...
    assert np.abs(la - lb).max() > 0
    # ... and the saved models load as plain fp32 quality models with close weights
    ma, mb = load_quality_model(a.model_path), load_quality_model(b.model_path)
    wa = torch.cat([p.flatten() for p in ma.head.parameters()])
    wb = torch.cat([p.flatten() for p in mb.head.parameters()])
    assert all(p.dtype == torch.float32 for p in mb.parameters())
    assert float((wa - wb).norm() / wa.norm()) < 0.05
