"""Trains hemexp's hematoma-expansion classifier (ViT, PyTorch reference) on ROIs prepared by
`hemexp prepare` with a classification card, calibrates it on a validation cohort, and exports
weights + model card to safetensors for the C++ tool.

    /usr/bin/python3 scripts/train_classifier.py --train DIR [DIR...] --val DIR [DIR...] \
        --card TEMPLATE.json -o MODEL.safetensors [--name NAME] \
        [--topup DIR [DIR...] (--topup-count N | --target-ratio 1:2)] [--epochs 40] [--batch-size 16]
        [--lr 3e-4] [--weight-decay 0.05] [--schedule cosine|poly] [--warmup-epochs 1]
        [--seed 1] [--threads 2] [--log FILE]

The card is the template's (network, roi, features, description without its "Template: ..."
note) with the name --name (default: the output file's name without .safetensors, never the
template's) and `trained_on` from what the folders' cases.csv record (`hemexp prepare`'s
mask_source, and whether the labels carry the generator's truth): "synthetic data from hemexp
synth ..." only when every training, top-up and validation case is synthetic; your own labelled
cases (predicted masks, a labels file) are named as such (training.data_provenance per folder).

Each DIR holds `cases.csv` (case_id, file, he_label, volume_ml, markers...; RFC 4180, empty =
missing) and per case a safetensors file with `roi` (float32 (C, D, H, W): CT windows in [0, 1]
and the hematoma mask, channels as the metadata's `roi_recipe` names them). The ROIs are
hemexp's own (C++) ROIs: nothing about them is recomputed here.

Data mix (the npj Digit Med 2025 ablation: real 1:4 vs topped up to 1:2 / 1:1): the --train
cohorts at their natural prevalence, plus the first N expansion cases (he_label 1, in cases.csv
order) of --topup; --target-ratio HE:NHE computes N from the base set's class counts. With several
--topup folders (e.g. procedural heads and your own hemorrhage-free scans), N is shared among them
in proportion to the expansion cases each holds (largest remainder), so the top-up keeps their mix. Cases
below the card's min_volume_ml (the C++ tool does not score them) are left out everywhere.

Training: BCE with logits, no class weights (the ablation is about the data mix); AdamW, a
linear warmup then cosine (or poly 0.9) decay per step; gradient-norm clip 1. Augmentation, on
CPU tensors, from one generator seeded by --seed: left-right flip (x), integer shifts (zero
padding), CT-window intensity scale/offset jitter (clipped to [0, 1]), and mask perturbation
(1-voxel in-plane dilation or erosion by max-pooling) so the network tolerates the
segmenter's errors. With a fixed --threads the run is deterministic given --seed.

Scalar features (optional): when the card template has "features": [names] (log_volume_ml,
mean_hu, or measured-marker columns of cases.csv), the network's head also reads them
(network.num_features); each is standardised with the training set's mean and SD (written to
the card as [{"name", "mean", "sd"}], the C++ tool applies the same) and a missing value is 0.
A feature with no value in any training case (e.g. log_ivh_volume_ml from a run with the two-class
segmenter) is refused, unless the card lists it in "features_may_be_absent".

Head from the transparent baseline (--head-init logistic [--freeze-feature-weights]): the head's
feature weights and bias start as a logistic regression of the training labels on the
standardised features, its class-token weights at 0, so the network starts as the marker
baseline; with --freeze-feature-weights those weights stay fixed (no gradient, no decay) and the
image part can only add to the regression. The fit is written to the card
(training.head_init_logistic). The features include log_ivh_volume_ml (ln(1 + mL) of the
segmenter's intraventricular-blood label) when the card names it.

Auxiliary marker targets (--aux-weight W > 0): a training-only linear head on the class token
predicts the generator's true NCCT markers (cases.csv true_<marker> columns, written by
`hemexp prepare` from synth labels); W times their mean BCE is added to the loss, so the image
part learns the signs themselves rather than only the noisy expansion label. Rows without the
columns (a real cohort) do not contribute to it. The auxiliary head is not exported.

Validation (--val, one or more cohorts pooled: natural prevalence, ROIs from hemexp's predicted masks;
never trained on):
AUC every epoch; the best epoch (AUC, ties: lower loss) is kept, or the last with --checkpoint last. Then Platt calibration
p = sigmoid(a logit + b) fitted by maximum likelihood (a > 0), the decision threshold by
Youden's J on the calibrated probabilities, and risk categories low (< 0.10), intermediate
(< 0.30), high with their observed expansion rates. All of it is in-sample on --val: use
scripts/classifier_report.py on a held-out `hemexp run` for honest numbers.

The metric functions here (AUC, Brier, ECE, logistic fits, Youden, bootstrap) are the ones
scripts/classifier_report.py uses: one of each.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402

RISK_BOUNDS = (("low", 0.10), ("intermediate", 0.30), ("high", None))
_log_file = None


def log(*args):
    line = " ".join([time.strftime("%H:%M:%S")] + [str(a) for a in args])
    print(line, flush=True)
    if _log_file is not None:
        _log_file.write(line + "\n")
        _log_file.flush()


# ----------------------------------------------------------------------------- metrics

def roc_auc(scores, labels):
    """Mann-Whitney AUC, ties count one half (mid-ranks, as src/core/metrics.cpp); NaN with one class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ss = np.sort(s)
    ranks = (np.searchsorted(ss, s, "left") + np.searchsorted(ss, s, "right") + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(scores, labels, resamples=2000, seed=1, level=0.95):
    """Percentile bootstrap CI of the AUC (whole-case resampling with replacement; resamples with
    one class are skipped). Returns (low, high), NaN when the AUC is undefined."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if len(s) == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    rng = np.random.RandomState(seed)
    aucs = []
    for _ in range(resamples):
        idx = rng.randint(0, len(s), len(s))
        a = roc_auc(s[idx], y[idx])
        if not math.isnan(a):
            aucs.append(a)
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(aucs, tail)), float(np.percentile(aucs, 100.0 - tail))


def brier_score(p, y):
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")


def expected_calibration_error(p, y, bins=10):
    """Equal-width bins on [0, 1], p = 1 in the last bin (as src/core/metrics.cpp)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    b = np.minimum(bins - 1, (np.maximum(p, 0.0) * bins).astype(np.int64))
    ece = 0.0
    for k in range(bins):
        sel = b == k
        if sel.any():
            ece += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def fit_logistic(features, labels, l2=0.0):
    """Maximum-likelihood logistic regression y ~ sigmoid(features @ w + b), L-BFGS in float64 on
    standardised features (well conditioned whatever the scale of the logits), mapped back to
    the raw features. l2 penalises the standardised w (not b) on the mean log-loss; a small l2
    keeps w finite on separable data. Returns (w as a numpy array, b)."""
    raw = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    mean, sd = raw.mean(0), raw.std(0)
    sd[~(sd > 0)] = 1.0
    x = torch.as_tensor((raw - mean) / sd)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    prevalence = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if len(y) else 0.5
    b = torch.tensor([math.log(prevalence / (1 - prevalence))], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=1000, max_eval=2000, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss
    for _ in range(5):  # restarts refresh L-BFGS's history when one run stops early
        before = float(closure())
        opt.step(closure)
        if before - float(closure()) < 1e-13:
            break
    ws = w.detach().numpy() / sd
    return ws.copy(), float(b.detach()) - float((ws * mean).sum())


PLATT_MIN_SLOPE = 1e-6


def fit_logistic_out_of_fold(x, y, folds, l2):
    """fit_logistic on every row, and each row's logit from the fit without its fold (fold = row
    index mod folds). Returns (w, b, out-of-fold logits)."""
    w, b = fit_logistic(x, y, l2)
    fold = np.arange(len(x)) % folds
    oof = np.zeros(len(x))
    for f in range(folds):
        wf, bf = fit_logistic(x[fold != f], y[fold != f], l2)
        oof[fold == f] = x[fold == f] @ wf + bf
    return w, b, oof


def platt_fit(logits, labels):
    """Platt scaling p = sigmoid(a logit + b), a > 0, by maximum likelihood. A tiny ridge (1e-5 on
    the slope per standard deviation of the logits) keeps a finite when the validation set is
    separable, and moves it by well under 1% otherwise. When the likelihood is best with a <= 0
    (the logits rank validation cases no better than chance), the constrained maximum is on the
    boundary: a = PLATT_MIN_SLOPE and b = logit(prevalence), i.e. every case gets the prevalence."""
    w, b = fit_logistic(np.asarray(logits, dtype=np.float64)[:, None], labels, l2=1e-5)
    if w[0] > PLATT_MIN_SLOPE:
        return float(w[0]), b
    prevalence = float(np.mean(labels))
    return PLATT_MIN_SLOPE, math.log(prevalence / (1.0 - prevalence)) - PLATT_MIN_SLOPE * float(np.mean(logits))


def probability_logit(p, eps=1e-7):
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def calibration_slope_intercept(p, y):
    """Logistic regression of the label on logit(p): (1, 0) for a calibrated p (a 1e-6 ridge so a
    separable set gives a large finite number instead of diverging)."""
    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    w, b = fit_logistic(probability_logit(p)[:, None], y, l2=1e-6)
    return float(w[0]), b


def cut_below(values, i):
    """The cut for "positive when p >= values[i]" (values distinct, descending): halfway between
    values[i] and the next lower value (half of values[i] when none), so no case sits on it."""
    lower = values[i + 1] if i + 1 < len(values) else values[i] / 2.0
    return float((values[i] + lower) / 2.0)


def youden_threshold(p, y):
    """The cut maximising Youden's J = sensitivity + specificity - 1 for "positive when p >= t".
    Candidates are the distinct values of p; among equal J the highest cut wins (fewer false
    positives). The returned threshold lies halfway between the chosen value and the next lower
    distinct value (half the value when none), so no case sits exactly on it."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Youden's J needs both classes")
    values = np.unique(p)[::-1]  # descending
    best = None
    for i, v in enumerate(values):
        pred = p >= v
        sens = (pred & y).sum() / n_pos
        spec = (~pred & ~y).sum() / n_neg
        j = sens + spec - 1.0
        if best is None or j > best[0] + 1e-12:
            best = (j, cut_below(values, i), float(sens), float(spec))
    return {"threshold": best[1], "sensitivity": best[2], "specificity": best[3], "youden_j": best[0]}


def binary_metrics(p, y, threshold):
    """Accuracy, sensitivity, specificity, PPV, NPV for "positive when p >= threshold" (threshold a
    number or one per case). NaN where a denominator is 0."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    pred = p >= np.asarray(threshold, dtype=np.float64)
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())

    def ratio(a, b):
        return a / b if b else float("nan")
    return {"accuracy": ratio(tp + tn, len(y)), "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def risk_categories(p, y, bounds=RISK_BOUNDS):
    """The card's risk_categories with the observed expansion rate and count in each."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out, lower = [], -np.inf
    for name, below in bounds:
        sel = (p >= lower) & (p < below if below is not None else np.ones_like(p, dtype=bool))
        entry = {"name": name}
        if below is not None:
            entry["below"] = below
        entry["observed_rate"] = rounded(float(y[sel].mean())) if sel.any() else None
        entry["n"] = int(sel.sum())
        out.append(entry)
        lower = below if below is not None else lower
    return out


def probability_summary(p, y):
    """Brier, ECE (10 bins), calibration slope and intercept of probabilities p."""
    slope, intercept = calibration_slope_intercept(p, y)
    return {"brier": brier_score(p, y), "ece": expected_calibration_error(p, y, 10),
            "calibration_slope": slope, "calibration_intercept": intercept}


def rounded(x, digits=6):
    """JSON-friendly: floats to `digits` significant digits, NaN/inf -> None, recursing into dicts
    and lists."""
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# ----------------------------------------------------------------------------- data

def parse_float(text):
    """A cases.csv field: empty (or unparsable) = NaN."""
    try:
        return float(text) if text is not None and text.strip() != "" else float("nan")
    except ValueError:
        return float("nan")


def read_csv_text(path):
    """A CSV file's text as a spreadsheet may have saved it: UTF-8 (a byte-order mark dropped), else
    Windows-1252 (Excel's "CSV" on Windows; Latin-1 letters are the same bytes), said on stderr;
    SystemExit when it is neither. Line endings are kept for the csv module (CRLF is fine)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf8_error = e
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise SystemExit(f"{path}: neither UTF-8 nor Windows-1252 text (byte {utf8_error.start}): save it as "
                         "\"CSV UTF-8\"")
    print(f"warning: {path} is not UTF-8 (byte 0x{data[utf8_error.start]:02x} at {utf8_error.start}): read as "
          "Windows-1252 (Excel's CSV on Windows); save it as \"CSV UTF-8\" to be sure of its accents", file=sys.stderr)
    return text


def read_csv_rows(path):
    """(header, rows as dicts of strings) of a CSV file read by read_csv_text (csv module: RFC 4180
    quoting, CRLF or LF)."""
    reader = csv.DictReader(io.StringIO(read_csv_text(path), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def read_cases_csv(folder):
    """Rows of DIR/cases.csv (csv module: RFC 4180 quoting; a byte-order mark and CRLF, as a
    spreadsheet re-saves it, are fine) as dicts of strings."""
    path = os.path.join(folder, "cases.csv")
    if not os.path.exists(path):
        raise SystemExit(f"{folder}: no cases.csv (is it a folder written by `hemexp prepare`?)")
    header, rows = read_csv_rows(path)
    for col in ("case_id", "file", "he_label"):
        if col not in header:
            raise SystemExit(f"{path}: no column {col} (columns: {', '.join(header) or 'none'})")
    return rows


def he_label(row, path):
    text = (row.get("he_label") or "").strip()
    if text not in ("0", "1"):
        raise SystemExit(f"{path}: case {row.get('case_id')}: he_label must be 0 or 1, not '{text}'")
    return int(text)


def eligible(row, min_volume_ml):
    """The C++ tool scores no hematoma below min_volume_ml: such cases are not trained on either.
    A missing volume_ml keeps the case."""
    v = parse_float(row.get("volume_ml"))
    return not (v < min_volume_ml)


def channel_names(recipe):
    return [c.get("name") for c in recipe.get("channels", [])]


AUX_MARKERS = ("heterogeneity", "swirl", "blend", "black_hole", "island", "irregular_margin", "hypodensity")
FEATURE_NAMES = ("log_volume_ml", "mean_hu", "log_ivh_volume_ml", "hypodense_fraction", "hu_sd", "hu_cv", "bimodality_coefficient",
                 "satellite_count", "satellite_volume_ml", "island_count", "surface_ratio", "low_density_p10",
                 "smoothed_hu_iqr", "hypodense_region_count", "hypodense_region_fraction",
                 "hypodense_region_margin_contact", "hypodense_region_centrality", "inner_low_fraction",
                 "middle_low_fraction", "outer_low_fraction", "inner_hu_offset")  # ClassifierRecipe::feature_names()
SIGN_FOLDS = 5  # out-of-fold sign probabilities for the head's logistic start


def feature_value(row, name):
    """A feature of one cases.csv row, as the C++ ClassifierRecipe::feature_vector reads it (NaN
    when missing)."""
    if name == "log_volume_ml":
        v = parse_float(row.get("volume_ml"))
        return math.log(v) if v > 0 else float("nan")
    if name == "log_ivh_volume_ml":  # ln(1 + mL) of the segmenter's IVH label; NaN when it has none
        v = parse_float(row.get("ivh_volume_ml"))
        return math.log1p(v) if v >= 0 else float("nan")
    return parse_float(row.get(name))


def normalise_features(raw, norms):
    """(N, F) raw -> standardised float32 tensor, NaN -> 0, as the C++ tool does."""
    if not norms:
        return None
    mean = np.array([n["mean"] for n in norms])
    sd = np.array([n["sd"] for n in norms])
    z = (np.asarray(raw, dtype=np.float64) - mean) / sd
    return torch.as_tensor(np.where(np.isfinite(z), z, 0.0), dtype=torch.float32)


def feature_norms(raw, names):
    """Mean and SD (population, NaN ignored; SD 1 when 0 or undefined) of each training feature."""
    norms = []
    for k, name in enumerate(names):
        col = np.asarray(raw, dtype=np.float64)[:, k]
        col = col[np.isfinite(col)]
        mean = float(col.mean()) if len(col) else 0.0
        sd = float(col.std()) if len(col) else 1.0
        norms.append({"name": name, "mean": rounded(mean, 8), "sd": rounded(sd if sd > 0 else 1.0, 8)})
    return norms


class Cohort:
    """ROIs (N, C, D, H, W) and labels of one or more prepared rows, stored as `dtype`; the raw
    scalar features (N, F) named by `feature_names` and the true markers (N, K; NaN = unknown)."""

    def __init__(self, entries, card_roi, dtype, feature_names=()):
        # entries: (folder, row)
        shape = (len(card_roi["channels"]), *card_roi["size"])
        names = channel_names(card_roi)
        self.rois = torch.empty((len(entries), *shape), dtype=dtype)
        self.labels = torch.empty(len(entries), dtype=torch.float32)
        self.case_ids, self.sources = [], []
        self.raw_features = np.array([[feature_value(r, n) for n in feature_names] for _, r in entries],
                                     dtype=np.float64).reshape(len(entries), len(feature_names))
        self.features = None  # standardised, set by use_norms
        self.aux = torch.tensor([[parse_float(r.get("true_" + m)) for m in AUX_MARKERS] for _, r in entries],
                                dtype=torch.float32).reshape(len(entries), len(AUX_MARKERS))
        for i, (folder, row) in enumerate(entries):
            path = os.path.join(folder, row["file"])
            if not os.path.isfile(path):
                raise SystemExit(f"{os.path.join(folder, 'cases.csv')}: case {row['case_id']}: its ROI file {path} does "
                                 "not exist (a folder split by hand needs each listed case's .safetensors file beside "
                                 "its cases.csv)")
            tensors, meta = hemexp_safetensors.load(path)
            if "roi" not in tensors:
                raise SystemExit(f"{path}: no tensor 'roi'")
            roi = tensors["roi"]
            if roi.dtype != torch.float32 or tuple(roi.shape) != shape:
                raise SystemExit(f"{path}: 'roi' must be float32 {shape} as the card's roi block says, "
                                 f"got {roi.dtype} {tuple(roi.shape)}")
            if "roi_recipe" in meta:
                got = channel_names(json.loads(meta["roi_recipe"]))
                if got != names:
                    raise SystemExit(f"{path}: ROI channels {got} differ from the card's {names}: "
                                     f"prepared with another roi recipe")
            self.rois[i] = roi.to(dtype)
            self.labels[i] = he_label(row, path)
            self.case_ids.append(row["case_id"])
            self.sources.append(folder)

    def __len__(self):
        return len(self.labels)

    def use_norms(self, norms):
        self.features = normalise_features(self.raw_features, norms)

    def feature_batch(self, idx):
        return None if self.features is None else self.features[idx]

    def counts(self):
        n_he = int(self.labels.sum())
        return {"he": n_he, "nhe": len(self) - n_he}


def feature_column(name):
    """The cases.csv column a feature is read from (feature_value)."""
    return {"log_volume_ml": "volume_ml", "log_ivh_volume_ml": "ivh_volume_ml"}.get(name, name)


def check_feature_columns(folders, feature_names):
    """SystemExit when a prepared folder has no column for one of the card's features: it would
    silently be the training mean for every case (a folder prepared by an older hemexp)."""
    for folder in folders:
        rows = read_cases_csv(folder)
        missing = [n for n in feature_names if rows and feature_column(n) not in rows[0]]
        if missing:
            raise SystemExit(f"{os.path.join(folder, 'cases.csv')}: no column for the card's features {missing}: "
                             "prepared by an older hemexp? Run `hemexp run --resume` and `hemexp prepare` again "
                             "with this version")


FEATURE_SOURCES = {"log_ivh_volume_ml": "a run with a segmenter without an 'ivh' label (the two-class "
                                         "segmenter) leaves ivh_volume_ml blank; use models/hemexp-seg-labels.safetensors"}


def check_features_present(entries, feature_names, may_be_absent=()):
    """SystemExit when one of the card's features has no value in any training case (entries:
    (folder, row)): standardised as mean 0, SD 1 and 0 for every case, it would silently carry
    nothing, and the C++ tool would read a real value later as a huge one. A feature the card lists
    in "features_may_be_absent" is allowed (said). A feature blank in every row of one training
    folder but not of another is warned about (it would tell the folders apart)."""
    for name in feature_names:
        column = feature_column(name)
        have = {}
        for folder, row in entries:
            have.setdefault(folder, 0)
            if math.isfinite(feature_value(row, name)):
                have[folder] += 1
        if not any(have.values()):
            if name in may_be_absent:
                log(f"warning: the card's feature {name} has no value in any training case (column {column}): "
                    "standardised as mean 0, sd 1, so 0 for every case (the card's features_may_be_absent lists it)")
                continue
            why = FEATURE_SOURCES.get(name, "")
            raise SystemExit(f"the card's feature {name} has no value in any of the {len(entries)} training cases "
                             f"(column {column} of {', '.join(os.path.join(f, 'cases.csv') for f in have)} is blank "
                             f"or not a number in every row){': ' + why if why else ''}. Prepare the folders from "
                             f"a run that measures it, remove {name} from the card's features, or list it in the "
                             f"card's \"features_may_be_absent\" to train with it at 0 for every case")
        empty = [f for f, n in have.items() if n == 0]
        if empty:
            log(f"warning: the card's feature {name} has no value in any case of {', '.join(empty)} but has in the "
                "other training folders: the network can tell those folders apart by it")


def data_kind(rows):
    """What one prepared folder's rows are, from what `hemexp prepare` recorded in cases.csv:
    "synthetic" (true masks of `hemexp synth`, or the generator's labels: he_observable_probability
    or all of its true markers), or "labelled" (predicted masks with labels from a labels file)."""
    def generator(r):
        return (r.get("mask_source") or "").strip() == "truth" or \
            (r.get("he_observable_probability") or "").strip() != "" or \
            all((r.get("true_" + m) or "").strip() != "" for m in AUX_MARKERS)
    return "synthetic" if rows and all(generator(r) for r in rows) else (
        "labelled" if not any(generator(r) for r in rows) else "mixed")


def data_provenance(groups):
    """groups: (role, [(folder, row)]) -> (trained_on sentence, per-folder records for the card)."""
    records = []
    for role, entries in groups:
        by_folder = {}
        for folder, row in entries:
            by_folder.setdefault(folder, []).append(row)
        for folder, rows in by_folder.items():
            masks = sorted({(r.get("mask_source") or "").strip() or "not recorded" for r in rows})
            kind = data_kind(rows)
            records.append({"role": role, "folder": os.path.abspath(folder), "cases": len(rows),
                            "he": sum(int(r["he_label"]) for r in rows), "kind": kind, "mask_source": masks,
                            "labels": {"synthetic": "hemexp synth's generator model",
                                       "labelled": "a labels file (no generator truth)",
                                       "mixed": "some from hemexp synth's generator, some from a labels file"}[kind]})
    if records and all(r["kind"] == "synthetic" for r in records):
        return "synthetic data from hemexp synth; the expansion label comes from hemexp's own generator model", records
    parts = []
    for role, what in (("training", "training"), ("topup", "top-up"), ("validation", "validation")):
        mine = [r for r in records if r["role"] == role]
        if not mine:
            continue
        bits = []
        for kind in ("labelled", "mixed", "synthetic"):
            n = sum(r["cases"] for r in mine if r["kind"] == kind)
            if not n:
                continue
            masks = sorted({m for r in mine if r["kind"] == kind for m in r["mask_source"]})
            mask_text = {"predicted": "hemexp's predicted masks", "truth": "the generator's true masks"}
            masks = ", ".join(mask_text.get(m, "masks " + m) for m in masks)
            bits.append({"labelled": f"{n} labelled cases (labels from a labels file, ROIs from {masks})",
                         "mixed": f"{n} cases with labels partly from hemexp synth's generator, partly from a labels "
                                  f"file (ROIs from {masks})",
                         "synthetic": f"{n} synthetic cases from hemexp synth (label from hemexp's own generator "
                                      f"model, ROIs from {masks})"}[kind])
        parts.append(f"{what}: " + " and ".join(bits))
    return "; ".join(parts), records


def select_rows(folders, min_volume_ml):
    entries, skipped = [], 0
    for folder in folders:
        for row in read_cases_csv(folder):
            he_label(row, os.path.join(folder, "cases.csv"))
            if eligible(row, min_volume_ml):
                entries.append((folder, row))
            else:
                skipped += 1
    return entries, skipped


def scan_key(row):
    """What identifies a case's scan across prepared folders: its source path (cohorts made by
    `hemexp synth` with different seeds reuse the case names synth_00000, ...), else its case id."""
    source = (row.get("source") or "").strip()
    return os.path.normpath(source) if source else row["case_id"]


def shared_scans(train_rows, val_rows):
    """Scans (scan_key) that are in both training and validation rows, sorted."""
    train = {scan_key(r) for r in train_rows}
    return sorted({scan_key(r) for r in val_rows} & train)


def parse_ratio(text):
    try:
        a, b = (float(v) for v in text.split(":"))
        assert a > 0 and b > 0
        return a, b
    except (ValueError, AssertionError):
        raise SystemExit(f"--target-ratio must look like HE:NHE, e.g. 1:2, not '{text}'")


def topup_rows(folders, count, min_volume_ml):
    """`count` eligible expansion cases (he_label 1) from folders, shared among them in proportion to
    how many each holds (largest remainder, ties to the earlier folder); the first ones of each
    folder in cases.csv order."""
    available = []
    for folder in folders:
        path = os.path.join(folder, "cases.csv")
        available.append([r for r in read_cases_csv(folder) if he_label(r, path) == 1 and eligible(r, min_volume_ml)])
    total = sum(len(rows) for rows in available)
    if total < count:
        raise SystemExit(f"{', '.join(folders)}: top-up needs {count} expansion cases, "
                         f"{'they have' if len(folders) > 1 else 'it has'} {total} (>= min_volume_ml)")
    exact = [count * len(rows) / total if total else 0.0 for rows in available]
    take = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(folders)), key=lambda i: (-(exact[i] - take[i]), i))[:count - sum(take)]:
        take[i] += 1
    return [(folder, r) for folder, rows, n in zip(folders, available, take) for r in rows[:n]]


# ----------------------------------------------------------------------------- augmentation

def shift_zero(x, shifts):
    """x (C, D, H, W) moved by integer shifts (dz, dy, dx), zeros where nothing moved in."""
    out = torch.zeros_like(x)
    src, dst = [slice(None)], [slice(None)]
    for s, n in zip(shifts, x.shape[1:]):
        s = max(-n, min(n, s))
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def dilate_in_plane(mask):
    """1-voxel in-plane (y, x) dilation of a (D, H, W) mask by 3x3 max-pooling."""
    return F.max_pool3d(mask[None, None], (1, 3, 3), stride=1, padding=(0, 1, 1))[0, 0]


def erode_in_plane(mask):
    return -F.max_pool3d(-mask[None, None], (1, 3, 3), stride=1, padding=(0, 1, 1))[0, 0]


def main_component(mask):
    """(D, H, W) float mask -> float indicator of its largest 26-connected component (voxels > 0.5;
    size by summed mask value); all ones when the mask is empty."""
    from scipy import ndimage
    m = mask.float().numpy() > 0.5
    labels, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return torch.ones_like(mask, dtype=torch.float32) if n == 0 else torch.from_numpy(m.astype(np.float32))
    sizes = ndimage.sum(mask.float().numpy(), labels, range(1, n + 1))
    keep = labels == (1 + int(np.argmax(sizes)))
    # partial-volume edge voxels (<= 0.5) next to the kept component stay: dilate by one voxel
    keep = ndimage.binary_dilation(keep, structure=np.ones((3, 3, 3))) & ~(m & ~keep)
    return torch.from_numpy(keep.astype(np.float32))


def augment(batch, mask_channel, gen, shift_voxels=(1, 3, 3), jitter=0.05, p_dilate=0.2, p_erode=0.2,
            main=None, p_main=0.0):
    """A new float32 batch (B, C, D, H, W): on the mask channel first, with probability p_main,
    only the largest component (main: (B, D, H, W) indicators; the segmenter's post-processing
    removes small satellites that true masks have); then flip x (p 0.5), shift by up to
    shift_voxels (z, y, x) with zero fill, per-sample CT-window scale 1 +- jitter and offset
    +- jitter/2 (clipped to [0, 1]), and on the mask channel an in-plane dilation (p_dilate) or
    erosion (p_erode; skipped when it would empty the mask). All draws come from gen."""
    batch = batch.float()
    b = batch.shape[0]
    r = torch.rand(b, 6, generator=gen, dtype=torch.float64)
    shifts = [torch.randint(-s, s + 1, (b,), generator=gen) for s in shift_voxels]
    ct = [c for c in range(batch.shape[1]) if c != mask_channel]
    out = []
    for i in range(b):
        x = batch[i]
        if main is not None and mask_channel is not None and float(r[i, 5]) < p_main:
            x = x.clone()
            x[mask_channel] = x[mask_channel] * main[i]
        if r[i, 0] < 0.5:
            x = x.flip(-1)
        x = shift_zero(x, [int(s[i]) for s in shifts])
        if ct and jitter > 0:
            scale = 1.0 + jitter * (2 * float(r[i, 1]) - 1)
            offset = 0.5 * jitter * (2 * float(r[i, 2]) - 1)
            x[ct] = (x[ct] * scale + offset).clamp_(0.0, 1.0)
        if mask_channel is not None:
            u = float(r[i, 3])
            if u < p_dilate:
                x[mask_channel] = dilate_in_plane(x[mask_channel])
            elif u < p_dilate + p_erode:
                eroded = erode_in_plane(x[mask_channel])
                if eroded.sum() > 0:
                    x[mask_channel] = eroded
        out.append(x)
    return torch.stack(out)


# ----------------------------------------------------------------------------- training

def fit_sign_layer(net, train_set):
    """The sign layer (two-stage head) from one logistic regression per sign (L2 1e-3) of the
    generator's true sign on the standardised training features; the layer stays fixed in
    training. Returns what the head's logistic start needs, the out-of-fold sign probabilities
    (N, S) of the training cases (folds: case index mod SIGN_FOLDS), and a summary for the card."""
    cols = [AUX_MARKERS.index(n) for n in net.sign_names]
    targets = train_set.aux[:, cols].numpy().astype(np.float64)
    if not np.isfinite(targets).all():
        raise SystemExit(f"the card's sign layer needs the true signs {net.sign_names} (true_<sign> columns of "
                         "`hemexp prepare` on synthetic cohorts) for every training case")
    x = net.sign_layer_inputs(train_set.features.double()).numpy()
    oof = np.zeros_like(targets)
    summary = {}
    for k, name in enumerate(net.sign_names):  # fit_logistic needs autograd: no torch.no_grad() around it
        y = targets[:, k]
        w, b, oof_logits = fit_logistic_out_of_fold(x, y, SIGN_FOLDS, 1e-3)
        oof[:, k] = sigmoid(oof_logits)
        with torch.no_grad():
            net.signs.weight[k] = torch.as_tensor(w, dtype=net.signs.weight.dtype)
            net.signs.bias[k] = b
        summary[name] = {"prevalence": float(y.mean()), "train_auc": roc_auc(x @ w + b, y),
                         "out_of_fold_auc": roc_auc(oof[:, k], y)}
    net.signs.requires_grad_(False)
    return oof, summary


def head_inputs_for_init(net, train_set, oof_signs):
    """The head's non-image inputs for its logistic start: the features, or with a sign layer the
    out-of-fold sign probabilities and the head_features (as head_inputs builds them)."""
    x = train_set.features.numpy().astype(np.float64)
    if not net.sign_names:
        return x
    return np.column_stack([oof_signs, x[:, net.head_features]])


def init_head_from_logistic(net, x, train_set, freeze_feature_weights):
    """The head's feature weights and bias from a logistic regression of the training labels on x,
    the head's non-image inputs (the standardised features, or the sign probabilities and the
    head_features: what the transparent baseline knows), its class-token weights 0: the
    network starts as that regression and the image part can only add to it. With
    freeze_feature_weights a gradient hook keeps the feature weights fixed. Returns the fit."""
    y = train_set.labels.numpy()
    w, b = fit_logistic(x, y, l2=1e-3)
    e = net.head.weight.shape[1] - x.shape[1]
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.weight[0, e:] = torch.as_tensor(w, dtype=net.head.weight.dtype)
        net.head.bias.fill_(b)
    if freeze_feature_weights:
        keep = torch.ones_like(net.head.weight)
        keep[0, e:] = 0.0
        net.head.weight.register_hook(lambda g: g * keep)
    return {"weights": w.tolist(), "bias": b, "train_auc": roc_auc(x @ w + b, y)}


@torch.no_grad()
def predict_logits(net, rois, batch_size, features=None):
    was_training = net.training
    net.eval()
    out = [net(rois[i:i + batch_size].float(), None if features is None else features[i:i + batch_size])
           for i in range(0, len(rois), batch_size)]
    net.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def learning_rate(step, total_steps, warmup_steps, lr0, schedule):
    if step < warmup_steps:
        return lr0 * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr0 * (1.0 - min(progress, 0.999)) ** 0.9


def export(path, net, card):
    state = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    tmp = path + ".tmp"
    hemexp_safetensors.save(tmp, state, {"hemexp_model_card": json.dumps(card, sort_keys=True)})
    os.replace(tmp, path)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, metavar="DIR", help="base training cohorts (prepared)")
    ap.add_argument("--topup", nargs="+", default=None, metavar="DIR",
                    help="prepared cohorts of synthetic expansion cases (several: shared in proportion)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--topup-count", type=int, default=None, metavar="N",
                       help="add the first N expansion cases of --topup")
    group.add_argument("--target-ratio", default=None, metavar="HE:NHE",
                       help="add as many --topup cases as make the HE:NHE ratio, e.g. 1:2")
    ap.add_argument("--val", nargs="+", required=True, metavar="DIR",
                    help="validation cohorts (natural prevalence, predicted masks; several are pooled, e.g. "
                         "procedural and real-background): checkpoint, calibration, threshold")
    ap.add_argument("--card", required=True, metavar="TEMPLATE.json", help="card template: name, network, roi")
    ap.add_argument("-o", "--out", required=True, metavar="MODEL.safetensors")
    ap.add_argument("--name", default=None,
                    help="the model card's name (default: the output file's name without .safetensors; never the "
                         "template's)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--schedule", choices=["cosine", "poly"], default="cosine")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--shift-voxels", type=int, nargs=3, default=[1, 3, 3], metavar=("Z", "Y", "X"),
                    help="largest random shift per axis")
    ap.add_argument("--intensity-jitter", type=float, default=0.05)
    ap.add_argument("--mask-dilate-p", type=float, default=0.2)
    ap.add_argument("--mask-erode-p", type=float, default=0.2)
    ap.add_argument("--mask-main-component-p", type=float, default=0.0,
                    help="probability of keeping only the mask's largest component (true masks have satellites "
                         "that the segmenter's post-processing removes)")
    ap.add_argument("--checkpoint", choices=["best", "last"], default="best",
                    help="keep the epoch with the best validation AUC, or the last epoch (a small or noisy "
                         "validation cohort makes 'best' a choice of noise)")
    ap.add_argument("--aux-weight", type=float, default=0.0,
                    help="weight of the auxiliary true-marker loss (0: off; needs true_<marker> columns)")
    ap.add_argument("--head-init", choices=["default", "logistic"], default="default",
                    help="logistic: the head's feature weights and bias start as a logistic regression on the "
                         "training features, its class-token weights at 0 (needs features in the card)")
    ap.add_argument("--freeze-feature-weights", action="store_true",
                    help="with --head-init logistic: keep those feature weights fixed, so the image part can only "
                         "add to the regression")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", default=None, metavar="FILE", help="also append the log to FILE")
    args = ap.parse_args(argv)
    if (args.topup_count is not None or args.target_ratio is not None) and not args.topup:
        ap.error("--topup-count and --target-ratio need --topup")
    if args.topup and args.topup_count is None and args.target_ratio is None:
        ap.error("--topup needs --topup-count or --target-ratio")
    if args.topup_count is not None and args.topup_count < 0:
        ap.error("--topup-count must be >= 0")
    if args.freeze_feature_weights and args.head_init != "logistic":
        ap.error("--freeze-feature-weights needs --head-init logistic")
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be >= 1")
    if {os.path.abspath(d) for d in args.val} & {os.path.abspath(d) for d in args.train + (args.topup or [])}:
        ap.error("--val must not be a training folder")
    if args.name is None:
        stem = os.path.basename(args.out)
        args.name = stem[:-len(".safetensors")] if stem.endswith(".safetensors") and len(stem) > 12 else stem
    elif not args.name.strip():
        ap.error("--name must not be empty")
    return args


def load_card(path):
    with open(path) as f:
        card = json.load(f)
    for key in ("network", "roi", "name"):
        if key not in card:
            raise SystemExit(f"{path}: the card template has no '{key}'")
    net, roi = card["network"], card["roi"]
    if list(roi["size"]) != list(net["image_size"]) or len(roi["channels"]) != net["in_channels"]:
        raise SystemExit(f"{path}: network image_size/in_channels differ from roi size/channels")
    for key in ("training", "validation", "calibration", "decision", "risk_categories", "recalibration", "trained_on"):
        card.pop(key, None)
    if isinstance(card.get("description"), str):  # the template's note to this script is not the model's
        card["description"] = re.sub(r"\s*Template: .*$", "", card["description"], flags=re.S).strip()
    names = card.get("features", [])
    names = [n["name"] if isinstance(n, dict) else n for n in names]
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise SystemExit(f"{path}: unknown features {unknown}; known: {list(FEATURE_NAMES)}")
    signs = card["network"].get("signs", [])
    if [n for n in signs if n not in AUX_MARKERS]:
        raise SystemExit(f"{path}: network.signs must be among {list(AUX_MARKERS)}")
    if [i for i in card["network"].get("head_features", []) if not 0 <= i < len(names)]:
        raise SystemExit(f"{path}: network.head_features must index the features")
    card.pop("features", None)
    card["network"].pop("num_features", None)
    if names:  # a card without features stays as it was
        card["features"] = names
        card["network"]["num_features"] = len(names)
    return card


def check_paths(args):
    """What would otherwise fail only after the whole training (-o's folder) or as a traceback
    (--card, --log's folder): a message per problem, none when all is well."""
    problems = []
    if not os.path.isfile(args.card):
        problems.append(f"--card {args.card}: no such file")
    for option, path in (("-o", args.out), ("--log", args.log)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            problems.append(f"{option} {path} is a folder: give a file name")
        elif not os.path.isdir(folder):
            problems.append(f"{option} {path}: folder {folder} does not exist")
        elif not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"{option} {path}: folder {folder} is not writable")
    return problems


def main(argv=None):
    global _log_file
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    problems = check_paths(args)
    if problems:  # exit status 2, as argparse's usage errors
        for p in problems:
            print(f"train_classifier.py: error: {p}", file=sys.stderr)
        print("train_classifier.py: nothing trained", file=sys.stderr)
        raise SystemExit(2)
    if args.log:
        _log_file = open(args.log, "a")
    try:
        return train(args, argv)
    finally:
        if _log_file is not None:
            _log_file.close()
            _log_file = None


def train(args, argv):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    card = load_card(args.card)
    min_volume_ml = float(card.get("min_volume_ml", 0.5))
    names = channel_names(card["roi"])
    mask_channel = names.index("mask") if "mask" in names else None
    if mask_channel is None:
        log("warning: the card's roi has no 'mask' channel: no mask perturbation")
    log(f"argv: {' '.join(shlex.quote(a) for a in argv)}")
    log(f"torch {torch.__version__}, {args.threads} thread(s), seed {args.seed}")

    check_feature_columns(args.train + args.val + (args.topup or []), card.get("features", []))
    base_rows, skipped_base = select_rows(args.train, min_volume_ml)
    n_he = sum(int(r["he_label"]) for _, r in base_rows)
    n_nhe = len(base_rows) - n_he
    if args.topup:
        if args.target_ratio:
            a, b = parse_ratio(args.target_ratio)
            topup_count = max(0, int(round(n_nhe * a / b)) - n_he)
        else:
            topup_count = args.topup_count
        extra = topup_rows(args.topup, topup_count, min_volume_ml)
    else:
        topup_count, extra = 0, []
    val_rows, skipped_val = select_rows(args.val, min_volume_ml)
    for folder, row in base_rows + extra + val_rows:  # before any ROI is read
        path = os.path.join(folder, row["file"])
        if not os.path.isfile(path):
            raise SystemExit(f"{os.path.join(folder, 'cases.csv')}: case {row['case_id']}: its ROI file {path} does "
                             "not exist (a folder split by hand needs each listed case's .safetensors file beside "
                             "its cases.csv)")
    check_features_present(base_rows + extra, card.get("features", []), card.get("features_may_be_absent", []))
    trained_on, provenance = data_provenance([("training", base_rows), ("topup", extra), ("validation", val_rows)])
    log(f"data: {trained_on}")
    overlap = shared_scans([r for _, r in base_rows + extra], [r for _, r in val_rows])
    if overlap:
        log(f"warning: {len(overlap)} scan(s) in both training and validation data, e.g. {overlap[:3]}")

    t = time.perf_counter()
    # training ROIs as float16 (values in [0, 1]: 5e-4 steps, well below the intensity jitter),
    # half the memory; validation ROIs stay float32, as the C++ tool sees them
    feature_names = card.get("features", [])
    train_set = Cohort(base_rows + extra, card["roi"], torch.float16, feature_names)
    val_set = Cohort(val_rows, card["roi"], torch.float32, feature_names)
    norms = feature_norms(train_set.raw_features, feature_names)
    train_set.use_norms(norms)
    val_set.use_norms(norms)
    if norms:
        log("features: " + ", ".join(f"{n['name']} (mean {n['mean']:.4g}, sd {n['sd']:.4g})" for n in norms))
    n_aux = int(torch.isfinite(train_set.aux).all(1).sum())
    if args.aux_weight > 0:
        log(f"auxiliary true-marker targets on {n_aux} of {len(train_set)} training ROIs, weight {args.aux_weight}")
        if n_aux == 0:
            raise SystemExit("--aux-weight needs true_<marker> columns in the training cases.csv")
    counts = train_set.counts()
    vc = val_set.counts()
    if vc["he"] == 0 or vc["nhe"] == 0:
        raise SystemExit(f"{' '.join(args.val)}: the validation cohort needs both classes, has {vc}")
    if counts["he"] == 0 or counts["nhe"] == 0:
        raise SystemExit(f"the training data needs both classes, has {counts}")
    log(f"loaded {len(train_set)} training ROIs ({counts['he']} HE : {counts['nhe']} NHE = "
        f"1:{counts['nhe'] / counts['he']:.2f}; base {n_he}:{n_nhe}, top-up {topup_count}) and "
        f"{len(val_set)} validation ROIs ({vc['he']} HE) in {time.perf_counter() - t:.1f} s; "
        f"below {min_volume_ml} mL left out: {skipped_base} training, {skipped_val} validation")

    net = hemexp_nets.ViT(card["network"])
    n_params = sum(p.numel() for p in net.parameters())
    log(f"ViT with {n_params} parameters ({n_params * 4 / 2**20:.2f} MiB fp32)")
    main = None
    if mask_channel is not None and args.mask_main_component_p > 0:
        t = time.perf_counter()
        main = torch.stack([main_component(train_set.rois[i, mask_channel]) for i in range(len(train_set))])
        log(f"largest mask components of {len(train_set)} training ROIs in {time.perf_counter() - t:.1f} s; "
            f"{int((main.sum((1, 2, 3)) < (train_set.rois[:, mask_channel].float() > 0.5).sum((1, 2, 3))).sum())} "
            f"ROIs have more than one component")
    aux_head = torch.nn.Linear(card["network"]["embed_dim"], len(AUX_MARKERS))  # training only
    params = list(net.parameters()) + (list(aux_head.parameters()) if args.aux_weight > 0 else [])
    head_init, sign_layer, oof_signs = None, None, None
    if net.sign_names:
        t = time.perf_counter()
        oof_signs, sign_layer = fit_sign_layer(net, train_set)
        log(f"sign layer fitted in {time.perf_counter() - t:.1f} s (fixed from here on), out-of-fold training AUC: "
            + ", ".join(f"{n} {v['out_of_fold_auc']:.3f}" for n, v in sign_layer.items()))
    if args.head_init == "logistic":
        if not norms:
            raise SystemExit("--head-init logistic needs features in the card")
        x_head = head_inputs_for_init(net, train_set, oof_signs)
        head_init = init_head_from_logistic(net, x_head, train_set, args.freeze_feature_weights)
        log(f"head initialised from a logistic regression on {x_head.shape[1]} standardised training inputs "
            f"(training AUC {head_init['train_auc']:.4f}); the class token's weights start at 0"
            + ("; the feature weights stay fixed" if args.freeze_feature_weights else ""))
    # No weight decay on the head when its feature weights are fixed (decay would move them).
    head_params = {id(net.head.weight), id(net.head.bias)} if args.freeze_feature_weights else set()
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in head_params]},
                             {"params": [p for p in params if id(p) in head_params], "weight_decay": 0.0}],
                            lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = min(total_steps, max(1, int(round(args.warmup_epochs * steps_per_epoch))))
    labels_val = val_set.labels.numpy().astype(np.int64)

    best = {"auc": -math.inf, "loss": math.inf, "epoch": 0, "state": None}
    history = []
    start = time.perf_counter()
    step = 0
    net.train()
    for epoch in range(1, args.epochs + 1):
        t_epoch = time.perf_counter()
        order = torch.randperm(len(train_set), generator=gen)
        losses = []
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x = augment(train_set.rois[idx], mask_channel, gen, args.shift_voxels, args.intensity_jitter,
                        args.mask_dilate_p, args.mask_erode_p, main[idx] if main is not None else None,
                        args.mask_main_component_p)
            lr = learning_rate(step, total_steps, warmup_steps, args.lr, args.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            pooled = net.embed(x)
            loss = F.binary_cross_entropy_with_logits(net.classify(pooled, train_set.feature_batch(idx)),
                                                      train_set.labels[idx])
            if args.aux_weight > 0:
                target = train_set.aux[idx]
                known = torch.isfinite(target)
                if known.any():
                    aux = F.binary_cross_entropy_with_logits(aux_head(pooled)[known], target[known])
                    loss = loss + args.aux_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss))
            step += 1
        logits = predict_logits(net, val_set.rois, args.batch_size, val_set.features)
        val_loss = float(F.binary_cross_entropy_with_logits(logits, val_set.labels))
        val_auc = roc_auc(logits.numpy(), labels_val)
        auc_key = val_auc if math.isfinite(val_auc) else -math.inf
        improved = auc_key > best["auc"] or (auc_key == best["auc"] and val_loss < best["loss"])
        if args.checkpoint == "last":
            improved = epoch == args.epochs
        if improved:
            best = {"auc": auc_key, "loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
        history.append({"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                        "val_auc": val_auc, "seconds": time.perf_counter() - t_epoch})
        log(f"epoch {epoch}/{args.epochs} lr {lr:.2e} train loss {np.mean(losses):.4f} val loss {val_loss:.4f} "
            f"val AUC {val_auc:.4f}{' *' if improved else ''} ({time.perf_counter() - t_epoch:.1f} s)")
    seconds = time.perf_counter() - start

    net.load_state_dict(best["state"])
    logits = predict_logits(net, val_set.rois, args.batch_size, val_set.features).numpy().astype(np.float64)
    a, b = platt_fit(logits, labels_val)
    if a <= PLATT_MIN_SLOPE:
        log(f"warning: the best epoch's logits do not rank the validation cases (AUC {roc_auc(logits, labels_val):.3f}): "
            f"Platt calibration gives every case the validation prevalence")
    p_raw = sigmoid(logits)
    p_cal = sigmoid(a * logits + b)
    decision = youden_threshold(p_cal, labels_val)
    auc = roc_auc(logits, labels_val)
    ci = bootstrap_auc_ci(logits, labels_val, 2000, args.seed)
    prevalence = float(labels_val.mean())
    categories = risk_categories(p_cal, labels_val)

    card.update({
        "format_version": 1, "kind": "classification",
        "min_volume_ml": min_volume_ml,
        "calibration": {"method": "platt", "slope": a, "intercept": b,
                        "fitted_on": "validation cohort logits of the best epoch (maximum likelihood, slope > 0)"},
        "decision": {"threshold": decision["threshold"],
                     "rule": f"Youden's J on the validation cohort (n={len(val_set)}, prevalence {prevalence:.3f})",
                     "sensitivity": rounded(decision["sensitivity"]), "specificity": rounded(decision["specificity"])},
        "risk_categories": categories,
        "training": rounded({
            "data": [os.path.abspath(d) for d in args.train],
            "data_provenance": provenance,
            "topup": [os.path.abspath(d) for d in args.topup] if args.topup else None,
            "topup_count": topup_count, "target_ratio": args.target_ratio,
            "cases": {"base_he": n_he, "base_nhe": n_nhe, "he": counts["he"], "nhe": counts["nhe"],
                      "below_min_volume_left_out": skipped_base},
            "epochs": args.epochs, "best_epoch": best["epoch"], "selection": "best validation AUC (ties: lower loss)" if args.checkpoint == "best" else "last epoch",
            "batch_size": args.batch_size, "optimizer": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
            "lr_schedule": f"linear warmup {warmup_steps} steps, then {args.schedule}"
                           f"{' 0.9' if args.schedule == 'poly' else ''} decay per step",
            "loss": "binary cross-entropy with logits, no class weights"
                    + (f", plus {args.aux_weight} x the mean BCE of a training-only head predicting the generator's "
                       f"true markers {list(AUX_MARKERS)}" if args.aux_weight > 0 else ""),
            "grad_clip_norm": 1.0,
            "head_init": ("logistic regression on the head's standardised training inputs (the features; with a sign "
                          "layer the out-of-fold sign probabilities and the head_features), class-token weights 0"
                          + (", feature weights fixed" if args.freeze_feature_weights else "")
                          if head_init else "timm (truncated normal 0.02)"),
            "head_init_logistic": head_init,
            "sign_layer": None if sign_layer is None else {
                "fit": "one logistic regression (L2 1e-3) per sign of the generator's true sign on the standardised "
                       "training features" + (" and their pairwise products" if net.sign_inputs == "quadratic" else "")
                       + "; fixed during training; the head's logistic start reads out-of-fold "
                       f"({SIGN_FOLDS} folds) sign probabilities",
                "signs": sign_layer},
            "augmentation": {"flip_x_p": 0.5, "shift_voxels_zyx": args.shift_voxels,
                             "ct_intensity": f"scale 1+-{args.intensity_jitter}, offset +-{args.intensity_jitter / 2}, "
                                             "clipped to [0, 1]",
                             "mask": f"largest component only p={args.mask_main_component_p}; in-plane 1-voxel "
                                     f"dilation p={args.mask_dilate_p} or erosion p={args.mask_erode_p} "
                                     f"(max-pooling 1x3x3)"},
            "train_storage": "float16",
            "history": history,
            "seed": args.seed, "threads": args.threads, "seconds": seconds,
            "command_line": " ".join(shlex.quote(s) for s in ["scripts/train_classifier.py"] + argv),
            "torch_version": torch.__version__, "script": "scripts/train_classifier.py"}),
        "validation": rounded({
            "data": [os.path.abspath(d) for d in args.val], "n": len(val_set), "n_he": vc["he"], "prevalence": prevalence,
            "below_min_volume_left_out": skipped_val, "best_epoch": best["epoch"], "loss": best["loss"],
            "auc": auc, "auc_ci95": list(ci), "auc_ci_method": "percentile bootstrap, 2000 resamples",
            "uncalibrated": probability_summary(p_raw, labels_val),
            "calibrated": probability_summary(p_cal, labels_val),
            "note": "in-sample: the checkpoint, calibration and threshold were chosen on this cohort"}),
        "research_use_only": True,
        "trained_on": trained_on,
        "name": args.name,
    })
    if norms:
        card["features"] = norms
    export(args.out, net, card)

    v = card["validation"]
    log(f"done: {args.epochs} epochs in {seconds:.0f} s, best epoch {best['epoch']}")
    log(f"training data   {counts['he']} HE : {counts['nhe']} NHE (top-up {topup_count})")
    log(f"validation      n {len(val_set)}, prevalence {prevalence:.3f}, AUC {auc:.4f} "
        f"[{ci[0]:.3f}, {ci[1]:.3f}]")
    for key in ("uncalibrated", "calibrated"):
        s = v[key]
        log(f"{key:<15} Brier {s['brier']}  ECE {s['ece']}  slope {s['calibration_slope']}  "
            f"intercept {s['calibration_intercept']}")
    log(f"Platt           p = sigmoid({a:.4f} * logit + {b:.4f})")
    log(f"threshold       {decision['threshold']:.4f} (Youden): sensitivity {decision['sensitivity']:.3f}, "
        f"specificity {decision['specificity']:.3f}")
    for c in categories:
        bound = f"< {c['below']:.2f}" if "below" in c else ">= last"
        log(f"risk {c['name']:<12} {bound:<8} n {c['n']:<5} observed rate {c['observed_rate']}")
    log(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.2f} MiB)")
    return card


if __name__ == "__main__":
    main()
