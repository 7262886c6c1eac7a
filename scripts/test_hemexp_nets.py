"""Tests of the PyTorch reference networks: U-Mamba scan variants and the ViT (plain asserts).

    /usr/bin/python3 scripts/test_hemexp_nets.py          # tests
    /usr/bin/python3 scripts/test_hemexp_nets.py --bench  # tests, then forward+backward timing
"""
import functools
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
from hemexp_nets import selective_scan_chunked, selective_scan_reference  # noqa: E402


def random_scan_inputs(batch, length, d_inner, n_state, seed, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d_inner, generator=g)
    # softplus of a spread of biases, as in Mamba: delta between ~1e-3 and a few units
    delta = torch.nn.functional.softplus(torch.randn(batch, length, d_inner, generator=g) * 2 - 1) * delta_scale
    A = -torch.exp(torch.log(torch.arange(1, n_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
                   + 0.3 * torch.randn(d_inner, n_state, generator=g))
    B = torch.randn(batch, length, n_state, generator=g)
    C = torch.randn(batch, length, n_state, generator=g)
    D = torch.randn(d_inner, generator=g)
    return u, delta, A, B, C, D


def test_chunked_matches_reference():
    cases = [(2, 100, 8, 16, 16), (1, 97, 16, 16, 32), (2, 64, 12, 16, 64), (1, 5, 8, 4, 16),
             (1, 130, 8, 16, 48), (3, 33, 6, 16, 32)]
    for i, (batch, length, d_inner, n_state, chunk) in enumerate(cases):
        for scale in (1.0, 0.01, 10.0):  # slow and very fast decay
            args = random_scan_inputs(batch, length, d_inner, n_state, 100 + i, scale)
            ref = selective_scan_reference(*args)
            got = selective_scan_chunked(*args, chunk=chunk)
            assert got.shape == ref.shape and got.dtype == torch.float32
            diff = (got - ref).abs().max().item()
            assert torch.isfinite(got).all(), (i, scale)
            assert diff <= 1e-4, f"case {i} scale {scale}: max |diff| {diff}"


def test_chunked_gradients_match_reference():
    args = random_scan_inputs(2, 45, 8, 16, 7)
    leaves = [a.clone().requires_grad_(True) for a in args]
    w = torch.randn(2, 45, 8, generator=torch.Generator().manual_seed(3))
    (selective_scan_reference(*leaves) * w).sum().backward()
    ref = [l.grad.clone() for l in leaves]
    leaves = [a.clone().requires_grad_(True) for a in args]
    (selective_scan_chunked(*leaves, chunk=16) * w).sum().backward()
    for name, r, l in zip("u delta A B C D".split(), ref, leaves):
        diff = (l.grad - r).abs().max().item()
        assert diff <= 1e-3 * max(1.0, r.abs().max().item()), f"grad {name}: {diff}"


def test_mamba_use_scan_switches_and_agrees():
    torch.manual_seed(0)
    net = hemexp_nets.UMamba({"architecture": "UMambaEnc", "in_channels": 1, "num_classes": 2,
                              "features_per_stage": [4, 8, 16], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                              "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "blocks_per_stage": [1, 1, 1],
                              "blocks_per_stage_decoder": [1, 1]}).eval()
    x = torch.randn(1, 1, 6, 20, 18)
    with torch.no_grad():
        ref = net.forward_all(x)
        hemexp_nets.use_scan(net, functools.partial(selective_scan_chunked, chunk=32))
        got = net.forward_all(x)
        hemexp_nets.use_scan(net, None)
        again = net.forward_all(x)
    for r, g, a in zip(ref, got, again):
        assert (r - g).abs().max().item() <= 1e-4
        assert torch.equal(r, a)
    assert all(m.scan is None for m in net.modules() if isinstance(m, hemexp_nets.Mamba))
    assert "scan" not in "".join(net.state_dict().keys())


VIT_NETWORK = {"architecture": "ViT", "in_channels": 3, "image_size": [6, 20, 12], "patch_size": [2, 4, 3],
               "embed_dim": 48, "depth": 2, "num_heads": 4, "mlp_dim": 64, "layer_norm_eps": 1e-6, "dropout": 0.1}


def vit_parameter_names(depth):
    """The names src/core/networks/vit.cpp registers, written out independently of either network."""
    names = ["cls_token", "pos_embed", "patch_embed.weight", "patch_embed.bias",
             "norm.weight", "norm.bias", "head.weight", "head.bias"]
    for b in range(depth):
        for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            names += [f"blocks.{b}.{sub}.weight", f"blocks.{b}.{sub}.bias"]
    return sorted(names)


def test_vit_shapes_and_state_dict_names():
    torch.manual_seed(1)
    net = hemexp_nets.ViT(VIT_NETWORK).eval()
    assert sorted(net.state_dict()) == vit_parameter_names(2)  # no buffers, no extra entries
    assert net.num_patches == 3 * 5 * 4 and net.pos_embed.shape == (1, 61, 48)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 6, 20, 12))
    assert out.shape == (2,)
    n_params = sum(p.numel() for p in net.parameters())
    # The same closed form as ViTConfig::num_parameters() in C++.
    e, m, d = 48, 64, 2
    assert n_params == (3 * 24 * e + e) + e + 61 * e + d * (4 * e * e + 9 * e + 2 * e * m + m) + 2 * e + e + 1


def test_vit_attention_matches_per_head_loop():
    torch.manual_seed(2)
    attn = hemexp_nets.SelfAttention(48, 4).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 7, 48)
        got = attn(x)
        w, b = attn.qkv.weight, attn.qkv.bias
        heads = []
        for h in range(4):  # head h owns features h*12 .. h*12+11 of each of q, k and v
            rows = [slice(part * 48 + h * 12, part * 48 + (h + 1) * 12) for part in range(3)]
            q, k, v = (x @ w[r].T + b[r] for r in rows)
            heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(12), dim=-1) @ v)
        expected = attn.proj(torch.cat(heads, dim=-1))
        assert (got - expected).abs().max().item() <= 1e-5
        # The classic bug, reshaping qkv straight to (3, B, H, N, hd), gives something else.
        qkv = attn.qkv(x).reshape(3, 2, 4, 7, 12)
        wrong = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(12), dim=-1) @ qkv[2]
        wrong = attn.proj(wrong.transpose(1, 2).reshape(2, 7, 48))
        assert (wrong - expected).abs().max().item() > 1e-2


def test_vit_dropout_only_in_training():
    torch.manual_seed(3)
    net = hemexp_nets.ViT(VIT_NETWORK)
    x = torch.randn(1, 3, 6, 20, 12)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), net(x))
        assert not torch.equal(net.train()(x), net.eval()(x))


def test_window_starts_match_cpp():
    """train_segmenter's window placement equals src/core/sliding_window.cpp's (tests/core/
    test_inference.cpp has the same cases): halves round up, as llround does."""
    from train_segmenter import window_starts
    assert window_starts(100, 40, 0.5) == [0, 20, 40, 60]
    assert window_starts(101, 40, 0.5) == [0, 15, 31, 46, 61]
    assert window_starts(40, 40, 0.5) == [0]
    assert window_starts(100, 40, 0.0) == [0, 30, 60]
    assert window_starts(165, 96, 0.5) == [0, 35, 69]  # 34.5: Python's round() gave 34


def test_multiclass_labels_loss_and_widened_heads():
    """train_segmenter with more than two labels: deep-supervision labels keep the lower code
    (a hematoma voxel stays hematoma), the loss averages the foreground classes' Dice and is
    the two-class loss for two classes, and --init widens a two-class model's heads."""
    import torch.nn.functional as F
    from train_segmenter import dice_ce_loss, downsample_labels, widen_heads
    t = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    t[0, :, 0:2, 0:2] = torch.tensor([[3, 1], [2, 0]])  # one 2x2 block with edema, hematoma, IVH
    t[0, :, 0:2, 2:4] = torch.tensor([[3, 0], [2, 2]])  # IVH beats edema
    t[0, :, 2:4, 0:2] = 3
    assert downsample_labels(t, (1, 2, 2)).tolist() == [[[[1, 2], [3, 0]]]]
    mask = (torch.rand(1, 4, 8, 8) > 0.7).long()
    assert torch.equal(downsample_labels(mask, (2, 4, 4)),
                       F.adaptive_max_pool3d(mask.unsqueeze(1).float(), (2, 4, 4)).squeeze(1).long())
    # Two classes: cross-entropy + 1 - soft Dice of class 1, as before.
    logits = torch.randn(2, 2, 4, 8, 8)
    loss, dice = dice_ce_loss(logits, mask.expand(2, -1, -1, -1))
    p, target = torch.softmax(logits, 1)[:, 1], mask.expand(2, -1, -1, -1).float()
    d1 = (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    assert abs(float(loss) - float(F.cross_entropy(logits, mask.expand(2, -1, -1, -1)) + 1 - d1)) < 1e-6
    assert abs(float(dice) - float(d1)) < 1e-6
    # Perfect four-class logits: Dice 1 for every class, loss is the (tiny) cross-entropy.
    codes = torch.randint(0, 4, (1, 4, 8, 8))
    perfect = 30.0 * F.one_hot(codes, 4).permute(0, 4, 1, 2, 3).float()
    loss, dice = dice_ce_loss(perfect, codes)
    assert float(loss) < 1e-6 and abs(float(dice) - 1) < 1e-6
    wrong = 30.0 * F.one_hot((codes + 1) % 4, 4).permute(0, 4, 1, 2, 3).float()
    assert float(dice_ce_loss(wrong, codes)[0]) > 30
    # --init from a two-class model: rows kept, new classes copy class 1 with a bias 2 lower.
    two = hemexp_nets.UMamba({**CARD_NET, "num_classes": 2}).state_dict()
    four = hemexp_nets.UMamba({**CARD_NET, "num_classes": 4})
    widened = widen_heads(two, four.state_dict())
    four.load_state_dict(widened, strict=True)
    for name, t in two.items():
        if name.startswith("seg_heads."):
            w = widened[name]
            assert w.shape[0] == 4 and torch.equal(w[:2], t)
            shift = 2.0 if name.endswith(".bias") else 0.0
            assert torch.equal(w[2], t[1] - shift) and torch.equal(w[3], t[1] - shift)
        else:
            assert torch.equal(widened[name], t)


CARD_NET = {"architecture": "UMambaBot", "in_channels": 1, "features_per_stage": [4, 8],
            "strides": [[1, 1, 1], [1, 2, 2]], "kernel_sizes": [[1, 3, 3], [3, 3, 3]],
            "blocks_per_stage": [1, 1], "blocks_per_stage_decoder": [1], "d_state": 4, "d_conv": 2,
            "expand": 2, "deep_supervision": True}


def bench():
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    # the bottleneck of models/seg_card_template.json at batch 2: 128 channels -> d_inner 256,
    # 4x12x12 = 576 tokens; and a longer, narrower sequence
    for (batch, length, d_inner) in [(2, 576, 256), (1, 4096, 64)]:
        args = random_scan_inputs(batch, length, d_inner, 16, 1, 0.05)
        line = [f"batch {batch} L {length} d_inner {d_inner}:"]
        for name, fn in [("reference", selective_scan_reference)] + [
                (f"chunked{c}", functools.partial(selective_scan_chunked, chunk=c)) for c in (8, 16, 32, 64)]:
            leaves = [a.clone().requires_grad_(True) for a in args]
            best_f, best_fb = 1e9, 1e9
            for _ in range(2):
                t = time.perf_counter()
                with torch.no_grad():
                    fn(*args)
                best_f = min(best_f, time.perf_counter() - t)
                t = time.perf_counter()
                fn(*leaves).sum().backward()
                best_fb = min(best_fb, time.perf_counter() - t)
            line.append(f"{name} fwd {best_f*1e3:.0f} ms, fwd+bwd {best_fb*1e3:.0f} ms;")
        print(" ".join(line), flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            t = time.perf_counter()
            fn()
            print(f"ok {name} ({time.perf_counter() - t:.1f} s)", flush=True)
    if "--bench" in sys.argv:
        bench()
