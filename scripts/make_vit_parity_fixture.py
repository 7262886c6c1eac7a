"""Makes the C++/PyTorch parity fixture of the ViT classifier in tests/data/parity: a tiny ViT
with random weights (fixed seed), a batch of two ROIs, and their logits.

    /usr/bin/python3 scripts/make_vit_parity_fixture.py

Every size differs from the others (image 6x20x12, patch 2x4x3, grid 3x5x4, 4 heads of 12), so
a wrong patch order, axis order or head reshape changes the logits, not just relabels them.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "parity")

NETWORK = {"architecture": "ViT", "in_channels": 3, "image_size": [6, 20, 12], "patch_size": [2, 4, 3],
           "embed_dim": 48, "depth": 2, "num_heads": 4, "mlp_dim": 64, "layer_norm_eps": 1e-6, "dropout": 0.0}


def make(network, stem, seed):
    torch.manual_seed(seed)
    net = hemexp_nets.ViT(network).eval()
    with torch.no_grad():  # make every parameter matter: no identity norms, no near-zero embeddings
        for name, p in net.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(("norm1.bias", "norm2.bias", "norm.bias")):
                p.copy_(0.1 * torch.randn_like(p))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith(".weight") and p.dim() == 2:
                # timm's 0.02 makes attention nearly uniform; 0.15 gives peaked, head-specific maps
                p.copy_(0.15 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, *network["image_size"])
    io = {"input": x}
    features = None
    if network.get("num_features"):
        features = io["features"] = torch.randn(2, network["num_features"])
    with torch.no_grad():
        io["logits"] = net(x, features)
        if network.get("signs"):
            io["sign_probabilities"] = net.sign_probabilities(features)
    card = {"format_version": 1, "kind": "classification", "network": network,
            "note": "parity fixture: random weights, not a model"}
    hemexp_safetensors.save(os.path.join(OUT, stem + ".safetensors"), dict(net.state_dict()),
                            {"hemexp_model_card": json.dumps(card, sort_keys=True)})
    hemexp_safetensors.save(os.path.join(OUT, stem + "_io.safetensors"), io)
    print(stem, tuple(io["logits"].shape), io["logits"].tolist(), sum(p.numel() for p in net.parameters()),
          "parameters")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    make(NETWORK, "vit", 20261127)
    # The same network with 5 scalar features joined to the class token before the head.
    make(dict(NETWORK, num_features=5), "vit_features", 20261202)
    # With a sign layer: 3 sign probabilities from the 5 features, and features 3 and 0 (in that
    # order: an index_select, not a slice) beside them in the head.
    make(dict(NETWORK, num_features=5, signs=["swirl", "blend", "black_hole"], head_features=[3, 0]), "vit_signs",
         20261204)
    # The same with quadratic sign inputs: the layer reads the 5 features and their 15 pairwise
    # products (row-major upper triangle; any other order gives other sign probabilities).
    make(dict(NETWORK, num_features=5, signs=["swirl", "blend", "black_hole"], head_features=[3, 0],
              sign_inputs="quadratic"), "vit_signs_quad", 20261205)


if __name__ == "__main__":
    main()
