"""Training throughput per preset: img/s, achieved TFLOP/s and MFU, peak memory, the share of a
step spent outside the network, and the share spent drawing x0 for each prior.

    python bench/bench_train.py [--presets tiny,small] [--batch-size 64] [--steps 10] [--compile]
                                [--priors gaussian,class,kmeans,mapper] [--x0-rounds 5] [--x0-repeats 20]
    python bench/bench_train.py --presets imagenet64,small --batch-size 128 --priors none   # on a GPU

For each preset: images/s of train.train_step (data to device, prior sample, coupling,
forward, backward, clipping, AdamW, EMA), and of the network's forward + backward alone on
the same batch; the difference is the overhead outside the network (target: under 10%).
On CUDA it runs in bf16 autocast with channels_last (and torch.compile with --compile); the
warm-up column is the time to the first two steps (compilation included). MFU is against a peak
measured in the same run on the same chip, the best of a few square matmuls (bf16 8192^3 on
CUDA, float32 1024^3 on CPU); a step's FLOPs are counted once with torch.utils.flop_counter
(the network's forward + backward; the prior, coupling and optimizer are not counted):

    MFU = (network FLOPs per step x steps per second) / peak FLOP/s

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

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plumbing import checks, data, outputs  # noqa: E402
from plumbing.batches import Passes  # noqa: E402
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


def peak_flops(device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square matmuls: bf16 8192^3 on CUDA, float32 1024^3 on CPU."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / min(timed(lambda: a @ b, 1, device, warmup=1 if i == 0 else 0) for i in range(repeats))


def network_flops(run: train.Run, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> int:
    """FLOPs of the network's forward and backward on one batch (what MFU counts). On a CPU the
    counter does not know the fused attention kernel: there attention runs the math kernel here."""
    math_attention = contextlib.nullcontext() if x.is_cuda else sdpa_kernel(SDPBackend.MATH)
    with FlopCounterMode(display=False) as counter, math_attention:
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            run.model(x, t, cond).float().pow(2).mean().backward()
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_preset(preset: str, dataset_name: str, batch_size: int, steps: int, compile_: bool, device: torch.device,
                 coupling: str, peak: float) -> dict:
    config = train.Config(dataset=dataset_name, preset=preset, batch_size=batch_size, coupling=coupling,
                          compile=compile_, device=str(device))
    dataset = data.load_dataset(dataset_name) if dataset_name == "shapes" else SyntheticImageNet64()
    prior = ClassPrior().fit([dataset.get(np.arange(2 * dataset.num_classes))], dataset.num_classes)
    run = train.build_run(config, dataset, prior, device)
    images, labels = dataset.get(np.arange(batch_size) % len(dataset))
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    x = data.to_model(images.to(device))
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    t, c = torch.rand(batch_size, device=device), labels.to(device)
    flops = network_flops(run, x, t, c)
    if device.type == "cuda":  # the peak of training steps, not of the counting pass
        torch.cuda.reset_peak_memory_stats(device)
    begin = time.perf_counter()
    warmup = timed(lambda: train.train_step(run, images, labels, 0), 2, device, warmup=0) * 2  # compiles
    step = timed(lambda: train.train_step(run, images, labels, 0), steps, device, warmup=0)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            out = run.network(x, t, c)
        out.float().pow(2).mean().backward()

    network = timed(forward_backward, steps, device)
    return {"preset": preset, "params": train.unet.count_parameters(run.model), "img_per_s": batch_size / step,
            "network_img_per_s": batch_size / network, "outside_share": 1 - network / step, "precision": run.precision,
            "gflop_per_img": flops / batch_size / 1e9, "tflops": flops / step / 1e12, "mfu": flops / step / peak,
            "peak_gib": memory, "warmup_s": warmup, "wall_s": time.perf_counter() - begin}


def fitted_prior(name: str, dataset, fit_images: int, kmeans_k: int):
    """The prior with its default options (k: --kmeans-k), fitted on the first fit_images images
    (kmeans: one Lloyd pass, mapper: one epoch; a draw costs the same however well they fit)."""
    prior = {"gaussian": GaussianPrior, "class": ClassPrior, "kmeans": lambda: KMeansPrior(k=kmeans_k, passes=1),
             "mapper": lambda: MapperPrior(epochs=1)}[name]()
    batches = Passes(dataset, min(fit_images, len(dataset)), torch.device("cpu"))
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
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", default=None, help="also write the output to this Markdown file")
    args = parser.parse_args(argv)
    if args.out:
        outputs.check_out_file(args.out, "--out")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    priors = [] if args.priors in ("", "none") else args.priors.split(",")
    unknown = sorted(set(priors) - {"gaussian", "class", "kmeans", "mapper"})
    if unknown:
        raise ValueError(f"--priors: unknown {', '.join(unknown)}; choose among gaussian, class, kmeans, mapper")
    device = checks.resolve_device(args.device)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    say(f"device: {checks.describe_device(device)}; torch {torch.__version__}; batch {args.batch_size}; coupling "
        f"{args.coupling}; compile {args.compile}; {time.strftime('%Y-%m-%d')}; load "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_throughput:
        peak = peak_flops(device)
        say(f"measured peak: {peak / 1e12:.1f} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'} matmul)\n")
        say("| preset | params | precision | train img/s | GFLOP/img | TFLOP/s | MFU | network fwd+bwd img/s | "
            "outside the network | peak GiB | warm-up s |")
        say("|---|---|---|---|---|---|---|---|---|---|---|")
        for preset in args.presets.split(","):
            dataset_name = "imagenet64" if preset == "imagenet64" else "shapes"
            r = bench_preset(preset, dataset_name, args.batch_size, args.steps, args.compile, device, args.coupling,
                             peak)
            say(f"| {r['preset']} | {r['params']:,} | {r['precision']} | {r['img_per_s']:.1f} | {r['gflop_per_img']:.3g} | {r['tflops']:.3g} | "
                f"{100 * r['mfu']:.1f}% | {r['network_img_per_s']:.1f} | {100 * r['outside_share']:.1f}% | "
                f"{r['peak_gib']:.1f} | {r['warmup_s']:.1f} |")
    if priors:
        say(f"\ndrawing x0 (prior.sample with x1, as train_step) vs train_step, shapes, batch {args.batch_size}, "
            f"medians of single calls, {args.x0_rounds} rounds of {args.x0_repeats} draws and {args.steps} steps:")
        say("| preset | prior | cond | params | x0 draw ms | train_step ms | x0 share (p90 draw) | load |")
        say("|---|---|---|---|---|---|---|---|")
        for preset in args.presets.split(","):
            if preset == "imagenet64":
                say(f"| {preset} | (skipped: the x0 table runs on shapes) | | | | | | |")
                continue
            for prior_name in priors:
                r = bench_x0(preset, prior_name, args.batch_size, args.steps, args.x0_rounds, args.x0_repeats,
                             args.fit_images, args.kmeans_k, device)
                say(f"| {preset} | {r['prior']} | {r['cond']} | {r['params']:,} | {r['draw_ms']:.2f} | "
                    f"{r['step_ms']:.0f} | {100 * r['share']:.2f}% ({100 * r['share_p90']:.2f}%) | "
                    f"{r['load_before']:.2f} -> {r['load_after']:.2f} |")
    if args.out:
        outputs.write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    checks.run_main(main)
