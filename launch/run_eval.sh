#!/usr/bin/env bash
# Evaluate a checkpoint on the val split, optionally with N ranks (confusion matrices are summed).
# Usage: bash launch/run_eval.sh CKPT [CONFIG] [N] [KEY=VALUE ...]
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
  exit "$([[ $# -lt 1 ]] && echo 2 || echo 0)"
fi
CKPT="$1"
CONFIG="${2:-configs/voc_fcn8s.yaml}"
NPROC="${3:-1}"
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
if [[ ! -f "${CKPT}" ]]; then
  echo "error: checkpoint not found: ${CKPT}" >&2
  exit 2
fi
if [[ "${NPROC}" == "1" ]]; then
  exec "${PYTHON}" -m fcn8s.eval --config "${CONFIG}" --ckpt "${CKPT}" "${@:4}"
fi
exec "${PYTHON}" -m fcn8s.launch --nproc "${NPROC}" --log-dir "${LOG_DIR:-logs/eval}" --module fcn8s.eval -- \
  --config "${CONFIG}" --ckpt "$(realpath "${CKPT}")" "${@:4}"
