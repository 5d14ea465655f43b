#!/usr/bin/env python3
"""Turn a model that only exists quantized back into a plausible continuous (BF16) model.

    dequant_dither.py QUANTIZED.gguf OUT.gguf [--seed 1]

The README's default model ships as Q4_K_M (Q5_0 / Q4_K / Q6_K / Q8_0 tensors). Dequantized as is,
every weight sits exactly on those grids, so requantizing it to Q4_K_M finds the grid again and
looks nearly lossless — not what happens to a real BF16 model. This script adds to each
dequantized weight independent uniform noise of +-1/2 of its own grid step (the step of the block
or sub-block it came from: Q8_0 / Q5_0 d, Q4_K d * scale, Q6_K d * scale), i.e. it spreads each
weight uniformly over its quantization bin, and stores the result in BF16. Requantizing such a
model costs roughly what quantizing the original continuous weights cost. F32 / F16 / BF16
tensors are copied. Uses the `gguf` package (PyPI) to read, dequantize and write.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float32)


def steps(qtype, blocks: np.ndarray) -> np.ndarray:
    """blocks: uint8 [n_blocks, type_size]; returns the grid step of every element [n_blocks, bs]."""
    if qtype in (T.Q8_0, T.Q5_0, T.Q4_0):
        d = np.abs(f16(blocks[:, 0:2]).reshape(-1))
        return np.repeat(d[:, None], 32, axis=1)
    if qtype == T.Q4_K:
        d = f16(blocks[:, 0:2]).reshape(-1)
        sc = blocks[:, 4:16].astype(np.int32)
        s = np.empty((blocks.shape[0], 8), dtype=np.int32)
        s[:, :4] = sc[:, 0:4] & 63
        s[:, 4:] = (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)
        return np.repeat(np.abs(d[:, None] * s), 32, axis=1)
    if qtype == T.Q6_K:
        d = f16(blocks[:, 208:210]).reshape(-1)
        s = blocks[:, 192:208].view(np.int8).astype(np.float32)
        return np.repeat(np.abs(d[:, None] * s), 16, axis=1)
    raise SystemExit(f"unsupported tensor type {qtype.name}")


def bf16_bits(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
            >> np.uint32(16)).astype(np.uint16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    reader = gguf.GGUFReader(args.input)
    f = reader.fields["general.architecture"]
    writer = gguf.GGUFWriter(args.output + ".tmp", bytes(f.parts[f.data[0]]).decode())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == "general.file_type":
            writer.add_key_value(field.name, int(gguf.LlamaFileType.MOSTLY_BF16),
                                 gguf.GGUFValueType.UINT32)
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        shape = [int(x) for x in t.shape]
        if t.tensor_type in (T.F32, T.F16, T.BF16):
            data = np.asarray(t.data)
            if t.tensor_type == T.BF16:
                data = data.view(np.uint16).reshape(list(reversed(shape)))
            writer.add_tensor(t.name, data, raw_shape=list(reversed(shape)), raw_dtype=t.tensor_type)
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        bs, ts = gguf.GGML_QUANT_SIZES[t.tensor_type]
        blocks = np.asarray(t.data).reshape(-1, ts)
        step = steps(t.tensor_type, blocks).reshape(-1)
        w = w + (rng.random(w.shape, dtype=np.float32) - 0.5) * step
        writer.add_tensor(t.name, bf16_bits(w).reshape(list(reversed(shape))),
                          raw_shape=list(reversed(shape)), raw_dtype=T.BF16)
        print(f"{t.name:40s} {t.tensor_type.name:5s} dithered, mean step {step.mean():.3g}",
              file=sys.stderr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(args.output + ".tmp", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
