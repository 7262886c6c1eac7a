"""Self-test of scripts/train_classifier.py and scripts/classifier_report.py on small synthetic
data made here (no hemexp binary needed); plain asserts, under a minute on one thread:

    /usr/bin/python3 scripts/test_train_classifier.py
"""
import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import classifier_report  # noqa: E402
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402
import island_detector  # noqa: E402
import train_classifier as tc  # noqa: E402

ROI = {"size": [8, 16, 16], "spacing_mm": [3.0, 3.0, 4.0],
       "channels": [{"name": "brain", "window_hu": [0, 80]}, {"name": "blood", "window_hu": [40, 90]},
                    {"name": "mask"}], "centre": "mask_centroid"}
NETWORK = {"architecture": "ViT", "in_channels": 3, "image_size": [8, 16, 16], "patch_size": [4, 8, 8],
           "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32, "layer_norm_eps": 1e-6, "dropout": 0.0}
COLUMNS = ["case_id", "file", "source", "he_label", "volume_ml", "mask_fraction_inside", "hypodense_fraction", "hu_sd",
           "hu_cv", "bimodality_coefficient", "satellite_count", "satellite_volume_ml", "surface_ratio", "mean_hu"] + \
    ["true_" + m for m in tc.AUX_MARKERS]


def make_roi(rng, label):
    """A box 'hematoma' on noise; expansion cases are larger and brighter inside the mask (learnable
    by a tiny ViT in a few epochs)."""
    roi = np.clip(rng.normal(0.3, 0.05, (3, 8, 16, 16)), 0, 1).astype(np.float32)
    d, h, w = (4, rng.randint(8, 11), rng.randint(8, 11)) if label else (2, rng.randint(4, 7), rng.randint(4, 7))
    z0, y0, x0 = rng.randint(0, 8 - d + 1), rng.randint(0, 16 - h + 1), rng.randint(0, 16 - w + 1)
    box = (slice(z0, z0 + d), slice(y0, y0 + h), slice(x0, x0 + w))
    level = 0.8 if label else 0.5
    roi[0][box] = np.clip(rng.normal(level, 0.05, (d, h, w)), 0, 1)
    roi[1][box] = np.clip(rng.normal(level, 0.05, (d, h, w)), 0, 1)
    roi[2] = 0
    roi[2][box] = 1
    return roi, d * h * w * 0.036


def make_cohort(folder, n, prevalence, seed, labels=None, tiny=0, noisy=0, clinical=False):
    """A prepared folder: cases.csv (with quoted fields and empty markers) + one ROI file per case.
    The first `tiny` cases get volume 0.1 mL (below min_volume_ml: must be left out); the last
    `noisy` cases look like the other class (so the cohort is not separable). clinical: as `hemexp
    prepare --run RUN --labels` writes it for your own labels (mask_source predicted, no generator
    truth columns filled)."""
    os.makedirs(folder)
    rng = np.random.RandomState(seed)
    if labels is None:
        labels = [1 if i < round(n * prevalence) else 0 for i in range(n)]
        rng.shuffle(labels)
    rows = []
    for i, label in enumerate(labels):
        case_id = f"{os.path.basename(folder)}_{i:03d}"
        roi, volume = make_roi(rng, 1 - label if i >= n - noisy else label)
        hemexp_safetensors.save(os.path.join(folder, case_id + ".safetensors"), {"roi": torch.from_numpy(roi)},
                                {"case_id": case_id, "roi_recipe": json.dumps(ROI)})
        rows.append({"case_id": case_id, "file": case_id + ".safetensors", "source": f"synth, seed {seed}",
                     "he_label": label, "volume_ml": 0.1 if i < tiny else round(volume, 3),
                     "mask_fraction_inside": 1, "hypodense_fraction": "" if i % 7 == 0 else rng.rand(),
                     "hu_sd": 5 + 3 * label + rng.rand(), "hu_cv": rng.rand() * 0.2, "bimodality_coefficient": rng.rand(),
                     "satellite_count": rng.randint(0, 3), "satellite_volume_ml": rng.rand(),
                     "surface_ratio": 1 + rng.rand(), "mean_hu": 60 + rng.rand(),
                     **{"true_" + m: (label if m == "heterogeneity" else int(rng.rand() < 0.3)) for m in tc.AUX_MARKERS}})
    columns = COLUMNS
    if clinical:
        columns = COLUMNS[:3] + ["mask_source"] + COLUMNS[3:] + ["he_probability", "he_observable_probability"]
        for r in rows:
            r.update({"mask_source": "predicted", **{"true_" + m: "" for m in tc.AUX_MARKERS}})
    with open(os.path.join(folder, "cases.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns, quoting=csv.QUOTE_NONNUMERIC)
        writer.writeheader()
        writer.writerows(rows)
    return labels


def test_metrics():
    assert tc.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert tc.roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert tc.roc_auc([0, 1, 1, 2], [0, 0, 1, 1]) == 0.875  # one tie between the classes counts 1/2
    assert tc.roc_auc([3, 2, 1], [1, 0, 0]) == 1.0 and tc.roc_auc([1, 2, 3], [1, 0, 0]) == 0.0
    assert math.isnan(tc.roc_auc([0.2, 0.3], [1, 1]))
    assert tc.expected_calibration_error([0.25, 0.25, 0.75, 0.75], [0, 1, 0, 1], 2) == 0.25  # as the C++ test
    assert abs(tc.brier_score([0.2, 0.9], [0, 1]) - 0.025) < 1e-12
    # Youden: cuts at 0.6 and 0.3 both give J 2/3; the higher one wins, halfway to the next lower value
    y = tc.youden_threshold([0.1, 0.2, 0.3, 0.4, 0.6, 0.7], [0, 0, 1, 0, 1, 1])
    assert abs(y["threshold"] - 0.5) < 1e-12, y
    assert abs(y["sensitivity"] - 2 / 3) < 1e-12 and y["specificity"] == 1.0 and abs(y["youden_j"] - 2 / 3) < 1e-12
    m = tc.binary_metrics([0.1, 0.6, 0.7, 0.2], [0, 1, 0, 1], 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1) and m["ppv"] == 0.5 and m["accuracy"] == 0.5
    cats = tc.risk_categories([0.05, 0.09, 0.1, 0.29, 0.3, 0.9], [0, 1, 0, 0, 1, 1])
    assert [(c["name"], c.get("below"), c["n"], c["observed_rate"]) for c in cats] == \
        [("low", 0.1, 2, 0.5), ("intermediate", 0.3, 2, 0.0), ("high", None, 2, 1.0)], cats


def test_platt_and_bootstrap():
    rng = np.random.RandomState(3)
    z = rng.normal(0, 1.5, 20000)
    y = (rng.rand(len(z)) < tc.sigmoid(2.0 * z - 1.0)).astype(int)
    a, b = tc.platt_fit(z, y)
    assert abs(a - 2.0) < 0.1 and abs(b + 1.0) < 0.1, (a, b)
    slope, intercept = tc.calibration_slope_intercept(tc.sigmoid(z), y)  # logit(sigmoid(z)) = z
    assert abs(slope - a) < 0.01 * a and abs(intercept - b) < 0.01, (slope, intercept, a, b)
    a_neg, b_neg = tc.platt_fit(z, 1 - y)  # anti-correlated: the boundary, every case at the prevalence
    assert a_neg == tc.PLATT_MIN_SLOPE and abs(tc.sigmoid(b_neg) - (1 - y).mean()) < 1e-3, (a_neg, b_neg)
    slope, intercept = tc.calibration_slope_intercept(tc.sigmoid(a * z + b), y)
    assert abs(slope - 1) < 0.01 and abs(intercept) < 0.01, (slope, intercept)
    a, b = tc.platt_fit([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])  # separable: finite, positive
    assert 0 < a < 1e4 and math.isfinite(b)
    s, lab = z[:300], y[:300]
    auc = tc.roc_auc(s, lab)
    lo, hi = tc.bootstrap_auc_ci(s, lab, 2000, 1)
    assert lo < auc < hi and 0.5 < lo and hi - lo < 0.2, (lo, auc, hi)
    assert tc.bootstrap_auc_ci(s, lab, 2000, 1) == (lo, hi)  # fixed seed


def test_augment():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 3, 8, 16, 16)
    x[:, 2, 2:6, 4:12, 4:12] = 1
    x[:, :2] = 0.5
    out = tc.augment(x, 2, gen, (1, 3, 3), 0.05, 0.5, 0.5)
    assert out.shape == x.shape and out[:, :2].min() >= 0 and out[:, :2].max() <= 1
    assert torch.equal(x[:, 2, 2:6, 4:12, 4:12], torch.ones(2, 4, 8, 8))  # input untouched
    sums = out[:, 2].sum((1, 2, 3))
    assert all(s in (4 * 36, 4 * 64, 4 * 100) for s in sums.tolist()), sums  # eroded, same, or dilated
    assert torch.equal(tc.shift_zero(torch.arange(4.).view(1, 1, 1, 4), [0, 0, 1]), torch.tensor([[[[0., 0, 1, 2]]]]))
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(out, tc.augment(x, 2, gen2, (1, 3, 3), 0.05, 0.5, 0.5))


def test_train_export_and_report(tmp):
    make_cohort(os.path.join(tmp, "train"), 40, 0.2, 1, tiny=2)
    make_cohort(os.path.join(tmp, "topup"), 14, 0, 2, labels=[0, 0] + [1] * 12)
    make_cohort(os.path.join(tmp, "val"), 30, 0.3, 3, noisy=3)
    card_path = os.path.join(tmp, "card.json")
    with open(card_path, "w") as f:
        json.dump({"name": "test-vit", "network": NETWORK, "roi": ROI, "min_volume_ml": 0.5}, f)
    out = os.path.join(tmp, "cls.safetensors")
    argv = ["--train", os.path.join(tmp, "train"), "--topup", os.path.join(tmp, "topup"), "--target-ratio", "1:2",
            "--val", os.path.join(tmp, "val"), "--card", card_path, "-o", out, "--epochs", "25", "--batch-size", "8",
            "--lr", "3e-3", "--threads", "1", "--seed", "5", "--log", os.path.join(tmp, "train.log")]
    tc.main(argv)
    tensors, meta = hemexp_safetensors.load(out)
    card = json.loads(meta["hemexp_model_card"])
    print(json.dumps({k: v for k, v in card.items() if k != "training"}, indent=1, sort_keys=True))
    # the name comes from the output file (never the template's), the description loses the template's note
    assert card["format_version"] == 1 and card["kind"] == "classification" and card["name"] == "cls"
    assert card["network"] == NETWORK and card["roi"] == ROI and card["min_volume_ml"] == 0.5
    assert card["calibration"]["method"] == "platt" and card["calibration"]["slope"] > 0
    assert math.isfinite(card["calibration"]["intercept"])
    assert 0 < card["decision"]["threshold"] < 1 and "Youden" in card["decision"]["rule"]
    cats = card["risk_categories"]
    assert [c["name"] for c in cats] == ["low", "intermediate", "high"]
    assert cats[0]["below"] == 0.1 and cats[1]["below"] == 0.3 and "below" not in cats[2]
    assert sum(c["n"] for c in cats) == card["validation"]["n"] == 30
    tr = card["training"]
    # base: 38 eligible cases (2 below 0.5 mL), 8 HE (the tiny two are among the first rows, see labels);
    # 1:2 -> round(NHE / 2) - HE top-up cases, only label-1 rows of the top-up folder
    assert tr["cases"]["below_min_volume_left_out"] == 2
    base_he, base_nhe = tr["cases"]["base_he"], tr["cases"]["base_nhe"]
    assert base_he + base_nhe == 38
    assert tr["topup_count"] == round(base_nhe / 2) - base_he
    assert tr["cases"]["he"] == base_he + tr["topup_count"] and tr["cases"]["nhe"] == base_nhe
    assert len(tr["history"]) == 25 and tr["seed"] == 5 and tr["threads"] == 1
    # several top-up folders share N in proportion to their expansion cases (12 and 6 here: 2:1)
    make_cohort(os.path.join(tmp, "topup2"), 8, 0, 4, labels=[0, 1, 1, 1, 1, 1, 1, 0])
    both = tc.topup_rows([os.path.join(tmp, "topup"), os.path.join(tmp, "topup2")], 10, 0.5)
    assert [os.path.basename(f) for f, _ in both] == ["topup"] * 7 + ["topup2"] * 3  # 6.67 + 3.33
    assert [r["case_id"] for _, r in both][:2] == ["topup_002", "topup_003"]  # label-1 rows in order
    assert [r["case_id"] for _, r in both][7:] == ["topup2_001", "topup2_002", "topup2_003"]
    assert len(tc.topup_rows([os.path.join(tmp, "topup"), os.path.join(tmp, "topup2")], 18, 0.5)) == 18
    # training/validation overlap is judged by the scan (source path), not by the case name that
    # every synth cohort reuses
    a = {"case_id": "synth_00000_ct", "source": "procval/synth_00000/ct.nii.gz"}
    b = {"case_id": "synth_00000_ct", "source": "bgval/synth_00000/ct.nii.gz"}
    c = {"case_id": "other", "source": "./procval//synth_00000/ct.nii.gz"}
    assert tc.shared_scans([a], [b]) == []
    assert tc.shared_scans([a, b], [c]) == [os.path.normpath("procval/synth_00000/ct.nii.gz")]
    assert tc.shared_scans([{"case_id": "x", "source": ""}], [{"case_id": "x"}]) == ["x"]
    # the kept epoch: best validation AUC, ties broken by the lower validation loss
    best = min(tr["history"], key=lambda h: (-h["val_auc"], h["val_loss"]))
    assert tr["best_epoch"] == best["epoch"] == card["validation"]["best_epoch"], (tr["best_epoch"], best)
    assert card["research_use_only"] is True  # every case synthetic: the shipped models' wording, unchanged
    assert card["trained_on"] == ("synthetic data from hemexp synth; the expansion label comes from hemexp's own "
                                  "generator model"), card["trained_on"]
    assert {r["kind"] for r in tr["data_provenance"]} == {"synthetic"}
    v = card["validation"]
    assert abs(v["prevalence"] - 0.3) < 1e-9 and v["auc"] >= 0.8, v  # the label is learnable (3 of 30 cases are not)
    assert v["auc_ci95"][0] <= v["auc"] <= v["auc_ci95"][1]
    for key in ("uncalibrated", "calibrated"):
        assert set(v[key]) == {"brier", "ece", "calibration_slope", "calibration_intercept"}
    net = hemexp_nets.ViT(card["network"])
    assert sorted(tensors) == sorted(net.state_dict()), (sorted(tensors), sorted(net.state_dict()))
    net.load_state_dict(tensors, strict=True)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert not os.path.exists(out + ".tmp")
    assert "wrote" in open(os.path.join(tmp, "train.log")).read()

    # same seed and threads: the same weights
    out2 = os.path.join(tmp, "cls2.safetensors")
    tc.main(argv[:argv.index("-o") + 1] + [out2] + argv[argv.index("-o") + 2:])
    tensors2, _ = hemexp_safetensors.load(out2)
    assert all(torch.equal(tensors[k], tensors2[k]) for k in tensors), "training is not deterministic"

    # classifier_report on a fake `hemexp run` over a fake synth cohort
    synth, run = os.path.join(tmp, "synth"), os.path.join(tmp, "run")
    rng = np.random.RandomState(7)
    truth_rows = []
    for i in range(60):
        cid = f"synth_{i:05d}"
        label = int(rng.rand() < 0.3)
        hypo = int(rng.rand() < 0.4)
        truth_rows.append({"case_id": cid, "he_label": label, "he_probability": 0.1 + 0.6 * label,
                           "he_observable_probability": 0.2 + 0.4 * label, "heterogeneity": label, "swirl": 0,
                           "blend": hypo, "black_hole": 0, "island": 0, "irregular_margin": 0, "hypodensity": hypo})
        os.makedirs(os.path.join(synth, cid))
        os.makedirs(os.path.join(run, "cases", f"case{i}"))
        p = None if i == 5 else float(np.clip(0.3 + 0.3 * label + rng.normal(0, 0.2), 0.01, 0.99))
        result = {"case_id": f"case{i}", "status": "ok", "input": {"path": os.path.join(synth, cid, "ct.nii.gz")},
                  "hematoma": {"volume_ml": 0.0 if i == 5 else 10 + 20 * rng.rand(), "mean_hu": 60.0},
                  "markers": {"hypodense_fraction": 0.1 + 0.3 * hypo + 0.05 * rng.rand(),
                              "hu_sd": 5 + 4 * label + rng.rand(), "hu_cv": None, "bimodality_coefficient": 0.4,
                              "satellite_count": 0, "satellite_volume_ml": 0.0, "surface_ratio": 1.2},
                  "he": {"probability": p, "risk": "low", "threshold": 0.45, "calibrated": True, "model": {},
                         "signs": {"blend": 0.2 + 0.6 * hypo, "swirl": 0.5}}}
        if i == 7:
            del result["he"]["signs"]  # a case scored without a sign layer
        with open(os.path.join(run, "cases", f"case{i}", "result.json"), "w") as f:
            json.dump(result, f)
    with open(os.path.join(synth, "labels.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(truth_rows[0]))
        writer.writeheader()
        writer.writerows(truth_rows)
    report = classifier_report.main(["--truth", synth, "--test-run", run, "--model", f"copy={run}",
                                     "--baseline-train", os.path.join(tmp, "train"), os.path.join(tmp, "val"),
                                     "--bootstrap", "200", "--json", os.path.join(tmp, "report.json"),
                                     "--markdown", os.path.join(tmp, "report.md")])
    rows = {r["name"]: r for r in report["models"]}
    assert list(rows) == ["classifier", "copy", "marker baseline", "oracle", "observable oracle"]
    assert rows["classifier"]["n"] == 59 and rows["classifier"]["missing"] == 1 and rows["classifier"]["threshold"] == 0.45
    assert rows["classifier"]["auc"] == rows["copy"]["auc"] > 0.7
    assert rows["marker baseline"]["missing"] == 1  # volume 0: nothing to score
    assert rows["oracle"]["auc"] == 1.0 and rows["oracle"]["n"] == 60
    for r in report["models"]:
        lo, hi = r["auc_ci95"]
        assert lo <= r["auc"] <= hi, r
    pairs = {(p["measured"], p["true"]): p for p in report["markers"]["pairs"]}
    assert pairs[("hypodense_fraction", "hypodensity")]["auc"] == 1.0
    assert pairs[("hu_cv", "heterogeneity")]["n"] == 0 and pairs[("hu_cv", "heterogeneity")]["auc"] is None
    assert len(report["markers"]["all"]) == \
        len(classifier_report.MARKERS + classifier_report.REGION_MARKERS + classifier_report.SHELL_MARKERS) * \
        len(classifier_report.TRUE_MARKERS)
    # a run written before the region and shell markers existed: their pairs are there, with no cases
    assert pairs[("low_density_p10", "blend")]["n"] == 0 and pairs[("low_density_p10", "blend")]["auc"] is None
    assert pairs[("inner_low_fraction", "swirl")]["n"] == 0 and pairs[("inner_low_fraction", "swirl")]["auc"] is None
    # the sign layer's probabilities (he.signs) against the true signs: blend follows the truth; the
    # true swirl is 0 for every case (no AUC); case 7 has none
    signs = {r["true"]: r for r in report["markers"]["signs"]}
    assert sorted(signs) == ["blend", "swirl"] and signs["blend"]["auc"] == 1.0 and signs["blend"]["n"] == 59
    assert signs["swirl"]["auc"] is None and signs["swirl"]["n_true"] == 0
    assert "## The classifier's sign layer against the generator's true signs" in open(os.path.join(tmp, "report.md")).read()
    assert json.load(open(os.path.join(tmp, "report.json")))["cohort"]["n"] == 60
    assert "| marker baseline |" in open(os.path.join(tmp, "report.md")).read()
    assert all(0 < r["ece_if_calibrated_median"] < r["ece_if_calibrated_p95"] for r in report["models"])
    for r in report["models"]:
        if r["calibration_slope_ci95"][0] is not None:  # no CI (null) where the classes separate
            assert r["calibration_slope_ci95"][0] <= r["calibration_slope"] <= r["calibration_slope_ci95"][1], r
    paired = {(r["model"], r["against"]): r for r in report["paired"]}
    assert sorted(paired) == [("classifier", "copy"), ("classifier", "marker baseline"),
                              ("classifier", "observable oracle"), ("copy", "marker baseline"),
                              ("copy", "observable oracle")]
    same = paired[("classifier", "copy")]  # the same run under two names: no difference in any resample
    assert same["n"] == 59 and same["difference"] == 0.0 and same["difference_ci95"] == [0.0, 0.0]
    obs = paired[("classifier", "observable oracle")]
    assert obs["n"] == 59 and obs["auc_reference"] == 1.0  # the observable oracle separates this cohort
    assert abs(obs["ratio"] - rows["classifier"]["auc"]) < 1e-9 and obs["ratio_ci95"][1] <= 1.0
    assert abs(obs["difference"] - (rows["classifier"]["auc"] - 1.0)) < 1e-9 and obs["p_difference_le_0"] == 1.0
    assert "| classifier | observable oracle | 59 |" in open(os.path.join(tmp, "report.md")).read()
    # two cohorts pooled: the cohort and a copy of it (same folder name, so the prefixes are
    # positions) give the same AUC, ECE and prevalence on twice the cases
    copy = os.path.join(tmp, "copy")
    shutil.copytree(synth, os.path.join(copy, "synth"))
    shutil.copytree(run, os.path.join(copy, "run"))
    for i in range(60):
        path = os.path.join(copy, "run", "cases", f"case{i}", "result.json")
        with open(path) as f:
            r = json.load(f)
        r["input"]["path"] = os.path.join(copy, "synth", f"synth_{i:05d}", "ct.nii.gz")
        with open(path, "w") as f:
            json.dump(r, f)
    pooled = classifier_report.main(["--truth", synth, os.path.join(copy, "synth"), "--test-run", run,
                                     os.path.join(copy, "run"), "--bootstrap", "200"])
    prow = {r["name"]: r for r in pooled["models"]}
    assert pooled["cohort"]["n"] == 120 and prow["classifier"]["n"] == 118 and prow["classifier"]["missing"] == 2
    for key in ("auc", "ece", "prevalence", "brier"):
        assert abs(prow["classifier"][key] - rows["classifier"][key]) < 1e-9, key
    assert sorted(prow["classifier"]["missing_case_ids"]) == ["0/synth_00005", "1/synth_00005"]
    try:
        classifier_report.main(["--truth", synth, os.path.join(copy, "synth"), "--test-run", run])
        raise AssertionError("one run folder for two cohorts was accepted")
    except SystemExit:
        pass
    # the Newton fit behind the slope's CI agrees with calibration_slope_intercept (L-BFGS)
    rng = np.random.RandomState(4)
    p = rng.uniform(0.02, 0.9, 300)
    yy = (rng.rand(300) < p ** 1.5).astype(np.int64)
    w, b = classifier_report.logistic_1d(tc.probability_logit(p), yy)
    w_ref, b_ref = tc.calibration_slope_intercept(p, yy)
    assert abs(w - w_ref) < 1e-4 and abs(b - b_ref) < 1e-4, (w, b, w_ref, b_ref)
    # one bin, p = 0.2 for all 400 cases: ECE = |mean(y) - 0.2|, a half-normal with sd sqrt(0.16 / 400) = 0.02,
    # so median 0.6745 x 0.02 and 95th percentile 1.96 x 0.02
    median, p95 = classifier_report.ece_if_calibrated(np.full(400, 0.2), 10, 4000, 3)
    assert abs(median - 0.0135) < 0.002 and abs(p95 - 0.0392) < 0.004, (median, p95)


def test_features_and_aux(tmp):
    """Scalar features in the head (standardised with the training set's mean and SD, written to
    the card) and the training-only auxiliary head on the true markers (not exported)."""
    card_path = os.path.join(tmp, "card-features.json")
    with open(card_path, "w") as f:
        json.dump({"name": "test-vit-features", "network": NETWORK, "roi": ROI, "min_volume_ml": 0.5,
                   "features": ["log_volume_ml", "hu_sd", "hypodense_fraction"]}, f)
    out = os.path.join(tmp, "cls-features.safetensors")
    tc.main(["--train", os.path.join(tmp, "train"), "--val", os.path.join(tmp, "val"), "--card", card_path,
             "-o", out, "--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--threads", "1", "--aux-weight", "0.5"])
    tensors, meta = hemexp_safetensors.load(out)
    card = json.loads(meta["hemexp_model_card"])
    assert card["network"]["num_features"] == 3 and [f["name"] for f in card["features"]] == \
        ["log_volume_ml", "hu_sd", "hypodense_fraction"]
    assert tuple(tensors["head.weight"].shape) == (1, NETWORK["embed_dim"] + 3)
    assert not any(k.startswith("aux") for k in tensors), sorted(tensors)
    assert "true markers" in card["training"]["loss"]
    rows = [r for r in tc.read_cases_csv(os.path.join(tmp, "train")) if float(r["volume_ml"]) >= 0.5]
    sd = np.array([float(r["hu_sd"]) for r in rows])
    f = {n["name"]: n for n in card["features"]}
    assert abs(f["hu_sd"]["mean"] - sd.mean()) < 1e-5 and abs(f["hu_sd"]["sd"] - sd.std()) < 1e-5, f
    logv = np.log([float(r["volume_ml"]) for r in rows])
    assert abs(f["log_volume_ml"]["mean"] - logv.mean()) < 1e-5
    # missing hypodense_fraction -> 0 after standardising, as the C++ tool does
    z = tc.normalise_features([[math.log(2.0), float("nan"), float("nan")]], card["features"])
    assert z[0, 1] == 0 and z[0, 2] == 0 and abs(float(z[0, 0]) - (math.log(2.0) - f["log_volume_ml"]["mean"]) /
                                                 f["log_volume_ml"]["sd"]) < 1e-5
    # the IVH feature as the C++ ClassifierRecipe::feature_vector reads it: ln(1 + mL), NaN without
    # the segmenter's IVH label (an empty ivh_volume_ml field)
    assert abs(tc.feature_value({"ivh_volume_ml": "3.0000"}, "log_ivh_volume_ml") - math.log(4.0)) < 1e-12
    assert tc.feature_value({"ivh_volume_ml": "0.0000"}, "log_ivh_volume_ml") == 0.0
    assert math.isnan(tc.feature_value({"ivh_volume_ml": ""}, "log_ivh_volume_ml"))
    assert math.isnan(tc.feature_value({}, "log_ivh_volume_ml"))
    # --head-init logistic --freeze-feature-weights: the head starts as the regression on the
    # standardised features and keeps those weights; the class token's weights move from 0
    out_fixed = os.path.join(tmp, "cls-fixed.safetensors")
    tc.main(["--train", os.path.join(tmp, "train"), "--val", os.path.join(tmp, "val"), "--card", card_path,
             "-o", out_fixed, "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--threads", "1",
             "--head-init", "logistic", "--freeze-feature-weights"])
    tensors_fixed, meta_fixed = hemexp_safetensors.load(out_fixed)
    init = json.loads(meta_fixed["hemexp_model_card"])["training"]["head_init_logistic"]
    head = tensors_fixed["head.weight"][0].double()
    e = NETWORK["embed_dim"]
    assert torch.allclose(head[e:], torch.tensor(init["weights"], dtype=torch.float64), atol=1e-5), (head[e:], init)
    assert float(head[:e].abs().max()) > 1e-4  # the image part learnt something
    z = tc.normalise_features(np.array([[tc.feature_value(r, n) for n in ["log_volume_ml", "hu_sd", "hypodense_fraction"]]
                                        for r in rows]), card["features"]).numpy().astype(np.float64)
    y = np.array([int(r["he_label"]) for r in rows])
    w, b = tc.fit_logistic(z, y, l2=1e-3)  # the same regression, refitted here
    assert np.allclose(w, init["weights"], atol=1e-4), (w, init["weights"])
    try:
        tc.parse_args(["--train", "a", "--val", "b", "--card", "c", "-o", "d", "--freeze-feature-weights"])
        raise AssertionError("--freeze-feature-weights without --head-init logistic accepted")
    except SystemExit:
        pass
    assert tc.parse_args(["--train", "a", "--val", "b", "c", "--card", "d", "-o", "e"]).val == ["b", "c"]
    try:
        tc.parse_args(["--train", "a", "b", "--val", "c", "b", "--card", "d", "-o", "e"])
        raise AssertionError("a validation folder that is also a training folder accepted")
    except SystemExit:
        pass
    # the PyTorch scorer of classifier_report reads the features of a prepared row
    scored = classifier_report.score_prepared(out, os.path.join(tmp, "val"))
    # one score per prepared case (their sources are no folder: all were one key before)
    assert len(scored) == 30 and all(0 <= v["probability"] <= 1 for v in scored.values()
                                     if not math.isnan(v["probability"]))


def test_sign_layer(tmp):
    """A card with a sign layer (two-stage head): the layer is one logistic regression per sign of
    the true sign on the standardised features, fixed in training; the head reads the sign
    probabilities and the listed head_features, and starts as the regression on them."""
    names = ["log_volume_ml", "hu_sd", "hypodense_fraction"]
    card_path = os.path.join(tmp, "card-signs.json")
    for sign_inputs, width in (("linear", 3), ("quadratic", 3 + 6)):
        check_sign_layer(tmp, names, card_path, sign_inputs, width)
    # a feature the prepared folders have no column for is refused, not silently the training mean
    with open(card_path, "w") as f:
        json.dump({"name": "old-prep", "roi": ROI, "features": ["log_volume_ml", "low_density_p10"],
                   "network": NETWORK}, f)
    try:
        tc.main(["--train", os.path.join(tmp, "train"), "--val", os.path.join(tmp, "val"), "--card", card_path,
                 "-o", os.path.join(tmp, "never.safetensors"), "--epochs", "1", "--threads", "1"])
        raise AssertionError("a card feature without a cases.csv column accepted")
    except SystemExit as e:
        assert "low_density_p10" in str(e) and "older hemexp" in str(e), str(e)
    assert not os.path.exists(os.path.join(tmp, "never.safetensors"))
    # a card whose sign is not one the generator labels is refused before training
    with open(card_path, "w") as f:
        json.dump({"name": "bad", "roi": ROI, "features": names,
                   "network": dict(NETWORK, signs=["spot_sign"], head_features=[])}, f)
    try:
        tc.load_card(card_path)
        raise AssertionError("an unknown sign accepted")
    except SystemExit as e:
        assert "network.signs" in str(e)


def check_sign_layer(tmp, names, card_path, sign_inputs, width):
    """One sign layer of test_sign_layer: linear (width 3) or quadratic sign inputs (3 + 6)."""
    with open(card_path, "w") as f:
        json.dump({"name": "test-vit-signs", "roi": ROI, "min_volume_ml": 0.5, "features": names,
                   "network": dict(NETWORK, signs=["heterogeneity", "swirl"], head_features=[0],
                                   sign_inputs=sign_inputs)}, f)
    out = os.path.join(tmp, "cls-signs.safetensors")
    tc.main(["--train", os.path.join(tmp, "train"), "--val", os.path.join(tmp, "val"), "--card", card_path,
             "-o", out, "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--threads", "1",
             "--head-init", "logistic", "--freeze-feature-weights"])
    tensors, meta = hemexp_safetensors.load(out)
    card = json.loads(meta["hemexp_model_card"])
    e = NETWORK["embed_dim"]
    assert card["network"]["signs"] == ["heterogeneity", "swirl"] and card["network"]["head_features"] == [0]
    assert tuple(tensors["signs.weight"].shape) == (2, width) and tuple(tensors["head.weight"].shape) == (1, e + 2 + 1)
    rows = [r for r in tc.read_cases_csv(os.path.join(tmp, "train")) if float(r["volume_ml"]) >= 0.5]
    z = tc.normalise_features(np.array([[tc.feature_value(r, n) for n in names] for r in rows]),
                              card["features"]).numpy().astype(np.float64)
    if sign_inputs == "quadratic":  # the island detector's numpy expansion: [z, z_i z_j for i <= j]
        z = island_detector.quadratic(z)
    assert card["network"].get("sign_inputs", "linear") == sign_inputs
    for k, sign in enumerate(["heterogeneity", "swirl"]):  # refitted here: the exported layer is that fit, untrained
        w, b = tc.fit_logistic(z, np.array([float(r["true_" + sign]) for r in rows]), l2=1e-3)
        assert np.allclose(tensors["signs.weight"][k].double().numpy(), w, atol=1e-4), (sign, w)
        assert abs(float(tensors["signs.bias"][k]) - b) < 1e-4
    layer = card["training"]["sign_layer"]["signs"]
    # the fake cohort's true heterogeneity is the label, which hu_sd carries; swirl is a coin flip
    assert layer["heterogeneity"]["out_of_fold_auc"] > 0.9 and layer["swirl"]["out_of_fold_auc"] < 0.75, layer
    init = card["training"]["head_init_logistic"]
    assert len(init["weights"]) == 3
    assert torch.allclose(tensors["head.weight"][0, e:].double(), torch.tensor(init["weights"], dtype=torch.float64),
                          atol=1e-5)
    net = hemexp_nets.ViT(card["network"])
    net.load_state_dict(tensors)
    x = torch.as_tensor(z[:4], dtype=torch.float32)
    expect = torch.cat([torch.sigmoid(x @ tensors["signs.weight"].T + tensors["signs.bias"]), x[:, [0]]], 1)
    assert torch.allclose(net.head_inputs(x[:, :len(names)]), expect, atol=1e-6)
    scored = classifier_report.score_prepared(out, os.path.join(tmp, "val"))
    # one score per prepared case (their sources are no folder: all were one key before)
    assert len(scored) == 30 and all(0 <= v["probability"] <= 1 for v in scored.values()
                                     if not math.isnan(v["probability"]))


def refused(fn, *words):
    """fn() must stop with SystemExit whose message (its own, or what it wrote to stderr) holds
    every one of words; returns (exit code, message)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            fn()
    except SystemExit as e:
        message = (str(e.code) if not isinstance(e.code, int) else "") + err.getvalue()
        assert all(w in message for w in words), (words, message)
        return (e.code if isinstance(e.code, int) else 1), message
    raise AssertionError(f"accepted, expected a refusal with {words}")


QUICK = ["--epochs", "1", "--batch-size", "8", "--threads", "1", "--seed", "2"]


def own_cohort(tmp):
    """Your own labelled cases as `hemexp prepare --run --labels` writes them (predicted masks, no
    generator truth), a training and a validation folder, and a card template: (train, val, template)."""
    own_train, own_val = os.path.join(tmp, "own_train"), os.path.join(tmp, "own_val")
    template = os.path.join(tmp, "own-template.json")
    if not os.path.exists(own_train):
        make_cohort(own_train, 24, 0.35, 11, clinical=True)
        make_cohort(own_val, 16, 0.4, 12, clinical=True)
        with open(template, "w") as f:
            json.dump({"name": "hemexp-template-name", "network": NETWORK, "roi": ROI, "min_volume_ml": 0.5,
                       "description": "A toy ViT. Template: scripts/train_classifier.py fills the rest.",
                       "trained_on": "synthetic data from hemexp synth; (the template's)",
                       "features": ["log_volume_ml", "hu_sd"]}, f)
    return own_train, own_val, template


def test_own_cohort_card(tmp):
    """D1: a classifier trained on your own labelled cases is named after its file (or --name),
    never the template, and its trained_on says what it was trained on (with a synthetic top-up)."""
    own_train, own_val, template = own_cohort(tmp)
    quick = QUICK
    out = os.path.join(tmp, "my-cls.safetensors")
    tc.main(["--train", own_train, "--topup", os.path.join(tmp, "topup"), "--topup-count", "3", "--val", own_val,
             "--card", template, "-o", out] + quick)
    card = json.loads(hemexp_safetensors.load(out)[1]["hemexp_model_card"])
    assert card["name"] == "my-cls", card["name"]
    assert card["description"] == "A toy ViT.", card["description"]
    on = card["trained_on"]
    assert not on.startswith("synthetic data from hemexp synth"), on
    assert on.startswith("training: 24 labelled cases (labels from a labels file, ROIs from hemexp's predicted "
                         "masks); top-up: 3 synthetic cases from hemexp synth"), on
    assert "validation: 16 labelled cases" in on, on
    prov = {(r["role"], r["kind"]): r for r in card["training"]["data_provenance"]}
    assert sorted(prov) == [("topup", "synthetic"), ("training", "labelled"), ("validation", "labelled")], prov
    assert prov[("training", "labelled")]["mask_source"] == ["predicted"] and prov[("training", "labelled")]["cases"] == 24
    out_named = os.path.join(tmp, "named.safetensors")
    tc.main(["--train", own_train, "--val", own_val, "--card", template, "-o", out_named, "--name", "site-a-v1"] + quick)
    card = json.loads(hemexp_safetensors.load(out_named)[1]["hemexp_model_card"])
    assert card["name"] == "site-a-v1" and card["trained_on"].startswith("training: 24 labelled cases"), card["name"]
    assert tc.data_kind([{"mask_source": "predicted", "he_observable_probability": "0.3"}]) == "synthetic"
    assert tc.data_kind([{"mask_source": "predicted", "true_swirl": "1"}]) == "labelled"  # a clinic's own sign column


def test_early_refusals(tmp):
    """D4: -o into a missing or unwritable folder, a missing --card, --log in a missing folder: refused
    with exit status 2 before anything is trained (it was a traceback after the whole training)."""
    own_train, own_val, template = own_cohort(tmp)
    quick = QUICK
    # D4: -o into a missing or unwritable folder, a missing --card, --log in a missing folder: exit 2 at once
    base = ["--train", own_train, "--val", own_val, "--card", template] + quick
    started = time.perf_counter()
    code, msg = refused(lambda: tc.main(base + ["-o", os.path.join(tmp, "nonexist", "x.safetensors")]),
                        "does not exist", "nonexist")
    assert code == 2 and time.perf_counter() - started < 5, (code, msg)
    code, _ = refused(lambda: tc.main(["--train", own_train, "--val", own_val, "--card", os.path.join(tmp, "nope.json"),
                                       "-o", os.path.join(tmp, "y.safetensors")] + quick), "--card", "nope.json")
    assert code == 2
    code, _ = refused(lambda: tc.main(base + ["-o", os.path.join(tmp, "z.safetensors"), "--log",
                                              os.path.join(tmp, "nologdir", "train.log")]), "--log", "nologdir")
    assert code == 2 and not os.path.exists(os.path.join(tmp, "z.safetensors"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = os.path.join(tmp, "locked")
        os.makedirs(locked)
        os.chmod(locked, 0o555)
        try:
            code, _ = refused(lambda: tc.main(base + ["-o", os.path.join(locked, "x.safetensors")]), "not writable")
            assert code == 2
        finally:
            os.chmod(locked, 0o755)


def test_spreadsheet_cases(tmp):
    """D8: a cases.csv re-saved by Excel is read; a split folder without its ROI files is named."""
    own_train, own_val, template = own_cohort(tmp)
    quick = QUICK
    # D8: a cases.csv re-saved by Excel (byte-order mark, CRLF) reads as the original; a missing ROI
    # file names the case and the file before anything is trained
    bom = os.path.join(tmp, "own_val_bom")
    shutil.copytree(own_val, bom)
    text = open(os.path.join(own_val, "cases.csv"), newline="").read().replace("\r\n", "\n")
    with open(os.path.join(bom, "cases.csv"), "w", newline="", encoding="utf-8") as f:
        f.write("\ufeff" + text.replace("\n", "\r\n"))
    assert tc.read_cases_csv(bom) == tc.read_cases_csv(own_val)
    nofiles = os.path.join(tmp, "own_val_nofiles")
    os.makedirs(nofiles)
    shutil.copy(os.path.join(own_val, "cases.csv"), nofiles)
    first = tc.read_cases_csv(own_val)[0]["case_id"]
    refused(lambda: tc.main(["--train", own_train, "--val", nofiles, "--card", template,
                             "-o", os.path.join(tmp, "nf.safetensors")] + quick),
            f"case {first}", os.path.join(nofiles, first + ".safetensors"), "does not exist")


def test_absent_feature(tmp):
    """D9: a card feature with no value in any training case is refused, unless the card allows it."""
    own_train, own_val, _ = own_cohort(tmp)
    quick = QUICK
    # D9: a card feature blank in every training case (ivh_volume_ml from a two-class segmenter run)
    # is refused, naming it and what leaves it blank; allowed when the card lists it as absent
    ivh_card = os.path.join(tmp, "ivh-template.json")
    with open(ivh_card, "w") as f:
        json.dump({"name": "t", "network": NETWORK, "roi": ROI, "features": ["log_volume_ml", "log_ivh_volume_ml"]}, f)
    for d in (own_train, own_val):  # the column is there (a current hemexp prepare), every value blank
        with open(os.path.join(d, "cases.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        with open(os.path.join(d, "cases.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]) + ["ivh_volume_ml"])
            writer.writeheader()
            writer.writerows([dict(r, ivh_volume_ml="") for r in rows])
    refused(lambda: tc.main(["--train", own_train, "--val", own_val, "--card", ivh_card,
                             "-o", os.path.join(tmp, "noivh.safetensors")] + quick),
            "log_ivh_volume_ml", "ivh_volume_ml", "two-class", "features_may_be_absent")
    assert not os.path.exists(os.path.join(tmp, "noivh.safetensors"))
    with open(ivh_card, "w") as f:
        json.dump({"name": "t", "network": NETWORK, "roi": ROI, "features": ["log_volume_ml", "log_ivh_volume_ml"],
                   "features_may_be_absent": ["log_ivh_volume_ml"]}, f)
    tc.main(["--train", own_train, "--val", own_val, "--card", ivh_card, "-o", os.path.join(tmp, "noivh.safetensors")]
            + quick)
    norms = json.loads(hemexp_safetensors.load(os.path.join(tmp, "noivh.safetensors"))[1]["hemexp_model_card"])["features"]
    assert norms[1] == {"name": "log_ivh_volume_ml", "mean": 0.0, "sd": 1.0}, norms


def write_fake_run(run, cases, working=None):
    """A `hemexp run` folder: results.csv listing the cases, cases/<id>/result.json; cases:
    (case_id, input path, probability)."""
    os.makedirs(os.path.join(run, "cases"))
    with open(os.path.join(run, "results.csv"), "w") as f:
        f.write("case_id,status\n" + "".join(f"{c},ok\n" for c, _, _ in cases))
    if working:
        with open(os.path.join(run, "run.json"), "w") as f:
            json.dump({"working_directory": working}, f)
    for k, (case_id, path, p) in enumerate(cases):
        os.makedirs(os.path.join(run, "cases", case_id))
        with open(os.path.join(run, "cases", case_id, "result.json"), "w") as f:
            json.dump({"case_id": case_id, "status": "ok", "input": {"path": path},
                       "hematoma": {"volume_ml": 10.0 + k, "mean_hu": 60.0},
                       "markers": {"hypodense_fraction": 0.1, "hu_sd": 5.0 + (p or 0)},
                       "he": {"probability": p, "threshold": 0.5, "model": {}}}, f)


def test_report_follow_ups(tmp):
    """D3: classifier_report.py never lets a follow-up scan in its baseline's folder replace it."""
    rng = np.random.RandomState(21)
    # D3a: synth layout with follow-up scans beside each baseline (hemexp expansion's run): the
    # baseline ct.nii.gz is the case the truth is about; the follow-ups, listed after their
    # baselines, score the opposite here, and must not replace them
    synth, run = os.path.join(tmp, "fu_synth"), os.path.join(tmp, "fu_run")
    truth_rows, cases = [], []
    for i in range(30):
        cid, label = f"synth_{i:05d}", int(i % 3 == 0)
        truth_rows.append({"case_id": cid, "he_label": label, "he_probability": 0.2 + 0.5 * label})
        os.makedirs(os.path.join(synth, cid))
        p = float(np.clip(0.3 + 0.4 * label + rng.normal(0, 0.15), 0.01, 0.99))
        cases.append((cid + "_ct", os.path.join(synth, cid, "ct.nii.gz"), p))
        cases.append((cid + "_followup_ct", os.path.join(synth, cid, "followup_ct.nii.gz"), 1.0 - p))
    with open(os.path.join(synth, "labels.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(truth_rows[0]))
        writer.writeheader()
        writer.writerows(truth_rows)
    write_fake_run(run, cases)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        report = classifier_report.main(["--truth", synth, "--test-run", run, "--bootstrap", "50"])
    row = {r["name"]: r for r in report["models"]}["classifier"]
    y = [t["he_label"] for t in truth_rows]
    expect = tc.roc_auc([c[2] for c in cases[::2]], y)
    assert row["n"] == 30 and abs(row["auc"] - expect) < 1e-5 and expect > 0.8, (row["auc"], expect)
    assert "30 case(s) read another scan" in err.getvalue() and "synth_00000_followup_ct" in err.getvalue(), err.getvalue()


def test_report_labels(tmp):
    """D2 (and D3 on the flat layout): classifier_report.py --labels reads a clinic's case_id,he_label
    file, keyed by the run's case ids, for a run of scans/P001.nii.gz ...; --scored keys by case id."""
    rng = np.random.RandomState(22)
    # D3b + D2: the flat clinical layout (scans/P001.nii.gz ..., run ids scans_P001 ...), labels keyed
    # by the run's case ids in a clinic's file: Windows-1252, CRLF, a site column, a blank label
    work = os.path.join(tmp, "clinic")
    os.makedirs(os.path.join(work, "scans"))
    cases, rows = [], ["case_id,he_label,site"]
    for i in range(40):
        label = int(i % 5 < 2)
        p = float(np.clip(0.3 + 0.35 * label + rng.normal(0, 0.2), 0.01, 0.99))
        cases.append((f"scans_P{i:03d}", f"scans/P{i:03d}.nii.gz", p))
        rows.append(f"scans_P{i:03d},{'' if i == 7 else label},Z\u00fcrich")
    labels = os.path.join(work, "labels.csv")
    with open(labels, "w", encoding="cp1252", newline="") as f:
        f.write("\r\n".join(rows) + "\r\n")
    clinic_run = os.path.join(work, "run")
    write_fake_run(clinic_run, cases, working=work)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        report = classifier_report.main(["--labels", labels, "--test-run", clinic_run, "--bootstrap", "50",
                                         "--markdown", os.path.join(tmp, "clinic.md")])
    rows_by = {r["name"]: r for r in report["models"]}
    assert list(rows_by) == ["classifier"], list(rows_by)  # no oracle rows without the generator
    keep = [k for k in range(40) if k != 7]
    yy = [int(k % 5 < 2) for k in keep]
    expect = tc.roc_auc([cases[k][2] for k in keep], yy)
    r = rows_by["classifier"]
    assert r["n"] == 39 and report["cohort"]["n"] == 39 and abs(r["auc"] - expect) < 1e-5, (r["n"], r["auc"], expect)
    assert r["auc_ci95"][0] <= r["auc"] <= r["auc_ci95"][1] and r["brier"] is not None and r["ece"] is not None
    assert r["calibration_slope"] is not None and r["sensitivity"] is not None and r["threshold"] == 0.5
    assert "1 blank label(s) skipped" in err.getvalue() and "Windows-1252" in err.getvalue(), err.getvalue()
    assert "case(s) not in" not in err.getvalue(), err.getvalue()  # the blank one is counted once, as blank
    assert report["markers"] is None and any("No oracle rows" in n for n in report["notes"]), report["notes"]
    md = open(os.path.join(tmp, "clinic.md")).read()
    assert "39 labelled cases" in md and "No oracle rows" in md, md[:400]


def test_report_scored_and_collisions(tmp):
    """D3: --scored (score_prepared) on the flat layout keys by case id; two scans of one patient's
    folder on one clinical label are refused, not merged."""
    work = os.path.join(tmp, "clinic")
    # --scored on the prepared flat layout: one score per case, not all under the folder name "scans"
    prep = os.path.join(tmp, "clinic_prep")
    os.makedirs(prep)
    with open(os.path.join(tmp, "val", "cases.csv"), newline="") as f:
        val_rows = list(csv.DictReader(f))
    for k, vr in enumerate(val_rows):
        vr["source"] = os.path.join(work, "scans", f"P{k:03d}.nii.gz")
        shutil.copy(os.path.join(tmp, "val", vr["file"]), prep)
    with open(os.path.join(prep, "cases.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(val_rows[0]))
        writer.writeheader()
        writer.writerows(val_rows)
    scored = classifier_report.score_prepared(os.path.join(tmp, "cls.safetensors"), prep)
    assert sorted(scored) == sorted(vr["case_id"] for vr in val_rows), sorted(scored)[:3]
    # two scans of one patient's folder matched by the folder name of a clinical label: refused, not merged
    twice = os.path.join(tmp, "twice_run")
    write_fake_run(twice, [("a1", "/data/P1/baseline.nii.gz", 0.3), ("a2", "/data/P1/followup.nii.gz", 0.6),
                           ("a3", "/data/P2/baseline.nii.gz", 0.4)])
    by_folder = os.path.join(tmp, "by_folder.csv")
    with open(by_folder, "w") as f:
        f.write("case_id,he_label\nP1,1\nP2,0\n")
    refused(lambda: classifier_report.main(["--labels", by_folder, "--test-run", twice, "--bootstrap", "10"]),
            "2 cases match the label of P1", "a1", "a2")


def test_report_small_cohorts():
    """A small cohort: a bootstrap resample can give the reference AUC 0 (the ratio has no value
    there, and the report once died of it); resamples whose logits separate the classes have no
    calibration slope, so the slope CI is not given when too many are; the fit of the others
    halves its steps (a full Newton step ran off); a marker with one value in every case is
    'constant', not AUC 0.5."""
    y = np.array([0, 1, 1, 0, 1, 0])
    p = np.array([0.99, 0.3029, 0.0812, 0.0960, 0.1605, 0.1894])
    ref = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.7])  # AUC 0 on every resample with both classes
    r = classifier_report.paired_auc(p, ref, y, resamples=200)
    assert r["auc_reference"] == 0.0 and math.isnan(r["ratio"]) and math.isnan(r["ratio_ci95"][0]), r
    assert r["difference"] == r["auc"] and all(math.isfinite(v) for v in r["difference_ci95"]), r
    assert classifier_report.separated(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 1]))
    assert classifier_report.separated(np.array([1.0, 2.0, 2.0]), np.array([0, 0, 1]))  # they meet at 2: no fit
    assert not classifier_report.separated(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]))
    ci = classifier_report.bootstrap_slope_ci(p, y, resamples=200)["calibration_slope_ci95"]
    assert all(math.isnan(v) for v in ci), ci  # on six cases most resamples are separated
    rng = np.random.default_rng(3)
    big_p = rng.uniform(0.05, 0.95, 400)
    big_y = (rng.uniform(size=400) < big_p).astype(np.int64)
    lo, hi = classifier_report.bootstrap_slope_ci(big_p, big_y, resamples=200)["calibration_slope_ci95"]
    assert 0.5 < lo < 1.0 < hi < 1.6, (lo, hi)
    ids = ["a", "b", "c", "d"]
    run = {i: {"markers": {"satellite_count": 0}} for i in ids}
    truth = {i: {"island": str(k % 2)} for k, i in enumerate(ids)}
    m = classifier_report.marker_auc("satellite_count", "island", ids, run, truth, 50, 1)
    assert m["constant"] is True and math.isnan(m["auc"]) and m["n"] == 4, m
    # Not separated, yet a full Newton step from (1, 0) ran off to (117413, -859063): with step
    # halving, the maximum (a grid search and gradient ascent: -0.4677, -0.4515; ridge 1e-6).
    w, b = classifier_report.logistic_1d(tc.probability_logit(p), y)
    assert abs(w + 0.4677) < 2e-3 and abs(b + 0.4515) < 2e-3, (w, b)


def main():
    torch.set_num_threads(1)
    start = time.perf_counter()
    test_metrics()
    test_platt_and_bootstrap()
    test_augment()
    with tempfile.TemporaryDirectory() as tmp:
        test_train_export_and_report(tmp)
        test_features_and_aux(tmp)
        test_sign_layer(tmp)
        test_own_cohort_card(tmp)
        test_early_refusals(tmp)
        test_spreadsheet_cases(tmp)
        test_absent_feature(tmp)
        test_report_follow_ups(tmp)
        test_report_labels(tmp)
        test_report_scored_and_collisions(tmp)
    test_report_small_cohorts()
    print(f"test_train_classifier: all passed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
