"""Self-test of scripts/marker_analysis.py on small prepared cohorts made here (no hemexp binary):
expansion decided exactly by two true signs, so a model on the true signs separates it
perfectly, one without them cannot, and volume (drawn independently) says nothing.

    /usr/bin/python3 scripts/test_marker_analysis.py
"""
import contextlib
import csv
import io
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import marker_analysis  # noqa: E402
from classifier_report import BASELINE_MARKERS, REGION_MARKERS, TRUE_MARKERS  # noqa: E402


def write_cohort(folder, n, seed):
    rng = np.random.RandomState(seed)
    os.makedirs(folder)
    columns = ["case_id", "file", "source", "mask_source", "he_label", "volume_ml", "ivh_volume_ml",
               "he_observable_probability"] + BASELINE_MARKERS + REGION_MARKERS + ["true_" + s for s in TRUE_MARKERS]
    with open(os.path.join(folder, "cases.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for i in range(n):
            signs = {s: int(rng.rand() < 0.35) for s in TRUE_MARKERS}
            label = int(signs["blend"] + signs["island"] >= 1)
            row = {"case_id": f"c{i}", "file": f"c{i}.safetensors", "source": "synth", "mask_source": "predicted",
                   "he_label": label, "volume_ml": f"{rng.lognormal(2.5, 1.0):.3f}", "ivh_volume_ml": "0",
                   "he_observable_probability": f"{0.2 + 0.6 * label - 0.1 * rng.rand():.4f}"}
            for m in BASELINE_MARKERS + REGION_MARKERS:
                # a marker reads the blend sign through noise; one case in ten is not measurable
                row[m] = "" if rng.rand() < 0.1 else f"{signs['blend'] + rng.normal(0, 1.5):.4f}"
            row.update({"true_" + s: v for s, v in signs.items()})
            w.writerow(row)


def table(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        marker_analysis.main(argv)
    rows = {}
    for line in out.getvalue().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1][:1].isdigit():
            rows[cells[0]] = [float(c.split()[0]) for c in cells[1:]]
    return out.getvalue(), rows


def main():
    with tempfile.TemporaryDirectory() as tmp:
        train, val = os.path.join(tmp, "train"), os.path.join(tmp, "val")
        write_cohort(train, 400, 1)
        write_cohort(val, 200, 2)
        text, rows = table(["--train", train, "--val", val])
        assert text.startswith("training 400 cases"), text
        assert rows["true signs"][0] == 1.0, rows["true signs"]          # pooled AUC: separable
        for dropped in ("blend", "island"):
            assert rows[f"true signs - {dropped}"][0] < 0.95, (dropped, rows)
        assert rows["true signs - swirl"][0] == 1.0, rows                # swirl plays no part
        # Read instead of known: swirl costs nothing, island (no marker reads it) as much as dropping
        # it, blend (read through noise) less than dropping it.
        assert rows["true signs, swirl read"][0] == 1.0, rows
        assert abs(rows["true signs, island read"][0] - rows["true signs - island"][0]) < 0.03, rows
        assert rows["true signs - blend"][0] + 0.02 < rows["true signs, blend read"][0] < 1.0, rows
        assert abs(rows["volume and IVH only"][0] - 0.5) < 0.1, rows     # independent of the label
        assert 0.6 < rows["markers"][0] < 0.95, rows                     # blend through noise
        assert rows["two-stage (markers)"][0] > 0.6, rows
        assert rows["observable oracle"][0] > 0.99, rows
    print("marker_analysis self-test passed")


if __name__ == "__main__":
    main()
