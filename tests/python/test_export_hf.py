"""`qforge export-hf` (GGUF -> Hugging Face checkpoint), checked against independent oracles.

- stories260K: the exported q_proj / k_proj must equal tools/make_fixtures.py's own
  `unpermute_rows` (the function that built the transformers model behind
  tests/data/fixtures/ref/stories260K/logits.npy) applied to the GGUF tensors read by the gguf
  package; every other tensor equals the GGUF tensor; with `tokenizers` installed, the rebuilt
  tokenizer.json reproduces greedy_from_bos.ids.txt from greedy_from_bos.txt.
- Round trip: every tiny HF fixture -> `qforge convert --type bf16` -> `export-hf` gives back the
  original BF16 tensors bit for bit, the same config fields and the same vocabulary.
- The default model (real Gemma 3 270M, Q4_K_M mix): BF16 export equals gguf.quants.dequantize
  rounded to BF16 (norms minus 1), and config.json carries the published hyper-parameters.
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
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
DEFAULT_MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", ROOT / "models/gemma-3-270m-q4_k_m.gguf"))
if not DEFAULT_MODEL.is_absolute():
    DEFAULT_MODEL = ROOT / DEFAULT_MODEL

sys.path.insert(0, str(ROOT / "tools"))
from make_fixtures import PROMPT, unpermute_rows  # noqa: E402  (the fixture script's own code)
from fixture_lib.qat import round_to_bf16  # noqa: E402

TINY = ["llama_tiny", "llama_tiny_qat", "gemma3_tiny", "gemma4_dense_tiny", "gemma4_moe_tiny",
        "gemma4_e_tiny"]


def run(*args):
    return subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True)


def export(gguf_path, out_dir, *extra):
    proc = run("export-hf", gguf_path, out_dir, "-q", *extra)
    assert proc.returncode == 0, proc.stderr
    return out_dir


def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)} with a hand-written reader (numpy has no bfloat16)."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), raw[8 + n + s:8 + n + e])
    return out


def as_f32(entry):
    dtype, shape, data = entry
    if dtype == "BF16":
        u16 = np.frombuffer(data, dtype=np.uint16)
        return (u16.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    assert dtype == "F32"
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def gguf_f32(tensor):
    """A tensor of a GGUFReader as float32 in HF (row-major, reversed ne) layout."""
    ne = [int(x) for x in tensor.shape]
    vals = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(vals, dtype=np.float32).reshape(list(reversed(ne)))


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


# ---------------------------------------------------------------------------------------------
# stories260K: the Llama fixture's own un-permutation is the oracle
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    src = SHARED / "stories260K/stories260K.gguf"
    if not src.exists():
        pytest.skip("shared stories260K.gguf not available")
    out = tmp_path_factory.mktemp("stories")
    export(src, out / "f32", "--dtype", "f32")
    export(src, out / "bf16")
    return src, out


def test_stories_qk_unpermuted_like_fixture_script(stories):
    src, out = stories
    reader = gguf.GGUFReader(src)
    n_head = int(field(reader, "llama.attention.head_count"))
    n_kv = int(field(reader, "llama.attention.head_count_kv"))
    st = read_safetensors(out / "f32/model.safetensors")
    n_layer = int(field(reader, "llama.block_count"))
    for t in reader.tensors:
        w = np.array(t.data, dtype=np.float32)  # F32 GGUF: rows x cols, as the fixture script reads
        name = t.name
        if name.endswith("attn_q.weight"):
            expect = unpermute_rows(w, n_head)
        elif name.endswith("attn_k.weight"):
            expect = unpermute_rows(w, n_kv)
        else:
            expect = w
        hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}.get(name)
        if hf is None:
            i, rest = name.split(".")[1], ".".join(name.split(".")[2:])
            hf = f"model.layers.{i}." + {
                "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
                "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
                "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
                "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight"}[rest]
        got = as_f32(st[hf])
        assert got.shape == expect.shape, name
        np.testing.assert_array_equal(got, expect, err_msg=name)
    assert len(st) == len(reader.tensors) == 9 * n_layer + 3
    # The permutation is not the identity (so the test above can fail).
    q = np.array(reader.tensors[[t.name for t in reader.tensors].index("blk.0.attn_q.weight")].data)
    assert not np.array_equal(unpermute_rows(q, n_head), q)


def test_stories_bf16_is_rounded_f32(stories):
    _, out = stories
    f32 = read_safetensors(out / "f32/model.safetensors")
    bf16 = read_safetensors(out / "bf16/model.safetensors")
    assert f32.keys() == bf16.keys()
    for name in f32:
        assert bf16[name][0] == "BF16"
        np.testing.assert_array_equal(as_f32(bf16[name]), round_to_bf16(as_f32(f32[name])), err_msg=name)


def test_stories_config_matches_fixture_config(stories):
    _, out = stories
    cfg = json.loads((out / "bf16/config.json").read_text())
    ref = json.loads((FIXTURES / "ref/stories260K/ref.json").read_text())["config"]
    for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "hidden_act", "bos_token_id",
                "eos_token_id", "tie_word_embeddings", "attention_bias", "mlp_bias", "head_dim",
                "model_type", "rope_parameters"]:
        assert cfg[key] == ref[key], key
    assert cfg["rms_norm_eps"] == pytest.approx(ref["rms_norm_eps"], rel=1e-6)
    assert cfg["architectures"] == ["LlamaForCausalLM"]


def test_stories_tokenizer_reproduces_reference_ids(stories):
    tokenizers = pytest.importorskip("tokenizers")
    _, out = stories
    tok = tokenizers.Tokenizer.from_file(str(out / "bf16/tokenizer.json"))
    text = (SHARED / "stories260K/greedy_from_bos.txt").read_text().rstrip("\n")
    ids = [int(x) for x in (SHARED / "stories260K/greedy_from_bos.ids.txt").read_text().split()]
    got = tok.encode(text).ids
    assert got[0] == 1  # BOS from the post-processor
    assert len(got) > 100 and got[1:] == ids[:len(got) - 1]
    assert tok.decode(got, skip_special_tokens=True) == text


# ---------------------------------------------------------------------------------------------
# round trip through qforge convert
# ---------------------------------------------------------------------------------------------

def convert(name, out):
    gg = out / f"{name}.gguf"
    proc = run("convert", FIXTURES / "hf" / name, "-o", gg, "--type", "bf16", "-q")
    assert proc.returncode == 0, proc.stderr
    return gg


# Config keys a GGUF carries (others, like initializer_range, do not survive llama.cpp's format).
CONFIG_KEYS = ["architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
               "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
               "pad_token_id", "rope_parameters", "sliding_window", "layer_types",
               "final_logit_softcapping", "global_head_dim", "num_global_key_value_heads",
               "attention_k_eq_v", "num_kv_shared_layers", "hidden_size_per_layer_input",
               "use_double_wide_mlp", "enable_moe_block", "num_experts", "top_k_experts",
               "moe_intermediate_size", "hidden_act", "hidden_activation"]


@pytest.mark.parametrize("name", TINY)
def test_round_trip_bit_exact(name, tmp_path):
    src = FIXTURES / "hf" / name
    out = export(convert(name, tmp_path), tmp_path / "hf")
    orig = read_safetensors(src / "model.safetensors")
    got = read_safetensors(out / "model.safetensors")
    assert sorted(got) == sorted(orig)
    for k in orig:
        assert got[k][0] == orig[k][0] == "BF16", k
        assert got[k][1] == orig[k][1], k
        assert got[k][2] == orig[k][2], f"{k}: values differ"

    cfg = json.loads((out / "config.json").read_text())
    ref = json.loads((src / "config.json").read_text())
    for key in CONFIG_KEYS:
        if key in ref and ref[key] is not None:
            assert cfg.get(key) == ref[key], key
    assert cfg["rms_norm_eps"] == pytest.approx(ref["rms_norm_eps"], rel=1e-6)
    if "query_pre_attn_scalar" in ref:
        # convert records gemma3.attention.scale where the scalar differs from head_dim, and
        # export-hf reads it back, so the round trip keeps the checkpoint's value.
        assert cfg["query_pre_attn_scalar"] == ref["query_pre_attn_scalar"]

    gen = json.loads((out / "generation_config.json").read_text())
    gen_ref = json.loads((src / "generation_config.json").read_text())
    assert gen["bos_token_id"] == gen_ref["bos_token_id"]
    assert gen["eos_token_id"] == gen_ref["eos_token_id"]

    tj = json.loads((out / "tokenizer.json").read_text())
    tj_ref = json.loads((src / "tokenizer.json").read_text())
    assert tj["model"]["vocab"] == tj_ref["model"]["vocab"]
    assert tj["normalizer"] == tj_ref["normalizer"]
    assert tj["decoder"] == tj_ref["decoder"]
    assert tj["post_processor"] == tj_ref["post_processor"]
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc_ref = json.loads((src / "tokenizer_config.json").read_text())
    for key in ["bos_token", "eos_token", "unk_token", "add_bos_token", "add_eos_token", "chat_template"]:
        if key in tc_ref:
            assert tc.get(key) == tc_ref[key], key


@pytest.mark.parametrize("name", ["llama_tiny", "gemma3_tiny", "gemma4_dense_tiny"])
def test_round_trip_tokenizer_encodes_like_original(name, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    out = export(convert(name, tmp_path), tmp_path / "hf")
    ours = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    ref = tokenizers.Tokenizer.from_file(str(FIXTURES / "hf" / name / "tokenizer.json"))
    text = (SHARED / "text/tinystories/tinystories_sample.txt")
    sample = text.read_text()[:20000] if text.exists() else PROMPT
    for s in [PROMPT, sample]:
        assert ours.encode(s).ids == ref.encode(s).ids


def test_sharding_writes_index(tmp_path):
    gg = convert("llama_tiny", tmp_path)
    out = export(gg, tmp_path / "hf", "--max-shard-size", "40000")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / f).exists() for f in files)
    merged = {}
    for f in files:
        merged.update(read_safetensors(out / f))
    assert index["metadata"]["total_size"] == sum(len(v[2]) for v in merged.values())
    orig = read_safetensors(FIXTURES / "hf/llama_tiny/model.safetensors")
    assert sorted(merged) == sorted(orig)
    assert all(merged[k][2] == orig[k][2] for k in orig)
    assert not (out / "model.safetensors").exists()


def test_bad_input_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    proc = run("export-hf", bad, tmp_path / "out")
    assert proc.returncode != 0 and "bad.gguf" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.gguf"]
    # non-empty output directory is refused
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    proc = run("export-hf", convert("llama_tiny", tmp_path), tmp_path / "full")
    assert proc.returncode != 0 and "not empty" in proc.stderr


# ---------------------------------------------------------------------------------------------
# the real Gemma 3 270M (Q4_K_M mix)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma270m(tmp_path_factory):
    if not DEFAULT_MODEL.exists():
        pytest.skip("default model not available")
    out = tmp_path_factory.mktemp("g270m") / "hf"
    export(DEFAULT_MODEL, out)
    return out


@pytest.fixture(scope="module")
def g270_reader():
    return gguf.GGUFReader(DEFAULT_MODEL)  # slow to open (262k-token arrays): once per module


def test_gemma270m_config(gemma270m):
    cfg = json.loads((gemma270m / "config.json").read_text())
    expect = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
              "num_hidden_layers": 18, "hidden_size": 640, "intermediate_size": 2048,
              "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
              "sliding_window": 512, "vocab_size": 262144, "query_pre_attn_scalar": 256,
              "max_position_embeddings": 32768, "tie_word_embeddings": True,
              "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
              "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-06}
    for k, v in expect.items():
        assert cfg[k] == v, k
    assert cfg["layer_types"] == ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                  for i in range(18)]
    assert cfg["rope_parameters"]["full_attention"]["rope_theta"] == 1e6
    assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4


def test_gemma270m_weights_equal_gguf_dequantize(gemma270m, g270_reader):
    reader = g270_reader
    st = read_safetensors(gemma270m / "model.safetensors")
    assert len(st) == len(reader.tensors) == 236
    names = {
        "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight", "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight"}
    types = set()
    for t in reader.tensors:
        if t.name.startswith("blk."):
            i, rest = t.name.split(".")[1], ".".join(t.name.split(".")[2:])
            hf = f"model.layers.{i}.{names[rest]}"
        else:
            hf = names[t.name]
        dtype, shape, _ = st[hf]
        assert dtype == "BF16"
        assert shape == tuple(int(x) for x in reversed(t.shape)), hf
        got = as_f32(st[hf])
        if len(t.shape) == 2 and t.name.split(".")[1] not in ("0", "17"):
            # Keep the test fast: all of layers 0 and 17 and of every 1-D tensor, a spread of
            # rows elsewhere (the raw blocks of those rows; 167M values in token_embd alone).
            n = int(t.shape[1])
            rows = np.unique(np.r_[0:32, n // 2:n // 2 + 32, n - 32:n])
            vals = gguf.quants.dequantize(t.data[rows], t.tensor_type).astype(np.float32)
            got = got[rows]
        else:
            vals = gguf_f32(t)
        if t.name.endswith("norm.weight"):
            vals = vals - np.float32(1)  # llama.cpp stored 1 + w
        np.testing.assert_array_equal(got, round_to_bf16(vals.reshape(got.shape)), err_msg=hf)
        types.add(t.tensor_type.name)
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"} <= types


def test_gemma270m_tokenizer(gemma270m, g270_reader):
    tj = json.loads((gemma270m / "tokenizer.json").read_text())
    reader = g270_reader
    tokens = field(reader, "tokenizer.ggml.tokens")
    first = {}
    for i, t in enumerate(tokens):
        first.setdefault(t, i)
    assert tj["model"]["vocab"] == first
    assert tj["model"]["byte_fallback"] is True and len(tj["model"]["merges"]) > 100000
    tc = json.loads((gemma270m / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<bos>" and tc["eos_token"] == "<eos>"
    gen = json.loads((gemma270m / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, tokens.index("<end_of_turn>")]


def test_gemma270m_tokenizer_encodes_like_gguf_vocab(gemma270m, tmp_path):
    """The rebuilt tokenizer.json (merges from the SentencePiece scores) against qforge's own
    GGUF tokenizer (itself checked against sentencepiece / llama.cpp vocab tests)."""
    tokenizers = pytest.importorskip("tokenizers")
    sample = SHARED / "text/tinystories/tinystories_sample.txt"
    if not sample.exists():
        pytest.skip(f"{sample} not found (shared test data)")
    text = sample.read_bytes()[:6000].decode("utf-8", errors="ignore")
    text += "Hello world, café 🙂 <start_of_turn>user\n  x\t\ty  "
    path = tmp_path / "s.txt"
    path.write_text(text)
    proc = run("tokenize", "-m", DEFAULT_MODEL, "-f", path, "--ids-only")
    assert proc.returncode == 0, proc.stderr
    want = [int(x) for x in proc.stdout.split()]
    got = tokenizers.Tokenizer.from_file(str(gemma270m / "tokenizer.json")).encode(text).ids
    assert len(want) > 500 and got == want
