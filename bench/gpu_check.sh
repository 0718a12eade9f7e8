#!/usr/bin/env bash
# One command that verifies the CUDA paths on one GPU in under 10 minutes (its own accounting; see bench/gpu_check.py):
#   bash bench/gpu_check.sh
# Without a CUDA GPU it stops at once with one line (exit 2). GPU_CHECK_BASE=DIR keeps the corpus and tokenizer for
# the next run; GPU_CHECK_REPORT=FILE also writes the table as JSON.
set -u
cd "$(dirname "$0")/.."
BUDGET="${GPU_CHECK_BUDGET_S:-600}"
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: GPU_CHECK_BUDGET_S must be a whole number of seconds, got '$BUDGET'" >&2; exit 2;; esac
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False, or torch is missing); run it on a machine with an NVIDIA GPU" >&2
    exit 2
fi
# the whole check is bounded even if a phase's own limit failed to stop it (budget + a minute of grace)
exec timeout --kill-after=10 "$(( BUDGET + 60 ))" "$PY" bench/gpu_check.py "$@"
