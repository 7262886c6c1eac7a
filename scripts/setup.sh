#!/usr/bin/env bash
# Installs what hemexp needs from Debian 12 packages (only what is missing) and builds it
# (Release, into build/). Sourced by test.sh and demo.sh; safe to run again and again.
set -euo pipefail

HEMEXP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEMEXP_BUILD="${HEMEXP_BUILD:-$HEMEXP_ROOT/build}"

# Every dependency, from Debian. libopenblas0-openmp replaces the reference BLAS that
# Debian's LibTorch would otherwise use (about 15x slower matrix products).
HEMEXP_PACKAGES=(
  cmake make g++ git
  libtorch-dev libopenblas0-openmp zlib1g-dev libdeflate-dev
  libinsighttoolkit5-dev libgdcm-tools
  libcli11-dev libspdlog-dev nlohmann-json3-dev libgtest-dev
)
# The PyTorch reference of the networks (training, export, parity fixtures), run with
# Debian's /usr/bin/python3; test.sh checks it too, so the training side cannot rot unseen.
HEMEXP_PYTHON_PACKAGES=(python3-torch python3-numpy python3-nibabel python3-scipy)

hemexp_install_packages() {
  local missing=()
  for p in "${HEMEXP_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  echo "hemexp setup: installing ${missing[*]}" >&2
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "hemexp setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# HEMEXP_CMAKE_ARGS: extra configure arguments for a build folder of another kind
# (scripts/sanitize.sh, scripts/fuzz.sh); HEMEXP_EXTRA_PACKAGES: what those need besides.
hemexp_build() {
  local jobs
  jobs="$(nproc 2>/dev/null || echo 2)"
  if [[ ! -f "$HEMEXP_BUILD/CMakeCache.txt" ]]; then
    cmake -S "$HEMEXP_ROOT" -B "$HEMEXP_BUILD" -DCMAKE_BUILD_TYPE=Release ${HEMEXP_CMAKE_ARGS:-} >/dev/null
  fi
  cmake --build "$HEMEXP_BUILD" -j "$jobs" ${HEMEXP_BUILD_TARGETS:+--target ${HEMEXP_BUILD_TARGETS}}
}

hemexp_install_packages ${HEMEXP_WITH_PYTHON:+"${HEMEXP_PYTHON_PACKAGES[@]}"} ${HEMEXP_EXTRA_PACKAGES:-}
hemexp_build
