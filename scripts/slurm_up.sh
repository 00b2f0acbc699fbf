#!/usr/bin/env bash
# Bring up a single-node SLURM cluster (slurmctld + slurmd + munge) on this
# machine, as root, without systemd and without cgroups: the cluster gatscale's
# `@pytest.mark.slurm` tests run against. Idempotent: a second call is ~0.2 s.
# Uses Debian's SLURM (slurmctld, slurmd) and munge packages; the options of the
# slurm.conf it writes are documented at https://slurm.schedmd.com/slurm.conf.html.
#
# Usage:  bash scripts/slurm_up.sh            # no accounting DB (sacct will NOT work)
#         WITH_DBD=1 bash scripts/slurm_up.sh # also mariadb + slurmdbd (sacct works;
#                                             # submitit's job states need it)
#
# Env knobs:
#   SLURM_CPUS   CPUs advertised for the node (default: nproc)
#   SLURM_ROOT   scratch dir for state, spool, logs (default /tmp/slurm-local)
#   WITH_DBD     1 = install/start mariadb + slurmdbd, real accounting
set -euo pipefail

SLURM_ROOT=${SLURM_ROOT:-/tmp/slurm-local}
SLURM_CPUS=${SLURM_CPUS:-$(nproc)}
WITH_DBD=${WITH_DBD:-0}
NODE=$(hostname -s)
t_start=$(date +%s.%N)

log() { echo "[slurm_up $(date +%T)] $*"; }
running() { local p; p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
stop_pid() {
  local p; p=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  log "stopping pid $p ($1)"; kill "$p"
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
}

# --- 1. packages -----------------------------------------------------------
pkgs="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "apt-get install$missing"
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# --- 2. node must resolve to loopback ---------------------------------------
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

# --- 3. munge -----------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  for i in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# --- 4. optional accounting DB ----------------------------------------------
mkdir -p /etc/slurm "$SLURM_ROOT"/{state,spool,log}
ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
if [ "$WITH_DBD" = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting mariadb"
    nohup mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >"$SLURM_ROOT.mysqld.log" 2>&1 &
    for i in $(seq 1 100); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  mysql -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$SLURM_ROOT/log/slurmdbd.log
PidFile=$SLURM_ROOT/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  if ! running "$SLURM_ROOT/slurmdbd.pid"; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
    for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.2; done
  fi
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
fi

# --- 5. slurm.conf ------------------------------------------------------------
mkdir -p /etc/slurm "$SLURM_ROOT"/{state,spool,log}
HW=$(slurmd -C | head -1)
REALMEM=$(echo "$HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
HWCPUS=$(echo "$HW" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
if [ "$SLURM_CPUS" = "$HWCPUS" ]; then
  # exact hardware topology, so slurmd does not complain about boundaries
  NODEDEF=$(echo "$HW" | sed -e "s/^NodeName=[^ ]*/NodeName=$NODE NodeAddr=127.0.0.1/")
else
  # fake CPU count (more or fewer than the hardware); config_overrides below
  NODEDEF="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$SLURM_CPUS RealMemory=$REALMEM"
fi
cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=localcluster
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# no cgroups at all: plain process tracking, no task containment
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_ROOT/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$SLURM_ROOT/state
SlurmdSpoolDir=$SLURM_ROOT/spool
SlurmctldPidFile=$SLURM_ROOT/slurmctld.pid
SlurmdPidFile=$SLURM_ROOT/slurmd.pid
SlurmctldLogFile=$SLURM_ROOT/log/slurmctld.log
SlurmdLogFile=$SLURM_ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
# fast turnaround for tests
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MessageTimeout=10
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
MaxArraySize=1001
JobRequeue=1
SlurmdParameters=config_overrides
$NODEDEF State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if [ -f /etc/slurm/slurm.conf ] && ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
  # config changed: stop running daemons (by pid file) so they restart with it
  stop_pid "$SLURM_ROOT/slurmd.pid"; stop_pid "$SLURM_ROOT/slurmctld.pid"
fi
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
# cgroup.conf is not read with the plugins above; write a harmless one anyway
# so that no plugin falls back to probing the (v1/v2 hybrid) cgroup tree.
cat > /etc/slurm/cgroup.conf <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

# --- 6. daemons -----------------------------------------------------------------
if ! running "$SLURM_ROOT/slurmctld.pid"; then
  log "starting slurmctld"
  /usr/sbin/slurmctld -i   # -i: do not abort on missing/garbled state files (first start)
fi
if ! running "$SLURM_ROOT/slurmd.pid"; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi

# --- 7. wait until the node is idle ------------------------------------------
for i in $(seq 1 150); do
  st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case "$st" in idle*|mixed*|allocated*) break;; esac
  sleep 0.2
done
st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
case "$st" in
  idle*|mixed*|allocated*) ;;
  *) log "node state '$st' - trying to resume"; scontrol update nodename="$NODE" state=resume || true; sleep 1;;
esac
sinfo
t_end=$(date +%s.%N)
log "cluster up in $(awk -v a="$t_start" -v b="$t_end" 'BEGIN{printf "%.2f", b-a}') s"
