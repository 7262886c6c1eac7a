#!/usr/bin/env bash
# Benchmarks (not tests): whole-pipeline seconds per case by stage, and the selective-scan
# kernel against its ATen reference. Numbers go to docs/PERFORMANCE.md.
#   ./scripts/bench.sh [REPEATS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HEMEXP_ROOT"
repeats="${1:-3}"
work="$(mktemp -d /tmp/hemexp-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
hemexp="$HEMEXP_BUILD/hemexp"

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
