"""qforge's forward pass against transformers' logits (tests/data/fixtures, see its README).

Oracle: ref/<name>/logits.npy (every prompt position) and greedy_logits.npy (the 16 greedy steps),
computed by transformers 5.17 in float32 (eager attention, CPU) on the BF16 checkpoints hf/<name>,
and ref/stories260K/logits.npy for the real stories260K GGUF. qforge converts each checkpoint
itself (`qforge convert --type bf16` and `--type f32`: both hold the exact BF16 values) and runs
`qforge logits --kv-type f32`, so the only differences left are float32 rounding.

Tolerance: ref.json's max_abs_diff_f32_vs_f64_logits is how far transformers' float32 logits are
from the same model in float64, i.e. the float32 rounding noise of this model and prompt. Another
float32 implementation (different summation order, libm, fused kernels) is about as far from the
exact result, so the two may differ by about twice that; we allow TOL_FACTOR times it. A wrong
constant, a missing norm or scale, a RoPE detail or a masking error moves the logits by 1e-2 to 1,
orders of magnitude more (test_tolerance_is_discriminating checks that on a perturbed model).
"""
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("QFORGE_BIN", "")
DATA = Path(os.environ.get("QFORGE_SHARED_DATA", "/nonexistent"))
FIXTURES = ROOT / "tests/data/fixtures"
NAMES = ["llama_tiny", "llama_tiny_qat", "gemma3_tiny", "gemma4_dense_tiny",
         "gemma4_dense_tiny_qat", "gemma4_moe_tiny", "gemma4_e_tiny"]
TOL_FACTOR = 4.0

pytestmark = pytest.mark.skipif(not BIN or not Path(BIN).exists(), reason="QFORGE_BIN not set")


# Weight fidelity is measured with F32 activations (the CPU default quantizes activations to
# 8 bits for quantized weights, which would add its own error to the Q4_0 runs only).
ENV = dict(os.environ, QFORGE_CPU_ACT="f32")


def qforge(*args):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=300,
                       env=ENV)
    assert r.returncode == 0, f"qforge {' '.join(map(str, args))} failed: {r.stderr}"
    return r


def ref(name):
    return json.loads((FIXTURES / "ref" / name / "ref.json").read_text())


def tolerance(name):
    return TOL_FACTOR * ref(name)["max_abs_diff_f32_vs_f64_logits"]


def gguf_keys(path):
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()}


def with_metadata(path, out, extra):
    """A copy of the GGUF `path` with extra float32 metadata keys (gguf package writer)."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    copy_with_new_metadata(reader, writer, {
        k: MetadataDetails(gguf.GGUFValueType.FLOAT32, v) for k, v in extra.items()}, [])
    return out


def gemma3_scale_fix(name, path):
    """Gemma 3's query_pre_attn_scalar is not a GGUF key llama.cpp writes: its loader assumes
    head_dim (n_embd / n_head for 27B). gemma3_tiny uses 24 != head_dim 32 on purpose. When the
    converter did not record it as `gemma3.attention.scale` (which qforge's runtime reads), return
    the key to add, else None."""
    config = json.loads((FIXTURES / "hf" / name / "config.json").read_text())
    qpas = config.get("query_pre_attn_scalar")
    if config.get("model_type") != "gemma3_text" or qpas is None or qpas == config["head_dim"]:
        return None
    if "gemma3.attention.scale" in gguf_keys(path):
        return None
    return {"gemma3.attention.scale": 1.0 / math.sqrt(qpas)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """converted(name, type, *convert args) -> GGUF path, converted once per module."""
    root = tmp_path_factory.mktemp("logits_fixtures")
    cache = {}

    def get(name, type_, *extra):
        key = (name, type_, extra)
        if key not in cache:
            out = root / f"{name}.{type_}.{len(cache)}.gguf"
            qforge("convert", FIXTURES / "hf" / name, "-o", out, "--type", type_, "-q", *extra)
            fix = gemma3_scale_fix(name, out)
            cache[key] = with_metadata(out, root / f"{out.stem}.scaled.gguf", fix) if fix else out
        return cache[key]

    return get


def logits(model, tokens, out):
    qforge("logits", "-m", model, "--tokens", ",".join(map(str, tokens)), "--all", "-o", out,
           "--kv-type", "f32")
    return np.load(out)


@pytest.mark.parametrize("type_", ["bf16", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_prompt_logits_match_transformers(name, type_, converted, tmp_path):
    r = ref(name)
    want = np.load(FIXTURES / "ref" / name / "logits.npy")
    got = logits(converted(name, type_), r["input_ids"], tmp_path / "l.npy")
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    print(f"{name} {type_}: max abs diff {diff:.3g} (tolerance {tolerance(name):.3g})")
    assert diff < tolerance(name), f"{name} ({type_}): max abs diff {diff} >= {tolerance(name)}"


@pytest.mark.parametrize("name", NAMES)
def test_greedy_continuation_matches_transformers(name, converted, tmp_path):
    """The 16 greedy steps: prompt + reference greedy ids through qforge; row T-1+i holds the
    logits of step i (teacher forcing equals greedy decoding while the tokens agree, which the
    argmax check establishes wherever the reference margin exceeds twice the tolerance)."""
    r = ref(name)
    tol = tolerance(name)
    greedy = r["greedy_ids"]
    want = np.load(FIXTURES / "ref" / name / "greedy_logits.npy")
    got = logits(converted(name, "bf16"), r["input_ids"] + greedy[:-1], tmp_path / "g.npy")
    steps = got[len(r["input_ids"]) - 1:]
    assert steps.shape == want.shape
    assert float(np.abs(steps - want).max()) < tol
    checked = 0
    for i, (token, margin) in enumerate(zip(greedy, r["greedy_margins"])):
        if margin > 2 * tol:
            assert int(steps[i].argmax()) == token, f"{name}: greedy step {i}"
            checked += 1
    assert checked >= len(greedy) // 2, f"{name}: too few steps with a clear margin"


def test_stories260k_matches_transformers(tmp_path):
    model = DATA / "stories260K" / "stories260K.gguf"
    if not model.exists():
        pytest.skip(f"{model} not found")
    r = ref("stories260K")
    want = np.load(FIXTURES / "ref" / "stories260K" / "logits.npy")
    got = logits(model, r["input_ids"], tmp_path / "s.npy")
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    print(f"stories260K: max abs diff {diff:.3g}")
    assert diff < TOL_FACTOR * r["max_abs_diff_f32_vs_f64_logits"]
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_tolerance_is_discriminating(converted, tmp_path):
    """A 1% change of one constant (the sliding layers' RoPE base) must fail the tolerance."""
    name = "gemma4_dense_tiny"
    model = with_metadata(converted(name, "bf16"), tmp_path / "rope.gguf",
                          {"gemma4.rope.freq_base_swa": 10100.0})
    r = ref(name)
    got = logits(model, r["input_ids"], tmp_path / "l.npy")
    want = np.load(FIXTURES / "ref" / name / "logits.npy")
    assert float(np.abs(got - want).max()) > 100 * tolerance(name)


def test_gemma3_query_pre_attn_scalar(converted, tmp_path):
    """gemma3_tiny's attention scale is 1/sqrt(query_pre_attn_scalar = 24), not 1/sqrt(head_dim):
    either the converter records it, or without the key the logits are off (so the key is needed
    and read)."""
    name = "gemma3_tiny"
    out = tmp_path / "plain.gguf"
    qforge("convert", FIXTURES / "hf" / name, "-o", out, "--type", "bf16", "-q")
    keys = gguf_keys(out)
    if "gemma3.attention.scale" in keys:
        assert keys["gemma3.attention.scale"] == pytest.approx(1 / math.sqrt(24), rel=1e-6)
        return
    got = logits(out, ref(name)["input_ids"], tmp_path / "l.npy")
    want = np.load(FIXTURES / "ref" / name / "logits.npy")
    assert float(np.abs(got - want).max()) > 100 * tolerance(name)


# QAT checkpoints hold every projected weight as bf16(d * q) on the Q4_0 grid (fixtures README), so
# Q4_0 stores them as d and q exactly and the logits move only by the BF16 rounding of d * q;
# a checkpoint that is not on the grid loses ~6% per weight. The embeddings (not projected) stay
# BF16 here so that only the lattice tensors differ.
QAT_PAIRS = [("llama_tiny_qat", "llama_tiny"), ("gemma4_dense_tiny_qat", "gemma4_dense_tiny")]
KEEP_EMBEDDINGS = ("--override", "token_embd.weight=bf16", "output.weight=bf16")


def q4_0_drift(name, converted, tmp_path):
    ids = ref(name)["input_ids"]
    q4 = converted(name, "q4_0", *KEEP_EMBEDDINGS)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(q4)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0", types
    a = logits(q4, ids, tmp_path / f"{name}.q4.npy")
    b = logits(converted(name, "bf16"), ids, tmp_path / f"{name}.bf16.npy")
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("qat,base", QAT_PAIRS)
def test_q4_0_is_near_lossless_on_qat_checkpoints(qat, base, converted, tmp_path):
    qat_drift = q4_0_drift(qat, converted, tmp_path)
    base_drift = q4_0_drift(base, converted, tmp_path)
    print(f"q4_0 vs bf16 logits: {qat} {qat_drift:.3g}, {base} {base_drift:.3g}")
    assert qat_drift * 5 < base_drift
