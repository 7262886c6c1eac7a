#!/usr/bin/env bash
# hemexp over a cohort as a SLURM job array: N shards in parallel, then `hemexp merge` as a job
# that starts when every shard has finished (afterany: a shard with failed cases still merges;
# a shard that died or was cancelled makes merge refuse, naming it).
#   scripts/slurm_array.sh -n N -o OUTDIR [--hemexp PATH] [--sbatch "extra sbatch args"] [--dry-run] -- RUN_ARGS...
# RUN_ARGS are those of `hemexp run` except -o and --shard, e.g. -i cohort/ --threads 4.
# Prints the two job ids. Resubmitting after a time limit: the same command with --resume in
# RUN_ARGS continues every shard where it stopped. --dry-run prints the two sbatch commands
# instead (one a line, shell-quoted) and submits and creates nothing.
set -euo pipefail
usage="usage: $0 -n N -o OUTDIR [--hemexp PATH] [--sbatch \"EXTRA SBATCH ARGS\"] [--dry-run] -- RUN_ARGS...
  -n N              shards: a job array of N tasks, each running \`hemexp run ... --shard K/N\`
  -o OUTDIR         the run's output folder; the jobs' own output goes to OUTDIR/slurm/
  --hemexp PATH     the hemexp to run (default: \$HEMEXP, else hemexp on the jobs' PATH)
  --sbatch ARGS     extra sbatch arguments for both jobs, split at blanks
                    (e.g. \"--partition=cpu --time=12:00:00 -c 4\")
  --dry-run         print the sbatch commands instead of running them; submits and creates nothing
  -h, --help        this help
  RUN_ARGS          the arguments of \`hemexp run\` except -o and --shard (e.g. -i cohort/ --threads 4)
Then \`hemexp merge OUTDIR\` runs as a job that starts when every shard has ended (afterany)."
die() { printf '%s\n' "$*" >&2; exit 2; }
shards="" out="" hemexp="${HEMEXP:-hemexp}" extra="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) printf '%s\n' "$usage"; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    -n|-o|--hemexp|--sbatch)
      [[ $# -ge 2 ]] || die "$1 needs a value"$'\n'"$usage"
      case "$1" in
        -n) shards="$2" ;;
        -o) out="$2" ;;
        --hemexp) hemexp="$2" ;;
        --sbatch) extra="$2" ;;
      esac
      shift 2 ;;
    --) shift; break ;;
    *) die "unknown argument $1"$'\n'"$usage" ;;
  esac
done
[[ -n $shards && -n $out ]] || die "$usage"
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "-n: expected a positive whole number of shards, got '$shards'"
if ((!dry_run)) && ! command -v sbatch >/dev/null 2>&1; then
  die "sbatch not found on PATH: run this on a SLURM login node (or see the commands with --dry-run)"
fi

# SLURM runs a --wrap command with /bin/sh (dash on Debian), so every argument is quoted the
# POSIX way, in single quotes (a ' as '\''): any byte string, in any locale, survives any sh.
# (bash's printf %q writes $'...' for non-ASCII bytes in a C locale, or for a newline or tab,
# which dash does not read.)
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
# For --dry-run's listing only: a word as it could be typed into sh, bare where nothing in it
# is special, in double quotes where it holds a ' (the --wrap commands: easier to read) and no !
# (which a pasted line would expand), else in single quotes.
show() {
  local s="$1"
  case "$s" in
    '' | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:@%+,=-]*) ;;
    *) printf '%s' "$s"; return ;;
  esac
  if [[ $s == *\'* && $s != *!* ]]; then
    s="${s//\\/\\\\}" s="${s//\"/\\\"}" s="${s//\$/\\\$}" s="${s//\`/\\\`}"
    printf '"%s"' "$s"
  else
    shq "$s"
  fi
}

if ((dry_run)); then
  # Nothing is created, so OUTDIR is made absolute without entering it where it does not exist.
  if [[ -d $out ]]; then out="$(cd "$out" && pwd)"; elif [[ $out != /* ]]; then out="$PWD/${out#./}"; fi
else
  mkdir -p "$out/slurm"
  out="$(cd "$out" && pwd)"
fi
run_args=""
for a in "$@"; do run_args+=" $(shq "$a")"; done
# shellcheck disable=SC2206  # --sbatch's value is split at blanks on purpose
extra_args=($extra)
shard_cmd=(sbatch --parsable "${extra_args[@]}" --array=1-"$shards" --job-name=hemexp-shard
  --output="$out/slurm/shard-%a.out"
  --wrap="$(shq "$hemexp") run$run_args -o $(shq "$out") --shard \${SLURM_ARRAY_TASK_ID}/$shards --no-progress")
set_merge_cmd() {  # $1: the array's job id
  merge_cmd=(sbatch --parsable "${extra_args[@]}" --dependency=afterany:"$1" --job-name=hemexp-merge
    --output="$out/slurm/merge.out" --wrap="$(shq "$hemexp") merge $(shq "$out")")
}
print_cmd() {
  local line="" w
  for w in "$@"; do line+="${line:+ }$(show "$w")"; done
  printf '%s\n' "$line"
}

if ((dry_run)); then
  print_cmd "${shard_cmd[@]}"
  set_merge_cmd ARRAY_JOB_ID  # the array's job id, which only sbatch can tell
  print_cmd "${merge_cmd[@]}"
  exit 0
fi
array=$("${shard_cmd[@]}")
set_merge_cmd "$array"
merge=$("${merge_cmd[@]}")
echo "shards: job $array (array 1-$shards); merge: job $merge; outputs in $out/slurm/"
