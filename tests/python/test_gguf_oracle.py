"""GGUF I/O against the `gguf` Python package (llama.cpp's gguf-py) as the oracle.

(a) gguf.GGUFWriter writes files with every metadata type and several tensor types/alignments;
    `qforge inspect --json --all-metadata` must report the same values, tensors and offsets that
    the writer was given and that gguf.GGUFReader reads back.
(b) `qforge gguf-rewrite` copies files (small synthetic ones and the real stories260K / Gemma 3
    270M models) through qforge's reader and writer, possibly re-aligned; gguf.GGUFReader must read
    the same metadata and tensor bytes from the copy as from the original.
"""
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import GGUFValueType as VT  # noqa: E402

QFORGE = os.environ.get("QFORGE_BIN", "build/release/qforge")
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
DEFAULT_MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", "models/gemma-3-270m-q4_k_m.gguf"))
STORIES = SHARED / "stories260K" / "stories260K.gguf"


def qforge(*args, check=True):
    proc = subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"qforge {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def inspect_json(path):
    return json.loads(qforge("inspect", "--json", "--all-metadata", path).stdout)


# Typed metadata given to GGUFWriter: key -> (value, type, sub_type for arrays).
METADATA = {
    "t.u8": (200, VT.UINT8, None),
    "t.i8": (-100, VT.INT8, None),
    "t.u16": (60000, VT.UINT16, None),
    "t.i16": (-30000, VT.INT16, None),
    "t.u32": (4_000_000_000, VT.UINT32, None),
    "t.i32": (-2_000_000_000, VT.INT32, None),
    "t.f32": (0.1, VT.FLOAT32, None),
    "t.f32_tiny": (1e-6, VT.FLOAT32, None),
    "t.bool_t": (True, VT.BOOL, None),
    "t.bool_f": (False, VT.BOOL, None),
    "t.str": ("héllo ▁world 😀", VT.STRING, None),
    "t.str_empty": ("", VT.STRING, None),
    "t.u64": (18_000_000_000_000_000_000, VT.UINT64, None),
    "t.i64": (-9_000_000_000_000_000_000, VT.INT64, None),
    "t.f64": (math.pi, VT.FLOAT64, None),
    "t.arr_str": (["<unk>", "", "▁the", "日本"], VT.ARRAY, VT.STRING),
    "t.arr_i32": ([1, -2, 3, 2_000_000_000], VT.ARRAY, VT.INT32),
    "t.arr_u8": ([0, 1, 255], VT.ARRAY, VT.UINT8),
    "t.arr_i16": ([-5, 5], VT.ARRAY, VT.INT16),
    "t.arr_u64": ([2**63, 1], VT.ARRAY, VT.UINT64),
    "t.arr_i64": ([-(2**62), 7], VT.ARRAY, VT.INT64),
    "t.arr_f32": ([0.5, -1.25, 3.4e38, 1e-3], VT.ARRAY, VT.FLOAT32),
    "t.arr_f64": ([0.1, -0.2], VT.ARRAY, VT.FLOAT64),
    "t.arr_bool": ([True, False, True], VT.ARRAY, VT.BOOL),
    "t.nested": ([[1, 2], [3], [4, 5, 6]], VT.ARRAY, None),
    "t.nested_str": ([["a", "b"], ["c"]], VT.ARRAY, None),
}

FLOAT_TYPES = {VT.FLOAT32: np.float32, VT.FLOAT64: np.float64}


def expected_value(value, vtype, sub_type):
    """The value as the file stores it (floats rounded to their width)."""
    if vtype in FLOAT_TYPES:
        return float(FLOAT_TYPES[vtype](value))
    if vtype == VT.ARRAY and sub_type in FLOAT_TYPES:
        return [float(FLOAT_TYPES[sub_type](v)) for v in value]
    return value


def element_type_name(value, vtype, sub_type):
    if sub_type is not None:
        return sub_type.name
    return VT.get_type(value[0]).name


def flatten(v):
    if isinstance(v, list):
        return [x for item in v for x in flatten(item)]
    return [v]


def oracle_contents(field):
    """gguf.GGUFReader's value for a field (it flattens nested arrays)."""
    return field.contents()


def make_tensors(rng):
    """(name, data, raw_dtype) for GGUFWriter.add_tensor; quantized ones as raw block bytes."""
    tensors = [
        ("f32.vec", rng.standard_normal(7).astype(np.float32), None),
        ("f16.mat", rng.standard_normal((3, 5)).astype(np.float16), None),
        ("i32.ids", np.arange(6, dtype=np.int32).reshape(2, 3), None),
    ]
    for name, qtype, rows, cols in [("q8_0.mat", QT.Q8_0, 3, 64), ("q4_0.mat", QT.Q4_0, 2, 32),
                                    ("q4_k.mat", QT.Q4_K, 2, 256), ("q6_k.t3", QT.Q6_K, 1, 512),
                                    ("q5_0.mat", QT.Q5_0, 5, 32)]:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
        tensors.append((name, raw, qtype))
    tensors.append(("bf16.raw", rng.integers(0, 2**16, size=(4, 2), dtype=np.uint16).view(np.uint8)
                    .reshape(4, 4), QT.BF16))
    return tensors


def write_with_gguf_py(path, alignment):
    rng = np.random.default_rng(alignment)
    w = gguf.GGUFWriter(str(path), arch="testarch")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (value, vtype, sub_type) in METADATA.items():
        w.add_key_value(key, value, vtype, sub_type=sub_type)
    tensors = make_tensors(rng)
    for name, data, raw_dtype in tensors:
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


ALIGNMENTS = [None, 1, 8, 64, 4096]


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_inspect_reads_gguf_py_files(tmp_path, alignment):
    path = tmp_path / f"py_{alignment}.gguf"
    write_with_gguf_py(path, alignment)
    oracle = gguf.GGUFReader(str(path))
    report = inspect_json(path)

    assert report["format"] == "gguf"
    assert report["gguf_version"] == 3
    assert report["architecture"] == "testarch"
    assert report["alignment"] == oracle.alignment == (alignment or 32)
    assert report["data_offset"] == oracle.data_offset
    assert report["file_size"] == path.stat().st_size

    md = report["metadata"]
    assert list(md) == list(oracle.fields)[3:]  # oracle lists version/counts as pseudo-fields first
    for key, (value, vtype, sub_type) in METADATA.items():
        entry = md[key]
        field = oracle.fields[key]
        assert entry["type"] == vtype.name == field.types[0].name, key
        if vtype == VT.ARRAY:
            assert entry["element_type"] == element_type_name(value, vtype, sub_type), key
            assert entry["count"] == len(value), key
            assert entry["truncated"] is False
        want = expected_value(value, vtype, sub_type)
        assert entry["value"] == want, key
        got_oracle = oracle_contents(field)
        if isinstance(got_oracle, list):
            assert flatten(entry["value"]) == flatten(got_oracle), key
        else:
            assert entry["value"] == got_oracle, key

    assert report["tensor_count"] == len(oracle.tensors)
    for t, o in zip(report["tensors"], oracle.tensors, strict=True):
        assert t["name"] == o.name
        assert t["type"] == o.tensor_type.name
        assert t["shape"] == [int(d) for d in o.shape]
        assert t["elements"] == o.n_elements
        assert t["bytes"] == o.n_bytes
        assert t["file_offset"] == o.data_offset
        assert t["offset"] == o.data_offset - oracle.data_offset
        assert t["offset"] % oracle.alignment == 0
    assert report["parameter_count"] == sum(o.n_elements for o in oracle.tensors)
    assert report["tensor_bytes"] == sum(o.n_bytes for o in oracle.tensors)


def test_inspect_summarizes_long_arrays(tmp_path):
    path = tmp_path / "long.gguf"
    w = gguf.GGUFWriter(str(path), arch="x")
    w.add_key_value("long", list(range(1000)), VT.ARRAY, sub_type=VT.INT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    entry = json.loads(qforge("inspect", "--json", path).stdout)["metadata"]["long"]
    assert entry["count"] == 1000
    assert entry["truncated"] is True
    assert entry["value"] == list(range(len(entry["value"])))
    assert 0 < len(entry["value"]) < 1000
    full = inspect_json(path)["metadata"]["long"]
    assert full["value"] == list(range(1000)) and full["truncated"] is False


def field_bytes(field):
    return [p.tobytes() for p in field.parts]


def assert_same_gguf(original, copy, alignment):
    a = gguf.GGUFReader(str(original))
    b = gguf.GGUFReader(str(copy))
    assert b.alignment == alignment
    keys_a = [k for k in a.fields if k != "general.alignment"]
    keys_b = [k for k in b.fields if k != "general.alignment"]
    assert keys_a == keys_b
    for key in keys_a:
        if key.startswith("GGUF."):
            continue  # header pseudo-fields (version, counts) - compared below
        fa, fb = a.fields[key], b.fields[key]
        assert fa.types == fb.types, key
        # Raw parts include the key, type tags, lengths and payload: byte-identical kvs.
        assert field_bytes(fa) == field_bytes(fb), key
    assert b.fields["GGUF.version"].contents() == 3
    assert len(a.tensors) == len(b.tensors)
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.name == tb.name
        assert ta.tensor_type == tb.tensor_type
        assert list(ta.shape) == list(tb.shape)
        assert (tb.data_offset - b.data_offset) % alignment == 0
        assert np.asarray(ta.data).tobytes() == np.asarray(tb.data).tobytes(), ta.name


@pytest.mark.parametrize("alignment", [1, 16, 32, 4096])
def test_rewrite_synthetic(tmp_path, alignment):
    src = tmp_path / "src.gguf"
    write_with_gguf_py(src, 64)
    dst = tmp_path / f"dst_{alignment}.gguf"
    qforge("gguf-rewrite", src, dst, "--alignment", alignment)
    assert_same_gguf(src, dst, alignment)


def real_files():
    return [pytest.param(STORIES, id="stories260K"), pytest.param(DEFAULT_MODEL, id="gemma3-270m")]


def json_value_as_oracle(entry):
    """What gguf.GGUFReader's contents() returns for a qforge metadata entry (flat lists)."""
    return flatten(entry["value"]) if entry["type"] == "ARRAY" else entry["value"]


def assert_copy_matches_original(original, copy, alignment):
    """One oracle load (the copy) for big real files: its metadata and tensor bytes must equal the
    original's, located through `qforge inspect` (whose reading of these files test_inspect.py
    checks against gguf.GGUFReader)."""
    report = inspect_json(original)
    orig_bytes = original.read_bytes()
    b = gguf.GGUFReader(str(copy))
    assert b.alignment == alignment
    keys = [k for k in b.fields if not k.startswith("GGUF.") and k != "general.alignment"]
    assert keys == [k for k in report["metadata"] if k != "general.alignment"]
    for key in keys:
        entry = report["metadata"][key]
        field = b.fields[key]
        assert field.types[0].name == entry["type"], key
        got = field.contents()
        assert (flatten(got) if isinstance(got, list) else got) == json_value_as_oracle(entry), key
    assert [t.name for t in b.tensors] == [t["name"] for t in report["tensors"]]
    for tb, t in zip(b.tensors, report["tensors"], strict=True):
        assert tb.tensor_type.name == t["type"]
        assert [int(d) for d in tb.shape] == t["shape"]
        assert (tb.data_offset - b.data_offset) % alignment == 0
        start = t["file_offset"]
        assert np.asarray(tb.data).tobytes() == orig_bytes[start:start + t["bytes"]], tb.name


@pytest.mark.parametrize("path", real_files())
def test_rewrite_real_files(tmp_path, path):
    if not path.exists():
        pytest.skip(f"{path} not present")
    same = tmp_path / "same.gguf"
    qforge("gguf-rewrite", path, same)
    # Without --alignment the copy keeps the original layout: byte-identical up to end padding.
    orig_bytes = path.read_bytes()
    copy_bytes = same.read_bytes()
    n = min(len(orig_bytes), len(copy_bytes))
    assert orig_bytes[:n] == copy_bytes[:n]
    assert copy_bytes[n:].strip(b"\0") == b"" and orig_bytes[n:].strip(b"\0") == b""
    realigned = tmp_path / "realigned.gguf"
    qforge("gguf-rewrite", path, realigned, "--alignment", 64)
    if path.stat().st_size < 16 << 20:
        assert_same_gguf(path, realigned, 64)  # both read by the oracle
    else:
        assert_copy_matches_original(path, realigned, 64)
