"""Compare two hemexp run folders: results.csv and each result.json equal except timings,
dates and version; every mask byte-identical."""
import csv, json, sys, os, hashlib
a, b = sys.argv[1], sys.argv[2]
# Optional: --same-tree OLD NEW: the two binaries live in different checkouts, so the default
# model's path differs by that prefix only; it is replaced in A before comparing.
prefix = sys.argv[sys.argv.index("--same-tree") + 1:sys.argv.index("--same-tree") + 3] if "--same-tree" in sys.argv else None
IGNORE_CSV = {"seconds"}
IGNORE_JSON = {"timings_s", "seconds", "hemexp_version"}
def rows(d):
    with open(os.path.join(d, "results.csv"), newline="") as f:
        return list(csv.DictReader(f))
ra, rb = rows(a), rows(b)
ok = True
if len(ra) != len(rb):
    print("row count differs", len(ra), len(rb)); ok = False
for x, y in zip(ra, rb):
    for k in set(x) | set(y):
        if k in IGNORE_CSV: continue
        if x.get(k) != y.get(k):
            print("csv", x.get("case_id"), k, repr(x.get(k)), "!=", repr(y.get(k))); ok = False
ids = [r["case_id"] for r in ra]
for cid in ids:
    text = open(os.path.join(a, "cases", cid, "result.json")).read()
    if prefix: text = text.replace(prefix[0], prefix[1])
    ja = json.loads(text)
    jb = json.load(open(os.path.join(b, "cases", cid, "result.json")))
    for k in IGNORE_JSON:
        ja.pop(k, None); jb.pop(k, None)
    if ja != jb:
        ok = False
        for k in set(ja) | set(jb):
            if ja.get(k) != jb.get(k): print("json", cid, k, ja.get(k), "!=", jb.get(k))
    fa = sorted(os.listdir(os.path.join(a, "cases", cid))); fb = sorted(os.listdir(os.path.join(b, "cases", cid)))
    if fa != fb: print("files", cid, fa, fb); ok = False
    for f in fa:
        if f.endswith(".nii.gz") or f.endswith(".png"):
            ha = hashlib.sha256(open(os.path.join(a, "cases", cid, f), "rb").read()).hexdigest()
            hb = hashlib.sha256(open(os.path.join(b, "cases", cid, f), "rb").read()).hexdigest()
            if ha != hb: print("bytes differ", cid, f); ok = False
print("IDENTICAL (apart from timings, dates, version)" if ok else "DIFFERENT", len(ids), "cases")
sys.exit(0 if ok else 1)
