#!/usr/bin/env bash
# Stop what ceph-rgw-up.sh DIR started, by the pids it recorded (rgw, then osd, then mon):
# SIGTERM, up to 10 s to exit, then SIGKILL. Safe to run twice or on a half-started DIR.
# usage: ceph-rgw-down.sh DIR
set -uo pipefail
D=${1:?usage: ceph-rgw-down.sh DIR}
for name in rgw osd mon; do
  pidfile="$D/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
done
exit 0
