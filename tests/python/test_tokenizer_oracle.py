"""`qforge tokenize` against the `sentencepiece` package and llama.cpp's tokenizer test vectors.

1. Gemma 3 270M (the default model; tokenizer.ggml.model=llama, 262144 pieces): a SentencePiece
   ModelProto is built from the GGUF vocabulary (BPE, byte_fallback, identity normalisation, no
   dummy prefix as the GGUF says add_space_prefix=false, extra whitespace kept), loaded into
   sentencepiece, and its encodings of real text are compared with qforge's.
   The venv has no protobuf runtime, so sentencepiece_model_pb2 cannot be imported; the proto
   is serialised here by hand, with the field numbers read at run time from the descriptor that
   ships inside sentencepiece_model_pb2.py (so a wrong number cannot go unnoticed).
2. llama.cpp's conformance vectors (models/ggml-vocab-*.gguf + .inp/.out), as test-tokenizer-0
   runs them: no BOS/EOS, no special-token parsing, each string exactly as between separators.
"""
import ast
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")

QFORGE = os.environ.get("QFORGE_BIN", "build/release/qforge")
SHARED = Path(os.environ.get("QFORGE_SHARED_DATA", "/work/shared/data"))
DEFAULT_MODEL = Path(os.environ.get("QFORGE_DEFAULT_MODEL", "models/gemma-3-270m-q4_k_m.gguf"))
VOCABS = SHARED / "llama.cpp-vocab"
SEPARATOR = b"\n__ggml_vocab_test__\n"
META = "\u2581"


def qforge(*args, input_bytes=None):
    proc = subprocess.run([QFORGE, *map(str, args)], capture_output=True, input=input_bytes)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def qforge_ids(model, text_path):
    out = qforge("tokenize", "-m", model, "-f", text_path, "--ids-only", "--no-bos",
                 "--no-parse-special")
    return [int(x) for x in out.split()]


# ---- a minimal protobuf writer, with field numbers taken from sentencepiece's own descriptor

def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf, i):
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def _parse(buf):
    i, fields = 0, []
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"wire type {wire}")
        fields.append((number, value))
    return fields


def sentencepiece_field_numbers():
    """{message name: {field name: number}} from the FileDescriptorProto in the _pb2 module."""
    src = (Path(spm.__file__).parent / "sentencepiece_model_pb2.py").read_text()
    blob = ast.literal_eval(re.search(r"AddSerializedFile\((b'.*?')\)", src, re.S).group(1))
    numbers = {}

    def walk(message):
        fields = _parse(message)
        name = next(v for f, v in fields if f == 1).decode()
        numbers[name] = {}
        for f, v in fields:
            if f == 2:  # FieldDescriptorProto: name = 1, number = 3
                d = dict(_parse(v))
                numbers[name][d[1].decode()] = d[3]
            elif f == 3:  # nested message
                walk(v)

    for f, v in _parse(blob):
        if f == 4:  # message_type
            walk(v)
    return numbers


def build_sentencepiece_model(reader):
    return spm.SentencePieceProcessor(model_proto=sentencepiece_model_bytes(reader))


def sentencepiece_model_bytes(reader):
    num = sentencepiece_field_numbers()
    mp, sp_, ts, ns = (num[k] for k in ("ModelProto", "SentencePiece", "TrainerSpec",
                                          "NormalizerSpec"))

    def key(number, wire):
        return _varint((number << 3) | wire)

    def string(number, data):
        return key(number, 2) + _varint(len(data)) + data

    def uint(number, value):
        return key(number, 0) + _varint(value)

    def field(name):
        return reader.fields[f"tokenizer.ggml.{name}"]

    tokens = field("tokens")
    tokens = [bytes(tokens.parts[i]) for i in tokens.data]
    scores = field("scores")
    scores = [float(scores.parts[i][0]) for i in scores.data]
    types = field("token_type")
    types = [int(types.parts[i][0]) for i in types.data]
    unk = int(field("unknown_token_id").parts[-1][0])
    bos = int(field("bos_token_id").parts[-1][0])
    eos = int(field("eos_token_id").parts[-1][0])
    pad = int(field("padding_token_id").parts[-1][0])
    assert bool(field("add_space_prefix").parts[-1][0]) is False

    out = bytearray()
    for i, (text, score, ttype) in enumerate(zip(tokens, scores, types, strict=True)):
        if ttype == 4:
            # llama.cpp's converter turned '▁' into ' ' in user-defined tokens; undo it, since
            # SentencePiece matches them against the whitespace-escaped text.
            text = text.replace(b" ", META.encode())
        if i == unk:
            ttype = 2  # SentencePiece wants its unk piece typed UNKNOWN (the GGUF says CONTROL)
        piece = (string(sp_["piece"], text) + key(sp_["score"], 5) + struct.pack("<f", score)
                 + uint(sp_["type"], ttype))
        out += string(mp["pieces"], piece)
    trainer = (uint(ts["model_type"], 2) + uint(ts["vocab_size"], len(tokens))
               + uint(ts["byte_fallback"], 1) + uint(ts["unk_id"], unk)
               + uint(ts["bos_id"], bos) + uint(ts["eos_id"], eos) + uint(ts["pad_id"], pad))
    normalizer = (string(ns["name"], b"identity") + uint(ns["add_dummy_prefix"], 0)
                  + uint(ns["remove_extra_whitespaces"], 0) + uint(ns["escape_whitespaces"], 1))
    out += string(mp["trainer_spec"], trainer) + string(mp["normalizer_spec"], normalizer)
    return bytes(out)


def sample_texts():
    """Varied real text: prose, code-like lines, numbers, Unicode, emoji, CJK, whitespace runs."""
    texts = []
    text_dir = SHARED / "text"
    for rel, start, n_lines in [("wikitext-2-raw/wiki.test.raw", 0, 120),
                                ("wikitext-2-raw/wiki.test.raw", 30000, 80),
                                ("tinyshakespeare/input.txt", 0, 80),
                                ("war-and-peace/warpeace_input.txt", 5000, 80),
                                ("tinystories/tinystories_sample.txt", 0, 40)]:
        path = text_dir / rel
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            texts.append("".join(lines[start:start + n_lines]))
    inp = VOCABS / "ggml-vocab-llama-spm.gguf.inp"
    if inp.exists():
        texts += [s.decode("utf-8") for s in inp.read_bytes().split(SEPARATOR)[:-1]]
    texts += [
        "def f(x):\n\tif x >= 10:\n\t\treturn {'a': [1, 2, 3]}  # comment\n    pass\n",
        "int main() { printf(\"%d\\n\", 0x7fff); return -1; } // C++ <vector> && ||",
        "3.14159 2,718 1e-9 100000000000 -42 +7 1/3 50% $19.99 #1 @user",
        "Ünïcödé: naïve café, Straße, Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
        "日本語のテキストと中文文本，한국어 텍스트。　全角スペース",
        "emoji 😀😃🦙 👩‍👩‍👧 🇺🇸 ✅ ❤️ 🏳️‍🌈",
        "multiple     spaces   and\t\ttabs \n\n\n newlines \r\n carriage\rreturn   ",
        "   leading and trailing   ",
        "<b>bold</b> <table><tr><td>x</td></tr></table> [multimodal] <start_of_image>",
        "\u200b\u00a0\u2028\ufeff zero-width and odd spaces \u3000",
    ]
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def gemma():
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL} not present")
    # gguf.GGUFReader needs several seconds for a 262k-entry vocabulary, so the derived model
    # is cached in the build directory, keyed by the GGUF's size and mtime.
    stat = DEFAULT_MODEL.stat()
    cache_dir = Path(os.environ.get("QFORGE_BUILD_DIR", "build")) / "test-tmp"
    cache = cache_dir / f"gemma3-spm-{stat.st_size}-{stat.st_mtime_ns}.model"
    if not cache.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        data = sentencepiece_model_bytes(gguf.GGUFReader(str(DEFAULT_MODEL)))
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(cache)
    return spm.SentencePieceProcessor(model_proto=cache.read_bytes())


def test_gemma3_matches_sentencepiece(gemma, tmp_path):
    if not (SHARED / "text").exists() or not VOCABS.exists():
        pytest.skip(f"shared text and vocab data not found under {SHARED}")
    texts = sample_texts()
    assert len(texts) > 40
    # One qforge run over all samples (loading a 262k vocabulary per sample would be slow); on
    # a mismatch, the samples are compared one by one to name the first that differs.
    document = "\n\n".join(texts)
    doc_path = tmp_path / "doc.txt"
    doc_path.write_bytes(document.encode("utf-8"))
    expected = gemma.encode(document)
    got = qforge_ids(DEFAULT_MODEL, doc_path)
    if got != expected:
        for i, text in enumerate(texts):
            path = tmp_path / f"sample{i}.txt"
            path.write_bytes(text.encode("utf-8"))
            want = gemma.encode(text)
            have = qforge_ids(DEFAULT_MODEL, path)
            assert have == want, f"sample {i} {text[:60]!r}: {[gemma.id_to_piece(t) for t in want]}"
        pytest.fail("the document differs although every sample matches")
    assert len(expected) > 5000


def test_gemma3_bos_and_detokenize(gemma, tmp_path):
    text = "Hello world!\n  Indented line\twith tab 😀 日本"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    with_bos = qforge("tokenize", "-m", DEFAULT_MODEL, "-f", path, "--ids-only")
    ids = [int(x) for x in with_bos.split()]
    bos = gemma.piece_to_id("<bos>")
    assert gemma.id_to_piece(ids[0]) == "<bos>"  # GGUF: add_bos_token = true
    assert ids == [bos] + gemma.encode(text)
    decoded = qforge("tokenize", "-m", DEFAULT_MODEL, "--detokenize", ",".join(map(str, ids)))
    assert decoded == (gemma.decode(ids) + "\n").encode("utf-8")
    assert decoded == (text + "\n").encode("utf-8")


def vocab_names():
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")]
                  for p in VOCABS.glob("ggml-vocab-*.gguf.inp"))


@pytest.mark.parametrize("name", vocab_names())
def test_llama_cpp_vocab_vectors(name):
    model = VOCABS / f"ggml-vocab-{name}.gguf"
    if not model.exists():
        pytest.skip(f"{model.name} is not in the snapshot (only its .inp/.out are)")
    inp = VOCABS / f"ggml-vocab-{name}.gguf.inp"
    inputs = inp.read_bytes().split(SEPARATOR)
    assert inputs[-1] == b""  # every string is followed by the separator
    inputs = inputs[:-1]
    outputs = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text().split("\n")
    assert len(outputs) == len(inputs) + 1 and outputs[-1] == ""
    # One run over the file: --separator tokenizes each string on its own, one line of ids each.
    out = qforge("tokenize", "-m", model, "-f", inp, "--separator", SEPARATOR.decode(),
                 "--ids-only", "--no-bos", "--no-parse-special").decode().split("\n")
    assert out[-1] == ""
    got_lines = out[:-1]
    assert len(got_lines) == len(inputs)
    failures = [f"#{i} {text[:40]!r}: got {got.split()[:20]} want {want.split()[:20]}"
                for i, (text, got, want) in enumerate(zip(inputs, got_lines, outputs))
                if got.split() != want.split()]
    assert not failures, "\n".join(failures)


def test_bad_input_reports_errors(tmp_path):
    model = VOCABS / "ggml-vocab-gpt-2.gguf"
    if not model.exists():
        pytest.skip(f"{model} not present")
    proc = subprocess.run([QFORGE, "tokenize", "-m", str(model), "--detokenize", "15496,999999"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "999999" in proc.stderr
    proc = subprocess.run([QFORGE, "tokenize", "-m", str(tmp_path / "none.gguf"), "-p", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "none.gguf" in proc.stderr
