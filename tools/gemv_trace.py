#!/usr/bin/env python3
"""Summarize a decode GEMV timeline written by `QFORGE_GEMV_TRACE=FILE qforge bench --device cuda`.

The file (src/runtime/cuda_trace.h) holds one record per CTA of every Q4_0x8 GEMV launch of a few
decode steps: %globaltimer stamps at entry, PDL wait released, inputs (int8 planes) ready and the
CTA's end, plus the launch's weight pointer and shape. This script groups the CTAs into launches
and the launches into decode steps, then reports per matrix shape (mean over steps and layers):

  pre     first CTA entry -> first CTA released from its wait (weights streaming meanwhile)
  gap     previous GEMV's last CTA end -> this launch's first release (the small kernels between)
  ready   release -> planes built (median over CTAs)
  span    first release -> last CTA end
  tail    median CTA end -> last CTA end
  GB/s    weight bytes / span

and per step the share of time inside GEMV spans and in the gaps between them.
Usage: gemv_trace.py TRACE [--steps-skip N]
"""
import argparse
import collections
import statistics
import struct
import sys

RECORD = struct.Struct("<4Q Q 4I")


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16 or data[:8] != b"QFTRACE1":
        sys.exit(f"{path}: not a qforge GEMV trace (no QFTRACE1 magic)")
    (count,) = struct.unpack_from("<Q", data, 8)
    if len(data) != 16 + count * RECORD.size:
        sys.exit(f"{path}: {count} records need {16 + count * RECORD.size} bytes, file has {len(data)}")
    return [RECORD.unpack_from(data, 16 + i * RECORD.size) for i in range(count)]


def launches(records):
    """CTAs grouped by (tag, shape), split where a block index repeats (a new launch)."""
    by_key = collections.defaultdict(list)
    for r in records:
        by_key[(r[4], r[7], r[8])].append(r)
    out = []
    for (tag, rows, cols), rs in by_key.items():
        rs.sort(key=lambda r: r[0])
        cur, seen = [], set()
        for r in rs:
            if r[6] in seen:
                out.append((tag, rows, cols, cur))
                cur, seen = [], set()
            cur.append(r)
            seen.add(r[6])
        out.append((tag, rows, cols, cur))
    summary = []
    for tag, rows, cols, ctas in out:
        t0 = [c[0] for c in ctas]
        t1 = [c[1] for c in ctas]
        t2 = [c[2] for c in ctas]
        t3 = [c[3] for c in ctas]
        summary.append(dict(tag=tag, rows=rows, cols=cols, n=len(ctas), enter=min(t0),
                            release=min(t1), ready=statistics.median(b - a for a, b in zip(t1, t2)),
                            end_med=statistics.median(t3), end=max(t3),
                            bytes=rows * cols // 32 * 18))
    summary.sort(key=lambda s: s["release"])
    return summary


def steps(summary):
    """Launches split into decode steps at each reappearance of the first launch's matrix."""
    if not summary:
        return []
    first = summary[0]["tag"]
    out = []
    for s in summary:
        if s["tag"] == first or not out:
            out.append([])
        out[-1].append(s)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--steps-skip", type=int, default=1, help="leading steps to leave out")
    args = ap.parse_args()
    all_steps = steps(launches(read(args.trace)))
    use = all_steps[args.steps_skip:] or all_steps
    shape = collections.defaultdict(lambda: collections.defaultdict(list))
    totals = []
    for st in use:
        prev_end = None
        inside = gaps = 0.0
        for s in st:
            key = (s["rows"], s["cols"])
            span = (s["end"] - s["release"]) / 1e3
            d = shape[key]
            d["pre"].append((s["release"] - s["enter"]) / 1e3)
            d["ready"].append(s["ready"] / 1e3)
            d["span"].append(span)
            d["tail"].append((s["end"] - s["end_med"]) / 1e3)
            d["gbs"].append(s["bytes"] / max(span, 1e-3) / 1e3)
            d["ctas"].append(s["n"])
            if prev_end is not None:
                gap = (s["release"] - prev_end) / 1e3
                d["gap"].append(gap)
                gaps += max(gap, 0.0)
            inside += span
            prev_end = s["end"]
        step_us = (st[-1]["end"] - st[0]["release"]) / 1e3
        totals.append((step_us, inside, gaps, len(st)))
    print(f"{len(all_steps)} steps traced, {len(use)} summarized")
    print(f"{'rows x cols':>16} {'n/step':>6} {'CTAs':>5} {'pre':>6} {'gap':>6} {'ready':>6} "
          f"{'span':>6} {'tail':>6} {'GB/s':>6}   (us, means)")
    for key, d in sorted(shape.items(), key=lambda kv: -sum(kv[1]["span"])):
        mean = lambda k: statistics.mean(d[k]) if d[k] else float("nan")
        print(f"{key[0]:>7} x {key[1]:<6} {len(d['span']) / len(use):6.1f} {mean('ctas'):5.0f} "
              f"{mean('pre'):6.2f} {mean('gap'):6.2f} {mean('ready'):6.2f} {mean('span'):6.2f} "
              f"{mean('tail'):6.2f} {mean('gbs'):6.0f}")
    for step_us, inside, gaps, n in totals:
        print(f"step: {step_us:8.1f} us from first release to last end, {n} launches; inside GEMV "
              f"spans {inside:8.1f} us ({100 * inside / step_us:4.1f}%), gaps {gaps:8.1f} us "
              f"({100 * gaps / step_us:4.1f}%)")


if __name__ == "__main__":
    main()
