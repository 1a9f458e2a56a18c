"""Speed of the measuring instrument: Inception feature throughput, the Frechet distance of
2048-d statistics (scipy's sqrtm dominates), KID at its defaults, and classifier training.

    python bench/bench_fid.py [--device cpu|cuda] [--batch-size 32] [--batches 3]

Random weights and random images: the cost does not depend on the values. Prints one JSON line
per measurement and a readable line.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plumbing import classifier  # noqa: E402
import eval_fid  # noqa: E402
from plumbing.features import Extractor  # noqa: E402
from plumbing.inception import InceptionV3  # noqa: E402


class RandomImages:
    """Just enough of a dataset for train_classifier: uint8 noise with random labels."""

    def __init__(self, n: int, channels: int = 3, image_size: int = 32, num_classes: int = 10):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, channels, image_size, image_size), dtype=torch.uint8,
                                    generator=generator)
        self.labels = torch.randint(0, num_classes, (n,), generator=generator)
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.from_numpy(np.asarray(indices))
        return self.images[indices], self.labels[indices]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def report(name: str, value: float, unit: str, device: str, **extra) -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, "device": device, **extra}))


def bench_inception(device: torch.device, batch_size: int, batches: int) -> None:
    # random weights: the cost does not depend on them, and no weights file is needed
    extractor = Extractor("inception", InceptionV3(), 2048, "random", device)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8)
    extractor(images)  # warm-up (cuDNN autotuning, allocator)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        extractor(images)  # includes the resize to 299x299 and the copy back to float64 numpy
    sync(device)
    seconds = time.perf_counter() - start
    report("inception_features", batches * batch_size / seconds, "images/s", str(device), batch_size=batch_size)


def bench_frechet(n: int = 10_000, d: int = 2048) -> None:
    rng = np.random.default_rng(0)
    stats = []
    for shift in (0.0, 0.1):
        x = np.abs(rng.normal(size=(n, d))) + shift  # pool3-like: non-negative
        stats.append((x.mean(0), np.cov(x, rowvar=False)))
    start = time.perf_counter()
    eval_fid.frechet_distance(*stats[0], *stats[1])
    report("frechet_distance_2048", time.perf_counter() - start, "s", "cpu", n=n)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    start = time.perf_counter()
    eval_fid.kid(a, b)
    report("kid_100x1000_2048", time.perf_counter() - start, "s", "cpu")


def bench_classifier(device: torch.device, steps: int) -> None:
    data = RandomImages(4096)
    start = time.perf_counter()
    classifier.train_classifier(data, data, steps=steps, batch_size=128, device=device, eval_images=512,
                                progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    default_steps = inspect.signature(classifier.train_classifier).parameters["steps"].default
    report("classifier_train", steps / seconds, "steps/s", str(device), batch_size=128, width=32,
           default_steps=default_steps, default_steps_s=round(default_steps * seconds / steps, 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cpu, and cuda too when present")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--classifier-steps", type=int, default=30)
    args = parser.parse_args(argv)
    devices = [torch.device(args.device)] if args.device else (
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
    for device in devices:
        bench_inception(device, args.batch_size, args.batches if device.type == "cpu" else 10 * args.batches)
        bench_classifier(device, args.classifier_steps)
    bench_frechet()


if __name__ == "__main__":
    main()
