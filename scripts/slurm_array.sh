#!/usr/bin/env bash
# hemexp over a cohort as a SLURM job array: N shards in parallel, then `hemexp merge` as a job
# that starts when every shard has finished (afterany: a shard with failed cases still merges;
# a shard that died or was cancelled makes merge refuse, naming it).
#   scripts/slurm_array.sh -n N -o OUTDIR [--hemexp PATH] [--sbatch "extra sbatch args"] -- RUN_ARGS...
# RUN_ARGS are those of `hemexp run` except -o and --shard, e.g. -i cohort/ --threads 4.
# Prints the two job ids. Resubmitting after a time limit: the same command with --resume in
# RUN_ARGS continues every shard where it stopped.
set -euo pipefail
shards="" out="" hemexp="${HEMEXP:-hemexp}" extra=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) shards="$2"; shift 2 ;;
    -o) out="$2"; shift 2 ;;
    --hemexp) hemexp="$2"; shift 2 ;;
    --sbatch) extra="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n $shards && -n $out ]] || { echo "usage: $0 -n N -o OUTDIR [--hemexp PATH] [--sbatch ARGS] -- RUN_ARGS..." >&2; exit 2; }
mkdir -p "$out/slurm"
out="$(cd "$out" && pwd)"
run_args=""
for a in "$@"; do run_args+=" $(printf '%q' "$a")"; done
# shellcheck disable=SC2086
array=$(sbatch --parsable $extra --array=1-"$shards" --job-name=hemexp-shard \
  --output="$out/slurm/shard-%a.out" \
  --wrap="$(printf '%q' "$hemexp") run$run_args -o $(printf '%q' "$out") --shard \${SLURM_ARRAY_TASK_ID}/$shards --no-progress")
# shellcheck disable=SC2086
merge=$(sbatch --parsable $extra --dependency=afterany:"$array" --job-name=hemexp-merge \
  --output="$out/slurm/merge.out" --wrap="$(printf '%q' "$hemexp") merge $(printf '%q' "$out")")
echo "shards: job $array (array 1-$shards); merge: job $merge; outputs in $out/slurm/"
