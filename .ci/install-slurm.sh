#!/usr/bin/env bash
# Install what .ci/slurm-up.sh needs: Debian's SLURM 22.05 (slurm-wlm: slurmctld, slurmd and the
# client commands) and munge. Idempotent: does nothing when sbatch, slurmctld, slurmd and munged
# are already on PATH. Needs root (or sudo) on Debian/Ubuntu; about 30 s on a fresh machine.
set -euo pipefail
if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
   && command -v munged >/dev/null; then
  echo "slurm: already installed"
  exit 0
fi
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends slurm-wlm munge
sbatch --version 2>/dev/null || dpkg -s slurm-wlm | grep -m1 "^Version"
