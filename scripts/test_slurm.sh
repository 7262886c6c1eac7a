#!/usr/bin/env bash
# scripts/slurm_array.sh, in two parts.
# The quick part (a few seconds, no SLURM, no root, builds nothing): a fake sbatch records what
# would be submitted, and the --wrap commands are run with /bin/sh -c (dash on Debian, as SLURM
# does) and with dash, under LC_ALL=C, on paths holding a non-ASCII letter, a space and a ',
# a tab and a newline: a fake hemexp must get exactly the arguments given, and the real one runs
# 2 synthetic heads as 2 shards plus the merge. Also -h/--help, --dry-run (prints, submits and
# creates nothing), and a missing sbatch (exit 2 before creating anything).
#   ./scripts/test_slurm.sh --quick [HEMEXP]     (HEMEXP: default $HEMEXP_BUILD/hemexp, build/hemexp)
# Without --quick, the quick part and then the SLURM job array for real: a single-node cluster
# (Debian's slurm-wlm and munge) is configured in a temporary folder and started on this
# machine, scripts/slurm_array.sh runs a small cohort as 3 shards plus the dependent merge, and
# the merged table and every mask must equal one unsharded run (hemexp check with zero
# tolerances, masks compared byte for byte). The daemons are stopped afterwards. Needs root
# (daemons, apt-get); builds hemexp first (setup.sh). About 2.5 minutes.
#   ./scripts/test_slurm.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
script="$here/slurm_array.sh"

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

quick_checks() (
  local hemexp="$1"
  t="$(mktemp -d /tmp/hemexp-slurm-quick.XXXXXX)"
  trap 'rm -rf "$t"' EXIT
  # A fake sbatch: call N's arguments, NUL-separated, into $SBATCH_LOG/N; job id 100+N.
  mkdir -p "$t/fakebin" "$t/nosbatch" "$t/calls"
  cat > "$t/fakebin/sbatch" <<'SH'
#!/bin/sh
n=1
while [ -e "$SBATCH_LOG/$n" ]; do n=$((n + 1)); done
printf '%s\0' "$@" > "$SBATCH_LOG/$n"
echo $((100 + n))
SH
  chmod +x "$t/fakebin/sbatch"
  export SBATCH_LOG="$t/calls"
  # A PATH without sbatch (mkdir only, which the old script used before finding sbatch missing).
  ln -s "$(command -v mkdir)" "$t/nosbatch/mkdir"
  # A fake hemexp, in a folder with a space and a ', that prints its arguments NUL-separated.
  fake="$t/bin dir 'q'/hemexp"
  mkdir -p "$(dirname "$fake")"
  printf '#!/bin/sh\nprintf '\''%%s\\0'\'' "$@"\n' > "$fake"
  chmod +x "$fake"
  # The shells SLURM may run a --wrap command with: /bin/sh, and dash wherever it is not /bin/sh.
  shells=(/bin/sh)
  if command -v dash >/dev/null && [[ "$(readlink -f /bin/sh)" != "$(readlink -f "$(command -v dash)")" ]]; then
    shells+=("$(command -v dash)")
  fi
  wrap_of() {  # the --wrap command of sbatch call $1
    local a
    while IFS= read -r -d '' a; do
      [[ $a == --wrap=* ]] && { printf '%s' "${a#--wrap=}"; return; }
    done < "$SBATCH_LOG/$1"
    fail "sbatch call $1 has no --wrap"
  }
  has_arg() {  # sbatch call $1 has the argument $2
    local a
    while IFS= read -r -d '' a; do [[ $a == "$2" ]] && return 0; done < "$SBATCH_LOG/$1"
    fail "sbatch call $1 lacks $2"
  }

  # -h/--help: the usage on stdout, exit 0.
  for h in -h --help; do
    usage="$("$BASH" "$script" "$h")" || fail "$h exited $?"
    [[ $usage == usage:* && $usage == *--dry-run* ]] || fail "$h printed: $usage"
  done

  # No sbatch: exit 2 with a message naming it, and nothing created.
  rc=0
  msg="$(cd "$t" && PATH="$t/nosbatch" "$BASH" "$script" -n 2 -o "$t/nosbatch-out" -- -i x 2>&1)" || rc=$?
  [[ $rc == 2 && $msg == *sbatch* ]] || fail "without sbatch: exit $rc, expected 2 and a message naming sbatch: $msg"
  [[ ! -e $t/nosbatch-out ]] || fail "without sbatch: OUTDIR was created"

  # Quoting: every argument must reach hemexp as given, when SLURM's sh runs the --wrap commands.
  uml=$'\303\274'  # u with umlaut, in UTF-8 (2 bytes that are no letters in LC_ALL=C)
  mkdir -p "$t/M${uml}ller" "$t/in dir with 'quote'" "$t/tab"$'\t'"and"$'\n'"newline"
  out="$t/out 'x' M${uml}ller"
  # shellcheck disable=SC2016  # the $ and ` are meant literally: they must reach hemexp as such
  run_args=(-i "$t/M${uml}ller" "$t/in dir with 'quote'" "$t/tab"$'\t'"and"$'\n'"newline"
    --threads 1 "--name=it's" "" '$HOME `id` \ "*"')
  ids="$(cd "$t" && LC_ALL=C PATH="$t/fakebin:$PATH" "$BASH" "$script" -n 3 -o "$out" --hemexp "$fake" \
    --sbatch "--time=1:00 -p cpu" -- "${run_args[@]}")" || fail "submission exited $?"
  [[ $ids == "shards: job 101 (array 1-3); merge: job 102; outputs in $out/slurm/" ]] || fail "printed: $ids"
  [[ -d $out/slurm ]] || fail "OUTDIR/slurm not created"
  has_arg 1 --array=1-3; has_arg 1 --time=1:00; has_arg 1 -p; has_arg 1 cpu
  has_arg 1 "--output=$out/slurm/shard-%a.out"
  has_arg 2 --dependency=afterany:101; has_arg 2 "--output=$out/slurm/merge.out"
  for sh in "${shells[@]}"; do
    for k in 1 3; do
      LC_ALL=C SLURM_ARRAY_TASK_ID=$k "$sh" -c "$(wrap_of 1)" > "$t/got" || fail "$sh: shard $k exited $?"
      printf '%s\0' run "${run_args[@]}" -o "$out" --shard "$k/3" --no-progress > "$t/want"
      cmp -s "$t/got" "$t/want" || fail "$sh: shard $k got $(tr '\0' ' ' < "$t/got")"
    done
    LC_ALL=C "$sh" -c "$(wrap_of 2)" > "$t/got" || fail "$sh: merge exited $?"
    printf '%s\0' merge "$out" > "$t/want"
    cmp -s "$t/got" "$t/want" || fail "$sh: merge got $(tr '\0' ' ' < "$t/got")"
  done

  # --dry-run: the same two sbatch commands, one a line, submitted by no one; run by sh they
  # submit what the script itself submitted (the merge's dependency a placeholder).
  mkdir "$t/calls-real" && mv "$t/calls"/* "$t/calls-real/"
  dry="$(cd "$t" && LC_ALL=C PATH="$t/fakebin:$PATH" "$BASH" "$script" -n 3 -o "$out" --hemexp "$fake" \
    --sbatch "--time=1:00 -p cpu" --dry-run -- "${run_args[@]}")" || fail "--dry-run exited $?"
  [[ -z "$(ls "$t/calls")" ]] || fail "--dry-run called sbatch"
  LC_ALL=C PATH="$t/fakebin:$PATH" /bin/sh -c "$dry" > /dev/null || fail "the --dry-run listing does not run: $dry"
  cmp -s "$t/calls/1" "$t/calls-real/1" || fail "--dry-run's shard command differs: $(tr '\0' ' ' < "$t/calls/1")"
  tr '\0' '\n' < "$t/calls-real/2" | sed 's/^--dependency=afterany:101$/--dependency=afterany:ARRAY_JOB_ID/' > "$t/want"
  tr '\0' '\n' < "$t/calls/2" | cmp -s - "$t/want" || fail "--dry-run's merge command differs: $(tr '\0' ' ' < "$t/calls/2")"
  # ... needs no sbatch, creates nothing, and makes a relative OUTDIR absolute.
  dry="$(cd "$t" && PATH="$t/nosbatch" "$BASH" "$script" -n 2 -o ./rel/out --dry-run -- -i cohort/)" ||
    fail "--dry-run without sbatch exited $?"
  [[ ! -e $t/rel ]] || fail "--dry-run created OUTDIR"
  [[ $(wc -l <<< "$dry") == 2 && $dry == "sbatch "*$'\n'"sbatch "* ]] || fail "--dry-run printed: $dry"
  [[ $dry == *"--output=$t/rel/out/slurm/shard-%a.out"* ]] || fail "--dry-run's OUTDIR is not $t/rel/out: $dry"

  # The real hemexp, the same way: 2 synthetic heads in a folder named like the above, as 2
  # shards and the merge, each run by /bin/sh under LC_ALL=C.
  if [[ -x $hemexp ]]; then
    cohort="$t/M${uml}ller's cohort"
    "$hemexp" synth -o "$cohort" --count 2 --seed 7 --matrix 64 --thin-fraction 0 --log-level warn
    ls "$cohort"/*/ct.nii.gz > "$cohort/cohort.txt"
    out="$t/run 'x' ${uml}"
    rm -rf "$t/calls"/*
    (cd "$t" && LC_ALL=C PATH="$t/fakebin:$PATH" "$BASH" "$script" -n 2 -o "$out" --hemexp "$hemexp" -- \
      -i "$cohort/cohort.txt" --threads 2 --seg-model "$root/models/hemexp-seg.safetensors" \
      --cls-model none --log-level error) > /dev/null
    for k in 1 2; do
      LC_ALL=C SLURM_ARRAY_TASK_ID=$k /bin/sh -c "$(wrap_of 1)" || fail "hemexp shard $k exited $?"
    done
    LC_ALL=C /bin/sh -c "$(wrap_of 2)" || fail "hemexp merge exited $?"
    [[ $(tail -n +2 "$out/results.csv" | wc -l) == 2 ]] || fail "merged results.csv: $(cat "$out/results.csv")"
    echo "slurm_array.sh: real hemexp, 2 shards + merge under /bin/sh: 2 cases"
  else
    echo "slurm_array.sh: no hemexp at $hemexp, its run under /bin/sh skipped"
  fi
  echo "slurm_array.sh quick checks passed (--help, --dry-run, no sbatch; --wrap under ${shells[*]} with LC_ALL=C)"
)

if [[ ${1:-} == --quick ]]; then
  quick_checks "${2:-${HEMEXP_BUILD:-$root/build}/hemexp}"
  exit 0
fi
source "$here/setup.sh"
quick_checks "$HEMEXP_BUILD/hemexp"
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
