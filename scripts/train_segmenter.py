"""Trains hemexp's hematoma segmenter (U-Mamba, PyTorch reference) on data prepared by
`hemexp prepare`, and exports weights + model card to safetensors for the C++ tool.

    /usr/bin/python3 scripts/train_segmenter.py --data PREPDIR [PREPDIR...] \
        --card models/seg_card_template.json --out MODEL.safetensors \
        [--minutes M] [--iterations N] [--seed S] [--threads T] [--val-fraction F]

Each PREPDIR holds `cases.csv` (case_id, file, voxels_fg) and per case a safetensors file
with `image` (float32, (1, z, y, x), already resampled and normalised by hemexp as the card
says) and `label` (uint8, (z, y, x): 1 = hematoma; with a card of K > 2 classes the codes of the
card's labels, e.g. 2 = IVH, 3 = edema, as `hemexp prepare` exports them from the synth label
map). Preprocessing is never redone here.

Training: patches of the card's patch size, at least --fg-fraction of each batch centred on
hematoma voxels (with --ivh-fraction, a share of those on intraventricular blood instead),
random left-right / anterior-posterior flips and a mild intensity scale and shift;
cross-entropy + (1 - soft Dice) averaged over the foreground classes on every deep-supervision
head (weights halving per lower resolution, normalised; labels max-pooled to each head's
size, the lower code winning: a hematoma voxel stays a hematoma voxel); Adam (or SGD with Nesterov
momentum) with a poly learning-rate schedule. With --iterations N and a fixed --threads the run
is deterministic given --seed; --minutes stops at a wall-clock budget instead (the poly
schedule then follows the elapsed fraction of the budget). SIGTERM/SIGINT stop training
early and still validate and export. A checkpoint (same format, validation marked as not
computed) is written every --checkpoint-minutes.

Validation: whole held-out cases (--val-fraction of the cases of every PREPDIR, chosen with the
seed), full-volume sliding-window inference as in the C++ tool (Gaussian importance, the card's
overlap, padding with the clipped minimum), softmax, threshold; Dice on the model grid. The
card labels it "python_patch_validation": it is not the C++ tool's measurement on native grids.
"""
import argparse
import csv
import functools
import hashlib
import json
import math
import os
import signal
import sys
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ----------------------------------------------------------------------------- data

class Case:
    def __init__(self, case_id, path, source, num_classes=2, ivh_code=None):
        tensors, _ = hemexp_safetensors.load(path)
        image, label = tensors["image"], tensors["label"]
        if image.dim() != 4 or image.shape[0] != 1 or image.dtype != torch.float32:
            raise SystemExit(f"{path}: 'image' must be float32 (1, z, y, x), got {image.dtype} {tuple(image.shape)}")
        if label.shape != image.shape[1:]:
            raise SystemExit(f"{path}: 'label' shape {tuple(label.shape)} does not match image {tuple(image.shape)}")
        self.case_id, self.path, self.source = case_id, path, source
        self.image = image.numpy()
        label = label.numpy()
        if num_classes > 2:
            if label.max() >= num_classes:
                raise SystemExit(f"{path}: label code {int(label.max())} but the card has {num_classes} classes")
            self.label = label.astype(np.uint8)
        else:
            self.label = (label > 0).astype(np.uint8)
        self.fg = self.centres(self.label == 1)
        self.ivh = self.centres(self.label == ivh_code) if ivh_code is not None else np.zeros((0, 3), np.int32)

    @staticmethod
    def centres(where):
        fg = np.argwhere(where)
        if len(fg) > 20000:  # keep a fixed, seed-independent subsample of centres
            fg = fg[np.linspace(0, len(fg) - 1, 20000).astype(np.int64)]
        return fg.astype(np.int32)


def read_cases(prep_dir, settle_s=5.0):
    """(case_id, path) of a prepared folder: cases.csv when it exists, else the finished
    *.safetensors files (untouched for settle_s seconds), so that training can start while
    `hemexp prepare` is still writing."""
    listing = os.path.join(prep_dir, "cases.csv")
    rows = []
    if os.path.exists(listing):
        with open(listing, newline="") as f:
            for row in csv.DictReader(f):
                rows.append((row["case_id"], os.path.join(prep_dir, row["file"])))
    elif os.path.isdir(prep_dir):
        now = time.time()
        for name in sorted(os.listdir(prep_dir)):
            path = os.path.join(prep_dir, name)
            if name.endswith(".safetensors") and now - os.path.getmtime(path) > settle_s:
                rows.append((name[:-len(".safetensors")], path))
    return rows


def is_held_out(case_id, val_fraction, seed):
    """Whole-case hold-out decided per case from the seed and the case id alone, so the split
    does not depend on which other cases exist (or are prepared yet)."""
    return zlib.crc32(f"{seed}:{case_id}".encode()) / 2**32 < val_fraction


def split_cases(prep_dirs, val_fraction, seed):
    train, val = [], []
    for d in prep_dirs:
        for case_id, path in read_cases(d):
            (val if is_held_out(case_id, val_fraction, seed) else train).append((case_id, path, d))
    train.sort(key=lambda r: (r[2], r[0]))
    # validation order: by hash, so that --val-max-cases takes a mix of all folders
    val.sort(key=lambda r: zlib.crc32(f"val:{seed}:{r[0]}".encode()))
    return train, val


def crop_padded(array, start, size, pad_value):
    """array[..., start:start+size] per spatial axis (last three), padding outside with pad_value."""
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for a in range(3):
        lo, hi = start[a], start[a] + size[a]
        slo, shi = max(lo, 0), min(hi, spatial[a])
        src.append(slice(slo, shi))
        dst.append(slice(slo - lo, shi - lo))
    lead = (slice(None),) * (array.ndim - 3)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


class PatchSampler:
    def __init__(self, cases, patch, pad_value, fg_fraction, seed, ivh_fraction=0.0):
        self.cases, self.patch, self.pad_value, self.fg_fraction = cases, list(patch), pad_value, fg_fraction
        self.ivh_fraction = ivh_fraction
        self.rng = np.random.RandomState(seed)
        self.fg_cases = [i for i, c in enumerate(cases) if len(c.fg)]
        self.ivh_cases = [i for i, c in enumerate(cases) if len(c.ivh)]

    def sample(self, batch_size):
        images, labels = [], []
        n_fg = max(1, int(math.ceil(batch_size * self.fg_fraction - 1e-9))) if self.fg_cases else 0
        for b in range(batch_size):
            rng = self.rng
            if b < n_fg:
                if self.ivh_cases and self.ivh_fraction > 0 and rng.rand() < self.ivh_fraction:
                    case = self.cases[self.ivh_cases[rng.randint(len(self.ivh_cases))]]
                    centres = case.ivh
                else:
                    case = self.cases[self.fg_cases[rng.randint(len(self.fg_cases))]]
                    centres = case.fg
                centre = centres[rng.randint(len(centres))]
                # centred on a hematoma voxel, with a little jitter so it is not always mid-patch
                jitter = [rng.randint(-(p // 4), p // 4 + 1) for p in self.patch]
                start = [int(centre[a]) - self.patch[a] // 2 + jitter[a] for a in range(3)]
            else:
                case = self.cases[rng.randint(len(self.cases))]
                shape = case.label.shape
                start = [rng.randint(min(0, shape[a] - self.patch[a]), max(0, shape[a] - self.patch[a]) + 1)
                         for a in range(3)]
            # keep the window inside the volume where the volume is big enough
            shape = case.label.shape
            start = [min(max(start[a], 0), max(shape[a] - self.patch[a], 0)) if shape[a] >= self.patch[a] else start[a]
                     for a in range(3)]
            img = crop_padded(case.image, start, self.patch, self.pad_value)
            lab = crop_padded(case.label, start, self.patch, 0)
            # augmentation: flips in-plane (x = left-right, y = anterior-posterior), intensity
            if rng.rand() < 0.5:
                img, lab = img[..., ::-1], lab[..., ::-1]
            if rng.rand() < 0.5:
                img, lab = img[..., ::-1, :], lab[..., ::-1, :]
            scale = 1.0 + rng.uniform(-0.1, 0.1)
            shift = rng.uniform(-0.1, 0.1)
            img = img * np.float32(scale) + np.float32(shift)
            images.append(np.ascontiguousarray(img, dtype=np.float32))
            labels.append(np.ascontiguousarray(lab, dtype=np.int64))
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


# ----------------------------------------------------------------------------- loss

def dice_ce_loss(logits, target):
    """Cross-entropy + (1 - soft Dice over the whole batch), averaged over the foreground
    classes; the hematoma (class 1) Dice is returned for the log."""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, 1)
    dices = []
    for k in range(1, logits.shape[1]):
        p, t = probs[:, k], (target == k).float()
        inter = (p * t).sum()
        dices.append((2 * inter + 1e-5) / (p.sum() + t.sum() + 1e-5))
    return ce + (1 - torch.stack(dices).mean()), dices[0].detach()


def downsample_labels(target, size):
    """Label codes max-pooled to `size`, the lower foreground code winning (0 < K-1 < ... < 1):
    a voxel of a lower head is hematoma when any voxel under it is."""
    k = int(target.max()) + 1 if target.numel() else 2
    k = max(k, 2)
    rank = torch.where(target > 0, k - target, torch.zeros_like(target))  # code 1 -> highest rank
    pooled = F.adaptive_max_pool3d(rank.unsqueeze(1).float(), size).squeeze(1).long()
    return torch.where(pooled > 0, k - pooled, torch.zeros_like(pooled))


def deep_supervision_loss(outputs, target):
    weights = [0.5 ** i for i in range(len(outputs))]
    total_w = sum(weights)
    loss, dice_full = 0.0, None
    for i, (out, w) in enumerate(zip(outputs, weights)):
        if out.shape[2:] == target.shape[1:]:
            t = target
        else:  # max-pool the labels to the head's size: a hematoma voxel stays a hematoma voxel
            t = downsample_labels(target, out.shape[2:])
        l, d = dice_ce_loss(out, t)
        loss = loss + (w / total_w) * l
        if i == 0:
            dice_full = d
    return loss, dice_full


# ----------------------------------------------------------------------------- inference

def window_starts(size, patch, overlap):
    if size <= patch:
        return [0]
    step = max(1.0, patch * (1.0 - overlap))
    n = int(math.ceil((size - patch) / step)) + 1
    # Halves round up, as C++'s llround does (Python's round() would send 34.5 to 34: another
    # window placement, which moved some probabilities by 0.3 in scripts/bench_reference.py).
    return [int(math.floor(i * (size - patch) / (n - 1) + 0.5)) for i in range(n)]


def gaussian_importance(patch):
    axes = []
    for p in patch:
        sigma, centre = p / 8.0, (p - 1) / 2.0
        x = torch.arange(p, dtype=torch.float64)
        axes.append(torch.exp(-(x - centre) ** 2 / (2 * sigma * sigma)))
    g = axes[0].view(-1, 1, 1) * axes[1].view(1, -1, 1) * axes[2].view(1, 1, -1)
    g = g / g.max()
    return g.clamp_min(g[g > 0].min()).float()


@torch.no_grad()
def sliding_window_probabilities(net, image, patch, overlap, pad_value, num_classes):
    """Softmax (K, z, y, x) for image (C, z, y, x), as src/core/sliding_window.cpp does."""
    size = image.shape[1:]
    padded = [max(s, p) for s, p in zip(size, patch)]
    pad = []
    for a in (2, 1, 0):
        pad += [0, padded[a] - size[a]]
    x = F.pad(image, pad, value=pad_value)
    g = gaussian_importance(patch)
    probs = torch.zeros(num_classes, *padded)
    weights = torch.zeros(*padded)
    for z in window_starts(padded[0], patch[0], overlap):
        for y in window_starts(padded[1], patch[1], overlap):
            for xx in window_starts(padded[2], patch[2], overlap):
                sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(xx, xx + patch[2]))
                p = torch.softmax(net(x[(slice(None),) + sl].unsqueeze(0)), 1)[0]
                probs[(slice(None),) + sl] += p * g
                weights[sl] += g
    probs /= weights
    return probs[:, :size[0], :size[1], :size[2]]


def label_name(card, code):
    return card.get("labels", {}).get(str(code), f"label{code}")


def ivh_code(card):
    """The code of the card's intraventricular-blood label, if it has one."""
    codes = [int(k) for k, v in card.get("labels", {}).items() if v == "ivh"]
    return codes[0] if codes and card["network"]["num_classes"] > 2 else None


def validate(net, cases, card, pad_value):
    patch = card["inference"]["patch_size"]
    overlap = float(card["inference"].get("overlap", 0.5))
    threshold = float(card.get("postprocessing", {}).get("threshold", 0.5))
    net.eval()
    per_case = []
    for c in cases:
        t = time.perf_counter()
        probs = sliding_window_probabilities(net, torch.from_numpy(c.image), patch, overlap, pad_value,
                                             card["network"]["num_classes"])
        num_classes = probs.shape[0]
        codes = (probs[1] >= threshold).numpy().astype(np.uint8) if num_classes == 2 else probs.argmax(0).numpy()
        row = {"case_id": c.case_id, "source": c.source}
        for k in range(1, num_classes):
            pred, truth = codes == k, c.label == k
            inter, total = np.logical_and(pred, truth).sum(), pred.sum() + truth.sum()
            dice = 1.0 if total == 0 else 2.0 * inter / total
            suffix = "" if k == 1 else f"_{label_name(card, k)}"
            row.update({f"dice{suffix}": round(float(dice), 4), f"voxels_truth{suffix}": int(truth.sum()),
                        f"voxels_pred{suffix}": int(pred.sum())})
        per_case.append(row)
        log(f"val {c.case_id}: " + " ".join(f"{k} {v}" for k, v in row.items() if k.startswith(("dice", "voxels")))
            + f" ({time.perf_counter() - t:.1f} s)")
    net.train()
    return per_case


# ----------------------------------------------------------------------------- export

def export(path, net, card):
    state = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    tmp = path + ".tmp"
    hemexp_safetensors.save(tmp, state, {"hemexp_model_card": json.dumps(card, sort_keys=True)})
    os.replace(tmp, path)


def validation_block(per_case, seconds):
    dice = [c["dice"] for c in per_case]
    by_source = {}
    for c in per_case:
        by_source.setdefault(c["source"], []).append(c["dice"])
    return {"python_patch_validation": {
        "description": "Dice on held-out whole training-distribution cases, on the model grid (the prepared "
                       "volumes), full-volume sliding-window inference in Python (Gaussian weights, card overlap, "
                       "threshold on softmax, no component cleanup); not the C++ tool's native-grid measurement",
        "cases": len(per_case),
        "mean_dice": round(float(np.mean(dice)), 4) if dice else None,
        "median_dice": round(float(np.median(dice)), 4) if dice else None,
        "mean_dice_by_data": {os.path.basename(os.path.normpath(k)): round(float(np.mean(v)), 4)
                              for k, v in by_source.items()},
        # other labels: mean Dice over the cases where the truth has the label
        **{f"mean_{key}_where_present": round(float(np.mean(
            [c[key] for c in per_case if c["voxels_truth" + key[4:]] > 0])), 4)
           for key in sorted({k for c in per_case for k in c if k.startswith("dice_")})
           if any(c["voxels_truth" + key[4:]] > 0 for c in per_case)},
        "per_case": per_case, "seconds": round(seconds, 1)}}


def widen_heads(tensors, target_state):
    """Weights of a model with fewer output classes made to fit target_state: tensors whose
    first dimension is the class count (the segmentation heads) keep their rows, and each new
    class starts as a copy of class 1 with its bias 2 lower (it starts below the hematoma)."""
    out = {}
    for name, t in tensors.items():
        want = target_state[name].shape
        if t.shape == want or not name.startswith("seg_heads.") or t.shape[1:] != want[1:] or t.shape[0] > want[0]:
            out[name] = t
            continue
        rows = [t] + [t[1:2] - (2.0 if name.endswith(".bias") else 0.0) for _ in range(want[0] - t.shape[0])]
        out[name] = torch.cat(rows, 0)
        log(f"--init: {name} widened from {t.shape[0]} to {want[0]} classes")
    return out


def validate_only(args):
    """--validate-only MODEL: the held-out cases of MODEL's own training split (its seed and
    validation case list when the card has them), validated again; --out, when given, gets
    MODEL's weights with the new validation block."""
    tensors, metadata = hemexp_safetensors.load(args.validate_only)
    card = json.loads(metadata["hemexp_model_card"])
    net = hemexp_nets.UMamba(card["network"])
    net.load_state_dict(tensors, strict=True)
    if args.scan_chunk > 0:
        hemexp_nets.use_scan(net, functools.partial(hemexp_nets.selective_scan_chunked, chunk=args.scan_chunk))
    training = card.get("training", {})
    seed = training.get("seed", args.seed)
    _, val_rows = split_cases(args.data, args.val_fraction, seed)
    wanted = set(training.get("validation_case_ids", []))
    if wanted:
        val_rows = [r for r in val_rows if r[0] in wanted]
    val_rows = val_rows[args.val_skip:]
    if args.val_max_cases >= 0:
        val_rows = val_rows[:args.val_max_cases]
    norm = card["preprocessing"]["normalization"]
    pad_value = float((norm["clip_hu"][0] - norm["mean_hu"]) / norm["std_hu"])
    t = time.perf_counter()
    make_case = functools.partial(Case, num_classes=card["network"]["num_classes"], ivh_code=ivh_code(card))
    per_case = validate(net, [make_case(cid, p, d) for cid, p, d in val_rows], card, pad_value)
    block = validation_block(per_case, time.perf_counter() - t)
    summary = {k: v for k, v in block["python_patch_validation"].items() if k not in ("per_case", "description")}
    log(f"validation of {args.validate_only}: {json.dumps(summary)}")
    if args.out:
        card["validation"] = block
        export(args.out, net, card)
        log(f"wrote {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="folders written by `hemexp prepare`")
    ap.add_argument("--card", default=None, help="model card template (JSON) without training/validation")
    ap.add_argument("--out", default=None, help="output .safetensors")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the training loop")
    ap.add_argument("--iterations", type=int, default=None, help="number of iterations (batches)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-fraction", type=float, default=0.1, help="share of whole cases held out")
    ap.add_argument("--val-max-cases", type=int, default=10, help="at most this many held-out cases validated")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--fg-fraction", type=float, default=0.5, help="share of each batch centred on hematoma (>= 1/3)")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=None, help="initial learning rate (adam 2e-3, sgd 1e-2)")
    ap.add_argument("--weight-decay", type=float, default=3e-5)
    ap.add_argument("--scan-chunk", type=int, default=16, help="chunk of the chunked selective scan (0: reference)")
    ap.add_argument("--checkpoint-minutes", type=float, default=10.0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--rescan-minutes", type=float, default=0.0,
                    help="re-list the data folders this often and add newly prepared cases (0: never)")
    ap.add_argument("--min-cases", type=int, default=1, help="wait until this many training cases are prepared")
    ap.add_argument("--validate-only", default=None, metavar="MODEL",
                    help="no training: validate MODEL on its held-out cases (all, or --val-max-cases)")
    ap.add_argument("--val-skip", type=int, default=0, help="with --validate-only: skip the first N held-out cases")
    ap.add_argument("--init", default=None,
                    help="start from the weights of this .safetensors (a model with fewer classes: its heads' "
                         "rows are copied, each new class starts as a copy of class 1 with its bias lowered by 2)")
    ap.add_argument("--ivh-fraction", type=float, default=0.0,
                    help="share of the hematoma-centred patches centred on intraventricular blood instead "
                         "(cards with an 'ivh' label; cases that have some)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.validate_only:
        return validate_only(args)
    if not args.card or not args.out:
        ap.error("--card and --out are required for training")
    if args.minutes is None and args.iterations is None:
        ap.error("give --minutes and/or --iterations")
    if args.fg_fraction < 1 / 3:
        ap.error("--fg-fraction must be at least 1/3")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    with open(args.card) as f:
        card = json.load(f)
    for key in ("training", "validation"):
        card.pop(key, None)
    patch = card["inference"]["patch_size"]
    norm = card["preprocessing"]["normalization"]
    pad_value = float((norm["clip_hu"][0] - norm["mean_hu"]) / norm["std_hu"])
    num_classes = card["network"]["num_classes"]
    if len(card.get("labels", {"0": "background", "1": "hematoma"})) != num_classes:
        ap.error(f"the card's labels must name its {num_classes} classes (hemexp run refuses the model otherwise)")
    if args.ivh_fraction > 0 and ivh_code(card) is None:
        log("warning: --ivh-fraction is ignored: the card has no 'ivh' label")

    train_rows, val_rows = split_cases(args.data, args.val_fraction, args.seed)
    while len(train_rows) < args.min_cases:
        log(f"{len(train_rows)} training cases prepared, waiting for {args.min_cases}")
        time.sleep(30)
        train_rows, val_rows = split_cases(args.data, args.val_fraction, args.seed)
    log(f"{len(train_rows)} training cases, {len(val_rows)} held out, from {len(args.data)} folder(s)")
    t = time.perf_counter()
    make_case = functools.partial(Case, num_classes=card["network"]["num_classes"], ivh_code=ivh_code(card))
    train_cases = [make_case(cid, p, d) for cid, p, d in train_rows]
    log(f"loaded training cases in {time.perf_counter() - t:.1f} s; "
        f"{sum(len(c.fg) > 0 for c in train_cases)} with hematoma")
    if num_classes > 2 and not any(c.label.max() >= 2 for c in train_cases):
        ap.error("the card has more than two labels but no training label has a code above 1: "
                 "was the data prepared with a two-label card?")

    net = hemexp_nets.UMamba(card["network"])
    init_block = None
    if args.init:
        tensors, init_meta = hemexp_safetensors.load(args.init)
        net.load_state_dict(widen_heads(tensors, net.state_dict()), strict=True)
        with open(args.init, "rb") as f:
            init_sha = hashlib.sha256(f.read()).hexdigest()
        init_card = json.loads((init_meta or {}).get("hemexp_model_card", "{}"))
        # The earlier stage's training record travels with the weights it produced.
        init_block = {"file": os.path.basename(args.init), "sha256": init_sha,
                      "training": init_card.get("training")}
        log(f"initialised from {args.init}")
    if args.scan_chunk > 0:
        hemexp_nets.use_scan(net, functools.partial(hemexp_nets.selective_scan_chunked, chunk=args.scan_chunk))
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{card['network']['architecture']} with {n_params} parameters ({n_params * 4 / 2**20:.1f} MiB fp32)")
    lr0 = args.lr if args.lr is not None else (2e-3 if args.optimizer == "adam" else 1e-2)
    if args.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr0, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=lr0, momentum=0.99, nesterov=True, weight_decay=args.weight_decay)
    sampler = PatchSampler(train_cases, patch, pad_value, args.fg_fraction, args.seed, args.ivh_fraction)
    if ivh_code(card) is not None:
        log(f"{len(sampler.ivh_cases)} training cases with intraventricular blood; --ivh-fraction {args.ivh_fraction}")

    stop = {"requested": False}

    def on_signal(signum, frame):
        stop["requested"] = True
        log(f"signal {signum}: stopping after this iteration, then validating and exporting")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def training_block(iterations, seconds, losses):
        return {"data": [os.path.abspath(d) for d in args.data],
                "cases": {"train": len(train_rows), "validation": len(val_rows)},
                "train_case_ids": [r[0] for r in train_rows], "validation_case_ids": [r[0] for r in val_rows],
                "seed": args.seed, "iterations": iterations, "minutes": round(seconds / 60, 2),
                "batch_size": args.batch_size, "patch_size": patch, "fg_fraction": args.fg_fraction,
                **({"ivh_fraction": args.ivh_fraction} if ivh_code(card) is not None else {}),
                "optimizer": args.optimizer, "lr": lr0, "lr_schedule": "poly 0.9", "weight_decay": args.weight_decay,
                "loss": "cross-entropy + (1 - soft Dice) averaged over foreground classes, deep supervision weights "
                        "1/2^i normalised, labels max-pooled (lower code wins)",
                "augmentation": "flips x/y p=0.5, intensity scale 1+-0.1, shift +-0.1 (normalised units)",
                "scan": f"chunked (chunk {args.scan_chunk})" if args.scan_chunk > 0 else "reference",
                "final_loss_mean_last_50": round(float(np.mean(losses[-50:])), 4) if losses else None,
                "torch_version": torch.__version__, "threads": args.threads,
                "hardware": f"CPU, {args.threads} threads ({os.cpu_count()} cores visible)",
                "script": "scripts/train_segmenter.py", "argv": sys.argv[1:],
                **({"initialised_from": init_block} if init_block else {})}

    budget_s = args.minutes * 60 if args.minutes is not None else None
    start = time.perf_counter()
    last_checkpoint = start
    losses, dices = [], []
    it = 0
    last_rescan = start
    net.train()
    while True:
        elapsed = time.perf_counter() - start
        if args.iterations is not None and it >= args.iterations:
            break
        if budget_s is not None and elapsed >= budget_s:
            break
        if stop["requested"]:
            break
        progress = 0.0
        if args.iterations is not None:
            progress = it / args.iterations
        if budget_s is not None:
            progress = max(progress, elapsed / budget_s)
        lr = lr0 * (1 - min(progress, 0.999)) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        if args.rescan_minutes > 0 and time.perf_counter() - last_rescan > args.rescan_minutes * 60:
            last_rescan = time.perf_counter()
            known = {r[0] for r in train_rows}
            new_train, val_rows = split_cases(args.data, args.val_fraction, args.seed)
            added = [r for r in new_train if r[0] not in known]
            if added:
                train_rows = train_rows + added
                train_cases.extend(make_case(cid, p, d) for cid, p, d in added)
                sampler.fg_cases = [i for i, c in enumerate(train_cases) if len(c.fg)]
                sampler.ivh_cases = [i for i, c in enumerate(train_cases) if len(c.ivh)]
                log(f"added {len(added)} newly prepared cases: {len(train_rows)} training, {len(val_rows)} held out")
        images, labels = sampler.sample(args.batch_size)
        outputs = net.forward_all(images)
        loss, dice = deep_supervision_loss(outputs, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        it += 1
        losses.append(float(loss))
        dices.append(float(dice))
        if it % args.log_every == 0 or it == 1:
            el = time.perf_counter() - start
            log(f"it {it} loss {np.mean(losses[-args.log_every:]):.4f} patch-dice {np.mean(dices[-args.log_every:]):.3f} "
                f"lr {lr:.2e} {el:.0f} s ({it / el:.3f} it/s)")
        if time.perf_counter() - last_checkpoint > args.checkpoint_minutes * 60:
            ck = dict(card)
            ck["training"] = training_block(it, time.perf_counter() - start, losses)
            ck["training"]["checkpoint"] = True
            ck["validation"] = {"python_patch_validation": "not computed (checkpoint during training)"}
            export(args.out, net, ck)
            last_checkpoint = time.perf_counter()
            log(f"checkpoint at iteration {it} -> {args.out}")
    seconds = time.perf_counter() - start
    _, val_rows = split_cases(args.data, args.val_fraction, args.seed)
    log(f"training done: {it} iterations in {seconds:.0f} s ({it / max(seconds, 1e-9):.3f} it/s)")
    card["training"] = training_block(it, seconds, losses)
    # export before validating, so a killed validation still leaves the trained weights
    card["validation"] = {"python_patch_validation": "not computed yet"}
    export(args.out, net, card)

    val_rows_used = val_rows[:args.val_max_cases] if args.val_max_cases >= 0 else val_rows
    stop["requested"] = False
    val_cases = [make_case(cid, p, d) for cid, p, d in val_rows_used]
    t = time.perf_counter()
    per_case = validate(net, val_cases, card, pad_value) if val_cases else []
    card["validation"] = validation_block(per_case, time.perf_counter() - t)
    export(args.out, net, card)
    log(f"validation: mean Dice {card['validation']['python_patch_validation']['mean_dice']} on {len(per_case)} "
        f"held-out cases; by data {card['validation']['python_patch_validation']['mean_dice_by_data']}")
    log(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
