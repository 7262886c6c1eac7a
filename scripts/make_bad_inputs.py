#!/usr/bin/env python3
"""Writes the bad-input corpus of tests/data/bad/: small files that a 2,000-scan cohort will
one day contain, each broken in one way. hemexp must give each one a failed row with a reason
that names the problem, and go on with the rest (tests/app/test_bad_inputs.cpp).

Standard library only. The DICOM files are cut down from one slice of the GE head
(tests/data/ge-head-ct-tilt-mixed-thickness/01.dcm, BSD-2-Clause) to 64 x 64 pixels.
What cannot live in git (an empty folder, a symbolic link loop) is made by the test itself.

    python3 scripts/make_bad_inputs.py [OUTDIR]    # default tests/data/bad
"""
import gzip
import math
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nifti(dims=(16, 16, 4), pixdim=(1.0, 1.0, 5.0), datatype=4, voxels=None, vox_offset=352.0,
          sform=None, ndim=None):
    """A NIfTI-1 single file: header (348 bytes), 4 bytes of extension flag, voxels."""
    bitpix = {2: 8, 4: 16, 16: 32}[datatype]
    n = 1
    for d in dims:
        n *= d
    d = [ndim if ndim is not None else len(dims)] + list(dims) + [1] * (7 - len(dims))
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, *d)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, *pixdim, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, vox_offset)
    struct.pack_into("<ff", h, 112, 1.0, 0.0)  # scl_slope, scl_inter
    h[123] = 10  # xyzt_units: mm, s
    if sform is None:
        struct.pack_into("<hh", h, 252, 1, 0)  # qform: identity rotation
    else:
        struct.pack_into("<hh", h, 252, 0, 1)
        struct.pack_into("<12f", h, 280, *sform)
    h[344:348] = b"n+1\0"
    if voxels is None:  # air around a 40 HU block: plausible CT numbers
        voxels = [40 if (3 < i % dims[0] < dims[0] - 4) else -1000 for i in range(n)]
    fmt = {2: "B", 4: "h", 16: "f"}[datatype]
    body = struct.pack("<%d%s" % (len(voxels), fmt), *voxels)
    return bytes(h) + b"\0\0\0\0" + body


def gz(data):
    return gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: byte-identical reruns


def dicom_elements(data, start):
    """(offset, tag, vr, header length, value length) of each top-level explicit-VR-LE element."""
    out = []
    i = start
    while i + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, i)
        vr = data[i + 4:i + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", data, i + 8)[0]
            header = 12
        else:
            length = struct.unpack_from("<H", data, i + 6)[0]
            header = 8
        out.append((i, (group, element), vr, header, length))
        if length == 0xFFFFFFFF:
            break
        i += header + length
    return out


def small_dicom(source):
    """The source slice cut to 64 x 64 pixels (the first 64 x 64 values of its pixel data)."""
    data = bytearray(open(source, "rb").read())
    elements = dicom_elements(data, 132)
    by_tag = {e[1]: e for e in elements}
    rows, cols = by_tag[(0x0028, 0x0010)], by_tag[(0x0028, 0x0011)]
    struct.pack_into("<H", data, rows[0] + 8, 64)
    struct.pack_into("<H", data, cols[0] + 8, 64)
    pixels = by_tag[(0x7FE0, 0x0010)]
    at = pixels[0] + pixels[3]
    struct.pack_into("<I", data, pixels[0] + 8, 64 * 64 * 2)
    return bytes(data[:at + 64 * 64 * 2]), by_tag


def patched(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "data", "bad")
    os.makedirs(out, exist_ok=True)
    files = {}

    good = nifti()
    half = gz(nifti(dims=(64, 64, 16)))
    files["truncated.nii.gz"] = half[:len(half) // 2]
    files["garbage-inside.nii.gz"] = gz(b"")[:10] + bytes((i * 97 + 13) % 251 for i in range(4000))
    files["dims-32767-cubed.nii"] = nifti(dims=(32767, 32767, 32767), voxels=[0] * 64)
    files["dims-2048x2048x1024.nii.gz"] = gz(nifti(dims=(2048, 2048, 1024), voxels=[0] * 32768))
    files["offset-beyond-file.nii"] = nifti(vox_offset=1.0e6)
    files["spacing-zero.nii.gz"] = gz(nifti(pixdim=(1.0, 0.0, 5.0)))
    files["spacing-negative.nii.gz"] = gz(nifti(pixdim=(1.0, 1.0, -5.0)))
    files["spacing-nan.nii.gz"] = gz(nifti(pixdim=(math.nan, 1.0, 5.0)))
    files["spacing-infinite.nii.gz"] = gz(nifti(pixdim=(1.0, math.inf, 5.0)))
    # sform axes: x and y along the same line (singular); then 80 degrees of shear (|det| 0.17).
    files["direction-singular.nii.gz"] = gz(nifti(sform=(1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0)))
    c, s = math.cos(math.radians(80)), math.sin(math.radians(80))
    files["direction-sheared-80deg.nii.gz"] = gz(nifti(sform=(1, c, 0, 0, 0, s, 0, 0, 0, 0, 5, 0)))
    n = 16 * 16 * 4
    files["voxels-nan.nii.gz"] = gz(nifti(datatype=16, voxels=[math.nan if i == 300 else -1000.0 for i in range(n)]))
    files["voxels-infinite.nii.gz"] = gz(nifti(datatype=16, voxels=[math.inf if i % 50 == 0 else -1000.0 for i in range(n)]))
    files["one-slice.nii.gz"] = gz(nifti(dims=(16, 16, 1)))
    files["empty.nii.gz"] = b""
    files["text-named.nii.gz"] = b"patient 17: scan not exported, see notes\n"
    files["uncompressed-cut.nii"] = good[:len(good) - 100]

    source = os.path.join(ROOT, "tests", "data", "ge-head-ct-tilt-mixed-thickness", "01.dcm")
    dcm, by_tag = small_dicom(source)
    pixels = by_tag[(0x7FE0, 0x0010)]
    rows, cols = by_tag[(0x0028, 0x0010)], by_tag[(0x0028, 0x0011)]
    # Each DICOM case is a folder: a DICOM file stands for its whole series.
    files["dicom-pixeldata-odd-length/01.dcm"] = patched(dcm, pixels[0] + 8, "<I", 64 * 64 * 2 - 1)
    files["dicom-pixeldata-2GiB/01.dcm"] = patched(dcm, pixels[0] + 8, "<I", 0x7FFFFFF0)
    files["dicom-rows-0/01.dcm"] = patched(dcm, rows[0] + 8, "<H", 0)
    files["dicom-65535x65535/01.dcm"] = patched(patched(dcm, rows[0] + 8, "<H", 65535), cols[0] + 8, "<H", 65535)

    files["list-missing.txt"] = b"missing-1.nii.gz\n# a comment\nno/such/folder\n"
    files["list-self.txt"] = b"list-self.txt\n"

    for name, data in sorted(files.items()):
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(out, "folder-named.nii.gz"), exist_ok=True)
    with open(os.path.join(out, "folder-named.nii.gz", ".keep"), "wb"):
        pass  # git keeps no empty folder; a hidden file is not a scan
    print("wrote %d files to %s" % (len(files), out))


if __name__ == "__main__":
    main()
