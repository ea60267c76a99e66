#!/usr/bin/env bash
# Rootful podman for tests/test_container.py, and a Python base image made without any registry.
# Usage: bash tests/infra/podman.sh [install|base|all]   (default all; idempotent, needs root)
#   install  Debian podman + runc + mmdebstrap, /etc/containers/containers.conf (runc, ulimits)
#   base     $FCN8S_BASE_IMAGE (default localhost/localbase:bookworm-py): Debian bookworm minbase
#            with python3 (3.11, as the MindSpore wheels need) built by mmdebstrap from the host's
#            apt mirror and imported into podman; kept in podman's store, so built only once
set -euo pipefail
# shellcheck source=tests/infra/common.sh
source "$(dirname "$0")/common.sh"

BASE_IMAGE="${FCN8S_BASE_IMAGE:-localhost/localbase:bookworm-py}"
CONTAINERS_CONF=/etc/containers/containers.conf
# crun fails on this kind of host's hybrid cgroups and the default rlimits cannot be raised here.
CONF_TEXT='# Written by tests/infra/podman.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"'

install() {
  apt_install podman buildah runc mmdebstrap
  mkdir -p "$(dirname "${CONTAINERS_CONF}")"
  if [[ ! -f "${CONTAINERS_CONF}" ]] || [[ "$(cat "${CONTAINERS_CONF}")" != "${CONF_TEXT}" ]]; then
    printf '%s\n' "${CONF_TEXT}" > "${CONTAINERS_CONF}"
  fi
}

base() {
  if podman image exists "${BASE_IMAGE}"; then
    echo "podman: base image ${BASE_IMAGE} present"
    return 0
  fi
  # The host's own Debian mirror (a sources file): no registry and no other host is involved.
  local sources
  for sources in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list ""; do
    [[ -s "${sources}" ]] && break
  done
  if [[ -z "${sources}" ]]; then
    echo "error: no Debian apt sources on this host for mmdebstrap" >&2
    exit 1
  fi
  echo "podman: building ${BASE_IMAGE} with mmdebstrap from ${sources} (about a minute, once)"
  mmdebstrap --quiet --variant=minbase --dpkgopt=force-unsafe-io \
    --include=python3,python3-venv,ca-certificates bookworm - "${sources}" </dev/null \
    | podman import --quiet - "${BASE_IMAGE}" >/dev/null
  podman image exists "${BASE_IMAGE}"
  echo "podman: base image ${BASE_IMAGE} built"
}

require_root
case "${1:-all}" in
  install) install ;;
  base) base ;;
  all) install; base ;;
  *) echo "usage: $0 [install|base|all]" >&2; exit 2 ;;
esac
