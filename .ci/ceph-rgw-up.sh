#!/usr/bin/env bash
# Throwaway single-node Ceph 16.2 (1 mon, 1 in-memory OSD, no mgr) + RADOS Gateway on loopback.
#
# usage: ceph-rgw-up.sh DIR [RGW_PORT] [MON_PORT]
#   Everything (config, data, logs, sockets, pid files) lives in DIR, which is wiped first.
#   Prints "rgw ready on http://127.0.0.1:RGW_PORT ..." when S3 answers; stop with
#   ceph-rgw-down.sh DIR (it kills by the pids recorded in DIR/*.pid).
# env:
#   S3_ACCESS_KEY / S3_SECRET_KEY   the S3 user's keys (default testing / testing-secret)
#   MEMSTORE_BYTES                  OSD memory store size (default 4 GiB, allocated lazily)
#   CEPH_UP_ATTEMPTS                whole-cluster start attempts (default 2; a safety net for
#                                   an OSD that dies at start, see the fix below)
#   RGW_TLS_PORT, RGW_TLS_CERT, RGW_TLS_KEY   optional extra HTTPS endpoint
# needs: bash .ci/install-ceph.sh
#
# Adapted from the verified recipe in shared/recipes, with three fixes:
# - the monitor address is an explicit msgr v1 address: `monmaptool --add` makes any port but
#   6789 a msgr v2 address, which the v1-only clients here hang on until they time out;
# - the OSD's start-up CRUSH commands are turned off (see [osd] below) and the OSD is placed
#   in CRUSH before it starts: they raced the monitor map and aborted the OSD with
#   'wrong fsid' in 2 of 3 starts on this machine (the recipe's "OSD exits silently");
# - a dead daemon is noticed at once, and the whole cluster is started again.
set -euo pipefail

D=$(realpath -m "${1:?usage: ceph-rgw-up.sh DIR [RGW_PORT] [MON_PORT]}")
RGW_PORT=${2:-7480}
MON_PORT=${3:-6789}
ACCESS=${S3_ACCESS_KEY:-testing}
SECRET=${S3_SECRET_KEY:-testing-secret}
ATTEMPTS=${CEPH_UP_ATTEMPTS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
C=(-c "$D/ceph.conf")

case "$D" in
  / | /tmp | /var | /usr | /etc | /root | /home) echo "refusing to wipe $D" >&2; exit 2 ;;
esac

write_conf() {
  local fsid=$1
  cat >"$D/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = v1:127.0.0.1:$MON_PORT
mon_initial_members = a
public_addr = 127.0.0.1
ms_bind_ipv6 = false
ms_bind_msgr2 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
run_dir = $D/run
admin_socket = $D/run/\$cluster-\$name.asok
log_file = $D/log/\$cluster-\$name.log
crash_dir = $D/crash
mon_cluster_log_file = $D/log/ceph.log
keyring = $D/keyring
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_allow_pool_delete = true
[mon.a]
mon_data = $D/mon.a
[osd]
osd_data = $D/osd.\$id
osd_objectstore = memstore
memstore_device_bytes = ${MEMSTORE_BYTES:-4294967296}
# The OSD's first monitor map has a zero fsid, and with auth none it can send its start-up
# CRUSH commands before the real map arrives: the monitor answers 'wrong fsid' and the OSD
# aborts (most starts on this machine). The OSD is placed in CRUSH by start_osd instead.
osd_class_update_on_start = false
osd_crush_update_on_start = false
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT${RGW_TLS_PORT:+ ssl_endpoint=127.0.0.1:$RGW_TLS_PORT ssl_certificate=$RGW_TLS_CERT ssl_private_key=$RGW_TLS_KEY}
rgw_data = $D/rgw.a
rgw_dns_name = localhost
EOF
}

# wait_for TRIES PIDFILE CMD...: retry CMD every 0.2 s; give up early when the daemon whose pid
# is in PIDFILE has died.
wait_for() {
  local tries=$1 pidfile=$2
  shift 2
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "daemon $(basename "$pidfile" .pid) died while waiting for: $*" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "timeout waiting for: $*" >&2
  return 1
}

# start_daemon NAME CMD...: run CMD in its own session, logging to DIR/log/NAME.stdout.
start_daemon() {
  local name=$1
  shift
  setsid "$@" >"$D/log/$name.stdout" 2>&1 &
  echo $! >"$D/$name.pid"
}

start_mon() {
  local fsid=$1
  monmaptool --create --addv a "[v1:127.0.0.1:$MON_PORT]" --fsid "$fsid" "$D/monmap" >/dev/null
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-mon "${C[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
  start_daemon mon ceph-mon "${C[@]}" -i a -f
  wait_for 150 "$D/mon.pid" timeout 5 ceph "${C[@]}" mon stat
}

start_osd() {
  local osd_uuid
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  ceph "${C[@]}" osd new "$osd_uuid" >/dev/null
  ceph "${C[@]}" osd crush add osd.0 1.0 root=default host=localhost 2>"$D/log/crush.err"
  ceph-osd "${C[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$D/log/osd-mkfs.log" 2>&1
  start_daemon osd ceph-osd "${C[@]}" -i 0 -f
  wait_for 150 "$D/osd.pid" sh -c "timeout 5 ceph -c '$D/ceph.conf' osd stat | grep -q '1 up'"
}

start_rgw() {
  radosgw-admin "${C[@]}" -n client.rgw.a user create --uid=testing --display-name=testing \
    --access-key="$ACCESS" --secret-key="$SECRET" >"$D/log/user.json" 2>"$D/log/user.err"
  # The OSD may still die after reporting up: check before and after the gateway starts.
  kill -0 "$(cat "$D/osd.pid")"
  start_daemon rgw radosgw "${C[@]}" -n client.rgw.a -f
  wait_for 150 "$D/rgw.pid" curl -sf "http://127.0.0.1:$RGW_PORT/"
  kill -0 "$(cat "$D/osd.pid")"
}

start_cluster() {
  rm -rf "$D"
  mkdir -p "$D"/{run,log,crash,mon.a,osd.0,rgw.a}
  local fsid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  write_conf "$fsid"
  start_mon "$fsid"
  start_osd
  start_rgw
}

for attempt in $(seq 1 "$ATTEMPTS"); do
  # Not `if (start_cluster)`: errexit is ignored inside an if condition, even in a subshell.
  set +e
  (set -e; start_cluster)
  status=$?
  set -e
  if [ "$status" -eq 0 ]; then
    echo "rgw ready on http://127.0.0.1:$RGW_PORT  pids: mon=$(cat "$D/mon.pid")" \
      "osd=$(cat "$D/osd.pid") rgw=$(cat "$D/rgw.pid")  (attempt $attempt)"
    exit 0
  fi
  echo "ceph start attempt $attempt of $ATTEMPTS failed; last OSD log lines:" >&2
  tail -n 5 "$D/log/ceph-osd.0.log" >&2 2>/dev/null || true
  bash "$HERE/ceph-rgw-down.sh" "$D"
  if [ "$attempt" -lt "$ATTEMPTS" ]; then
    rm -rf "$D.failed-$attempt"
    mv "$D" "$D.failed-$attempt" 2>/dev/null || true
  fi
done
echo "ceph did not start after $ATTEMPTS attempts; logs in $D/log" >&2
exit 1
