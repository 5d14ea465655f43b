"""qforge's block kernels (through the ctypes C API) against gguf-py's quants module, the oracle.

- dequantize: random blocks (random bytes with finite f16 scale fields) must decode bit-for-bit
  like gguf.quants.dequantize, for every type both implement.
- quantize: for the types gguf-py can quantize, qforge must produce the same bytes, on normal data
  and on edge cases (zeros, a huge value, negative extrema, ties, exact half steps).
- real tensors of the default model (first rows of each quantized type) dequantize identically.
"""

import ctypes
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

CAPI = os.environ.get("QFORGE_CAPI", "")
if not CAPI or not os.path.exists(CAPI):
    pytest.skip("QFORGE_CAPI (libqforge_c.so) not available", allow_module_level=True)

lib = ctypes.CDLL(CAPI)
lib.qforge_last_error.restype = ctypes.c_char_p
lib.qforge_row_bytes.restype = ctypes.c_int64
lib.qforge_row_bytes.argtypes = [ctypes.c_uint32, ctypes.c_int64]
lib.qforge_dequantize_row.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
lib.qforge_quantize_row.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
lib.qforge_quantize_rows.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                     ctypes.c_void_p, ctypes.c_void_p]
lib.qforge_dot_row.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_float)]

DEQUANT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K,
                 T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]
QUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]

# Byte offsets of the f16 scale fields inside one block, per type (from gguf-py's layouts).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}


def check(rc):
    if rc != 0:
        raise RuntimeError(lib.qforge_last_error().decode())


def sizes(qtype):
    return gguf.GGML_QUANT_SIZES[qtype]


def qf_dequantize(qtype, raw: np.ndarray, n: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty(n, dtype=np.float32)
    check(lib.qforge_dequantize_row(int(qtype), raw.ctypes.data, n, out.ctypes.data))
    return out


def qf_quantize(qtype, x: np.ndarray, importance=None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    nbytes = lib.qforge_row_bytes(int(qtype), x.size)
    assert nbytes >= 0, lib.qforge_last_error()
    out = np.zeros(nbytes, dtype=np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    check(lib.qforge_quantize_row(int(qtype), x.ctypes.data, x.size, out.ctypes.data,
                                  None if imp is None else imp.ctypes.data))
    return out


def random_blocks(qtype, n_blocks, rng) -> np.ndarray:
    """Random bytes, with every f16 field replaced by a finite random half."""
    bs, ts = sizes(qtype)
    if qtype == T.F32:
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8)
    if qtype in (T.F16, T.BF16):
        raw = rng.integers(0, 2**16, n_blocks, dtype=np.uint16)
        if qtype == T.F16:  # avoid Inf/NaN, whose payload handling is not what we test here
            raw = np.where((raw & 0x7C00) == 0x7C00, raw & 0xBFFF, raw)
        else:
            raw = np.where((raw & 0x7F80) == 0x7F80, raw & 0xBFFF, raw)
        return raw.view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        halves = rng.standard_normal(n_blocks).astype(np.float32) * np.float32(0.05)
        # also some subnormal and zero / negative-zero scales
        halves[::7] = np.float32(3e-6)
        halves[::11] = np.float32(-0.0)
        raw[:, off:off + 2] = halves.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", DEQUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks_match_gguf(qtype):
    rng = np.random.default_rng(1234 + int(qtype))
    bs, ts = sizes(qtype)
    n_blocks = 64 if bs > 1 else 4096
    raw = random_blocks(qtype, n_blocks, rng)
    n = n_blocks * bs
    want = quants.dequantize(raw.reshape(1, -1), qtype).reshape(-1).astype(np.float32)
    got = qf_dequantize(qtype, raw, n)
    bad = np.flatnonzero(want.view(np.uint32) != got.view(np.uint32))
    assert bad.size == 0, f"{qtype.name}: {bad.size} mismatches, first at {bad[:5]}: " \
                          f"want {want[bad[:5]]} got {got[bad[:5]]}"


def quantize_cases(bs, rng):
    n = 8 * max(bs, 32) if bs > 1 else 256
    normal = rng.standard_normal(n).astype(np.float32)
    zeros = np.zeros(n, dtype=np.float32)
    huge = normal.copy()
    huge[5] = np.float32(1e30)  # scale overflows F16 -> inf
    big = normal.copy()
    big[3] = np.float32(6e4)
    neg = normal.copy()
    neg[::37] = -np.abs(normal).max() * 3  # negative extrema (and ties among them)
    tie_abs = normal.copy()
    tie_abs[0], tie_abs[1] = np.float32(-4.0), np.float32(4.0)  # |max| tie of opposite signs
    # exact half steps of the Q4/Q5/Q8 grids: x = max * k / (2 * 8) etc.
    steps = (rng.integers(-16, 17, n).astype(np.float32) / np.float32(2.0))
    steps[::32] = np.float32(8.0)
    ints = rng.integers(-127, 128, n).astype(np.float32)
    ints[::32] = np.float32(127.0)
    halfway = (rng.integers(-254, 255, n).astype(np.float32) + np.float32(0.5)) / np.float32(2.0)
    small = normal * np.float32(1e-3)
    return {"normal": normal, "zeros": zeros, "huge": huge, "big": big, "neg": neg,
            "tie_abs": tie_abs, "steps": steps, "ints": ints, "halfway": halfway, "small": small}


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_quantize_matches_gguf(qtype):
    rng = np.random.default_rng(99 + int(qtype))
    bs, _ = sizes(qtype)
    for name, x in quantize_cases(bs, rng).items():
        with np.errstate(all="ignore"):
            want = np.asarray(quants.quantize(x.reshape(1, -1), qtype)).view(np.uint8).reshape(-1)
        got = qf_quantize(qtype, x)
        bad = np.flatnonzero(want != got)
        assert bad.size == 0, f"{qtype.name}/{name}: {bad.size} byte mismatches, first at {bad[:8]}"


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_quantize_rows_matches_row_by_row(qtype):
    rng = np.random.default_rng(7)
    bs, _ = sizes(qtype)
    rows, per_row = 9, 4 * max(bs, 32)
    x = rng.standard_normal((rows, per_row)).astype(np.float32)
    want = np.concatenate([qf_quantize(qtype, r) for r in x])
    nbytes = lib.qforge_row_bytes(int(qtype), per_row) * rows
    got = np.zeros(nbytes, dtype=np.uint8)
    check(lib.qforge_quantize_rows(int(qtype), x.ctypes.data, rows, per_row, got.ctypes.data, None))
    assert np.array_equal(want, got)


def test_bad_sizes_are_errors():
    x = np.zeros(33, dtype=np.float32)
    out = np.zeros(64, dtype=np.uint8)
    assert lib.qforge_quantize_row(int(T.Q4_0), x.ctypes.data, 33, out.ctypes.data, None) < 0
    assert b"block size" in lib.qforge_last_error()
    assert lib.qforge_row_bytes(int(T.Q4_K), 100) < 0
    assert lib.qforge_row_bytes(12345, 32) < 0
    assert lib.qforge_dequantize_row(int(T.IQ2_XXS), out.ctypes.data, 256, out.ctypes.data) < 0


# ---- real tensors of the default model ---------------------------------------------------------
# gguf.GGUFReader parses every metadata value (a 262k-token vocabulary here) and takes a minute on
# a loaded CI machine, so the tensor directory is read with the few lines below; set
# QFORGE_SLOW_TESTS=1 to use GGUFReader instead. The oracle is gguf.quants.dequantize either way.

MODEL = os.environ.get("QFORGE_DEFAULT_MODEL", "")
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _tensor_directory(path):
    """[(name, ggml type, dims, absolute data offset)] from a GGUF v2/v3 header."""
    import struct
    with open(path, "rb") as f:
        buf = memoryview(f.read(64 << 20))  # the header of the default model is ~5 MiB
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("Q")
        pos += n
        return bytes(buf[pos - n:pos]).decode()

    def skip_value(vtype):
        nonlocal pos
        if vtype == 8:
            string()
        elif vtype == 9:
            etype, count = take("IQ")
            if etype in _SCALAR_SIZES:
                pos += _SCALAR_SIZES[etype] * count
            else:
                for _ in range(count):
                    skip_value(etype)
        else:
            pos += _SCALAR_SIZES[vtype]

    magic, _version, n_tensors, n_kv = take("4sIQQ")
    assert magic == b"GGUF"
    alignment = 32
    for _ in range(n_kv):
        key = string()
        (vtype,) = take("I")
        if key == "general.alignment":
            (alignment,) = take("I")
        else:
            skip_value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = take("I")
        dims = take("Q" * n_dims)
        ttype, offset = take("IQ")
        infos.append((name, ttype, dims, offset))
    data_start = (pos + alignment - 1) // alignment * alignment
    return [(n, t, d, data_start + o) for n, t, d, o in infos]


def _first_rows(path, n_rows=4):
    """{qtype: (tensor name, raw bytes of its first rows)} for the first tensor of each type."""
    out = {}
    if os.environ.get("QFORGE_SLOW_TESTS") == "1":
        for t in gguf.GGUFReader(path).tensors:
            qtype = T(t.tensor_type)
            if qtype not in out:
                data = np.asarray(t.data)
                rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
                out[qtype] = (t.name, np.ascontiguousarray(rows[:n_rows]).view(np.uint8))
        return out
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for name, ttype, dims, offset in _tensor_directory(path):
        qtype = T(ttype)
        if qtype in out:
            continue
        row_bytes = quants.quant_shape_to_byte_shape((dims[0],), qtype)[0]
        rows = min(n_rows, int(np.prod(dims[1:])) if len(dims) > 1 else 1)
        raw = np.array(mm[offset:offset + rows * row_bytes]).reshape(rows, row_bytes)
        out[qtype] = (name, raw)
    return out


@pytest.mark.skipif(not MODEL or not os.path.exists(MODEL), reason="default model not available")
def test_default_model_tensors_dequantize_like_gguf():
    seen = _first_rows(MODEL)
    for needed in (T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K):
        assert needed in seen, f"default model has no {needed.name} tensor? saw {list(seen)}"
    for qtype, (name, raw) in seen.items():
        if qtype not in DEQUANT_TYPES:
            continue
        want = quants.dequantize(raw, qtype).astype(np.float32).reshape(-1)
        got = qf_dequantize(qtype, raw.reshape(-1), want.size)
        assert same_bits(want, got), f"{name} ({qtype.name}) differs"
        assert np.isfinite(got).all() and np.abs(got).max() > 0, name
