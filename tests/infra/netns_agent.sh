#!/usr/bin/env bash
# OpenMPI/PRRTE launch agent for the simulated servers of tests/infra/netns.py (replaces ssh).
# mpirun --prtemca plm_ssh_agent tests/infra/netns_agent.sh ... calls it like ssh:
#   netns_agent.sh [ssh options] HOST CMD...
# (PRRTE 3 / OpenMPI 5.0 passes no options: HOST is the IP from --host, CMD the prted command line
# split into words, to be joined and run by a shell as ssh would). HOST 198.18.7.(K+1) is server K:
# CMD runs in network namespace fcn8s-srvK with its own UTS namespace and hostname srvK.
set -euo pipefail

# ssh options that take a value; all other leading "-x"-style options are flags.
with_value="bcDEeFIiJLlmOoPpQRSWw"
while [[ $# -gt 0 && "$1" == -* ]]; do
  opt="${1:1:1}"
  if [[ "${#1}" -eq 2 && "${with_value}" == *"${opt}"* ]]; then
    shift
  fi
  shift
done
if [[ $# -lt 2 ]]; then
  echo "usage: $(basename "$0") [ssh options] HOST CMD..." >&2
  exit 2
fi
host="$1"
shift
host="${host#*@}"
if [[ ! "${host}" =~ ^198\.18\.7\.([0-9]+)$ ]] || (( BASH_REMATCH[1] < 1 || BASH_REMATCH[1] > 250 )); then
  echo "$(basename "$0"): ${host} is not a simulated server address (198.18.7.1-250)" >&2
  exit 255
fi
index=$(( BASH_REMATCH[1] - 1 ))
netns="/var/run/netns/fcn8s-srv${index}"
if [[ ! -e "${netns}" ]]; then
  echo "$(basename "$0"): no simulated server ${host} (${netns} missing)" >&2
  exit 255
fi
# A fresh environment, as an ssh login would give: the ranks get only what mpirun forwards (-x).
# shellcheck disable=SC2016  # $1 is expanded by the inner sh, not here
exec env -i HOME="${HOME:-/root}" USER="$(id -un)" LOGNAME="$(id -un)" SHELL=/bin/sh \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  nsenter --net="${netns}" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "srv${index}" "$*"
