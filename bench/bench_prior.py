"""Speed of the priors' fits (class, k-means, mapper) and of the minibatch OT coupling.

    python bench/bench_prior.py [--parts fit-class,ot,fit-kmeans,fit-mapper] [--images 100000]
                                [--dir /tmp/condprior_bench_in64] [--mnist-dir DIR] [--kmeans-k 16,4]
                                [--mapper-images 50000]

Every fit runs in a child process (so its peak memory is the fit's alone) and reports wall time,
CPU time (user + system, all threads: on a shared machine wall time also counts the time other
processes held the cores, CPU time does not) and the 1-minute load average before and after.
--parts picks the measurements (comma-separated, default all):

fit-class   Writes an ImageNet-64-format dataset (train_data_batch_1..10.npz, planar uint8, 1-based
            labels, 1000 classes) of --images random images, once, into --dir, and fits ClassPrior
            on half and all of it: images/s, MB/s read, peak resident memory. The memory should
            not grow with the number of images (O(K D) accumulators); the mapped file pages it has
            read count in RSS but are page cache, so the peak of anonymous memory is reported.
ot          Times flow.couple(..., "ot") on 3x64x64 batches of 128, 256 and 512.
fit-kmeans  KMeansPrior(k) (default options otherwise) on MNIST's 60k training images, for each k
            of --kmeans-k, fed Passes(dataset, 60000, cpu) as train.py does: wall and CPU
            time, the time of each read of the data (k-means++ seeding, the Lloyd passes, the
            final statistics pass), peak anonymous memory and its growth over the loaded dataset,
            and the k-means objective (mean squared distance to the own centroid, model space).
            Skipped with a message when MNIST is not in --mnist-dir (default ../shared/data/mnist
            next to the repository).
fit-mapper  MapperPrior() (default options) on shapes with cond="attributes", --mapper-images images
            (50k: what `python train.py --cond attributes --prior mapper` fits), fed Passes:
            wall and CPU time, the time of each pass (the training epochs, then the statistics
            pass), peak anonymous memory, and the mapper's MSE on 2,000 held-out shapes.

--threads N sets torch's threads (default: one per core, as train.py runs). On a CPU shared with
other busy processes, N=1 can be much faster than 2: every parallel operation waits for its
slowest thread, and a thread the scheduler has parked costs milliseconds per operation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plumbing import data  # noqa: E402
from plumbing.batches import Passes  # noqa: E402
import flow  # noqa: E402
from prior import ClassPrior, KMeansPrior, MapperPrior  # noqa: E402
from plumbing.stats import model_space  # noqa: E402

PARTS = ("fit-class", "ot", "fit-kmeans", "fit-mapper")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load1() -> float:
    return os.getloadavg()[0]


def measured(fit) -> dict:
    """Run fit() with a thread sampling anonymous memory every 20 ms: wall and CPU seconds,
    anonymous memory before (the loaded dataset, torch) and at its peak, load before and after;
    "samples" keeps (time, MB) for the peaks of each read of the data (TimedPasses.summary)."""
    baseline = anonymous_mb()
    samples = [(time.perf_counter(), baseline)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            samples.append((time.perf_counter(), anonymous_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    load_before = load1()
    sampler.start()
    cpu, begin = cpu_seconds(), time.perf_counter()
    try:
        fit()
    finally:  # a failing fit must not leave the sampler running
        seconds, cpu = time.perf_counter() - begin, cpu_seconds() - cpu
        stop.set()
        sampler.join()
    return {"seconds": seconds, "cpu_seconds": cpu, "baseline_anon_mb": baseline,
            "peak_anon_mb": max(mb for _, mb in samples), "samples": samples,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_before": load_before, "load_after": load1(), "threads": torch.get_num_threads()}


class TimedPasses:
    """Passes that records when each read of the data starts and ends and how many batches
    it yields (a fit may stop a pass early, as k-means++ seeding does)."""

    def __init__(self, passes: Passes):
        self.passes, self.log = passes, []

    def __len__(self) -> int:
        return len(self.passes)

    def __iter__(self):
        entry = {"start": time.perf_counter(), "batches": 0}
        self.log.append(entry)
        try:
            for batch in self.passes:
                entry["batches"] += 1
                yield batch
        finally:
            entry["end"] = time.perf_counter()

    def summary(self, begin: float, samples: list[tuple[float, float]]) -> list[dict]:
        """Per read: seconds from the previous read's end (work between reads: seeding, the
        fit's own set-up), seconds inside the read (batches plus the fit's work on them), and the
        peak anonymous memory sampled from the previous read's end to this one's."""
        out, previous = [], begin
        for entry in self.log:
            inside = [mb for when, mb in samples if previous <= when <= entry["end"]]
            out.append({"batches": entry["batches"], "before": entry["start"] - previous,
                        "inside": entry["end"] - entry["start"], "peak_mb": max(inside, default=math.nan)})
            previous = entry["end"]
        return out


def fit_class_child(folder: str, limit: int, batch_size: int) -> dict:
    dataset = data.load_dataset("imagenet64", folder)
    starts = range(0, limit, batch_size)
    batches = (dataset.get(np.arange(i, min(i + batch_size, limit))) for i in starts)
    r = measured(lambda: ClassPrior().fit(batches, dataset.num_classes))
    r.pop("samples")
    return {**r, "images": limit, "img_per_s": limit / r["seconds"],
            "mb_per_s": limit * 3 * 64 * 64 / r["seconds"] / 1e6}


def fit_kmeans_child(mnist_dir: str, k: int) -> dict:
    dataset = data.load_dataset("mnist", mnist_dir)
    num_images = min(len(dataset), 60_000)
    batches = TimedPasses(Passes(dataset, num_images, torch.device("cpu")))
    prior = KMeansPrior(k=k)
    begin = time.perf_counter()
    r = measured(lambda: prior.fit(batches, dataset.num_classes, dataset="mnist"))
    # the k-means objective from the fitted components: sum_cj n_cj sum_d std_cjd^2 / N
    class_counts = np.bincount(dataset.labels[:num_images], minlength=dataset.num_classes)
    counts = (prior.weights * class_counts[:, None]).reshape(-1)
    within = (prior.stds[:-1].reshape(len(counts), -1) ** 2).sum(1)
    return {**r, "k": k, "images": num_images, "passes": prior.passes, "reads": batches.summary(begin, r.pop("samples")),
            "objective": float((counts * within).sum() / counts.sum()),
            "empty_clusters": int((prior.weights == 0).sum())}


def fit_mapper_child(num_images: int) -> dict:
    dataset = data.load_dataset("shapes", cond="attributes")
    batches = TimedPasses(Passes(dataset, num_images, torch.device("cpu")))
    prior = MapperPrior()
    begin = time.perf_counter()
    r = measured(lambda: prior.fit(batches, dataset.num_classes, dataset="shapes"))
    images, cond = data.load_dataset("shapes", split="test", cond="attributes").get(np.arange(2000))
    with torch.no_grad():
        predicted = prior.net(prior._input(cond, None)).view_as(images)
    mse = float((predicted.double() - model_space(images)).square().mean())
    return {**r, "images": num_images, "epochs": prior.epochs, "batch_size": prior.batch_size,
            "reads": batches.summary(begin, r.pop("samples")), "test_mse": mse}


def child(args: argparse.Namespace, kind: str, value: str) -> dict:
    """Run one fit in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--child", f"{kind}:{value}", "--dir", args.dir,
               "--batch-size", str(args.batch_size), "--mnist-dir", str(args.mnist_dir)]
    command += ["--threads", str(args.threads)] if args.threads is not None else []
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} fit failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_ot(batch: int, repeats: int = 3) -> float:
    x0, x1 = torch.randn(batch, 3, 64, 64), torch.randn(batch, 3, 64, 64)
    groups = torch.zeros(batch, dtype=torch.int64)
    flow.couple(x0, x1, groups, "ot")
    begin = time.perf_counter()
    for _ in range(repeats):
        flow.couple(x0, x1, groups, "ot")
    return (time.perf_counter() - begin) / repeats


def describe_reads(reads: list[dict], names: list[str]) -> str:
    return "; ".join(f"{name} {r['before']:.1f}+{r['inside']:.1f} s ({r['batches']} batches, peak {r['peak_mb']:.0f} MB)"
                     for name, r in zip(names, reads))


def cpu_and_load(r: dict) -> str:
    return (f"{r['cpu_seconds']:.1f} s CPU (torch threads {r['threads']}, load "
            f"{r['load_before']:.2f} -> {r['load_after']:.2f})")


def time_and_load(r: dict) -> str:
    return f"{r['seconds']:.1f} s wall, {cpu_and_load(r)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--images", type=int, default=100_000, help="fit-class: ImageNet-64-format images")
    parser.add_argument("--dir", default="/tmp/condprior_bench_in64", help="fit-class: where to write them")
    parser.add_argument("--batch-size", type=int, default=1024, help="fit-class: images per batch")
    parser.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                        help="fit-kmeans: folder with MNIST's train-images/labels-idx files (default %(default)s)")
    parser.add_argument("--kmeans-k", default="16,4", help="fit-kmeans: the values of k, comma-separated")
    parser.add_argument("--mapper-images", type=int, default=50_000, help="fit-mapper: shapes images")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every measurement (default: torch's, one per core)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        kind, _, value = args.child.partition(":")
        result = {"class": lambda: fit_class_child(args.dir, int(value), args.batch_size),
                  "kmeans": lambda: fit_kmeans_child(args.mnist_dir, int(value)),
                  "mapper": lambda: fit_mapper_child(int(value))}[kind]()
        print(json.dumps(result))
        return
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose among {', '.join(PARTS)}")
    print(f"device: cpu, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if "fit-class" in parts:
        write_dataset(Path(args.dir), args.images)
        for limit in (args.images // 2, args.images):
            r = child(args, "class", str(limit))
            print(f"fit ClassPrior on {r['images']} 64x64 images: {r['seconds']:.1f} s, {r['img_per_s']:.0f} img/s, "
                  f"{r['mb_per_s']:.0f} MB/s, peak anonymous memory {r['peak_anon_mb']:.0f} MB "
                  f"(RSS with the mapped file pages {r['peak_rss_mb']:.0f} MB); {cpu_and_load(r)}", flush=True)
    if "ot" in parts:
        for batch in (128, 256, 512):
            print(f"couple(ot) at batch {batch} of 3x64x64: {1000 * time_ot(batch):.0f} ms "
                  f"(load {load1():.2f})", flush=True)
    if "fit-kmeans" in parts:
        folder = Path(args.mnist_dir)
        if not any((folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in MNIST_FILES[:1]):
            print(f"fit-kmeans: skipped, MNIST not found in --mnist-dir {folder} (it needs "
                  f"{' and '.join(MNIST_FILES)}, each may be .gz)", flush=True)
        else:
            for k in (int(k) for k in args.kmeans_k.split(",")):
                r = child(args, "kmeans", str(k))
                names = ["k-means++ read"] + [f"Lloyd {i + 1}" for i in range(r["passes"])] + ["statistics"]
                print(f"fit KMeansPrior(k={k}) on MNIST {r['images']}: {time_and_load(r)}; peak anonymous memory "
                      f"{r['peak_anon_mb']:.0f} MB ({r['peak_anon_mb'] - r['baseline_anon_mb']:+.0f} MB over the "
                      f"loaded dataset, peak RSS {r['peak_rss_mb']:.0f} MB); objective {r['objective']:.2f}, "
                      f"{r['empty_clusters']} empty clusters", flush=True)
                print(f"    reads (time before + inside each, peak anonymous memory): {describe_reads(r['reads'], names)}", flush=True)
    if "fit-mapper" in parts:
        r = child(args, "mapper", str(args.mapper_images))
        names = [f"epoch {i + 1}" for i in range(r["epochs"])] + ["statistics"]
        print(f"fit MapperPrior() on shapes attributes, {r['images']} images ({r['epochs']} epochs at batch "
              f"{r['batch_size']}): {time_and_load(r)}; peak anonymous memory {r['peak_anon_mb']:.0f} MB "
              f"({r['peak_anon_mb'] - r['baseline_anon_mb']:+.0f} MB); held-out MSE {r['test_mse']:.4f}", flush=True)
        print(f"    reads (time before + inside each, peak anonymous memory; the first read is the shape probe): "
              f"{describe_reads(r['reads'], ['probe'] + names)}", flush=True)


if __name__ == "__main__":
    main()
