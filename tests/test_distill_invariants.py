"""Invariants of AI-KD training that no speed-up may break (issue 14).

* The teacher is the pretrained network before and after training, bit for bit (every
  parameter and buffer), and the run refuses to finish if anything changed it.
* The landmark jitter is fresh per epoch, fixed per (seed, epoch, index) whatever the
  order of access or the number of DataLoader workers, and never applied in place.

Resuming a killed run is checked in tests/test_distill.py
(``test_resume_reproduces_uninterrupted_run``) and with two processes in
tests/test_distributed.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import labelled_lfw_rows
from torch.utils.data import DataLoader

import aikd.distill.prepare as prepare
from aikd.align import align_to_template
from aikd.data.images import read_rgb
from aikd.distill.data import DistillDataset, EpochStreamSampler, collate, jitter_seed
from aikd.distill.loss import AIKDLoss
from aikd.distill.model import state_digest
from aikd.distill.train import train_distill
from aikd.landmarks.base import POINT_COLUMNS
from aikd.models.registry import load_backbone
from aikd.transforms import jitter_landmarks, jitter_pipeline

#: 12 images / batch 6: two optimizer steps, the teacher embedding x online every step.
TINY = dict(
    trainable="last_n_stages:1", train_subset=None, epochs=1.0, batch_size=6, num_workers=0,
    warmup_steps=1, checkpoint_every=0, swa_start=0.5, val_every=0, progress=False,
    check_images=False, w=0.5, max_shift=0.1, precision="fp32",
)


@pytest.fixture(scope="module")
def rows(lfw_root, lfw_reference) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(12 train rows, 8 val rows of identities with >= 2 images), seeded random labels."""
    return labelled_lfw_rows(lfw_root, lfw_reference, 12, 8)


@pytest.fixture
def captured_teacher(monkeypatch) -> list:
    """The teacher object a run builds (prepare's build_models, wrapped)."""
    built: list = []
    build = prepare.build_models

    def capture(*args, **kwargs):
        teacher, student = build(*args, **kwargs)
        built.append(teacher)
        return teacher, student

    monkeypatch.setattr(prepare, "build_models", capture)
    return built


# --------------------------------------------------------------------------- teacher


def test_teacher_weights_unchanged_after_training(rows, tmp_path, captured_teacher):
    """The very teacher object that embedded x every step has, after the run, the
    parameters and buffers of a freshly loaded pretrained backbone (sha256 over all)."""
    pretrained = state_digest(load_backbone("dlib_resnet"))
    result = train_distill(TINY, *rows, tmp_path / "run")
    assert result.completed and result.steps == 2
    (teacher,) = captured_teacher
    assert result.teacher_digest == pretrained  # before the first step
    assert state_digest(teacher.backbone) == pretrained  # after the last
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_a_changed_teacher_stops_the_run(rows, tmp_path, captured_teacher, monkeypatch):
    """The run's own check (digest before vs after) catches an in-place change of one
    teacher buffer during training and refuses to write a model."""

    class TamperingLoss(AIKDLoss):
        def forward(self, *args, **kwargs):
            buffers = dict(captured_teacher[0].backbone.named_buffers())
            with torch.no_grad():
                next(iter(buffers.values())).add_(1e-3)
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(prepare, "AIKDLoss", TamperingLoss)
    with pytest.raises(RuntimeError, match="teacher's weights or buffers changed"):
        train_distill(TINY, *rows, tmp_path / "run", stop_after=1)
    assert not (tmp_path / "run" / "model.pt").exists()


# --------------------------------------------------------------------------- jitter


@pytest.fixture(scope="module")
def train_rows(rows) -> pd.DataFrame:
    return rows[0].head(8)


@pytest.mark.parametrize(("units", "max_shift"), [("iod", 0.1), ("px", 3.0)])
def test_jitter_fresh_per_epoch_fixed_per_epoch_and_index(train_rows, units, max_shift):
    """For every image: epochs 0 and 1 jitter its landmarks differently; the same
    (epoch, index) gives the same landmarks, whatever was drawn in between and in which
    order; offsets are within max_shift and differ between images of one epoch; another
    seed gives other offsets; the student's input x̂ is the face aligned from exactly
    these landmarks."""
    ds = DistillDataset(train_rows, template="dlib150", max_shift=max_shift, units=units,
                        seed=3)
    other_seed = DistillDataset(train_rows, template="dlib150", max_shift=max_shift,
                                units=units, seed=4)
    images = [read_rgb(f) for f in ds.files]
    n = len(ds)
    first = {(e, i): ds.jittered_landmarks(images[i], e, i) for e in (0, 1) for i in range(n)}
    again = {(e, i): ds.jittered_landmarks(images[i], e, i)  # reverse order, after others
             for e in (1, 0) for i in reversed(range(n))}
    for i in range(n):
        ref = ds.landmarks[i]
        scale = max_shift * (np.linalg.norm(ref[1] - ref[0]) if units == "iod" else 1.0)
        for e in (0, 1):
            np.testing.assert_array_equal(first[e, i], again[e, i])
            shift = np.abs(first[e, i] - ref)
            assert 0 < shift.max() <= scale + 1e-9
        assert not np.allclose(first[0, i], first[1, i])  # fresh per epoch
        assert not np.allclose(first[0, i] - ref,
                               other_seed.jittered_landmarks(images[i], 0, i) - ref)
    offsets = np.stack([first[0, i] - ds.landmarks[i] for i in range(n)])
    assert len({o.tobytes() for o in offsets}) == n  # not one offset shared by a batch
    for key in [(0, 2), (1, 2), (5, 7)]:
        e, i = key
        x_hat, _ = align_to_template(images[i], ds.jittered_landmarks(images[i], e, i),
                                     "dlib150")
        assert torch.equal(ds[key]["x_hat"], torch.from_numpy(x_hat))
    seeds = {jitter_seed(3, e, i) for e in range(20) for i in range(200)}
    assert len(seeds) == 20 * 200  # no two (epoch, index) share a draw


def test_jitter_never_in_place(train_rows):
    """Getting items and drawing jitter leave the source landmarks (and the rows they came
    from) untouched; the landmark array is read-only, every jittered array is a fresh one
    and changing it changes nothing later; jitter_landmarks does not move its input."""
    rows_before = train_rows.copy(deep=True)
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.1, seed=3)
    before = ds.landmarks.copy()
    assert not ds.landmarks.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ds.landmarks[0] += 1.0
    image = read_rgb(ds.files[0])
    lm = ds.jittered_landmarks(image, 0, 0)
    assert not np.shares_memory(lm, ds.landmarks)
    expected = lm.copy()
    lm += 100.0  # a caller scribbling on its copy
    np.testing.assert_array_equal(ds.jittered_landmarks(image, 0, 0), expected)
    for epoch in range(4):
        for i in range(len(ds)):
            ds[(epoch, i)]
    np.testing.assert_array_equal(ds.landmarks, before)
    pd.testing.assert_frame_equal(train_rows, rows_before)
    np.testing.assert_array_equal(train_rows[POINT_COLUMNS].to_numpy().reshape(-1, 5, 2),
                                  before)
    source = before[0].copy()
    moved = jitter_landmarks(jitter_pipeline(0.1, "iod", seed=1), image, source)
    np.testing.assert_array_equal(source, before[0])
    assert not np.shares_memory(moved, source)


def test_jitter_independent_of_dataloader_workers(train_rows):
    """The student inputs of a whole run's stream are the same with 0 and 2 DataLoader
    workers (the jitter is seeded per sample, not per worker)."""
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.1, seed=3)
    batches = {}
    for workers in (0, 2):
        sampler = EpochStreamSampler(len(ds), batch_size=4, total_batches=4, seed=0)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers,
                            collate_fn=collate)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 4
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["epoch"], b["epoch"]) and torch.equal(a["index"], b["index"])
        assert torch.equal(a["x_hat"], b["x_hat"])
