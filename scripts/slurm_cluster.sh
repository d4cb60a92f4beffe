#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the cluster tests and for trying the slurm profile.
#
#   sudo bash scripts/slurm_cluster.sh start    # install (Debian packages), configure, start; idempotent
#   sudo bash scripts/slurm_cluster.sh status   # daemons, node state, queue; exit 1 when not usable
#   sudo bash scripts/slurm_cluster.sh stop     # cancel our jobs, stop the daemons by the pids in their pid files
#
# Debian 12 packages slurmctld, slurmd, slurm-client and munge (SLURM 22.05) are installed with apt-get when
# missing. There is no systemd on these machines, so the daemons are started by hand and stopped by the
# pid in their pid files (never by name). The node is described from the machine's facts: short host
# name, `nproc` CPUs, a bit under MemTotal of memory, and QGEN_SLURM_GPUS fake GPUs (gres backed by
# copies of /dev/null) so that rules asking for a GPU can be scheduled; torch still sees no CUDA and falls back
# to the CPU. Accounting is off (no slurmdbd): `sacct` fails, so Snakemake must query `squeue`
# (profiles/slurm sets it). EnforcePartLimits=ALL makes a job that asks for more than the node has fail
# at submission instead of pending forever.
#
# Environment:
#   QGEN_SLURM_STATE   state, spool, logs and pid files (default /var/lib/qgen-slurm)
#   QGEN_SLURM_GPUS    fake GPUs on the node (default 2; 0 = none)
#   QGEN_SLURM_CONF    slurm.conf to write (default /etc/slurm/slurm.conf, where the client commands look)
set -euo pipefail

STATE=${QGEN_SLURM_STATE:-/var/lib/qgen-slurm}
GPUS=${QGEN_SLURM_GPUS:-2}
CONF=${QGEN_SLURM_CONF:-/etc/slurm/slurm.conf}
CONF_DIR=$(dirname "$CONF")
MARK="# written by qgen scripts/slurm_cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
MUNGE_PID=/run/munge/munged.pid

die() {
  echo "slurm_cluster: error: $*" >&2
  exit 1
}
say() { echo "slurm_cluster: $*" >&2; }

alive() { # alive PIDFILE: the process named in the pid file is running
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons); try sudo"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "packages ${missing[*]} are missing and there is no apt-get to install them"
  say "installing ${missing[*]} (apt-get, about a minute the first time)"
  local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}")
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$STATE/log/apt.log" 2>&1; then
    say "install failed; refreshing the package lists and retrying"
    apt-get -o DPkg::Lock::Timeout=300 update >>"$STATE/log/apt.log" 2>&1 ||
      die "apt-get update failed (see $STATE/log/apt.log): is a Debian mirror reachable?"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$STATE/log/apt.log" 2>&1 ||
      die "apt-get install ${missing[*]} failed; see $STATE/log/apt.log"
  fi
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if ! alive "$MUNGE_PID"; then
    rm -f "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged 9>&- </dev/null >>"$STATE/log/munged.out" 2>&1 || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$STATE/run/munged.ours" # stop only a munged that this script started
  fi
  munge -n | unmunge >/dev/null || die "munge does not work: 'munge -n | unmunge' failed"
}

write_conf() { # writes slurm.conf and gres.conf; prints "changed" when they differ from what was there
  local host cpus mem_mb gres_node="" tmp
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {m = int($2 / 1024); print m - (m > 4096 ? 1024 : int(m / 4))}' /proc/meminfo)
  [ "$GPUS" -gt 0 ] && gres_node=" Gres=gpu:$GPUS"
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace another cluster's config"
  fi
  mkdir -p "$CONF_DIR"
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARK (single-node test cluster; do not edit, it is rewritten on start)
ClusterName=qgen
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb$gres_node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  local changed=""
  cmp -s "$tmp" "$CONF" 2>/dev/null || changed=1
  install -m 644 "$tmp" "$CONF"
  : >"$tmp"
  echo "$MARK" >"$tmp"
  mkdir -p "$STATE/dev"
  for ((i = 0; i < GPUS; i++)); do # slurmd wants a distinct character device per GPU: copies of /dev/null
    [ -c "$STATE/dev/fake-gpu$i" ] || mknod -m 666 "$STATE/dev/fake-gpu$i" c 1 3
    echo "NodeName=$host Name=gpu File=$STATE/dev/fake-gpu$i" >>"$tmp"
  done
  cmp -s "$tmp" "$CONF_DIR/gres.conf" 2>/dev/null || changed=1
  install -m 644 "$tmp" "$CONF_DIR/gres.conf"
  rm -f "$tmp"
  if ! getent hosts "$host" >/dev/null; then
    echo "127.0.0.1 $host" >>/etc/hosts
  fi
  [ -z "$changed" ] || echo changed
}

node_state() { sinfo -h -N -n "$(hostname -s)" -o %t 2>/dev/null | head -1; }

wait_for_node() {
  local state="" i
  for ((i = 0; i < 60; i++)); do
    state=$(node_state)
    case "$state" in
      idle* | mix* | alloc* | comp*) return 0 ;;
      drain* | down* | fail*) scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  say "the node did not become idle within 30 s (state '${state:-unknown}'); last log lines:"
  tail -n 5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  return 1
}

stop_pidfile() { # stop_pidfile NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL; remove the pid file
  local pid i
  if alive "$2"; then
    pid=$(cat "$2")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$1 (pid $pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$2"
}

cmd_start() {
  need_root
  mkdir -p "$STATE"/{ctld,spool,run,log}
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another start/stop holds $STATE/lock"
  install_packages
  start_munge
  local changed
  changed=$(write_conf)
  if [ -n "$changed" ] && { alive "$STATE/run/slurmctld.pid" || alive "$STATE/run/slurmd.pid"; }; then
    say "configuration changed; restarting the daemons"
    stop_pidfile slurmd "$STATE/run/slurmd.pid"
    stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
  fi
  local started=""
  if ! alive "$STATE/run/slurmctld.pid"; then
    rm -f "$STATE/run/slurmctld.pid"
    /usr/sbin/slurmctld -f "$CONF" 9>&- </dev/null >>"$STATE/log/slurmctld.out" 2>&1 || die "slurmctld did not start; see $STATE/log/slurmctld.log"
    started=1
  fi
  if ! alive "$STATE/run/slurmd.pid"; then
    rm -f "$STATE/run/slurmd.pid"
    /usr/sbin/slurmd -f "$CONF" 9>&- </dev/null >>"$STATE/log/slurmd.out" 2>&1 || die "slurmd did not start; see $STATE/log/slurmd.log"
    started=1
  fi
  wait_for_node || die "the cluster started but its node is not usable (see above)"
  if [ -n "$started" ]; then
    say "started: node $(hostname -s), $(nproc) CPUs, $GPUS fake GPUs, partition debug (state in $STATE)"
    echo started
  else
    say "already running (state in $STATE)"
    echo running
  fi
}

cmd_stop() {
  need_root
  [ -d "$STATE" ] || {
    say "nothing to stop ($STATE does not exist)"
    return 0
  }
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another start/stop holds $STATE/lock"
  if alive "$STATE/run/slurmctld.pid"; then
    local jobs i
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      say "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  stop_pidfile slurmd "$STATE/run/slurmd.pid"
  stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
  if [ -e "$STATE/run/munged.ours" ]; then
    stop_pidfile munged "$MUNGE_PID"
    rm -f "$STATE/run/munged.ours"
  fi
  # With the daemons gone, every client command would wait MessageTimeout (10 s) for the controller, and the
  # Snakemake SLURM plugin runs `scontrol show config` at every Snakemake start: stopped, they fail at once.
  # `start` rewrites the config.
  if [ -e "$CONF" ] && grep -qF "$MARK" "$CONF" && ! grep -qx "MessageTimeout=1" "$CONF"; then
    printf '# stopped by scripts/slurm_cluster.sh stop: client commands fail at once\nMessageTimeout=1\n' >>"$CONF"
  fi
}

cmd_status() {
  local ok=0
  for d in slurmctld slurmd; do
    if alive "$STATE/run/$d.pid"; then
      echo "$d: running (pid $(cat "$STATE/run/$d.pid"))"
    else
      echo "$d: not running"
      ok=1
    fi
  done
  if alive "$MUNGE_PID"; then echo "munged: running (pid $(cat "$MUNGE_PID"))"; else
    echo "munged: not running"
    ok=1
  fi
  if [ $ok -eq 0 ]; then
    sinfo -N -o "%N %P %t %c %m %G" || ok=1
    squeue || ok=1
    case "$(node_state)" in idle* | mix* | alloc* | comp*) ;; *) ok=1 ;; esac
  fi
  return $ok
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: bash scripts/slurm_cluster.sh start|stop|status" >&2
    exit 2
    ;;
esac
