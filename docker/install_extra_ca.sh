#!/usr/bin/env bash
# Image build hook: trust the extra CA certificates (*.crt, PEM) found in DIR, e.g. a corporate
# TLS-intercepting proxy's, for the system and for pip. Does nothing when DIR holds no *.crt.
# Usage: bash docker/install_extra_ca.sh DIR
set -euo pipefail

DIR="${1:?usage: install_extra_ca.sh DIR}"
shopt -s nullglob
certs=("${DIR}"/*.crt)
if [[ ${#certs[@]} -eq 0 ]]; then
  echo "extra CA: none in ${DIR}"
  exit 0
fi
if command -v update-ca-certificates >/dev/null; then     # Debian, Ubuntu
  cp "${certs[@]}" /usr/local/share/ca-certificates/
  update-ca-certificates >/dev/null
  bundle=/etc/ssl/certs/ca-certificates.crt
elif command -v update-ca-trust >/dev/null; then          # openEuler, EulerOS, CentOS
  cp "${certs[@]}" /etc/pki/ca-trust/source/anchors/
  update-ca-trust extract
  bundle=/etc/pki/tls/certs/ca-bundle.crt
else
  echo "error: no update-ca-certificates or update-ca-trust in this image" >&2
  exit 1
fi
# pip uses its own CA bundle unless told otherwise; /etc/pip.conf applies to every venv too.
printf '[global]\ncert = %s\n' "${bundle}" > /etc/pip.conf
echo "extra CA: installed ${#certs[@]} file(s) from ${DIR}; pip uses ${bundle}"
