#!/usr/bin/env bash
# Container entrypoint for cluster pods (Volcano + Ascend device plugin rank table, MindX DL
# AscendJob): starts this pod's ranks; see `python -m fcn8s.cluster.entrypoint --help`.
# Usage: bash launch/pod_entrypoint.sh [--log-dir DIR] [--rank-table-timeout S] -- [fcn8s.train args]
# Env: PYTHON (default .venv/bin/python if present, else python3), RANK_TABLE_FILE, XDL_IP, POD_IP,
#      FCN8S_RANK_TABLE_TIMEOUT (seconds, default 600), MS_* (set by the Ascend Operator),
#      NO_PREFLIGHT=1 (skip the fcn8s.preflight checks run before the ranks start).
set -euo pipefail

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
exec "${PYTHON}" -m fcn8s.cluster.entrypoint "$@"
