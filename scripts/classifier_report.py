"""The expansion classifiers' ablation table on a held-out synthetic cohort, next to a
transparent marker baseline and the generator's oracles, plus how well each measured NCCT
marker recovers the generator's true marker.

    /usr/bin/python3 scripts/classifier_report.py (--truth SYNTHDIR | --labels LABELS.csv) \
        [--test-run RUN_OUTDIR] [--test-run-name NAME] [--model NAME=RUN_OUTDIR ...] \
        [--baseline-train DIR [DIR...]] [--bootstrap 2000] [--seed 1] \
        [--markdown REPORT.md] [--json REPORT.json]

--test-run / --model: `hemexp run` output folders over the cohort of --truth (a `hemexp synth`
folder), one per classifier (e.g. 1:4, 1:2, 1:1). Several cohorts pooled into one table: give
--truth several synth folders and each run as that many folders in the same order (--test-run
RUN_A RUN_B, --model NAME=RUN_A,RUN_B); case ids become FOLDERNAME/case_id (--scored: one cohort
only). A run case is matched to its truth by its case id, else (when no case of the run has
that id) by the name of the folder holding its scan (SYNTHDIR/<case_id>/ct.nii.gz), as
recalibrate_classifier.py and `hemexp prepare` match labels; two cases on one truth row are
never merged: in a synth folder the baseline ct.nii.gz is taken and the others (follow-up scans)
left out with a warning, with --labels it is refused.

--labels: your own patients' case_id,he_label file(s) instead of --truth (UTF-8, or Windows-1252
with a warning; blank labels skipped and counted). Everything that needs only the label is
reported (AUC with CI, Brier, ECE, calibration slope and intercept, decision metrics, the marker
baseline, paired comparisons); the oracle rows and the marker table need the generator's truth
and are left out, with a note. The measured
markers and volumes (for the baseline and the marker table) come from --test-run, or from the
first --model when there is no --test-run.

Rows of the first table:
- each classifier: result.json he.probability, predicted expansion when p >= he.threshold (its
  card's Youden threshold from its validation cohort); a null probability (no hematoma, too
  small) or a failed case counts as missing;
- "marker baseline": logistic regression on the measured markers (the satellites left out, as in
  the default classifier's head) + log(volume_ml) + ln(1 + ivh_volume_ml) (the segmenter's IVH
  label; missing, so the training median, with a segmenter without it), fitted on
  the cases.csv of --baseline-train (prepared cohorts: their markers are measured the same way),
  features standardised, missing values imputed with the training median, L2 1e-3, threshold
  by Youden's J on its own training data;
- "oracle" and "observable oracle": the generator's he_probability and
  he_observable_probability (the best any image can do); their threshold is Youden's J on this
  test cohort itself (optimistic, marked so).
Every row: n, missing, prevalence, AUC with a percentile bootstrap 95% CI (same resampling seed
for every row), accuracy, sensitivity, specificity, PPV, NPV at the threshold, Brier, ECE (10
bins), the ECE a perfectly calibrated model with the same probabilities would show on this many
cases (labels drawn from p: median and 95th percentile; an ECE below that is sampling noise),
calibration slope and intercept (logistic regression of the label on logit(p)), and percentile
bootstrap 95% CI of the slope (the AUC's resamples), so that a target can be told met from within
noise of it.
"Paired comparisons": each classifier's AUC divided by the observable oracle's and minus the marker
baseline's, on the cases both score, with CIs from the same resamples for both (paired).
The cohort is every truth case matched by at least one run; each row's missing = cohort - n.
"""
import argparse
import glob
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_safetensors  # noqa: E402
import train_classifier  # noqa: E402
from train_classifier import (binary_metrics, bootstrap_auc_ci, brier_score, calibration_slope_intercept,  # noqa: E402
                              expected_calibration_error, fit_logistic, parse_float, read_cases_csv, read_csv_rows,
                              roc_auc, rounded, sigmoid, youden_threshold)
from recalibrate_classifier import (input_path_of, read_labels_counted, run_case_ids, run_input,  # noqa: E402
                                    run_working_folders, scan_folder_name)

MARKERS = ["hypodense_fraction", "hu_sd", "hu_cv", "bimodality_coefficient", "satellite_count",
           "satellite_volume_ml", "island_count", "surface_ratio", "mean_hu"]
# The baseline reads what the default classifier's head reads (models/cls_card_template.json
# "features"), so the two differ only by the image: the satellites are left out, because the
# segmenter's post-processing removes most satellites that the training set's true masks have.
# log_ivh_volume_ml: ln(1 + mL) of the segmenter's intraventricular-blood label (missing, and so
# the training median, with a segmenter without that label).
BASELINE_MARKERS = [m for m in MARKERS if not m.startswith("satellite_")]
BASELINE_FEATURES = BASELINE_MARKERS + ["log_volume_ml", "log_ivh_volume_ml"]
VOLUME_COLUMN = BASELINE_FEATURES.index("log_volume_ml")
IVH_COLUMN = BASELINE_FEATURES.index("log_ivh_volume_ml")
TRUE_MARKERS = ["heterogeneity", "swirl", "blend", "black_hole", "island", "irregular_margin", "hypodensity"]
SIGN_PREFIX = "sign:"  # he.signs of a classifier with a sign layer, kept beside the markers of a case
# The markers on the in-plane 2 mm mean (docs/MARKERS.md), measured since 2026-12-04; not in the
# baseline (on validation they did not raise its AUC, docs/CLASSIFIER.md).
REGION_MARKERS = ["low_density_p10", "smoothed_hu_iqr", "hypodense_region_count", "hypodense_region_fraction",
                  "hypodense_region_margin_contact", "hypodense_region_centrality"]
# Where along the radius the low voxels lie (docs/MARKERS.md), measured since 2026-12-05; not in the
# baseline either (the baseline stays what earlier reports compared against).
SHELL_MARKERS = ["inner_low_fraction", "middle_low_fraction", "outer_low_fraction", "inner_hu_offset"]
# Each measured marker beside the true marker it is meant to read; the pairs of the six region
# markers are the ones that separated best on the validation cohorts (procval, seed 6503).
# low_density_p10 falls as the sign grows, so its AUC is below 0.5 by construction.
MARKER_PAIRS = [("hypodense_fraction", "hypodensity"), ("hypodense_fraction", "black_hole"),
                ("bimodality_coefficient", "blend"), ("hu_sd", "heterogeneity"), ("hu_cv", "heterogeneity"),
                ("satellite_count", "island"), ("island_count", "island"), ("surface_ratio", "irregular_margin"),
                ("low_density_p10", "blend"), ("smoothed_hu_iqr", "heterogeneity"),
                ("hypodense_region_count", "hypodensity"), ("hypodense_region_count", "black_hole"),
                ("hypodense_region_fraction", "swirl"), ("hypodense_region_margin_contact", "blend"),
                ("hypodense_region_centrality", "swirl"), ("inner_low_fraction", "swirl"),
                ("outer_low_fraction", "blend")]


def read_truth(folder):
    """(case_id -> labels.csv row of a `hemexp synth` folder, ids with a blank label); rows with
    a blank he_label are skipped and counted, any other label but 0 or 1 refused."""
    path = os.path.join(folder, "labels.csv")
    if not os.path.exists(path):
        raise SystemExit(f"{folder}: no labels.csv (is it a folder written by `hemexp synth`? Your own "
                         "case_id,he_label file goes to --labels)")
    header, rows = read_csv_rows(path)
    if "case_id" not in header or "he_label" not in header:
        raise SystemExit(f"{path}: needs the columns case_id and he_label (has: {', '.join(header) or 'none'})")
    truth, blank = {}, []
    for r in rows:
        value = (r.get("he_label") or "").strip()
        case_id = (r.get("case_id") or "").strip()
        if value == "" or case_id == "":
            blank.append(case_id)
            continue
        if value not in ("0", "1"):
            raise SystemExit(f"{path}: he_label of {case_id} is '{value}', not 0 or 1")
        if case_id in truth:
            raise SystemExit(f"{path}: case_id {case_id} appears twice")
        truth[case_id] = dict(r, case_id=case_id, he_label=value)
    if blank:
        print(f"{path}: {len(blank)} row(s) with a blank he_label or case_id skipped (no label)", file=sys.stderr)
    return truth, set(blank)


def read_labels_file(path):
    """(case_id -> {"case_id", "he_label"}, ids with a blank label) of a clinical labels file
    (case_id,he_label; other columns ignored, none of them is the generator's truth), read as
    recalibrate_classifier.py and `hemexp prepare` read it: blank labels skipped and counted."""
    labels, blank = read_labels_counted(path)
    if blank:
        print(f"{path}: {len(blank)} blank label(s) skipped (no label)", file=sys.stderr)
    return {i: {"case_id": i, "he_label": str(v)} for i, v in labels.items()}, set(blank)


SYNTH_BASELINE = "ct.nii.gz"  # a synth folder's baseline scan (<case_id>/ct.nii.gz), as hemexp eval reads it


def match_cases(entries, truth, where, synth_layout):
    """entries: (case_id, input path as the run read it, payload) -> ({truth id: payload}, unmatched
    case ids). A case matches its truth row by its case id, else by the name of the folder that
    holds its scan when no case of the same entries has that id (recalibrate_classifier.py's and
    `hemexp prepare`'s rule). Two cases matching one truth row are never merged: with a synth
    layout (synth_layout) the one that read <folder>/ct.nii.gz is taken (the baseline, as hemexp
    eval matches) and the others are left out, loudly; otherwise SystemExit."""
    own_ids = {c for c, _, _ in entries}
    groups, unmatched = {}, []
    for case_id, input_path, payload in entries:
        folder = scan_folder_name(input_path) if input_path else ""
        key = case_id if case_id in truth else (folder if folder and folder not in own_ids else "")
        if key not in truth:
            unmatched.append(case_id)
            continue
        groups.setdefault(key, []).append((case_id, input_path, payload))
    out, dropped = {}, []
    for key, group in groups.items():
        if len(group) > 1:
            baseline = [g for g in group if os.path.basename(os.path.normpath(g[1] or "")) == SYNTH_BASELINE]
            if not synth_layout or len(baseline) != 1:
                raise SystemExit(f"{where}: {len(group)} cases match the label of {key} (scans in one folder): "
                                 f"{', '.join(g[0] + ' (' + (g[1] or '?') + ')' for g in group[:4])}; key the labels "
                                 "by the run's case_id column (results.csv) so that each scan has its own")
            dropped += [g[0] for g in group if g is not baseline[0]]
            group = baseline
        out[key] = group[0][2]
    if dropped:
        print(f"warning: {where}: {len(dropped)} case(s) read another scan of a synth case's folder than its "
              f"baseline {SYNTH_BASELINE} (e.g. {', '.join(dropped[:3])}): left out, the truth is the baseline's",
              file=sys.stderr)
    return out, unmatched


def number(value):
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_run(folder, truth, synth_layout=True):
    """truth case_id -> what the run says about it: status, probability, threshold, markers, volume.
    Cases are matched by match_cases (case id, else the scan's folder; never two cases on one)."""
    # The cases of the run's results table, not case folders an earlier run left in it; a run
    # stopped before writing one: every case folder, said (as hemexp eval does).
    if os.path.exists(os.path.join(folder, "results.csv")) or glob.glob(os.path.join(folder, "results-*-of-*.csv")):
        files = [p for p in (os.path.join(folder, "cases", c, "result.json") for c in run_case_ids(folder))
                 if os.path.exists(p)]
    else:
        print(f"warning: {folder} has no results table: every case folder in it is read", file=sys.stderr)
        files = sorted(glob.glob(os.path.join(folder, "cases", "*", "result.json")))
    if not files:
        raise SystemExit(f"{folder}: no cases/*/result.json (is it a `hemexp run` output folder?)")
    working = run_working_folders(folder)
    entries = []
    for path in files:
        with open(path) as f:
            r = json.load(f)
        case_id = r.get("case_id") or os.path.basename(os.path.dirname(path))
        input_path = run_input(working, input_path_of(r.get("input") or {}))
        he = r.get("he") or {}
        hematoma = r.get("hematoma") or {}
        markers = r.get("markers") or {}
        ok = r.get("status") in ("ok", "skipped")
        values = {m: number(markers.get(m, hematoma.get(m))) for m in MARKERS + REGION_MARKERS + SHELL_MARKERS}
        values["volume_ml"] = number(hematoma.get("volume_ml"))
        values["ivh_volume_ml"] = number(((r.get("labels") or {}).get("ivh") or {}).get("volume_ml"))
        for sign, p in (he.get("signs") or {}).items():  # a classifier with a sign layer
            values[SIGN_PREFIX + sign] = number(p)
        entries.append((case_id, input_path, {
            "case_id": case_id, "ok": ok, "probability": number(he.get("probability")) if ok else float("nan"),
            "threshold": number(he.get("threshold")), "markers": values if ok else {k: float("nan") for k in values}}))
    return match_cases(entries, truth, folder, synth_layout)


def score_prepared(model_path, prep_dir, truth=None, synth_layout=True):
    """truth case_id -> {"probability", "threshold"} of a classifier file on ROIs that `hemexp
    prepare --run` exported from a test run's predicted masks, through the PyTorch reference
    (bit-identical to the C++ ViT on the parity fixture) and the card's Platt calibration and
    minimum volume: the C++ tool's score, without segmenting the cohort again per model. Rows are
    matched to truth by match_cases (their case_id, else their scan's folder); without truth they
    are keyed by case_id."""
    import torch
    import hemexp_nets
    tensors, metadata = hemexp_safetensors.load(model_path)
    card = json.loads(metadata["hemexp_model_card"])
    net = hemexp_nets.ViT(card["network"])
    net.load_state_dict({k: v for k, v in tensors.items()}, strict=True)
    net.eval()
    cal = card["calibration"]
    entries = []
    for r in read_cases_csv(prep_dir):
        p = float("nan")
        if number(r["volume_ml"]) >= card.get("min_volume_ml", 0.0):
            roi = hemexp_safetensors.load(os.path.join(prep_dir, r["file"]))[0]["roi"]
            norms = card.get("features", [])
            features = train_classifier.normalise_features(
                [[train_classifier.feature_value(r, n["name"]) for n in norms]], norms)
            with torch.inference_mode():
                logit = float(net(roi.unsqueeze(0).float(), features)[0])
            z = cal["slope"] * logit + cal["intercept"] if cal["method"] == "platt" else logit
            p = 1.0 / (1.0 + math.exp(-z))
        entries.append((r["case_id"], r.get("source") or "", {"probability": p,
                                                           "threshold": card["decision"]["threshold"]}))
    if truth is None:
        return {c: v for c, _, v in entries}
    out, unmatched = match_cases(entries, truth, prep_dir, synth_layout)
    if unmatched:
        print(f"warning: {prep_dir}: {len(unmatched)} prepared case(s) match no label, e.g. {unmatched[:3]}",
              file=sys.stderr)
    return out


def feature_matrix(rows):
    """rows: dicts with the MARKERS, volume_ml and ivh_volume_ml -> (n, len(BASELINE_FEATURES)) with
    NaN for missing."""
    x = np.full((len(rows), len(BASELINE_FEATURES)), np.nan)
    for i, r in enumerate(rows):
        for j, m in enumerate(BASELINE_MARKERS):
            x[i, j] = r[m]
        v = r["volume_ml"]
        x[i, VOLUME_COLUMN] = math.log(v) if v > 0 else np.nan
        ivh = r.get("ivh_volume_ml", float("nan"))
        x[i, IVH_COLUMN] = math.log1p(ivh) if ivh >= 0 else np.nan
    return x


class MarkerBaseline:
    """Standardised logistic regression on the measured markers + log(volume)."""

    def __init__(self, folders):
        rows, labels = [], []
        for folder in folders:
            for r in read_cases_csv(folder):
                v = parse_float(r.get("volume_ml"))
                if not v > 0:
                    continue
                rows.append({**{m: parse_float(r.get(m)) for m in MARKERS}, "volume_ml": v,
                             "ivh_volume_ml": parse_float(r.get("ivh_volume_ml"))})
                labels.append(int(r["he_label"]))
        x = feature_matrix(rows)
        y = np.asarray(labels)
        if len(y) == 0 or y.min() == y.max():
            raise SystemExit("--baseline-train: needs cases of both classes with a volume")
        self.median = np.array([np.nanmedian(c) if np.isfinite(c).any() else 0.0 for c in x.T])
        x = self.impute(x)
        self.mean, self.sd = x.mean(0), x.std(0)
        self.sd[self.sd == 0] = 1.0
        self.w, self.b = fit_logistic((x - self.mean) / self.sd, y, l2=1e-3)
        p_train = self.predict_imputed(x)
        self.threshold = youden_threshold(p_train, y)["threshold"]
        self.n_train, self.prevalence = len(y), float(y.mean())
        self.train_auc = roc_auc(p_train, y)

    def impute(self, x):
        x = x.copy()
        bad = ~np.isfinite(x)
        x[bad] = np.broadcast_to(self.median, x.shape)[bad]
        return x

    def predict_imputed(self, x):
        return sigmoid(((x - self.mean) / self.sd) @ self.w + self.b)

    def predict(self, rows):
        """Probabilities; NaN where there is no hematoma volume (nothing to score)."""
        x = feature_matrix(rows)
        p = self.predict_imputed(self.impute(x))
        p[~np.isfinite(x[:, VOLUME_COLUMN])] = np.nan
        return p

    def describe(self):
        return {"features": BASELINE_FEATURES, "n_train": self.n_train, "train_prevalence": self.prevalence,
                "train_auc": self.train_auc, "threshold": self.threshold,
                "coefficients_standardised": dict(zip(BASELINE_FEATURES, self.w.tolist())), "intercept": self.b,
                "median": dict(zip(BASELINE_FEATURES, self.median.tolist())),
                "mean": dict(zip(BASELINE_FEATURES, self.mean.tolist())),
                "sd": dict(zip(BASELINE_FEATURES, self.sd.tolist()))}


def ece_if_calibrated(p, bins=10, resamples=2000, seed=1):
    """The ECE that a perfectly calibrated model with these probabilities shows on this many cases:
    labels drawn as Bernoulli(p), resamples times; the median and the 95th percentile. An observed ECE
    below that percentile is what sampling noise alone gives at this n."""
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = [expected_calibration_error(p, (rng.random(len(p)) < p).astype(np.float64), bins)
             for _ in range(resamples)]
    return float(np.median(draws)), float(np.percentile(draws, 95))


def logistic_1d(z, y, ridge=1e-6, iterations=200):
    """Newton-Raphson fit of y ~ sigmoid(w z + b) with a small ridge on w, each step halved until the
    penalised log-likelihood does not fall (as hemexp's calibration_fit: a full step from (1, 0)
    overshoots on a small cohort with a confident miss and ran off to slopes of 1e5): the
    calibration slope and intercept, fast enough for a bootstrap."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(z)

    def objective(w, b):  # mean log-likelihood minus the ridge, without overflow
        t = np.where(y == 1, w * z + b, -(w * z + b))
        return -np.mean(np.logaddexp(0.0, -t)) - ridge * w * w

    w, b = 1.0, 0.0
    current = objective(w, b)
    for _ in range(iterations):
        with np.errstate(over="ignore"):  # exp(-z) of a far-off case: q is 0 there, as it should be
            q = 1.0 / (1.0 + np.exp(-(w * z + b)))
        r = q * (1.0 - q)
        g = np.array([np.dot(q - y, z) / n + 2 * ridge * w, np.mean(q - y)])
        h = np.array([[np.dot(r, z * z) / n + 2 * ridge, np.dot(r, z) / n], [np.dot(r, z) / n, np.mean(r)]])
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        t = 1.0
        nxt = objective(w - step[0], b - step[1])
        while not nxt >= current and t > 1e-12:
            t /= 2.0
            nxt = objective(w - t * step[0], b - t * step[1])
        if not nxt >= current:
            break
        w, b, current = w - t * step[0], b - t * step[1], nxt
        if np.abs(t * step).max() < 1e-10:
            break
    return float(w), float(b)


def separated(z, y):
    """True when z separates the classes (every label-1 value at or above every label-0 value, or at
    or below): the logistic fit has no finite maximum, as in hemexp's calibration_fit."""
    z1, z0 = z[y == 1], z[y == 0]
    return z0.max() <= z1.min() or z1.max() <= z0.min()


def bootstrap_slope_ci(p, y, resamples=2000, seed=1, level=0.95):
    """Percentile bootstrap CI (whole-case resampling, the AUC's resampling scheme) of the calibration
    slope: {"calibration_slope_ci95": [lo, hi]}. (None for the ECE: resampling adds noise to every
    bin, so its bootstrap distribution sits above the observed ECE; ece_if_calibrated answers the
    question instead.) Resamples whose logits separate the classes have no slope: they are left
    out, and when more than 2.5% are (a small cohort), the interval is not given: the slopes left
    would be a biased choice."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.int64)
    nan2 = {"calibration_slope_ci95": [float("nan")] * 2}
    if len(p) == 0 or y.min() == y.max():
        return nan2
    z = train_classifier.probability_logit(p)
    rng = np.random.RandomState(seed)
    slopes, both = [], 0
    for _ in range(resamples):
        idx = rng.randint(0, len(p), len(p))
        if y[idx].min() != y[idx].max():
            both += 1
            if not separated(z[idx], y[idx]):
                slopes.append(logistic_1d(z[idx], y[idx])[0])
    if not slopes or len(slopes) < 0.975 * both:
        return nan2
    tail = (1.0 - level) / 2.0 * 100.0
    return {"calibration_slope_ci95": [float(np.percentile(slopes, tail)), float(np.percentile(slopes, 100 - tail))]}


def paired_auc(p_a, p_b, y, resamples=2000, seed=1, level=0.95):
    """AUC(a) / AUC(b) and AUC(a) - AUC(b) on the cases both score, with percentile bootstrap CIs
    from the same resamples (paired: each resample scores both on the same cases)."""
    p_a, p_b, y = (np.asarray(v, dtype=np.float64) for v in (p_a, p_b, y))
    have = np.isfinite(p_a) & np.isfinite(p_b)
    p_a, p_b, y = p_a[have], p_b[have], y[have].astype(np.int64)
    if len(y) == 0 or y.min() == y.max():
        return None
    a, b = roc_auc(p_a, y), roc_auc(p_b, y)
    rng = np.random.RandomState(seed)
    ratios, diffs = [], []
    for _ in range(resamples):
        idx = rng.randint(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        ra, rb = roc_auc(p_a[idx], y[idx]), roc_auc(p_b[idx], y[idx])
        if rb > 0:  # a small resample can give the reference AUC 0: no ratio, still a difference
            ratios.append(ra / rb)
        diffs.append(ra - rb)
    if len(ratios) < 0.975 * len(diffs):  # the ratios left would be a biased choice
        ratios = []
    tail = (1.0 - level) / 2.0 * 100.0
    return {"n": int(have.sum()), "auc": a, "auc_reference": b,
            "ratio": a / b if b > 0 else float("nan"),
            "ratio_ci95": [float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))]
            if ratios else [float("nan")] * 2,
            "difference": a - b,
            "difference_ci95": [float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))],
            "p_difference_le_0": float(np.mean(np.asarray(diffs) <= 0))}


def evaluate(name, ids, p, y, threshold, threshold_from, resamples, seed):
    """A row of the first table over the cohort ids: p NaN = missing; threshold scalar or per case."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), p.shape)
    have = np.isfinite(p) & np.isfinite(thr)
    p, y, thr = p[have], y[have], thr[have]
    auc = roc_auc(p, y)
    lo, hi = bootstrap_auc_ci(p, y, resamples, seed)
    slope, intercept = calibration_slope_intercept(p, y)
    if len(y) and 0 < y.sum() < len(y) and separated(train_classifier.probability_logit(p), y):
        slope, intercept = float("nan"), float("nan")  # no finite fit (the ridge's number is no slope), as hemexp eval
    distinct = np.unique(thr)
    row = {"name": name, "n": int(have.sum()), "missing": int((~have).sum()),
           "prevalence": float(y.mean()) if len(y) else float("nan"), "auc": auc, "auc_ci95": [lo, hi],
           "threshold": float(distinct[0]) if len(distinct) == 1 else "varies per case",
           "threshold_from": threshold_from}
    row.update(binary_metrics(p, y, thr))
    null_median, null_p95 = ece_if_calibrated(p, 10, resamples, seed)
    row.update({"brier": brier_score(p, y), "ece": expected_calibration_error(p, y, 10),
                "ece_if_calibrated_median": null_median, "ece_if_calibrated_p95": null_p95,
                "calibration_slope": slope, "calibration_intercept": intercept,
                **bootstrap_slope_ci(p, y, resamples, seed),
                "missing_case_ids": [i for i, h in zip(ids, have) if not h][:50]})
    return row


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def markdown(report):
    synth = report.get("truth_kind", "hemexp synth") == "hemexp synth"
    out = [f"# Expansion classifiers on {report['truth']}", "",
           f"Cohort: {report['cohort']['n']} {'synthetic' if synth else 'labelled'} cases matched by the runs "
           f"({report['cohort']['labels_csv']} labelled in {'labels.csv' if synth else 'the labels file(s)'}, "
           f"{report['cohort']['unmatched_truth']} unmatched), "
           f"prevalence {fmt(report['cohort']['prevalence'])}. AUC 95% CI: percentile bootstrap, "
           f"{report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}.", "",
           "| model | n | missing | prevalence | AUC [95% CI] | threshold | accuracy | sensitivity | specificity "
           "| PPV | NPV | Brier | ECE | ECE if calibrated (median, 95th pct) | cal. slope [95% CI] | cal. intercept |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in report["models"]:
        thr = fmt(r["threshold"]) + ("*" if r["threshold_from"].startswith("Youden on this") else "")
        out.append(f"| {r['name']} | {r['n']} | {r['missing']} | {fmt(r['prevalence'])} | {fmt(r['auc'])} "
                   f"[{fmt(r['auc_ci95'][0])}, {fmt(r['auc_ci95'][1])}] | {thr} | {fmt(r['accuracy'])} "
                   f"| {fmt(r['sensitivity'])} | {fmt(r['specificity'])} | {fmt(r['ppv'])} | {fmt(r['npv'])} "
                   f"| {fmt(r['brier'])} | {fmt(r['ece'])} | "
                   f"{fmt(r['ece_if_calibrated_median'])}, {fmt(r['ece_if_calibrated_p95'])} "
                   f"| {fmt(r['calibration_slope'], 2)} [{fmt(r['calibration_slope_ci95'][0], 2)}, "
                   f"{fmt(r['calibration_slope_ci95'][1], 2)}] | {fmt(r['calibration_intercept'], 2)} |")
    out += ["", "Thresholds: classifiers from their cards (Youden's J on their validation cohorts); the marker "
            "baseline by Youden's J on its training data; * Youden's J on this test cohort itself (optimistic).", ""]
    out += [n for note in report.get("notes") or [] for n in (note, "")]
    if report.get("paired"):
        out += ["## Paired comparisons (same cases, same bootstrap resamples)", "",
                "| model | against | n | AUC / AUC [95% CI] | AUC - AUC [95% CI] | P(difference <= 0) |",
                "|---|---|---:|---|---|---:|"]
        for r in report["paired"]:
            out.append(f"| {r['model']} | {r['against']} | {r['n']} | {fmt(r['ratio'])} [{fmt(r['ratio_ci95'][0])}, "
                       f"{fmt(r['ratio_ci95'][1])}] | {fmt(r['difference'])} [{fmt(r['difference_ci95'][0])}, "
                       f"{fmt(r['difference_ci95'][1])}] | {fmt(r['p_difference_le_0'])} |")
        out.append("")
    if report.get("markers"):
        out += [f"## Measured markers against the generator's true markers ({report['markers']['run']})", "",
                "| measured marker | true marker | n | true positives | AUC [95% CI] |", "|---|---|---:|---:|---|"]
        for r in report["markers"]["pairs"]:
            out.append(f"| {r['measured']} | {r['true']} | {r['n']} | {r['n_true']} "
                       f"| {'constant' if r.get('constant') else fmt(r['auc'])} "
                       f"[{fmt(r['auc_ci95'][0])}, {fmt(r['auc_ci95'][1])}] |")
        out += ["", "AUC < 0.5: the measured marker runs against the truth. Every measured marker against every "
                "true marker is in the JSON (markers.all).", ""]
        if report["markers"].get("signs"):
            out += [f"## The classifier's sign layer against the generator's true signs ({report['markers']['run']}: "
                    "he.signs)", "", "| sign | n | true positives | AUC [95% CI] |", "|---|---:|---:|---|"]
            for r in report["markers"]["signs"]:
                out.append(f"| {r['true']} | {r['n']} | {r['n_true']} | {fmt(r['auc'])} "
                           f"[{fmt(r['auc_ci95'][0])}, {fmt(r['auc_ci95'][1])}] |")
            out.append("")
    return "\n".join(out)


def marker_auc(name_measured, name_true, ids, run, truth, resamples, seed):
    x = np.array([run[i]["markers"].get(name_measured, np.nan) if i in run else np.nan for i in ids], dtype=float)
    y = np.array([number(truth[i].get(name_true)) for i in ids])
    have = np.isfinite(x) & np.isfinite(y)
    x, y = x[have], y[have].astype(np.int64)
    if len(x) and x.min() == x.max() and 0 < y.sum() < len(y):  # one value everywhere: it tells nothing, not "AUC 0.5"
        return {"measured": name_measured, "true": name_true, "n": int(have.sum()), "n_true": int(y.sum()),
                "auc": float("nan"), "constant": True, "auc_ci95": [float("nan")] * 2}
    lo, hi = bootstrap_auc_ci(x, y, resamples, seed)
    return {"measured": name_measured, "true": name_true, "n": int(have.sum()), "n_true": int(y.sum()),
            "auc": roc_auc(x, y), "auc_ci95": [lo, hi]}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    truth = ap.add_mutually_exclusive_group(required=True)
    truth.add_argument("--truth", nargs="+", metavar="SYNTHDIR",
                       help="`hemexp synth` folder with labels.csv (several: their cases pooled)")
    truth.add_argument("--labels", nargs="+", metavar="CSV",
                       help="your own case_id,he_label file instead (keyed by the run's case ids, or the name of "
                            "the folder holding each scan; blank labels skipped); several: their cases pooled. No "
                            "generator truth: no oracle rows, no marker table")
    ap.add_argument("--test-run", default=None, nargs="+", metavar="RUN_OUTDIR",
                    help="`hemexp run` output folder (one per --truth folder or --labels file, same order)")
    ap.add_argument("--test-run-name", default="classifier", help="its row's name")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN_OUTDIR[,RUN_OUTDIR...]",
                    help="one classifier's run over the same cohort(s) (repeatable)")
    ap.add_argument("--scored", action="append", default=[], metavar="NAME=MODEL.safetensors:PREPDIR",
                    help="a classifier file scored on ROIs that `hemexp prepare --run` exported from the test run")
    ap.add_argument("--baseline-train", nargs="+", default=[], metavar="DIR",
                    help="prepared cohorts (cases.csv) to fit the marker baseline on")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the AUC CIs")
    ap.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    ap.add_argument("--markdown", default=None, metavar="FILE", help="also write the Markdown report here")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the full report as JSON")
    args = ap.parse_args(argv)
    runs = []  # (name, [run folder per --truth folder])
    if args.test_run:
        runs.append((args.test_run_name, args.test_run))
    for spec in args.model:
        name, sep, folders = spec.partition("=")
        if not sep or not name or not folders:
            ap.error(f"--model wants NAME=RUN_OUTDIR, not '{spec}'")
        runs.append((name, folders.split(",")))
    if not runs:
        ap.error("give --test-run and/or --model")
    if len({n for n, _ in runs}) != len(runs):
        ap.error("model names must be unique")
    sources = args.truth or args.labels
    what = "--truth folder(s)" if args.truth else "--labels file(s)"
    for name, folders in runs:
        if len(folders) != len(sources):
            ap.error(f"{name}: {len(folders)} run folder(s) for {len(sources)} {what}")
    if args.scored and len(sources) > 1:
        ap.error(f"--scored takes one cohort (one {what[:-3]})")
    return args, runs


def cohort_prefixes(folders):
    """The case-id prefix of each pooled cohort: none for one cohort, else its folder name (its
    position when two folders share a name)."""
    if len(folders) == 1:
        return [""]
    names = [os.path.basename(os.path.normpath(f)) for f in folders]
    return [f"{n}/" if names.count(n) == 1 else f"{k}/" for k, n in enumerate(names)]


def main(argv=None):
    args, runs = parse_args(sys.argv[1:] if argv is None else argv)
    synth = args.truth is not None  # the generator's truth (oracles, true markers) or your own labels
    sources = args.truth if synth else args.labels
    prefixes = cohort_prefixes(sources)
    read = [read_truth(folder) for folder in sources] if synth else [read_labels_file(f) for f in sources]
    truths, blanks = [t for t, _ in read], [b for _, b in read]
    label_files = [os.path.join(f, "labels.csv") for f in sources] if synth else sources
    truth = {pre + i: row for pre, t in zip(prefixes, truths) for i, row in t.items()}
    loaded = []
    for name, folders in runs:
        cases = {}
        for pre, t, blank, label_file, folder in zip(prefixes, truths, blanks, label_files, folders):
            found, unmatched = read_run(folder, t, synth)
            unmatched = [c for c in unmatched if c not in blank]  # counted already (blank labels)
            if unmatched:
                print(f"warning: {folder}: {len(unmatched)} case(s) not in {label_file}, e.g. "
                      f"{unmatched[:3]}" + ("" if synth else ": key the labels by the run's case_id column"),
                      file=sys.stderr)
            cases.update({pre + i: c for i, c in found.items()})
        loaded.append((name, folders, cases))
    ids = sorted(set().union(*(c.keys() for _, _, c in loaded)))
    if not ids:
        raise SystemExit("no run case matches " + ("the truth folder" if synth else "a label (key the labels by the "
                                                   "run's case_id column)"))
    y = np.array([int(truth[i]["he_label"]) for i in ids])
    rs, seed = args.bootstrap, args.seed

    rows, classifiers, references = [], {}, {}
    for name, folders, cases in loaded:
        p = [cases[i]["probability"] if i in cases else np.nan for i in ids]
        thr = [cases[i]["threshold"] if i in cases else np.nan for i in ids]
        row = evaluate(name, ids, p, y, thr, "card (Youden on its validation cohort)", rs, seed)
        row["run"] = ",".join(os.path.abspath(f) for f in folders)
        rows.append(row)
        classifiers[name] = p
    for spec in args.scored:
        name, rest = spec.split("=", 1)
        model_path, prep_dir = rest.rsplit(":", 1)
        scores = score_prepared(model_path, prep_dir, truths[0], synth)
        p = [scores[i]["probability"] if i in scores else np.nan for i in ids]
        thr = [scores[i]["threshold"] if i in scores else np.nan for i in ids]
        row = evaluate(name, ids, p, y, thr, "card (Youden on its validation cohort)", rs, seed)
        row["run"] = f"{os.path.abspath(model_path)} on {os.path.abspath(prep_dir)} (PyTorch reference)"
        rows.append(row)
        classifiers[name] = p
    marker_name, marker_folders, marker_run = loaded[0]
    baseline_info = None
    if args.baseline_train:
        baseline = MarkerBaseline(args.baseline_train)
        measured = [marker_run[i]["markers"] if i in marker_run else {**{m: np.nan for m in MARKERS},
                                                                      "volume_ml": np.nan} for i in ids]
        p = baseline.predict(measured)
        rows.append(evaluate("marker baseline", ids, p, y, baseline.threshold,
                             "Youden on its training data", rs, seed))
        references["marker baseline"] = p
        baseline_info = {**baseline.describe(), "train": [os.path.abspath(d) for d in args.baseline_train],
                         "markers_from_run": ",".join(os.path.abspath(f) for f in marker_folders)}
    notes = []
    for name, column in (("oracle", "he_probability"), ("observable oracle", "he_observable_probability")):
        p = np.array([number(truth[i].get(column)) for i in ids])
        if not np.isfinite(p).any():
            if name == "oracle":
                notes.append("No oracle rows: " + ("the labels file(s) are your own labels, without the generator's "
                                                   "he_probability and he_observable_probability" if not synth else
                                                   "labels.csv has no he_probability (not written by hemexp synth?)")
                             + "; every other row needs only the labels.")
            continue
        have = np.isfinite(p)
        t = youden_threshold(p[have], y[have])["threshold"] if len(set(y[have])) == 2 else np.nan
        rows.append(evaluate(name, ids, p, y, t, "Youden on this test cohort", rs, seed))
        references[name] = p
    # each classifier against the observable oracle (the target is a ratio of the two AUCs) and the
    # marker baseline (is the image worth anything?), and the first (the test run) against each
    # other classifier (is the new model better than the old one?), paired on the cases both score
    paired = []
    first = next(iter(classifiers), None)
    for name, p in classifiers.items():
        others = [(a, references[a]) for a in ("observable oracle", "marker baseline") if a in references]
        if name == first:
            others += [(a, q) for a, q in classifiers.items() if a != first]
        for against, q in others:
            r = paired_auc(p, q, y, rs, seed)
            if r is not None:
                paired.append({"model": name, "against": against, **r})

    markers = None
    present_true = [t for t in TRUE_MARKERS if any(t in truth[i] for i in ids)] if synth else []
    if not present_true:
        notes.append("No marker table: it needs the generator's true markers (`hemexp synth` labels.csv).")
    if present_true:
        pairs = [marker_auc(m, t, ids, marker_run, truth, rs, seed) for m, t in MARKER_PAIRS if t in present_true]
        every = [marker_auc(m, t, ids, marker_run, truth, rs, seed) for m in MARKERS + REGION_MARKERS + SHELL_MARKERS
                 for t in present_true]
        signs = sorted({k[len(SIGN_PREFIX):] for i in ids if i in marker_run for k in marker_run[i]["markers"]
                        if k.startswith(SIGN_PREFIX)})
        detected = [marker_auc(SIGN_PREFIX + t, t, ids, marker_run, truth, rs, seed) for t in present_true if t in signs]
        markers = {"run": marker_name, "pairs": pairs, "all": every, "signs": detected}
    report = rounded({"truth": " + ".join(os.path.abspath(f) for f in sources),
                      "truth_kind": "hemexp synth" if synth else "labels file",
                      "notes": notes,
                      "cohort": {"n": len(ids), "labels_csv": len(truth), "unmatched_truth": len(truth) - len(ids),
                                 "prevalence": float(y.mean())},
                      "bootstrap": {"resamples": rs, "seed": seed, "method": "percentile"},
                      "models": rows, "paired": paired, "baseline": baseline_info, "markers": markers})
    text = markdown(report)
    print(text)
    if args.markdown:
        with open(args.markdown + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.markdown + ".tmp", args.markdown)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
        os.replace(args.json + ".tmp", args.json)
    return report


if __name__ == "__main__":
    main()
