"""Makes the C++/PyTorch parity fixtures in tests/data/parity: a tiny U-Mamba_Bot and
U-Mamba_Enc with random weights (fixed seed), an input, and every deep-supervision output.

    /usr/bin/python3 scripts/make_parity_fixture.py
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "parity")


def network(architecture):
    return {"architecture": architecture, "in_channels": 1, "num_classes": 2,
            "features_per_stage": [4, 8, 16], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "blocks_per_stage": [1, 2, 1],
            "blocks_per_stage_decoder": [1, 2], "d_state": 16, "d_conv": 4, "expand": 2,
            "deep_supervision": True}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for arch in ("UMambaBot", "UMambaEnc"):
        torch.manual_seed(20261126)
        net = hemexp_nets.UMamba(network(arch)).eval()
        with torch.no_grad():  # make every parameter matter: no identity norms, varied A and D
            for name, p in net.named_parameters():
                if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                elif name.endswith(("norm1.bias", "norm2.bias", "norm.bias")):
                    p.copy_(0.1 * torch.randn_like(p))
                elif name.endswith("A_log"):
                    p.add_(0.3 * torch.randn_like(p))
                elif name.endswith(".D"):
                    p.copy_(torch.randn_like(p))
        x = torch.randn(1, 1, 6, 20, 18)  # odd sizes: stride-2 stages round up
        with torch.no_grad():
            outs = net.forward_all(x)
        card = {"format_version": 1, "kind": "segmentation", "network": network(arch),
                "note": "parity fixture: random weights, not a model"}
        stem = arch.lower()
        hemexp_safetensors.save(os.path.join(OUT, stem + ".safetensors"),
                                {k: v for k, v in net.state_dict().items()},
                                {"hemexp_model_card": json.dumps(card, sort_keys=True)})
        io = {"input": x}
        io.update({f"output.{i}": o for i, o in enumerate(outs)})
        hemexp_safetensors.save(os.path.join(OUT, stem + "_io.safetensors"), io)
        print(arch, [tuple(o.shape) for o in outs], sum(p.numel() for p in net.parameters()), "parameters")


if __name__ == "__main__":
    main()
