#!/usr/bin/env bash
# The bundled scans through the shipped model, checked against the committed baseline
# (tests/regression/baseline): what the README's CI example does with a researcher's own
# sample scans. After a deliberate change of results (a new model), regenerate the baseline:
#   hemexp run -i tests/data/ge-head-ct-tilt-mixed-thickness tests/data/philips-head-phantom-5mm \
#     -o tests/regression/baseline --overwrite --no-qc   (then keep results.csv and cases/*/mask.nii.gz)
set -u
hemexp=$1 src=$2 out=$3/regression-bundled
"$hemexp" run -i "$src/tests/data/ge-head-ct-tilt-mixed-thickness" "$src/tests/data/philips-head-phantom-5mm" \
  -o "$out" --overwrite --threads 2 --no-qc --no-progress --log-level error
rc=$?
if [ "$rc" -ne 4 ]; then echo "hemexp run exited $rc, expected 4 (the phantom is rejected)"; exit 1; fi
exec "$hemexp" check --baseline "$src/tests/regression/baseline" "$out"
