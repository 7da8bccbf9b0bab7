"""AI-KD training: data, loss, teacher invariance, SWA, resume, labels (multi-process:
tests/test_distributed.py).

Everything runs on a few dozen LFW train/val images with the dlib ResNet, only the head and
the last stage trainable, and batches of 6, so each test takes seconds on two CPU cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from aikd.align import align_to_template
from aikd.data.images import read_rgb
from aikd.distill.config import DistillConfig
from aikd.distill.data import (
    DistillDataset,
    EpochStreamSampler,
    LabelError,
    LabelNorm,
    attach_labels,
    collate,
    filter_readable,
    load_rows,
)
from aikd.distill.loss import AIKDLoss
from aikd.distill.model import (
    FrozenTeacher,
    backbone_stages,
    build_models,
    load_quality_model,
    predict_quality,
    select_trainable,
    state_digest,
    to_channels_last,
)
from aikd.distill.teacher import teacher_embed_rows
from aikd.distill.train import train_distill, update_bn
from aikd.distill.validation import build_validation_pairs
from aikd.faces import to_float_input
from aikd.models.registry import load_backbone

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data" / "manifests" / "lfw.parquet"
LANDMARKS = REPO / "data" / "landmarks" / "lfw" / "reference.parquet"

#: Tiny run: 24 usable train images / batch 6 = 4 steps, SWA over the last 2.
TINY = dict(
    trainable="last_n_stages:1", train_subset=None, epochs=1.0, batch_size=6, num_workers=0,
    warmup_steps=1, checkpoint_every=2, swa_start=0.5, val_every=0, progress=False,
    check_images=True, head_init="probe", lr=3e-4, swa_lr=3e-4,  # the params.yaml recipe
    precision="fp32",  # auto times both precisions, which could differ between two runs
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP barriers of two threads stall
    for tens of ms whenever another process holds a core, making small batches ~10x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows_from_reference_csv(split: str) -> pd.DataFrame:
    """Rows straight from the demo data (a fresh clone has no DVC outputs): LFW's reference
    landmarks, identities split train/val by a hash, View 2 images left out."""
    lfw = (REPO / ".." / "shared" / "data" / "lfw").resolve()
    if not (lfw / "landmarks_5pt.csv").is_file():
        pytest.skip(f"demo data not found at {lfw}")
    from aikd.data.pairs import read_lfw_pairs

    ref = pd.read_csv(lfw / "landmarks_5pt.csv")
    pairs = read_lfw_pairs(lfw / "pairs.txt")
    ref = ref[~ref["path"].isin(set(pairs["path_a"]) | set(pairs["path_b"]))].copy()
    ref["identity"] = ref["path"].str.split("/").str[-2]
    is_val = ref["identity"].map(lambda s: zlib.crc32(s.encode()) % 10 == 0)
    ref["split"] = np.where(is_val, "val", "train")
    ref.insert(0, "root", str(lfw))
    return ref[ref["split"] == split].reset_index(drop=True)


def _rows(split: str) -> pd.DataFrame:
    if MANIFEST.is_file() and LANDMARKS.is_file():
        rows = load_rows(MANIFEST, LANDMARKS, split)
    else:
        rows = _rows_from_reference_csv(split)
    rows["root"] = [str((REPO / r).resolve()) for r in rows["root"]]
    if not Path(rows["root"].iloc[0], rows["path"].iloc[0]).is_file():
        pytest.skip("demo images not found")
    return rows.sort_values("path").reset_index(drop=True)


@pytest.fixture(scope="session")
def train_rows() -> pd.DataFrame:
    """24 LFW train-split images with a seeded random label."""
    rows = _rows("train")
    rows = rows.iloc[:: len(rows) // 24].head(24).reset_index(drop=True)
    rows["quality"] = np.random.default_rng(0).uniform(0.2, 0.9, len(rows))
    return rows


@pytest.fixture(scope="session")
def val_rows() -> pd.DataFrame:
    """16 LFW val-split images of identities with >= 2 images (so mated pairs exist)."""
    rows = _rows("val")
    counts = rows["identity"].map(rows["identity"].value_counts())
    rows = rows[counts >= 2].head(16).reset_index(drop=True)
    rows["quality"] = np.random.default_rng(1).uniform(0.2, 0.9, len(rows))
    return rows


@pytest.fixture(scope="session")
def bad_image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_images")
    (root / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="session")
def train_with_bad(train_rows: pd.DataFrame, bad_image_root: Path) -> pd.DataFrame:
    """The 24 good rows plus one corrupt file that must be skipped and reported."""
    bad = train_rows.iloc[[0]].copy()
    bad["root"], bad["path"] = str(bad_image_root), "corrupt.jpg"
    return pd.concat([train_rows, bad], ignore_index=True)


class _RecordingMlflow:
    """Stands in for an active MLflow run: records what training logs (a real sqlite store
    costs ~15 s to create; test_real_mlflow_store covers that path, marked slow)."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[str, str]] = []

    def active_run(self) -> object:
        return self

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, v))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.artifacts.append((path, artifact_path))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, train_with_bad, val_rows):
    """The shared 4-step run (one corrupt image), logging into a recording MLflow stand-in."""
    out = tmp_path_factory.mktemp("tiny_run")
    recorder = _RecordingMlflow()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("active_run", "log_metrics", "log_artifact"):
            mp.setattr(mlflow, name, getattr(recorder, name))
        result = train_distill(DistillConfig(**TINY), train_with_bad, val_rows, out / "run")
    result.mlflow = recorder  # type: ignore[attr-defined]
    return result


# --------------------------------------------------------------------------- data


def test_jitter_changes_student_input_only(train_rows):
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.1, units="iod", seed=3)
    before = ds.landmarks.copy()
    image = read_rgb(ds.files[0])
    x_ref, _ = align_to_template(image, before[0], "dlib150")
    a, b, a2 = ds[(0, 0)], ds[(1, 0)], ds[(0, 0)]
    assert torch.equal(a["x"], torch.from_numpy(x_ref)) and torch.equal(a["x"], b["x"])
    assert not torch.equal(a["x_hat"], a["x"])  # misaligned
    assert not torch.equal(a["x_hat"], b["x_hat"])  # fresh offsets every epoch
    assert torch.equal(a["x_hat"], a2["x_hat"])  # deterministic per (seed, epoch, index)
    for epoch in range(5):
        ds[(epoch, 0)]
    np.testing.assert_array_equal(ds.landmarks, before)  # nothing accumulates
    shift = ds.jittered_landmarks(image, 7, 0) - before[0]
    iod = np.linalg.norm(before[0][1] - before[0][0])
    assert np.abs(shift).max() <= 0.1 * iod + 1e-9 and np.abs(shift).max() > 0


def test_hflip_mirrors_the_student_face_only_and_is_drawn_per_sample(train_rows):
    """hflip: x̂ is x mirrored or x itself (max_shift 0), the teacher's x never; the draw
    depends on (seed, epoch, index) only and is independent of the jitter's."""
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.0, seed=3, hflip=0.5)
    plain = DistillDataset(train_rows, template="dlib150", max_shift=0.0, seed=3)
    flipped = []
    for epoch in range(6):
        for index in range(len(ds)):
            item, ref = ds[(epoch, index)], plain[(epoch, index)]
            assert torch.equal(item["x"], ref["x"])
            mirrored = torch.equal(item["x_hat"], ref["x"].flip(1))
            assert mirrored or torch.equal(item["x_hat"], ref["x"])
            assert torch.equal(ds[(epoch, index)]["x_hat"], item["x_hat"])  # same draw again
            flipped.append(mirrored)
    assert 0.3 < np.mean(flipped) < 0.7, np.mean(flipped)
    with pytest.raises(ValueError, match="hflip"):
        DistillDataset(train_rows, template="dlib150", max_shift=0.0, hflip=1.5)
    # with jitter, the flip does not move the jitter's offsets
    jit = DistillDataset(train_rows, template="dlib150", max_shift=0.1, seed=3, hflip=1.0)
    ref = DistillDataset(train_rows, template="dlib150", max_shift=0.1, seed=3)
    assert torch.equal(jit[(2, 1)]["x_hat"], ref[(2, 1)]["x_hat"].flip(1))


def test_max_shift_zero_gives_identical_input(train_rows):
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.0, seed=3)
    for key in [(0, 0), (4, 5)]:
        item = ds[key]
        assert torch.equal(item["x_hat"], item["x"])


def test_sampler_shards_epochs_and_resumes():
    kw = dict(batch_size=4, total_batches=12, seed=5, world_size=2)
    r0 = list(EpochStreamSampler(20, rank=0, **kw))
    r1 = list(EpochStreamSampler(20, rank=1, **kw))
    # 20 images, global batch 8 -> 2 batches per epoch per rank, 4 images left out
    first0 = {i for e, i in r0 if e == 0}
    first1 = {i for e, i in r1 if e == 0}
    assert len(first0) == len(first1) == 8 and not first0 & first1
    assert {e for e, _ in r0} == set(range(6))
    resumed = list(EpochStreamSampler(20, rank=0, start_batch=5, **kw))
    assert resumed == r0[5 * 4 :]


def test_bad_images_are_skipped_and_reported(train_with_bad, tiny_run):
    good, bad = filter_readable(train_with_bad)
    assert len(good) == len(train_with_bad) - 1
    assert bad["path"].tolist() == ["corrupt.jpg"] and "decodable" in bad["message"].iloc[0]
    assert tiny_run.skipped["path"].tolist() == ["corrupt.jpg"]
    assert tiny_run.train_images == len(good)


# --------------------------------------------------------------------------- labels


def test_missing_or_nan_labels_refused_before_training(train_rows, val_rows, tmp_path):
    labels = train_rows[["path", "quality"]].copy()
    with pytest.raises(LabelError, match=r"3 of 24 rows have no finite quality label"):
        attach_labels(train_rows, labels.iloc[3:])
    nan = labels.copy()
    nan.loc[5, "quality"] = np.nan
    path = tmp_path / "labels.parquet"
    nan.to_parquet(path)
    with pytest.raises(LabelError, match=r"1 of 24 rows .*" + train_rows["path"][5]):
        attach_labels(train_rows, path)
    with pytest.raises(LabelError, match="duplicate paths"):
        attach_labels(train_rows, pd.concat([labels, labels.head(1)]))
    # Refused by train_distill too, before any model is built or a step taken.
    with pytest.raises(LabelError, match="no finite quality label"):
        train_distill(DistillConfig(**TINY), train_rows, val_rows, tmp_path / "run", labels=path)
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("kind", ["rank", "minmax", "none"])
def test_label_norm_round_trip(kind):
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.gamma(2.0, 3.0, 500), [4.0] * 50])  # with ties
    norm = LabelNorm.fit(values, kind)
    t = norm.transform(values)
    if kind != "none":
        assert t.min() >= 0.0 and t.max() <= 1.0
    np.testing.assert_allclose(norm.inverse(t), values, rtol=1e-9, atol=1e-9)
    again = LabelNorm.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.transform(values), t)
    assert np.all(np.diff(norm.transform(np.sort(values))) >= 0)  # monotone


def test_rank_norm_targets_are_uniform():
    values = np.random.default_rng(3).lognormal(size=2000)
    t = LabelNorm.fit(values, "rank").transform(values)
    assert abs(np.median(t) - 0.5) < 0.01 and abs(t.mean() - 0.5) < 0.01


# --------------------------------------------------------------------------- model and loss


def test_trainable_selection():
    bb = load_backbone("dlib_resnet")
    last = select_trainable(bb, "last_n_stages:1")
    assert "fc.weight" in last and "blocks.13.body.conv1.weight" in last
    assert not any(".aff" in n for n in last)  # dlib's folded batch norm stays frozen
    assert not any(n.startswith("blocks.12.") for n in last)
    three = select_trainable(bb, "last_n_stages:3")
    assert "blocks.7.body.conv1.weight" in three and "blocks.6.body.conv2.bias" not in three
    assert select_trainable(bb, "last_n_tensors:3") == [
        "blocks.13.body.conv2.weight", "blocks.13.body.conv2.bias", "fc.weight",
    ]
    assert select_trainable(bb, "head") == []


def test_iresnet_stages_cover_every_parameter():
    from aikd.models.iresnet import iresnet

    net = iresnet("iresnet50")
    stages = backbone_stages(net)
    assert len(stages) == 5 and sum(map(len, stages)) == len(list(net.parameters()))
    assert stages[0][0] == "conv1.weight" and "fc.weight" in stages[-1]
    assert all(n.startswith("layer2.") for n in stages[2])
    assert "features.weight" not in select_trainable(net, "all")  # fixed embedding-BN scale


def test_update_bn_recomputes_statistics_of_the_average(train_rows):
    """SWA with a BatchNorm backbone: the averaged model's statistics come from a pass
    over jittered training faces (momentum None: the exact mean over those batches)."""
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.1, seed=0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=5), torch.nn.BatchNorm2d(4))
    swa = torch.optim.swa_utils.AveragedModel(net)
    cfg = DistillConfig(batch_size=4, channels_last=False)
    update_bn(swa, ds, cfg, torch.device("cpu"))
    n = min(len(ds), 50 * cfg.batch_size)
    idx = np.random.default_rng([cfg.seed, 13]).choice(len(ds), n, replace=False)
    x = to_float_input(collate([ds[(0, int(i))] for i in idx])["x_hat"], False)
    conv_out = swa.module[0](x)
    bn = swa.module[1]
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4,
                               atol=1e-4)
    assert bn.momentum == 0.1  # restored after the pass


def test_teacher_stays_frozen_under_parent_train():
    teacher, student = build_models("dlib_resnet", None, "last_n_stages:1", seed=0)
    parent = torch.nn.ModuleDict({"teacher": teacher, "student": student})
    parent.train()
    assert isinstance(teacher, FrozenTeacher)
    assert student.training and not teacher.training
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_loss_decreases_on_fixed_batch(train_rows):
    teacher, student = build_models("dlib_resnet", None, "last_n_stages:1", seed=0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ds = DistillDataset(train_rows, template="dlib150", max_shift=0.1, seed=0,
                        targets=train_rows["quality"].to_numpy())
    batch = collate([ds[(0, i)] for i in range(8)])
    x, x_hat = to_float_input(batch["x"], True), to_float_input(batch["x_hat"], True)
    to_channels_last(teacher)
    to_channels_last(student)
    head, bb = student.param_groups()
    opt = torch.optim.SGD([{"params": head, "momentum": 0.9}, {"params": bb, "momentum": 0.1}],
                          lr=0.05)
    loss_fn = AIKDLoss(0.5, "l1")
    student.train()
    losses = []
    for _ in range(6):
        e = teacher(x)
        e_hat, q_hat = student(x_hat)
        terms = loss_fn(e_hat, q_hat, batch["q"], e)
        opt.zero_grad()
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(head + bb, 5.0)
        opt.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # params and buffers


def test_teacher_cache_is_used_and_checked(train_rows):
    teacher, _ = build_models("dlib_resnet", None, "head", seed=0)
    rows = train_rows.head(6)
    online = teacher_embed_rows(teacher, rows, workers=0)
    assert np.isfinite(online).all()
    cache = dict(zip(rows["path"][:4], online[:4], strict=True))  # two rows missing
    mixed = teacher_embed_rows(teacher, rows, workers=0, cache=cache)
    np.testing.assert_allclose(mixed, online, rtol=1e-5, atol=1e-5)
    wrong = {p: np.roll(v, 1) for p, v in cache.items()}  # e.g. another network's vectors
    with pytest.raises(ValueError, match="disagrees with the teacher"):
        teacher_embed_rows(teacher, rows, workers=0, cache=wrong)
    with pytest.raises(ValueError, match="vectors"):
        teacher_embed_rows(teacher, rows, workers=0, cache={rows["path"][0]: online[0, :64]})


def test_loss_terms_and_baseline_switch():
    e, e_hat = torch.randn(4, 8), torch.randn(4, 8, requires_grad=True)
    q, q_hat = torch.rand(4), torch.rand(4, requires_grad=True)
    full = AIKDLoss(0.5, "smooth_l1", 0.5)(e_hat, q_hat, q, e)
    expected_q = torch.nn.functional.smooth_l1_loss(q_hat, q, beta=0.5)
    expected_c = (1 - torch.nn.functional.cosine_similarity(e, e_hat)).mean()
    torch.testing.assert_close(full.total, 0.5 * expected_c + 0.5 * expected_q)
    base = AIKDLoss(0.0, "l1")(e_hat, q_hat, q, e)
    torch.testing.assert_close(base.total, (q_hat - q).abs().mean())
    assert not base.consistency.requires_grad
    assert torch.isnan(AIKDLoss(0.0)(e_hat, q_hat, q, None).consistency)
    cfg = DistillConfig(max_shift=0, w=0)
    assert cfg.baseline


# --------------------------------------------------------------------------- training run


def test_teacher_bit_identical_after_training(tiny_run):
    assert tiny_run.completed and tiny_run.steps == 4
    assert tiny_run.teacher_digest == state_digest(load_backbone("dlib_resnet"))


def test_swa_model_differs_from_last_student_and_is_saved(tiny_run):
    ckpt = tiny_run.out_dir / "checkpoints" / "step_0000004"
    last_student = load_file(str(ckpt / "model.safetensors"))
    swa = torch.load(ckpt / "custom_checkpoint_2.pkl", weights_only=False)
    saved = torch.load(tiny_run.model_path, weights_only=True)
    assert int(swa["n_averaged"]) == 2 and saved["extra"]["swa_averaged"] == 2
    for part, state in (("backbone", saved["backbone_state"]), ("head", saved["head_state"])):
        for k, v in state.items():
            assert torch.equal(v, swa[f"module.{part}.{k}"]), k
    differs = [k for k, v in saved["head_state"].items()
               if not torch.equal(v, last_student[f"head.{k}"])]
    assert differs
    bb = saved["backbone_state"]
    assert torch.equal(bb["conv1.weight"], last_student["backbone.conv1.weight"])  # frozen
    assert not torch.equal(bb["fc.weight"], last_student["backbone.fc.weight"])


def test_saved_model_scores_in_label_scale(tiny_run, val_rows):
    model = load_quality_model(tiny_run.model_path)
    assert model.template == "dlib150" and model.label_norm.kind == "rank"
    q = predict_quality(model, val_rows.head(6), batch_size=4, workers=0)
    t = predict_quality(model, val_rows.head(6), batch_size=4, workers=0, normalized=True)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q, model.label_norm.inverse(t), rtol=1e-5, atol=1e-5)
    lo, hi = tiny_run.label_norm.xs[0], tiny_run.label_norm.xs[-1]
    assert np.all((q >= lo - 1e-6) & (q <= hi + 1e-6))
    # Landmarks from another table: a missing row scores NaN instead of failing.
    other = val_rows[["path", *[f"{a}{i}" for i in range(5) for a in ("x", "y")]]].iloc[1:6]
    q2 = predict_quality(model, val_rows.head(6), other, batch_size=4, workers=0)
    assert np.isnan(q2[0]) and np.allclose(q2[1:], q[1:], atol=1e-5)
    assert (tiny_run.out_dir / "history.csv").is_file()
    metrics = json.loads((tiny_run.out_dir / "metrics.json").read_text())["metrics"]
    assert {"val_quality_loss", "val_cosine", "val_pauc_fmr1e-2", "val_pauc_fmr1e-3"} <= set(
        metrics)
    assert 0.5 < metrics["val_cosine"] <= 1.0
    # Learnability: the student's fit on the faces as aligned, beside a constant's.
    assert {"val_l1", "val_spearman", "const_val_l1"} <= set(metrics)
    assert 0.0 <= metrics["val_l1"] <= 1.0 and -1.0 <= metrics["val_spearman"] <= 1.0
    # The default LP-FT head: its fit before fine-tuning is recorded beside the final one.
    assert {"init_val_l1", "init_val_spearman", "probe_alpha"} <= set(metrics)


def test_progress_is_logged_to_the_active_mlflow_run(tiny_run):
    logged = tiny_run.mlflow.metrics
    for name in ("loss", "loss_consistency", "loss_quality", "lr", "images_per_s"):
        assert [s for s, _ in logged[name]] == [4], name  # log_every=5: the last step
    assert logged["skipped_images"] == [(4, 1.0)]
    assert {"final_val_cosine", "final_val_quality_loss", "time_train_s"} <= set(logged)
    assert (str(tiny_run.model_path), "distill") in tiny_run.mlflow.artifacts


@pytest.mark.slow
def test_real_mlflow_store(train_rows, val_rows, tmp_path):
    """The same logging into a real (sqlite) MLflow store: metric names, artifact upload."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("distill-test", (tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            cfg = DistillConfig(**{**TINY, "epochs": 0.5, "log_every": 1})
            train_distill(cfg, train_rows, val_rows, tmp_path / "run")
        client = mlflow.MlflowClient()
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
        assert "final_val_cosine" in client.get_run(run.info.run_id).data.metrics
        arts = [a.path for a in client.list_artifacts(run.info.run_id, "distill")]
        assert "distill/model.pt" in arts
    finally:
        mlflow.set_tracking_uri(previous)


def test_test_split_rows_are_refused(train_rows, val_rows, tmp_path):
    rows = train_rows.assign(split="train")
    rows.loc[3, "split"] = "test"
    with pytest.raises(ValueError, match="'test' split"):
        train_distill(DistillConfig(**TINY), rows, val_rows, tmp_path)


def test_validation_pairs():
    ids = ["a", "a", "a", "b", "b", "c"]
    pairs = build_validation_pairs(ids, seed=0)
    mated = pairs[pairs["mated"]]
    assert len(mated) == 3 + 1 and len(pairs) == 2 * len(mated)
    lab = np.array(ids)
    assert (lab[pairs["a"]] == lab[pairs["b"]]).tolist() == pairs["mated"].tolist()
    assert not pairs.duplicated(["a", "b"]).any()
    assert pairs.equals(build_validation_pairs(ids, seed=0))


def test_resume_reproduces_uninterrupted_run(tiny_run, train_with_bad, val_rows, tmp_path):
    out = tmp_path / "resumed"
    first = train_distill(DistillConfig(**TINY), train_with_bad, val_rows, out, stop_after=2)
    assert not first.completed and first.steps == 2 and first.model_path is None
    second = train_distill(DistillConfig(**TINY), train_with_bad, val_rows, out, resume=True)
    assert second.completed and second.steps == 4
    cols = ["step", "loss", "loss_consistency", "loss_quality", "lr"]
    pd.testing.assert_frame_equal(second.history[cols], tiny_run.history[cols], check_exact=True)
    a = torch.load(tiny_run.model_path, weights_only=True)
    b = torch.load(second.model_path, weights_only=True)
    for part in ("backbone_state", "head_state"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    with pytest.raises(ValueError, match="config changed"):
        train_distill(DistillConfig(**{**TINY, "lr": 0.01}), train_with_bad, val_rows, out,
                      resume=True)
    # Same config, other data (e.g. new splits or relabelled images): refused as well,
    # never a silent continuation of a run on other images.
    relabelled = train_with_bad.assign(quality=train_with_bad["quality"][::-1].to_numpy())
    with pytest.raises(ValueError, match=r"config changed \(data:"):
        train_distill(DistillConfig(**TINY), relabelled, val_rows, out, resume=True)


def test_resume_keeps_the_precision_the_run_started_with(train_rows, val_rows, tmp_path,
                                                        monkeypatch):
    """``auto`` times both precisions at start-up and the second start may time them the
    other way round; the resumed run continues in the precision it started with (its
    config check would refuse the other), and metrics.json says which and why."""
    import aikd.distill.prepare as prepare
    from aikd.distill.precision import PrecisionChoice

    picks = iter(["fp32", "bf16"])
    monkeypatch.setattr(prepare, "choose_precision",
                        lambda cfg: PrecisionChoice(next(picks), "timed (test)", 2.0, 1.5))
    cfg = DistillConfig(**{**TINY, "precision": "auto", "check_images": False})
    out = tmp_path / "run"
    assert not train_distill(cfg, train_rows, val_rows, out, stop_after=2).completed
    second = train_distill(cfg, train_rows, val_rows, out, resume=True)
    assert second.completed and second.config["precision"] == "fp32"
    written = json.loads((out / "metrics.json").read_text())["config"]
    assert written["precision"] == "fp32"
    assert written["precision_choice"] == {"precision": "fp32", "reason": "timed (test)",
                                           "fp32_s": 2.0, "bf16_s": 1.5,
                                           "bf16_speedup": pytest.approx(4 / 3)}
    assert next(picks) == "bf16"  # the resume did not choose again


def test_module_entry_point_reports_an_unknown_run(tmp_path):
    """``python -m aikd.distill`` with a run params.yaml lacks: one line, exit code 2."""
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"distill": {
        "out_dir": "m", "work_dir": "c", "runs": {"a-T": {"labels": "a", "variant": "T"}},
        "variants": {"T": {}}, "val_detectors": []}}))
    proc = subprocess.run([sys.executable, "-m", "aikd.distill", "b-T", "--params", str(params)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "aikd: error: distill run 'b-T' is not in params distill.runs; pick one of a-T or add "
        "it there"]


def test_stage_reads_its_keys_typed():
    """The stage keys of params ``distill`` are a typed dataclass: a missing key and an
    unknown run or variant are named; DistillConfig still refuses unknown keys."""
    from aikd.distill.stage import run_config, run_dir, run_spec, stage_settings
    from aikd.errors import UsageError

    section = {"out_dir": "models", "work_dir": "ckpt", "variants": {"T": {}, "B": {"w": 0.0}},
               "runs": {"a-T": {"labels": "a", "variant": "T"},
                        "a-Z": {"labels": "a", "variant": "Z"}},
               "val_detectors": ["retinaface"], "lr": 0.01}
    params = {"seed": 3, "distill": section}
    assert stage_settings(params).val_detectors == ["retinaface"]
    assert run_dir(params, "a-T") == Path("models/a-T")
    assert run_spec(params, "a-T").overrides == {}
    assert (run_config(params, "a-T").lr, run_config(params, "a-T").seed) == (0.01, 3)
    with pytest.raises(UsageError, match="'b-T' is not in params distill.runs; pick one of"):
        run_spec(params, "b-T")
    with pytest.raises(UsageError, match="variant 'Z' is not in distill.variants"):
        run_config(params, "a-Z")
    with pytest.raises(ValueError, match="missing key.s. work_dir"):
        stage_settings({"distill": {k: v for k, v in section.items() if k != "work_dir"}})
    with pytest.raises(ValueError, match=r"distill.runs.x-T: missing key\(s\) variant"):
        run_spec({"distill": {**section, "runs": {"x-T": {"labels": "x"}}}}, "x-T")
    with pytest.raises(ValueError, match="unknown distill config keys"):
        run_config({"distill": {**section, "lrr": 1}}, "a-T")


def test_every_run_is_trained_once_per_seed_into_its_own_folder():
    """params ``train_seeds``: one model per (run, seed), named ``<run>@s<seed>``, in
    ``<out_dir>/<run>/seed<seed>``, trained with that seed even when the section or a run's
    overrides set another; a bare run name stands for the first seed."""
    from aikd.distill.stage import (
        run_config,
        run_dir,
        seeded_run,
        train_seeds,
        trained_models,
        work_dir,
    )
    from aikd.errors import UsageError

    section = {"out_dir": "models", "work_dir": "ckpt", "variants": {"T": {}, "B": {"w": 0.0}},
               "runs": {"a-B": {"labels": "a", "variant": "B"},
                        "a-T": {"labels": "a", "variant": "T", "overrides": {"seed": 9}}},
               "val_detectors": [], "seed": 5}
    params = {"seed": 3, "train_seeds": [2, 0], "distill": section}
    assert trained_models(params) == {"a-B@s2": ("a-B", 2), "a-B@s0": ("a-B", 0),
                                      "a-T@s2": ("a-T", 2), "a-T@s0": ("a-T", 0)}
    assert run_dir(params, "a-T", 0) == Path("models/a-T/seed0")
    assert work_dir(params, "a-T", 2) == Path("ckpt/a-T/seed2")
    assert [run_config(params, "a-T", s).seed for s in (2, 0)] == [2, 0]
    assert run_config(params, "a-T").seed == 9  # no training seed: the override stands
    assert seeded_run(params, "a-T@s7") == ("a-T", 7)
    assert seeded_run(params, "a-T") == ("a-T", 2)  # the first of train_seeds
    assert train_seeds({"seed": 4}) == [4]  # no list: the global seed alone
    for bad in ([], [0, 0], [-1], [1.5], [True]):
        with pytest.raises(UsageError, match="train_seeds"):
            train_seeds({"train_seeds": bad})
