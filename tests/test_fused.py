"""The folded/fused dlib ResNet (aikd.models.fused) computes the module's function.

The expectation is the unmodified ``DlibResNet`` forward on real aligned LFW faces; the
fused copy only reorders float32 arithmetic, so descriptors agree to ~1e-6 (measured max
abs difference 5.7e-7 on 128 LFW faces, descriptor entries up to 0.52). Also checked: the
callers that switched to it (SER-FIQ, flip consistency, the quality stage's shared trunk)
give what the module path gives, and the cache rebuilds when weights change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from aikd.faces import iter_aligned, landmarks_array, row_files
from aikd.fiqa import serfiq
from aikd.fiqa.baselines import flip_consistency
from aikd.models import fused as fused_mod
from aikd.models.dlib_resnet import DlibResNet
from aikd.models.fused import FusedDlibResNet, fused_dlib

#: Bound on |fused - module| of the 128-D descriptor (entries up to ~0.5); measured 5.7e-7.
DESCRIPTOR_ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> DlibResNet:
    return DlibResNet.from_dlib_file().eval().to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def faces(lfw_root, lfw_sample: pd.DataFrame) -> torch.Tensor:
    """30 real LFW faces aligned to dlib's template, float [0, 255] NCHW."""
    rows = lfw_sample.assign(root=str(lfw_root))
    out = []
    for _, batch, bad in iter_aligned(row_files(rows), landmarks_array(rows), "dlib150",
                                      batch_size=32):
        assert not bad
        out.append(batch.float())
    return torch.cat(out)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-fused", "plain-ops"])
def test_descriptor_matches_the_module(model, faces, onednn, monkeypatch):
    if not onednn:
        monkeypatch.setattr(fused_mod, "_FUSED", None)
    with torch.inference_mode():
        ref = model(faces)
        out = FusedDlibResNet(model)(faces)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (30, 128)
    err = float((out - ref).abs().max())
    assert err <= DESCRIPTOR_ATOL, err
    # a wrong fold (e.g. the mean left out of conv1) moves descriptors by >1e-2
    assert float(ref.abs().max()) > 0.1


def test_block_ranges_match_the_module(model, faces):
    f = FusedDlibResNet(model)
    with torch.inference_mode():
        h_ref = model.blocks[:7](model.stem(faces))
        h = f.blocks(f.stem(faces), 0, 7)
        tail_ref = model.blocks[7:](h_ref)
        tail = f.blocks(h_ref, 7)
    assert torch.allclose(h, h_ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(tail, tail_ref, atol=1e-4, rtol=1e-4)


def test_partial_copy_has_no_embedding(model, faces):
    with pytest.raises(ValueError, match="only 3 blocks"):
        FusedDlibResNet(model, n_blocks=3)(faces[:1])


def test_cache_rebuilds_when_weights_change():
    m = DlibResNet().eval()
    a = fused_dlib(m)
    assert a is not None and fused_dlib(m) is a
    with torch.no_grad():
        m.blocks[0].body.aff1.weight.mul_(2.0)
    b = fused_dlib(m)
    assert b is not a
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.inference_mode():
        assert torch.allclose(b(x), m(x), atol=1e-5)
    assert fused_dlib(torch.nn.Linear(2, 2)) is None


def test_serfiq_and_flip_match_the_module_path(model, faces, monkeypatch):
    kw = {"T": 10, "rate": 0.02, "placement": "stage3", "dropout": "element", "seed": 3}
    fast = serfiq.serfiq_scores(model, faces, **kw)
    flip_fast = flip_consistency(model, faces)
    for mod in (serfiq, __import__("aikd.fiqa.baselines", fromlist=["x"])):
        monkeypatch.setattr(mod, "fused_dlib", lambda _m: None)
    slow = serfiq.serfiq_scores(model, faces, **kw)
    flip_slow = flip_consistency(model, faces)
    # scores lie in ~[0.3, 0.5] and differ between faces by ~1e-2
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    np.testing.assert_allclose(flip_fast, flip_slow, atol=1e-5)
    assert np.ptp(slow) > 1e-3
