"""tools/gemv_trace.py on traces whose timings are known by construction.

The records follow src/runtime/cuda_trace.h (magic "QFTRACE1", a uint64 count, then per CTA four
uint64 ns stamps, the uint64 weight pointer and uint32 smid, block, rows, cols). Three decode
steps of two launches each (A: 6144 x 4096 Q4_0, B: 4096 x 4096), two CTAs per launch; the
summary leaves the first step out and must report exactly the gaps, spans, tails, plane times
and step totals the stamps imply. Broken files must fail with a message, not a traceback.
"""
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "gemv_trace.py"
RECORD = struct.Struct("<4Q Q 4I")


def write_trace(path, records):
    body = b"".join(RECORD.pack(*r) for r in records)
    path.write_bytes(b"QFTRACE1" + struct.pack("<Q", len(records)) + body)


def make_records():
    out = []
    for step in range(3):
        base = 1_000_000 + step * 100_000
        # A: entry 1000 ns before release at base; planes ready 500 / 700 ns after; ends at
        # base + 9000 and base + 10000 (span 10 us, tail 0.5 us: median of two = 9.5 us).
        out.append((base - 1000, base, base + 500, base + 9000, 0xA000, 0, 0, 6144, 4096))
        out.append((base - 900, base + 100, base + 800, base + 10000, 0xA000, 1, 1, 6144, 4096))
        # B: released 3 us after A's last CTA ends; span 4 us, no tail.
        b = base + 13000
        out.append((b - 5000, b, b + 1000, b + 4000, 0xB000, 2, 0, 4096, 4096))
        out.append((b - 5000, b, b + 1000, b + 4000, 0xB000, 3, 1, 4096, 4096))
    return out


def run(path, *args):
    return subprocess.run([sys.executable, str(TOOL), str(path), *args], capture_output=True,
                          text=True, timeout=60)


def test_summary_matches_the_constructed_timings(tmp_path):
    trace = tmp_path / "t.bin"
    write_trace(trace, make_records())
    res = run(trace)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "3 steps traced, 2 summarized"
    rows = {tuple(l.split()[0:3:2]): l.split() for l in lines[2:] if " x " in l}
    a, b = rows[("6144", "4096")], rows[("4096", "4096")]
    # n/step, CTAs, pre, gap, ready, span, tail (2 decimals), then GB/s (no decimals)
    assert [float(v) for v in a[3:10]] == pytest.approx([1.0, 2, 1.0, float("nan"), 0.6, 10.0, 0.5],
                                                        abs=0.011, nan_ok=True)
    assert [float(v) for v in b[3:10]] == pytest.approx([1.0, 2, 5.0, 3.0, 1.0, 4.0, 0.0], abs=0.011)
    assert float(a[10]) == pytest.approx(6144 * 4096 // 32 * 18 / 10.0 / 1e3, abs=0.6)
    assert float(b[10]) == pytest.approx(4096 * 4096 // 32 * 18 / 4.0 / 1e3, abs=0.6)
    steps = [l for l in lines if l.startswith("step:")]
    assert len(steps) == 2
    for s in steps:
        # 17 us from A's release to B's end: 14 inside spans, 3 in the gap.
        assert "17.0 us" in s and "14.0 us (82.4%)" in s and "3.0 us (17.6%)" in s, s


def test_broken_files_fail_with_a_message(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"NOTATRACE" + bytes(20))
    res = run(bad)
    assert res.returncode != 0 and "QFTRACE1" in res.stderr and "Traceback" not in res.stderr
    short = tmp_path / "short.bin"
    write_trace(short, make_records())
    short.write_bytes(short.read_bytes()[:-5])
    res = run(short)
    assert res.returncode != 0 and "records need" in res.stderr and "Traceback" not in res.stderr
