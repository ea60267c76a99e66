# shellcheck shell=bash
# Sourced by the provisioning scripts: root check and an idempotent apt install.
set -euo pipefail

# can_provision: succeeds when this host can install and start system services (root + apt-get).
can_provision() {
  [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null
}

require_root() {
  if ! can_provision; then
    echo "error: $(basename "$0") must run as root on a Debian/Ubuntu host (apt-get)" >&2
    exit 2
  fi
}

# apt_install PKG...: installs the packages that are not installed yet (apt-get update only then).
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed' || missing+=("${pkg}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}
