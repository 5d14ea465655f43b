"""Sanity checks of the reference fixtures in tests/data/fixtures (made by tools/make_fixtures.py).

They check that the committed files load, agree with each other (shapes vs config.json, greedy
ids vs the saved logits, QAT copies vs their base checkpoints, llama.cpp listings vs the
safetensors bytes) and, for stories260K, agree with an independent numpy forward pass over the
GGUF weights and with the shared reference ids. numpy + json only (no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures"
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
TINY = ["llama_tiny", "gemma3_tiny", "gemma4_dense_tiny", "gemma4_moe_tiny", "gemma4_e_tiny",
        "llama_tiny_qat", "gemma4_dense_tiny_qat"]
QAT = {"llama_tiny_qat": "llama_tiny", "gemma4_dense_tiny_qat": "gemma4_dense_tiny"}


def load_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_safetensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Own minimal reader: 8-byte header length, JSON header, raw data."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], blob[base + a:base + b])
    return out


def bf16_to_f32(raw: bytes, shape) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u16.view(np.float32).reshape(shape)


def to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).reshape(x.shape)


def q4_0_lattice(w: np.ndarray) -> np.ndarray:
    blocks = w.reshape(w.shape[0], -1, 32)
    ext = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
    d = to_bf16(ext / np.float32(-8))
    q = np.clip(np.round(blocks / np.where(d == 0, 1, d)), -8, 7) * (d != 0)
    return to_bf16((d * q).astype(np.float32)).reshape(w.shape)


@pytest.fixture(scope="module")
def manifest():
    return load_json(FIX / "manifest.json")


def test_manifest_items_ok_and_files_match(manifest):
    assert set(manifest["items"]) == {"stories260K", *TINY}
    for name, item in manifest["items"].items():
        assert item["status"] == "ok", (name, item.get("error"))
        assert item["files"], name
        for rel, digest in item["files"].items():
            data = (FIX / rel).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, rel


@pytest.mark.parametrize("name", TINY)
def test_checkpoint_shapes_follow_config(name):
    d = FIX / "hf" / name
    cfg = load_json(d / "config.json")
    tensors = read_safetensors(d / "model.safetensors")
    assert all(t[0] == "BF16" for t in tensors.values())
    for n, (_, shape, raw) in tensors.items():
        assert len(raw) == 2 * int(np.prod(shape)), n
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    vocab = len(load_json(d / "tokenizer.json")["model"]["vocab"])
    assert cfg["vocab_size"] == vocab
    assert tensors["model.embed_tokens.weight"][1] == [vocab, hidden]
    assert ("lm_head.weight" in tensors) == (not cfg["tie_word_embeddings"])
    n_layers = cfg["num_hidden_layers"]
    n_shared = cfg.get("num_kv_shared_layers", 0)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        full = cfg.get("layer_types", ["full_attention"] * n_layers)[i] == "full_attention"
        hd = cfg.get("head_dim") or hidden // heads
        kv = cfg["num_key_value_heads"]
        if cfg["model_type"] == "gemma4_text" and full:
            hd = cfg["global_head_dim"]
            if cfg.get("attention_k_eq_v"):
                kv = cfg["num_global_key_value_heads"]
        assert tensors[p + "self_attn.q_proj.weight"][1] == [heads * hd, hidden]
        assert tensors[p + "self_attn.o_proj.weight"][1] == [hidden, heads * hd]
        shared = i >= n_layers - n_shared > 0 if n_shared else False
        assert (p + "self_attn.k_proj.weight" in tensors) == (not shared), (name, i)
        if not shared:
            assert tensors[p + "self_attn.k_proj.weight"][1] == [kv * hd, hidden]
            has_v = not (cfg.get("attention_k_eq_v") and full)
            assert (p + "self_attn.v_proj.weight" in tensors) == has_v, (name, i)
        ff = cfg["intermediate_size"] * (2 if cfg.get("use_double_wide_mlp") and shared else 1)
        assert tensors[p + "mlp.down_proj.weight"][1] == [hidden, ff]
        if cfg.get("enable_moe_block"):
            e, m = cfg["num_experts"], cfg["moe_intermediate_size"]
            assert tensors[p + "experts.gate_up_proj"][1] == [e, 2 * m, hidden]
            assert tensors[p + "experts.down_proj"][1] == [e, hidden, m]
            assert tensors[p + "router.proj.weight"][1] == [e, hidden]
    if cfg.get("hidden_size_per_layer_input"):
        ple = cfg["hidden_size_per_layer_input"]
        assert tensors["model.embed_tokens_per_layer.weight"][1] == [vocab, n_layers * ple]
        assert tensors["model.per_layer_model_projection.weight"][1] == [n_layers * ple, hidden]


@pytest.mark.parametrize("name", TINY)
def test_reference_logits_self_consistent(name):
    cfg = load_json(FIX / "hf" / name / "config.json")
    ref = load_json(FIX / "ref" / name / "ref.json")
    logits = np.load(FIX / "ref" / name / "logits.npy")
    rows = np.load(FIX / "ref" / name / "greedy_logits.npy")
    ids = ref["input_ids"]
    assert logits.dtype == np.float32 and rows.dtype == np.float32
    assert logits.shape == (len(ids), cfg["vocab_size"]) and rows.shape == (16, cfg["vocab_size"])
    assert np.isfinite(logits).all() and np.isfinite(rows).all()
    assert ids[0] == cfg["bos_token_id"] and max(ids) < cfg["vocab_size"]
    assert 24 <= len(ids) <= 48
    if cfg.get("sliding_window"):
        assert len(ids) > cfg["sliding_window"]
    assert [int(r.argmax()) for r in rows] == ref["greedy_ids"]
    assert int(logits[-1].argmax()) == ref["greedy_ids"][0] == ref["prompt_argmax_last"]
    np.testing.assert_allclose(rows[0], logits[-1], atol=1e-4)  # same step, two computations
    cap = cfg.get("final_logit_softcapping")
    if cap:
        assert np.abs(logits).max() < cap
    # logits depend on the position: no two rows equal
    assert len({r.tobytes() for r in logits}) == len(ids)


@pytest.mark.parametrize("name", sorted(QAT))
def test_qat_copy_is_on_lattice_and_otherwise_identical(name):
    base = read_safetensors(FIX / "hf" / QAT[name] / "model.safetensors")
    qat = read_safetensors(FIX / "hf" / name / "model.safetensors")
    ref = load_json(FIX / "ref" / name / "ref.json")
    projected = set(ref["projected"])
    assert projected and set(base) == set(qat)
    for n, (_, shape, raw) in qat.items():
        if n not in projected:
            assert raw == base[n][2], f"{n} changed although it is not projected"
            continue
        w = bf16_to_f32(raw, shape)
        w0 = bf16_to_f32(base[n][2], shape)
        np.testing.assert_array_equal(q4_0_lattice(w), w, err_msg=n)
        assert not np.array_equal(q4_0_lattice(w0), w0), f"base {n} already on the lattice"
        np.testing.assert_array_equal(q4_0_lattice(w0), w, err_msg=n)
    for item in ref["not_projected"]:  # e.g. Llama's down_proj with 172-wide rows
        assert item["shape"][1] % 32 != 0


@pytest.mark.parametrize("name", TINY)
def test_llamacpp_listing(name):
    rec = load_json(FIX / "llamacpp" / f"{name}.json")
    assert rec["attempts"] and rec["attempts"][-1]["ok"], rec["attempts"]
    g = rec["gguf"]
    assert g["n_tensors"] == len(g["tensors"]) and g["n_kv"] == len(g["metadata"])
    cfg = load_json(FIX / "hf" / name / "config.json")
    arch = g["metadata"]["general.architecture"]["value"]
    assert g["metadata"][f"{arch}.block_count"]["value"] == cfg["num_hidden_layers"]
    assert g["metadata"][f"{arch}.embedding_length"]["value"] == cfg["hidden_size"]
    assert g["metadata"]["tokenizer.ggml.tokens"]["length"] == cfg["vocab_size"]
    # a BF16 tensor the converter only renames must keep the safetensors bytes
    st = read_safetensors(FIX / "hf" / name / "model.safetensors")
    by_name = {t["name"]: t for t in g["tensors"]}
    down = by_name["blk.0.ffn_down.weight"]
    assert down["type"] == "BF16"
    raw = st["model.layers.0.mlp.down_proj.weight"][2]
    assert hashlib.sha256(raw).hexdigest() == down["sha256"]
    assert down["ne"] == list(reversed(st["model.layers.0.mlp.down_proj.weight"][1]))


# --------------------------------------------------------------------------------------------
# stories260K: HF logits vs an independent numpy forward over the GGUF weights (GGUF rope layout)
# --------------------------------------------------------------------------------------------

def _stories_forward(weights, ids, n_head=8, n_kv=4, eps=1e-5, theta=10000.0):
    x = weights["token_embd.weight"][ids].astype(np.float64)
    t, dim = x.shape
    hd = dim // n_head
    pos = np.arange(t)[:, None]
    ang = pos / theta ** (np.arange(0, hd, 2) / hd)  # [t, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

    def rope(v):  # GGUF/Meta layout: pairs (2i, 2i+1)
        v = v.reshape(t, -1, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(t, -1, hd)

    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(5):
        w = lambda n: weights[f"blk.{i}.{n}.weight"].astype(np.float64)  # noqa: E731
        h = rms(x, w("attn_norm"))
        q, k, v = rope(h @ w("attn_q").T), rope(h @ w("attn_k").T), (h @ w("attn_v").T)
        k = np.repeat(k, n_head // n_kv, axis=1)
        v = np.repeat(v.reshape(t, n_kv, hd), n_head // n_kv, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(t, dim)
        x = x + o @ w("attn_output").T
        h = rms(x, w("ffn_norm"))
        g = h @ w("ffn_gate").T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    x = rms(x, weights["output_norm.weight"])
    return x @ weights["output.weight"].astype(np.float64).T


def test_stories260k_reference():
    ref = load_json(FIX / "ref" / "stories260K" / "ref.json")
    logits = np.load(FIX / "ref" / "stories260K" / "logits.npy")
    assert logits.shape == (64, 512) and logits.dtype == np.float32
    assert ref["input_ids"][0] == 1 and len(ref["input_ids"]) == 64
    assert [int(i) for i in logits.argmax(-1)] == ref["argmax_of_logits"]
    assert ref["greedy_from_bos"][:63] == ref["input_ids"][1:]
    assert ref["greedy_from_bos"] == ref["argmax_of_logits"]
    ids_file = SHARED / "stories260K" / "greedy_from_bos.ids.txt"
    gguf_file = SHARED / "stories260K" / "stories260K.gguf"
    if not ids_file.exists() or not gguf_file.exists():
        pytest.skip("shared data not present")
    ref_ids = [int(s) for s in ids_file.read_text().split()]
    assert ref["greedy_from_bos"] == ref_ids[:64]
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(gguf_file))
    weights = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    ours = _stories_forward(weights, ref["input_ids"])
    np.testing.assert_allclose(logits, ours, atol=2e-4, rtol=0)
