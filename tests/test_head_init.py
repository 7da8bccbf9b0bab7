"""LP-FT head initialisation: the probe learns a label from raw embeddings, touches only
the head's last layer, and leaves the run's random streams alone; the unit-input head."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from aikd.distill.config import DistillConfig
from aikd.distill.head_init import fit_head, fit_head_ridge, head_predict, initialise_head
from aikd.distill.learnability import label_fit
from aikd.distill.model import AIKDStudent, FrozenTeacher, QualityHead, state_digest

DIM = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as training uses: two threads' OpenMP barriers stall on a busy
    2-core box, making these tiny full-batch steps ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _TinyBackbone(nn.Linear):
    """A stand-in backbone with the attribute the student needs (embedding_dim)."""

    embedding_dim = DIM

    def __init__(self) -> None:
        super().__init__(8, DIM)


def _data(rng: np.random.Generator, n: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings far from standardised (offset 3, per-dimension scales 0.01-1: the
    fold of the hidden features' standardisation must be right for raw inputs to work)
    and a nonlinear, noisy target in [0, 1] that is monotone in one direction."""
    z = rng.normal(size=(n, DIM))
    x = 3.0 + z * np.geomspace(0.01, 1.0, DIM)
    y = 1.0 / (1.0 + np.exp(-2.0 * np.tanh(z @ w))) + 0.05 * rng.normal(size=n)
    return x, y


@pytest.mark.parametrize("unit_input", [False, True])
def test_probe_head_learns_the_label_from_raw_embeddings(unit_input: bool) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=DIM) / np.sqrt(DIM)
    x, y = _data(rng, 800, w)
    x_new, y_new = _data(rng, 400, w)
    torch.manual_seed(0)
    head = QualityHead(DIM, unit_input=unit_input)
    direction = head[0].weight.detach().clone()
    rho_random = label_fit(head_predict(head, x_new), y_new)[1]
    fit = fit_head(head, x, y)
    l1, rho = label_fit(head_predict(head, x_new), y_new)
    assert abs(rho_random) < 0.5
    assert rho > 0.85 and fit.train_spearman > 0.85 and fit.alpha > 0
    assert l1 < float(np.mean(np.abs(y_new - np.median(y))))  # beats the constant
    # The first layer keeps its random directions, only rescaled per input dimension.
    ratio = head[0].weight.detach() / direction
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))
    # Balanced: no last-layer weight in the thousands (unstable SGD fine-tuning).
    assert float(head[2].weight.detach().abs().max()) < 100


def test_probe_init_changes_only_the_head_and_no_random_stream() -> None:
    torch.manual_seed(0)
    teacher = FrozenTeacher(_TinyBackbone())
    student = AIKDStudent(copy.deepcopy(teacher.backbone), trainable="all", unit_input=True)
    rng = np.random.default_rng(1)
    u = rng.normal(size=(600, 8)).astype(np.float32)
    feats = teacher(torch.from_numpy(u)).numpy()
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    direction = rng.normal(size=DIM)
    target = 1.0 / (1.0 + np.exp(-(unit - unit.mean(0)) / unit.std(0) @ direction / 2.0))
    teacher_digest, backbone_digest = state_digest(teacher), state_digest(student.backbone)
    head_before = copy.deepcopy(student.head.state_dict())
    rng_before = torch.get_rng_state()

    random = initialise_head("random", student.head, feats[:500], target[:500],
                             val_features=feats[500:], val_targets=target[500:])
    assert set(random) == {"init_val_l1", "init_val_spearman"}
    assert all(torch.equal(v, student.head.state_dict()[k]) for k, v in head_before.items())

    probe = initialise_head("probe", student.head, feats[:500], target[:500],
                            val_features=feats[500:], val_targets=target[500:])
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert state_digest(teacher) == teacher_digest
    assert state_digest(student.backbone) == backbone_digest
    assert any(not torch.equal(v, student.head.state_dict()[k]) for k, v in head_before.items())
    assert probe["init_val_spearman"] > 0.9 > abs(random["init_val_spearman"])
    assert probe["init_val_l1"] < random["init_val_l1"]
    # The head reads the student's own embedding: its step-0 quality is the probe's.
    _, q = student(torch.from_numpy(u[500:]))
    np.testing.assert_allclose(q.detach().numpy(), head_predict(student.head, feats[500:]),
                               rtol=1e-5, atol=1e-5)


def test_unit_head_ignores_the_embedding_norm() -> None:
    torch.manual_seed(0)
    emb = torch.randn(5, DIM)
    unit, raw = QualityHead(DIM, unit_input=True), QualityHead(DIM)
    raw.load_state_dict(unit.state_dict())
    torch.testing.assert_close(unit(3.0 * emb), unit(emb))
    assert not torch.allclose(raw(3.0 * emb), raw(emb))


def test_probe_needs_teacher_features_and_config_names_the_choices() -> None:
    head = QualityHead(DIM)
    with pytest.raises(ValueError, match="teacher embeddings"):
        initialise_head("probe", head, None, np.zeros(20))
    with pytest.raises(ValueError, match="teacher embeddings"):
        initialise_head("ridge", head, None, np.zeros(20))
    with pytest.raises(ValueError, match="head_init"):
        initialise_head("lasso", head, np.zeros((20, DIM)), np.zeros(20))
    with pytest.raises(ValueError, match="head_init"):
        DistillConfig(head_init="lasso")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_input"):
        DistillConfig(head_input="l2")  # type: ignore[arg-type]
    # the code default stays "random": "probe" at the default lr 0.05 collapses (run A)
    assert DistillConfig().head_init == "random" and DistillConfig().head_input == "unit"


@pytest.mark.parametrize("unit_input", [False, True])
def test_ridge_head_computes_the_ridge_regression_exactly(unit_input: bool) -> None:
    """head_init 'ridge': the MLP's step-0 output is the ridge regression of the labels on
    the head input, computed here from the normal equations with the chosen penalty."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=DIM) / np.sqrt(DIM)
    x, y = _data(rng, 600, w)
    x_new, _ = _data(rng, 200, w)
    torch.manual_seed(0)
    head = QualityHead(DIM, unit_input=unit_input)
    fit = fit_head_ridge(head, x, y)

    def inputs(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True) if unit_input else a

    f = inputs(x)
    fc, yc = f - f.mean(0), y - y.mean()
    beta = np.linalg.solve(fc.T @ fc + fit.alpha * np.eye(DIM), fc.T @ yc)
    expected = (inputs(x_new) - f.mean(0)) @ beta + y.mean()
    np.testing.assert_allclose(head_predict(head, x_new), expected, rtol=0, atol=2e-4)
    assert fit.train_spearman > 0.8
    # balanced: neither layer needs weights in the thousands (unstable SGD fine-tuning)
    assert float(head[0].weight.detach().abs().max()) < 100
    assert float(head[2].weight.detach().abs().max()) < 100
