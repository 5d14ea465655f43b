#!/usr/bin/env python3
"""Turn llama.cpp's saved reference log-probabilities into a small committed test fixture.

    llamacpp_logits_fixture.py KLD_BASE_FILE MODEL.gguf OUT.json [--top 10] [--commit SHA]

KLD_BASE_FILE is what `llama-perplexity -m MODEL -f TEXT -c N --chunks K --kl-divergence-base F`
writes (tools/perplexity/perplexity.cpp of llama.cpp, read here as a format):
  "_logits_", i32 n_ctx, i32 n_vocab, i32 n_chunk, i32 tokens[n_chunk * n_ctx],
  then for every chunk and each scored position j = n_ctx/2 .. n_ctx-2 one record of
  nv = 2 * ((n_vocab + 1) / 2) + 4 uint16: two f32 (scale, min_log_prob), then n_vocab uint16 q
  with log p = min_log_prob + scale * q (q = 0: at or below min_log_prob, i.e. max - 16).
The fixture keeps the tokens and, per scored position, the next token's log-probability and the
`--top` most likely tokens with their log-probabilities (tests/python/test_llamacpp_logits.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kld_base")
    ap.add_argument("model")
    ap.add_argument("output")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--commit", default="")
    ap.add_argument("--command", default="")
    args = ap.parse_args()

    raw = open(args.kld_base, "rb").read()
    if raw[:8] != b"_logits_":
        sys.exit(f"{args.kld_base}: not a llama-perplexity --kl-divergence-base file")
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<iii", raw, 8)
    off = 20
    tokens = np.frombuffer(raw, dtype="<i4", count=n_chunk * n_ctx, offset=off)
    off += 4 * n_chunk * n_ctx
    nv = 2 * ((n_vocab + 1) // 2) + 4
    first = n_ctx // 2
    n_scored = n_ctx - 1 - first
    need = off + 2 * nv * n_scored * n_chunk
    if len(raw) != need:
        sys.exit(f"{args.kld_base}: {len(raw)} bytes, the header implies {need}")
    records = np.frombuffer(raw, dtype="<u2", count=nv * n_scored * n_chunk, offset=off)
    records = records.reshape(n_chunk * n_scored, nv)

    sha = hashlib.sha256()
    with open(args.model, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            sha.update(block)

    positions = []
    for c in range(n_chunk):
        for s in range(n_scored):
            rec = records[c * n_scored + s]
            scale, min_lp = np.frombuffer(rec[:4].tobytes(), dtype="<f4")
            q = rec[4:4 + n_vocab].astype(np.float64)
            logp = min_lp + scale * q
            order = np.lexsort((np.arange(n_vocab), -q))[:args.top]  # by q desc, lower id first
            pos = first + s
            nxt = int(tokens[c * n_ctx + pos + 1])
            positions.append({
                "chunk": c, "pos": pos, "next": nxt,
                "logp_next": round(float(logp[nxt]), 6),
                "top": [[int(i), round(float(logp[i]), 6)] for i in order],
            })
    out = {
        "source": {"tool": "llama-perplexity --kl-divergence-base", "llama_cpp_commit": args.commit,
                   "command": args.command},
        "model_sha256": sha.hexdigest(), "n_ctx": n_ctx, "n_vocab": n_vocab, "n_chunk": n_chunk,
        "log_prob_resolution": "16-bit over [max - 16, max] per position",
        "tokens": tokens.tolist(), "positions": positions,
    }
    with open(args.output, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
