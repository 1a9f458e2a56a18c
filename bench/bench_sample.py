"""Sampling throughput per preset, and the share of time spent outside the network calls.

    python bench/bench_sample.py [--presets tiny,small] [--n 256] [--nfe 8] [--solver euler]

For each preset: images/s of sample.generate (per-image seeded prior noise, the ODE solve,
conversion to uint8) against nfe forward passes of the network alone on the same batch
(target: under 5% outside), and pairs/s of sample.make_pairs (reflow pairs: the same solve, float
x0 and x1 written to a chunk file) on the same batch. Times NFE, both are network evaluations per
second, which should be the network's own. Weights are random: speed does not depend on them.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plumbing import checks, outputs  # noqa: E402
import sample  # noqa: E402
import unet  # noqa: E402
from prior import ClassPrior  # noqa: E402


def fake_prior(channels: int, size: int, num_classes: int) -> ClassPrior:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2 * num_classes, channels, size, size), dtype=np.uint8))
    return ClassPrior().fit([(images, torch.arange(2 * num_classes) % num_classes)], num_classes)


def timed(fn, device: torch.device, repeats: int = 2) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - begin) / repeats


@torch.no_grad()
def bench_preset(preset: str, n: int, nfe: int, solver: str, device: torch.device) -> dict:
    size, classes = (64, 1000) if preset == "imagenet64" else (32, 10)
    model = unet.build_unet(preset, size, 3, classes).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():  # leave the zero-initialised output: no effect on speed
        p.normal_(0, 0.02) if p.dim() > 1 else None
    prior = fake_prior(3, size, classes)
    labels = torch.arange(n) % classes
    seeds = list(range(n))
    total = timed(lambda: sample.generate(model, prior, labels, seeds, nfe, solver, batch_size=n, device=device), device)
    x, t, c = torch.randn(n, 3, size, size, device=device), torch.rand(n, device=device), labels.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def network_only() -> None:
        for _ in range(nfe):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model(x, t, c)

    network = timed(network_only, device)
    with tempfile.TemporaryDirectory() as folder:
        teacher = Path(folder) / "teacher.pt"
        outputs.save_torch(teacher, {"ema": model.state_dict()})  # make_pairs records the teacher's sha256
        run = {"dataset": "bench", "image_size": size, "channels": 3, "num_classes": classes, "cond_dim": 0,
               "prior": "class", "prior_options": {}}
        made = iter(range(10))
        pairs_time = timed(lambda: sample.make_pairs(model, prior, run, teacher, Path(folder) / f"p{next(made)}", n, nfe,
                                                     solver, chunk=n, batch_size=n, device=device, progress=False),
                           device)
    return {"preset": preset, "img_per_s": n / total, "outside_share": 1 - network / total,
            "pairs_per_s": n / pairs_time, "network_per_s": n * nfe / network}


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small", help="comma-separated unet presets")
    parser.add_argument("--n", type=int, default=256, help="images, sampled in one batch")
    parser.add_argument("--nfe", type=int, default=8, help="network evaluations per image")
    parser.add_argument("--solver", default="euler", choices=list(sample.SOLVERS))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    device = checks.resolve_device(args.device)
    print(f"device: {checks.describe_device(device)}; torch {torch.__version__}; {args.n} images in one batch; {args.solver}, NFE {args.nfe}")
    print("| preset | images/s | outside the network | reflow pairs/s | evaluations/s: images, pairs, network alone |")
    print("|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = bench_preset(preset, args.n, args.nfe, args.solver, device)
        print(f"| {r['preset']} | {r['img_per_s']:.1f} | {100 * r['outside_share']:.1f}% | {r['pairs_per_s']:.1f} | "
              f"{r['img_per_s'] * args.nfe:.0f}, {r['pairs_per_s'] * args.nfe:.0f}, {r['network_per_s']:.0f} |",
              flush=True)


if __name__ == "__main__":
    checks.run_main(main)
