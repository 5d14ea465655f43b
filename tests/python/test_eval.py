"""`qforge eval ppl`, `qforge eval kld` and `qforge imatrix` end to end on stories260K.

Oracles: an independent float64 numpy forward pass of the Llama graph straight from the GGUF
tensors (gguf package reader) for perplexity and for the imatrix activations; numpy on the
engine's own full logits (`qforge logits --all`) for the exact window/scoring rules and the KLD
statistics; the gguf package's quantizer (Q8_0 / Q4_0) and writer for the quantized test models
and its reader for the imatrix file.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

BIN = os.environ.get("QFORGE_BIN", "")
DATA = Path(os.environ.get("QFORGE_SHARED_DATA", "/nonexistent"))
STORIES = DATA / "stories260K" / "stories260K.gguf"
TEXT = DATA / "text" / "tinystories" / "tinystories_sample.txt"
CTX = 128

pytestmark = pytest.mark.skipif(not BIN or not Path(BIN).exists(), reason="QFORGE_BIN not set")


def qforge(*args, check=True):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"qforge {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def qjson(*args):
    return json.loads(qforge(*args, "--json").stdout)


@pytest.fixture(scope="module", autouse=True)
def need_data():
    if not STORIES.exists() or not TEXT.exists():
        pytest.skip("shared stories260K / tinystories data not found")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def tokens():
    out = qforge("tokenize", "-m", STORIES, "-f", TEXT, "--ids-only", "--no-parse-special").stdout
    ids = [int(x) for x in out.split()]
    assert ids[0] == 1 and len(ids) > 4 * CTX  # BOS added, enough for several windows
    return ids


def windows(ids, ctx, bos=1):
    """llama-perplexity windows: non-overlapping, first token replaced by BOS."""
    out = []
    for c in range(len(ids) // ctx):
        w = list(ids[c * ctx:(c + 1) * ctx])
        nxt = ids[c * ctx + ctx // 2 + 1:(c + 1) * ctx]  # tokens predicted by positions ctx/2..ctx-2
        w[0] = bos
        out.append((w, np.array(nxt)))
    return out


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ---- independent numpy forward pass (float64), recording every matmul input

def load_llama(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
    t = {}
    for x in r.tensors:
        shape = [int(d) for d in reversed(x.shape)]
        t[x.name] = gguf.quants.dequantize(x.data, x.tensor_type).astype(np.float64).reshape(shape)
    return f, t


def numpy_forward(model, tokens, acts=None):
    f, t = model
    n_head, n_kv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    eps = f["llama.attention.layer_norm_rms_epsilon"]
    dim = f["llama.embedding_length"]
    hd, n = dim // n_head, len(tokens)

    def record(name, x):
        if acts is not None:
            acts[name] = acts.get(name, 0) + (x * x).sum(0)

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    ang = np.arange(n)[:, None] * (10000.0 ** (-np.arange(0, hd, 2) / hd))[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):
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
        for w in ("attn_q", "attn_k", "attn_v"):
            record(p + w + ".weight", h)
        q = rope((h @ t[p + "attn_q.weight"].T).reshape(n, n_head, hd))
        k = np.repeat(rope((h @ t[p + "attn_k.weight"].T).reshape(n, n_kv, hd)), n_head // n_kv, 1)
        v = np.repeat((h @ t[p + "attn_v.weight"].T).reshape(n, n_kv, hd), n_head // n_kv, 1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, dim)
        record(p + "attn_output.weight", o)
        x = x + o @ t[p + "attn_output.weight"].T
        h = norm(x, t[p + "ffn_norm.weight"])
        record(p + "ffn_gate.weight", h)
        record(p + "ffn_up.weight", h)
        g = h @ t[p + "ffn_gate.weight"].T
        a = (g / (1 + np.exp(-g))) * (h @ t[p + "ffn_up.weight"].T)
        record(p + "ffn_down.weight", a)
        x = x + a @ t[p + "ffn_down.weight"].T
    x = norm(x, t["output_norm.weight"])
    return x @ t.get("output.weight", t["token_embd.weight"]).T


# ---- test models made with the gguf package

def copy_gguf(src, dst, quant=None, edit_tokens=None):
    """Copies a GGUF; `quant` requantizes every 2-D weight whose rows fit the block size."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "tokenizer.ggml.tokens" and edit_tokens:
            value = edit_tokens(list(value))
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    for t in r.tensors:
        data = np.array(t.data)
        shape = [int(d) for d in reversed(t.shape)]
        if quant is not None and len(shape) == 2 and shape[1] % 32 == 0 and t.name.startswith("blk."):
            q = gguf.quants.quantize(data.reshape(shape).astype(np.float32), quant)
            w.add_tensor(t.name, q, raw_dtype=quant)
        else:
            w.add_tensor(t.name, data.reshape(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def q8(tmp):
    import gguf
    return copy_gguf(STORIES, tmp / "stories_q8_0.gguf", gguf.GGMLQuantizationType.Q8_0)


@pytest.fixture(scope="module")
def q4(tmp):
    import gguf
    return copy_gguf(STORIES, tmp / "stories_q4_0.gguf", gguf.GGMLQuantizationType.Q4_0)


def engine_logits(model, tmp, window, name):
    out = tmp / f"{name}.npy"
    qforge("logits", "-m", model, "--tokens", ",".join(map(str, window)), "-o", out, "--all")
    return np.load(out)


# ---- perplexity

def test_ppl_matches_numpy_forward_and_engine_logits(tokens, tmp):
    got = qjson("eval", "ppl", "-m", STORIES, "-f", TEXT, "--ctx", CTX, "--batch", 48)
    wins = windows(tokens, CTX)
    assert got["n_chunks"] == len(wins) and got["n_ctx"] == CTX and got["bos"] == 1
    assert got["n_text_tokens"] == len(tokens)
    assert got["n_scored"] == len(wins) * (CTX - 1 - CTX // 2)
    model = load_llama(STORIES)
    nll_np, nll_engine = [], []
    for i, (w, nxt) in enumerate(wins):
        ref = log_softmax(numpy_forward(model, w))[CTX // 2:CTX - 1]
        nll_np.append(-ref[np.arange(len(nxt)), nxt])
        eng = log_softmax(engine_logits(STORIES, tmp, w, f"w{i}"))[CTX // 2:CTX - 1]
        nll_engine.append(-eng[np.arange(len(nxt)), nxt])
    for nll, tol in ((np.concatenate(nll_engine), 1e-6), (np.concatenate(nll_np), 1e-5)):
        mean = nll.mean()
        se = np.sqrt(((nll ** 2).mean() - mean ** 2) / (len(nll) - 1))
        assert got["mean_nll"] == pytest.approx(mean, rel=tol)
        assert got["ppl"] == pytest.approx(np.exp(mean), rel=tol)
        assert got["se_nll"] == pytest.approx(se, rel=tol * 100)
        assert got["ppl_se"] == pytest.approx(np.exp(mean) * se, rel=tol * 100)
    # Running PPL after each window, last one equal to the final value.
    nll = np.concatenate(nll_engine)
    per = CTX - 1 - CTX // 2
    expect = [np.exp(nll[:per * (i + 1)].mean()) for i in range(len(wins))]
    assert got["chunk_ppl"] == pytest.approx(expect, rel=1e-6)


def test_ppl_text_output_and_chunks(tmp):
    r = qforge("eval", "ppl", "-m", STORIES, "-f", TEXT, "--ctx", CTX, "--chunks", 2)
    assert r.stdout.startswith("[1]") and ",[2]" in r.stdout and "[3]" not in r.stdout
    assert "Final estimate: PPL = " in r.stdout and " +/- " in r.stdout
    j = qjson("eval", "ppl", "-m", STORIES, "-f", TEXT, "--ctx", CTX, "--chunks", 2)
    assert j["n_chunks"] == 2
    assert f"PPL = {j['ppl']:.4f}" in r.stdout


def test_ppl_errors(tmp):
    r = qforge("eval", "ppl", "-m", STORIES, "-f", TEXT, "--ctx", 100000, check=False)
    assert r.returncode == 1 and "fewer than one window" in r.stderr
    empty = tmp / "empty.txt"
    empty.write_text("")
    r = qforge("eval", "ppl", "-m", STORIES, "-f", empty, "--ctx", 16, check=False)
    assert r.returncode == 1 and "fewer than one window" in r.stderr
    r = qforge("eval", "ppl", "-m", STORIES, "-f", tmp / "missing.txt", check=False)
    assert r.returncode == 1 and "missing.txt" in r.stderr


# ---- KL divergence

def numpy_kld_stats(ref_model, test_model, tokens, tmp, tag):
    kld, nll_q, nll_p, dp, same = [], [], [], [], []
    for i, (w, nxt) in enumerate(windows(tokens, CTX)):
        lp = log_softmax(engine_logits(ref_model, tmp, w, f"{tag}r{i}"))[CTX // 2:CTX - 1]
        lq = log_softmax(engine_logits(test_model, tmp, w, f"{tag}q{i}"))[CTX // 2:CTX - 1]
        kld.append((np.exp(lp) * (lp - lq)).sum(-1))
        rows = np.arange(len(nxt))
        nll_q.append(-lq[rows, nxt])
        nll_p.append(-lp[rows, nxt])
        dp.append(np.exp(lq[rows, nxt]) - np.exp(lp[rows, nxt]))
        same.append(lp.argmax(-1) == lq.argmax(-1))
    return [np.concatenate(x) for x in (kld, nll_q, nll_p, dp, same)]


def test_kld_self_is_zero():
    j = qjson("eval", "kld", "-m", STORIES, "--ref", STORIES, "-f", TEXT, "--ctx", CTX)
    assert j["kld"]["mean"] == 0 and j["kld"]["max"] == 0
    assert j["same_top"] == 1.0 and j["ln_ppl_ratio"] == 0 and j["dp"]["rms"] == 0
    assert j["ppl"] == j["ppl_ref"] and j["exact"] is True


@pytest.mark.parametrize("which", ["q8", "q4"])
def test_kld_quantized_matches_numpy(which, tokens, tmp, request):
    qmodel = request.getfixturevalue(which)
    j = qjson("eval", "kld", "-m", qmodel, "--ref", STORIES, "-f", TEXT, "--ctx", CTX)
    kld, nll_q, nll_p, dp, same = numpy_kld_stats(STORIES, qmodel, tokens, tmp, which)
    n = len(kld)
    assert j["n_scored"] == n
    assert j["kld"]["mean"] > 0
    assert j["kld"]["mean"] == pytest.approx(kld.mean(), rel=1e-5, abs=1e-9)
    srt = np.sort(kld)
    assert j["kld"]["median"] == pytest.approx(np.percentile(srt, 50), rel=1e-4, abs=1e-9)
    assert j["kld"]["p99"] == pytest.approx(np.percentile(srt, 99), rel=1e-4, abs=1e-9)
    assert j["kld"]["max"] == pytest.approx(srt[-1], rel=1e-4, abs=1e-9)
    assert j["kld"]["se"] == pytest.approx(kld.std() / np.sqrt(n - 1), rel=1e-3)
    assert j["same_top"] == pytest.approx(same.mean(), abs=0.5 / n)
    assert j["dp"]["rms"] == pytest.approx(np.sqrt((dp ** 2).mean()), rel=1e-4, abs=1e-9)
    assert j["ppl"] == pytest.approx(np.exp(nll_q.mean()), rel=1e-6)
    assert j["ppl_ref"] == pytest.approx(np.exp(nll_p.mean()), rel=1e-6)
    assert j["ln_ppl_ratio"] == pytest.approx(nll_q.mean() - nll_p.mean(), rel=1e-4, abs=1e-9)
    if which == "q4":  # coarser quantization diverges more than Q8_0
        j8 = qjson("eval", "kld", "-m", request.getfixturevalue("q8"), "--ref", STORIES, "-f", TEXT,
                   "--ctx", CTX, "--chunks", 2)
        j4 = qjson("eval", "kld", "-m", qmodel, "--ref", STORIES, "-f", TEXT, "--ctx", CTX,
                   "--chunks", 2)
        assert j4["kld"]["mean"] > j8["kld"]["mean"]


def test_saved_reference_round_trip(q4, tmp):
    ref_all = tmp / "ref_all.qfref"
    direct = qjson("eval", "kld", "-m", q4, "--ref", STORIES, "-f", TEXT, "--ctx", CTX,
                   "--save-ref", ref_all, "--top-k", 512)
    saved = qjson("eval", "kld", "-m", q4, "--ref-logits", ref_all)
    assert saved["exact"] is False and saved["top_k"] == 512 and saved["n_ctx"] == CTX
    for key in ("n_scored", "same_top", "ppl"):
        assert saved[key] == direct[key]
    for key in ("ppl_ref", "ln_ppl_ratio"):
        assert saved[key] == pytest.approx(direct[key], rel=1e-6)
    assert saved["dp"]["rms"] == pytest.approx(direct["dp"]["rms"], rel=1e-5)
    for key in ("mean", "median", "p99", "max"):
        assert saved["kld"][key] == pytest.approx(direct["kld"][key], rel=1e-4, abs=1e-8)
    # Default top-32 file: a lower bound of the exact KLD, close for this small vocabulary;
    # everything that does not need the full distribution is unchanged. Saved without -m.
    ref32 = tmp / "ref32.qfref"
    qforge("eval", "kld", "--ref", STORIES, "-f", TEXT, "--ctx", CTX, "--save-ref", ref32)
    assert ref32.stat().st_size < ref_all.stat().st_size / 10
    s32 = qjson("eval", "kld", "-m", q4, "--ref-logits", ref32, "-f", TEXT)
    assert s32["top_k"] == 32
    assert s32["same_top"] == direct["same_top"] and s32["ppl"] == direct["ppl"]
    assert s32["ppl_ref"] == pytest.approx(direct["ppl_ref"], rel=1e-6)
    assert 0.9 * direct["kld"]["mean"] < s32["kld"]["mean"] <= direct["kld"]["mean"] * (1 + 1e-6)
    # Self against the saved file is ~0.
    s_self = qjson("eval", "kld", "-m", STORIES, "--ref-logits", ref32)
    assert abs(s_self["kld"]["mean"]) < 1e-6 and s_self["same_top"] == 1.0


def test_kld_errors(tmp):
    ref32 = tmp / "err.qfref"
    qforge("eval", "kld", "--ref", STORIES, "-f", TEXT, "--ctx", 64, "--chunks", 2, "--save-ref", ref32)
    # Vocabulary mismatch: same size, two token texts swapped.
    def swap(tokens):
        tokens[300], tokens[301] = tokens[301], tokens[300]
        return tokens
    other = copy_gguf(STORIES, tmp / "other_vocab.gguf", edit_tokens=swap)
    for args in (["--ref", STORIES, "-f", TEXT], ["--ref-logits", ref32]):
        r = qforge("eval", "kld", "-m", other, *args, "--ctx", 64, check=False)
        assert r.returncode == 1 and "vocabulary mismatch" in r.stderr
    # A different text than the one the reference was computed on.
    other_text = tmp / "other.txt"
    other_text.write_text(TEXT.read_text()[::-1])
    r = qforge("eval", "kld", "-m", STORIES, "--ref-logits", ref32, "-f", other_text, check=False)
    assert r.returncode == 1 and "does not tokenize to" in r.stderr
    r = qforge("eval", "kld", "-m", STORIES, "--ref-logits", ref32, "--ctx", 128, check=False)
    assert r.returncode == 1 and "--ctx 128 differs" in r.stderr
    # Damaged files.
    data = ref32.read_bytes()
    for name, content in (("trunc", data[:-5]), ("magic", b"X" + data[1:]), ("empty", b"")):
        bad = tmp / f"{name}.qfref"
        bad.write_bytes(content)
        r = qforge("eval", "kld", "-m", STORIES, "--ref-logits", bad, check=False)
        assert r.returncode == 1 and str(bad) in r.stderr, r.stderr
    # Argument rules.
    r = qforge("eval", "kld", "-m", STORIES, "-f", TEXT, check=False)
    assert r.returncode == 1 and "exactly one of --ref or --ref-logits" in r.stderr
    r = qforge("eval", "kld", "-m", STORIES, "--ref", STORIES, check=False)
    assert r.returncode == 1 and "-f" in r.stderr
    r = qforge("eval", "kld", "-m", STORIES, "--ref", STORIES, "-f", TEXT, "--ctx", 100000, check=False)
    assert r.returncode == 1 and "fewer than one window" in r.stderr


# ---- imatrix

def test_imatrix_matches_numpy_activations(tokens, tmp):
    import gguf

    out = tmp / "imatrix.gguf"
    r = qforge("imatrix", "-m", STORIES, "-f", TEXT, "-o", out, "--ctx", CTX, "--chunks", 3,
               check=False)
    if r.returncode != 0 and "notify_matmul_input" in r.stderr:
        pytest.skip("the CPU engine does not call the activation observer hook yet")
    assert r.returncode == 0, r.stderr
    model = load_llama(STORIES)
    acts = {}
    for w, _ in windows(tokens, CTX)[:3]:
        numpy_forward(model, w, acts)
    rd = gguf.GGUFReader(str(out))
    assert rd.fields["general.type"].contents() == "imatrix"
    assert rd.fields["imatrix.chunk_count"].contents() == 3
    assert rd.fields["imatrix.chunk_size"].contents() == CTX
    assert rd.fields["imatrix.datasets"].contents() == [str(TEXT)]
    names = [t.name for t in rd.tensors]
    expect = sorted(acts)
    assert names == [f"{n}.{s}" for n in expect for s in ("in_sum2", "counts")]
    tensors = {t.name: t for t in rd.tensors}
    for name, sums in acts.items():
        s, c = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        assert [int(d) for d in s.shape] == [len(sums), 1] and [int(d) for d in c.shape] == [1, 1]
        assert float(np.array(c.data).ravel()[0]) == 3 * CTX
        np.testing.assert_allclose(np.array(s.data).ravel(), sums, rtol=2e-4, atol=1e-6)
    # --process-output adds the output head's input (all rows).
    out2 = tmp / "imatrix_out.gguf"
    qforge("imatrix", "-m", STORIES, "-f", TEXT, "-o", out2, "--ctx", CTX, "--chunks", 1,
           "--process-output")
    rd2 = gguf.GGUFReader(str(out2))
    assert "output.weight.in_sum2" in [t.name for t in rd2.tensors]


def test_imatrix_errors(tmp):
    r = qforge("imatrix", "-m", STORIES, "-f", TEXT, "-o", tmp / "x.gguf", "--ctx", 100000,
               check=False)
    assert r.returncode == 1 and "fewer than one window" in r.stderr
    assert not (tmp / "x.gguf").exists()
