#!/usr/bin/env python3
"""Summarize the trace of a persistent decode step (src/runtime/cuda/decode_persistent.cu).

`QFORGE_PERSISTENT_TRACE=FILE qforge bench --device cuda -m MODEL ...` writes, when the model is
destroyed, the last step's stamps: three int32 (n_layer, steps = 5, grid), then per (layer, step,
CTA) six uint64 %globaltimer values in ns:
  0 arrival (the CTA's thread 0 reaches the step's wait)
  1 release (the step's counter reached, the CTA's barrier passed)
  2 planes built (matrix steps) / merged and signalled (attention; CTAs with a task)
  3-5 attention only, its first warp: rotations done, first chunk scored, values done
Unset stamps are 0. Per step this prints, as the mean over the layers 1 .. n_layer - 2 of the
median over CTAs: release -> next step's release, the CTA's wait at its counter, the planes' time,
and the spread of the releases over the CTAs; then the attention's internal marks.
Usage: persistent_trace.py TRACE
"""
import statistics
import struct
import sys

STEPS = ["qkv", "attn", "out", "gateup", "down"]


def read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        sys.exit(f"persistent_trace.py: {e}")
    if len(data) < 12:
        sys.exit(f"persistent_trace.py: {path}: {len(data)} bytes, shorter than the 12-byte header")
    n_layer, n_steps, grid = struct.unpack_from("<3i", data)
    if n_layer <= 0 or n_steps <= 0 or grid <= 0:
        sys.exit(f"persistent_trace.py: {path}: bad header ({n_layer} layers, {n_steps} steps, "
                 f"{grid} CTAs)")
    count = n_layer * n_steps * grid * 6
    if len(data) != 12 + 8 * count:
        sys.exit(f"persistent_trace.py: {path}: {len(data)} bytes; the header's {n_layer} layers x "
                 f"{n_steps} steps x {grid} CTAs need {12 + 8 * count}")
    values = struct.unpack_from(f"<{count}Q", data, 12)

    def stamp(layer, step, cta, k):
        return values[((layer * n_steps + step) * grid + cta) * 6 + k]

    return n_layer, n_steps, grid, stamp


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    n_layer, n_steps, grid, stamp = read(sys.argv[1])
    if n_steps != len(STEPS) or n_layer < 3:
        sys.exit(f"unexpected trace shape: {n_layer} layers, {n_steps} steps")
    layers = range(1, n_layer - 1)
    us = 1e-3
    print(f"{n_layer} layers, {grid} CTAs")
    for s, name in enumerate(STEPS):
        step_time, wait, planes, spread = [], [], [], []
        for l in layers:
            nl, ns = (l, s + 1) if s + 1 < n_steps else (l + 1, 0)
            release = [stamp(l, s, c, 1) for c in range(grid)]
            step_time.append(statistics.median(stamp(nl, ns, c, 1) for c in range(grid)) -
                             statistics.median(release))
            wait.append(statistics.median(stamp(l, s, c, 1) - stamp(l, s, c, 0) for c in range(grid)))
            if name != "attn":
                planes.append(statistics.median(stamp(l, s, c, 2) - stamp(l, s, c, 1)
                                                for c in range(grid)))
            spread.append(max(release) - min(release))
        planes_us = f"{statistics.mean(planes) * us:6.2f} us" if planes else "     -   "
        print(f"{name:7s} release -> next release {statistics.mean(step_time) * us:6.2f} us | "
              f"wait at counter {statistics.mean(wait) * us:5.2f} us | planes {planes_us} | "
              f"release spread {statistics.mean(spread) * us:5.2f} us")
    for k, what in [(3, "rotations done"), (4, "first chunk scored"), (5, "values done"),
                    (2, "merged and signalled")]:
        marks = []
        for l in layers:
            had = [c for c in range(grid) if stamp(l, 1, c, 3) != 0]
            if had:
                marks.append(statistics.median(stamp(l, 1, c, k) - stamp(l, 1, c, 1) for c in had))
        if marks:
            print(f"attention, release -> {what:21s} {statistics.mean(marks) * us:6.2f} us")


if __name__ == "__main__":
    main()
