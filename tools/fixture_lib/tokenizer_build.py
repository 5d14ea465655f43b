"""Builds small SentencePiece-style byte-fallback BPE tokenizers with the `tokenizers` library.

The layout mirrors the tokenizer.json of Llama 2 / Gemma HF checkpoints: a BPE model with
byte_fallback, 256 <0xNN> byte tokens in the base vocab, a normalizer that turns ' ' into '▁'
(Llama also prepends '▁'), no pre-tokenizer, and a Sequence decoder. Merges are learned on
whitespace-split words, so no merged token holds a '▁' other than at its start.
"""

from __future__ import annotations

import json

META = "\u2581"  # '▁'

LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA4_SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|think|>", "<|channel>",
    "<channel|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
    "<tool_response|>", '<|"|>', "<|image|>", "<|audio|>", "<|video|>",
]


def train_merges(text: str, n_tokens: int) -> tuple[list[str], list[list[str]]]:
    """Learns BPE on `text` with tokenizers' trainer. Returns (learned tokens, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=n_tokens, show_progress=False, special_tokens=[],
                                  min_frequency=2)
    tok.train_from_iterator([text], trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    learned = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in data["model"]["merges"]]
    return learned, merges


def build_tokenizer_json(style: str, text: str, vocab_size: int) -> dict:
    """style: 'llama' (prefix space, <s>/</s>) or 'gemma3' / 'gemma4' (no prefix space)."""
    specials = {"llama": LLAMA_SPECIALS, "gemma3": GEMMA3_SPECIALS, "gemma4": GEMMA4_SPECIALS}[style]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    n_learned = vocab_size - len(specials) - len(byte_tokens)
    assert n_learned > 60, "vocab too small"
    learned, merges = train_merges(text, n_learned)
    ordered = specials + byte_tokens + [t for t in learned if t not in byte_tokens]
    assert len(set(ordered)) == len(ordered)
    vocab = {t: i for i, t in enumerate(ordered)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(specials)]
    replace_space = {"type": "Replace", "pattern": {"String": " "}, "content": META}
    if style == "llama":
        normalizer = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": META}, replace_space]}
    else:
        normalizer = replace_space
    decoders = [{"type": "Replace", "pattern": {"String": META}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if style == "llama":
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": bos_post_processor(specials[1] if style == "llama" else "<bos>",
                                             specials.index("<s>" if style == "llama" else "<bos>")),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def bos_post_processor(bos: str, bos_id: int) -> dict:
    """TemplateProcessing that puts BOS in front, as in Llama 2 / Gemma tokenizer.json files."""
    seq = lambda name: {"Sequence": {"id": name, "type_id": 0}}  # noqa: E731
    special = {"SpecialToken": {"id": bos, "type_id": 0}}
    return {"type": "TemplateProcessing", "single": [special, seq("A")],
            "pair": [special, seq("A"), special, seq("B")],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}


def tokenizer_config(style: str, chat_template: str | None) -> dict:
    if style == "llama":
        cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "pad_token": None, "add_bos_token": True,
               "add_eos_token": False, "add_prefix_space": True}
    else:
        cfg = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
               "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
               "add_bos_token": True, "add_eos_token": False}
    cfg["model_max_length"] = 512
    cfg["clean_up_tokenization_spaces"] = False
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    return cfg
