#!/usr/bin/env bash
# Stop what scripts/slurm_up.sh started, by pid file (never by process name).
# Usage: bash scripts/slurm_down.sh [--purge]   (--purge also deletes $SLURM_ROOT)
set -uo pipefail
SLURM_ROOT=${SLURM_ROOT:-/tmp/slurm-local}

stop_pidfile() {  # $1 = pid file, $2 = label
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stopped $2 ($pid)"
  fi
  rm -f "$f"
}

scancel --user=root 2>/dev/null || true
PURGE=0; [ "${1:-}" = "--purge" ] && PURGE=1
stop_pidfile "$SLURM_ROOT/slurmd.pid"    slurmd
stop_pidfile "$SLURM_ROOT/slurmctld.pid" slurmctld
stop_pidfile "$SLURM_ROOT/slurmdbd.pid"  slurmdbd
# --purge: forget accounting history too (job ids restart at 1 after a purge)
if [ "$PURGE" = 1 ] && mysqladmin ping >/dev/null 2>&1; then
  mysql -uroot -e 'DROP DATABASE IF EXISTS slurm_acct_db' 2>/dev/null || true
fi
# mariadb (only if slurm_up.sh WITH_DBD=1 started it)
for f in /run/mysqld/mysqld.pid /var/run/mysqld/mysqld.pid; do
  [ -s "$f" ] && { mysqladmin shutdown 2>/dev/null || stop_pidfile "$f" mariadb; break; }
done
stop_pidfile /run/munge/munged.pid munged
[ "$PURGE" = 1 ] && rm -rf "$SLURM_ROOT" "$SLURM_ROOT.mysqld.log"
exit 0
