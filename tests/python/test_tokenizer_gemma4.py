"""`qforge tokenize` on a Gemma 4 vocabulary (tokenizer.ggml.model "gemma4") against the HF
`tokenizers` package reading the checkpoint's own tokenizer.json.

The fixture tests/data/fixtures/hf/gemma4_dense_tiny has a Gemma-4-style tokenizer.json (BPE with
byte_fallback, normalizer Replace ' ' -> U+2581, no pre-tokenizer, <bos> template); `qforge
convert` turns it into a GGUF, and qforge's encodings/decodings of varied text must equal HF's.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[2]
HF_DIR = REPO / "tests" / "data" / "fixtures" / "hf" / "gemma4_dense_tiny"
QFORGE = os.environ.get("QFORGE_BIN", str(REPO / "build" / "release" / "qforge"))
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
SEPARATOR = "\n__ggml_vocab_test__\n"

TEXTS = [
    "",
    " ",
    "  ",
    "Hello world",
    "Once upon a time, there was a little girl named Lucy. She loved to play with her friends.",
    "The big orange tiger and the fish were friends with Ollie and Bob.",
    "multiple   spaces    between     words",
    "   leading spaces",
    "trailing spaces   ",
    "  both  ",
    "\n",
    "line one\nline two",
    "end.\n",
    "end.\n\nnext paragraph.\n\n\n\nfour newlines",
    "\n\n\n\n\n",
    "windows\r\nline\r\nendings\r\n",
    "\ttabs\tand\t\ttabs",
    " \n \n\t \r ",
    "digits 0123456789 and 3.14159, 42!",
    "Punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\u201cquoted,\u201d she said. \"Really?\" 'yes!'",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "\u4f60\u597d\uff0c\u4e16\u754c \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "emoji \U0001F600\U0001F680 and flags \U0001F1EB\U0001F1F7",
    "a\u2581b already escaped",
    "<bos>Hello<eos>",
    "<bos>user\nHi there<eos>\n<unk><mask><pad>",
    "<|channel>thought\n<channel|>answer",
    "x" * 300,
    "the the the the the",
]


def run(*args):
    proc = subprocess.run([QFORGE, *map(str, args)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("g4") / "g4.gguf"
    run("convert", HF_DIR, "-o", out, "--type", "bf16", "-q")
    return out


@pytest.fixture(scope="module")
def hf():
    return tokenizers.Tokenizer.from_file(str(HF_DIR / "tokenizer.json"))


def qforge_batch(model, texts, tmp_path, bos=False):
    """Ids of each text, all from one `qforge tokenize --separator` run."""
    assert not any(SEPARATOR in t for t in texts)
    path = tmp_path / "batch.txt"
    path.write_bytes("".join(t + SEPARATOR for t in texts).encode("utf-8"))
    args = ["tokenize", "-m", model, "-f", path, "--separator", SEPARATOR]
    if not bos:
        args.append("--no-bos")
    lines = run(*args).decode().split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == len(texts)
    return [[int(x) for x in line.split()] for line in lines[:-1]]


def qforge_decode(model, ids):
    out = run("tokenize", "-m", model, "--detokenize", ",".join(map(str, ids)),
              "--render-special")
    assert out.endswith(b"\n")
    return out[:-1].decode("utf-8")


def test_gguf_is_gemma4_with_merges(gguf_path, hf):
    gguf = pytest.importorskip("gguf")
    fields = gguf.GGUFReader(str(gguf_path)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gemma4"
    assert len(fields["tokenizer.ggml.merges"].contents()) > 0
    assert len(fields["tokenizer.ggml.tokens"].contents()) == hf.get_vocab_size()


def test_encode_matches_hf(gguf_path, hf, tmp_path):
    ours = qforge_batch(gguf_path, TEXTS, tmp_path)
    for text, ids in zip(TEXTS, ours):
        assert ids == hf.encode(text, add_special_tokens=False).ids, repr(text)


def test_bos_matches_hf_template(gguf_path, hf, tmp_path):
    # The tokenizer.json post-processor prepends <bos>; the GGUF must add the same BOS.
    texts = ["", "Hello world", "<bos>x", "\n"]
    ours = qforge_batch(gguf_path, texts, tmp_path, bos=True)
    for text, ids in zip(texts, ours):
        assert ids == hf.encode(text, add_special_tokens=True).ids, repr(text)


def test_decode_matches_hf_and_round_trips(gguf_path, hf):
    for text in TEXTS:
        ids = hf.encode(text, add_special_tokens=False).ids
        if not ids:
            continue
        decoded = qforge_decode(gguf_path, ids)
        assert decoded == hf.decode(ids, skip_special_tokens=False), repr(text)
        if "\u2581" not in text:  # an escaped space in the input decodes as ' ' (by design)
            assert decoded == text, repr(text)


def shakespeare_lines(count=300):
    path = SHARED / "text" / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path.read_text(encoding="utf-8").split("\n")[:count]


def test_without_newline_merges_matches_hf(tmp_path):
    # Without a merge that joins newlines with other characters (the fixture's "." + "\n"),
    # qforge cuts the text at newline runs as llama.cpp does; HF must still agree.
    hf_dir = tmp_path / "hf"
    shutil.copytree(HF_DIR, hf_dir)
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    merges = tj["model"]["merges"]
    assert [".", "\n"] in merges
    tj["model"]["merges"] = [m for m in merges if m != [".", "\n"]]
    (hf_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    model = tmp_path / "g4.gguf"
    run("convert", hf_dir, "-o", model, "--type", "bf16", "-q")
    hf = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    texts = [t for t in TEXTS if "\n" in t] + ["end.\nend.\n\n.\n\n\n."]
    for text, ids in zip(texts, qforge_batch(model, texts, tmp_path)):
        assert ids == hf.encode(text, add_special_tokens=False).ids, repr(text)


def test_shakespeare_lines_match_hf(gguf_path, hf, tmp_path):
    lines = shakespeare_lines()
    block = "\n".join(lines)  # newlines inside one text: merges across ".\n" etc.
    texts = lines + [block]
    ours = qforge_batch(gguf_path, texts, tmp_path)
    for text, ids in zip(texts, ours):
        assert ids == hf.encode(text, add_special_tokens=False).ids, repr(text)
    assert qforge_decode(gguf_path, ours[-1]) == block
