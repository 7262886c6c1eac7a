"""Self-test of scripts/recalibrate_classifier.py on a run folder made here with known logits and
labels drawn from a known calibration; with the hemexp binary as the first argument, also that
hemexp reads the recalibrated shipped classifier's card:

    /usr/bin/python3 scripts/test_recalibrate_classifier.py [build/hemexp]
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_safetensors  # noqa: E402
import recalibrate_classifier as rc  # noqa: E402
import train_classifier as tc  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CARD = {"name": "toy", "kind": "classification", "calibration": {"method": "platt", "slope": 1.0, "intercept": 0.0},
        "decision": {"rule": "toy", "threshold": 0.5}, "validation": {"ece": 0.5},
        "risk_categories": [{"name": "low", "below": 0.1}, {"name": "intermediate", "below": 0.3}, {"name": "high"}]}


def write_run(folder, sha, z, y, extra=()):
    """cases/c<i>/result.json with he.logit z[i], results.csv listing them, labels.csv with y[i];
    extra: (id, result) pairs, listed and labelled 0 unless named unlabelled; a case folder of an
    earlier run ("stale", labelled 1, listed in no table) and a label that matches no case."""
    os.makedirs(folder)
    rows, listed = ["case_id,he_label"], []
    for i, (zi, yi) in enumerate(zip(z, y)):
        rows.append(f"c{i},{yi}")
        listed.append(f"c{i}")
        os.makedirs(os.path.join(folder, "cases", f"c{i}"))
        with open(os.path.join(folder, "cases", f"c{i}", "result.json"), "w") as f:
            json.dump({"case_id": f"c{i}", "status": "ok", "he": {"logit": float(zi), "model": {"sha256": sha}}}, f)
    stale = {"case_id": "stale", "status": "ok", "he": {"logit": 9.0, "model": {"sha256": sha}}}
    for case_id, result in list(extra) + [("stale", stale)]:
        os.makedirs(os.path.join(folder, "cases", case_id))
        with open(os.path.join(folder, "cases", case_id, "result.json"), "w") as f:
            json.dump(result, f)
        if case_id != "stale":
            listed.append(case_id)
        if case_id != "unlabelled":
            rows.append(f"{case_id},{1 if case_id == 'stale' else 0}")
    rows.append("nowhere,1")
    with open(os.path.join(folder, "results.csv"), "w") as f:
        f.write("case_id,status\n" + "".join(f"{c},ok\n" for c in listed))
    with open(os.path.join(folder, "labels.csv"), "w", encoding="utf-8-sig") as f:  # as a spreadsheet saves it
        f.write("\n".join(rows) + "\n")


def stderr_of(argv):
    """recalibrate_classifier.main(argv)'s exit status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = rc.main(argv)
    return code, err.getvalue()


def expect_refused(argv, words, out):
    try:
        rc.main(argv)
        raise AssertionError(f"accepted: {argv}")
    except SystemExit as e:
        assert words in str(e), e
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    tmp = tempfile.mkdtemp(prefix="hemexp-recal-")
    try:
        model = os.path.join(tmp, "toy.safetensors")
        tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
        hemexp_safetensors.save(model, tensors, {rc.CARD_KEY: json.dumps(CARD)})
        sha = rc.sha256_of(model)
        rng = np.random.RandomState(7)
        z = rng.normal(0.0, 1.0, 4000)
        y = (rng.uniform(size=z.size) < tc.sigmoid(2.0 * z - 1.5)).astype(int)  # the truth: slope 2, intercept -1.5
        small = {"case_id": "small", "status": "ok",
                 "he": {"logit": None, "reason": "hematoma 0.29 mL is below the classifier's minimum of 0.50 mL",
                        "model": {"sha256": sha}}}
        small2 = dict(small, case_id="small2", he=dict(small["he"], reason="hematoma 0.41 mL is below the classifier's "
                                                       "minimum of 0.50 mL"))
        failed = {"case_id": "failed", "status": "failed", "he": None}
        unlabelled = {"case_id": "unlabelled", "status": "ok", "he": {"logit": 0.3, "model": {"sha256": sha}}}
        run = os.path.join(tmp, "run")
        write_run(run, sha, z, y, [("small", small), ("small2", small2), ("failed", failed), ("unlabelled", unlabelled)])
        labels = os.path.join(run, "labels.csv")

        # Platt: recovers the truth's slope and intercept; weights copied bit for bit.
        out = os.path.join(tmp, "platt.safetensors")
        code, err = stderr_of(["--model", model, "--run", run, "--labels", labels, "-o", out])
        assert code == 0 and "2 of 4005 labels in " + labels + " matched no case of " + run + " (e.g. nowhere, stale)" \
            in err, err
        assert not os.path.exists(out + ".tmp")
        t2, meta = hemexp_safetensors.load(out)
        assert torch.equal(t2["w"], tensors["w"])
        card = json.loads(meta[rc.CARD_KEY])
        cal = card["calibration"]
        assert abs(cal["slope"] - 2.0) < 0.15 and abs(cal["intercept"] + 1.5) < 0.15, cal
        rec = card["recalibration"]
        assert rec["n"] == 4000 and rec["events"] == int(y.sum()), rec
        assert rec["left_out"] == {"no label": 1, "no probability (hematoma N mL is below the classifier's minimum of "
                                   "N mL)": 2, "no probability (failed)": 1}, rec["left_out"]  # "stale": not this run's
        assert rec["source"]["sha256"] == sha and rec["source"]["calibration"] == CARD["calibration"]
        assert "validation" not in card and rec["source"]["validation"] == CARD["validation"]  # the old numbers
        assert rec["before"]["ece"] > 0.05 > rec["after_in_sample"]["ece"], rec
        assert abs(rec["after_in_sample"]["calibration_slope"] - 1.0) < 0.01, rec
        p = tc.sigmoid(cal["slope"] * z + cal["intercept"])
        youden = tc.youden_threshold(p, y)
        assert card["decision"]["threshold"] == youden["threshold"], (card["decision"], youden)  # stored in full
        assert [c["name"] for c in card["risk_categories"]] == ["low", "intermediate", "high"]
        assert sum(c["n"] for c in card["risk_categories"]) == 4000
        low = p < 0.1
        assert abs(card["risk_categories"][0]["observed_rate"] - y[low].mean()) < 1e-5
        assert card["name"] == "toy-recalibrated"

        # Intercept only: the slope is kept and the mean probability equals the observed rate, also
        # when the old calibration is far off (a Newton step from 0 ran away there).
        for old_intercept in (0.0, 4.0, -6.0):
            far = os.path.join(tmp, "far.safetensors")
            hemexp_safetensors.save(far, tensors, {rc.CARD_KEY: json.dumps(
                dict(CARD, calibration={"method": "platt", "slope": 1.0, "intercept": old_intercept}))})
            write_run(os.path.join(tmp, f"far{old_intercept}"), rc.sha256_of(far), z, y)
            out = os.path.join(tmp, "intercept.safetensors")
            assert rc.main(["--model", far, "--run", os.path.join(tmp, f"far{old_intercept}"), "--labels",
                            os.path.join(tmp, f"far{old_intercept}", "labels.csv"), "--method", "intercept",
                            "-o", out]) == 0
            cal = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["calibration"]
            assert cal["slope"] == 1.0, cal
            assert abs(tc.sigmoid(z + cal["intercept"]).mean() - y.mean()) < 1e-9, (old_intercept, cal)

        # A sensitivity target instead of Youden's J.
        out = os.path.join(tmp, "sens.safetensors")
        assert rc.main(["--model", model, "--run", run, "--labels", labels, "--sensitivity", "0.9", "-o", out]) == 0
        card = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])
        decision, cal = card["decision"], card["calibration"]
        assert decision["sensitivity"] >= 0.9 and decision["rule"].startswith("sensitivity >= 0.9"), decision
        p = tc.sigmoid(cal["slope"] * z + cal["intercept"])
        sens = ((p >= decision["threshold"]) & (y == 1)).sum() / y.sum()  # the stored cut gives the stored numbers
        assert abs(sens - decision["sensitivity"]) < 1e-6, (sens, decision)
        higher = np.unique(p[p >= decision["threshold"]])[1]  # the next cut up misses the target
        assert ((p >= higher) & (y == 1)).sum() / y.sum() < 0.9

        # One labels file for two runs that share case ids: refused.
        expect_refused(["--model", model, "--run", run, run, "--labels", labels, "-o", out + "2"],
                       "give one --labels per --run", out + "2")

        # Labels keyed by the folder that holds each scan (as `hemexp prepare` matches); one label
        # reached by two scans in one folder is refused; one labels file for two runs with
        # different ids: every label matched, no warning.
        def folder_run(name, folders):
            folder = os.path.join(tmp, name)
            os.makedirs(os.path.join(folder, "cases"))
            with open(os.path.join(folder, "results.csv"), "w") as f:
                f.write("case_id,status\n" + "".join(f"{name}{i},ok\n" for i in range(len(folders))))
            for i, patient in enumerate(folders):
                os.makedirs(os.path.join(folder, "cases", f"{name}{i}"))
                with open(os.path.join(folder, "cases", f"{name}{i}", "result.json"), "w") as f:
                    json.dump({"case_id": f"{name}{i}", "status": "ok", "input": {"path": f"/data/{patient}/ct.nii.gz"},
                               "he": {"logit": float(z[i]), "model": {"sha256": sha}}}, f)
            return folder
        by_folder = os.path.join(tmp, "by_folder.csv")
        with open(by_folder, "w") as f:
            f.write("case_id,he_label\n" + "".join(f"P{i},{y[i]}\n" for i in range(200)))
        a, b = folder_run("a", [f"P{i}" for i in range(100)]), folder_run("b", [f"P{i}" for i in range(100, 200)])
        out = os.path.join(tmp, "folders.safetensors")
        code, err = stderr_of(["--model", model, "--run", a, b, "--labels", by_folder, "-o", out])
        assert code == 0 and "matched no case" not in err, err
        assert json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["recalibration"]["n"] == 200
        twice = folder_run("twice", ["P0", "P1", "P1"])
        expect_refused(["--model", model, "--run", twice, "--labels", by_folder, "-o", out + "3"],
                       "label P1 matches two cases", out + "3")
        # Shard tables of two different splits in one folder: a case listed twice, refused.
        shards = folder_run("shards", ["P0", "P1"])
        os.remove(os.path.join(shards, "results.csv"))
        for k in ("1-of-2", "1-of-3"):
            with open(os.path.join(shards, f"results-{k}.csv"), "w") as f:
                f.write("case_id,status\nshards0,ok\n")
        expect_refused(["--model", model, "--run", shards, "--labels", by_folder, "-o", out + "4"],
                       "is listed twice", out + "4")
        # D5: a labels file saved by Excel on Windows (Windows-1252: "Zürich" is byte 0xfc, CRLF) with a
        # blank label: read, with a warning and the blank counted (it was a UnicodeDecodeError traceback)
        latin = os.path.join(tmp, "labels_cp1252.csv")
        with open(latin, "w", encoding="cp1252", newline="") as f:
            f.write("case_id,he_label,site\r\n" + "".join(f"P{i},{'' if i == 5 else y[i]},Z\u00fcrich\r\n"
                                                          for i in range(200)))
        out = os.path.join(tmp, "latin.safetensors")
        code, err = stderr_of(["--model", model, "--run", a, b, "--labels", latin, "-o", out])
        assert code == 0 and "Windows-1252" in err and "1 blank label(s) skipped" in err, err
        rec = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["recalibration"]
        assert rec["n"] == 199 and rec["left_out"] == {"no label": 1}, rec
        garbage = os.path.join(tmp, "labels_garbage.csv")  # not text in either encoding: a clear refusal
        with open(garbage, "wb") as f:
            f.write(b"case_id,he_label\nP0,1\x81\x8d\n")
        expect_refused(["--model", model, "--run", a, "--labels", garbage, "-o", out + "5"],
                       "neither UTF-8 nor Windows-1252", out + "5")

        # D6: a second run of the same scans (a study sheet run over scans/ again: other case ids, the
        # same files, relative to the same working folder; one copied elsewhere: the same content)
        # counts each scan once, with a warning
        def path_run(name, paths, ids, fingerprints=None):
            folder = os.path.join(tmp, name)
            os.makedirs(os.path.join(folder, "cases"))
            with open(os.path.join(folder, "results.csv"), "w") as f:
                f.write("case_id,status\n" + "".join(f"{i},ok\n" for i in ids))
            with open(os.path.join(folder, "run.json"), "w") as f:
                json.dump({"working_directory": tmp}, f)
            for k, (path, case_id) in enumerate(zip(paths, ids)):
                os.makedirs(os.path.join(folder, "cases", case_id))
                result = {"case_id": case_id, "status": "ok", "input": {"path": path},
                          "he": {"logit": float(z[k]), "model": {"sha256": sha}}}
                if fingerprints:
                    result["fingerprint"] = {"input": fingerprints[k], "options": {"series_uid": ""}}
                with open(os.path.join(folder, "cases", case_id, "result.json"), "w") as f:
                    json.dump(result, f)
            return folder
        os.makedirs(os.path.join(tmp, "scans"))
        for k in range(60):
            open(os.path.join(tmp, "scans", f"S{k}.nii.gz"), "w").close()
        whole = path_run("whole", [f"scans/S{k}.nii.gz" for k in range(60)], [f"scans_S{k}" for k in range(60)],
                         [f"{k:064x}" for k in range(60)])
        study = path_run("study", [os.path.join(tmp, "scans", f"S{k}.nii.gz") for k in range(12)],
                         [f"S{k}" for k in range(12)])
        copied = path_run("copied", [f"/elsewhere/S{k}.nii.gz" for k in range(50, 55)], [f"C{k}" for k in range(5)],
                          [f"{k:064x}" for k in range(50, 55)])
        labels_whole = os.path.join(tmp, "labels_whole.csv")
        with open(labels_whole, "w") as f:
            f.write("case_id,he_label\n" + "".join(f"scans_S{k},{y[k]}\n" for k in range(60)))
        labels_study = os.path.join(tmp, "labels_study.csv")
        with open(labels_study, "w") as f:
            f.write("case_id,he_label\n" + "".join(f"S{k},{y[k]}\n" for k in range(12)))
        labels_copied = os.path.join(tmp, "labels_copied.csv")
        with open(labels_copied, "w") as f:
            f.write("case_id,he_label\n" + "".join(f"C{k},{y[50 + k]}\n" for k in range(5)))
        out = os.path.join(tmp, "dup.safetensors")
        code, err = stderr_of(["--model", model, "--run", whole, study, copied, "--labels", labels_whole,
                               labels_study, labels_copied, "-o", out])
        assert code == 0 and "12 case(s) of " + study in err and "5 case(s) of " + copied in err, err
        assert "matched no case" not in err, err  # the duplicates' labels are matched, not counted
        rec = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["recalibration"]
        assert rec["n"] == 60 and rec["left_out"] == {"same scan as a case of an earlier --run": 17}, rec

        # Two sites' runs, both recording scans_site/S<k>.nii.gz, with different content: different
        # scans, both counted, whether or not files of that path are here (site A's are): a path
        # names a scan only where a side has no content fingerprint (site B's cases were dropped
        # as duplicates of site A's).
        os.makedirs(os.path.join(tmp, "scans_site"))
        for k in range(30):
            open(os.path.join(tmp, "scans_site", f"S{k}.nii.gz"), "w").close()
        site_a = path_run("siteA", [f"scans_site/S{k}.nii.gz" for k in range(60)], [f"A{k}" for k in range(60)],
                          [f"a{k:063x}" for k in range(60)])
        site_b = path_run("siteB", [f"scans_site/S{k}.nii.gz" for k in range(60)], [f"B{k}" for k in range(60)],
                          [f"b{k:063x}" for k in range(60)])
        labels_sites = os.path.join(tmp, "labels_sites.csv")
        with open(labels_sites, "w") as f:
            f.write("case_id,he_label\n" + "".join(f"{s}{k},{y[k]}\n" for s in "AB" for k in range(60)))
        out = os.path.join(tmp, "sites.safetensors")
        code, err = stderr_of(["--model", model, "--run", site_a, site_b, "--labels", labels_sites, "-o", out])
        assert code == 0 and "read the same scan" not in err, err
        rec = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["recalibration"]
        assert rec["n"] == 120 and not rec.get("left_out"), rec

        # A recalibrated model recalibrated again keeps the first recalibration under source.
        again = os.path.join(tmp, "again.safetensors")
        platt = os.path.join(tmp, "platt.safetensors")
        write_run(os.path.join(tmp, "run3"), rc.sha256_of(platt), z, y)
        assert rc.main(["--model", platt, "--run", os.path.join(tmp, "run3"), "--labels",
                        os.path.join(tmp, "run3", "labels.csv"), "-o", again]) == 0
        rec2 = json.loads(hemexp_safetensors.load(again)[1][rc.CARD_KEY])["recalibration"]
        assert rec2["source"]["recalibration"]["n"] == 4000 and rec2["source"]["name"] == "toy-recalibrated", rec2

        # A run scored by another model file: refused, nothing written.
        other = os.path.join(tmp, "other")
        write_run(other, "0" * 64, z[:10], y[:10])
        out = os.path.join(tmp, "refused.safetensors")
        try:
            rc.main(["--model", model, "--run", other, "--labels", os.path.join(other, "labels.csv"), "-o", out])
            raise AssertionError("a run scored by another model was accepted")
        except SystemExit as e:
            assert "not by the model file given" in str(e), e
        assert not os.path.exists(out)

        # Labels keyed by case id where one case's folder is named like another case (P1 and the
        # unlabelled P1/ct.nii.gz): the folder-name match never takes a case's own label.
        own = os.path.join(tmp, "own")
        he = {"logit": 0.5, "model": {"sha256": rc.sha256_of(model)}}
        write_run(own, rc.sha256_of(model), z[:200], y[:200],
                  extra=[("P1", {"case_id": "P1", "status": "ok", "input": {"path": "/x/P1"}, "he": he}),
                         ("unlabelled", {"case_id": "unlabelled", "status": "ok", "input": {"path": "/x/P1/ct.nii.gz"},
                                         "he": he})])
        out = os.path.join(tmp, "own.safetensors")
        code, err = stderr_of(["--model", model, "--run", own, "--labels", os.path.join(own, "labels.csv"), "-o", out])
        assert code == 0 and os.path.exists(out), err
        rec = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["recalibration"]
        assert rec["n"] == 201 and rec["left_out"].get("no label") == 1, rec

        # A run made without a classifier: refused, saying so; an output folder that does not exist:
        # refused before anything is written (it was a traceback).
        unscored = os.path.join(tmp, "unscored")
        write_run(unscored, "0" * 64, [], [], extra=[(f"n{i}", {"case_id": f"n{i}", "status": "ok", "he": None})
                                                        for i in range(3)])
        out = os.path.join(tmp, "unscored.safetensors")
        expect_refused(["--model", model, "--run", unscored, "--labels", os.path.join(unscored, "labels.csv"), "-o", out],
                       "was the run scored by a classifier?", out)
        out = os.path.join(tmp, "no-such-folder", "x.safetensors")
        expect_refused(["--model", model, "--run", run, "--labels", os.path.join(run, "labels.csv"), "-o", out],
                       "does not exist (nothing written)", out)

        # hemexp reads the recalibrated shipped classifier (the card's other fields as they were).
        shipped = os.path.join(HERE, "..", "models", "hemexp-cls.safetensors")
        if binary and os.path.exists(shipped):
            run2 = os.path.join(tmp, "run2")
            write_run(run2, rc.sha256_of(shipped), z, y)
            out = os.path.join(tmp, "shipped-recal.safetensors")
            assert rc.main(["--model", shipped, "--run", run2, "--labels", os.path.join(run2, "labels.csv"),
                            "-o", out]) == 0
            info = subprocess.run([binary, "info", out], capture_output=True, text=True, check=True).stdout
            slope = json.loads(hemexp_safetensors.load(out)[1][rc.CARD_KEY])["calibration"]["slope"]
            assert f"recipe:      ok; calibration platt (p = sigmoid({slope:.4f} logit" in info, info[:600]
            shipped_name = json.loads(hemexp_safetensors.load(shipped)[1][rc.CARD_KEY])["name"]
            assert f"{shipped_name}-recalibrated" in info, info[:600]
            assert "\nrecalibration: {" in info and "\nvalidation:" not in info, info  # old numbers moved to source
        elif binary:
            raise AssertionError(f"{shipped} is missing")
        print("recalibrate_classifier: all checks passed" + ("" if binary else " (hemexp binary not given: card read by "
                                                             "hemexp not checked)"))
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
