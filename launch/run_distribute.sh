#!/usr/bin/env bash
# Data-parallel training on this host: one process per NPU (Ascend) or CPU worker.
# Usage: bash launch/run_distribute.sh N [CONFIG] [KEY=VALUE ...]
#   N        number of ranks (<= visible NPUs on an Ascend host)
#   CONFIG   YAML config (default configs/voc_fcn8s.yaml)
# Env: RANK_TABLE_FILE (use this rank table instead of generating one), LOG_DIR (default ./logs),
#      PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
  exit "$([[ $# -lt 1 ]] && echo 2 || echo 0)"
fi
NPROC="$1"
CONFIG="${2:-configs/voc_fcn8s.yaml}"
if ! [[ "${NPROC}" =~ ^[0-9]+$ ]] || [[ "${NPROC}" -le 0 ]]; then
  echo "error: N must be a positive integer, got '${NPROC}'" >&2
  exit 2
fi
if [[ ! -f "${CONFIG}" ]]; then
  echo "error: config file not found: ${CONFIG}" >&2
  exit 2
fi
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
LOG_DIR="${LOG_DIR:-logs}"

exec "${PYTHON}" -m fcn8s.launch --nproc "${NPROC}" \
  --log-dir "${LOG_DIR}" -- --config "${CONFIG}" "${@:3}"
