#!/usr/bin/env bash
# Fidelity study (docs/fidelity.md): 4-bit conversions of Gemma 3 270M compared with their BF16
# reference by KL-divergence, top-1 agreement and perplexity, on a QAT-lattice version of the model
# and on the plain model.
#
#   tools/fidelity_study.sh [OUT_DIR]
#
# Environment:
#   QFORGE          qforge binary (default build/release/qforge)
#   MODEL           source GGUF (default models/gemma-3-270m-q4_k_m.gguf, the README's model)
#   SHARED_DATA     folder with text/wikitext-2-raw and text/war-and-peace (default ../shared/data)
#   EVAL_CHUNKS     512-token windows of wikitext-2 test scored per model (default 16)
#   APPEND=1        append to OUT_DIR/results.jsonl instead of starting it afresh
#   CALIB_CHUNKS    512-token windows of War and Peace for the imatrix (default 16)
#   LLAMA_CPP_BIN   optional folder holding a llama.cpp build's llama-quantize: its Q4_0,
#                   imatrix Q4_0 and Q4_K_M files are measured too (this script never builds it)
#   PYTHON          python with the gguf package (default .venv/bin/python)
#   BASES           which base models (default "qat qat7 plaind"): qat = ggml's Q4_0 grid, qat7 =
#                   a sym[-7,7] grid (both projected by tools/qat_project.py), plaind = the model
#                   dithered off its Q4_K_M grids (tools/dequant_dither.py), plain = dequantized
#                   as is (still on its Q4_K_M grids: requantizing to Q4_K_M finds them again)
#
# Every model is evaluated with F32 activations (QFORGE_CPU_ACT=f32), so the numbers measure the
# weights alone. Results: OUT_DIR/results.jsonl (one JSON object per model), OUT_DIR/results.md
# (table) and OUT_DIR/fidelity.svg (plot), made by tools/fidelity_report.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/out/fidelity}
QFORGE=${QFORGE:-$ROOT/build/release/qforge}
MODEL=${MODEL:-$ROOT/models/gemma-3-270m-q4_k_m.gguf}
SHARED_DATA=${SHARED_DATA:-$ROOT/../shared/data}
EVAL_CHUNKS=${EVAL_CHUNKS:-16}
CALIB_CHUNKS=${CALIB_CHUNKS:-16}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
EVAL_TEXT=$SHARED_DATA/text/wikitext-2-raw/wiki.test.raw
CALIB_TEXT=$SHARED_DATA/text/war-and-peace/warpeace_input.txt
export QFORGE_CPU_ACT=f32

for f in "$QFORGE" "$MODEL" "$EVAL_TEXT" "$CALIB_TEXT"; do
  [[ -e $f ]] || { echo "fidelity_study: missing $f" >&2; exit 1; }
done
mkdir -p "$OUT"
BASES=${BASES:-qat qat7 plaind}
RESULTS=$OUT/results.jsonl
[[ ${APPEND:-0} == 1 ]] || : >"$RESULTS"
log() { echo "[$(date +%T)] $*" >&2; }

# eval BASE LABEL FILE METHOD: KLD against BASE's saved reference, appended to results.jsonl.
evaluate() {
  local base=$1 label=$2 file=$3 method=$4
  log "eval $base/$label"
  "$QFORGE" eval kld -m "$file" --ref-logits "$OUT/$base.ref" --json 2>/dev/null |
    "$PYTHON" -c '
import json, os, sys
j = json.load(sys.stdin)
import gguf
r = gguf.GGUFReader(sys.argv[4])
n = sum(int(t.n_elements) for t in r.tensors)
b = sum(int(t.n_bytes) for t in r.tensors)
print(json.dumps({"base": sys.argv[1], "label": sys.argv[2], "method": sys.argv[3],
                  "file_bytes": os.path.getsize(sys.argv[4]), "tensor_bytes": b,
                  "bpw": 8.0 * b / n, "kld": j["kld"], "same_top": j["same_top"],
                  "same_top_se": j["same_top_se"], "ppl": j["ppl"], "ppl_se": j["ppl_se"],
                  "ppl_ref": j["ppl_ref"], "ln_ppl_ratio": j["ln_ppl_ratio"],
                  "dp_rms": j["dp"]["rms"], "n_scored": j["n_scored"], "top_k": j["top_k"]}))
' "$base" "$label" "$method" "$file" >>"$RESULTS"
}

bpw_of() {
  "$PYTHON" -c 'import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
print(8.0 * sum(int(t.n_bytes) for t in r.tensors) / sum(int(t.n_elements) for t in r.tensors))' "$1"
}

log "BF16 references"
[[ -f $OUT/plain-bf16.gguf ]] || "$QFORGE" quantize "$MODEL" "$OUT/plain-bf16.gguf" --type bf16 -q
[[ -f $OUT/qat-bf16.gguf ]] ||
  "$PYTHON" "$ROOT/tools/qat_project.py" "$OUT/plain-bf16.gguf" "$OUT/qat-bf16.gguf" 2>/dev/null
[[ -f $OUT/qat7-bf16.gguf ]] || "$PYTHON" "$ROOT/tools/qat_project.py" --kind sym7 \
  "$OUT/plain-bf16.gguf" "$OUT/qat7-bf16.gguf" 2>/dev/null
[[ -f $OUT/plaind-bf16.gguf ]] ||
  "$PYTHON" "$ROOT/tools/dequant_dither.py" "$MODEL" "$OUT/plaind-bf16.gguf" 2>/dev/null

for base in $BASES; do
  ref=$OUT/$base-bf16.gguf
  log "$base: reference distributions, imatrix"
  "$QFORGE" eval kld --ref "$ref" -f "$EVAL_TEXT" --ctx 512 --chunks "$EVAL_CHUNKS" \
    --save-ref "$OUT/$base.ref" --top-k 1024 >/dev/null 2>&1
  "$QFORGE" imatrix -m "$ref" -f "$CALIB_TEXT" --ctx 512 --chunks "$CALIB_CHUNKS" \
    --process-output -o "$OUT/$base.imatrix.gguf" >/dev/null 2>&1

  "$QFORGE" quantize "$ref" "$OUT/$base-q4_0-naive.gguf" --type q4_0 --qat off -q
  evaluate $base "Q4_0 naive (ggml reference rounding)" "$OUT/$base-q4_0-naive.gguf" qforge
  "$QFORGE" quantize "$ref" "$OUT/$base-q4_0-imatrix.gguf" --type q4_0 --qat off \
    --imatrix "$OUT/$base.imatrix.gguf" -q
  evaluate $base "Q4_0 imatrix" "$OUT/$base-q4_0-imatrix.gguf" qforge
  "$QFORGE" quantize "$ref" "$OUT/$base-q4_k_m.gguf" --type q4_k_m --qat off \
    --imatrix "$OUT/$base.imatrix.gguf" -q
  evaluate $base "Q4_K_M imatrix" "$OUT/$base-q4_k_m.gguf" qforge
  if [[ $base == qat* ]]; then
    "$QFORGE" quantize "$ref" "$OUT/qat-q4_0-lattice.gguf" --type q4_0 -q
    evaluate $base "Q4_0 lattice-exact (qforge default)" "$OUT/qat-q4_0-lattice.gguf" qforge
  fi
  if [[ -n ${LLAMA_CPP_BIN:-} && -x $LLAMA_CPP_BIN/llama-quantize ]]; then
    "$LLAMA_CPP_BIN/llama-quantize" "$ref" "$OUT/$base-llama-q4_0.gguf" Q4_0 >/dev/null 2>&1
    evaluate $base "Q4_0 (llama-quantize)" "$OUT/$base-llama-q4_0.gguf" llama.cpp
    "$LLAMA_CPP_BIN/llama-quantize" --imatrix "$OUT/$base.imatrix.gguf" "$ref" \
      "$OUT/$base-llama-q4_0-imatrix.gguf" Q4_0 >/dev/null 2>&1
    evaluate $base "Q4_0 imatrix (llama-quantize)" "$OUT/$base-llama-q4_0-imatrix.gguf" llama.cpp
    "$LLAMA_CPP_BIN/llama-quantize" "$ref" "$OUT/$base-llama-q4_k_m.gguf" Q4_K_M >/dev/null 2>&1
    evaluate $base "Q4_K_M (llama-quantize)" "$OUT/$base-llama-q4_k_m.gguf" llama.cpp
    "$LLAMA_CPP_BIN/llama-quantize" --imatrix "$OUT/$base.imatrix.gguf" "$ref" \
      "$OUT/$base-llama-q4_k_m-imatrix.gguf" Q4_K_M >/dev/null 2>&1
    evaluate $base "Q4_K_M imatrix (llama-quantize)" "$OUT/$base-llama-q4_k_m-imatrix.gguf" llama.cpp
  fi
  # Dynamic at the size of Q4_K_M (and, for the lattice model, of the lattice-exact Q4_0).
  target=$(bpw_of "$OUT/$base-q4_k_m.gguf")
  log "$base: dynamic recipe at $target bpw"
  "$QFORGE" quantize "$ref" "$OUT/$base-dynamic.gguf" --recipe dynamic --target-bpw "$target" \
    --imatrix "$OUT/$base.imatrix.gguf" -f "$CALIB_TEXT" --calib-ctx 256 --calib-chunks 2 \
    --validate 6 --report "$OUT/$base-dynamic.json" -q >"$OUT/$base-dynamic.txt" 2>&1
  evaluate $base "dynamic (Q4_K_M size)" "$OUT/$base-dynamic.gguf" qforge
done

"$PYTHON" "$ROOT/tools/fidelity_report.py" "$RESULTS" "$OUT/results.md" "$OUT/fidelity.svg"
log "done: $OUT/results.md"
