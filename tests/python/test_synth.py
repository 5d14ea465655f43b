"""`qforge synth` against oracles that qforge did not produce.

(a) Layout: synth on the tiny fixtures' hf/<name>/config.json with --type BF16 must give exactly the
    tensors (names, ggml shapes, types, byte sizes) and metadata (keys, value types, values) that
    llama.cpp's convert_hf_to_gguf.py wrote for the same configs (tests/data/fixtures/llamacpp/),
    read back with the `gguf` package. Exceptions are listed where they are checked (no chat
    template; Gemma 3's fixture took llama.cpp's GPT-2 path because it has no tokenizer.model).
    rope_freqs must be byte-identical (sha256) to the converter's.
(b) Sizes: --dry-run on bench/configs for Gemma 4 31B / 26B-A4B and Llama-3-8B must give the Q4_0
    sizes (LM head Q6_K) of shared/data/model-shapes.md.
(c) Values: quantized tensors dequantized by gguf (gguf.quants) have zero mean, the planned
    standard deviation 1/sqrt(fan_in), no NaN/Inf; Q4_0 block scales have both signs.
(d) Determinism: same seed -> same bytes (for 1 and 2 threads); another seed -> other bytes.
"""
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

QFORGE = os.environ.get("QFORGE_BIN", "build/release/qforge")
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "data" / "fixtures"
CONFIGS = ROOT / "bench" / "configs"

TINY = {
    "llama_tiny": "llama",
    "gemma3_tiny": "gemma3",
    "gemma4_dense_tiny": "gemma4",
    "gemma4_moe_tiny": "gemma4",
    "gemma4_e_tiny": "gemma4",
}


def qforge(*args, env=None, check=True):
    proc = subprocess.run([QFORGE, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"qforge {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def synth(arch, config, out, *extra, env=None):
    qforge("synth", "-q", "--arch", arch, "--config", config, "-o", out, *extra, env=env)
    return out


def value_type_name(field):
    return gguf.GGUFValueType(field.types[0]).name


# ---------------------------------------------------------------- (a) layout vs llama.cpp


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth_tiny")
    return {n: synth(a, FIXTURES / "hf" / n / "config.json", d / f"{n}.gguf", "--type", "BF16")
            for n, a in TINY.items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tensors_match_converter(tiny_files, name):
    listing = json.loads((FIXTURES / "llamacpp" / f"{name}.json").read_text())["gguf"]
    want = {t["name"]: (t["ne"], t["type"], t["n_bytes"]) for t in listing["tensors"]}
    reader = gguf.GGUFReader(tiny_files[name])
    got = {t.name: ([int(x) for x in t.shape], t.tensor_type.name, int(t.n_bytes))
           for t in reader.tensors}
    assert sorted(got) == sorted(want)
    for tensor_name, w in want.items():
        assert got[tensor_name] == w, tensor_name
    if "rope_freqs.weight" in want:
        sha = {t["name"]: t["sha256"] for t in listing["tensors"]}["rope_freqs.weight"]
        data = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
        assert hashlib.sha256(np.asarray(data).tobytes()).hexdigest() == sha


def expected_tokenizer_keys(name, fixture_keys):
    keys = {k for k in fixture_keys if k.startswith("tokenizer.")}
    keys.discard("tokenizer.chat_template")  # synth writes no chat template
    if name == "gemma3_tiny":
        # The fixture has no tokenizer.model, so llama.cpp took its GPT-2 BPE path (merges, no
        # scores); real Gemma 3 files (models/gemma-3-270m) use the SentencePiece "llama" vocab.
        keys -= {"tokenizer.ggml.merges"}
        keys |= {"tokenizer.ggml.scores", "tokenizer.ggml.add_space_prefix"}
    return keys


@pytest.mark.parametrize("name", sorted(TINY))
def test_metadata_matches_converter(tiny_files, name):
    meta = json.loads((FIXTURES / "llamacpp" / f"{name}.json").read_text())["gguf"]["metadata"]
    reader = gguf.GGUFReader(tiny_files[name])
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    non_tok = {k for k in meta if not k.startswith("tokenizer.")}
    assert {k for k in fields if not k.startswith("tokenizer.")} == non_tok
    assert {k for k in fields if k.startswith("tokenizer.")} == expected_tokenizer_keys(name, meta)
    for key in sorted(non_tok - {"general.name"}):
        want, field = meta[key], fields[key]
        assert value_type_name(field) == want["type"], key
        value = field.contents()
        if want["type"] == "ARRAY":
            assert len(value) == want["length"], key
            assert list(value[:16]) == want["head"], key
        elif want["type"] == "FLOAT32":
            assert value == pytest.approx(want["value"], rel=1e-6), key
        else:
            assert value == want["value"], key
    # Same vocabulary size, unique tokens, specials where the converter put them.
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == meta["tokenizer.ggml.tokens"]["length"]
    assert len(set(tokens)) == len(tokens)
    for id_key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        k = f"tokenizer.ggml.{id_key}"
        if k in meta:
            assert fields[k].contents() == meta[k]["value"], k
            assert tokens[meta[k]["value"]] == meta["tokenizer.ggml.tokens"]["head"][meta[k]["value"]]
    if name != "gemma3_tiny":
        assert fields["tokenizer.ggml.model"].contents() == meta["tokenizer.ggml.model"]["value"]


# ---------------------------------------------------------------- (b) full-size plans


def dry_run_gib(config, arch, qtype="Q4_0"):
    out = qforge("synth", "--arch", arch, "--config", config, "-o", "/dev/null", "--type", qtype,
                 "--dry-run").stdout
    return float(re.search(r"([0-9.]+) GiB of tensor data", out).group(1)), out


def model_shapes_sizes():
    path = SHARED / "model-shapes.md"
    if not path.exists():
        pytest.skip("shared/data/model-shapes.md is absent")
    for line in path.read_text().splitlines():
        if line.startswith("| params; size as llama-quantize Q4_0"):
            cells = [c.strip() for c in line.strip("|").split("|")][1:]
            return [float(re.search(r"([0-9.]+) GiB", c).group(1)) for c in cells]
    pytest.fail("model-shapes.md has no Q4_0 size row")


def test_full_size_q4_0_matches_model_shapes():
    want = dict(zip(["gemma4-31b", "gemma4-26b-a4b", "llama-3-8b"], model_shapes_sizes()))
    arch = {"gemma4-31b": "gemma4", "gemma4-26b-a4b": "gemma4", "llama-3-8b": "llama"}
    for name, gib in want.items():
        got, out = dry_run_gib(CONFIGS / f"{name}.json", arch[name])
        assert got == pytest.approx(gib, abs=0.006), out


def test_moe_rows_of_704_fall_back_for_k_quants():
    _, out = dry_run_gib(CONFIGS / "gemma4-26b-a4b.json", "gemma4", "Q4_K")
    assert "fallback Q4_K -> Q5_0 for blk.*.ffn_down_exps.weight (30 tensors): rows of 704" in out
    assert "fallback Q4_K -> Q5_0 for blk.*.ffn_down.weight (30 tensors): rows of 2112" in out


def test_q4_k_m_preset_gives_more_bits_where_llama_quantize_does(tmp_path):
    """--type Q4_K_M: Q6_K attn_v and ffn_down in llama-quantize's "more bits" layers (its
    use_more_bits: the first and last eighth of the layers and every third between), Q4_K for the
    other matrices, the head Q6_K, general.file_type 15 (LLAMA_FTYPE_MOSTLY_Q4_K_M); and the same
    types per tensor as `qforge quantize --type q4_k_m` of a BF16 file of the same shapes."""
    n_layers = 16
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**SMALL_LLAMA, "hidden_size": 256, "intermediate_size": 512,
                               "num_attention_heads": 4, "num_hidden_layers": n_layers}))
    out = synth("llama", cfg, tmp_path / "m.gguf", "--type", "Q4_K_M")
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 15

    def more_bits(i):
        return i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2

    types = {t.name: t.tensor_type for t in reader.tensors}
    for i in range(n_layers):
        want = QT.Q6_K if more_bits(i) else QT.Q4_K
        assert types[f"blk.{i}.attn_v.weight"] == want, i
        assert types[f"blk.{i}.ffn_down.weight"] == want, i
        for other in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert types[f"blk.{i}.{other}.weight"] == QT.Q4_K, (i, other)
    assert types["output.weight"] == QT.Q6_K
    assert sum(t == QT.Q6_K for t in types.values()) == 2 * sum(map(more_bits, range(n_layers))) + 1

    bf16 = synth("llama", cfg, tmp_path / "bf16.gguf", "--type", "BF16")
    qforge("quantize", bf16, tmp_path / "q.gguf", "--type", "q4_k_m")
    quantized = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    assert quantized == types


# ---------------------------------------------------------------- (c) values

SMALL_LLAMA = {
    "hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8,
    "num_key_value_heads": 2, "intermediate_size": 1024, "vocab_size": 1024,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
}


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    p = tmp_path_factory.mktemp("synth_small") / "config.json"
    p.write_text(json.dumps(SMALL_LLAMA))
    return p


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
                                   "Q3_K", "BF16", "F16"])
def test_dequantized_values_are_sane(small_config, tmp_path, qtype):
    out = synth("llama", small_config, tmp_path / "m.gguf", "--type", qtype, "--head-type", qtype,
                "--embd-type", qtype)
    reader = gguf.GGUFReader(out)
    checked = 0
    for t in reader.tensors:
        if len(t.shape) < 2:
            continue
        assert t.tensor_type.name == qtype, t.name
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        assert np.isfinite(w).all(), t.name
        target = 1.0 / np.sqrt(int(t.shape[0]))
        assert abs(w.mean()) < 0.05 * target, t.name
        assert w.std() == pytest.approx(target, rel=0.1), t.name
        checked += 1
    assert checked == 2 * 7 + 2


def test_q4_0_scales_have_both_signs(small_config, tmp_path):
    out = synth("llama", small_config, tmp_path / "m.gguf", "--type", "Q4_0")
    reader = gguf.GGUFReader(out)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert t.tensor_type == QT.Q4_0
    blocks = np.asarray(t.data).view(np.uint8).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32).ravel()
    negative = (d < 0).mean()
    assert 0.45 < negative < 0.55, negative
    # And so do the dequantized block means: a router's dot products are not all biased alike.
    w = gguf.quants.dequantize(t.data, QT.Q4_0).reshape(-1, 32).mean(axis=1)
    assert 0.4 < (w < 0).mean() < 0.6


def test_moe_router_picks_varied_experts(tmp_path):
    """Random routers must spread tokens over the experts (no collapse onto a few)."""
    cfg = json.loads((FIXTURES / "hf" / "gemma4_moe_tiny" / "config.json").read_text())
    cfg.update({"hidden_size": 256, "num_experts": 32, "top_k_experts": 4, "moe_intermediate_size": 64})
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    out = synth("gemma4", p, tmp_path / "moe.gguf", "--type", "Q4_0")
    reader = gguf.GGUFReader(out)
    router = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate_inp.weight")
    assert router.tensor_type == QT.F32
    r = np.asarray(router.data, dtype=np.float32).reshape(32, 256)
    x = np.random.default_rng(0).standard_normal((4096, 256)).astype(np.float32)
    top = np.argsort(-(x @ r.T), axis=1)[:, :4]
    counts = np.bincount(top.ravel(), minlength=32)
    assert (counts > 0).all()
    assert counts.max() < 3 * counts.mean()


# ---------------------------------------------------------------- (d) determinism


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_same_seed_same_bytes(small_config, tmp_path):
    a = synth("llama", small_config, tmp_path / "a.gguf", "--type", "Q4_0", "--seed", "7",
              env={"QFORGE_THREADS": "1"})
    b = synth("llama", small_config, tmp_path / "b.gguf", "--type", "Q4_0", "--seed", "7",
              env={"QFORGE_THREADS": "2"})
    c = synth("llama", small_config, tmp_path / "c.gguf", "--type", "Q4_0", "--seed", "8")
    assert sha(a) == sha(b)
    ra, rc = gguf.GGUFReader(a), gguf.GGUFReader(c)
    for ta, tc in zip(ra.tensors, rc.tensors):
        assert ta.name == tc.name
        if len(ta.shape) >= 2:
            assert not np.array_equal(np.asarray(ta.data), np.asarray(tc.data)), ta.name


def test_bad_config_names_the_key(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({k: v for k, v in SMALL_LLAMA.items() if k != "intermediate_size"}))
    proc = qforge("synth", "--arch", "llama", "--config", p, "-o", tmp_path / "x.gguf", "--type",
                  "Q4_0", check=False)
    assert proc.returncode != 0
    assert "intermediate_size" in proc.stderr and str(p) in proc.stderr
    assert not (tmp_path / "x.gguf").exists()
