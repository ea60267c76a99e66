#!/usr/bin/env bash
# Data-parallel training: one process per NPU (Ascend) or CPU worker on this server.
# Usage: bash launch/run_distribute.sh N [CONFIG] [KEY=VALUE ...]
#   N        number of ranks on this server (<= visible NPUs on an Ascend host)
#   CONFIG   YAML config (default configs/voc_fcn8s.yaml)
# Multi-server: run the same command on every server with NNODES (default 1), NODE_RANK (0..NNODES-1),
#   MASTER_ADDR (server 0's address, default 127.0.0.1), MASTER_PORT (default 29500; +1 is used too).
# Env: RANK_TABLE_FILE (merged table: this server's entry decides ranks and NPUs; SERVER_ID picks the
#      entry), LOG_DIR (default ./logs), PYTHON (default .venv/bin/python if present, else python3),
#      DRY_RUN=1 (print this server's ranks, devices and environment as JSON; start nothing),
#      NO_PREFLIGHT=1 (skip python -m fcn8s.preflight's checks, run before any rank starts),
#      HANG_TIMEOUT (seconds without a finished step before the job is stopped, exit 124; default 1200),
#      MAX_RESTARTS (restart every rank with --resume auto after a rank died or hung, at most N times;
#      default 0), RESTART_BACKOFF (seconds before the first restart, doubled each time; default 10).
#      Details: python -m fcn8s.launch --help, docs/distributed.md, docs/operations.md.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

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
NODE_ARGS=()
[[ -n "${NNODES:-}" ]] && NODE_ARGS+=(--nnodes "${NNODES}")
[[ -n "${NODE_RANK:-}" ]] && NODE_ARGS+=(--node-rank "${NODE_RANK}")
[[ -n "${MASTER_ADDR:-}" ]] && NODE_ARGS+=(--master-addr "${MASTER_ADDR}")
[[ -n "${MASTER_PORT:-}" ]] && NODE_ARGS+=(--master-port "${MASTER_PORT}")
[[ "${DRY_RUN:-0}" == 1 ]] && NODE_ARGS+=(--dry-run)

exec "${PYTHON}" -m fcn8s.launch --nproc "${NPROC}" "${NODE_ARGS[@]}" \
  --log-dir "${LOG_DIR}" -- --config "${CONFIG}" "${@:3}"
