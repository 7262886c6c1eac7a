#!/usr/bin/python3
"""Recalibrate an expansion classifier on your own labelled patients, without retraining it.

A classifier trained elsewhere (the shipped one is trained on hemexp's synthetic data) ranks
cases by its logit; what its probability means depends on the prevalence and case mix it was
calibrated on. With a `hemexp run` of your baseline scans scored by that classifier and a
`case_id,he_label` CSV, this script refits only the calibration (the card's Platt slope and
intercept, or the intercept alone), the decision threshold and the risk categories' observed
rates, and writes a copy of the model file with the new card. The network's weights are copied
unchanged, so the ranking (AUC) does not move: recalibration cannot make a model discriminate
better, only make its probabilities match your patients.

    /usr/bin/python3 scripts/recalibrate_classifier.py --model models/hemexp-cls.safetensors \\
        --run run --labels labels.csv -o my-cls.safetensors
    hemexp run -i scans/ -o run --resume --cls-model my-cls.safetensors   # re-scores, masks kept

Each case's uncalibrated logit is read from the run's cases/<id>/result.json (`he.logit`); the
run must have been scored by the same model file (`he.model.sha256`), or nothing is written.
Cases without a probability (no hematoma, under the minimum volume, failed) are left out and
counted. The numbers after recalibration are in-sample: measure the new file on other patients.
"""
import argparse
import csv
import datetime
import glob
import hashlib
import json
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_safetensors  # noqa: E402
from train_classifier import (PLATT_MIN_SLOPE, bootstrap_auc_ci, cut_below, platt_fit, read_csv_rows,  # noqa: E402
                              roc_auc, probability_summary, risk_categories, rounded, sigmoid, youden_threshold)

CARD_KEY = "hemexp_model_card"
# Fewer expansions than this and a refitted slope is poorly determined (rule of thumb for
# logistic recalibration); --method intercept is then the safer choice.
MIN_EVENTS_FOR_SLOPE = 50


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_labels_counted(path):
    """(case_id -> 0/1, the case ids with a blank label) from a CSV with case_id and he_label
    columns, as a spreadsheet saves it (UTF-8 with or without a byte-order mark, else Windows-1252
    with a warning; CRLF or LF). Blank labels (no follow-up) are skipped, their ids returned."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    header, rows = read_csv_rows(path)
    if "case_id" not in header or "he_label" not in header:
        raise SystemExit(f"{path}: needs the columns case_id and he_label (has: {', '.join(header) or 'none'})")
    labels, blank = {}, []
    for row in rows:
        value = (row.get("he_label") or "").strip()
        if value == "":
            blank.append((row.get("case_id") or "").strip())
            continue
        if value not in ("0", "1"):
            raise SystemExit(f"{path}: he_label of {row['case_id']} is '{value}', not 0 or 1")
        case_id = (row["case_id"] or "").strip()
        if case_id == "":
            continue
        if case_id in labels:
            raise SystemExit(f"{path}: case_id {case_id} appears twice")
        labels[case_id] = int(value)
    return labels, blank


def read_labels(path):
    """case_id -> 0/1 from a CSV with case_id and he_label columns (blank labels are skipped)."""
    return read_labels_counted(path)[0]


def run_case_ids(run):
    """The case ids of a run's results table(s): results.csv, else every shard's
    results-K-of-N.csv. Case folders that no table lists (an earlier run's, left in OUTDIR) are
    not this run's cases."""
    tables = [os.path.join(run, "results.csv")]
    if not os.path.exists(tables[0]):
        tables = sorted(glob.glob(os.path.join(run, "results-*-of-*.csv")))
    if not tables:
        raise SystemExit(f"{run}: no results.csv (is it a `hemexp run` or `hemexp expansion` output folder?)")
    ids = []
    for table in tables:
        # A file name that is not UTF-8 stays as its bytes in the table's input column.
        with open(table, newline="", encoding="utf-8", errors="surrogateescape") as f:
            ids += [row["case_id"] for row in csv.DictReader(f)]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise SystemExit(f"{run}: case {twice[0]} is listed twice in its results tables ({', '.join(tables)}): "
                         "shards of two different splits in one folder?")
    return ids


def scan_folder_name(input_path):
    """The name of the folder that holds a case's scan: a DICOM folder's own name, a file's
    folder (as `hemexp prepare` names it)."""
    p = os.path.normpath(input_path)
    return os.path.basename(p) if os.path.isdir(p) else os.path.basename(os.path.dirname(p))


def run_working_folders(run):
    """The folders a run was started in: run.json's, else each shard record's by shard number
    (as hemexp's run_working_folders reads them)."""
    shard = re.compile(r"run-(\d{1,9})-of-(\d{1,9})\.json$")
    shards = []
    for n in os.listdir(run):
        m = shard.match(n)
        if m:
            shards.append((int(m.group(2)), int(m.group(1)), n))
    records = [os.path.join(run, "run.json")] + [os.path.join(run, n) for _, _, n in sorted(shards)]
    folders = []
    for record in records:
        try:
            with open(record) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        wd = r.get("working_directory") if isinstance(r, dict) else None
        if wd and wd not in folders:
            folders.append(wd)
    return folders


def run_input(working_folders, input_path):
    """A case's input as the run read it: a relative path from the first of the run's working
    folders where the file is, else as it is (as hemexp eval and prepare take it)."""
    if not input_path or os.path.isabs(input_path):
        return input_path
    for wd in working_folders:
        joined = os.path.join(wd, input_path)
        if os.path.exists(joined):
            return joined
    return input_path


def input_path_of(input_block):
    """A result.json input's path, exactly: hemexp writes a name that is not UTF-8 as text with
    U+FFFD and its bytes in hex as path_bytes."""
    if input_block.get("path_bytes"):
        return os.fsdecode(bytes.fromhex(input_block["path_bytes"]))
    return input_block.get("path") or ""


def scan_keys(result, input_path):
    """What identifies the scan a case read, across runs: its input path resolved (symbolic links
    followed; only when the file is there) and the content fingerprint hemexp records
    (result.json fingerprint.input, with the series UID chosen from a DICOM folder)."""
    keys = []
    # Only a path that is there: two sites' runs copied here both recording `scans/001.nii.gz`
    # (not found on this machine) are different scans, told apart by their content.
    if input_path and os.path.exists(input_path):
        keys.append("path:" + os.path.realpath(input_path))
    fingerprint = result.get("fingerprint") if isinstance(result.get("fingerprint"), dict) else {}
    if fingerprint.get("input"):
        uid = ((fingerprint.get("options") or {}).get("series_uid") or "") if isinstance(fingerprint.get("options"),
                                                                                         dict) else ""
        keys.append(f"content:{fingerprint['input']}:{uid}")
    return keys


def read_logits(run, labels, model_sha256, taken, seen=None):
    """(case ids, logits, labels) of the labelled cases of the run that got a probability, and a
    count of what was left out, by reason. A case matches its label by case id, or (as `hemexp
    prepare` matches) by the name of the folder holding its scan. `taken`: label -> the case that
    took it, across the runs that share the labels file; a label reached by a second case (one id
    in two runs, or two scans in one patient's folder) is refused. SystemExit, too, when a case
    was scored by another model file. `seen`: scan key (scan_keys) -> (the case of an earlier run
    that read it, whether that case has a content fingerprint); a case of this run reading a scan an earlier run's case read is counted once:
    left out and listed in `duplicates` (this case, the earlier one)."""
    ids, logits, y = [], [], []
    left_out, duplicates = {}, []
    seen = {} if seen is None else seen
    mine = {}  # this run's scan keys: a scan listed twice in one run is not an earlier run's
    listed = run_case_ids(run)
    own_ids = set(listed)  # a label keyed by a case's own id is that case's only
    working = run_working_folders(run)
    for case_id in listed:
        path = os.path.join(run, "cases", case_id, "result.json")
        if not os.path.exists(path):
            left_out["no result.json"] = left_out.get("no result.json", 0) + 1
            continue
        with open(path) as f:
            r = json.load(f)
        input_path = run_input(working, input_path_of(r.get("input") or {}))
        folder = scan_folder_name(input_path) if input_path else ""
        key = case_id if case_id in labels else (folder if folder not in own_ids else "")
        keys = scan_keys(r, input_path)
        # The same content is the same scan; the same path only where a side has no content
        # fingerprint (two sites' runs may name different scans by one path).
        content = next((k for k in keys if k.startswith("content:")), None)
        earlier = seen[content][0] if content in seen else next(
            (seen[k][0] for k in keys if k.startswith("path:") and k in seen and not (content and seen[k][1])), None)
        if earlier is not None:
            duplicates.append((f"{run}: {case_id}", earlier))
            left_out["same scan as a case of an earlier --run"] = \
                left_out.get("same scan as a case of an earlier --run", 0) + 1
            if key in labels and key not in taken:  # its label is matched, not counted again
                taken[key] = f"{run}: {case_id} (the same scan as {earlier})"
            continue
        for k in keys:
            mine.setdefault(k, (f"{run}: {case_id}", content is not None))
        if key not in labels:
            left_out["no label"] = left_out.get("no label", 0) + 1
            continue
        if key in taken:
            raise SystemExit(f"label {key} matches two cases, {taken[key]} and {run}: {case_id}: key the labels by "
                             "the run's case_id (and give one --labels per --run when runs share case ids)")
        taken[key] = f"{run}: {case_id}"
        he = r.get("he") or {}
        sha = (he.get("model") or {}).get("sha256")
        if sha is not None and sha != model_sha256:
            raise SystemExit(f"{run}: case {case_id} was scored by model {sha[:12]}..., not by the model file given "
                             f"({model_sha256[:12]}...): rerun with --resume --cls-model MODEL first")
        logit = he.get("logit")
        ok = r.get("status") in ("ok", "skipped")
        if not ok or logit is None or not math.isfinite(float(logit)):
            # "hematoma 0.29 mL is below ..." for every small clot: counted as one reason
            why = re.sub(r"[0-9]+(\.[0-9]+)? mL", "N mL",
                         he.get("reason") or (r.get("status") if not ok else "") or "no classifier output")
            reason = "no probability (" + why + ")"
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        ids.append(case_id)
        logits.append(float(logit))
        y.append(labels[key])
    seen.update(mine)
    return ids, logits, y, left_out, duplicates


def fit_intercept(z, y, slope, intercept):
    """Recalibration in the large: the card's slope kept, the intercept moved so that the mean
    probability equals the observed rate (the maximum-likelihood intercept with the old linear
    predictor as an offset). The mean probability rises monotonically with the shift, so the
    shift is found by bisection, which cannot run away however far off the old calibration is."""
    offset = slope * np.asarray(z, dtype=np.float64) + intercept
    rate = float(np.mean(y))
    low, high = -60.0, 60.0  # logits: wider than any rate strictly between 0 and 1 needs
    for _ in range(200):
        mid = (low + high) / 2.0
        if float(np.mean(sigmoid(offset + mid))) < rate:
            low = mid
        else:
            high = mid
    delta = (low + high) / 2.0
    if abs(float(np.mean(sigmoid(offset + delta))) - rate) > 1e-6:
        raise SystemExit("the intercept-only fit did not converge: nothing written")
    return slope, intercept + delta


def threshold_at_sensitivity(p, y, target):
    """The highest cut with sensitivity >= target ("positive when p >= t"), placed as
    youden_threshold places its cut (cut_below)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    values = np.unique(p)[::-1]
    for i, v in enumerate(values):
        pred = p >= v
        sens = (pred & y).sum() / y.sum()
        if sens >= target:
            spec = (~pred & ~y).sum() / (~y).sum()
            return {"threshold": cut_below(values, i), "sensitivity": float(sens), "specificity": float(spec)}
    raise ValueError("no cut reaches the sensitivity")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", required=True, metavar="MODEL.safetensors", help="the classifier that scored the runs")
    ap.add_argument("--run", nargs="+", required=True, metavar="RUN", help="hemexp run folders scored by it")
    ap.add_argument("--labels", nargs="+", required=True, metavar="CSV",
                    help="case_id,he_label CSV (one for all runs, or one per run in the same order)")
    ap.add_argument("--method", choices=["platt", "intercept"], default="platt",
                    help="refit slope and intercept (default), or only the intercept (few expansions)")
    ap.add_argument("--sensitivity", type=float, default=None, metavar="S",
                    help="set the decision threshold at this sensitivity instead of Youden's J")
    ap.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    ap.add_argument("--name", default=None, help="the new card's name (default: the old one + '-recalibrated')")
    args = ap.parse_args(argv)
    if len(args.labels) not in (1, len(args.run)):
        ap.error("--labels takes one CSV, or one per --run")
    if args.sensitivity is not None and not 0.0 < args.sensitivity <= 1.0:
        ap.error("--sensitivity must be in (0, 1]")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tensors, metadata = hemexp_safetensors.load(args.model)
    if CARD_KEY not in metadata:
        raise SystemExit(f"{args.model}: no model card ({CARD_KEY}) in its metadata")
    card = json.loads(metadata[CARD_KEY])
    old = card.get("calibration") or {}
    if card.get("kind", "classification") != "classification" or "decision" not in card:
        raise SystemExit(f"{args.model}: not an expansion classifier (no decision in its card)")
    if old.get("method", "none") == "platt":
        old_slope, old_intercept = float(old.get("slope", 1.0)), float(old.get("intercept", 0.0))
    else:  # uncalibrated: the probability is sigmoid(logit)
        old_slope, old_intercept = 1.0, 0.0
    model_sha256 = sha256_of(args.model)

    z, y, left_out = [], [], {}
    taken = {}  # label -> case, per labels file (one shared by every run, or one per run)
    seen = {}  # scan -> the case that read it, across runs: each scan counts once
    for k, run in enumerate(args.run):
        labels_path = args.labels[k if len(args.labels) > 1 else 0]
        labels, blank = read_labels_counted(labels_path)
        if blank and (len(args.labels) > 1 or k == 0):
            print(f"{labels_path}: {len(blank)} blank label(s) skipped (no label)", file=sys.stderr)
        if len(args.labels) > 1:
            taken = {}
        _, l, t, lo, duplicates = read_logits(run, labels, model_sha256, taken, seen)
        if duplicates:
            print(f"warning: {len(duplicates)} case(s) of {run} read the same scan (same input path or content) as a "
                  f"case of an earlier --run, e.g. {duplicates[0][0]} = {duplicates[0][1]}: each scan is counted "
                  "once, in the earlier run", file=sys.stderr)
        if len(args.labels) > 1 or k == len(args.run) - 1:
            unmatched = sorted(set(labels) - set(taken))
            if unmatched:
                print(f"warning: {len(unmatched)} of {len(labels)} labels in {labels_path} matched no case of "
                      f"{run if len(args.labels) > 1 else ', '.join(args.run)} (e.g. {', '.join(unmatched[:3])}): "
                      "key them by the run's case_id column", file=sys.stderr)
        z += l
        y += t
        for reason, n in lo.items():
            left_out[reason] = left_out.get(reason, 0) + n
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.int64)
    n, events = len(y), int(y.sum())
    if events == 0 or events == n:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(left_out.items()))
        raise SystemExit(f"{n} labelled cases with a probability, {events} expansions: both classes are needed "
                         f"(nothing written){'; left out: ' + why if why else ''}"
                         + ("; was the run scored by a classifier? (hemexp run --resume --cls-model MODEL)"
                            if n == 0 else ""))
    if args.method == "platt" and min(events, n - events) < MIN_EVENTS_FOR_SLOPE:
        print(f"warning: {min(events, n - events)} cases in the smaller class: a refitted slope is poorly determined "
              f"below {MIN_EVENTS_FOR_SLOPE}; consider --method intercept", file=sys.stderr)

    before = sigmoid(old_slope * z + old_intercept)
    if args.method == "platt":
        slope, intercept = platt_fit(z, y)
        if slope <= PLATT_MIN_SLOPE:
            print("warning: the logits rank these cases no better than chance: every case gets the observed rate",
                  file=sys.stderr)
    else:
        slope, intercept = fit_intercept(z, y, old_slope, old_intercept)
    after = sigmoid(slope * z + intercept)
    if args.sensitivity is None:
        decision = youden_threshold(after, y)
        rule = f"Youden's J on the recalibration cases (n={n}, prevalence {events / n:.3f})"
    else:
        decision = threshold_at_sensitivity(after, y, args.sensitivity)
        rule = f"sensitivity >= {args.sensitivity:g} on the recalibration cases (n={n}, prevalence {events / n:.3f})"
    auc, ci = roc_auc(z, y), bootstrap_auc_ci(z, y)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The source card's calibration numbers move under recalibration.source (`validation` described
    # the old calibration on the old data).
    source = {"model": os.path.basename(args.model), "sha256": model_sha256, "name": card.get("name"),
              "calibration": old, "decision": card.get("decision"), "risk_categories": card.get("risk_categories"),
              "validation": card.pop("validation", None), "recalibration": card.pop("recalibration", None)}
    card["calibration"] = {"method": "platt", "slope": slope, "intercept": intercept,
                           "fitted_on": (f"recalibrated ({args.method}) on {n} labelled cases of "
                                         f"{', '.join(args.run)} ({events} expansions), {when}")}
    # The threshold in full (hemexp compares probabilities with it); the rest rounded for reading.
    card["decision"] = {"rule": rule, "threshold": decision["threshold"],
                        "sensitivity": rounded(decision["sensitivity"]), "specificity": rounded(decision["specificity"])}
    bounds = tuple((c["name"], c.get("below")) for c in source["risk_categories"] or [])
    card["risk_categories"] = risk_categories(after, y, bounds) if bounds else risk_categories(after, y)
    card["recalibration"] = rounded({
        "method": args.method, "date": when, "runs": args.run, "labels": args.labels, "n": n, "events": events,
        "prevalence": events / n, "left_out": left_out,
        "auc": auc, "auc_ci95": list(ci), "auc_note": "of the logit: recalibration does not change it",
        "before": probability_summary(before, y), "after_in_sample": probability_summary(after, y),
        "source": source})
    card["name"] = args.name or (str(card.get("name", "classifier")) + "-recalibrated")
    metadata = dict(metadata)
    metadata[CARD_KEY] = json.dumps(card, sort_keys=True)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise SystemExit(f"-o {args.output}: folder {folder} does not exist (nothing written)")
    tmp = args.output + ".tmp"
    try:
        hemexp_safetensors.save(tmp, tensors, metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

    b, a = card["recalibration"]["before"], card["recalibration"]["after_in_sample"]
    print(f"{n} labelled cases with a probability ({events} expansions, prevalence {events / n:.3f}); left out: "
          + (", ".join(f"{v} {k}" for k, v in sorted(left_out.items())) or "none"))
    print(f"AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (unchanged by recalibration)")
    print(f"calibration: p = sigmoid({old_slope:.4f} logit {old_intercept:+.4f}) -> "
          f"sigmoid({slope:.4f} logit {intercept:+.4f})")
    for label, s in (("before", b), ("after (in-sample)", a)):
        print(f"  {label}: ECE {s['ece']:.3f}, calibration slope {s['calibration_slope']:.2f}, "
              f"intercept {s['calibration_intercept']:.2f}, Brier {s['brier']:.4f}")
    print(f"threshold {decision['threshold']:.4f} ({rule}): sensitivity {decision['sensitivity']:.3f}, "
          f"specificity {decision['specificity']:.3f}")
    print("risk categories: " + ", ".join(f"{c['name']} n {c['n']} rate {c['observed_rate']}" for c in card["risk_categories"]))
    print(f"written: {args.output} (weights unchanged; measure it on other patients before use)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
