#!/usr/bin/env bash
# The SLURM job array for real: a single-node cluster (Debian's slurm-wlm and munge) is
# configured in a temporary folder and started on this machine, scripts/slurm_array.sh runs a
# small cohort as 3 shards plus the dependent merge, and the merged table and every mask must
# equal one unsharded run (hemexp check with zero tolerances, masks compared byte for byte).
# The daemons are stopped afterwards. Needs root (daemons, apt-get). About 2 minutes.
#   ./scripts/test_slurm.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HEMEXP_ROOT"
hemexp="$HEMEXP_BUILD/hemexp"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get install -y slurm-wlm munge >/dev/null
fi
work="$(mktemp -d /tmp/hemexp-slurm.XXXXXX)"
chmod 755 "$work"
node="$(hostname -s)"
mkdir -p "$work/state" "$work/spool" "$work/munge"
cat > "$work/slurm.conf" <<CONF
ClusterName=hemexp-test
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
NodeName=$node CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$work/slurm.conf"
# munge: our own key and socket, so that a munged already running is left alone.
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
munged --key-file="$work/munge/munge.key" --socket="$socket" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed" --force
export MUNGE_SOCKET="$socket"
cleanup() {
  scancel --user=root >/dev/null 2>&1 || true
  for p in slurmd slurmctld munge/munged; do
    [[ -f $work/$p.pid ]] && kill "$(cat "$work/$p.pid")" 2>/dev/null || true
  done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
# slurm's auth/munge plugin finds the socket through its own option.
echo "AuthInfo=socket=$socket" >> "$work/slurm.conf"
slurmctld -f "$work/slurm.conf"
slurmd -f "$work/slurm.conf"
for _ in $(seq 60); do
  sinfo -h -o %t 2>/dev/null | grep -q idle && break
  sleep 1
done
sinfo -h -o %t | grep -q idle || { echo "slurm did not come up"; tail -20 "$work/slurmctld.log" "$work/slurmd.log"; exit 1; }

"$hemexp" synth -o "$work/cohort" --count 5 --seed 31337 --matrix 128 --thin-fraction 0 --log-level warn
ls "$work"/cohort/*/ct.nii.gz > "$work/cohort.txt"  # the CTs, not the masks beside them
args=(-i "$work/cohort.txt" --threads 1 --seg-model models/hemexp-seg.safetensors --cls-model none)
./scripts/slurm_array.sh -n 3 -o "$work/sharded" --hemexp "$hemexp" -- "${args[@]}"
for _ in $(seq 600); do
  [[ -z "$(squeue -h 2>/dev/null)" ]] && break
  sleep 1
done
[[ -z "$(squeue -h)" ]] || { echo "jobs still queued after 10 minutes"; squeue; exit 1; }
cat "$work/sharded/slurm/merge.out"
"$hemexp" run "${args[@]}" -o "$work/whole" --no-progress --log-level error
"$hemexp" check --baseline "$work/whole" "$work/sharded" --volume-ml 0 --probability 0 --dice 1
for d in "$work/whole"/cases/*/; do
  id="$(basename "$d")"
  cmp "$d/mask.nii.gz" "$work/sharded/cases/$id/mask.nii.gz"
done
echo "SLURM: 3 shards + merge equal one unsharded run ($(ls "$work/whole/cases" | wc -l) cases, masks byte-identical)"
