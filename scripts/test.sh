#!/usr/bin/env bash
# Installs missing Debian packages, builds (Release, build/), runs the whole test suite.
set -euo pipefail
HEMEXP_WITH_PYTHON=1  # the Python reference's tests are part of the suite
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$HEMEXP_BUILD"
ctest --output-on-failure -j "$(nproc 2>/dev/null || echo 2)" --timeout 900
