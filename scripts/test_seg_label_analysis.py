#!/usr/bin/python3
"""scripts/seg_label_analysis.py on a hand-made synth folder and run folder with known overlaps."""
import csv
import json
import os
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def save(path, a, zooms=(1.0, 2.0, 2.5)):
    img = nib.Nifti1Image(a.astype(np.uint8), np.diag([*zooms, 1.0]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(img, path)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        synth, run = os.path.join(tmp, "synth"), os.path.join(tmp, "run")
        lab = np.zeros((6, 6, 6), np.uint8)
        lab[0, :2, :4] = 1   # 8 hematoma voxels
        lab[3, 0, :4] = 2    # 4 IVH voxels
        lab[5, 0, :4] = 3    # 4 edema voxels
        pred = np.zeros_like(lab)
        pred[0, 0, :4] = 1   # 4 of the hematoma
        pred[0, 1, :2] = 1   # 2 more: 6 true positives
        pred[3, 0, :3] = 1   # 3 IVH voxels
        pred[5, 0, 0] = 1    # 1 edema voxel
        pred[2, 2, 2] = 1    # 1 elsewhere
        save(os.path.join(synth, "synth_00000", "labels.nii.gz"), lab)
        save(os.path.join(run, "cases", "a_ct", "mask.nii.gz"), pred)
        with open(os.path.join(synth, "labels.csv"), "w") as f:
            f.write("case_id,volume_ml\nsynth_00000,0.04\nsynth_00001,1.0\n")  # 00001 not in the run
        with open(os.path.join(run, "results.csv"), "w") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "status", "input"])
            w.writerow(["a_ct", "ok", os.path.join(synth, "synth_00000", "ct.nii.gz")])
            w.writerow(["b_ct", "failed", os.path.join(synth, "synth_00001", "ct.nii.gz")])
        out = os.path.join(tmp, "a.json")
        text = subprocess.run([sys.executable, os.path.join(HERE, "seg_label_analysis.py"), synth, run,
                               "--json", out], check=True, capture_output=True, text=True).stdout
        cases = json.load(open(out))["cases"]
        assert len(cases) == 1, cases
        c = cases[0]
        # pred 11 voxels, truth 8, intersection 6: Dice 12/19; without the 3 IVH voxels 12/16.
        assert abs(c["dice"] - 12 / 19) < 1e-12, c
        assert abs(c["dice_without_ivh_in_prediction"] - 12 / 16) < 1e-12, c
        assert (c["ivh_voxels"], c["ivh_marked"], c["edema_voxels"], c["edema_marked"]) == (4, 3, 4, 1), c
        assert (c["fp_voxels"], c["fp_on_ivh"], c["fp_on_edema"]) == (5, 3, 1), c
        assert (c["slice_mm"], c["fn_voxels"], c["fn_on_rim"], c["fp_on_rim"]) == (2.5, 2, 2, 0), c
        assert "thin (< 3 mm): 1 cases" in text and "missed in the outer layer 2, added just outside 0, elsewhere 5" in text, text
        assert "cases 1, with IVH 1" in text and "on IVH 0.60, on edema 0.20, elsewhere 0.20" in text, text
    # The rims of a 3 x 3 x 3 cube: all but its centre voxel inside, its 6 faces of 9 outside.
    sys.path.insert(0, HERE)
    import seg_label_analysis
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    inner, outer = seg_label_analysis.rims(cube)
    assert (int(inner.sum()), int(outer.sum()), bool(inner[2, 2, 2]), bool(outer[0, 2, 2]), bool(outer[0, 0, 2])) == \
        (26, 54, False, True, False)
    print("seg_label_analysis: ok")


if __name__ == "__main__":
    main()
