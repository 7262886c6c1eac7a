#!/usr/bin/python3
"""Render slices of `hemexp synth` cases beside a real head NCCT for docs/synth/.

Usage:
  /usr/bin/python3 scripts/render_synth_slices.py --synth OUTDIR --real DICOM_FOLDER \
      --out docs/synth [--cases synth_00000 synth_00001 ...]

Needs numpy, nibabel and PIL (Debian's python3-numpy, python3-nibabel, python3-pil).
The real scan is read with a minimal DICOM reader (uncompressed little-endian only), shown
as acquired (no tilt correction). Windows: brain W80/L40, bone W2000/L500.
"""
import argparse
import glob
import os
import struct

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

TILE = 256


def window(img, level, width):
    lo = level - width / 2.0
    return np.clip((img - lo) / width * 255.0, 0, 255).astype(np.uint8)


def read_dicom_slice(path):
    """Pixel data and z position of an uncompressed little-endian CT slice."""
    data = open(path, "rb").read()

    def find(tag_group, tag_elem, vr_len=2):
        key = struct.pack("<HH", tag_group, tag_elem)
        pos = data.find(key, 132)
        if pos < 0:
            return None
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF"):
            length = struct.unpack("<I", data[pos + 8:pos + 12])[0]
            return data[pos + 12:pos + 12 + length]
        length = struct.unpack("<H", data[pos + 6:pos + 8])[0]
        return data[pos + 8:pos + 8 + length]

    rows = struct.unpack("<H", find(0x0028, 0x0010))[0]
    cols = struct.unpack("<H", find(0x0028, 0x0011))[0]
    ipp = find(0x0020, 0x0032).decode().strip("\0 ").split("\\")
    pix_tag = struct.pack("<HH", 0x7FE0, 0x0010)
    pos = data.rfind(pix_tag)
    length = struct.unpack("<I", data[pos + 8:pos + 12])[0]
    pixels = np.frombuffer(data[pos + 12:pos + 12 + length], dtype="<i2").reshape(rows, cols).astype(np.float32)
    slope = find(0x0028, 0x1053)
    intercept = find(0x0028, 0x1052)
    s = float(slope.decode().strip("\0 ")) if slope else 1.0
    b = float(intercept.decode().strip("\0 ")) if intercept else 0.0
    pixels = pixels * s + b
    pixels[pixels < -1024] = -1024
    return float(ipp[2]), pixels


def read_real(folder):
    slices = sorted(read_dicom_slice(p) for p in glob.glob(os.path.join(folder, "*.dcm")))
    return [s[1] for s in slices]


def tile(img2d, level, width, outline=None):
    g = window(img2d, level, width)
    im = Image.fromarray(g).convert("RGB")
    if outline is not None:
        m = outline.astype(bool)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        arr = np.array(im)
        arr[edge] = [255, 40, 40]
        im = Image.fromarray(arr)
    return im.resize((TILE, TILE), Image.BILINEAR)


def nifti_slices(path):
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    # ITK wrote LPS index axes (x to patient left, y to posterior): show data[:, :, k].T
    # in radiological convention (patient left on the right, anterior at the top).
    return [data[:, :, k].T for k in range(data.shape[2])]


def label(im, text):
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, TILE, 14], fill=(0, 0, 0))
    d.text((3, 1), text, fill=(255, 255, 0))
    return im


def grid(rows):
    w = max(len(r) for r in rows) * TILE
    out = Image.new("RGB", (w, len(rows) * TILE))
    for y, r in enumerate(rows):
        for x, im in enumerate(r):
            out.paste(im, (x * TILE, y * TILE))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="*")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    real = read_real(args.real)
    n = len(real)
    fracs = [0.12, 0.3, 0.55, 0.8]
    brain_rows = [[label(tile(real[int(f * (n - 1))], 40, 80), "real GE z%.2f" % f) for f in fracs]]
    bone_rows = [[label(tile(real[int(f * (n - 1))], 500, 2000), "real GE z%.2f" % f) for f in fracs]]
    cases = args.cases or sorted(os.path.basename(os.path.dirname(p))
                                 for p in glob.glob(os.path.join(args.synth, "*", "ct.nii.gz")))[:4]
    for case in cases:
        ct = nifti_slices(os.path.join(args.synth, case, "ct.nii.gz"))
        mask = nifti_slices(os.path.join(args.synth, case, "mask.nii.gz"))
        nz = len(ct)
        brain_rows.append([label(tile(ct[int(f * (nz - 1))], 40, 80), "%s z%.2f" % (case, f)) for f in fracs])
        bone_rows.append([label(tile(ct[int(f * (nz - 1))], 500, 2000), "%s z%.2f" % (case, f)) for f in fracs])
        # Hematoma close-up row: largest mask slice, brain window with and without outline.
        k = int(np.argmax([m.sum() for m in mask]))
        row = [label(tile(ct[k], 40, 80), "%s hematoma" % case),
               label(tile(ct[k], 40, 80, outline=mask[k]), "mask outline")]
        ys, xs = np.nonzero(mask[k])
        if len(ys):
            cy, cx = int(ys.mean()), int(xs.mean())
            h = max(40, int(2.2 * max(ys.ptp(), xs.ptp())))
            y0, x0 = max(0, cy - h // 2), max(0, cx - h // 2)
            crop = ct[k][y0:y0 + h, x0:x0 + h]
            row.append(label(tile(crop, 40, 80), "zoom W80 L40"))
            fu = os.path.join(args.synth, case, "followup_ct.nii.gz")
            if os.path.exists(fu):
                fct = nifti_slices(fu)[k][y0:y0 + h, x0:x0 + h]
                row.append(label(tile(fct, 40, 80), "follow-up zoom"))
        grid([row]).save(os.path.join(args.out, "%s%s_hematoma.png" % (args.prefix, case)))
    # Grey-only grids are stored as 8-bit grey to keep docs/ small.
    grid(brain_rows).convert("L").save(os.path.join(args.out, "%scompare_brain_window.png" % args.prefix), optimize=True)
    grid(bone_rows).convert("L").save(os.path.join(args.out, "%scompare_bone_window.png" % args.prefix), optimize=True)


if __name__ == "__main__":
    main()
