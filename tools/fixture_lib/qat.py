"""Q4_0-lattice projection of BF16 weights (the grid of Gemma "QAT q4_0-unquantized" checkpoints).

Per 32 consecutive weights along the input dimension: d = (signed element of largest magnitude)
/ -8, d rounded to BF16, q = clamp(round(w / d), -8, 7) (round half to even), w' = bf16(d * q).
Pure numpy so it can be tested without torch.
"""

from __future__ import annotations

import numpy as np

QK = 32


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest BF16 value (ties to even), returned as float32. NaN/inf not expected."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).reshape(x.shape)


def project_q4_0(w: np.ndarray) -> np.ndarray:
    """Projects a [rows, cols] weight (cols % 32 == 0) onto the BF16 Q4_0 lattice."""
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    if cols % QK:
        raise ValueError(f"row length {cols} is not a multiple of {QK}")
    blocks = w.reshape(rows, cols // QK, QK)
    idx = np.abs(blocks).argmax(axis=-1)[..., None]  # first element of largest magnitude
    extremum = np.take_along_axis(blocks, idx, axis=-1)
    d = round_to_bf16(extremum / np.float32(-8.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d != 0, np.round(blocks / np.where(d != 0, d, 1)), 0)
    q = np.clip(q, -8, 7).astype(np.float32)
    return round_to_bf16(d * q).reshape(rows, cols)


def on_lattice(w: np.ndarray) -> bool:
    """True when every 32-block of `w` is already a fixed point of project_q4_0."""
    w = np.asarray(w, dtype=np.float32)
    return bool(np.array_equal(project_q4_0(w), w))
