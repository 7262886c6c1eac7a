#!/usr/bin/env bash
# Benchmarks (not tests): whole-pipeline seconds per case by stage, and the selective-scan
# kernel against its ATen reference. Numbers go to docs/PERFORMANCE.md.
#   ./scripts/bench.sh [REPEATS]          everything
#   ./scripts/bench.sh [REPEATS] cohort   only the cohort part (read-ahead: wall time against compute)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HEMEXP_ROOT"
repeats="${1:-3}"
only="${2:-}"
work="$(mktemp -d /tmp/hemexp-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
hemexp="$HEMEXP_BUILD/hemexp"

if [[ $only != cohort ]]; then
echo "== selective scan kernel vs ATen reference"
"$HEMEXP_BUILD/bench_selective_scan" --repeats 5

echo
# The shipped model when there is one, else random weights of the card template (speed does
# not depend on the weights, but a random model marks more voxels, so 'measure' is slower).
model_file="models/hemexp-seg.safetensors"
model_name="shipped"
if [[ ! -f $model_file ]]; then
  model_file="$work/random.safetensors"
  model_name="random"
  /usr/bin/python3 scripts/make_random_model.py --card models/seg_card_template.json --out "$model_file" >/dev/null
fi
echo "== hemexp run on one synthetic 512x512 head CT (model: $model_name, $model_file)"
"$hemexp" synth -o "$work/synth" --count 1 --seed 424242 --thin-fraction 0 --log-level warn
ct="$work/synth/synth_00000/ct.nii.gz"
python_stats() {  # median of each stage over the repeats, from result.json
  /usr/bin/python3 - "$@" <<'PY'
import json, statistics, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
stages = sorted({k for r in runs for k in r["timings_s"]})
print("   ", "  ".join(f"{s} {statistics.median(r['timings_s'].get(s, 0) for r in runs):.2f}s" for s in stages),
      f" total {statistics.median(r['seconds'] for r in runs):.2f}s", f" size {runs[0]['input']['size']}")
PY
}
for threads in 1 2; do
  for model in none "$model_name"; do
    files=()
    for ((k = 0; k < repeats; k++)); do
      out="$work/run-$threads-$model-$k"
      args=(run -i "$ct" -o "$out" --threads "$threads" --no-progress --log-level error)
      if [[ $model != none ]]; then args+=(--seg-model "$model_file"); else args+=(--seg-model none); fi
      "$hemexp" "${args[@]}" 2>/dev/null || true
      files+=("$out/cases/ct/result.json")
    done
    echo "threads $threads, model $model:"
    python_stats "${files[@]}"
  done
done
fi

echo
# A cohort of 8 synthetic heads (thick and thin slices) with and without read-ahead, the two
# orders alternating over the repeats: wall time of the whole run against the sum of per-case
# compute (a case's seconds minus the time it spent reading or waiting for its read).
echo "== cohort of 8 scans, --threads 2: wall time against the sum of per-case compute"
"$hemexp" synth -o "$work/cohort" --count 8 --seed 515151 --thin-fraction 0.25 --log-level warn
model_args=(--seg-model "${model_file:-models/hemexp-seg.safetensors}")
[[ -f ${model_file:-models/hemexp-seg.safetensors} ]] || model_args=(--seg-model none)
runs=()
for ((k = 0; k < repeats; k++)); do
  for mode in ahead noahead; do
    out="$work/cohort-$mode-$k"
    args=(run -i "$work/cohort" -o "$out" --threads 2 --no-progress --log-level error --cls-model none "${model_args[@]}")
    [[ $mode == ahead ]] && args+=(--read-ahead)
    start=$(date +%s.%N)
    "$hemexp" "${args[@]}" 2>/dev/null || true
    end=$(date +%s.%N)
    echo "$mode $start $end" > "$out/wall.txt"
    runs+=("$out")
  done
done
/usr/bin/python3 - "${runs[@]}" <<'PY'
import json, os, statistics, sys
rows = {"ahead": [], "noahead": []}
for d in sys.argv[1:]:
    mode, start, end = open(os.path.join(d, "wall.txt")).read().split()
    wall = float(end) - float(start)
    compute = 0.0
    for c in os.listdir(os.path.join(d, "cases")):
        r = json.load(open(os.path.join(d, "cases", c, "result.json")))
        t = r["timings_s"]
        compute += r["seconds"] - t.get("read_wait", t.get("read", 0.0))
    rows[mode].append((wall, compute, wall / compute))
for mode, v in rows.items():
    print(f"  {mode:8s} wall {statistics.median(w for w, _, _ in v):6.1f} s, compute {statistics.median(c for _, c, _ in v):6.1f} s,"
          f" wall/compute {statistics.median(r for _, _, r in v):.3f} (median of {len(v)}; process start and model load included in wall)")
pairs = [a[0] / b[0] for a, b in zip(rows["ahead"], rows["noahead"])]
print(f"  wall with / without read-ahead: {statistics.median(pairs):.3f} (median of {len(pairs)} paired runs)")
PY
