#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with libFuzzer (clang, AddressSanitizer +
# UndefinedBehaviorSanitizer): the safetensors reader, the model-card parsers, the CSV reader
# (lists, pairs) and the NIfTI header check. Builds them into build-fuzz/ (core only, no ITK),
# runs each for SECONDS (default 60) from its seed corpus fuzz/corpus/<name>/ (copied: the
# repository's corpus is not changed), prints executions and crashes per target, and exits 1 if
# any target crashed (the input is kept under build-fuzz/crashes/).
#
#   ./scripts/fuzz.sh [SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-60}"
export CC=clang CXX=clang++
HEMEXP_BUILD="$ROOT/build-fuzz"
HEMEXP_EXTRA_PACKAGES="clang libclang-rt-14-dev zlib1g-dev"
HEMEXP_CMAKE_ARGS="-DHEMEXP_FUZZ=ON -DHEMEXP_WITH_ITK=OFF -DHEMEXP_BUILD_TESTS=OFF -DHEMEXP_BUILD_BENCH=OFF"
HEMEXP_BUILD_TARGETS="fuzz_safetensors fuzz_model_card fuzz_csv fuzz_nifti_header"
source "$ROOT/scripts/setup.sh"

# LibTorch's own start-up allocations are not ours to chase.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1"
status=0
printf '%-20s %12s %8s\n' target executions crashes
for name in safetensors model_card csv nifti_header; do
  work="$HEMEXP_BUILD/corpus/$name"
  crashes="$HEMEXP_BUILD/crashes/$name"
  rm -rf "$work" "$crashes"
  mkdir -p "$work" "$crashes"
  cp "$ROOT/fuzz/corpus/$name/"* "$work/"
  log="$HEMEXP_BUILD/fuzz_$name.log"
  "$HEMEXP_BUILD/fuzz_$name" -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=4096 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$work" >"$log" 2>&1 || true
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  found="$(find "$crashes" -type f | wc -l)"
  printf '%-20s %12s %8s\n' "$name" "${runs:-?}" "$found"
  if [[ "$found" != 0 || -z "$runs" ]]; then
    status=1
    grep -m 5 -E 'ERROR|SUMMARY|runtime error|deadly signal' "$log" || tail -20 "$log"
  fi
done
exit "$status"
