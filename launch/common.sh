# shellcheck shell=bash
set -euo pipefail
# Sourced by the launch scripts: ROOT (the repository), PYTHON (the venv's python unless set),
# PYTHONPATH with the repository first.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_PYTHON=python3
[[ -x "${ROOT}/.venv/bin/python" ]] && DEFAULT_PYTHON="${ROOT}/.venv/bin/python"
PYTHON="${PYTHON:-${DEFAULT_PYTHON}}"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
