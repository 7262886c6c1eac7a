#!/bin/bash
# The CUDA check (issue 14), one script for the GPU machine's short lease: configures and builds
# the core library (with the CUDA selective-scan kernel where LibTorch has CUDA and nvcc is
# found), its tests and the benchmarks without ITK against the LibTorch that comes with the
# machine's PyTorch, runs the core tests and the CUDA scan kernel's tests, benchmarks the kernel
# against the chunked ATen scan, checks the GPU against the CPU on
# the shipped model (one window's logits within 1e-3, the mask of a synthetic 512 x 512 x 32
# head with Dice >= 0.999), benchmarks segmentation there and prints a short table. On a
# machine without CUDA it does the same on the CPU (Debian's LibTorch), checks batched windows
# against one at a time instead, and says that the CUDA parts were skipped.
#
#   scripts/gpu_check.sh                 # check (exit status 0 only when everything passed)
#   scripts/gpu_check.sh --pack-deps     # here: copy nlohmann/json and googletest sources into
#                                        # .gpu_deps/ (ignored) for a machine that has neither
#
# On the GPU machine (device tool): run with carry [".gpu_deps"]; results land in $OUT (or
# build-gpu/check). Environment: GPU_CHECK_JOBS (build jobs, default all cores),
# GPU_CHECK_SLICES (benchmark slice counts, default 32,128,300), GPU_CHECK_REPEATS (default 5).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=$ROOT/.gpu_deps
BUILD=$ROOT/build-gpu
RESULTS=${OUT:-$BUILD/check}
JOBS=${GPU_CHECK_JOBS:-$(nproc)}
SLICES=${GPU_CHECK_SLICES:-32,128,300}
REPEATS=${GPU_CHECK_REPEATS:-5}
MODEL=${HEMEXP_GPU_MODEL:-$ROOT/models/hemexp-seg-labels.safetensors}  # the default model

if [ "${1:-}" = "--pack-deps" ]; then
  rm -rf "$DEPS" && mkdir -p "$DEPS/include" || exit 1
  cp -r /usr/include/nlohmann "$DEPS/include/" || { echo "no /usr/include/nlohmann (apt-get install nlohmann-json3-dev)"; exit 1; }
  cp -r /usr/src/googletest "$DEPS/googletest" || { echo "no /usr/src/googletest (apt-get install googletest)"; exit 1; }
  grep -qx '/.gpu_deps/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu_deps/' >> "$ROOT/.git/info/exclude"
  du -sh "$DEPS"
  exit 0
fi

mkdir -p "$RESULTS" "$BUILD"
LOG=$RESULTS/gpu_check.log
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
stage() { local t0=$SECONDS; say "== $1"; shift; "$@" >> "$LOG" 2>&1; local rc=$?; say "   rc $rc, $((SECONDS - t0)) s"; return $rc; }
failed=0

# LibTorch: PyTorch's own (with CUDA) where python3 has it, else the system's (Debian).
CUDA=0
PREFIX=""
if TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null); then
  PREFIX=$TORCH_CMAKE
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    CUDA=1
    say "GPU: $(python3 -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)')"
  fi
fi
[ $CUDA = 1 ] || say "no CUDA device (or no CUDA PyTorch): the CUDA parts are skipped; checking the CPU path"
DEVICE=cpu
[ $CUDA = 1 ] && DEVICE=cuda

# nlohmann/json and GoogleTest where the machine has none (the GPU machine): from .gpu_deps.
if [ -d "$DEPS/include/nlohmann" ] && [ ! -d /usr/include/nlohmann ]; then
  mkdir -p "$DEPS/cmake/nlohmann_json"
  cat > "$DEPS/cmake/nlohmann_json/nlohmann_jsonConfig.cmake" <<EOF
if(NOT TARGET nlohmann_json::nlohmann_json)
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "$DEPS/include")
endif()
EOF
  PREFIX="$PREFIX;$DEPS/cmake/nlohmann_json"
fi
if [ -d "$DEPS/googletest" ] && [ ! -e /usr/lib/x86_64-linux-gnu/libgtest.a ]; then
  if [ ! -e "$DEPS/gtest-install/lib/cmake/GTest/GTestConfig.cmake" ] && [ ! -e "$DEPS/gtest-install/lib64/cmake/GTest/GTestConfig.cmake" ]; then
    stage "googletest from .gpu_deps" bash -c "cmake -S '$DEPS/googletest' -B '$DEPS/gtest-build' -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX='$DEPS/gtest-install' -DBUILD_GMOCK=OFF && cmake --build '$DEPS/gtest-build' -j $JOBS --target install" || failed=1
  fi
  PREFIX="$PREFIX;$DEPS/gtest-install"
fi

# nvcc for the CUDA kernel: the toolkit in /usr/local/cuda when there is one (CMake would prefer
# an nvcc beside the C++ compiler, e.g. a distribution's older one, over PATH).
if [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
say "nvcc: $(${CUDACXX:-nvcc} --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none); PyTorch's CUDA: $(python3 -c 'import torch; print(torch.version.cuda)' 2>/dev/null || echo none)"

GEN=()
command -v ninja > /dev/null && GEN=(-G Ninja)
if ! stage "configure (no ITK)" cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DHEMEXP_WITH_ITK=OFF \
  -DCMAKE_PREFIX_PATH="$PREFIX"; then
  tail -30 "$LOG"; exit 1
fi
KERNEL=0
grep -q "hemexp CUDA kernels: ON" "$LOG" && KERNEL=1
if [ $CUDA = 1 ] && [ $KERNEL = 0 ]; then
  say "WARNING: CUDA device but no CUDA kernel built (nvcc not found?): CUDA runs use the chunked ATen scan"
  grep -i "cuda" "$LOG" | grep -v "^==" | tail -5
fi
say "CUDA scan kernel built: $([ $KERNEL = 1 ] && echo yes || echo no)"
if ! stage "build test_core bench_segmenter bench_selective_scan ($JOBS jobs)" cmake --build "$BUILD" -j "$JOBS" \
  --target test_core bench_segmenter bench_selective_scan; then
  tail -40 "$LOG"; exit 1
fi

# Core tests (the CUDA device is what the benchmark and parity use; the tests run on the CPU
# side of the same build, against the same LibTorch).
if stage "core tests" "$BUILD/test_core" --gtest_brief=1 --gtest_filter='-SelectiveScanCuda.*'; then :; else
  failed=1; grep -E "FAILED|Failure" "$LOG" | head -20; fi
# The CUDA scan kernel against the CPU kernel and a double loop (skipped without the kernel or a GPU).
if stage "CUDA scan kernel tests" "$BUILD/test_core" --gtest_filter='SelectiveScanCuda.*'; then :; else
  failed=1; grep -E "FAILED|Failure" "$LOG" | head -20; fi
grep -E "^\[ +(OK|SKIPPED|FAILED) +\] SelectiveScanCuda\.[A-Za-z]+ \(|CUDA L = 2\^20" "$LOG"
if [ $CUDA = 1 ] && [ $KERNEL = 1 ]; then
  stage "scan benchmark on cuda: kernel against chunked ATen" "$BUILD/bench_selective_scan" --device cuda --repeats 5 || failed=1
  sed -n '/selective scan on cuda/,/x8 /p' "$LOG"
fi

THREADS=2
[ $CUDA = 1 ] && THREADS=$(nproc)
if [ $CUDA = 1 ]; then
  stage "parity: cuda against cpu, shipped model, 512 x 512 x 32 synthetic head" \
    "$BUILD/bench_segmenter" --model "$MODEL" --device cuda --parity --slices 32 --threads "$THREADS" --repeats 1 \
    --json "$RESULTS/parity.json" || failed=1
else
  stage "parity: 4 windows per pass at once against one at a time (cpu; the default is one per thread)" \
    "$BUILD/bench_segmenter" --model "$MODEL" --device cpu --windows-per-pass 4 --parity --slices 32 --threads "$THREADS" \
    --repeats 1 --json "$RESULTS/parity.json" || failed=1
fi
grep "^parity" "$LOG" | tail -1
if [ $CUDA = 1 ]; then
  stage "benchmark on cuda (slices $SLICES, $REPEATS repeats)" "$BUILD/bench_segmenter" --model "$MODEL" --device cuda \
    --slices "$SLICES" --threads "$THREADS" --repeats "$REPEATS" --json "$RESULTS/bench_cuda.json" || failed=1
  # --precision: the convolutions in bf16 / fp16 against the float32 CPU (mask Dice >= 0.99,
  # logits reported), then their benchmark rows.
  for p in bf16 fp16; do
    stage "parity and benchmark on cuda, --precision $p" "$BUILD/bench_segmenter" --model "$MODEL" --device cuda \
      --precision "$p" --parity --slices "$SLICES" --threads "$THREADS" --repeats "$REPEATS" \
      --json "$RESULTS/bench_cuda_$p.json" || failed=1
    grep "^parity" "$LOG" | tail -1
  done
else
  say "== benchmark on cuda: skipped (no CUDA)"
fi
stage "benchmark on cpu, 2 threads (slices 32, 3 repeats)" "$BUILD/bench_segmenter" --model "$MODEL" --device cpu \
  --slices 32 --threads 2 --repeats 3 --json "$RESULTS/bench_cpu.json" || failed=1

# The short table: seconds per stage for each benchmark row.
python3 - "$RESULTS" <<'EOF' | tee -a "$LOG"
import json, os, sys
d = sys.argv[1]
for name in ("bench_cuda.json", "bench_cuda_bf16.json", "bench_cuda_fp16.json", "bench_cpu.json"):
    p = os.path.join(d, name)
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    dev = f"{r['device']} {r.get('precision', 'fp32')}"
    print(f"{dev:>11} {'slices':>6} {'thr':>3} {'prepare':>8} {'network':>8} {'resample':>8} {'cleanup':>8} {'total':>8} {'GFLOP/s':>8}")
    for row in r.get("segment", []):
        s = row["seconds"]
        print(f"{dev:>11} {row['slices']:>6} {row['threads']:>3} {s['prepare']:8.3f} {s['network']:8.3f} "
              f"{s['resample']:8.3f} {s['cleanup']:8.3f} {s['total']:8.3f} {row['network_gflops']:8.1f}")
    if "parity" in r:
        q = r["parity"]
        print(f"{dev:>11} mask Dice vs cpu fp32 {q.get('mask_dice')}, max |logit diff| {q.get('max_abs_logit_difference')}")
p = os.path.join(d, "parity.json")
if os.path.exists(p):
    q = json.load(open(p)).get("parity", {})
    print("parity:", {k: q[k] for k in ("device", "windows_per_pass", "max_abs_logit_difference", "mask_dice", "ok") if k in q})
EOF
say "gpu_check: $([ $failed = 0 ] && echo PASSED || echo FAILED) (device $DEVICE; log $LOG)"
exit $failed
