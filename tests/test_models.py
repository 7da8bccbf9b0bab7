"""Tests for aikd.models: exactness of the dlib port against dlib, insightface key names,
the backbone contract, and the error messages of load_backbone."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aikd.data.images import read_rgb
from aikd.models.dlib_dat import DlibModelFormatError, default_dlib_model_path, read_dlib_model
from aikd.models.iresnet import iresnet
from aikd.models.registry import RandomWeightsWarning, available_backbones, load_backbone

# Written from insightface's arcface_torch/backbones/iresnet.py (module attribute names),
# independently of aikd's implementation.
INSIGHTFACE_R50_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "prelu.weight",
    "layer1.0.bn1.weight",
    "layer1.0.conv1.weight",
    "layer1.0.bn2.running_var",
    "layer1.0.prelu.weight",
    "layer1.0.conv2.weight",
    "layer1.0.bn3.bias",
    "layer1.0.downsample.0.weight",
    "layer1.0.downsample.1.weight",
    "layer1.0.downsample.1.running_mean",
    "layer1.2.conv2.weight",
    "layer2.3.bn3.weight",
    "layer3.0.downsample.0.weight",
    "layer3.13.prelu.weight",
    "layer4.0.downsample.1.running_var",
    "layer4.2.bn3.weight",
    "bn2.weight",
    "bn2.running_mean",
    "fc.weight",
    "fc.bias",
    "features.weight",
    "features.bias",
    "features.running_mean",
    "features.running_var",
]


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()


def _dlib_reference(lfw_root: Path, n_faces: int, step: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Chips and descriptors computed by dlib itself on LFW images sampled every ``step``.

    Images where the HOG detector finds no face are skipped, so the sample is deterministic.
    """
    dlib = pytest.importorskip("dlib")
    frm = pytest.importorskip("face_recognition_models")
    paths = sorted((lfw_root / "images").glob("*/*.jpg"))
    if not paths:
        pytest.skip(f"no LFW images under {lfw_root / 'images'}")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
    recognizer = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    chips: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    for path in paths[::step]:
        img = read_rgb(path)
        rects = detector(img, 1)
        if not rects:
            continue
        chip = dlib.get_face_chip(img, predictor(img, rects[0]), size=150, padding=0.25)
        chips.append(chip)
        refs.append(np.array(recognizer.compute_face_descriptor(chip)))
        if len(chips) == n_faces:
            break
    assert len(chips) == n_faces, f"only {len(chips)} faces detected"
    return chips, np.stack(refs)


@pytest.fixture(scope="module")
def dlib_model() -> torch.nn.Module:
    pytest.importorskip("face_recognition_models")
    return load_backbone("dlib_resnet")


@pytest.fixture(scope="module")
def r50() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return load_backbone("iresnet50")


def _max_l2_vs_dlib(model: torch.nn.Module, lfw_root: Path, n_faces: int, step: int) -> float:
    chips, refs = _dlib_reference(lfw_root, n_faces, step)
    with torch.no_grad():
        ours = model(_to_batch(chips)).numpy()
    dists = np.linalg.norm(ours - refs, axis=1)
    print(f"max L2 over {n_faces} faces: {dists.max():.3e}")
    return float(dists.max())


def test_dlib_port_matches_dlib_fast(dlib_model: torch.nn.Module, lfw_root: Path) -> None:
    assert _max_l2_vs_dlib(dlib_model, lfw_root, n_faces=5, step=211) <= 1e-4


@pytest.mark.slow
def test_dlib_port_matches_dlib_24_faces(dlib_model: torch.nn.Module, lfw_root: Path) -> None:
    assert _max_l2_vs_dlib(dlib_model, lfw_root, n_faces=24, step=97) <= 1e-4


def test_dlib_parser_finds_all_layers() -> None:
    pytest.importorskip("face_recognition_models")
    net = read_dlib_model(default_dlib_model_path())
    counts = net.counts()
    assert (counts["con"], counts["affine"], counts["fc"]) == (29, 29, 1)
    assert net.convs[0].weight.shape == (32, 3, 7, 7)
    assert net.convs[0].stride == (2, 2) and net.convs[0].padding == (0, 0)
    assert net.fcs[0].weight.shape == (256, 128)
    assert net.input_size == (150, 150)
    np.testing.assert_allclose(net.rgb_mean, (122.782, 117.001, 104.298), atol=1e-4)


def test_dlib_parser_rejects_truncated_file(tmp_path: Path) -> None:
    pytest.importorskip("face_recognition_models")
    bad = tmp_path / "truncated.dat"
    bad.write_bytes(default_dlib_model_path().read_bytes()[:50_000])
    with pytest.raises(DlibModelFormatError, match="end of file"):
        read_dlib_model(bad)
    with pytest.raises(ValueError):  # the format error is a ValueError for callers
        load_backbone("dlib_resnet", weights=bad)


def test_dlib_contract_and_shapes(dlib_model: torch.nn.Module) -> None:
    assert dlib_model.embedding_dim == 128
    assert dlib_model.input_size == (150, 150)
    assert dlib_model.template == "dlib150"
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.no_grad():
        out = dlib_model(x)
        feats = dlib_model.features(x)
        assert out.shape == (2, 128)
        assert feats.shape == (2, 256)
        torch.testing.assert_close(dlib_model.embed_from_features(feats), out)
        # channels-last input must give the same numbers (no layout assumptions inside).
        torch.testing.assert_close(dlib_model(x.contiguous(memory_format=torch.channels_last)), out)


def test_dlib_torch_state_dict_roundtrip(dlib_model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "dlib_port.pt"
    torch.save(dlib_model.state_dict(), path)
    reloaded = load_backbone("dlib_resnet", weights=path)
    x = torch.rand(1, 3, 150, 150) * 255
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), dlib_model(x))


def test_iresnet50_keys_match_insightface(r50: torch.nn.Module) -> None:
    keys = set(r50.state_dict())
    missing = [k for k in INSIGHTFACE_R50_KEYS if k not in keys]
    assert not missing
    # No extra modules with parameters beyond insightface's naming scheme.
    top = {k.split(".")[0] for k in keys}
    assert top == {
        "conv1",
        "bn1",
        "prelu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "bn2",
        "fc",
        "features",
    }
    # stage depths [3, 4, 14, 3]
    assert "layer4.3.bn1.weight" not in keys and "layer3.14.bn1.weight" not in keys
    assert tuple(r50.state_dict()["fc.weight"].shape) == (512, 512 * 7 * 7)


def test_iresnet50_contract_and_shapes(r50: torch.nn.Module) -> None:
    assert (r50.embedding_dim, r50.input_size, r50.template) == (512, (112, 112), "arcface112")
    x = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        out = r50(x)
        feats = r50.features(x)
        assert out.shape == (2, 512)
        # random init must stay numerically sane in eval mode (downstream smoke tests use it)
        assert out.isfinite().all() and out.abs().max() < 1e3
        assert feats.shape == (2, 512 * 7 * 7)
        torch.testing.assert_close(r50.embed_from_features(feats), out)


def test_iresnet100_structure() -> None:
    model = iresnet("iresnet100")
    keys = set(model.state_dict())
    assert {"layer2.12.conv2.weight", "layer3.29.bn3.running_var", "features.running_mean"} <= keys
    # stage depths [3, 13, 30, 3]
    assert "layer2.13.conv1.weight" not in keys and "layer3.30.conv1.weight" not in keys
    n_params = sum(p.numel() for p in model.parameters())
    assert 65.0e6 < n_params < 65.3e6  # insightface r100: ~65.2M parameters


def test_random_init_warns() -> None:
    with pytest.warns(RandomWeightsWarning, match="random"):
        load_backbone("iresnet50")


def test_checkpoint_missing_key_rejected(r50: torch.nn.Module, tmp_path: Path) -> None:
    state = r50.state_dict()
    del state["layer3.5.conv1.weight"]
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing.*layer3\.5\.conv1\.weight"):
        load_backbone("iresnet50", weights=path)


def test_checkpoint_shape_mismatch_rejected(tmp_path: Path) -> None:
    state = load_backbone("dlib_resnet").state_dict()
    state["fc.weight"] = torch.zeros(64, 256)
    state["bogus.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"unexpected.*bogus\.weight.*fc\.weight: checkpoint \(64, 256\)"
    ):
        load_backbone("dlib_resnet", weights=path)


def test_missing_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone("iresnet50", weights=missing)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone("dlib_resnet", weights=missing)


def test_unknown_backbone_lists_available() -> None:
    assert available_backbones() == ["dlib_resnet", "faceres", "iresnet100", "iresnet50"]
    with pytest.raises(ValueError, match="dlib_resnet.*faceres.*iresnet100.*iresnet50"):
        load_backbone("resnet9000")
