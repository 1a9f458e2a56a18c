"""Training throughput per preset, the share of a step spent outside the network, and the
share spent drawing x0 for each prior.

    python bench/bench_train.py [--presets tiny,small] [--batch-size 64] [--steps 10] [--compile]
                                [--priors gaussian,class,kmeans,mapper] [--x0-rounds 5] [--x0-repeats 20]

For each preset: images/s of train.train_step (data to device, prior sample, coupling,
forward, backward, clipping, AdamW, EMA), and of the network's forward + backward alone on
the same batch; the difference is the overhead outside the network (target: under 10%).
On CUDA it runs in bf16 autocast with channels_last (and torch.compile with --compile).

Then, for each preset and each prior of --priors (--priors none: skip), the time of drawing x0
as train_step draws it, prior.sample(cond, generator, null, x1) with the batch's x1 (for kmeans
this includes the nearest-centroid coupling, for the mapper its network), against the whole
train_step on the same batch: gaussian, class and kmeans (k=--kmeans-k) on shapes' class ids, the
mapper on shapes' attribute vectors (`--cond attributes`, with the network that takes vectors).
The two are timed call by call in alternating rounds (--x0-rounds; each round --x0-repeats draws,
then --steps steps) so that a change in the machine's load hits both; the table gives the medians
of the single calls, the share (median draw / median step, and the 90th percentile of the draws
over the median step) and the 1-minute load average before and after (target: under 5%).
--threads N sets torch's threads (on a CPU shared with other busy processes 1 can beat 2). The
priors are fitted on the first --fit-images images only (kmeans 1 Lloyd pass, the mapper 1
epoch): the cost of a draw does not depend on how well they fit, only on their sizes.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import checkpoint  # noqa: E402
import checks  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402
from prior import ClassPrior, GaussianPrior, KMeansPrior, MapperPrior  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds per call after `warmup` warm-up calls (compilation, allocator)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    begin = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - begin) / steps


def bench_preset(preset: str, dataset_name: str, batch_size: int, steps: int, compile_: bool, device: torch.device,
                 coupling: str) -> dict:
    config = train.Config(dataset=dataset_name, preset=preset, batch_size=batch_size, coupling=coupling,
                          compile=compile_, device=str(device))
    dataset = data.load_dataset(dataset_name) if dataset_name == "shapes" else SyntheticImageNet64()
    prior = train.priors.ClassPrior().fit([dataset.get(np.arange(2 * dataset.num_classes))], dataset.num_classes)
    run = train.build_run(config, dataset, prior, device)
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


def fitted_prior(name: str, dataset, fit_images: int, kmeans_k: int):
    """The prior with its default options (k: --kmeans-k), fitted on the first fit_images images
    (kmeans: one Lloyd pass, mapper: one epoch; a draw costs the same however well they fit)."""
    prior = {"gaussian": GaussianPrior, "class": ClassPrior, "kmeans": lambda: KMeansPrior(k=kmeans_k, passes=1),
             "mapper": lambda: MapperPrior(epochs=1)}[name]()
    batches = checkpoint.Passes(dataset, min(fit_images, len(dataset)), torch.device("cpu"))
    return prior.fit(batches, dataset.num_classes, dataset=dataset.name)


def bench_x0(preset: str, prior_name: str, batch_size: int, steps: int, rounds: int, repeats: int,
             fit_images: int, kmeans_k: int, device: torch.device) -> dict:
    """Seconds per prior.sample (as train_step calls it) and per train_step: the medians of single
    calls, timed in rounds that alternate the two; share: their ratio (share_p90: the 90th
    percentile of the draws over the median step)."""
    cond_kind = "attributes" if prior_name == "mapper" else "class"
    dataset = data.load_dataset("shapes", cond=cond_kind)
    prior = fitted_prior(prior_name, dataset, fit_images, kmeans_k)
    config = train.Config(preset=preset, batch_size=batch_size, prior=prior_name, cond=cond_kind, device=str(device))
    run = train.build_run(config, dataset, prior, device)
    images, cond = dataset.get(np.arange(batch_size) % len(dataset))
    x1, cond_device = data.to_model(images.to(device)), cond.to(device)
    null = torch.rand(len(cond), device=device, generator=run.generator) < config.label_dropout

    def draw() -> torch.Tensor:  # what train_step does for x0 (--null-source global)
        return run.prior.sample(cond_device, run.generator, null, x1)

    def step() -> None:
        train.train_step(run, images, cond, 0)

    load_before = os.getloadavg()[0]
    for _ in range(2):  # warm-up: the priors' device tables, the allocator
        draw(), step()
    per_draw, per_step = [], []
    for _ in range(rounds):  # every call timed alone: on a shared CPU the median ignores preempted calls
        per_draw += [timed(draw, 1, device, warmup=0) for _ in range(repeats)]
        per_step += [timed(step, 1, device, warmup=0) for _ in range(steps)]
    draw_s, step_s = statistics.median(per_draw), statistics.median(per_step)
    return {"prior": prior_name if prior_name != "kmeans" else f"kmeans k={kmeans_k}", "cond": cond_kind,
            "params": train.unet.count_parameters(run.model), "draw_ms": 1000 * draw_s, "step_ms": 1000 * step_s,
            "share": draw_s / step_s, "share_p90": float(np.percentile(per_draw, 90)) / step_s,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


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


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--coupling", default="independent")
    parser.add_argument("--priors", default="gaussian,class,kmeans,mapper",
                        help="priors whose x0 draw is timed against a step (none: skip)")
    parser.add_argument("--kmeans-k", type=int, default=16)
    parser.add_argument("--x0-rounds", type=int, default=5, help="alternating rounds of draws and steps")
    parser.add_argument("--x0-repeats", type=int, default=20, help="prior.sample calls per round")
    parser.add_argument("--fit-images", type=int, default=2000, help="images the priors are fitted on here")
    parser.add_argument("--skip-throughput", action="store_true", help="only the x0 table")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    priors = [] if args.priors in ("", "none") else args.priors.split(",")
    unknown = sorted(set(priors) - {"gaussian", "class", "kmeans", "mapper"})
    if unknown:
        raise ValueError(f"--priors: unknown {', '.join(unknown)}; choose among gaussian, class, kmeans, mapper")
    device = checks.resolve_device(None)
    print(f"device: {checks.describe_device(device)}; torch {torch.__version__}; batch {args.batch_size}; coupling {args.coupling}; "
          f"compile {args.compile}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_throughput:
        print("| preset | params | precision | train img/s | network fwd+bwd img/s | outside the network |")
        print("|---|---|---|---|---|---|")
        for preset in args.presets.split(","):
            dataset_name = "imagenet64" if preset == "imagenet64" else "shapes"
            r = bench_preset(preset, dataset_name, args.batch_size, args.steps, args.compile, device, args.coupling)
            print(f"| {r['preset']} | {r['params']:,} | {r['precision']} | {r['img_per_s']:.1f} | "
                  f"{r['network_img_per_s']:.1f} | {100 * r['outside_share']:.1f}% |", flush=True)
    if priors:
        print(f"\ndrawing x0 (prior.sample with x1, as train_step) vs train_step, shapes, batch {args.batch_size}, "
              f"medians of single calls, {args.x0_rounds} rounds of {args.x0_repeats} draws and {args.steps} steps:")
        print("| preset | prior | cond | params | x0 draw ms | train_step ms | x0 share (p90 draw) | load |")
        print("|---|---|---|---|---|---|---|---|")
        for preset in args.presets.split(","):
            if preset == "imagenet64":
                print(f"| {preset} | (skipped: the x0 table runs on shapes) | | | | | | |")
                continue
            for prior_name in priors:
                r = bench_x0(preset, prior_name, args.batch_size, args.steps, args.x0_rounds, args.x0_repeats,
                             args.fit_images, args.kmeans_k, device)
                print(f"| {preset} | {r['prior']} | {r['cond']} | {r['params']:,} | {r['draw_ms']:.2f} | "
                      f"{r['step_ms']:.0f} | {100 * r['share']:.2f}% ({100 * r['share_p90']:.2f}%) | "
                      f"{r['load_before']:.2f} -> {r['load_after']:.2f} |", flush=True)


if __name__ == "__main__":
    checks.run_main(main)
