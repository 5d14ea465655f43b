#!/usr/bin/env bash
# All tests: the release build's unit and oracle tests (ctest), the same suite under ASan+UBSan, and a
# short bounded run of every fuzz target over its seed corpus. CUDA tests skip where no GPU is found.
# QFORGE_FUZZ_SECONDS (default 20) bounds each fuzzer; QFORGE_SKIP_ASAN=1 / QFORGE_SKIP_FUZZ=1 skip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

cmake --preset release -DQFORGE_PYTHON="$root/.venv/bin/python" -DQFORGE_REQUIRE_ORACLES=ON >/dev/null
cmake --build --preset release
ctest --preset release -j "$jobs"

if [[ "${QFORGE_SKIP_ASAN:-0}" != 1 ]]; then
  cmake --preset asan -DQFORGE_PYTHON="$root/.venv/bin/python" -DQFORGE_REQUIRE_ORACLES=ON >/dev/null
  cmake --build --preset asan
  ctest --preset asan -j "$jobs" -L unit
fi

if [[ "${QFORGE_SKIP_FUZZ:-0}" != 1 ]]; then
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz
  secs=${QFORGE_FUZZ_SECONDS:-20}
  for fuzzer in build/fuzz/fuzz/fuzz_*; do
    [[ -x $fuzzer ]] || continue
    name=$(basename "$fuzzer")
    corpus=fuzz/corpus/${name#fuzz_}
    work=$(mktemp -d)
    echo "fuzz: $name for ${secs}s (seeds: $corpus)"
    "$fuzzer" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 "$work" "$corpus" 2>"$work.log" \
      || { tail -50 "$work.log"; echo "fuzz: $name found a crash"; exit 1; }
    rm -rf "$work" "$work.log"
  done
fi
echo "all test stages passed"
