#!/usr/bin/env python3
"""Table and plot of the fidelity study (tools/fidelity_study.sh).

    fidelity_report.py RESULTS.jsonl OUT.md OUT.svg

RESULTS.jsonl holds one object per evaluated model (base, label, method, bpw, kld{mean,...},
same_top, ppl, ppl_ref, ...). The plot (plain SVG, no plotting library needed) shows mean KLD
(log scale) against bits per weight, one panel per base model.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

BASES = {"qat": "QAT-lattice Gemma 3 270M (ggml grid, projected)",
         "qat7": "QAT-lattice Gemma 3 270M (sym[-7,7] grid, projected)",
         "plaind": "plain Gemma 3 270M (dithered off its Q4_K_M grids)",
         "plain": "Gemma 3 270M dequantized from Q4_K_M (on its grids)"}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


def table(rows: list[dict]) -> str:
    out = []
    for base, title in BASES.items():
        sel = [r for r in rows if r["base"] == base]
        if not sel:
            continue
        out.append(f"### {title}\n")
        out.append(f"Reference: BF16, PPL {sel[0]['ppl_ref']:.3f}; {sel[0]['n_scored']} scored "
                   f"tokens; KLD from the reference's top-{sel[0]['top_k']} distribution.\n")
        out.append("| model | made by | BPW | size MiB | mean KLD | KLD p99 | same top-1 | PPL | "
                   "RMS Δp |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in sorted(sel, key=lambda r: r["kld"]["mean"]):
            out.append(
                f"| {r['label']} | {r['method']} | {r['bpw']:.3f} | {r['tensor_bytes'] / 2**20:.1f} | "
                f"{r['kld']['mean']:.3g} ± {r['kld']['se']:.2g} | {r['kld']['p99']:.3g} | "
                f"{100 * r['same_top']:.2f} ± {100 * r['same_top_se']:.2f} % | "
                f"{r['ppl']:.3f} | {100 * r['dp_rms']:.2f} % |")
        out.append("")
    return "\n".join(out) + "\n"


def svg(rows: list[dict]) -> str:
    width, height, pad = 1300, 420, 60
    panel_w = (width - 4 * pad) / 3
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    labels = sorted({r["label"] for r in rows})
    color = {l: COLORS[i % len(COLORS)] for i, l in enumerate(labels)}
    for p, (base, title) in enumerate(BASES.items()):
        sel = [r for r in rows if r["base"] == base and r["kld"]["mean"] > 0]
        x0 = pad + p * (panel_w + pad)
        y0, y1 = 40, height - 140
        parts.append(f'<text x="{x0 + panel_w / 2}" y="24" text-anchor="middle" '
                     f'font-size="13">{title}</text>')
        parts.append(f'<rect x="{x0}" y="{y0}" width="{panel_w}" height="{y1 - y0}" '
                     f'fill="none" stroke="black"/>')
        if not sel:
            continue
        bx = [r["bpw"] for r in sel]
        lo_x, hi_x = min(bx) - 0.25, max(bx) + 0.25
        lk = [math.log10(r["kld"]["mean"]) for r in sel]
        lo_y, hi_y = math.floor(min(lk)), math.ceil(max(lk))
        if hi_y == lo_y:
            hi_y += 1
        sx = lambda v: x0 + (v - lo_x) / (hi_x - lo_x) * panel_w
        sy = lambda v: y1 - (v - lo_y) / (hi_y - lo_y) * (y1 - y0)
        for e in range(lo_y, hi_y + 1):
            parts.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{sy(e)}" y2="{sy(e)}" '
                         f'stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 4}" y="{sy(e) + 4}" text-anchor="end">1e{e}</text>')
        t = math.ceil(lo_x * 4) / 4
        while t <= hi_x:
            parts.append(f'<text x="{sx(t)}" y="{y1 + 14}" text-anchor="middle">{t:.2f}</text>')
            t += 0.25
        parts.append(f'<text x="{x0 + panel_w / 2}" y="{y1 + 30}" text-anchor="middle">'
                     f'bits per weight</text>')
        parts.append(f'<text x="{x0 - 40}" y="{(y0 + y1) / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 {x0 - 40} {(y0 + y1) / 2})">mean KLD vs BF16</text>')
        for r in sel:
            cx, cy = sx(r["bpw"]), sy(math.log10(r["kld"]["mean"]))
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color[r["label"]]}">'
                         f'<title>{r["label"]}: {r["kld"]["mean"]:.5f}</title></circle>')
    for i, l in enumerate(labels):
        lx = pad + (i % 3) * 300
        ly = height - 90 + (i // 3) * 18
        parts.append(f'<circle cx="{lx}" cy="{ly - 4}" r="5" fill="{color[l]}"/>')
        parts.append(f'<text x="{lx + 10}" y="{ly}">{l}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> int:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rows = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines() if l.strip()]
    Path(sys.argv[2]).write_text(table(rows))
    Path(sys.argv[3]).write_text(svg(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
