#!/usr/bin/env python3
"""Measured expansion (`hemexp expansion` on `hemexp synth --followup` pairs) against the truth.

    hemexp synth -o TRUTH --count 50 --seed S --followup
    (pairs.csv: pair_id = case_id, baseline = CASE/ct.nii.gz, followup = CASE/followup_ct.nii.gz)
    hemexp expansion --pairs TRUTH/pairs.csv -o OUT
    python3 scripts/expansion_report.py --truth TRUTH --expansion OUT [--json report.json]

Reports the growth error (median, mean, 90th percentile, max absolute error, mean signed
error, by baseline-size group and with/without intraventricular blood), and per definition of
expansion the agreement of the measured label with the truth (Wilson 95% CI) and the confusion
counts. The truth of every definition comes from the generator's baseline and follow-up mask
volumes (labels.csv). Plain Python: no numpy needed.
"""
import argparse
import csv
import json
import math
import statistics
import sys

DEFINITIONS = {
    "he_label": lambda b, f: (f - b) > 6.0 or (b > 0 and (f - b) > 0.33 * b),
    "he_label_12_5ml": lambda b, f: (f - b) >= 12.5,
    "he_label_3ml": lambda b, f: (f - b) >= 3.0,
}


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def percentile(values, q):
    v = sorted(values)
    if not v:
        return float("nan")
    pos = q * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def error_stats(errors):
    a = [abs(e) for e in errors]
    if not a:
        return {"n": 0}
    return {"n": len(a), "median_abs_ml": statistics.median(a), "mean_abs_ml": statistics.fmean(a),
            "p90_abs_ml": percentile(a, 0.9), "max_abs_ml": max(a), "mean_signed_ml": statistics.fmean(errors)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", required=True, help="hemexp synth --followup folder (labels.csv)")
    ap.add_argument("--expansion", required=True, help="hemexp expansion output folder (expansion.csv)")
    ap.add_argument("--json", help="write the report here too")
    a = ap.parse_args()

    truth = {r["case_id"]: r for r in read_rows(f"{a.truth}/labels.csv")}
    rows = read_rows(f"{a.expansion}/expansion.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    errors, groups, ivh = [], {"<10 mL": [], "10-30 mL": [], ">=30 mL": []}, {"with IVH": [], "without IVH": []}
    agree = {d: [0, 0, {"tp": 0, "fp": 0, "tn": 0, "fn": 0}] for d in DEFINITIONS}
    worst = []
    for r in ok:
        t = truth[r["pair_id"]]
        b, f = float(t["volume_ml"]), float(t["followup_volume_ml"])
        e = float(r["growth_ml"]) - (f - b)
        errors.append(e)
        groups["<10 mL" if b < 10 else "10-30 mL" if b < 30 else ">=30 mL"].append(e)
        ivh["with IVH" if t.get("ivh") == "1" else "without IVH"].append(e)
        worst.append((abs(e), r["pair_id"], b, f, float(r["baseline_volume_ml"]), float(r["followup_volume_ml"])))
        for d, rule in DEFINITIONS.items():
            truth_label = rule(b, f)
            measured = r[d] == "1"
            agree[d][0] += int(truth_label == measured)
            agree[d][1] += 1
            key = ("t" if truth_label == measured else "f") + ("p" if measured else "n")
            agree[d][2][key] += 1
    report = {
        "pairs": len(rows), "ok": len(ok),
        "growth_error": error_stats(errors),
        "growth_error_by_baseline_volume": {k: error_stats(v) for k, v in groups.items()},
        "growth_error_by_ivh": {k: error_stats(v) for k, v in ivh.items()},
        "label_agreement": {},
        "worst_pairs": [{"pair_id": w[1], "abs_error_ml": w[0], "true_ml": [w[2], w[3]], "measured_ml": [w[4], w[5]]}
                        for w in sorted(worst, reverse=True)[:5]],
    }
    for d, (k, n, conf) in agree.items():
        lo, hi = wilson(k, n)
        report["label_agreement"][d] = {"agree": k, "n": n, "fraction": k / n if n else float("nan"),
                                        "wilson95": [lo, hi], "truth_positives": conf["tp"] + conf["fn"], **conf}
    g = report["growth_error"]
    print(f"pairs {len(rows)}, ok {len(ok)}")
    if g["n"]:
        print(f"growth error: median |e| {g['median_abs_ml']:.3f} mL, mean |e| {g['mean_abs_ml']:.3f}, "
              f"p90 {g['p90_abs_ml']:.3f}, max {g['max_abs_ml']:.3f}, mean signed {g['mean_signed_ml']:+.3f}")
    for name, part in list(report["growth_error_by_baseline_volume"].items()) + list(report["growth_error_by_ivh"].items()):
        if part["n"]:
            print(f"  {name:12s} n {part['n']:3d}: median |e| {part['median_abs_ml']:.3f}, max {part['max_abs_ml']:.3f}, "
                  f"mean signed {part['mean_signed_ml']:+.3f}")
    for d, s in report["label_agreement"].items():
        print(f"{d:16s} agreement {s['agree']}/{s['n']} = {s['fraction']:.3f} (Wilson 95% {s['wilson95'][0]:.3f}-"
              f"{s['wilson95'][1]:.3f}); true expansions {s['truth_positives']}; tp {s['tp']} fp {s['fp']} "
              f"tn {s['tn']} fn {s['fn']}")
    for w in report["worst_pairs"]:
        print(f"  worst: {w['pair_id']} |e| {w['abs_error_ml']:.2f} mL, true {w['true_ml'][0]:.2f}->{w['true_ml'][1]:.2f}, "
              f"measured {w['measured_ml'][0]:.2f}->{w['measured_ml'][1]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
