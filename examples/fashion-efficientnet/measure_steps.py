"""Seconds per fine-tuning step (batch 32) of a pretrained backbone on real Fashion-MNIST.

    python examples/fashion-efficientnet/measure_steps.py efficientnet_lite0 96 --steps 18

Prints wall and CPU seconds per step with every layer training, then with the backbone frozen;
the first 3 steps of each are warm-up and not timed. The README's table came from this.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tasks.data import IMAGENET_MEAN, IMAGENET_STD
from tasks.idx import DEBIAN_FASHION_MNIST, read_idx_split
from tasks.pretrained import build_pretrained, classifier_prefix

BATCH, WARMUP = 32, 3


def batches(size: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first steps x 32 training images at `size` px, 3 channels, ImageNet-normalised."""
    images, labels = read_idx_split(DEBIAN_FASHION_MNIST, "train")
    grey = torch.from_numpy(images[: BATCH * steps].astype(np.float32) / 255.0)[:, None]
    x = torch.nn.functional.interpolate(grey, size=(size, size), mode="bilinear").repeat(1, 3, 1, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x - mean) / std, torch.from_numpy(labels[: BATCH * steps])


def time_steps(arch: str, x: torch.Tensor, y: torch.Tensor, steps: int, frozen: bool) -> str:
    model = build_pretrained(arch, 10, 3, x.shape[-1], 1.0, Path(".weights")).model.train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not frozen or name.startswith(classifier_prefix(arch)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    losses = []
    for step in range(steps):
        if step == WARMUP:
            wall, cpu = time.perf_counter(), time.process_time()
        batch = slice(BATCH * step, BATCH * (step + 1))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    timed = steps - WARMUP
    return (
        f"{arch} {x.shape[-1]}px {'head only' if frozen else 'all layers'}: "
        f"{(time.perf_counter() - wall) / timed:.3f} s/step wall, "
        f"{(time.process_time() - cpu) / timed:.3f} CPU s/step "
        f"({torch.get_num_threads()} threads, loss {losses[0]:.2f} -> {losses[-1]:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=["efficientnet_lite0", "mobilenet_v2"])
    parser.add_argument("size", type=int)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = batches(args.size, args.steps)
    print(time_steps(args.arch, x, y, args.steps, frozen=False), flush=True)
    print(time_steps(args.arch, x, y, max(WARMUP + 5, args.steps // 3), frozen=True))


if __name__ == "__main__":
    main()
