#!/usr/bin/env bash
# Single-node Slurm on this host for tests/test_slurm.py: munge + slurmctld + slurmd on loopback.
# Usage: bash tests/infra/slurm.sh [install|start|all]   (default all; idempotent, needs root)
#   install  Debian slurm-wlm + munge, /etc/slurm/slurm.conf for this host (2 CPUs, oversubscribe)
#   start    munged, slurmctld and slurmd unless running; waits until the node is idle
set -euo pipefail
# shellcheck source=tests/infra/common.sh
source "$(dirname "$0")/common.sh"

CONF=/etc/slurm/slurm.conf
NODE="$(hostname -s)"

install() {
  apt_install slurm-wlm munge
  mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  local conf
  conf="$(cat <<CONF
# Written by tests/infra/slurm.sh: single node on loopback, no systemd, no cgroups.
ClusterName=fcn8s-test
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
CONF
)"
  if [[ ! -f "${CONF}" ]] || [[ "$(cat "${CONF}")" != "${conf}" ]]; then
    printf '%s\n' "${conf}" > "${CONF}"
    pkill_daemon slurmctld
    pkill_daemon slurmd
  fi
}

# pkill_daemon NAME: stops a running daemon through its pid file (config changed).
pkill_daemon() {
  local pidfile="/run/$1.pid"
  if [[ -f "${pidfile}" ]] && kill "$(cat "${pidfile}")" 2>/dev/null; then
    sleep 1
  fi
  rm -f "${pidfile}"
}

running() {
  [[ -f "/run/$1.pid" ]] && kill -0 "$(cat "/run/$1.pid")" 2>/dev/null
}

start() {
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge
    chown munge:munge /run/munge
    [[ -f /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    runuser -u munge -- munged
  fi
  running slurmctld || slurmctld
  running slurmd || slurmd
  local state="" _
  for _ in $(seq 1 60); do
    state="$(sinfo -h -n "${NODE}" -o '%T' 2>/dev/null || true)"
    case "${state}" in
      idle*|mixed*|allocated*) echo "slurm: node ${NODE} ${state}"; return 0 ;;
      down*|drain*) scontrol update nodename="${NODE}" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  echo "error: slurm node ${NODE} did not become idle (state '${state}'); see /var/log/slurm/" >&2
  exit 1
}

require_root
case "${1:-all}" in
  install) install ;;
  start) start ;;
  all) install; start ;;
  *) echo "usage: $0 [install|start|all]" >&2; exit 2 ;;
esac
