"""`qforge inspect` against gguf.GGUFReader (real GGUF files) and the safetensors package.

Every number inspect prints must be what the oracle reads from the same file: tensor names, types,
shapes, byte sizes, offsets, totals, per-type breakdown and scalar metadata. Bad input must give a
non-zero exit and a message naming the file.
"""
import json
import os
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGUFValueType as VT  # noqa: E402

QFORGE = os.environ.get("QFORGE_BIN", "build/release/qforge")
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
DEFAULT_MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", "models/gemma-3-270m-q4_k_m.gguf"))
STORIES = SHARED / "stories260K" / "stories260K.gguf"


def run(*args):
    return subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True)


def inspect_json(path, *extra):
    proc = run("inspect", "--json", *extra, path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module", params=[pytest.param(STORIES, id="stories260K"),
                                        pytest.param(DEFAULT_MODEL, id="gemma3-270m")])
def real_gguf(request):
    path = request.param
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path, gguf.GGUFReader(str(path)), inspect_json(path)


def test_tensors_match_gguf_reader(real_gguf):
    path, oracle, report = real_gguf
    assert report["tensor_count"] == len(oracle.tensors)
    for t, o in zip(report["tensors"], oracle.tensors, strict=True):
        assert t["name"] == o.name
        assert t["type"] == o.tensor_type.name
        assert t["shape"] == [int(d) for d in o.shape]
        assert t["elements"] == o.n_elements
        assert t["bytes"] == o.n_bytes
        assert t["file_offset"] == o.data_offset
        assert t["bits_per_weight"] == pytest.approx(8 * o.n_bytes / o.n_elements)


def test_totals_and_breakdown_match(real_gguf):
    path, oracle, report = real_gguf
    assert report["format"] == "gguf"
    assert report["gguf_version"] == oracle.fields["GGUF.version"].contents()
    assert report["architecture"] == oracle.fields["general.architecture"].contents()
    assert report["alignment"] == oracle.alignment
    assert report["data_offset"] == oracle.data_offset
    assert report["file_size"] == path.stat().st_size
    params = sum(o.n_elements for o in oracle.tensors)
    nbytes = sum(o.n_bytes for o in oracle.tensors)
    assert report["parameter_count"] == params
    assert report["tensor_bytes"] == nbytes
    assert report["bits_per_weight"] == pytest.approx(8 * nbytes / params)
    by_type = defaultdict(lambda: [0, 0, 0])
    for o in oracle.tensors:
        acc = by_type[o.tensor_type.name]
        acc[0] += 1
        acc[1] += o.n_elements
        acc[2] += o.n_bytes
    assert set(report["types"]) == set(by_type)
    for name, (count, elements, size) in by_type.items():
        entry = report["types"][name]
        assert (entry["tensors"], entry["elements"], entry["bytes"]) == (count, elements, size)
        assert entry["bits_per_weight"] == pytest.approx(8 * size / elements)


def test_metadata_matches(real_gguf):
    path, oracle, report = real_gguf
    md = report["metadata"]
    keys = [k for k in oracle.fields if not k.startswith("GGUF.")]
    assert list(md) == keys
    assert report["metadata_count"] == len(keys)
    for key in keys:
        field = oracle.fields[key]
        entry = md[key]
        assert entry["type"] == field.types[0].name, key
        if field.types[0] == VT.ARRAY:
            values = field.contents()
            assert entry["element_type"] == field.types[1].name, key
            assert entry["count"] == len(values), key
            shown = entry["value"]
            assert shown == values[: len(shown)], key
            assert entry["truncated"] == (len(shown) < len(values)), key
        else:
            assert entry["value"] == field.contents(), key


def test_text_output(real_gguf):
    path, oracle, report = real_gguf
    proc = run("inspect", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert report["architecture"] in out
    assert f"{report['parameter_count']:,}" in out
    for o in oracle.tensors[:5]:
        assert o.name in out


def test_bad_files_fail_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a model file at all")
    missing = tmp_path / "missing.gguf"
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    cases = [garbage, missing, empty]
    if STORIES.exists():
        truncated = tmp_path / "truncated.gguf"
        truncated.write_bytes(STORIES.read_bytes()[:5000])
        cases.append(truncated)
        # Oracle agrees the truncated file is broken.
        with pytest.raises(Exception):
            gguf.GGUFReader(str(truncated))
    for path in cases:
        proc = run("inspect", path)
        assert proc.returncode != 0, path
        assert str(path) in proc.stderr, proc.stderr
        assert proc.stderr.startswith("qforge: error:"), proc.stderr


def test_big_endian_is_reported(tmp_path):
    path = tmp_path / "be.gguf"
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    proc = run("inspect", path)
    assert proc.returncode != 0
    assert "big-endian" in proc.stderr


# ---- safetensors and HF checkpoint directories

def write_safetensors_by_hand(path, tensors, metadata=None):
    """For dtypes numpy cannot hold (F8_E4M3, BF16): the format is a u64 header length, a JSON
    header and raw bytes."""
    header = {}
    offset = 0
    blobs = []
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def check_against_safe_open(report, path):
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        names = sorted(f.keys())
        assert [t["name"] for t in report["tensors"]] == names
        for t in report["tensors"]:
            arr = f.get_tensor(t["name"])
            assert t["shape"] == list(arr.shape)
            assert t["bytes"] == arr.nbytes
            assert t["elements"] == arr.size


def test_safetensors_file(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    tensors = {"b.weight": rng.standard_normal((3, 4)).astype(np.float32),
               "a.bias": rng.standard_normal(5).astype(np.float16),
               "ids": np.arange(6, dtype=np.int64).reshape(2, 3)}
    st.save_file(tensors, str(path), metadata={"format": "np"})
    report = inspect_json(path)
    assert report["format"] == "safetensors"
    check_against_safe_open(report, path)
    types = {t["name"]: t["type"] for t in report["tensors"]}
    assert types == {"a.bias": "F16", "b.weight": "F32", "ids": "I64"}
    assert report["metadata"] == {"format": "np"}
    assert report["parameter_count"] == sum(v.size for v in tensors.values())
    assert report["tensor_bytes"] == sum(v.nbytes for v in tensors.values())
    assert report["file_size"] == path.stat().st_size


def test_hf_checkpoint_dir_with_fp8(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}))
    f8 = bytes(range(16))
    bf16 = bytes(8)
    write_safetensors_by_hand(tmp_path / "model.safetensors", {
        "w.fp8": ("F8_E4M3", [4, 4], f8),
        "w.e5m2": ("F8_E5M2", [2, 8], f8),
        "w.bf16": ("BF16", [4], bf16),
    })
    report = inspect_json(tmp_path)
    assert report["format"] == "hf-checkpoint"
    assert report["architecture"] == "Gemma3ForCausalLM"
    assert report["model_type"] == "gemma3_text"
    got = {t["name"]: (t["type"], t["shape"], t["bytes"]) for t in report["tensors"]}
    assert got == {"w.fp8": ("F8_E4M3", [4, 4], 16), "w.e5m2": ("F8_E5M2", [2, 8], 16),
                   "w.bf16": ("BF16", [4], 8)}
    assert report["types"]["F8_E4M3"]["bits_per_weight"] == 8
    text = run("inspect", tmp_path).stdout
    assert "F8_E4M3" in text and "Gemma3ForCausalLM" in text


def test_bad_safetensors_fails_naming_the_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    proc = run("inspect", path)
    assert proc.returncode != 0
    assert str(path) in proc.stderr
