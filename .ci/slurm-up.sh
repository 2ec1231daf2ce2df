#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (as root): munged, slurmctld, slurmd,
# one node named $(hostname) with all its CPUs in partition "debug". Idempotent: returns at once
# when `sinfo` already answers with a usable node. Settings from the verified recipe in
# ../shared/recipes/slurm-single-node.sh: proctrack/linuxproc and task/none (no cgroups in
# containers), no accounting (job states come from squeue/scontrol), memory not enforced.
#   bash .ci/slurm-up.sh            start (or check) the cluster
set -euo pipefail
usable() { sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }
if usable; then
  echo "slurm: cluster already up: $(sinfo -h -o '%P %a %D %T %N' | head -n 1)"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "slurm-up.sh: run as root (it writes /etc/slurm and starts the daemons)" >&2; exit 1; }
H=$(hostname)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/run/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=tierflow-ci
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/var/run/slurm/slurmctld.pid
SlurmdPidFile=/var/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$H CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 9 / 10 )) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
if [ ! -f /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if usable; then
    echo "slurm: cluster up: $(sinfo -h -o '%P %a %D %T %N' | head -n 1)"
    exit 0
  fi
  # a node left DOWN by an earlier unclean stop comes back with an explicit resume
  scontrol update NodeName="$H" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm-up.sh: the cluster did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
