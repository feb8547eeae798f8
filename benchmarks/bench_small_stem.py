"""Step cost of resnet18 stems for small images: timm's stem against stems that downsample less.

At 64 px timm's resnet18 downsamples 4x in the stem (7x7 stride-2 conv, then a stride-2 max-pool)
and ends on a 2x2 map. A CIFAR-style stem (3x3 stride-1 conv, no max-pool; solo-learn's for 32-64 px
data) keeps detail but every later stage works on 16x the pixels. This times one SGD step (forward,
backward, update) on random data, random init, for each stem, so the step count a CPU budget buys
can be compared before any quality run:

    python benchmarks/bench_small_stem.py                  # batch 128 (two SimCLR views of 64), 64 px
    python benchmarks/bench_small_stem.py --image-size 32 --steps 5

Prints seconds per step (each step listed; the first includes warm-up) and the final feature map.
"""
from __future__ import annotations

import argparse
import os
import time

import timm
import torch
from torch import nn

STEMS = ("timm", "no-maxpool", "stride1-maxpool", "cifar")


def make(stem: str) -> nn.Module:
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    if stem in ("no-maxpool", "cifar"):
        model.maxpool = nn.Identity()
    if stem in ("stride1-maxpool", "cifar"):
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    print(f"resnet18 @ {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    for stem in STEMS:
        model = make(stem).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        seconds = []
        for _ in range(args.steps):
            start = time.perf_counter()
            features = model.forward_features(x)
            model.forward_head(features).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds.append(time.perf_counter() - start)
        print(f"{stem:16s} map {tuple(features.shape[1:])}  s/step {[round(s, 2) for s in seconds]}", flush=True)


if __name__ == "__main__":
    main()
