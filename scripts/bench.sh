#!/usr/bin/env bash
# Benchmarks (not tests). Numbers go to docs/PERFORMANCE.md; everything is also written to
# bench.json (in the current folder, or BENCH_JSON=path).
#   ./scripts/bench.sh [REPEATS] [PART...]
# PART: segment   segment()'s steps for 512x512x32/128/300 heads, 1 and 2 threads; the network's
#                 GFLOP/s against a plain conv3d's (also as the median share over alternated
#                 pairs of one plain conv3d and one segment(): bench_segmenter --pairs); the
#                 PyTorch-eager reference on the same
#                 weights and windows, and the ratio (bench_segmenter, scripts/bench_reference.py)
#       stages    `hemexp run` per stage on the same three heads, 1 and 2 threads, in REPEATS
#                 rounds of one run per size (REPEATS+1 copies of the scan in each run: the first
#                 is the cold start, the medians are over the rest of every round, as in a
#                 cohort), peak resident set, cost per voxel (300 against 32 slices also paired by
#                 round); then the three
#                 heads interleaved in one run (cohort order): the network-free cost per voxel
#                 of 300 against 32 slices, paired by round (3 x REPEATS rounds)
#       scan      the selective-scan kernel against its ATen reference
#       layers    the network module by module on one window, each convolution through oneDNN
#                 and ATen, against a plain conv3d (bench_layers), 1 and 2 threads
#       classifier  the ViT classifier's forward (bench_vit); with a classifier file
#                 (HEMEXP_BENCH_CLS_MODEL, else models/hemexp-cls.safetensors when shipped) also
#                 that file on the bench head: ROI + network as `timings_s.classify` times them
#       cohort    8 synthetic heads with and without --read-ahead: wall time against compute
# Default: segment stages scan. Run it on an idle machine: another process on the same cores
# doubles the times.
set -euo pipefail
HEMEXP_WITH_PYTHON=1                        # the PyTorch reference
HEMEXP_EXTRA_PACKAGES="python3-nibabel time"  # thin-slice versions of the head; peak memory
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HEMEXP_ROOT"
repeats="${1:-3}"
shift || true
parts=("$@")
((${#parts[@]})) || parts=(segment stages scan)
want() { [[ " ${parts[*]} " == *" $1 "* ]]; }
bench_json="${BENCH_JSON:-$PWD/bench.json}"
work="$(mktemp -d /tmp/hemexp-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
hemexp="$HEMEXP_BUILD/hemexp"
py=/usr/bin/python3

# The shipped default model when there is one, else random weights of the card template (speed does
# not depend on the weights, but a random model marks more voxels, so 'measure' is slower).
model_file="${HEMEXP_BENCH_MODEL:-models/hemexp-seg-labels.safetensors}"  # the default model; HEMEXP_BENCH_MODEL=models/hemexp-seg.safetensors for the two-class one
model_name="shipped"
if [[ ! -f $model_file ]]; then
  model_file="$work/random.safetensors"
  model_name="random"
  $py scripts/make_random_model.py --card models/seg_card_template.json --out "$model_file" >/dev/null
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $model_name ($model_file)"

if want segment; then
  echo
  echo "== segment(): steps by slice count and threads; network GFLOP/s; PyTorch reference"
  "$HEMEXP_BUILD/bench_segmenter" --model "$model_file" --repeats "$repeats" --slices 32,128,300 --threads 1,2 \
    --json "$work/segmenter.json" --dump "$work"
  $py scripts/bench_reference.py --model "$model_file" --windows "$work/windows.safetensors" --threads 1,2 \
    --repeats "$repeats" > "$work/reference.json"
  $py - "$work/reference.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"PyTorch {r['pytorch']} eager, same weights, same {r['windows']} windows of the 512x512x32 head:")
for t in (1, 2):
    x = r[f"threads_{t}"]
    print(f"  {t} thread(s): PyTorch {x['pytorch_seconds']:.2f} s, hemexp {x['cpp_seconds']:.2f} s, "
          f"ratio {x['pytorch_over_cpp']:.2f}x, largest probability difference {x['max_abs_probability_difference']:.1e}")
PY
fi

if want stages; then
  echo
  echo "== hemexp run per stage (512x512 head, seed 424242): $repeats rounds of one run per size, each a cold case and $repeats warm ones"
  "$hemexp" synth -o "$work/synth" --count 1 --seed 424242 --thin-fraction 0 --log-level warn
  # The same head on 128 and 300 slices over the same extent (linear along z).
  $py - "$work/synth/synth_00000/ct.nii.gz" "$work" <<'PY'
import sys
import nibabel as nib
import numpy as np
src, out = sys.argv[1], sys.argv[2]
img = nib.load(src)
ct = np.asarray(img.dataobj).astype(np.float32)  # (x, y, z)
for n in (32, 128, 300):
    z_old = ct.shape[2]
    pos = (np.arange(n) + 0.5) * z_old / n - 0.5  # centres over the same extent
    lo = np.clip(np.floor(pos).astype(int), 0, z_old - 1)
    hi = np.clip(lo + 1, 0, z_old - 1)
    w = np.clip(pos - lo, 0, 1)[None, None, :]
    vol = np.rint(ct[:, :, lo] * (1 - w) + ct[:, :, hi] * w).astype(np.int16)
    affine = img.affine.copy()
    scale = z_old / n
    affine[:3, 2] *= scale
    affine[:3, 3] += img.affine[:3, 2] * (0.5 * scale - 0.5)  # first centre, same extent
    hdr = img.header.copy()
    hdr.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(vol, affine, hdr), f"{out}/head_{n}.nii.gz")
PY
  # REPEATS rounds; in each, one run per size and thread count (REPEATS+1 copies of the head:
  # a cold case, then warm ones), the sizes in a rotated order. A slow phase of a shared machine
  # (a case slower by a third for a minute) then falls on one round of every size, not on all of
  # one size's cases, and each round's 300- and 32-slice runs, seconds apart, make a pair.
  for n in 32 128 300; do
    mkdir -p "$work/in_$n"
    for ((k = 0; k <= repeats; k++)); do ln -sf "$work/head_$n.nii.gz" "$work/in_$n/case$k.nii.gz"; done
  done
  sizes=(32 128 300)
  for ((round = 1; round <= repeats; round++)); do
    for threads in 1 2; do
      for ((i = 0; i < 3; i++)); do
        n=${sizes[$(((i + round - 1) % 3))]}
        out="$work/run-$n-$threads-r$round"
        /usr/bin/time -f "%M" -o "$out.rss" "$hemexp" run -i "$work/in_$n" -o "$out" --threads "$threads" \
          --seg-model "$model_file" --cls-model none --no-progress --log-level error 2>/dev/null || true
      done
    done
  done
  # Medians over the warm cases, the network-free cost per voxel (network seconds from the same
  # cases' timings_s.segment_network; from bench_segmenter for a hemexp without it), the table,
  # and stages.json.
  $py - "$work" "$repeats" <<'PY' || echo "per-stage table: not measured (see above)"
import glob, json, os, statistics, sys
work, repeats = sys.argv[1], int(sys.argv[2])
seg_path = f"{work}/segmenter.json"
network = {}
if os.path.exists(seg_path):
    network = {(s["slices"], s["threads"]): s["seconds"]["network"] for s in json.load(open(seg_path))["segment"]}
order = ["read", "brain_check", "segment", "measure", "write"]
print(f"{'slices':>6} {'thr':>3} | " + " ".join(f"{s:>11}" for s in order) + f" | {'case':>6} {'cold':>6} {'RSS MB':>7} {'ns/voxel':>8} {'ns/vox-net':>10}")
print(f"{'':>6} {'':>3} | medians over every round's warm cases; cold: median over the rounds; RSS: the largest run;")
print(f"{'':>6} {'':>3} | with 2 threads measure and write run side by side (their times overlap)")
rows = []
by_round = {}  # (slices, threads) -> each round's median network-free ns per voxel (None: not finished)
for threads in (1, 2):
    for n in (32, 128, 300):
        rounds = []  # per round: (runs, peak RSS MB), or None where a case did not finish
        for k in range(1, repeats + 1):
            out = f"{work}/run-{n}-{threads}-r{k}"
            # case ids are "<folder>_case<k>": the cold case is case0
            paths = [glob.glob(f"{out}/cases/*case{c}/result.json") for c in range(repeats + 1)]
            runs = [json.load(open(p[0])) if p else {} for p in paths]
            failed = [c for c, r in enumerate(runs) if r.get("status") != "ok"]
            if failed:  # a failed case has no full timings: say so, and leave this round out
                print(f"{n:>6} {threads:>3} | round {k}: cases {failed} did not finish: round left out")
                rounds.append(None)
                continue
            rounds.append((runs, int(open(out + ".rss").read().split()[-1]) / 1024))
        done = [r for r in rounds if r]
        if not done:
            continue
        runs0 = done[0][0][0]
        voxels = 1
        for s in runs0["input"]["size"]:
            voxels *= s
        warm = [r for runs, _ in done for r in runs[1:]]
        cold = [runs[0] for runs, _ in done]
        stages = sorted({s for r in warm for s in r["timings_s"]})
        med = {s: statistics.median(r["timings_s"].get(s, 0.0) for r in warm) for s in stages}
        total = statistics.median(r["seconds"] for r in warm)

        def without_network(cases):
            """Median seconds of these cases less the network's, or None where that is not known."""
            if all("segment_network" in r["timings_s"] for r in cases):  # each case less its own network time
                return statistics.median(r["seconds"] - r["timings_s"]["segment_network"] for r in cases)
            net = network.get((n, threads))  # a hemexp without it: bench_segmenter's network time
            return None if net is None else statistics.median(r["seconds"] for r in cases) - net

        without = without_network(warm)
        by_round[(n, threads)] = [None if r is None or (w := without_network(r[0][1:])) is None
                                  else w / voxels * 1e9 for r in rounds]
        cold_stages = sorted({s for r in cold for s in r["timings_s"]})
        r = {"slices": n, "threads": threads, "voxels": voxels, "rounds": len(done), "warm_cases": len(warm),
             "stages_s": med, "case_s": total,
             "cold_case_s": statistics.median(c["seconds"] for c in cold),
             "cold_stages_s": {s: statistics.median(c["timings_s"].get(s, 0.0) for c in cold) for s in cold_stages},
             "peak_rss_mb": max(rss for _, rss in done),  # the largest of the rounds' runs
             "ns_per_voxel": total / voxels * 1e9,
             "ns_per_voxel_without_network": None if without is None else without / voxels * 1e9,
             "ns_per_voxel_without_network_by_round": by_round[(n, threads)]}
        rows.append(r)
        extra = f"{r['ns_per_voxel_without_network']:10.1f}" if without is not None else f"{'-':>10}"
        print(f"{n:>6} {threads:>3} | " + " ".join(f"{med.get(s, 0):11.3f}" for s in order) +
              f" | {total:6.2f} {r['cold_case_s']:6.2f} {r['peak_rss_mb']:7.0f} {r['ns_per_voxel']:8.1f} {extra}")
    # The linearity measure: each round's 300-slice network-free cost per voxel against the same
    # round's 32-slice one (runs seconds apart), median and spread over the rounds.
    pairs = [b / a - 1 for a, b in zip(by_round.get((32, threads), []), by_round.get((300, threads), [])) if a and b]
    if pairs:
        for r in rows:
            if r["threads"] == threads and r["slices"] == 300:
                r["paired_change_from_32"] = {"median": statistics.median(pairs), "min": min(pairs),
                                              "max": max(pairs), "rounds": len(pairs), "values": pairs}
        left_out = f", {repeats - len(pairs)} round(s) left out: a case did not finish" if len(pairs) < repeats else ""
        print(f"{'':>6} {threads:>3} | network-free cost per voxel, 300 vs 32 slices by round: "
              f"{100 * statistics.median(pairs):+.1f}% (rounds {', '.join(f'{100 * x:+.1f}' for x in pairs)}{left_out})")
json.dump(rows, open(f"{work}/stages.json", "w"))
PY
  # Cost per voxel in cohort order: the three heads interleaved in one run (32, 128, 300 slices,
  # 3 x REPEATS + 1 rounds; the first warms up), as a cohort of mixed scans runs them. Each
  # round's 300- and 32-slice cases ran seconds apart, so a slow phase of a shared machine hits
  # both: the paired ratio of their network-free cost per voxel is the linearity measure (the
  # per-size runs above pair runs of their own processes, seconds apart). One round is one case
  # of each size, so a single round moves with one case's noise (up to about 50 points on a
  # shared VM, docs/PERFORMANCE.md): 3 x REPEATS rounds, about 40 s more at the default.
  mixed_rounds=$((3 * repeats))
  echo
  echo "== cohort order: the three heads interleaved, $mixed_rounds rounds after a warm-up round"
  for threads in 1 2; do
    mixed="$work/mixed-$threads"
    mkdir -p "$mixed/in"
    for ((k = 0; k <= mixed_rounds; k++)); do
      for n in 32 128 300; do ln -sf "$work/head_$n.nii.gz" "$mixed/in/r$(printf %02d "$k")_s$(printf %03d "$n").nii.gz"; done
    done
    "$hemexp" run -i "$mixed/in" -o "$mixed/out" --threads "$threads" --seg-model "$model_file" --cls-model none \
      --no-progress --log-level error 2>/dev/null || true
  done
  $py - "$work" "$mixed_rounds" <<'PY' || echo "cohort order: not measured (see above)"
import glob, json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])


def case(threads, k, n):
    """(seconds, network-free ns per voxel) of round k's n-slice case, or None if it did not finish."""
    paths = glob.glob(f"{work}/mixed-{threads}/out/cases/in_r{k:02d}_s{n:03d}/result.json")
    if not paths:
        return None
    r = json.load(open(paths[0]))
    if r.get("status") != "ok" or "segment_network" not in r.get("timings_s", {}):
        return None
    voxels = 1
    for s in r["input"]["size"]:
        voxels *= s
    return r["seconds"], (r["seconds"] - r["timings_s"]["segment_network"]) / voxels * 1e9


print(f"{'thr':>3} {'slices':>6} | {'case s':>7} {'ns/vox-net':>10} | 300 vs 32 slices, paired by round")
rows = []
for threads in (1, 2):
    cost = {n: [case(threads, k, n) for k in range(1, rounds + 1)] for n in (32, 128, 300)}
    # Rounds whose 32- and 300-slice cases both finished; a failed case is left out, and said.
    ratios = [b[1] / a[1] - 1 for a, b in zip(cost[32], cost[300]) if a and b]
    for n in (32, 128, 300):
        done = [c for c in cost[n] if c]
        if not done:
            print(f"{threads:>3} {n:>6} | no finished case")
            continue
        row = {"threads": threads, "slices": n, "cases": len(done), "case_s": statistics.median(c for c, _ in done),
               "ns_per_voxel_without_network": statistics.median(v for _, v in done)}
        extra = ""
        if n == 300 and ratios:
            row["paired_change_from_32"] = {"median": statistics.median(ratios), "min": min(ratios),
                                            "max": max(ratios), "rounds": len(ratios), "values": ratios}
            extra = f"{100 * statistics.median(ratios):+.1f}% (rounds {', '.join(f'{100 * x:+.1f}' for x in ratios)})"
            if len(ratios) < rounds:
                extra += f", {rounds - len(ratios)} round(s) left out: a case did not finish"
        rows.append(row)
        print(f"{threads:>3} {n:>6} | {row['case_s']:7.2f} {row['ns_per_voxel_without_network']:10.1f} | {extra}")
json.dump(rows, open(f"{work}/stages_mixed.json", "w"))
PY
fi

if want scan; then
  echo
  echo "== selective scan kernel vs ATen reference"
  "$HEMEXP_BUILD/bench_selective_scan" --repeats 5 | tee "$work/scan.txt"
fi

if want layers; then
  echo
  echo "== the network layer by layer, one 16x96x96 window (bench_layers)"
  for t in 1 2; do
    "$HEMEXP_BUILD/bench_layers" --model "$model_file" --threads "$t" --repeats $((repeats * 7)) \
      --json "$work/layers_$t.json" | tee -a "$work/layers.txt"
  done
fi

if want classifier; then
  echo
  echo "== ViT classifier forward"
  "$HEMEXP_BUILD/bench_vit" --repeats "$repeats" | tee "$work/vit.txt"
  cls_file="${HEMEXP_BENCH_CLS_MODEL:-models/hemexp-cls.safetensors}"
  if [[ -f $cls_file ]]; then
    echo
    "$HEMEXP_BUILD/bench_vit" --repeats "$repeats" --model "$cls_file" | tee -a "$work/vit.txt"
  fi
fi

if want cohort; then
  echo
  # A cohort of 8 synthetic heads (thick and thin slices) with and without read-ahead, the two
  # orders alternating over the repeats: wall time of the whole run against the sum of per-case
  # compute (a case's seconds minus the time it spent reading or waiting for its read).
  echo "== cohort of 8 scans, --threads 2: wall time against the sum of per-case compute"
  "$hemexp" synth -o "$work/cohort" --count 8 --seed 515151 --thin-fraction 0.25 --log-level warn
  runs=()
  for ((k = 0; k < repeats; k++)); do
    for mode in ahead noahead; do
      out="$work/cohort-$mode-$k"
      args=(run -i "$work/cohort" -o "$out" --threads 2 --no-progress --log-level error --cls-model none --seg-model "$model_file")
      [[ $mode == ahead ]] && args+=(--read-ahead)
      start=$(date +%s.%N)
      "$hemexp" "${args[@]}" 2>/dev/null || true
      end=$(date +%s.%N)
      echo "$mode $start $end" > "$out/wall.txt"
      runs+=("$out")
    done
  done
  $py - "${runs[@]}" > "$work/cohort.txt" <<'PY'
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
  cat "$work/cohort.txt"
fi

# Everything measured, in one file.
$py - "$work" "$bench_json" "$repeats" "$model_name" <<'PY'
import datetime, json, os, platform, sys
work, out, repeats, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def load(name, kind="json"):
    p = os.path.join(work, name)
    if not os.path.exists(p):
        return None
    return json.load(open(p)) if kind == "json" else open(p).read()
report = {"date_utc": datetime.datetime.utcnow().isoformat(timespec="seconds"), "repeats": repeats,
          "model": model, "cores": os.cpu_count(), "load_average_at_end": open("/proc/loadavg").read().split()[:3],
          "segmenter": load("segmenter.json"), "pytorch_reference": load("reference.json"),
          "stages": load("stages.json"), "stages_cohort_order": load("stages_mixed.json"),
          "selective_scan": load("scan.txt", "text"),
          "classifier": load("vit.txt", "text"), "cohort": load("cohort.txt", "text"),
          "layers": {t: j for t in ("1", "2") if (j := load(f"layers_{t}.json"))} or None}
seg, ref = report["segmenter"], report["pytorch_reference"]
if seg and ref:
    summary = {}
    for t in (1, 2):
        net = next(s for s in seg["segment"] if s["slices"] == 32 and s["threads"] == t)
        summary[f"threads_{t}"] = {
            "pytorch_over_hemexp_network": ref[f"threads_{t}"]["pytorch_over_cpp"],
            "network_gflops": net["network_gflops"],
            "plain_conv3d_gflops": seg["plain_conv3d"][str(t)]["gflops"],
            "network_share_of_plain_conv3d": net["network_gflops"] / seg["plain_conv3d"][str(t)]["gflops"],
            # from alternated pairs (bench_segmenter --pairs): median, min, max
            "network_share_paired": net.get("network_share_paired")}
    report["summary"] = summary
    print(json.dumps(summary, indent=1))
json.dump(report, open(out, "w"), indent=1)
print(f"bench.json: {out}")
PY
