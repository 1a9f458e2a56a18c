"""The offline feature network: a small classifier trained on the dataset itself.

Where the Inception weights cannot be had, eval_fid.py measures samples with this network
instead: its penultimate features f(x) (the global average of its last conv, like Inception's
pool3) give a Frechet distance reported as "FD-clf", never as FID, and its predictions give the
conditional accuracy, the share of samples classified as the class they were generated for
(the offline stand-in for the paper's CLIP score). Inputs are images in [0, 1].

    python -m plumbing.classifier --dataset shapes          # writes runs/clf.pt (options: --help)
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import checks, outputs
from . import data


class Classifier(nn.Module):
    """Small conv net for one dataset: forward(x in [0, 1]) -> (N, 8*width) penultimate features
    (global average of the last conv, like pool3); logits = head(features)."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        # one 3x3 conv per resolution, channels doubling as it halves: ~15M MACs at 32x32, width 32
        sizes = [channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(sizes, sizes[1:])):
            if index > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 1x1 maps survive tiny images
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(2 * images - 1).mean((2, 3))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self(images))


def train_classifier(train_set, test_set, steps: int = 1000, batch_size: int = 128, lr: float = 2e-3,
                     width: int = 32, seed: int = 0, device: torch.device | str = "cpu",
                     eval_images: int = 10_000, progress: bool = True) -> tuple[Classifier, float, float]:
    """AdamW with a linear decay to 0; batches by a seeded permutation per epoch, like train.py.
    Returns the net (eval mode) and its train / test accuracy."""
    torch.manual_seed(seed)
    device = torch.device(device)
    net = Classifier(train_set.channels, train_set.num_classes, width).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(len(train_set)), 0
    net.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(train_set)), 0
        images, labels = train_set.get(order[cursor:cursor + batch_size])
        cursor += batch_size
        images, labels = images.to(device).float() / 255, labels.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(net.logits(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.requires_grad_(False).eval()
    return net, accuracy(net, train_set, device, eval_images), accuracy(net, test_set, device, eval_images)


@torch.inference_mode()
def accuracy(net: Classifier, dataset, device: torch.device, limit: int = 10_000) -> float:
    """Top-1 accuracy on (the first `limit` images of) a dataset."""
    correct = total = 0
    for images, labels in dataset.batches(min(500, limit)):
        images, labels = images[:limit - total], labels[:limit - total]
        predicted = net.logits(images.to(device).float() / 255).argmax(1).cpu()
        correct += int((predicted == labels).sum())
        total += len(labels)
        if total >= limit:
            break
    return correct / total


def fit_and_save(path: str | Path, train_set, test_set, steps: int = 1000, batch_size: int = 128, lr: float = 2e-3,
                 width: int = 32, seed: int = 0, device: torch.device | str = "cpu",
                 eval_images: int = 10_000) -> tuple[float, float]:
    """train_classifier, then its file (weights, sizes, accuracies; atomic): (train, test) accuracy."""
    net, train_acc, test_acc = train_classifier(train_set, test_set, steps, batch_size, lr, width, seed, device,
                                                eval_images)
    outputs.save_torch(path, {"model": {k: v.cpu() for k, v in net.state_dict().items()},
                             "channels": train_set.channels, "image_size": train_set.image_size,
                             "num_classes": train_set.num_classes, "width": width, "dataset": train_set.name,
                             "steps": steps, "seed": seed, "train_accuracy": train_acc, "test_accuracy": test_acc})
    return train_acc, test_acc


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(prog="python -m plumbing.classifier", description=__doc__.split("\n\n")[0])
    arg = parser.add_argument
    arg("--dataset", required=True, help="dataset name, as in train.py")
    arg("--data-dir", default=None, help="folder of the dataset's files, as in train.py")
    arg("--image-size", type=int, default=None, help="for shapes/folder, as in train.py")
    arg("--out", default="runs/clf.pt", help="classifier file to write")
    arg("--steps", type=int, default=1000, help="training steps")
    arg("--batch-size", type=int, default=128, help="images per step")
    arg("--lr", type=checks.finite_float, default=2e-3, help="AdamW learning rate")
    arg("--width", type=int, default=32, help="base channels; features are 8 x width")
    arg("--eval-images", type=int, default=10_000, help="images for the accuracies")
    arg("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    arg("--seed", type=checks.seed_int, default=0, help="random seed")
    args = parser.parse_args(argv)
    for flag in ("steps", "batch_size", "width", "eval_images", "image_size"):
        checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    args.device = checks.resolve_device(args.device)
    checks.set_cpu_threads(args.device)
    out = outputs.check_out_file(args.out, "--out")  # before the training, not after it
    options = {"image_size": args.image_size} if args.image_size else {}
    train_set, test_set = (data.load_dataset(args.dataset, args.data_dir, split, **options) for split in ("train", "test"))
    start = time.perf_counter()
    train_acc, test_acc = fit_and_save(out, train_set, test_set, args.steps, args.batch_size, args.lr, args.width,
                                       args.seed, args.device, args.eval_images)
    print(f"classifier on {args.dataset}: train accuracy {100 * train_acc:.2f}%, test accuracy "
          f"{100 * test_acc:.2f}% ({args.steps} steps, {time.perf_counter() - start:.0f} s); wrote {out}")


if __name__ == "__main__":
    checks.run_main(main)
