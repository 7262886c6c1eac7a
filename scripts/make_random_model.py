"""Writes a model file with random weights for a card, for benchmarks and plumbing tests only
(its masks mean nothing):

    /usr/bin/python3 scripts/make_random_model.py --card models/seg_card_template.json --out /tmp/random.safetensors
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hemexp_nets  # noqa: E402
import hemexp_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--card", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    card = json.load(open(a.card))
    card["name"] = card.get("name", "model") + "-RANDOM-WEIGHTS-benchmark-only"
    torch.manual_seed(a.seed)
    net = hemexp_nets.UMamba(card["network"])
    hemexp_safetensors.save(a.out, dict(net.state_dict()), {"hemexp_model_card": json.dumps(card, sort_keys=True)})
    print(a.out, sum(p.numel() for p in net.parameters()), "parameters")


if __name__ == "__main__":
    main()
