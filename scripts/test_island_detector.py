"""Self-test of scripts/island_detector.py on scenes made here (no hemexp binary): a clot with three
2.5 mm blood balls 3-5 mm outside its margin, a ball 30 mm away and a 45 HU ball. The candidates
carry the generator-style truth; the weights pasted into src/core/markers.cpp count exactly the
three islands (as the C++ test Markers.IslandsAreBloodLikeRegionsNearTheClotWhateverTheMaskKept
does on its scene), so the Python measurements, the term order and the pasted constants agree;
and a fit on small cohorts written to disk runs end to end and prints constants of the right sizes.

    /usr/bin/python3 scripts/test_island_detector.py
"""
import contextlib
import csv
import io
import os
import re
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import island_detector as D  # noqa: E402
from train_classifier import sigmoid  # noqa: E402

SPACING = (0.8, 0.8, 2.0)
SHAPE = (120, 100, 30)


def ball(centre_mm, radius_mm):
    x, y, z = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    return (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2 <= radius_mm ** 2


def scene(islands=True, seed=1):
    c = np.array([48.0, 40.0, 30.0])
    clot = ball(c, 8.0)
    isl = ball(c + [14, 0, 0], 2.5) | ball(c + [0, 13, 0], 2.5) | ball(c + [-9, -10, 4], 2.5)
    far, faint = ball(c + [38, 0, 0], 2.5), ball(c + [0, -14, 0], 2.5)
    hu = np.full(SHAPE, 30.0, np.float32)
    hu[clot | far] = 65.0
    hu[faint] = 45.0
    if islands:
        hu[isl] = 65.0
    hu += np.random.RandomState(seed).normal(0, 2.0, SHAPE).astype(np.float32)
    return hu, clot, clot | (isl if islands else False)


def pasted_weights():
    src = open(os.path.join(HERE, "..", "src", "core", "markers.cpp")).read()

    def array(name):
        body = re.search(name + r"\[\d+\] = \{([^}]*)\}", src).group(1)
        return np.array([float(v) for v in body.replace("\n", " ").split(",")])
    bias = float(re.search(r"kIslandBias = ([-0-9.e]+);", src).group(1))
    spread = float(re.search(r"kIslandMaxSpreadMm = ([0-9.]+);", src).group(1))
    return array("kIslandMean"), array("kIslandSd"), np.concatenate([array("kIslandLinear"), array("kIslandQuadratic")]), bias, spread


def count(rows, weights):
    mean, sd, w, b, max_spread = weights
    x = np.array(rows)[:, :8]
    p = sigmoid(D.quadratic((x - mean) / sd) @ w + b)
    return int(((p >= 0.5) & (x[:, 7] <= max_spread)).sum())


def write_cohort(root, name, n, seed):
    import nibabel as nib
    cohort, run = os.path.join(root, name), os.path.join(root, "run_" + name)
    rng = np.random.RandomState(seed)
    os.makedirs(cohort)
    rows = []
    for i in range(n):
        has = bool(i % 2)
        hu, pred, truth = scene(has, seed=seed + i)
        hu += rng.normal(0, 1.0)
        cid = f"synth_{i:05d}"
        for folder, files in ((os.path.join(cohort, cid), {"ct.nii.gz": hu, "mask.nii.gz": truth}),
                              (os.path.join(run, "cases", cid + "_ct"), {"mask.nii.gz": pred})):
            os.makedirs(folder)
            for f, a in files.items():
                nib.save(nib.Nifti1Image(a.astype(np.float32 if f == "ct.nii.gz" else np.uint8), np.diag(SPACING + (1.0,))),
                         os.path.join(folder, f))
        rows.append({"case_id": cid, "island": int(has)})
    with open(os.path.join(cohort, "labels.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, ["case_id", "island"])
        w.writeheader()
        w.writerows(rows)
    return f"{cohort}:{run}"


def main():
    weights = pasted_weights()
    hu, pred, truth = scene(True)
    rows = D.candidates(hu, pred, SPACING, truth)
    truth_col = np.array(rows)[:, 8]
    assert truth_col.sum() == 3, f"three candidates touch the true islands, got {truth_col.sum()}"
    assert all(r[1] <= D.REACH_MM for r in rows), "only candidates within reach of the clot"
    got = count(rows, weights)
    assert got == 3, f"the pasted weights count the three islands (as the C++ test does), got {got}"
    hu0, pred0, truth0 = scene(False)
    rows0 = D.candidates(hu0, pred0, SPACING, truth0)
    assert not rows0 or count(rows0, weights) == 0, "no islands in the image: none counted"

    with tempfile.TemporaryDirectory() as root:
        train = write_cohort(root, "train", 8, 10)
        val = write_cohort(root, "val", 4, 50)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            D.main(["--train", train, "--val", val, "--tables", os.path.join(root, "tables")])
        text = out.getvalue()
        sizes = {m.group(1): len(m.group(2).split(",")) for m in re.finditer(r"(kIsland\w+)\[\d+\] = \{([^}]*)\}", text)}
        assert sizes == {"kIslandMean": 8, "kIslandSd": 8, "kIslandLinear": 8, "kIslandQuadratic": 36}, sizes
        assert "candidate AUC" in text and "kIslandBias" in text, text
        assert os.path.exists(os.path.join(root, "tables", "train.csv")), "the candidate table is cached"
    print("island_detector self-test passed")


if __name__ == "__main__":
    main()
