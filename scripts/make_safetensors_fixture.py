#!/usr/bin/python3
"""Writes tests/data/safetensors/python_fixture.safetensors, the fixture that
tests/core/test_safetensors.cpp reads: a safetensors file written independently of the
C++ writer, by hand with struct and json (the `safetensors` package is not required).

Run with /usr/bin/python3 from the repository root:
    /usr/bin/python3 scripts/make_safetensors_fixture.py
The values are fixed (no randomness), so the output is byte-for-byte reproducible.
"""
import json
import os
import struct


def bf16(values):
    # bfloat16 = the upper 16 bits of a float32 (values chosen to be exact in bf16).
    out = b""
    for v in values:
        (bits,) = struct.unpack("<I", struct.pack("<f", v))
        out += struct.pack("<H", bits >> 16)
    return out


# name -> (dtype, shape, little-endian bytes)
TENSORS = {
    "conv.weight": ("F32", [2, 3], struct.pack("<6f", *[0.5 * i - 1.0 for i in range(6)])),
    "counts": ("I64", [3], struct.pack("<3q", -5, 0, 1 << 40)),
    "half": ("F16", [2, 2], struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)),
    "brain": ("BF16", [3], bf16([1.0, -2.5, 0.15625])),
    "scalar": ("F64", [], struct.pack("<d", 3.141592653589793)),
    "flags": ("BOOL", [4], bytes([1, 0, 0, 1])),
    "bytes": ("U8", [2, 2], bytes([0, 7, 128, 255])),
    "small": ("I8", [2], struct.pack("<2b", -128, 127)),
    "shorts": ("I16", [2], struct.pack("<2h", -32768, 1234)),
    "ints": ("I32", [1, 2], struct.pack("<2i", -7, 2147483647)),
    "empty": ("F32", [0, 4], b""),
}

# Data in an order different from the names' (the reader must follow data_offsets).
ORDER = ["scalar", "counts", "conv.weight", "empty", "half", "brain", "shorts", "ints", "small", "flags", "bytes"]


def main():
    header = {"__metadata__": {"format": "pt", "writer": "scripts/make_safetensors_fixture.py"}}
    data = b""
    for name in ORDER:
        dtype, shape, raw = TENSORS[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode("utf-8")  # Python's default separators, with spaces
    text += b" " * ((8 - len(text) % 8) % 8)
    path = os.path.join("tests", "data", "safetensors", "python_fixture.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    print("wrote", path, 8 + len(text) + len(data), "bytes")


if __name__ == "__main__":
    main()
