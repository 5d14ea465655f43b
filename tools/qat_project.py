#!/usr/bin/env python3
"""Project a BF16 GGUF's layer matrices onto the Q4_0 QAT lattice, as QAT training leaves them.

Google's "q4_0-unquantized" QAT checkpoints keep BF16 weights that sit on ggml's Q4_0 grid:
blocks of 32 consecutive weights along a row, scale d = (signed element of largest magnitude) / -8
rounded to BF16, codes q in [-8, 7], stored weight = BF16(d * q) (see ../shared/notes/qat-facts.md).
This script makes such a model out of an ordinary one, for the fidelity study (docs/fidelity.md):
every 2-D BF16 tensor whose name matches --pattern (by default the attention and FFN matrices of
every layer; embeddings are left alone because QAT does not train them onto the grid) is replaced
by its lattice projection. Everything else (metadata, other tensors) is copied unchanged.

    qat_project.py IN.gguf OUT.gguf [--pattern REGEX] [--kind sym8|sym7]

Uses the `gguf` package (PyPI) for reading and writing; OUT is written to a temporary file and
renamed into place.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np
import gguf

DEFAULT_PATTERN = r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$"


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as every BF16 conversion in this project does."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def project_q4_0(bits: np.ndarray, kind: str = "sym8") -> tuple[np.ndarray, float]:
    """bits: uint16 BF16 matrix [rows, cols], cols % 32 == 0. Returns projected bits and the
    relative RMS change of the weights. kind "sym8": ggml's grid, d = signed max / -8, codes
    [-8, 7]; "sym7": a symmetric grid d = max|w| / 7, codes [-7, 7] (as some QAT recipes and
    exporters use), which plain Q4_0 rounding does not reproduce."""
    w = bf16_bits_to_f32(bits).reshape(bits.shape[0], -1, 32)
    idx = np.abs(w).argmax(axis=2)
    signed_max = np.take_along_axis(w, idx[..., None], axis=2)
    lo, hi = (-8, 7) if kind == "sym8" else (-7, 7)
    scale = signed_max / np.float32(-8.0) if kind == "sym8" else np.abs(signed_max) / np.float32(7.0)
    d = bf16_bits_to_f32(f32_to_bf16_bits(scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d != 0, np.rint(w / d), 0.0)
    q = np.clip(q, lo, hi).astype(np.float32)
    projected = f32_to_bf16_bits(d * q).reshape(bits.shape)
    new = bf16_bits_to_f32(projected).reshape(w.shape)
    rel = float(np.sqrt(((new - w) ** 2).sum() / max((w**2).sum(), 1e-30)))
    return projected, rel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--pattern", default=DEFAULT_PATTERN, help="regex of tensor names to project")
    ap.add_argument("--kind", choices=["sym8", "sym7"], default="sym8",
                    help="sym8: ggml Q4_0 grid (signed max / -8); sym7: max|w| / 7, codes [-7, 7]")
    args = ap.parse_args()
    pattern = re.compile(args.pattern)

    reader = gguf.GGUFReader(args.input)
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        sys.exit(f"{args.input}: no general.architecture key")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()

    tmp = args.output + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)

    projected = 0
    for t in reader.tensors:
        data = np.asarray(t.data)
        shape = [int(x) for x in t.shape]  # ggml order: ne0 first
        if t.tensor_type == gguf.GGMLQuantizationType.BF16 and len(shape) == 2 and \
                pattern.search(t.name):
            if shape[0] % 32 != 0:
                sys.exit(f"{args.input}: tensor '{t.name}': row length {shape[0]} is not a "
                         "multiple of 32")
            bits = data.view(np.uint16).reshape(shape[1], shape[0])
            new_bits, rel = project_q4_0(bits, args.kind)
            print(f"{t.name:40s} projected, relative RMS change {rel:.4f}", file=sys.stderr)
            data = new_bits
            projected += 1
        elif t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = data.view(np.uint16).reshape(list(reversed(shape)))
        # uint8 data is taken as a byte shape (block types); other dtypes as the element shape.
        raw_shape = list(data.shape) if data.dtype == np.uint8 else list(reversed(shape))
        writer.add_tensor(t.name, data, raw_shape=raw_shape, raw_dtype=t.tensor_type)
    if projected == 0:
        sys.exit(f"{args.input}: no BF16 tensor matches {args.pattern!r}")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, args.output)
    print(f"{projected} tensors projected onto the Q4_0 lattice -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
