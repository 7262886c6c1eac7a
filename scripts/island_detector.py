#!/usr/bin/python3
"""Fit the island-candidate detector that island_count uses (src/core/markers.cpp).

An island candidate is a region of blood-like density near the clot (docs/MARKERS.md). On synthetic
cohorts the generator's mask tells which candidates are islands: a candidate is one when it touches
a component of the true mask other than the largest. This script measures every candidate of every
case (the same definitions as the C++), fits a logistic regression on the candidates' eight
measurements and their pairwise products (standardised first), reports how well it tells islands
from the rest (candidate AUC, out-of-fold on training by case, and on validation) and how well the
resulting count reads the generator's island sign, and prints the constants for markers.cpp.

Usage (cohort = `hemexp synth` folder, run = `hemexp run` folder of its CT files):
  scripts/island_detector.py --train proctrain:run_proctrain bgtrain:run_bgtrain \
      --val procval2:run_procval2 [--tables DIR]
Needs nibabel and scipy (Debian: python3-nibabel python3-scipy).
"""
import argparse
import csv
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_classifier import fit_logistic, roc_auc, sigmoid  # noqa: E402

FEATURES = ["ln_size_mm3", "distance_mm", "mean_minus_clot_hu", "peak_minus_clot_hu",
            "mean_minus_surround_hu", "peak_minus_surround_hu", "sd_hu", "spread_mm"]
DROP_HU, MAX_HU, BONE_HU, BONE_MARGIN_MM, SMOOTH_MM = 30.0, 100.0, 200.0, 3.0, 2.0
MIN_MM3, MAX_MM3, REACH_MM, SURROUND_MM, L2 = 5.0, 400.0, 10.0, 3.0, 1e-3


def odd(mm, spacing):
    return max(1, int(round(mm / spacing)) | 1)


def candidates(ct, mask, spacing, truth=None):
    """Rows of FEATURES (and a truth column when `truth`, the generator's mask, is given) for one
    case's candidates; arrays are (x, y, z) as nibabel reads them."""
    from scipy import ndimage as ndi
    sp = np.asarray(spacing, float)
    idx = np.argwhere(mask)
    grow = np.ceil((REACH_MM + BONE_MARGIN_MM + SMOOTH_MM) / sp).astype(int)
    lo, hi = np.maximum(idx.min(0) - grow, 0), np.minimum(idx.max(0) + grow + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    c, m = ct[box].astype(np.float32), mask[box]
    lab, _ = ndi.label(m, np.ones((3, 3, 3)))
    main = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    k = (odd(SMOOTH_MM, sp[0]), odd(SMOOTH_MM, sp[1]), 1)
    s = ndi.uniform_filter(c, k, mode="constant") / ndi.uniform_filter(np.ones_like(c), k, mode="constant")
    interior = ndi.binary_erosion(m, np.ones((3, 3, 3)))
    ref = np.median(s[interior]) if interior.any() else np.median(s[m])
    bone = ndi.maximum_filter(c > BONE_HU, tuple(odd(2 * BONE_MARGIN_MM, v) for v in sp))
    bright = (s > ref - DROP_HU) & (s < MAX_HU) & ~bone
    regions, n = ndi.label(bright, np.ones((3, 3, 3)))
    distance = ndi.distance_transform_edt(~main, sampling=sp)
    overlap = np.bincount(regions[main], minlength=n + 1)
    overlap[0] = 0
    clot = overlap.argmax() if overlap.max() > 0 else -1
    excluded = bright | m | bone
    sizes = np.bincount(regions.ravel(), minlength=n + 1) * sp.prod()
    if truth is not None:
        tl, tn = ndi.label(truth[box], np.ones((3, 3, 3)))
        tmain = np.argmax(np.bincount(tl.ravel())[1:]) + 1 if tn else 0
    ring_box = np.ones((odd(2 * SURROUND_MM, sp[0]), odd(2 * SURROUND_MM, sp[1]), 3))
    rows = []
    for i in range(1, n + 1):
        if i == clot or not MIN_MM3 <= sizes[i] <= MAX_MM3:
            continue
        region = regions == i
        d = distance[region].min()
        if d > REACH_MM:
            continue
        ring = ndi.binary_dilation(region, ring_box) & ~excluded
        if not ring.any():
            continue  # nothing around it to stand out from: not counted
        pts = np.argwhere(region) * sp
        spread = math.sqrt(max(np.linalg.eigvalsh(np.cov(pts.T)).max(), 0.0)) if len(pts) > 2 else 0.0
        around = np.median(s[ring])
        v = s[region]
        row = [math.log(sizes[i]), d, v.mean() - ref, v.max() - ref, v.mean() - around, v.max() - around, v.std(), spread]
        if truth is not None:
            t = tl[region]
            row.append(float(np.any((t > 0) & (t != tmain))))
        rows.append(row)
    return rows


def cohort_table(pair, tables):
    """Candidate rows of one cohort:run pair (cached as CSV under `tables`): (case ids, rows)."""
    import nibabel as nib
    cohort, run = pair.split(":")
    cache = os.path.join(tables, os.path.basename(os.path.normpath(cohort)) + ".csv") if tables else None
    if cache and os.path.exists(cache):
        with open(cache) as fh:
            got = list(csv.reader(fh))[1:]
        return [r[0] for r in got], [r[1] for r in got], np.array([[float(v) for v in r[2:]] for r in got]).reshape(-1, len(FEATURES) + 1)
    ids, signs, rows = [], [], []
    with open(os.path.join(cohort, "labels.csv")) as fh:
        labels = list(csv.DictReader(fh))
    for lab in labels:
        cid = lab["case_id"]
        pred = os.path.join(run, "cases", cid + "_ct", "mask.nii.gz")
        if not os.path.exists(pred):
            continue
        img = nib.load(os.path.join(cohort, cid, "ct.nii.gz"))
        mask = np.asarray(nib.load(pred).dataobj) > 0
        if not mask.any():
            continue
        truth = np.asarray(nib.load(os.path.join(cohort, cid, "mask.nii.gz")).dataobj) > 0
        got = candidates(np.asarray(img.dataobj), mask, img.header.get_zooms()[:3], truth)
        ids += [cid] * max(len(got), 1)
        signs += [lab["island"]] * max(len(got), 1)
        rows += got if got else [[math.nan] * (len(FEATURES) + 1)]  # a case without candidates
    table = np.array(rows).reshape(-1, len(FEATURES) + 1)
    if cache:
        os.makedirs(tables, exist_ok=True)
        with open(cache, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case_id", "island"] + FEATURES + ["truth"])
            for cid, sign, r in zip(ids, signs, table):
                w.writerow([cid, sign] + [f"{v:.6g}" for v in r])
    return ids, signs, table


def quadratic(z):
    """[z, z_i z_j for i <= j]: the detector's terms."""
    i, j = np.triu_indices(z.shape[1])
    return np.hstack([z, z[:, i] * z[:, j]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, metavar="COHORT:RUN")
    ap.add_argument("--val", nargs="*", default=[], metavar="COHORT:RUN")
    ap.add_argument("--tables", help="cache the candidate tables here")
    args = ap.parse_args(argv)
    train = [cohort_table(p, args.tables) for p in args.train]
    x = np.vstack([t[2] for t in train])
    measured = np.isfinite(x[:, 0])  # rows of cases without candidates are NaN
    x = x[measured]
    raw, y = x[:, :-1], x[:, -1]
    mean, sd = raw.mean(0), raw.std(0)
    z = quadratic((raw - mean) / sd)
    w, b = fit_logistic(z, y, L2)
    # Folds by case (the order cases first appear), so a case's candidates are scored together.
    names = [(k, c) for k, t in enumerate(train) for c in t[0]]
    index = {n: i for i, n in reversed(list(enumerate(names)))}
    case = np.array([index[n] % 5 for n in names])[measured]
    oof = np.zeros(len(y))
    for f in range(5):
        wf, bf = fit_logistic(z[case != f], y[case != f], L2)
        oof[case == f] = z[case == f] @ wf + bf
    print(f"training: {len(y)} candidates, {int(y.sum())} islands; candidate AUC out-of-fold {roc_auc(oof, y):.4f}")
    for pair in args.val:
        ids, signs, t = cohort_table(pair, args.tables)
        ok = np.isfinite(t[:, 0])
        p = np.zeros(len(t))
        p[ok] = sigmoid(quadratic((t[ok, :-1] - mean) / sd) @ w + b)
        count, sign = {}, {}
        for cid, s, pi, o in zip(ids, signs, p, ok):
            count[cid] = count.get(cid, 0) + int(o and pi >= 0.5)
            sign[cid] = float(s)
        keys = sorted(count)
        print(f"{pair}: {int(ok.sum())} candidates, candidate AUC {roc_auc(p[ok], t[ok, -1]):.4f}; "
              f"island sign AUC of the count {roc_auc(np.array([count[k] for k in keys]), np.array([sign[k] for k in keys])):.4f}")
    fmt = lambda v: ", ".join(f"{a:.6g}" for a in v)  # noqa: E731
    print("// island_detector.py fit: standardisation, linear and upper-triangle quadratic weights, bias")
    print(f"constexpr double kIslandMean[8] = {{{fmt(mean)}}};")
    print(f"constexpr double kIslandSd[8] = {{{fmt(sd)}}};")
    print(f"constexpr double kIslandLinear[8] = {{{fmt(w[:8])}}};")
    print(f"constexpr double kIslandQuadratic[36] = {{{fmt(w[8:])}}};")
    print(f"constexpr double kIslandBias = {b:.6g};")


if __name__ == "__main__":
    main()
