#!/usr/bin/env bash
# Train on one device (NPU DEVICE_ID, default 0, on Ascend; the CPU otherwise).
# Usage: bash launch/run_standalone.sh [CONFIG] [KEY=VALUE ...]
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
CONFIG="${1:-configs/voc_fcn8s.yaml}"
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
exec "${PYTHON}" -m fcn8s.train --config "${CONFIG}" "${@:2}"
