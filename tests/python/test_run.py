"""`qforge run` / `qforge logits` end to end.

Oracles: the gguf package reads the stories260K tensors for an independent numpy forward pass
(llama: RMSNorm, adjacent-pair RoPE, GQA, SwiGLU); the shared greedy reference text; numpy's own
.npy reader.
"""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

BIN = os.environ.get("QFORGE_BIN", "")
DATA = Path(os.environ.get("QFORGE_SHARED_DATA", "/nonexistent"))
DEFAULT_MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", "/nonexistent"))
STORIES = DATA / "stories260K" / "stories260K.gguf"

pytestmark = pytest.mark.skipif(not BIN or not Path(BIN).exists(), reason="QFORGE_BIN not set")


def qforge(*args, check=True):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"qforge {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def need(path):
    if not path.exists():
        pytest.skip(f"{path} not found")


def numpy_llama_logits(path, tokens):
    """Reference forward pass over all positions, float64, straight from the GGUF tensors."""
    import gguf

    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
    t = {x.name: np.array(x.data, dtype=np.float64).reshape([int(d) for d in reversed(x.shape)])
         for x in r.tensors}
    n_head, n_kv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    eps = f["llama.attention.layer_norm_rms_epsilon"]
    dim = f["llama.embedding_length"]
    hd = dim // n_head
    n = len(tokens)

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    pos = np.arange(n)[:, None]
    inv = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = pos * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # x: [n, heads, hd]; adjacent pairs rotate
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    x = t["token_embd.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for il in range(f["llama.block_count"]):
        p = f"blk.{il}."
        h = norm(x, t[p + "attn_norm.weight"])
        q = rope((h @ t[p + "attn_q.weight"].T).reshape(n, n_head, hd))
        k = rope((h @ t[p + "attn_k.weight"].T).reshape(n, n_kv, hd))
        v = (h @ t[p + "attn_v.weight"].T).reshape(n, n_kv, hd)
        k = np.repeat(k, n_head // n_kv, axis=1)
        v = np.repeat(v, n_head // n_kv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, dim)
        x = x + o @ t[p + "attn_output.weight"].T
        h = norm(x, t[p + "ffn_norm.weight"])
        g = h @ t[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
    x = norm(x, t["output_norm.weight"])
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def test_logits_npy_matches_numpy_reference(tmp_path):
    need(STORIES)
    tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]
    out = tmp_path / "logits.npy"
    qforge("logits", "-m", STORIES, "--tokens", ",".join(map(str, tokens)), "-o", out, "--all")
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (len(tokens), 512)
    ref = numpy_llama_logits(STORIES, tokens)
    assert np.abs(got - ref).max() < 1e-3
    # Without --all: the last row only.
    qforge("logits", "-m", STORIES, "--tokens", ",".join(map(str, tokens)), "-o", out)
    last = np.load(out)
    assert last.shape == (1, 512)
    assert np.abs(last[0] - ref[-1]).max() < 1e-3


def test_logits_bad_token_list_is_an_error(tmp_path):
    need(STORIES)
    r = qforge("logits", "-m", STORIES, "--tokens", "1,x", "-o", tmp_path / "a.npy", check=False)
    assert r.returncode == 1 and "--tokens" in r.stderr
    r = qforge("logits", "-m", STORIES, "--tokens", "1,999", "-o", tmp_path / "a.npy", check=False)
    assert r.returncode == 1 and "vocabulary" in r.stderr
    assert not (tmp_path / "a.npy").exists()


def test_run_greedy_prints_reference_story():
    need(STORIES)
    reference = (DATA / "stories260K" / "greedy_from_bos.txt").read_text()
    r = qforge("run", "-m", STORIES, "-n", "257", "--temp", "0", "--ctx", "512")
    assert r.stdout.strip() == reference.strip()
    assert "tokens/s" in r.stderr and "prompt:" in r.stderr and "generation:" in r.stderr


def test_run_prompt_continues_text_and_seed_reproduces():
    need(STORIES)
    args = ["run", "-m", STORIES, "-p", "Once upon a time", "-n", "30", "--temp", "0.9", "--seed", "5"]
    a, b = qforge(*args), qforge(*args)
    assert a.stdout == b.stdout and a.stdout.strip()
    greedy = qforge("run", "-m", STORIES, "-p", "Once upon a time", "-n", "10", "--temp", "0")
    reference = (DATA / "stories260K" / "greedy_from_bos.txt").read_text()
    # Same context as the reference after its first four words, so the same continuation.
    assert reference.startswith("Once upon a time" + greedy.stdout.rstrip("\n"))


def test_run_errors_are_clear():
    need(STORIES)
    r = qforge("run", "-m", STORIES, "-p", "hi", "--device", "cuda", check=False)
    if r.returncode != 0:  # CPU-only build, or no GPU on this machine (CI)
        assert r.returncode == 1, r.stderr
        assert ("CUDA backend not available in this build" in r.stderr
                or "no CUDA device is available" in r.stderr), r.stderr
    r = qforge("run", "-m", STORIES, "-n", "20", "--ctx", "8", check=False)
    assert r.returncode == 1 and "context" in r.stderr
    r = qforge("run", "-m", STORIES, "-p", "hi", "--decode-x", "int8", check=False)
    assert r.returncode == 1 and "--decode-x applies to --device cuda only" in r.stderr
    r = qforge("run", "-m", STORIES, "-p", "hi", "--device", "cuda", "--decode-x", "q8",
               check=False)
    assert r.returncode == 1 and "unknown decode x representation 'q8'" in r.stderr
    vocab_only = DATA / "llama.cpp-vocab" / "ggml-vocab-phi-3.gguf"
    if vocab_only.exists():
        r = qforge("run", "-m", vocab_only, "-p", "hi", check=False)
        assert r.returncode == 1 and "unsupported architecture 'phi3'" in r.stderr


def test_gemma_logits_shape():
    need(DEFAULT_MODEL)
    out = Path(os.environ.get("QFORGE_BUILD_DIR", "/tmp")) / "test-tmp" / "gemma_logits.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    qforge("logits", "-m", DEFAULT_MODEL, "--tokens", "2,818,5279,529,7001,563", "-o", out, "--all")
    got = np.load(out)
    assert got.shape == (6, 262144) and got.dtype == np.float32
    assert np.isfinite(got).all()
