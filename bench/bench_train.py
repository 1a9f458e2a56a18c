"""Training throughput per preset, and the share of a step spent outside the network.

    python bench/bench_train.py [--presets tiny,small] [--batch-size 64] [--steps 10] [--compile]

For each preset: images/s of train.train_step (data to device, prior sample, coupling,
forward, backward, clipping, AdamW, EMA), and of the network's forward + backward alone on
the same batch; the difference is the overhead outside the network (target: under 10%).
On CUDA it runs in bf16 autocast with channels_last (and torch.compile with --compile).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import train  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call after two warm-up calls (compilation, allocator)."""
    for _ in range(2):
        fn()
    synchronize(device)
    begin = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - begin) / steps


def bench_preset(preset: str, dataset_name: str, batch_size: int, steps: int, compile_: bool, device: torch.device,
                 coupling: str) -> dict:
    args = train.parse_args(["--dataset", dataset_name, "--preset", preset, "--batch-size", str(batch_size),
                             "--coupling", coupling] + (["--compile"] if compile_ else []))
    dataset = data.load_dataset(dataset_name) if dataset_name == "shapes" else SyntheticImageNet64()
    prior = train.priors.ClassPrior().fit([dataset.get(np.arange(2 * dataset.num_classes))], dataset.num_classes)
    run = train.build_run(args, dataset, prior, device)
    images, labels = dataset.get(np.arange(batch_size) % len(dataset))
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    step = timed(lambda: train.train_step(run, images, labels, 0), steps, device)
    x = data.to_model(images.to(device))
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    t, c = torch.rand(batch_size, device=device), labels.to(device)

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            out = run.network(x, t, c)
        out.float().pow(2).mean().backward()

    network = timed(forward_backward, steps, device)
    return {"preset": preset, "params": train.unet.count_parameters(run.model), "img_per_s": batch_size / step,
            "network_img_per_s": batch_size / network, "outside_share": 1 - network / step, "precision": run.precision}


class SyntheticImageNet64:
    """Random 64x64 images with 1000 labels, in memory: the shape of the real job, no files."""
    name, num_classes, channels, image_size, class_names = "imagenet64", 1000, 3, 64, None

    def __init__(self, size: int = 4096):
        rng = np.random.default_rng(0)
        self.images = torch.from_numpy(rng.integers(0, 256, (size, 3, 64, 64), dtype=np.uint8))
        self.labels = torch.from_numpy(np.arange(size) % 1000)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices: np.ndarray):
        return self.images[indices], self.labels[indices]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--coupling", default="independent")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}; coupling {args.coupling}; "
          f"compile {args.compile}")
    print("| preset | params | precision | train img/s | network fwd+bwd img/s | outside the network |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        dataset_name = "imagenet64" if preset == "imagenet64" else "shapes"
        r = bench_preset(preset, dataset_name, args.batch_size, args.steps, args.compile, device, args.coupling)
        print(f"| {r['preset']} | {r['params']:,} | {r['precision']} | {r['img_per_s']:.1f} | "
              f"{r['network_img_per_s']:.1f} | {100 * r['outside_share']:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
