#!/usr/bin/env bash
# Real infrastructure for tests/test_slurm.py, tests/test_container.py and the multi-server tests
# (`make infra`, part of `make test`): single-node Slurm, podman with a base image made without any
# registry, and the tools for simulated servers (network namespaces).
# Idempotent: seconds when already provisioned. Needs root and apt-get; elsewhere it only says
# why, and those tests skip - unless FCN8S_REQUIRE_INFRA=1 (set by .ci/run), then it fails.
set -euo pipefail
# shellcheck source=tests/infra/common.sh
source "$(dirname "$0")/common.sh"

if ! can_provision; then
  reason="cannot provision Slurm and podman here (needs root and apt-get)"
  if [[ "${FCN8S_REQUIRE_INFRA:-}" == 1 ]]; then
    echo "error: ${reason}, but FCN8S_REQUIRE_INFRA=1" >&2
    exit 1
  fi
  echo "note: ${reason}: tests/test_slurm.py and tests/test_container.py will be skipped"
  exit 0
fi
apt_install iproute2 util-linux   # ip netns, nsenter, unshare: the simulated servers (tests/infra/netns.py)
bash "$(dirname "$0")/slurm.sh" all
bash "$(dirname "$0")/podman.sh" all
