#!/usr/bin/env bash
# Train on one device (NPU DEVICE_ID, default 0, on Ascend; the CPU otherwise).
# Usage: bash launch/run_standalone.sh [CONFIG] [KEY=VALUE ...]
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
CONFIG="${1:-configs/voc_fcn8s.yaml}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEFAULT_PYTHON=python3
[[ -x "${ROOT}/.venv/bin/python" ]] && DEFAULT_PYTHON="${ROOT}/.venv/bin/python"
PYTHON="${PYTHON:-${DEFAULT_PYTHON}}"
PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}" exec "${PYTHON}" -m fcn8s.train --config "${CONFIG}" "${@:2}"
