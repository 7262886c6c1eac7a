#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (GCC: ITK 5.2's
# headers refuse clang 14), in build-asan/. Any memory error or undefined behaviour stops the
# test it happens in. Takes about 70 minutes on 2 cores (build 35, tests 36), so .ci/run does
# not run it; run it after a change to the readers, the runner or the model loading.
#
#   ./scripts/sanitize.sh [ctest arguments, e.g. -R BadInputs]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CC=gcc CXX=g++
HEMEXP_BUILD="$ROOT/build-asan"
HEMEXP_WITH_PYTHON=1
HEMEXP_CMAKE_ARGS="-DHEMEXP_SANITIZE=ON -DHEMEXP_BUILD_BENCH=OFF"
source "$ROOT/scripts/setup.sh"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd "$HEMEXP_BUILD"
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)" --timeout 3600 "$@"
