"""faceres port: equal to an independent execution of the TFJS graph on real faces.

The reference below is a small numpy interpreter written for this test: it parses
``faceres.json`` and decodes ``faceres.bin`` itself (no aikd.models.tfjs), then runs the
graph's nodes in topological order, each op by its TensorFlow definition, in float64.
It shares no code with the port, so a wrong transpose, padding side or folded constant in
either one shows up as a difference.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aikd.models.faceres import (
    FaceResNet,
    FaceresWeightsMissing,
    build_faceres,
    default_faceres_weights_path,
    faceres_cache_dir,
)
from aikd.models.tfjs import read_weights

LFW = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lfw"
FACES = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
         "Abel_Pacheco/Abel_Pacheco_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg"]
OUTPUT = "global_pooling/Mean"


def _load_reference_graph(model_json: Path) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    meta = json.loads(model_json.read_text())
    nodes = {n["name"]: n for n in meta["modelTopology"]["node"]}
    consts: dict[str, np.ndarray] = {}
    for group in meta["weightsManifest"]:
        data = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        pos = 0
        for w in group["weights"]:
            dtype = np.dtype((w.get("quantization") or {}).get("dtype", w["dtype"]))
            size = int(np.prod(w["shape"])) if w["shape"] else 1
            arr = np.frombuffer(data[pos:pos + size * dtype.itemsize], dtype=dtype)
            consts[w["name"]] = arr.astype(np.float64).reshape(w["shape"])
            pos += size * dtype.itemsize
    return nodes, consts


def _same_pad(x: np.ndarray, kh: int, kw: int, s: int) -> np.ndarray:
    """TF 'SAME': out = ceil(in / s); pad_total = max((out-1)s + k - in, 0), extra after."""
    pads = [(0, 0)]
    for n, k in ((x.shape[1], kh), (x.shape[2], kw)):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)])


def _conv(x: np.ndarray, w: np.ndarray, node: dict, depthwise: bool) -> np.ndarray:
    """NHWC Conv2D (w: kh,kw,cin,cout) or DepthwiseConv2dNative (w: kh,kw,cin,1)."""
    attr = node["attr"]
    assert base64.b64decode(attr["padding"]["s"]) == b"SAME"
    s = int(attr["strides"]["list"]["i"][1])
    kh, kw = w.shape[:2]
    xp = _same_pad(x, kh, kw, s)
    oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
    out = np.zeros((x.shape[0], oh, ow, w.shape[2] if depthwise else w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :]
            out += patch * w[i, j, :, 0] if depthwise else patch @ w[i, j]
    return out


def reference_descriptor(model_json: Path, images_nhwc: np.ndarray) -> np.ndarray:
    """Execute the graph up to ``global_pooling/Mean`` by TF op semantics, in float64."""
    nodes, consts = _load_reference_graph(model_json)
    values: dict[str, np.ndarray] = {}

    def run(name: str) -> np.ndarray:  # depth-first = a topological order of the ancestors
        name = name.split(":")[0]
        if name in values:
            return values[name]
        node = nodes[name]
        op, ins = node["op"], [run(i) for i in node.get("input", [])]
        if op == "Placeholder":
            out = images_nhwc.astype(np.float64)
        elif op == "Const":
            out = consts[name]
        elif op in ("Conv2D", "DepthwiseConv2dNative"):
            out = _conv(ins[0], ins[1], node, op == "DepthwiseConv2dNative")
        elif op in ("Add", "AddV2"):
            out = ins[0] + ins[1]
        elif op == "Mul":
            out = ins[0] * ins[1]
        elif op == "Relu":
            out = np.maximum(ins[0], 0.0)
        elif op == "Minimum":
            out = np.minimum(ins[0], ins[1])
        elif op == "Maximum":
            out = np.maximum(ins[0], ins[1])
        elif op == "Mean":
            keep = node["attr"].get("keep_dims", {}).get("b", False)
            out = ins[0].mean(axis=tuple(int(a) for a in ins[1]), keepdims=keep)
        else:
            raise NotImplementedError(op)
        values[name] = out
        return out

    return run(OUTPUT)


def _faces() -> np.ndarray:
    crops = []
    for f in FACES:
        img = cv2.cvtColor(cv2.imread(str(LFW / "images" / f)), cv2.COLOR_BGR2RGB)
        c = img[22:128, 22:128]  # centre ~70 % of the 150 px image
        crops.append(cv2.resize(c, (224, 224), interpolation=cv2.INTER_LINEAR))
    return np.stack(crops)


def test_port_equals_reference_interpreter() -> None:
    weights, model_json = default_faceres_weights_path(), faceres_cache_dir() / "faceres.json"
    if not weights.is_file() or not model_json.is_file():
        pytest.skip(f"faceres weights absent ({weights}); run bash scripts/fetch_faceres.sh")
    if not (LFW / "images").is_dir():
        pytest.skip(f"LFW images not found at {LFW}")
    faces = _faces()
    model = build_faceres()
    assert (model.embedding_dim, model.input_size) == (1024, (224, 224))
    with torch.inference_mode():
        got = model(torch.from_numpy(faces).float().permute(0, 3, 1, 2)).numpy()
    want = reference_descriptor(model_json, faces)
    assert got.shape == want.shape == (len(FACES), 1024)
    # Relative to each descriptor's largest entry; elementwise ratios of near-zero
    # averages of ReLU outputs would measure nothing but rounding.
    rel = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    print(f"faceres port vs reference: max relative difference {rel.max():.2e}")
    assert rel.max() <= 1e-3
    cos = (got / np.linalg.norm(got, axis=1, keepdims=True)) @ (
        want / np.linalg.norm(want, axis=1, keepdims=True)).T
    assert np.diag(cos).min() > 1 - 1e-6


def test_missing_weights_name_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(FaceresWeightsMissing, match="fetch_faceres.sh"):
        build_faceres(tmp_path / "absent.pt")


def test_random_port_runs_at_224() -> None:
    model = FaceResNet().eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 224, 224) * 255)
    assert out.shape == (2, 1024)


def test_tfjs_reader_dequantises(tmp_path: Path) -> None:
    a = np.array([[1.5, -2.0], [0.25, 65504.0]], dtype=np.float16)
    q = np.array([0, 10, 255], dtype=np.uint8)
    n = np.array([7, -3], dtype=np.int32)
    (tmp_path / "w.bin").write_bytes(a.tobytes() + q.tobytes() + n.tobytes())
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": "a", "shape": [2, 2], "dtype": "float32",
         "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        {"name": "q", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "n", "shape": [2], "dtype": "int32"},
    ]}]
    w = read_weights(manifest, tmp_path)
    np.testing.assert_array_equal(w["a"], a.astype(np.float32))
    np.testing.assert_allclose(w["q"], [-1.0, 4.0, 126.5])
    np.testing.assert_array_equal(w["n"], n)
