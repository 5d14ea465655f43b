"""tools/persistent_trace.py on traces whose timings are known by construction.

The file follows PersistentDecode's destructor (src/runtime/cuda/decode_persistent.cu): int32
n_layer, steps (5), grid, then per (layer, step, CTA) six uint64 ns stamps (arrival, release,
planes or merged, then the attention's three marks). Four layers of two CTAs, every step 10 us
from release to release; the summary covers layers 1 and 2 and must report exactly the times the
stamps imply. Broken files must fail with a message, not a traceback.
"""
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "persistent_trace.py"
LAYERS, STEPS, GRID = 4, 5, 2


def stamps():
    out = []
    t = 1_000_000
    for _layer in range(LAYERS):
        for step in range(STEPS):
            for cta in range(GRID):
                release = t + 100 * cta  # spread 0.1 us
                arrival = release - 2000  # waits 2 us at its counter
                if step == 1:  # attention: CTA 0 has a task, CTA 1 none
                    marks = ([release + 4000, release + 1000, release + 2000, release + 3000]
                             if cta == 0 else [0, 0, 0, 0])
                    out.append([arrival, release] + marks)
                else:
                    out.append([arrival, release, release + 1500, 0, 0, 0])
            t += 10_000
    return out


def write(path, records, header=(LAYERS, STEPS, GRID)):
    flat = [v for r in records for v in r]
    path.write_bytes(struct.pack("<3i", *header) + struct.pack(f"<{len(flat)}Q", *flat))


def run(path):
    return subprocess.run([sys.executable, str(TOOL), str(path)], capture_output=True, text=True,
                          timeout=60)


def test_summary_matches_the_constructed_timings(tmp_path):
    trace = tmp_path / "t.bin"
    write(trace, stamps())
    res = run(trace)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "4 layers, 2 CTAs"
    for name in ["qkv", "attn", "out", "gateup", "down"]:
        row = next(l for l in lines if l.startswith(name + " "))
        assert "release -> next release  10.00 us" in row, row
        assert "wait at counter  2.00 us" in row, row
        assert "release spread  0.10 us" in row, row
        assert ("planes   1.50 us" in row) == (name != "attn"), row
    marks = {l.split("->")[1].rsplit(None, 2)[0].strip(): float(l.split()[-2])
             for l in lines if l.startswith("attention")}
    assert marks == {"rotations done": 1.0, "first chunk scored": 2.0, "values done": 3.0,
                     "merged and signalled": 4.0}


def test_broken_files_fail_with_a_message(tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x01\x00")
    res = run(short)
    assert res.returncode != 0 and "header" in res.stderr and "Traceback" not in res.stderr
    cut = tmp_path / "cut.bin"
    write(cut, stamps())
    cut.write_bytes(cut.read_bytes()[:-8])
    res = run(cut)
    assert res.returncode != 0 and "need" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.bin"
    write(bad, [], header=(0, 5, 2))
    res = run(bad)
    assert res.returncode != 0 and "bad header" in res.stderr and "Traceback" not in res.stderr
