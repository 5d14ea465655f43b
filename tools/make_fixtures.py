#!/usr/bin/env python3
"""Makes qforge's reference fixtures with Hugging Face transformers (needs torch + transformers).

Run on a machine with torch/transformers/tokenizers and the `gguf` package (see
tests/data/fixtures/README.md for the exact command). Everything runs on the CPU in float32
(plus a float64 cross-check), seeds fixed. Outputs under --out:

  hf/<name>/        tiny random checkpoints (save_pretrained, BF16 safetensors, tokenizer files)
  ref/<name>/       logits.npy [T, vocab] float32 for the prompt, greedy_logits.npy [16, vocab]
                    (the row each greedy token was taken from), ref.json (ids, greedy ids, margins)
  ref/stories260K/  logits and greedy ids of /work/shared/data/stories260K/stories260K.gguf run
                    as a transformers LlamaForCausalLM
  manifest.json     versions, per-item status, checks

Each item is independent: a failing one is recorded in manifest.json and the rest go on.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_lib import qat, tokenizer_build  # noqa: E402

SEED = 20261127
TOKENIZER_VOCAB = 500  # not a power of two on purpose
GREEDY_STEPS = 16
STORIES_STEPS = 64
PROMPT = ("Once upon a time, Lily found a red ball. "
          "She said: \u201cLet\u2019s play!\u201d caf\u00e9 \U0001F642")
INIT_STD = 0.1  # larger than HF's 0.02 so logits are not flat (clear greedy margins)


# ----------------------------------------------------------------------------------------------
# model specs
# ----------------------------------------------------------------------------------------------

def _g4_layers():
    s, f = "sliding_attention", "full_attention"
    return [s, s, f, s, s, f]


G4_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                       "rope_theta": 1000000.0},
}

SPECS = {
    "llama_tiny": {
        "family": "llama", "tok": "llama", "template": None,
        "config": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                       max_position_embeddings=512, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    },
    "gemma3_tiny": {
        "family": "gemma3", "tok": "gemma3", "template": "google-gemma-2-2b-it.jinja",
        # 6 layers: the stock 5 sliding : 1 full pattern (sliding_window_pattern 6), so tools
        # that hard-code Gemma 3's pattern agree with layer_types.
        "config": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                       sliding_window=8, query_pre_attn_scalar=24, final_logit_softcapping=30.0,
                       max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       rope_parameters={
                           "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                           "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
    },
    "gemma4_dense_tiny": {
        # 31B-like: sliding + global layers, K=V global layers with their own head dim and
        # kv-head count, proportional RoPE on global layers, final softcap.
        "family": "gemma4", "tok": "gemma4", "template": "google-gemma-4-31B-it.jinja",
        "config": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       global_head_dim=64, num_global_key_value_heads=1, attention_k_eq_v=True,
                       sliding_window=8, layer_types=_g4_layers(), final_logit_softcapping=30.0,
                       max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                       rope_parameters=G4_ROPE),
    },
    "gemma4_moe_tiny": {
        # 26B-A4B-like: dense GeGLU MLP in every layer plus routed experts.
        "family": "gemma4", "tok": "gemma4", "template": "google-gemma-4-31B-it.jinja",
        "config": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       global_head_dim=64, num_global_key_value_heads=1, attention_k_eq_v=True,
                       sliding_window=8, layer_types=_g4_layers(), final_logit_softcapping=30.0,
                       max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                       enable_moe_block=True, num_experts=4, top_k_experts=2,
                       moe_intermediate_size=64, rope_parameters=G4_ROPE),
    },
    "gemma4_e_tiny": {
        # E2B-like: per-layer embeddings (PLE), the last 2 layers reuse K/V of earlier layers,
        # double-wide MLP on the KV-shared layers, separate V projection.
        "family": "gemma4", "tok": "gemma4", "template": "google-gemma-4-31B-it.jinja",
        "config": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                       global_head_dim=64, attention_k_eq_v=False,
                       sliding_window=8, layer_types=_g4_layers(), final_logit_softcapping=30.0,
                       max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       hidden_size_per_layer_input=16, num_kv_shared_layers=2,
                       use_double_wide_mlp=True, rope_parameters=G4_ROPE),
    },
}
QAT_OF = {"llama_tiny_qat": "llama_tiny", "gemma4_dense_tiny_qat": "gemma4_dense_tiny"}
# Config keys Gemma 4's published config.json files carry but transformers 5.17 folds into
# per_layer_config when it saves; written back so the checkpoints look like the real ones.
G4_PUBLISHED_KEYS = ("global_head_dim", "num_global_key_value_heads")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def margins(row: np.ndarray) -> float:
    top2 = np.sort(row)[-2:]
    return float(top2[1] - top2[0])


def run_logits(model, ids):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].detach().to(torch.float64).numpy()


def greedy(model, ids, steps):
    """Greedy decoding with a full recompute each step (no KV cache)."""
    seq = list(ids)
    out_ids, rows = [], []
    for _ in range(steps):
        row = run_logits(model, seq)[-1].astype(np.float32)
        nxt = int(np.argmax(row))
        out_ids.append(nxt)
        rows.append(row)
        seq.append(nxt)
    return out_ids, np.stack(rows)


def f64_check(model, ids, logits32):
    """Max |logits(float32) - logits(float64)| on the prompt: a numerical-tolerance hint."""
    import torch

    m64 = copy.deepcopy(model).to(torch.float64)
    l64 = run_logits(m64, ids)
    return float(np.abs(l64 - logits32.astype(np.float64)).max()), l64


# ----------------------------------------------------------------------------------------------
# stories260K (real weights from the llama.cpp GGUF)
# ----------------------------------------------------------------------------------------------

def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the HF->GGUF Q/K row permutation (GGUF pairs rotary dims (2i, 2i+1) of each
    head; HF rotates dims (i, i + d/2))."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_scalar(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.parts[field.data[0]].tolist()[0]


def make_stories(args, out, manifest):
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = os.path.join(args.shared, "stories260K.gguf")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    n_head = gguf_scalar(reader, "llama.attention.head_count")
    n_kv = gguf_scalar(reader, "llama.attention.head_count_kv")
    n_layer = gguf_scalar(reader, "llama.block_count")
    dim = gguf_scalar(reader, "llama.embedding_length")
    ffn = gguf_scalar(reader, "llama.feed_forward_length")
    eps = float(gguf_scalar(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5))
    theta = float(gguf_scalar(reader, "llama.rope.freq_base", 10000.0))
    vocab = tensors["token_embd.weight"].shape[0]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=ffn,
                      num_hidden_layers=n_layer, num_attention_heads=n_head,
                      num_key_value_heads=n_kv, rms_norm_eps=eps, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      rope_parameters={"rope_type": "default", "rope_theta": theta})

    def state(unpermute: bool):
        sd = {"model.embed_tokens.weight": tensors["token_embd.weight"],
              "model.norm.weight": tensors["output_norm.weight"],
              "lm_head.weight": tensors["output.weight"]}
        for i in range(n_layer):
            p, b = f"model.layers.{i}.", f"blk.{i}."
            q, k = tensors[b + "attn_q.weight"], tensors[b + "attn_k.weight"]
            if unpermute:
                q, k = unpermute_rows(q, n_head), unpermute_rows(k, n_kv)
            sd.update({p + "input_layernorm.weight": tensors[b + "attn_norm.weight"],
                       p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                       p + "self_attn.v_proj.weight": tensors[b + "attn_v.weight"],
                       p + "self_attn.o_proj.weight": tensors[b + "attn_output.weight"],
                       p + "post_attention_layernorm.weight": tensors[b + "ffn_norm.weight"],
                       p + "mlp.gate_proj.weight": tensors[b + "ffn_gate.weight"],
                       p + "mlp.up_proj.weight": tensors[b + "ffn_up.weight"],
                       p + "mlp.down_proj.weight": tensors[b + "ffn_down.weight"]})
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}

    ref_path = os.path.join(args.shared, "greedy_from_bos.ids.txt")
    ref_ids = [int(x) for x in open(ref_path).read().split()]
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict(state(True), strict=True)
    prompt = [1] + ref_ids[:STORIES_STEPS - 1]
    logits = run_logits(model, prompt).astype(np.float32)
    gen, gen_rows = greedy(model, [1], STORIES_STEPS)
    diff64, _ = f64_check(model, prompt, logits)
    match = gen == ref_ids[:STORIES_STEPS]
    info = {"source": "shared/data/stories260K/stories260K.gguf",
            "source_sha256": sha256_file(path),
            "config": cfg.to_diff_dict(),
            "input_ids": prompt,
            "input_note": "BOS (1) then the first 63 ids of greedy_from_bos.ids.txt, positions 0..63",
            "argmax_of_logits": [int(i) for i in logits.argmax(-1)],
            "greedy_from_bos": gen,
            "greedy_matches_reference_ids": match,
            "greedy_min_margin": min(margins(r) for r in gen_rows),
            "max_abs_diff_f32_vs_f64_logits": diff64}
    if not match:  # diagnose: does the un-permutation matter?
        model.load_state_dict(state(False), strict=True)
        info["greedy_without_unpermute"] = greedy(model, [1], 8)[0]
    d = os.path.join(out, "ref", "stories260K")
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "logits.npy"), logits)
    write_json(os.path.join(d, "ref.json"), info)
    manifest["items"]["stories260K"]["checks"] = {"greedy_matches_reference_ids": match}
    if not match:
        raise RuntimeError("stories260K greedy ids differ from greedy_from_bos.ids.txt")


# ----------------------------------------------------------------------------------------------
# tiny random checkpoints
# ----------------------------------------------------------------------------------------------

def model_classes(family):
    import transformers as tf

    return {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
            "gemma4": (tf.Gemma4TextConfig, tf.Gemma4ForCausalLM)}[family]


def special_ids(style, vocab):
    if style == "llama":
        return dict(bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=None)
    return dict(bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"],
                pad_token_id=vocab["<pad>"])


def perturb(model, gen):
    """Moves every vector parameter/buffer (norm weights, router scales, layer scalars) off its
    trivial init so a runtime that skips one of them produces different logits."""
    import torch

    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name or "embed_scale" in name:
                continue
            if p.dim() == 1:
                if name.endswith("layer_scalar"):
                    p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=gen))
                else:
                    p.add_(0.2 * torch.randn(p.shape, generator=gen))


def linear_weights(model):
    """Names of the nn.Linear weights inside the decoder layers."""
    import torch

    names = []
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and re.match(r"model\.layers\.\d+\.", mname):
            names.append(mname + ".weight")
    return names


def fix_gemma4_config(path, cfg_obj):
    """Writes config.json the way published Gemma 4 checkpoints have it (global_head_dim,
    num_global_key_value_heads; no per_layer_config)."""
    with open(path) as f:
        cfg = json.load(f)
    cfg.pop("per_layer_config", None)
    for key in G4_PUBLISHED_KEYS:
        if key in cfg_obj:
            cfg[key] = cfg_obj[key]
    write_json(path, cfg)


def save_checkpoint(model, d, spec, tok_json, tok_cfg, vocab):
    import torch
    from transformers import GenerationConfig

    os.makedirs(d, exist_ok=True)
    ids = special_ids(spec["tok"], vocab)
    eos = [ids["eos_token_id"]]
    for t in ("<end_of_turn>", "<turn|>"):
        if t in vocab:
            eos.append(vocab[t])
    model.generation_config = GenerationConfig(bos_token_id=ids["bos_token_id"], eos_token_id=eos,
                                               pad_token_id=ids["pad_token_id"], do_sample=False)
    model.to(torch.bfloat16).save_pretrained(d)
    if spec["family"] == "gemma4":
        fix_gemma4_config(os.path.join(d, "config.json"), spec["config"])
    write_json(os.path.join(d, "tokenizer.json"), tok_json)
    write_json(os.path.join(d, "tokenizer_config.json"), tok_cfg)


def reload_and_check(d, expected_sd):
    """Loads the BF16 checkpoint as float32 and checks every tensor equals what was saved."""
    import torch
    from transformers import AutoModelForCausalLM

    with open(os.path.join(d, "config.json")) as f:
        moe = bool(json.load(f).get("enable_moe_block"))
    extra = {"experts_implementation": "eager"} if moe else {}  # the plain per-expert loop
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                 attn_implementation="eager", **extra).eval()
    got = model.state_dict()
    bad = [k for k, v in expected_sd.items()
           if k not in got or not torch.equal(got[k].float(), v.float())]
    if bad:
        raise RuntimeError(f"{d}: reloaded tensors differ from saved: {bad[:8]}")
    return model


def reference_outputs(model, d_ref, tokenizer_dir, manifest_item, extra):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(PROMPT)["input_ids"]
    raw = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json")).encode(PROMPT).ids
    if ids != raw:
        raise RuntimeError(f"AutoTokenizer ids {ids} != tokenizers ids {raw}")
    logits = run_logits(model, ids).astype(np.float32)
    gen, rows = greedy(model, ids, GREEDY_STEPS)
    diff64, _ = f64_check(model, ids, logits)
    info = {"prompt": PROMPT, "input_ids": ids, "n_tokens": len(ids),
            "tokens": tok.convert_ids_to_tokens(ids),
            "greedy_ids": gen, "greedy_text": tok.decode(gen),
            "greedy_margins": [margins(r) for r in rows],
            "prompt_argmax_last": int(logits[-1].argmax()),
            "max_abs_diff_f32_vs_f64_logits": diff64,
            "dtype_note": "weights BF16 on disk, loaded as float32; eager attention; CPU",
            **extra}
    os.makedirs(d_ref, exist_ok=True)
    np.save(os.path.join(d_ref, "logits.npy"), logits)
    np.save(os.path.join(d_ref, "greedy_logits.npy"), rows.astype(np.float32))
    write_json(os.path.join(d_ref, "ref.json"), info)
    manifest_item["checks"] = {"n_tokens": len(ids), "greedy_min_margin": min(info["greedy_margins"]),
                               "max_abs_diff_f32_vs_f64_logits": diff64}


def build_config(spec, vocab):
    cfg_cls, _ = model_classes(spec["family"])
    kwargs = dict(spec["config"])
    if kwargs.get("hidden_size_per_layer_input"):
        kwargs["vocab_size_per_layer_input"] = len(vocab)
    return cfg_cls(vocab_size=len(vocab), initializer_range=INIT_STD,
                   **special_ids(spec["tok"], vocab), **kwargs)


def make_tiny(name, args, out, manifest, tokenizers_cache, saved_models):
    import torch

    spec = SPECS[name]
    style = spec["tok"]
    if style not in tokenizers_cache:
        tj = tokenizer_build.build_tokenizer_json(style, args.train_text, TOKENIZER_VOCAB)
        tokenizers_cache[style] = tj
    tj = tokenizers_cache[style]
    vocab = tj["model"]["vocab"]
    template = None
    if spec["template"]:
        with open(os.path.join(args.templates, spec["template"]), encoding="utf-8") as f:
            template = f.read()
    tok_cfg = tokenizer_build.tokenizer_config(style, template)
    cfg_cls, model_cls = model_classes(spec["family"])
    cfg = build_config(spec, vocab)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    model = model_cls(cfg).eval()
    perturb(model, gen)
    d = os.path.join(out, "hf", name)
    save_checkpoint(model, d, spec, tj, tok_cfg, vocab)
    saved_sd = {k: v.clone() for k, v in model.state_dict().items()}  # BF16 values
    saved_models[name] = (model, saved_sd, tj, tok_cfg, vocab)
    loaded = reload_and_check(d, saved_sd)
    reference_outputs(loaded, os.path.join(out, "ref", name), d, manifest["items"][name],
                      {"config_class": cfg_cls.__name__, "model_class": model_cls.__name__})


def make_qat(name, args, out, manifest, saved_models):
    import torch

    base = QAT_OF[name]
    model, saved_sd, tj, tok_cfg, vocab = saved_models[base]
    spec = SPECS[base]
    qmodel = copy.deepcopy(model)
    sd = qmodel.state_dict()
    projected, skipped = [], []
    for wname in linear_weights(qmodel):
        w = sd[wname].float().numpy()
        if w.shape[1] % qat.QK:
            skipped.append({"name": wname, "shape": list(w.shape),
                            "reason": f"row length {w.shape[1]} is not a multiple of 32"})
            continue
        p = qat.project_q4_0(w)
        with torch.no_grad():
            sd[wname].copy_(torch.from_numpy(p).to(torch.bfloat16))
        projected.append(wname)
    qsd = {k: v.clone() for k, v in qmodel.state_dict().items()}
    for wname in projected:  # the BF16 copy must hold the lattice exactly
        if not qat.on_lattice(qsd[wname].float().numpy()):
            raise RuntimeError(f"{wname} not on the Q4_0 lattice after BF16 storage")
    d = os.path.join(out, "hf", name)
    save_checkpoint(qmodel, d, spec, tj, tok_cfg, vocab)
    loaded = reload_and_check(d, qsd)
    extra = {"qat_of": base, "projected": projected, "not_projected": skipped,
             "qat_rule": "per 32 consecutive input weights: d = bf16(signed extremum / -8), "
                         "q = clamp(round_half_even(w / d), -8, 7), w' = bf16(d * q)"}
    reference_outputs(loaded, os.path.join(out, "ref", name), d, manifest["items"][name], extra)


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--shared", required=True,
                    help="folder with stories260K.gguf, greedy_from_bos.ids.txt, "
                         "tinystories_sample.txt")
    ap.add_argument("--templates", required=True, help="folder with the chat-template .jinja files")
    ap.add_argument("--only", nargs="*", help="item names to make (default: all)")
    args = ap.parse_args()

    import tokenizers
    import torch
    import transformers

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    with open(os.path.join(args.shared, "tinystories_sample.txt"), encoding="utf-8") as f:
        args.train_text = f.read().replace("<|endoftext|>", "\n")
    os.makedirs(args.out, exist_ok=True)
    items = ["stories260K"] + list(SPECS) + list(QAT_OF)
    if args.only:
        items = [i for i in items if i in args.only]
    manifest = {"generator": "tools/make_fixtures.py", "seed": SEED,
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "transformers": transformers.__version__,
                             "tokenizers": tokenizers.__version__, "numpy": np.__version__},
                "prompt": PROMPT, "tokenizer_vocab": TOKENIZER_VOCAB, "init_std": INIT_STD,
                "train_text": "shared/data/text/tinystories/tinystories_sample.txt "
                              "(<|endoftext|> -> newline)",
                "train_text_sha256": hashlib.sha256(args.train_text.encode()).hexdigest(),
                "items": {}}
    tok_cache, saved = {}, {}
    for item in items:
        t0 = time.time()
        manifest["items"][item] = {"status": "running"}
        try:
            if item == "stories260K":
                make_stories(args, args.out, manifest)
            elif item in SPECS:
                make_tiny(item, args, args.out, manifest, tok_cache, saved)
            else:
                make_qat(item, args, args.out, manifest, saved)
            manifest["items"][item]["status"] = "ok"
        except Exception as e:  # keep going; the failure is recorded
            manifest["items"][item]["status"] = "failed"
            manifest["items"][item]["error"] = f"{type(e).__name__}: {e}"
            manifest["items"][item]["traceback"] = traceback.format_exc()[-3000:]
            print(f"[{item}] FAILED: {e}", file=sys.stderr)
            traceback.print_exc()
        manifest["items"][item]["seconds"] = round(time.time() - t0, 2)
        print(f"[{item}] {manifest['items'][item]['status']} "
              f"{json.dumps(manifest['items'][item].get('checks', {}))}", flush=True)
    for item, entry in manifest["items"].items():
        for sub in ("hf", "ref"):
            d = os.path.join(args.out, sub, item)
            if os.path.isdir(d):
                entry.setdefault("files", {})
                for fn in sorted(os.listdir(d)):
                    entry["files"][f"{sub}/{item}/{fn}"] = sha256_file(os.path.join(d, fn))
    write_json(os.path.join(args.out, "manifest.json"), manifest)
    failed = [k for k, v in manifest["items"].items() if v["status"] != "ok"]
    print("FAILED:" if failed else "all ok", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
