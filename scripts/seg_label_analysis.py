#!/usr/bin/python3
"""Where a segmentation run's hematoma mask goes wrong, by tissue of the synthetic label map.

Reads a `hemexp synth` folder (labels.csv, <case>/labels.nii.gz: 1 parenchymal hematoma,
2 intraventricular blood, 3 perihematomal edema) and a `hemexp run` folder over its CT files
(results.csv, cases/<case_id>/mask.nii.gz), matched by the run's `input` column. Prints Dice
against label 1 with and without IVH, the share of IVH and edema voxels the mask marks, where
the false-positive voxels lie, and what Dice would be with the IVH voxels taken out of the
prediction. Usage: scripts/seg_label_analysis.py SYNTH_DIR RUN_DIR [--json OUT.json]
Needs python3-nibabel (apt-get install python3-nibabel).
"""
import argparse
import csv
import json
import os

import nibabel as nib
import numpy as np


def load(path):
    return np.asarray(nib.load(path).dataobj)


def shifted(m, axis, step):
    """m moved one voxel along axis (zeros shifted in)."""
    out = np.zeros_like(m)
    src = [slice(None)] * m.ndim
    dst = [slice(None)] * m.ndim
    if step > 0:
        src[axis], dst[axis] = slice(0, -1), slice(1, None)
    else:
        src[axis], dst[axis] = slice(1, None), slice(0, -1)
    out[tuple(dst)] = m[tuple(src)]
    return out


def rims(m):
    """(inner, outer): the voxels of m with a 6-neighbour outside it, the voxels outside m with one in it."""
    grown, interior = m.copy(), m.copy()
    for axis in range(m.ndim):
        for step in (1, -1):
            n = shifted(m, axis, step)
            grown |= n
            interior &= n
    return m & ~interior, grown & ~m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("synth")
    ap.add_argument("run")
    ap.add_argument("--json")
    a = ap.parse_args()
    by_dir = {}
    for r in csv.DictReader(open(os.path.join(a.run, "results.csv"))):
        if r["status"] == "ok":
            by_dir[os.path.normpath(os.path.dirname(os.path.abspath(r["input"])))] = r["case_id"]
    cases = []
    for t in csv.DictReader(open(os.path.join(a.synth, "labels.csv"))):
        d = os.path.normpath(os.path.abspath(os.path.join(a.synth, t["case_id"])))
        if d not in by_dir:
            continue
        img = nib.load(os.path.join(d, "labels.nii.gz"))
        lab = np.asarray(img.dataobj)
        pred = load(os.path.join(a.run, "cases", by_dir[d], "mask.nii.gz")) > 0
        hem, ivh, ede = lab == 1, lab == 2, lab == 3
        inter = int((pred & hem).sum())
        fp = pred & ~hem
        inner, outer = rims(hem)
        cases.append({
            "slice_mm": float(img.header.get_zooms()[2]),
            "truth_voxels": int(hem.sum()), "pred_voxels": int(pred.sum()),
            "fn_voxels": int((hem & ~pred).sum()), "fn_on_rim": int((inner & ~pred).sum()),
            "fp_on_rim": int((outer & pred).sum()),
            "case_id": t["case_id"],
            "volume_ml": float(t["volume_ml"]),
            "dice": 2 * inter / max(int(pred.sum() + hem.sum()), 1),
            "dice_without_ivh_in_prediction": 2 * inter / max(int((pred & ~ivh).sum() + hem.sum()), 1),
            "ivh_voxels": int(ivh.sum()), "ivh_marked": int((pred & ivh).sum()),
            "edema_voxels": int(ede.sum()), "edema_marked": int((pred & ede).sum()),
            "fp_voxels": int(fp.sum()), "fp_on_ivh": int((fp & ivh).sum()), "fp_on_edema": int((fp & ede).sum()),
        })
    if not cases:
        raise SystemExit("no case of the synth folder is in the run's results.csv")
    d = np.array([c["dice"] for c in cases])
    dn = np.array([c["dice_without_ivh_in_prediction"] for c in cases])
    has = np.array([c["ivh_voxels"] > 0 for c in cases])
    print(f"cases {len(cases)}, with IVH {int(has.sum())}")
    print(f"Dice (label 1) mean {d.mean():.3f} median {np.median(d):.3f} min {d.min():.3f}")
    if has.any() and (~has).any():
        print(f"  with IVH {d[has].mean():.3f}, without {d[~has].mean():.3f}")
    print(f"Dice with the IVH voxels taken out of the prediction: mean {dn.mean():.3f}"
          + (f" (cases with IVH {dn[has].mean():.3f})" if has.any() else ""))
    ivh_tot = sum(c["ivh_voxels"] for c in cases)
    if ivh_tot:
        per = np.array([c["ivh_marked"] / c["ivh_voxels"] for c in cases if c["ivh_voxels"]])
        print(f"IVH voxels marked as hematoma: {sum(c['ivh_marked'] for c in cases) / ivh_tot:.2f} of all; "
              f"per case median {np.median(per):.2f}, range {per.min():.2f}-{per.max():.2f}")
    ede_tot = sum(c["edema_voxels"] for c in cases)
    if ede_tot:
        per = np.array([c["edema_marked"] / c["edema_voxels"] for c in cases if c["edema_voxels"]])
        print(f"edema voxels marked as hematoma: {sum(c['edema_marked'] for c in cases) / ede_tot:.3f} of all; "
              f"per case median {np.median(per):.3f}, max {per.max():.3f}")
    fp = sum(c["fp_voxels"] for c in cases)
    if fp:
        print(f"false-positive voxels {fp}: on IVH {sum(c['fp_on_ivh'] for c in cases) / fp:.2f}, "
              f"on edema {sum(c['fp_on_edema'] for c in cases) / fp:.2f}, elsewhere "
              f"{1 - sum(c['fp_on_ivh'] + c['fp_on_edema'] for c in cases) / fp:.2f}")
    # The edge: disagreement in the truth's outermost layer (missed) or the layer just outside it
    # (added), by slice thickness.
    for name, sel in (("thin (< 3 mm)", lambda c: c["slice_mm"] < 3), ("thick (>= 3 mm)", lambda c: c["slice_mm"] >= 3)):
        g = [c for c in cases if sel(c)]
        if not g:
            continue
        err = sum(c["fn_voxels"] + c["fp_voxels"] for c in g)
        signed = np.array([(c["pred_voxels"] - c["truth_voxels"]) / max(c["truth_voxels"], 1) for c in g])
        print(f"{name}: {len(g)} cases, Dice mean {np.mean([c['dice'] for c in g]):.3f}; "
              f"volume (pred - truth) / truth median {100 * np.median(signed):+.1f} %; "
              f"of the wrong voxels {sum(c['fn_on_rim'] + c['fp_on_rim'] for c in g) / max(err, 1):.2f} lie on the "
              f"rim (missed in the outer layer {sum(c['fn_on_rim'] for c in g)}, added just outside "
              f"{sum(c['fp_on_rim'] for c in g)}, elsewhere {err - sum(c['fn_on_rim'] + c['fp_on_rim'] for c in g)})")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump({"synth": a.synth, "run": a.run, "cases": cases}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
