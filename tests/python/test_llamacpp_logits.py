"""qforge's CPU logits on the default model (Gemma 3 270M Q4_K_M) against llama.cpp's.

The oracle is data recorded once from a llama.cpp CPU build (tools/llamacpp_logits_fixture.py
turns `llama-perplexity --kl-divergence-base` output into
tests/data/fixtures/llamacpp_logits/gemma3_270m_q4_k_m_logprobs.json: 4 windows of 128 wikitext-2
tokens, and for the 63 scored positions of each the top-10 tokens with their log-probabilities
and the next token's log-probability). qforge runs the same windows (first token replaced by BOS,
as llama-perplexity does) with `qforge logits --all`.

The two engines do not compute bit-identical logits (llama.cpp's CPU path quantizes activations
to 8 bits for quantized weights; summation orders differ), so the test bounds the disagreement:
same top token at >= 93% of positions, mean |delta log p| over llama.cpp's top-10 tokens <= 0.15
nats, and the mean next-token log-likelihood within 0.05 nats. The measured values are printed
(pytest -s) and recorded in docs/benchmarks.md.
"""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
QFORGE = os.environ.get("QFORGE_BIN", str(ROOT / "build/release/qforge"))
MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", ROOT / "models/gemma-3-270m-q4_k_m.gguf"))
if not MODEL.is_absolute():
    MODEL = ROOT / MODEL
FIXTURE = ROOT / "tests/data/fixtures/llamacpp_logits/gemma3_270m_q4_k_m_logprobs.json"
BOS = 2  # Gemma's <bos>; the fixture's model adds BOS


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def fixture():
    if not MODEL.exists():
        pytest.skip(f"default model not installed ({MODEL})")
    fx = json.loads(FIXTURE.read_text())
    if sha256(MODEL) != fx["model_sha256"]:
        pytest.skip("the installed default model is not the file the fixture was recorded from")
    return fx


def qforge_logprobs(tokens, tmp_path):
    out = tmp_path / "logits.npy"
    p = subprocess.run([QFORGE, "logits", "-m", str(MODEL), "--tokens", ",".join(map(str, tokens)),
                        "-o", str(out), "--all"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    logits = np.load(out).astype(np.float64)
    assert logits.shape == (len(tokens), 262144)
    mx = logits.max(axis=1, keepdims=True)
    return logits - (mx + np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)))


def test_logits_agree_with_llamacpp(fixture, tmp_path):
    n_ctx = fixture["n_ctx"]
    same_top, diffs, dnll = [], [], []
    for c in range(fixture["n_chunk"]):
        tokens = list(fixture["tokens"][c * n_ctx:(c + 1) * n_ctx])
        tokens[0] = BOS
        lp = qforge_logprobs(tokens, tmp_path)
        for p in (q for q in fixture["positions"] if q["chunk"] == c):
            row = lp[p["pos"]]
            same_top.append(int(np.argmax(row)) == p["top"][0][0])
            diffs.extend(abs(row[i] - v) for i, v in p["top"])
            dnll.append(row[p["next"]] - p["logp_next"])
    top1 = float(np.mean(same_top))
    mean_diff = float(np.mean(diffs))
    mean_dnll = float(np.mean(dnll))
    print(f"\nvs llama.cpp: same top-1 {100 * top1:.2f}% of {len(same_top)} positions, "
          f"mean |dlogp| (top-10) {mean_diff:.4f}, max {max(diffs):.4f}, "
          f"mean d(log p(next)) {mean_dnll:+.4f}")
    assert top1 >= 0.93
    assert mean_diff <= 0.15
    assert abs(mean_dnll) <= 0.05
