#!/usr/bin/env bash
# Install what .ci/ceph-rgw-up.sh needs: Debian's Ceph 16.2 monitor, OSD, RADOS Gateway and
# CLI tools, and curl. Idempotent: does nothing when radosgw and curl are already on PATH.
# Needs root (or sudo) on Debian/Ubuntu; about 60 s on a fresh machine.
set -euo pipefail
if command -v radosgw >/dev/null && command -v curl >/dev/null; then
  echo "ceph: radosgw already installed ($(radosgw --version 2>/dev/null | head -n 1))"
  exit 0
fi
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
  ceph-mon ceph-osd radosgw ceph-common curl
radosgw --version | head -n 1
