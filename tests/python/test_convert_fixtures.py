"""`qforge convert --type bf16` against llama.cpp's own converter.

Oracle: tests/data/fixtures/llamacpp/<name>.json, the listing of what llama.cpp's
convert_hf_to_gguf.py (--outtype bf16) wrote for tests/data/fixtures/hf/<name>: every metadata key
(type and value; arrays by item type, length, head and a hash of all items) and every tensor (name,
ne, type, byte count, sha256 of the data). qforge's file is listed with the same code
(tools/fixture_lib/gguf_dump.py, which reads it with the gguf package) and must agree exactly,
except for the keys in ALLOWED_DIFFERENCES.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from fixture_lib.gguf_dump import dump  # noqa: E402

QFORGE = os.environ.get("QFORGE_BIN", str(ROOT / "build/release/qforge"))
FIXTURES = ROOT / "tests/data/fixtures"
NAMES = ["llama_tiny", "llama_tiny_qat", "gemma3_tiny", "gemma4_dense_tiny", "gemma4_moe_tiny",
         "gemma4_e_tiny", "gemma4_dense_tiny_qat"]

# Naming/provenance keys that llama.cpp derives from the directory name, README model card and
# config `_name_or_path` with heuristics. qforge writes general.name from the directory name
# (equal here, title case as llama.cpp); the rest it does not write.
ALLOWED_DIFFERENCES = {
    "general.basename", "general.finetune", "general.version", "general.organization",
    "general.license", "general.license.name", "general.license.link", "general.tags",
    "general.languages", "general.datasets", "general.base_model.count",
    # written only where query_pre_attn_scalar differs from what llama.cpp's runtime assumes
    # (gemma3_tiny); llama.cpp's converter drops it, which changes that model's logits.
    "gemma3.attention.scale",
}

# gemma3_tiny's listing took llama.cpp's GPT-2 BPE fallback (no tokenizer.model; pre-tokenizer
# patched to "default", fixtures README), a llama.cpp artefact, not a property of the checkpoint.
# qforge's tokenizer writes the byte-fallback BPE as the SentencePiece-style "llama" model instead,
# so the keys that encode the tokenizer *model* (model, pre, token types, merges vs scores, space
# prefix) are not compared for it; tokens, special ids, add_bos/eos and the template still are.
TOKENIZER_ARTEFACTS = {"gemma3_tiny": {
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.add_space_prefix"}}


def convert(name, out_dir, *extra):
    out = out_dir / f"{name}.gguf"
    proc = subprocess.run([QFORGE, "convert", FIXTURES / "hf" / name, "-o", out, "--type", "bf16",
                           "-q", *extra], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module", params=NAMES)
def converted(request, tmp_path_factory):
    name = request.param
    oracle = json.loads((FIXTURES / "llamacpp" / f"{name}.json").read_text())["gguf"]
    out = convert(name, tmp_path_factory.mktemp(name))
    return name, oracle, dump(str(out))


def test_tensors_identical(converted):
    name, oracle, ours = converted
    want = {t["name"]: t for t in oracle["tensors"]}
    got = {t["name"]: t for t in ours["tensors"]}
    assert sorted(got) == sorted(want), f"{name}: tensor names differ"
    for tname, w in want.items():
        g = got[tname]
        assert (g["ne"], g["type"], g["n_bytes"]) == (w["ne"], w["type"], w["n_bytes"]), tname
        assert g["sha256"] == w["sha256"], f"{name}: data of {tname} differs"


def test_tensor_order_matches(converted):
    _, oracle, ours = converted
    assert [t["name"] for t in ours["tensors"]] == [t["name"] for t in oracle["tensors"]]


def compare_keys(name, want, got, keys):
    for key in keys:
        assert key in got, f"{name}: missing metadata key {key}"
        assert got[key] == want[key], f"{name}: {key}: qforge {got[key]} != llama.cpp {want[key]}"


def test_model_metadata_identical(converted):
    name, oracle, ours = converted
    want = {k: v for k, v in oracle["metadata"].items() if not k.startswith("tokenizer.")}
    got = {k: v for k, v in ours["metadata"].items() if not k.startswith("tokenizer.")}
    compare_keys(name, want, got, [k for k in want if k not in ALLOWED_DIFFERENCES])
    extra = set(got) - set(want) - ALLOWED_DIFFERENCES
    assert not extra, f"{name}: keys llama.cpp does not write: {sorted(extra)}"


def test_tokenizer_metadata_identical(converted):
    name, oracle, ours = converted
    skip = TOKENIZER_ARTEFACTS.get(name, set())
    want = {k: v for k, v in oracle["metadata"].items() if k.startswith("tokenizer.") and k not in skip}
    got = {k: v for k, v in ours["metadata"].items() if k.startswith("tokenizer.") and k not in skip}
    compare_keys(name, want, got, list(want))
    assert not set(got) - set(want), f"{name}: extra tokenizer keys {sorted(set(got) - set(want))}"


def test_no_tokenizer_flag_omits_vocabulary(tmp_path):
    out = convert("llama_tiny", tmp_path, "--no-tokenizer")
    keys = dump(str(out))["metadata"]
    assert not [k for k in keys if k.startswith("tokenizer.")]
    assert keys["general.architecture"]["value"] == "llama"


def multimodal_variant(name, dst, prefix):
    """`name` re-saved the way *ForConditionalGeneration checkpoints are: text tensors under
    `prefix`, config under text_config, plus a vision tower the converter must skip."""
    src = FIXTURES / "hf" / name
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            (dst / f.name).write_bytes(f.read_bytes())
    raw = (src / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    renamed = {}
    for k, v in header.items():
        if k == "__metadata__":
            renamed[k] = v
        else:
            renamed[prefix + k.removeprefix("model.")] = v
    renamed["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = {
        "dtype": "BF16", "shape": [4, 8], "data_offsets": [end, end + 64]}
    hj = json.dumps(renamed).encode()
    (dst / "model.safetensors").write_bytes(struct.pack("<Q", len(hj)) + hj + data[:end] + bytes(64))
    text = json.loads((src / "config.json").read_text())
    arch = text["architectures"][0].replace("ForCausalLM", "ForConditionalGeneration")
    config = {"architectures": [arch], "model_type": text["model_type"].removesuffix("_text"),
              "text_config": text, "vision_config": {"hidden_size": 8}}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("name,prefix", [("gemma3_tiny", "model.language_model."),
                                         ("gemma3_tiny", "language_model.model."),
                                         ("gemma4_e_tiny", "model.language_model.")])
def test_conditional_generation_text_part(name, prefix, tmp_path):
    ckpt = multimodal_variant(name, tmp_path / name, prefix)
    ours = dump(str(_convert_dir(ckpt, tmp_path)))
    oracle = json.loads((FIXTURES / "llamacpp" / f"{name}.json").read_text())["gguf"]
    assert [(t["name"], t["sha256"]) for t in ours["tensors"]] == \
        [(t["name"], t["sha256"]) for t in oracle["tensors"]]
    skip = ("tokenizer.", "general.name")
    want = {k: v for k, v in oracle["metadata"].items() if not k.startswith(skip) and k not in ALLOWED_DIFFERENCES}
    got = {k: v for k, v in ours["metadata"].items() if not k.startswith(skip) and k not in ALLOWED_DIFFERENCES}
    assert got == want
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["skipped"] == ["model.vision_tower.vision_model.embeddings.patch_embedding.weight"]


def _convert_dir(ckpt, out_dir):
    out = out_dir / "mm.gguf"
    proc = subprocess.run([QFORGE, "convert", ckpt, "-o", out, "--type", "bf16", "-q",
                           "--report", out_dir / "r.json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out
