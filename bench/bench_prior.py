"""Speed of the class prior's streaming fit and of the minibatch OT coupling.

    python bench/bench_prior.py [--images 100000] [--dir /tmp/condprior_bench_in64]

1. Writes an ImageNet-64-format dataset (train_data_batch_1..10.npz, planar uint8, 1-based
   labels, 1000 classes) of --images random images, once, into --dir.
2. Fits ClassPrior on it in a child process (so its peak memory is the fit's alone), for
   half and all of the images: images/s, MB/s read, peak resident memory. The memory should
   not grow with the number of images (O(K D) accumulators); the mapped file pages it has
   read count in RSS but are page cache, so the peak of anonymous memory is reported.
3. Times flow.couple(..., "ot") on 3x64x64 batches of 128, 256 and 512.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import flow  # noqa: E402
from prior import ClassPrior  # noqa: E402


def write_dataset(folder: Path, images: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per_file = images // 10
    rng = np.random.default_rng(0)
    for k in range(1, 11):
        path = folder / f"train_data_batch_{k}.npz"
        if path.exists() and np.load(path, mmap_mode="r")["labels"].shape[0] == per_file:
            continue
        pixels = rng.integers(0, 256, (per_file, 3 * 64 * 64), dtype=np.uint8)
        np.savez(path, data=pixels, labels=rng.integers(1, 1001, per_file))


def anonymous_mb() -> float:
    """Resident memory that is not file-backed: the memory-mapped dataset pages the fit reads
    count in the total RSS (and grow with the images read) but are page cache, not the fit's."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024


def fit_child(folder: str, limit: int, batch_size: int) -> dict:
    dataset = data.load_dataset("imagenet64", folder)
    starts = range(0, limit, batch_size)
    peak = [anonymous_mb()]
    stop = threading.Event()
    sampler = threading.Thread(target=lambda: [peak.append(anonymous_mb()) for _ in iter(lambda: stop.wait(0.02), True)])
    sampler.start()
    batches = (dataset.get(np.arange(i, min(i + batch_size, limit))) for i in starts)
    begin = time.perf_counter()
    ClassPrior().fit(batches, dataset.num_classes)
    seconds = time.perf_counter() - begin
    stop.set()
    sampler.join()
    return {"images": limit, "seconds": seconds, "img_per_s": limit / seconds,
            "mb_per_s": limit * 3 * 64 * 64 / seconds / 1e6, "peak_anon_mb": max(peak),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def time_ot(batch: int, repeats: int = 3) -> float:
    x0, x1 = torch.randn(batch, 3, 64, 64), torch.randn(batch, 3, 64, 64)
    groups = torch.zeros(batch, dtype=torch.int64)
    flow.couple(x0, x1, groups, "ot")
    begin = time.perf_counter()
    for _ in range(repeats):
        flow.couple(x0, x1, groups, "ot")
    return (time.perf_counter() - begin) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp/condprior_bench_in64")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(fit_child(args.dir, args.child, args.batch_size)))
        return
    write_dataset(Path(args.dir), args.images)
    print(f"device: cpu, torch threads {torch.get_num_threads()}")
    for limit in (args.images // 2, args.images):
        # read the files once first so both runs see a warm page cache
        out = subprocess.run([sys.executable, __file__, "--dir", args.dir, "--child", str(limit),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"fit ClassPrior on {r['images']} 64x64 images: {r['seconds']:.1f} s, {r['img_per_s']:.0f} img/s, "
              f"{r['mb_per_s']:.0f} MB/s, peak anonymous memory {r['peak_anon_mb']:.0f} MB "
              f"(RSS with the mapped file pages {r['peak_rss_mb']:.0f} MB)")
    for batch in (128, 256, 512):
        print(f"couple(ot) at batch {batch} of 3x64x64: {1000 * time_ot(batch):.0f} ms")


if __name__ == "__main__":
    main()
