"""Reading a TensorFlow.js graph model (``model.json`` + ``.bin`` shards) without TensorFlow.

A TFJS graph model is a JSON file holding the graph (``modelTopology.node``: name, op,
inputs, attributes) and a weights manifest; the weights themselves are the byte
concatenation of the manifest's shard files, in manifest order. Quantised weights
(float16, or uint8/uint16 with an affine ``scale``/``min``) are dequantised to float32
here, so a port only ever sees plain named numpy arrays.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class TfjsFormatError(ValueError):
    """The files do not form a TFJS graph model this reader understands."""


_PLAIN_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANT_DTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


@dataclass(frozen=True)
class TfjsNode:
    """One graph node: its op, input node names (``name:k`` suffixes kept) and raw attrs."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def attr_ints(self, key: str) -> list[int]:
        """An ``{"list": {"i": [...]}}`` attribute (strides, dilations) as ints."""
        return [int(v) for v in self.attrs.get(key, {}).get("list", {}).get("i", [])]

    def attr_str(self, key: str) -> str:
        """An ``{"s": base64}`` attribute (padding, data_format) decoded to text."""
        raw = self.attrs.get(key, {}).get("s")
        return base64.b64decode(raw).decode() if raw is not None else ""

    def attr_bool(self, key: str) -> bool:
        return bool(self.attrs.get(key, {}).get("b", False))


@dataclass(frozen=True)
class TfjsGraph:
    """Nodes in file order, dequantised weights by name, and the model's signature."""

    nodes: list[TfjsNode]
    weights: dict[str, np.ndarray]
    signature: dict[str, Any]

    def node(self, name: str) -> TfjsNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def _decode_one(spec: dict[str, Any], buf: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """Decode one manifest entry starting at byte ``offset``; return (array, next offset)."""
    shape = [int(d) for d in spec.get("shape", [])]
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    if quant is not None:
        qtype = _QUANT_DTYPES.get(quant.get("dtype", ""))
        if qtype is None:
            raise TfjsFormatError(f"{spec['name']}: unsupported quantization {quant}")
        raw = np.frombuffer(buf, dtype=qtype, count=count, offset=offset)
        if qtype is np.float16:
            values = raw.astype(np.float32)
        else:
            values = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
        out_dtype = _PLAIN_DTYPES.get(quant.get("original_dtype", spec["dtype"]), np.float32)
        values = values.astype(out_dtype)
    else:
        dtype = _PLAIN_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise TfjsFormatError(f"{spec['name']}: unsupported dtype {spec['dtype']!r}")
        qtype = dtype
        values = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).copy()
    nbytes = count * np.dtype(qtype).itemsize
    return values.reshape(shape), offset + nbytes


def read_weights(manifest: list[dict[str, Any]], folder: Path) -> dict[str, np.ndarray]:
    """Dequantised weights of every manifest group, read from the shard files in ``folder``."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        buf, offset = memoryview(data), 0
        for spec in group["weights"]:
            if offset > len(data):
                raise TfjsFormatError(f"{spec['name']}: shards end before this weight")
            try:
                weights[spec["name"]], offset = _decode_one(spec, buf, offset)
            except ValueError as exc:
                if isinstance(exc, TfjsFormatError):
                    raise
                raise TfjsFormatError(f"{spec['name']}: truncated shard data ({exc})") from exc
        if offset != len(data):
            raise TfjsFormatError(
                f"shards {group['paths']}: {len(data) - offset} bytes left after the last weight"
            )
    return weights


def read_tfjs_graph(model_json: str | Path) -> TfjsGraph:
    """Parse a TFJS graph model; the ``.bin`` shards are looked up next to ``model_json``."""
    path = Path(model_json)
    try:
        meta = json.loads(path.read_text())
        raw_nodes = meta["modelTopology"]["node"]
        manifest = meta["weightsManifest"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TfjsFormatError(f"{path}: not a TFJS graph model ({exc})") from exc
    nodes = [
        TfjsNode(n["name"], n["op"], tuple(n.get("input", [])), dict(n.get("attr", {})))
        for n in raw_nodes
    ]
    weights = read_weights(manifest, path.parent)
    return TfjsGraph(nodes, weights, dict(meta.get("signature", {})))


__all__ = ["TfjsFormatError", "TfjsGraph", "TfjsNode", "read_tfjs_graph", "read_weights"]
