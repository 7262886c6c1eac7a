#!/usr/bin/python3
"""What the measured markers are worth for expansion, on prepared synthetic cohorts.

Fits logistic regressions of he_label on training cohorts and scores validation cohorts
(`hemexp prepare --run RUN --labels SYNTHDIR/labels.csv ...` output: cases.csv with the measured
markers and the generator's true_<marker> columns), reporting the AUC per validation cohort and
pooled, each beside the generator's observable oracle (he_observable_probability):

  markers           the marker baseline's features (classifier_report.py BASELINE_FEATURES)
  markers+regions   the same plus the six markers on the in-plane 2 mm mean (REGION_MARKERS)
  two-stage         per true sign a logistic detector on the markers (out-of-fold on training),
                    then he_label on the seven sign probabilities, log volume and log IVH volume
  true signs        the generator's true signs with the measured log volumes: what perfect
                    sign detection would give with weights learnt from these labels
  true signs - S    the same without sign S: what each sign is worth
  true signs, S read  the same with sign S replaced by its detector's probability (markers+regions,
                    out-of-fold on training): what reading S instead of knowing it costs
and, per true sign, how well a logistic detector on each feature set reads it.

Validation only: choosing features on a test cohort would make its numbers optimistic.
Usage: scripts/marker_analysis.py --train prep_proctrain prep_bgtrain --val prep_procval prep_bgval
"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from classifier_report import BASELINE_FEATURES, REGION_MARKERS, TRUE_MARKERS  # noqa: E402
from train_classifier import (fit_logistic, fit_logistic_out_of_fold, parse_float, read_cases_csv, roc_auc,  # noqa: E402
                              sigmoid)

L2 = 1e-3  # on the standardised weights and the mean log-loss: keeps the fits finite, changes little
FOLDS = 5


def load(folder):
    rows = []
    for r in read_cases_csv(folder):
        d = {k: parse_float(v) for k, v in r.items() if k not in ("case_id", "file", "source", "mask_source")}
        v, ivh = d.get("volume_ml", math.nan), d.get("ivh_volume_ml", math.nan)
        d["log_volume_ml"] = math.log(v) if v > 0 else math.nan
        d["log_ivh_volume_ml"] = math.log1p(ivh) if ivh >= 0 else math.nan
        if not math.isfinite(d["log_volume_ml"]):
            continue  # no hematoma measured: the classifier scores none
        d["cohort"] = os.path.basename(os.path.normpath(folder))
        rows.append(d)
    return rows


def matrix(rows, names, fill=None):
    """Rows x names; NaN becomes the column's mean over `fill` (the training rows), as the C++
    feature vector makes a missing value the training mean."""
    x = np.array([[r.get(n, math.nan) for n in names] for r in rows], dtype=np.float64)
    ref = np.array([[r.get(n, math.nan) for n in names] for r in (fill if fill is not None else rows)])
    mean = np.nanmean(ref, 0)
    mean[~np.isfinite(mean)] = 0.0
    return np.where(np.isfinite(x), x, mean)


def fit_score(x_train, y_train, x_test):
    w, b = fit_logistic(x_train, y_train, L2)
    return x_test @ w + b


def sign_probabilities(train, val, names, sign):
    """A logistic detector of the true sign on the features `names`: its out-of-fold probabilities
    on the training rows and its probabilities on the validation rows."""
    xt, xv = matrix(train, names), matrix(val, names, train)
    w, b, oof = fit_logistic_out_of_fold(xt, np.array([r["true_" + sign] for r in train]), FOLDS, L2)
    return sigmoid(oof), sigmoid(xv @ w + b)


def two_stage(train, val, names, signs=TRUE_MARKERS, known=()):
    """he_label on the detectors' probabilities of `signs`, the true values of the `known` columns,
    log volume and log IVH volume."""
    read = [sign_probabilities(train, val, names, sign) for sign in signs]
    extra = list(known) + ["log_volume_ml", "log_ivh_volume_ml"]
    zt = np.column_stack([t for t, _ in read] + [matrix(train, extra)])
    zv = np.column_stack([v for _, v in read] + [matrix(val, extra, train)])
    return fit_score(zt, np.array([r["he_label"] for r in train]), zv)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, metavar="PREPDIR")
    ap.add_argument("--val", nargs="+", required=True, metavar="PREPDIR")
    args = ap.parse_args(argv)
    train = [r for d in args.train for r in load(d)]
    val = [r for d in args.val for r in load(d)]
    y_train = np.array([r["he_label"] for r in train])
    groups = {"pooled": np.ones(len(val), bool)}
    for d in args.val:
        name = os.path.basename(os.path.normpath(d))
        groups[name] = np.array([r["cohort"] == name for r in val])
    y = np.array([r["he_label"] for r in val])
    oracle = np.array([r["he_observable_probability"] for r in val])

    def direct(names):
        return fit_score(matrix(train, names), y_train, matrix(val, names, train))

    true_signs = ["true_" + s for s in TRUE_MARKERS] + ["log_volume_ml", "log_ivh_volume_ml"]
    models = [("markers", direct(BASELINE_FEATURES)),
              ("markers+regions", direct(BASELINE_FEATURES + REGION_MARKERS)),
              ("two-stage (markers)", two_stage(train, val, BASELINE_FEATURES)),
              ("two-stage (markers+regions)", two_stage(train, val, BASELINE_FEATURES + REGION_MARKERS)),
              ("true signs", direct(true_signs))]
    models += [(f"true signs - {s}", direct([t for t in true_signs if t != "true_" + s])) for s in TRUE_MARKERS]
    # What reading one sign (instead of knowing it) costs: that sign's detector on markers+regions.
    models += [(f"true signs, {s} read", two_stage(train, val, BASELINE_FEATURES + REGION_MARKERS, [s],
                                                   ["true_" + t for t in TRUE_MARKERS if t != s]))
               for s in TRUE_MARKERS]
    models += [("volume and IVH only", direct(["log_volume_ml", "log_ivh_volume_ml"]))]
    # How well each true sign is read: a logistic detector per sign, fitted on training, AUC on validation.
    detectors = []
    for name, names in (("markers", BASELINE_FEATURES), ("markers+regions", BASELINE_FEATURES + REGION_MARKERS)):
        xt, xv = matrix(train, names), matrix(val, names, train)
        cells = []
        for sign in TRUE_MARKERS:
            st = np.array([r["true_" + sign] for r in train])
            sv = np.array([r["true_" + sign] for r in val])
            score = fit_score(xt, st, xv)
            cells.append(" / ".join(f"{roc_auc(score[m], sv[m]):.3f}" for m in groups.values()))
        detectors.append((name, cells))
    print(f"training {len(train)} cases ({int(y_train.sum())} HE), validation {len(val)} ({int(y.sum())} HE)")
    header = "| model | " + " | ".join(f"{g} AUC (x obs. oracle)" for g in groups) + " |"
    print(header)
    print("|---|" + "---|" * len(groups))
    print("| observable oracle | " + " | ".join(f"{roc_auc(oracle[m], y[m]):.3f}" for m in groups.values()) + " |")
    for name, score in models:
        cells = []
        for m in groups.values():
            a = roc_auc(score[m], y[m])
            cells.append(f"{a:.3f} ({a / roc_auc(oracle[m], y[m]):.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("Sign detectors (AUC on validation: " + " / ".join(groups) + ")")
    print("| features | " + " | ".join(TRUE_MARKERS) + " |")
    print("|---|" + "---|" * len(TRUE_MARKERS))
    for name, cells in detectors:
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
