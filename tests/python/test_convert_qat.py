"""QAT lattice recovery and the type policy of `qforge convert`, checked with independent oracles.

- The QAT fixtures (tests/data/fixtures/hf/*_qat, made by tools/fixture_lib/qat.py) list which
  tensors were projected onto the Q4_0 grid (ref/<name>/ref.json). Every projected tensor must be
  detected (sym[-8,7], group 32, share 1.0) and written as Q4_0 whose blocks, dequantized by the
  gguf package, are exactly d*q with d = signed extremum / -8 (recomputed here from the BF16
  source) and bf16(d*q) equal to the stored BF16 weight. Nothing else may be detected, and in a
  QAT checkpoint nothing else may be forced to 4 bits.
- Random (non-QAT) fixtures: no tensor may be detected.
- Every tensor of a quantized conversion dequantizes (gguf oracle) to the source within the
  type's error bound, and bad input fails cleanly without leaving an output file.
"""
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
QFORGE = os.environ.get("QFORGE_BIN", str(ROOT / "build/release/qforge"))
FIXTURES = ROOT / "tests/data/fixtures"
QAT = ["llama_tiny_qat", "gemma4_dense_tiny_qat"]
RANDOM = ["llama_tiny", "gemma3_tiny", "gemma4_dense_tiny", "gemma4_moe_tiny", "gemma4_e_tiny"]
FOUR_BIT = {"Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS", "Q3_K", "Q2_K"}


def run(*args):
    return subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True)


def convert(name_or_dir, out_dir, qtype, *extra):
    src = name_or_dir if isinstance(name_or_dir, Path) else FIXTURES / "hf" / name_or_dir
    out, rep = out_dir / "out.gguf", out_dir / "report.json"
    proc = run("convert", src, "-o", out, "--type", qtype, "--report", rep, "-q", *extra)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(rep.read_text())


def load_bf16(path):
    """safetensors -> {name: float32 array} for BF16 tensors (numpy has no bfloat16)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16"
        s, e = info["data_offsets"]
        u16 = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=np.uint16).reshape(info["shape"])
        out[name] = (u16.astype(np.uint32) << 16).view(np.float32)
    return out


def round_to_bf16(x):
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def llama_permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def source_matrix(name, entry, weights, config):
    """The source values in GGUF row order (Llama's Q/K rows are permuted by the converter)."""
    w = weights[entry["source"]]
    if config["model_type"] == "llama" and entry["name"].endswith(("attn_q.weight", "attn_k.weight")):
        heads = config["num_attention_heads"] if "attn_q" in entry["name"] else config["num_key_value_heads"]
        w = llama_permute(w, heads)
    return w


@pytest.fixture(scope="module", params=QAT)
def qat_conversion(request, tmp_path_factory):
    name = request.param
    out, report = convert(name, tmp_path_factory.mktemp(name), "q4_0")
    ref = json.loads((FIXTURES / "ref" / name / "ref.json").read_text())
    return name, out, report, ref


def test_projected_tensors_detected_and_exact(qat_conversion):
    name, _, report, ref = qat_conversion
    by_source = {t["source"]: t for t in report["tensors"]}
    assert report["qat_checkpoint"] is True
    assert ref["projected"], name
    for src in ref["projected"]:
        t = by_source[src]
        lat = t["lattice"]
        assert lat["detected"] and lat["kind"] == "sym[-8,7]" and lat["group"] == 32, (src, lat)
        assert lat["share"] == 1.0, (src, lat)
        assert t["type"] == "Q4_0" and t["lattice_encoded"], (src, t["type"])
        b = t["blocks"]
        assert b["exact"] == b["total"] == t["n_elements"] // 32, (src, b)
        assert b["off_lattice"] == b["scale_unrepresentable"] == b["not_finite"] == 0


def test_unprojected_tensors_not_detected_nor_4bit(qat_conversion):
    name, _, report, ref = qat_conversion
    projected = set(ref["projected"])
    others = [t for t in report["tensors"] if t["source"] not in projected]
    assert any("embed_tokens" in t["source"] for t in others)
    for t in others:
        assert not (t["lattice"] or {}).get("detected", False), t["name"]
        assert t["type"] not in FOUR_BIT, (t["name"], t["type"])
    for item in ref["not_projected"]:  # e.g. llama's down_proj with rows of 172
        t = next(t for t in report["tensors"] if t["source"] == item["name"])
        assert t["type"] in {"BF16", "Q8_0", "F16"}, (t["name"], t["type"])


def test_q4_0_blocks_dequantize_to_lattice_values(qat_conversion):
    name, out, report, ref = qat_conversion
    config = json.loads((FIXTURES / "hf" / name / "config.json").read_text())
    weights = load_bf16(FIXTURES / "hf" / name / "model.safetensors")
    entries = {t["name"]: t for t in report["tensors"]}
    reader = gguf.GGUFReader(str(out))
    checked = 0
    for t in reader.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.Q4_0:
            continue
        deq = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType.Q4_0)
        src = source_matrix(t.name, entries[t.name], weights, config)
        deq = deq.reshape(src.shape)
        # bf16(d*q) is the stored weight ...
        assert np.array_equal(round_to_bf16(deq), src), t.name
        # ... and the block holds d*q itself, d = signed extremum / -8 of the BF16 block.
        blocks = src.reshape(-1, 32)
        ext = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
        d = (ext / np.float32(-8)).astype(np.float32)
        q = np.where(d != 0, deq.reshape(-1, 32) / np.where(d != 0, d, 1), 0)
        assert np.array_equal(q, np.round(q)) and q.min() >= -8 and q.max() <= 7, t.name
        assert np.array_equal((d * q).astype(np.float32), deq.reshape(-1, 32)), t.name
        scales = np.asarray(t.data).reshape(-1, 18)[:, :2].copy().view(np.float16).astype(np.float32)
        assert np.array_equal(scales.ravel(), d.ravel()), t.name
        checked += 1
    assert checked == len(ref["projected"])


@pytest.mark.parametrize("name", RANDOM)
def test_random_checkpoints_have_no_lattice(name, tmp_path):
    _, report = convert(name, tmp_path, "q4_0")
    assert report["qat_checkpoint"] is False
    checked = [t for t in report["tensors"] if t["lattice"] is not None]
    assert checked, "no tensor was examined"
    for t in checked:
        assert not t["lattice"]["detected"], (t["name"], t["lattice"])
        assert not t["lattice_encoded"]


def test_qat_off_uses_ordinary_quantization(tmp_path):
    _, report = convert("llama_tiny_qat", tmp_path, "q4_0", "--qat", "off")
    assert report["qat_checkpoint"] is False
    assert all(t["lattice"] is None and not t["lattice_encoded"] for t in report["tensors"])
    down = next(t for t in report["tensors"] if t["name"] == "blk.0.ffn_down.weight")
    assert down["type"] == "F16" and "172" in down["reason"]  # rows of 172: no 32-block type fits


# Error bound of each type relative to the largest magnitude in a block (generous: the oracle is
# the gguf package's dequantizer, the bound just catches a wrong layout or a wrong row order).
REL_BOUND = {"F32": 0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1e-2, "Q6_K": 4e-2, "Q5_K": 8e-2,
             "Q5_0": 8e-2, "Q5_1": 8e-2, "Q4_K": 0.15, "Q4_0": 0.15, "Q4_1": 0.15}


@pytest.mark.parametrize("qtype", ["q4_k_m", "q8_0", "q5_k_m"])
@pytest.mark.parametrize("name", ["llama_tiny", "gemma4_moe_tiny"])
def test_quantized_tensors_dequantize_close_to_source(name, qtype, tmp_path):
    out, report = convert(name, tmp_path, qtype)
    config = json.loads((FIXTURES / "hf" / name / "config.json").read_text())
    weights = load_bf16(FIXTURES / "hf" / name / "model.safetensors")
    entries = {t["name"]: t for t in report["tensors"]}
    for t in gguf.GGUFReader(str(out)).tensors:
        e = entries[t.name]
        assert t.tensor_type.name == e["type"], t.name
        if e["source"].startswith("("):
            continue  # generated
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        src = source_matrix(t.name, e, weights, config)
        if config.get("model_type", "").startswith("gemma3") and t.name.endswith("norm.weight"):
            src = src + np.float32(1)
        src = src.reshape(deq.shape)
        scale = np.abs(src).max()
        err = np.abs(deq - src).max()
        assert err <= REL_BOUND[e["type"]] * scale + 1e-7, (t.name, e["type"], err, scale)
        assert abs(err - e["max_abs_error"]) <= 1e-6 * max(scale, 1), (t.name, err, e["max_abs_error"])


def test_type_rules(tmp_path):
    _, report = convert("llama_tiny", tmp_path, "q4_k_m", "--override", "attn_output=q8_0")
    types = {t["name"]: t for t in report["tensors"]}
    assert types["blk.0.attn_norm.weight"]["type"] == "F32"
    assert types["output.weight"]["type"] == "Q8_0"  # Q6_K wanted, rows of 64 < 256: Q8_0
    assert types["blk.0.attn_output.weight"]["type"] == "Q8_0"
    assert "override" in types["blk.0.attn_output.weight"]["reason"]
    assert types["blk.0.ffn_gate.weight"]["type"] == "Q5_0"  # Q4_K needs rows of 256
    assert types["blk.0.ffn_down.weight"]["type"] == "F16"  # rows of 172
    for t in report["tensors"]:
        if t["type"] != "Q4_K" and t["type"] != "F32":
            assert t["reason"], t["name"]


# ---- bad input: clear error, no output file


def make_variant(tmp_path, edit_config=None, edit_weights=None):
    src = FIXTURES / "hf" / "llama_tiny"
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if edit_weights:
        edit_weights(dst)
    return dst


def expect_failure(ckpt, tmp_path, *needles):
    out = tmp_path / "bad.gguf"
    proc = run("convert", ckpt, "-o", out, "--type", "q8_0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad.gguf")], "temp file left"


def test_unknown_architecture(tmp_path):
    ckpt = make_variant(tmp_path, lambda c: c.update(architectures=["MambaForCausalLM"]))
    expect_failure(ckpt, tmp_path, "MambaForCausalLM", "not supported")


def test_shape_mismatch_vs_config(tmp_path):
    ckpt = make_variant(tmp_path, lambda c: c.update(num_attention_heads=8))
    expect_failure(ckpt, tmp_path, "q_proj", "num_attention_heads 8")


def test_missing_shard(tmp_path):
    def shard(dst):
        index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}
        (dst / "model.safetensors").rename(dst / "model-00001-of-00002.safetensors")
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_failure(make_variant(tmp_path, edit_weights=shard), tmp_path, "model-00002-of-00002")


def test_nan_weight_names_tensor_and_index(tmp_path):
    def poison(dst):
        path = dst / "model.safetensors"
        raw = bytearray(path.read_bytes())
        n = struct.unpack("<Q", raw[:8])[0]
        info = json.loads(raw[8:8 + n])["model.layers.1.mlp.up_proj.weight"]
        at = 8 + n + info["data_offsets"][0] + 2 * 100  # element 100: row 1, column 36
        raw[at:at + 2] = struct.pack("<H", 0x7FC0)  # BF16 NaN
        path.write_bytes(bytes(raw))
    ckpt = make_variant(tmp_path, edit_weights=poison)
    expect_failure(ckpt, tmp_path, "model.layers.1.mlp.up_proj.weight", "element 100", "NaN")
