"""qforge's safetensors reader and writer against the reference `safetensors` package.

(a) Files written by the reference (safetensors.numpy.save_file, and safetensors.serialize for
    BF16 / F8 given as raw bytes) are read by qforge identically: `qforge st-rewrite --list-json`
    reports each tensor's dtype, shape and where its bytes are, and those bytes must equal what
    safetensors.deserialize returns.
(b) Files qforge writes (`qforge st-rewrite IN OUT`) are read by safe_open / deserialize with the
    same tensor bytes, shapes, dtypes and metadata.
Sharded checkpoints (index + shards as transformers writes them) and malformed files that the
reference rejects are covered too.
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import TensorSpec, deserialize, safe_open, serialize
from safetensors.numpy import save_file

QFORGE = os.environ.get("QFORGE_BIN")
pytestmark = pytest.mark.skipif(not QFORGE, reason="QFORGE_BIN not set")

METADATA = {"format": "pt", "note": "h\u00e9llo \"quoted\" \\ {json}"}


def run_qforge(*args, check=True):
    proc = subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"qforge {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def listing(path):
    return json.loads(run_qforge("st-rewrite", path, "--list-json").stdout)


def numpy_tensors():
    rng = np.random.default_rng(1234)
    t = {
        "f64": rng.standard_normal((3, 5)),
        "f32": rng.standard_normal((4, 7)).astype(np.float32),
        "f16": rng.standard_normal((9,)).astype(np.float16),
        "i64": rng.integers(-2**62, 2**62, (2, 3), dtype=np.int64),
        "u64": rng.integers(0, 2**63, (5,), dtype=np.uint64),
        "i32": rng.integers(-2**31, 2**31, (3, 3), dtype=np.int32),
        "u32": rng.integers(0, 2**32, (4,), dtype=np.uint32),
        "i16": rng.integers(-2**15, 2**15, (6,), dtype=np.int16),
        "u16": rng.integers(0, 2**16, (2, 2, 2), dtype=np.uint16),
        "i8": rng.integers(-128, 128, (11,), dtype=np.int8),
        "u8": rng.integers(0, 256, (13,), dtype=np.uint8),
        "bool": rng.integers(0, 2, (7,)).astype(bool),
        "scalar": np.array(2.5, dtype=np.float32),
        "scalar.i64": np.array(-7, dtype=np.int64),
        "empty": np.zeros((0,), dtype=np.float32),
        "empty.3d": np.zeros((2, 0, 5), dtype=np.int16),
        "model.layers.0.big": rng.standard_normal((64, 96)).astype(np.float32),
        "with space/and.ünïcode": rng.standard_normal((2,)).astype(np.float32),
    }
    # Non-finite values must survive byte for byte.
    t["f32"][0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    return t


def raw_tensors():
    """BF16 and F8 tensors given as raw bytes (numpy has no such dtypes)."""
    rng = np.random.default_rng(99)
    return {
        "bf16": ("bfloat16", [3, 4], rng.integers(0, 2**16, 12, dtype=np.uint16)),
        "bf16.scalar": ("bfloat16", [], rng.integers(0, 2**16, 1, dtype=np.uint16)),
        "f8e4m3": ("float8_e4m3fn", [2, 8], rng.integers(0, 256, 16, dtype=np.uint8)),
        "f8e5m2": ("float8_e5m2", [5], rng.integers(0, 256, 5, dtype=np.uint8)),
        "bf16.empty": ("bfloat16", [0, 4], np.zeros(0, dtype=np.uint16)),
    }


def write_mixed_file(path, with_numpy=True):
    """All dtypes in one file, written by the reference serializer."""
    specs = {}
    keep = []
    if with_numpy:
        for name, arr in numpy_tensors().items():
            arr = np.ascontiguousarray(arr)
            keep.append(arr)
            specs[name] = TensorSpec(dtype=arr.dtype.name, shape=list(arr.shape),
                                     data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    for name, (dtype, shape, arr) in raw_tensors().items():
        arr = np.ascontiguousarray(arr)
        keep.append(arr)
        specs[name] = TensorSpec(dtype=dtype, shape=shape, data_ptr=arr.ctypes.data,
                                 data_len=arr.nbytes)
    data = bytes(serialize(specs, metadata=METADATA))
    Path(path).write_bytes(data)
    return data


def oracle_view(path):
    """name -> (dtype, shape, bytes) as the reference reads the file."""
    return {name: (v["dtype"], list(v["shape"]), bytes(v["data"]))
            for name, v in deserialize(Path(path).read_bytes())}


def qforge_view(path):
    """The same, as qforge reads it: bytes fetched from the offsets qforge reports."""
    lst = listing(path)
    out = {}
    blobs = {}
    for t in lst["tensors"]:
        blob = blobs.setdefault(t["file"], Path(t["file"]).read_bytes())
        data = blob[t["data_offset"]:t["data_offset"] + t["nbytes"]]
        assert len(data) == t["nbytes"]
        out[t["name"]] = (t["dtype"], t["shape"], data)
    names = [t["name"] for t in lst["tensors"]]
    assert names == sorted(names, key=lambda s: s.encode()), "SafetensorsModel sorts by name"
    return out, lst


def check_header_layout(path):
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0, "tensor data must start 8-byte aligned"
    header = blob[8:8 + n]
    text = header.decode("utf-8")
    assert text.rstrip(" ") == text.strip(), "padding is trailing spaces only"
    assert len(text) - len(text.rstrip(" ")) < 8
    return json.loads(text)


# ---- (a) reference-written files read by qforge


def test_reference_file_read_identically(tmp_path):
    src = tmp_path / "ref.safetensors"
    write_mixed_file(src)
    expect = oracle_view(src)
    got, lst = qforge_view(src)
    assert got == expect
    with safe_open(str(src), framework="np") as f:
        assert lst["files"][0]["metadata"] == f.metadata() == METADATA


def test_reference_save_file_numpy(tmp_path):
    src = tmp_path / "np.safetensors"
    tensors = numpy_tensors()
    save_file(tensors, str(src), metadata={"format": "np"})
    got, lst = qforge_view(src)
    assert set(got) == set(tensors)
    for name, arr in tensors.items():
        dtype, shape, data = got[name]
        assert shape == list(arr.shape), name
        assert data == np.ascontiguousarray(arr).tobytes(), name  # little-endian host
    assert lst["files"][0]["metadata"] == {"format": "np"}


# ---- (b) qforge-written files read by the reference


def test_qforge_written_file_read_by_reference(tmp_path):
    src = tmp_path / "ref.safetensors"
    out = tmp_path / "out.safetensors"
    write_mixed_file(src)
    run_qforge("st-rewrite", src, out)
    header = check_header_layout(out)
    assert header["__metadata__"] == METADATA
    assert oracle_view(out) == oracle_view(src)
    with safe_open(str(out), framework="np") as f, safe_open(str(src), framework="np") as g:
        assert f.metadata() == METADATA
        for name in numpy_tensors():
            got, want = f.get_tensor(name), g.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
    # Written in name order, contiguous from offset 0.
    entries = sorted(((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__"))
    assert [k for _, k in entries] == sorted((k for k in header if k != "__metadata__"),
                                            key=lambda s: s.encode())
    end = 0
    for (b, e), _ in entries:
        assert b == end
        end = e
    (header_len,) = struct.unpack("<Q", out.read_bytes()[:8])
    assert out.stat().st_size == 8 + header_len + end


def test_qforge_rewrite_of_save_file_matches_arrays(tmp_path):
    """Scalars keep shape () (serialize() with a TensorSpec stores them as [1]; save_file not)."""
    src = tmp_path / "np.safetensors"
    out = tmp_path / "out.safetensors"
    tensors = numpy_tensors()
    save_file(tensors, str(src), metadata={"format": "np"})
    run_qforge("st-rewrite", src, out)
    check_header_layout(out)
    with safe_open(str(out), framework="np") as f:
        assert f.metadata() == {"format": "np"}
        assert sorted(f.keys()) == sorted(tensors)
        for name, arr in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == arr.dtype and got.shape == arr.shape, name
            assert got.tobytes() == arr.tobytes(), name


def test_round_trip_is_stable(tmp_path):
    """qforge -> qforge: rewriting its own output gives the same bytes."""
    src = tmp_path / "ref.safetensors"
    write_mixed_file(src)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run_qforge("st-rewrite", src, a)
    run_qforge("st-rewrite", a, b)
    assert a.read_bytes() == b.read_bytes()


def test_no_metadata_and_no_tensors(tmp_path):
    src = tmp_path / "empty.safetensors"
    src.write_bytes(bytes(serialize({})))
    out = tmp_path / "out.safetensors"
    run_qforge("st-rewrite", src, out)
    assert deserialize(out.read_bytes()) == []
    with safe_open(str(out), framework="np") as f:
        assert f.metadata() is None
        assert list(f.keys()) == []


# ---- sharded checkpoints


def write_sharded(dir_, shards):
    """shards: list of {name: array}; writes shards and an index like transformers does."""
    n = len(shards)
    weight_map = {}
    total = 0
    for i, tensors in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(dir_ / fname), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = fname
            total += v.nbytes
    (dir_ / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return weight_map


def test_sharded_checkpoint(tmp_path):
    rng = np.random.default_rng(5)
    shards = [
        {"model.embed_tokens.weight": rng.standard_normal((32, 8)).astype(np.float16),
         "model.layers.0.mlp.up_proj.weight": rng.standard_normal((16, 8)).astype(np.float32)},
        {"model.layers.1.mlp.up_proj.weight": rng.standard_normal((16, 8)).astype(np.float32),
         "model.norm.weight": rng.standard_normal((8,)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((32, 8)).astype(np.float16)},
    ]
    weight_map = write_sharded(tmp_path, shards)
    expect = {}
    for i, tensors in enumerate(shards):
        expect.update(oracle_view(tmp_path / f"model-{i + 1:05d}-of-00002.safetensors"))
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        got, lst = qforge_view(target)
        assert got == expect
        for t in lst["tensors"]:
            assert Path(t["file"]).name == weight_map[t["name"]]
    out = tmp_path / "merged.safetensors"
    run_qforge("st-rewrite", tmp_path, out)
    assert oracle_view(out) == expect
    with safe_open(str(out), framework="np") as f:
        assert f.metadata() == {"format": "pt"}


def test_sharded_errors(tmp_path):
    rng = np.random.default_rng(6)
    shards = [{"a": rng.standard_normal((4,)).astype(np.float32)},
              {"b": rng.standard_normal((4,)).astype(np.float32)}]
    write_sharded(tmp_path, shards)
    index = tmp_path / "model.safetensors.index.json"
    good = json.loads(index.read_text())

    missing = dict(good, weight_map=dict(good["weight_map"], c="model-00003-of-00003.safetensors"))
    index.write_text(json.dumps(missing))
    proc = run_qforge("st-rewrite", tmp_path, "--list-json", check=False)
    assert proc.returncode == 1 and "model-00003-of-00003.safetensors" in proc.stderr

    absent = dict(good, weight_map=dict(good["weight_map"], c="model-00002-of-00002.safetensors"))
    index.write_text(json.dumps(absent))
    proc = run_qforge("st-rewrite", tmp_path, "--list-json", check=False)
    assert proc.returncode == 1 and "'c'" in proc.stderr

    save_file({"a": shards[0]["a"], "b": shards[1]["b"]},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    index.write_text(json.dumps(good))
    proc = run_qforge("st-rewrite", tmp_path, "--list-json", check=False)
    assert proc.returncode == 1 and "two shards" in proc.stderr and "'a'" in proc.stderr
    out = tmp_path / "never.safetensors"
    assert run_qforge("st-rewrite", tmp_path, out, check=False).returncode == 1
    assert not out.exists()


# ---- malformed files: whatever the reference rejects for these reasons, qforge rejects too


def raw(header, data_len):
    hb = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(hb)) + hb + bytes(range(256)) * (data_len // 256) + bytes(
        data_len % 256)


ENTRY = '"w":{{"dtype":"{}","shape":{},"data_offsets":{}}}'
MALFORMED = {
    "not json": raw('{"w": [1,', 0),
    "not object": raw("[1, 2]", 0),
    "unknown dtype": raw("{" + ENTRY.format("F4", "[1]", "[0,1]") + "}", 1),
    "negative shape": raw("{" + ENTRY.format("U8", "[-1]", "[0,1]") + "}", 1),
    "float shape": raw("{" + ENTRY.format("U8", "[1.0]", "[0,1]") + "}", 1),
    "offsets past file": raw("{" + ENTRY.format("F32", "[2]", "[0,8]") + "}", 4),
    "size mismatch": raw("{" + ENTRY.format("F32", "[2]", "[0,4]") + "}", 8),
    "end before begin": raw("{" + ENTRY.format("U8", "[0]", "[4,0]") + "}", 4),
    "overlap": raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                   '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 12),
    "metadata not string": raw('{"__metadata__":{"a":1}}', 0),
    "header too long": struct.pack("<Q", 10**9) + b"{}",
    "header past file": struct.pack("<Q", 64) + b"{}",
    "short": b"\x02\x00\x00",
    "nul after json": raw(b"{}\x00\x00\x00\x00\x00\x00", 0),
    "invalid utf-8": raw(b'{"\xff":1}', 0),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_rejected_like_reference(tmp_path, case):
    blob = MALFORMED[case]
    with pytest.raises(Exception):
        deserialize(blob)  # the reference rejects it: the case is really malformed
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    proc = run_qforge("st-rewrite", path, "--list-json", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert str(path) in proc.stderr and "error" in proc.stderr


def test_every_truncation_rejected(tmp_path):
    src = tmp_path / "ref.safetensors"
    data = write_mixed_file(src, with_numpy=False)
    path = tmp_path / "cut.safetensors"
    # Every header prefix would be slow through a subprocess; cut at a spread of points.
    for n in sorted(set(list(range(0, 16)) + list(range(16, len(data), 37)) + [len(data) - 1])):
        path.write_bytes(data[:n])
        with pytest.raises(Exception):
            deserialize(data[:n])
        proc = run_qforge("st-rewrite", path, "--list-json", check=False)
        assert proc.returncode == 1, (n, proc.stderr)
