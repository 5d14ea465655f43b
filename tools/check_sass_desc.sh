#!/usr/bin/env bash
# Lists the kernels of CUDA binaries whose SASS uses a memory descriptor (the cache-policy operand
# of cp.async / LDGSTS and other global accesses, `desc[URn]`) in an odd uniform register.
# Descriptors are 64-bit uniform register pairs; ptxas 13.0 (V13.0.88) was seen emitting desc[UR1]
# from a register nothing wrote, which an H200 rejects at run time as an illegal instruction
# (docs/cuda.md, "A ptxas 13.0 miscompile"). Needs cuobjdump (the device machine has it).
#
# Usage: tools/check_sass_desc.sh BINARY...   exit status 1 if any kernel is affected.
set -euo pipefail
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)}
if [[ ! -x $CUOBJDUMP ]]; then
  echo "check_sass_desc: cuobjdump not found (set CUOBJDUMP)" >&2
  exit 2
fi
[[ $# -ge 1 ]] || { echo "usage: $0 BINARY..." >&2; exit 2; }
status=0
for bin in "$@"; do
  bad=$("$CUOBJDUMP" -sass "$bin" |
    awk '/Function :/ { f = $3 } /desc\[UR[0-9]*[13579]\]/ { n[f]++ } END { for (k in n) print n[k], k }')
  if [[ -n $bad ]]; then
    echo "$bin: kernels with odd-register descriptors (count, kernel):"
    echo "$bad"
    status=1
  else
    echo "$bin: no odd-register descriptors"
  fi
done
exit $status
