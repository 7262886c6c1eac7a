"""PyTorch reference of hemexp's networks (training and export).

The same architectures as src/core/networks/*.cpp, with identical parameter names, so that
weights exported from here load into the C++ networks one to one. Run with /usr/bin/python3
(Debian's python3-torch).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def selective_scan_reference(u, delta, A, B, C, D):
    """Mamba selective scan, fp32, state (batch, d_inner, N); never builds (L, d_inner, N).

    u, delta: (batch, L, d_inner); A: (d_inner, N); B, C: (batch, L, N); D: (d_inner).
    """
    batch, length, d_inner = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, t, :].unsqueeze(-1)                       # (batch, d_inner, 1)
        h = torch.exp(dt * A) * h + dt * B[:, t, :].unsqueeze(1) * u[:, t, :].unsqueeze(-1)
        ys.append((h * C[:, t, :].unsqueeze(1)).sum(-1) + D * u[:, t, :])
    return torch.stack(ys, dim=1)


def selective_scan_chunked(u, delta, A, B, C, D, chunk=32):
    """The same selective scan as selective_scan_reference, a chunk of `chunk` tokens at a time.

    Within a chunk the recursion is solved in closed form in log space: with S_t = sum_{r<=t}
    delta_r*A (cumulative sum of delta*A from the chunk start), h_t = exp(S_t) h_start +
    sum_{s<=t} exp(S_t - S_s) delta_s B_s u_s. Only exponentials of differences S_t - S_s <= 0
    are taken (the cumulative sums are kept in float64 so that the differences do not lose
    precision), with the non-causal half (s > t) masked to -inf before exp, so nothing
    overflows. Across chunks only h (batch, d_inner, N) is carried. The largest temporaries are
    (batch, d_inner, N, chunk, chunk) per chunk; (L, d_inner, N) is never built for the whole
    sequence. Result fp32; differentiable (autograd keeps the per-chunk tensors).

    u, delta: (batch, L, d_inner); A: (d_inner, N); B, C: (batch, L, N); D: (d_inner).
    """
    batch, length, d_inner = u.shape
    n_state = A.shape[1]
    h = u.new_zeros(batch, d_inner, n_state)
    noncausal = torch.ones(chunk, chunk, dtype=torch.bool, device=u.device).triu(1)  # [t, s]: s > t
    A64 = A.double().view(1, d_inner, n_state, 1)
    ys = []
    for t0 in range(0, length, chunk):
        t1 = min(t0 + chunk, length)
        size = t1 - t0
        dt = delta[:, t0:t1, :].transpose(1, 2)                   # (b, d, T)
        uc = u[:, t0:t1, :]
        S = torch.cumsum(dt.double().unsqueeze(2) * A64, dim=-1)  # (b, d, N, T), float64
        seg = (S.unsqueeze(-1) - S.unsqueeze(-2)).float()          # (b, d, N, T_t, T_s): S_t - S_s
        decay = seg.masked_fill_(noncausal[:size, :size], float("-inf")).exp_()
        x = (dt * uc.transpose(1, 2)).unsqueeze(2) * B[:, t0:t1, :].transpose(1, 2).unsqueeze(1)  # (b, d, N, T)
        states = torch.matmul(decay, x.unsqueeze(-1)).squeeze(-1) + torch.exp(S.float()) * h.unsqueeze(-1)
        ys.append(torch.einsum("bdnt,btn->btd", states, C[:, t0:t1, :]) + D * uc)
        h = states[..., -1]
    return torch.cat(ys, dim=1)


def use_scan(module, scan):
    """Makes every Mamba block inside `module` use `scan` (e.g. selective_scan_chunked, or
    functools.partial(selective_scan_chunked, chunk=64)); None restores the reference."""
    for m in module.modules():
        if isinstance(m, Mamba):
            m.scan = scan
    return module


class ResidualBlock(nn.Module):
    """conv-IN-LReLU-conv-IN + (1x1 strided projection when the shape changes), LReLU of the sum."""

    def __init__(self, in_channels, out_channels, kernel, stride):
        super().__init__()
        pad = [k // 2 for k in kernel]
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=pad)
        self.norm1 = nn.InstanceNorm3d(out_channels, affine=True, eps=1e-5)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel, padding=pad)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True, eps=1e-5)
        strided = any(s != 1 for s in stride)
        self.skip = nn.Conv3d(in_channels, out_channels, 1, stride=stride) if (in_channels != out_channels or strided) else None

    def forward(self, x):
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + (self.skip(x) if self.skip is not None else x), 0.01)


class Mamba(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        # Mamba's dt initialisation: softplus(bias) spread between 1e-3 and 1e-1.
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    scan = None  # set by use_scan(); None means selective_scan_reference

    def forward(self, x, scan=None):
        scan = scan or self.scan or selective_scan_reference
        length = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv1d(xs.transpose(1, 2))[..., :length].transpose(1, 2)).contiguous()
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        y = scan(u, delta.contiguous(), A, B.contiguous(), C.contiguous(), self.D)
        return self.out_proj(y * F.silu(z))


class MambaLayer(nn.Module):
    """(B, C, D, H, W) -> (B, L, C) with W fastest -> LayerNorm -> Mamba -> back; no residual."""

    def __init__(self, channels, d_state=16, d_conv=4, expand=2):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-5)
        self.mamba = Mamba(channels, d_state, d_conv, expand)

    def forward(self, x):
        shape = x.shape
        tokens = x.reshape(shape[0], shape[1], -1).transpose(1, 2)
        return self.mamba(self.norm(tokens)).transpose(1, 2).reshape(shape)


class UMamba(nn.Module):
    """U-Mamba_Bot (Mamba at the bottleneck) or U-Mamba_Enc (after every encoder stage)."""

    def __init__(self, card_network):
        super().__init__()
        c = card_network
        self.config = dict(c)
        n = len(c["features_per_stage"])
        every = c["architecture"] == "UMambaEnc"
        assert c["architecture"] in ("UMambaBot", "UMambaEnc")
        f, k, st = c["features_per_stage"], c["kernel_sizes"], c["strides"]
        ds, dc, ex = c.get("d_state", 16), c.get("d_conv", 4), c.get("expand", 2)
        self.stem = ResidualBlock(c["in_channels"], f[0], k[0], [1, 1, 1])
        self.encoder_stages = nn.ModuleList()
        self.encoder_mamba = nn.ModuleList()
        channels = f[0]
        for s in range(n):
            blocks = [ResidualBlock(channels, f[s], k[s], st[s])]
            blocks += [ResidualBlock(f[s], f[s], k[s], [1, 1, 1]) for _ in range(c["blocks_per_stage"][s] - 1)]
            self.encoder_stages.append(nn.Sequential(*blocks))
            channels = f[s]
            if every or s == n - 1:
                self.encoder_mamba.append(MambaLayer(channels, ds, dc, ex))
        self.upsample_convs = nn.ModuleList()
        self.decoder_stages = nn.ModuleList()
        self.seg_heads = nn.ModuleList()
        for s in range(n - 1):
            below, skip = f[n - 1 - s], f[n - 2 - s]
            self.upsample_convs.append(nn.Conv3d(below, skip, 1))
            blocks = [ResidualBlock(2 * skip, skip, k[n - 2 - s], [1, 1, 1])]
            blocks += [ResidualBlock(skip, skip, k[n - 2 - s], [1, 1, 1]) for _ in range(c["blocks_per_stage_decoder"][s] - 1)]
            self.decoder_stages.append(nn.Sequential(*blocks))
            self.seg_heads.append(nn.Conv3d(skip, c["num_classes"], 1))
        self.every = every
        self.deep_supervision = c.get("deep_supervision", True)

    def forward_all(self, x):
        n = len(self.encoder_stages)
        skips, m = [], 0
        x = self.stem(x)
        for s in range(n):
            x = self.encoder_stages[s](x)
            if self.every or s == n - 1:
                x = self.encoder_mamba[m](x)
                m += 1
            skips.append(x)
        outputs = []
        for s in range(n - 1):
            skip = skips[n - 2 - s]
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = self.upsample_convs[s](x)
            x = self.decoder_stages[s](torch.cat([x, skip], 1))
            if self.deep_supervision or s == n - 2:
                outputs.append(self.seg_heads[s](x))
        return outputs[::-1]

    def forward(self, x):
        return self.forward_all(x)[0]


class SelfAttention(nn.Module):
    """timm-style multi-head self-attention: qkv Linear(E, 3E) split as (3, heads, head_dim)."""

    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x):
        batch, tokens, embed = x.shape
        # (B, N, 3, H, hd) -> (3, B, H, N, hd); reshaping straight to (3, B, H, N, hd) would mix
        # tokens and heads (test_vit_attention_matches_per_head_loop catches that).
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, embed)))


class Mlp(nn.Module):
    def __init__(self, embed_dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))  # exact (erf) GELU, as the C++


class TransformerBlock(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, embed_dim, num_heads, mlp_dim, eps=1e-6, dropout=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=eps)
        self.attn = SelfAttention(embed_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embed_dim, eps=eps)
        self.mlp = Mlp(embed_dim, mlp_dim, dropout)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT classifier of a (B, C, D, H, W) ROI -> (B,) logits; the card's network block:
    architecture "ViT", in_channels, image_size [z, y, x], patch_size [z, y, x] (divides
    image_size), embed_dim, depth, num_heads (divides embed_dim), mlp_dim, layer_norm_eps
    (1e-6), dropout (0, training only), num_features (0: scalar features, normalised as the
    card's "features" block says, joined to the class token before the head), signs (optional
    names of NCCT signs: a sign layer Linear(num_features, len(signs)) whose sigmoid the head
    reads instead of the features), sign_inputs ("linear", the default: the layer reads the
    features; "quadratic": it reads the features and their pairwise products f_i f_j, i <= j, in
    row-major upper-triangle order, num_features (num_features + 3) / 2 inputs) and head_features
    (indices of the features the head still reads beside the sign probabilities). Validation of
    bounds is the C++ ViTConfig's job."""

    FIELDS = ("architecture", "in_channels", "image_size", "patch_size", "embed_dim", "depth", "num_heads",
              "mlp_dim", "layer_norm_eps", "dropout", "num_features",
              "signs", "sign_inputs", "head_features")

    def __init__(self, card_network):
        super().__init__()
        c = card_network
        unknown = set(c) - set(self.FIELDS)
        assert not unknown, f"not ViT fields: {sorted(unknown)}"
        assert c["architecture"] == "ViT"
        assert all(i % p == 0 for i, p in zip(c["image_size"], c["patch_size"])), "patch_size must divide image_size"
        assert c["embed_dim"] % c["num_heads"] == 0, "num_heads must divide embed_dim"
        self.config = dict(c)
        e, eps, drop = c["embed_dim"], c.get("layer_norm_eps", 1e-6), c.get("dropout", 0.0)
        self.image_size = tuple(c["image_size"])
        self.num_patches = math.prod(i // p for i, p in zip(c["image_size"], c["patch_size"]))
        self.patch_embed = nn.Conv3d(c["in_channels"], e, c["patch_size"], stride=c["patch_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, e))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList([TransformerBlock(e, c["num_heads"], c["mlp_dim"], eps, drop)
                                     for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(e, eps=eps)
        self.num_features = c.get("num_features", 0)
        self.sign_names = list(c.get("signs", []))
        self.head_features = list(c.get("head_features", []))
        self.sign_inputs = c.get("sign_inputs", "linear")
        assert self.sign_inputs in ("linear", "quadratic"), "sign_inputs must be linear or quadratic"
        assert self.sign_inputs == "linear" or self.sign_names, "sign_inputs needs signs"
        assert not self.head_features or self.sign_names, "head_features needs signs"
        assert all(0 <= i < self.num_features for i in self.head_features), "head_features must index the features"
        if self.sign_names:
            assert self.num_features > 0, "signs need features"
            n = self.num_features
            self.signs = nn.Linear(n + (n * (n + 1) // 2 if self.sign_inputs == "quadratic" else 0),
                                   len(self.sign_names))
            extra = len(self.sign_names) + len(self.head_features)
        else:
            extra = self.num_features
        self.head = nn.Linear(e + extra, 1)
        # timm's init: truncated normal 0.02 for the embeddings and Linear weights, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def embed(self, x):
        """The class token after the final norm: (B, E)."""
        assert x.dim() == 5 and tuple(x.shape[2:]) == self.image_size, f"input {tuple(x.shape)}"
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, E), x fastest
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.pos_drop(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 0])

    def forward(self, x, features=None):
        return self.classify(self.embed(x), features)

    def classify(self, pooled, features=None):
        """The head on the class token (B, E), joined with the features (B, num_features) if any."""
        if self.num_features:
            assert features is not None and tuple(features.shape) == (pooled.shape[0], self.num_features)
            pooled = torch.cat([pooled, self.head_inputs(features.to(pooled.dtype))], dim=1)
        else:
            assert features is None
        return self.head(pooled).squeeze(-1)  # (B)

    def sign_probabilities(self, features):
        """(B, num_features) -> (B, len(signs)): the sign layer's probabilities."""
        assert self.sign_names, "the card has no sign layer"
        return torch.sigmoid(self.signs(self.sign_layer_inputs(features)))

    def sign_layer_inputs(self, features):
        """(B, num_features) -> what the sign layer reads: the features, and with sign_inputs
        "quadratic" their pairwise products f_i f_j (i <= j, row-major: (0,0), (0,1), ..., (1,1), ...)."""
        if self.sign_inputs == "linear":
            return features
        i, j = torch.triu_indices(self.num_features, self.num_features, device=features.device)
        return torch.cat([features, features[:, i] * features[:, j]], dim=1)

    def head_inputs(self, features):
        """What the head reads beside the class token: the features, or with a sign layer the
        sign probabilities and the head_features."""
        if not self.sign_names:
            return features
        return torch.cat([self.sign_probabilities(features), features[:, self.head_features]], dim=1)
