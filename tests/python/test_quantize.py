"""`qforge quantize` (GGUF -> GGUF requantization), checked with the gguf package as the oracle.

- The default model (Gemma 3 270M, Q4_K_M mix) -> Q8_0 and -> Q4_0: every tensor's type follows
  the convert type policy (1-D F32 copied byte for byte, tied head Q6_K below 8 bits), and every
  dequantized value (gguf.quants.dequantize) is within the target type's per-block error bound
  of the source's dequantized value. Metadata is copied; general.file_type is updated.
- Q4_0 -> Q4_0 copies every tensor byte for byte.
- A QAT lattice BF16 GGUF (`qforge convert --type bf16` of llama_tiny_qat) -> Q4_0: every
  projected tensor is Q4_0 and its blocks dequantize exactly onto the BF16 source values.
- --imatrix reads llama.cpp's imatrix GGUF (<name>.in_sum2 / <name>.counts); the legacy .dat
  format fails with a clear message.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
QFORGE = os.environ.get("QFORGE_BIN", str(ROOT / "build/release/qforge"))
FIXTURES = ROOT / "tests/data/fixtures"
DEFAULT_MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", ROOT / "models/gemma-3-270m-q4_k_m.gguf"))
if not DEFAULT_MODEL.is_absolute():
    DEFAULT_MODEL = ROOT / DEFAULT_MODEL
sys.path.insert(0, str(ROOT / "tools"))
from fixture_lib.qat import round_to_bf16  # noqa: E402


def run(*args):
    return subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True)


def quantize(src, out, qtype, *extra):
    rep = Path(str(out) + ".json")
    proc = run("quantize", src, out, "--type", qtype, "--report", rep, "-q", *extra)
    assert proc.returncode == 0, proc.stderr
    return gguf.GGUFReader(out), json.loads(rep.read_text())


def raw_bytes(t):
    return np.asarray(t.data).tobytes()


def rows_to_check(t):
    """All rows of 1-D tensors and of layers 0 / 17, a spread of rows elsewhere (speed)."""
    if len(t.shape) < 2 or t.name.split(".")[1] in ("0", "17"):
        return None
    n = int(t.shape[1])
    return np.unique(np.r_[0:32, n // 2:n // 2 + 32, n - 32:n])


def values(t, rows=None):
    data = t.data if rows is None else t.data[rows]
    v = np.asarray(gguf.quants.dequantize(data, t.tensor_type), dtype=np.float32)
    return v.reshape(-1, int(t.shape[0]))


@pytest.fixture(scope="module")
def source():
    if not DEFAULT_MODEL.exists():
        pytest.skip("default model not available")
    return gguf.GGUFReader(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def outputs(source, tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    out = {q: quantize(DEFAULT_MODEL, d / f"{q}.gguf", q) for q in ["q8_0", "q4_0"]}
    out["q4_0_path"] = d / "q4_0.gguf"
    return out


# per-block bound on |dequant(quant(x)) - x| as a multiple of the block's max |x|
# (Q6_K: per 256-value super-block; sub-block scales are themselves quantized to 8 bits)
BOUND = {"Q8_0": 0.55 / 127 + 2 ** -10, "Q4_0": 1.05 / 8 + 2 ** -9, "Q6_K": 0.04}


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_types_and_error_bounds(source, outputs, qtype):
    out, report = outputs[qtype]
    src = {t.name: t for t in source.tensors}
    assert [t.name for t in out.tensors] == [t.name for t in source.tensors]
    for t in out.tensors:
        s = src[t.name]
        assert [int(x) for x in t.shape] == [int(x) for x in s.shape]
        want = {"q8_0": "Q8_0", "q4_0": "Q4_0"}[qtype]
        if len(s.shape) == 1:
            want = "F32"
        elif t.name == "token_embd.weight" and qtype == "q4_0":
            # tied embeddings are the head: Q6_K below 8 bits (policy rule 5), but rows of 640
            # are not a multiple of Q6_K's 256: Q8_0 (rule 6), which the source already is
            want = "Q6_K" if int(s.shape[0]) % 256 == 0 else "Q8_0"
        assert t.tensor_type.name == want, t.name
        if s.tensor_type == t.tensor_type:
            assert raw_bytes(s) == raw_bytes(t), f"{t.name}: same type must be copied"
            continue
        rows = rows_to_check(s)
        a, b = values(s, rows), values(t, rows)
        blk = 32 if want != "Q6_K" else 256
        ab = a.reshape(-1, blk)
        err = np.abs(b.reshape(-1, blk) - ab).max(axis=1)
        amax = np.abs(ab).max(axis=1)
        bad = err > BOUND[want] * amax + 1e-12
        assert not bad.any(), f"{t.name}: {bad.sum()} blocks beyond the {want} bound"
        assert err.max() > 0  # really requantized
    kinds = {r["name"]: r["source"] for r in report["tensors"]}
    assert kinds["output_norm.weight"] == "copied"


def test_metadata_copied_file_type_updated(source, outputs):
    out, _ = outputs["q4_0"]
    for key, f in source.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert key in out.fields, key
        if key.startswith("tokenizer.ggml.") and len(f.data) > 16:
            assert len(out.fields[key].data) == len(f.data), key
            continue
        assert out.fields[key].contents() == f.contents(), key
    assert out.fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0
    assert source.fields["general.file_type"].contents() == 15


def test_q4_0_to_q4_0_is_byte_identical(outputs, tmp_path):
    # outputs["q4_0"] came from `quantize --type q4_0`; doing it again must copy every tensor
    # and, since the metadata is unchanged too, reproduce the file byte for byte.
    first = outputs["q4_0_path"]
    again = tmp_path / "again.gguf"
    rep = tmp_path / "again.json"
    proc = run("quantize", first, again, "--type", "q4_0", "--report", rep, "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(rep.read_text())
    assert all(r["source"] == "copied" for r in report["tensors"])
    assert again.read_bytes() == first.read_bytes()


def load_bf16(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        u16 = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=np.uint16).reshape(info["shape"])
        out[name] = (u16.astype(np.uint32) << 16).view(np.float32)
    return out


def test_lattice_bf16_gguf_to_q4_0_is_exact(tmp_path):
    name = "llama_tiny_qat"
    bf16 = tmp_path / "bf16.gguf"
    proc = run("convert", FIXTURES / "hf" / name, "-o", bf16, "--type", "bf16", "-q")
    assert proc.returncode == 0, proc.stderr
    out, report = quantize(bf16, tmp_path / "q4.gguf", "q4_0")
    ref = json.loads((FIXTURES / "ref" / name / "ref.json").read_text())
    projected = ref["projected"]
    not_projected = [e["name"] if isinstance(e, dict) else e for e in ref["not_projected"]]
    assert projected and not_projected
    hf = load_bf16(FIXTURES / "hf" / name / "model.safetensors")
    src = {t.name: t for t in gguf.GGUFReader(bf16).tensors}
    by_name = {t.name: t for t in out.tensors}
    rep = {r["name"]: r for r in report["tensors"]}
    hf_of = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for hf_name in projected:
        parts = hf_name.split(".")
        gg = f"blk.{parts[2]}.{hf_of[parts[3] + '.' + parts[4]]}.weight"
        t = by_name[gg]
        assert t.tensor_type.name == "Q4_0", gg
        assert rep[gg]["lattice_encoded"] and rep[gg]["blocks"]["exact"] == rep[gg]["blocks"]["total"]
        deq = values(t)
        # exact lattice: bf16(d*q) equals the GGUF's BF16 source (the row-permuted HF weight)
        assert np.array_equal(round_to_bf16(deq), values(src[gg])), gg
        if "k_proj" not in hf_name and "q_proj" not in hf_name:
            assert np.array_equal(round_to_bf16(deq), hf[hf_name]), gg
    for hf_name in not_projected:
        parts = hf_name.split(".")
        gg = f"blk.{parts[2]}.{hf_of[parts[3] + '.' + parts[4]]}.weight"
        assert by_name[gg].tensor_type.name in ("BF16", "Q8_0"), gg
        assert raw_bytes(by_name[gg]) == raw_bytes(src[gg]) or by_name[gg].tensor_type.name == "Q8_0"


def write_imatrix(path, entries, legacy_names=False):
    w = gguf.GGUFWriter(str(path), arch="imatrix")
    w.add_string("general.type", "imatrix")
    for name, (sums, counts) in entries.items():
        w.add_tensor(f"{name}.in_sum2", np.asarray(sums, dtype=np.float32).reshape(len(counts), -1))
        w.add_tensor(f"{name}.counts", np.asarray(counts, dtype=np.float32).reshape(len(counts), 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_imatrix_is_used(tmp_path):
    # A small F32 GGUF whose rows (256) suit Q4_K, so the importance-weighted search applies.
    bf16 = tmp_path / "small.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(bf16), arch="llama")
    w.add_block_count(1)
    names = ["blk.0.ffn_up.weight", "blk.0.ffn_gate.weight"]
    for name in names:
        w.add_tensor(name, rng.standard_normal((64, 256)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    entries = {n: (rng.uniform(0.0, 100.0, 256) ** 3, [512.0]) for n in names}
    imat = tmp_path / "imatrix.gguf"
    write_imatrix(imat, entries)
    plain, _ = quantize(bf16, tmp_path / "plain.gguf", "q4_k")
    weighted, report = quantize(bf16, tmp_path / "weighted.gguf", "q4_k", "--imatrix", imat)
    assert any(r["source"] == "requantized+imatrix" for r in report["tensors"])
    differ = [a.name for a, b in zip(plain.tensors, weighted.tensors) if raw_bytes(a) != raw_bytes(b)]
    assert differ, "the importance weights changed nothing"
    # wrong length is refused, naming the entry
    bad = tmp_path / "bad_imatrix.gguf"
    name = next(iter(entries))
    write_imatrix(bad, {name: (np.ones(16), [1.0])})
    proc = run("quantize", bf16, tmp_path / "x.gguf", "--type", "q4_k", "--imatrix", bad)
    assert proc.returncode != 0 and name in proc.stderr
    assert not (tmp_path / "x.gguf").exists()
    dat = tmp_path / "imatrix.dat"
    dat.write_bytes(struct.pack("<i", 1) + b"\0" * 64)
    proc = run("quantize", bf16, tmp_path / "y.gguf", "--type", "q4_k", "--imatrix", dat)
    assert proc.returncode != 0 and "legacy" in proc.stderr


def test_bad_type_and_same_file(tmp_path):
    proc = run("quantize", DEFAULT_MODEL, tmp_path / "o.gguf", "--type", "q9_9")
    assert proc.returncode != 0 and "q9_9" in proc.stderr
    assert not (tmp_path / "o.gguf").exists()
