#!/usr/bin/env bash
# The GPU check (issue 25, item 4): device, gat.bench MFU (GAT-B/2 bf16 b64, eager and compiled),
# GAT-XL/2 peak memory at batch 32, a 200-step gat.train with FID, NCCL init, packed throughput.
#
#   bash benchmarks/gpu_check.sh --out DIR               # one GPU, at most 8 minutes
#   bash benchmarks/gpu_check.sh --cpu-smoke --out DIR   # the same steps at toy sizes on CPU
#
# Writes DIR/gpu_check.json; exit status 1 when any section failed (its `error` is in the JSON).
# The logic and the report's keys are in benchmarks/gpu_check.py's docstring. Python: $PYTHON,
# else the checkout's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
exec "$python" "$here/gpu_check.py" "$@"
