"""The headline job's speed in one run: img/s, achieved TFLOP/s and MFU of a training step, peak
memory, and the sampler's share of time outside the network; meant for one GPU session.

MFU is measured against a peak measured in the same run on the same chip: the best of a few
8192 x 8192 x 8192 bf16 matmuls (on a CPU: float32, 1024^3). A training step's FLOPs are counted
once with torch.utils.flop_counter (forward + backward of the network on the batch; the prior,
the coupling and the optimizer are not counted, so MFU is the network's share of the chip):

    MFU = (FLOPs per step x steps per second) / peak FLOP/s

    python bench/bench_gpu.py --presets imagenet64,small --batch-size 128 [--compile]
    python bench/bench_gpu.py --presets tiny --batch-size 8 --steps 2     # a CPU dry run, seconds

Prints one Markdown table per run (and writes it to --out if given); nothing here is a test.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import checks  # noqa: E402
import conditions  # noqa: E402
import data  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
import unet  # noqa: E402
from prior import ClassPrior  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` square matmuls: bf16 8192^3 on CUDA, float32 1024^3 on CPU."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def step_flops(run: train.Run, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of the network's forward and backward on one batch (what MFU counts)."""
    x = data.to_model(images.to(run.device))
    t = torch.rand(len(x), device=run.device)
    cond, null = labels.to(run.device), torch.zeros(len(x), dtype=torch.bool, device=run.device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            run.model(x, t, cond, null).float().pow(2).mean().backward()
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_training(preset: str, batch_size: int, steps: int, compile_: bool, device: torch.device,
                  peak: float) -> dict:
    dataset = data.load_dataset("shapes", image_size=64 if preset == "imagenet64" else 32)
    num_classes = 1000 if preset == "imagenet64" else dataset.num_classes
    config = train.Config(preset=preset, batch_size=batch_size, compile=compile_, device=str(device))
    images, _ = dataset.get(np.arange(batch_size))
    labels = torch.arange(batch_size) % num_classes
    fake = type("Fake", (), {"image_size": dataset.image_size, "channels": 3, "num_classes": num_classes,
                             "cond_dim": 0})()  # the preset's real class count, shapes' pixels
    prior = ClassPrior().fit([(dataset.get(np.arange(2 * num_classes) % len(dataset))[0],
                               torch.arange(2 * num_classes) % num_classes)], num_classes)
    run = train.build_run(config, fake, prior, device)
    flops = step_flops(run, images, labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compile_start = time.perf_counter()
    for step in range(2):  # warm-up (and compilation)
        train.train_step(run, images, labels, step)
    synchronize(device)
    ready = time.perf_counter() - compile_start
    start = time.perf_counter()
    for step in range(steps):
        loss, _ = train.train_step(run, images, labels, step)
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    checks.check_finite(float(loss), f"the {preset} loss")
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"preset": preset, "batch": batch_size, "compile": compile_, "img/s": batch_size / seconds,
            "GFLOP/img": flops / batch_size / 1e9, "TFLOP/s": flops / seconds / 1e12,
            "MFU": flops / seconds / peak, "peak GiB": memory, "warm-up s": ready}


def time_sampling(preset: str, n: int, nfe: int, device: torch.device) -> dict:
    """sample.generate against nfe network calls alone: the share of time outside the network."""
    size, num_classes = (64, 1000) if preset == "imagenet64" else (32, 10)
    model = unet.build_unet(preset, size, 3, num_classes).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (2 * num_classes, 3, size, size), dtype=torch.uint8)
    prior = ClassPrior().fit([(images, torch.arange(2 * num_classes) % num_classes)], num_classes)
    cond, seeds = conditions.balanced_classes(num_classes, n, 0)
    sample.generate(model, prior, cond, seeds, 1, batch_size=n, device=device)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    sample.generate(model, prior, cond, seeds, nfe, batch_size=n, device=device)
    synchronize(device)
    total = time.perf_counter() - start
    x, t = torch.randn(n, 3, size, size, device=device), torch.rand(n, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(nfe):
            model(x, t, cond.to(device))
        synchronize(device)
    network = time.perf_counter() - start
    return {"preset": preset, "n": n, "nfe": nfe, "img/s": n / total, "outside the network": 1 - network / total}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="imagenet64,small", help="comma-separated unet presets")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--sample-n", type=int, default=256, help="images per sampling batch")
    parser.add_argument("--nfe", type=int, default=8, help="sampling budget")
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    device = checks.resolve_device(args.device)
    peak = peak_flops(device)
    lines = [f"{checks.describe_device(device)}, torch {torch.__version__}, measured peak {peak / 1e12:.1f} TFLOP/s "
             f"({'bf16' if device.type == 'cuda' else 'fp32'} matmul), {time.strftime('%Y-%m-%d')}", ""]
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    rows = [time_training(p, args.batch_size, args.steps, compiled, device, peak)
            for p in presets for compiled in ([False, True] if args.compile else [False])]
    lines += [table(rows), "", table([time_sampling(p, args.sample_n, args.nfe, device) for p in presets])]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    checks.run_main(main)
