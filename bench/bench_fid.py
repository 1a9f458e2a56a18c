"""Speed of the measuring instrument: Inception feature throughput, the Frechet distance of
2048-d statistics (eval_fid's Cholesky-eigvalsh path against the sqrtm reference, pytorch-fid's
way, in one run), KID at its defaults (against the estimator as it was written, with pow), and
classifier training; on request, our Inception against pytorch-fid's own network on the same input.

    python bench/bench_fid.py [--device cpu|cuda] [--batch-size 32] [--batches 3]
    python bench/bench_fid.py --parts frechet kid         # the numerics only
    python bench/bench_fid.py --parts pytorch-fid          # needs pytorch-fid (and torchvision)

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


def timed(function, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_frechet(devices: list[torch.device], rounds: int = 2, n: int = 10_000, d: int = 2048) -> None:
    """The Cholesky-eigvalsh path and the sqrtm reference on the same pool3-like statistics, in one
    run, alternated `rounds` times (on shared cores the load moves: the fastest of each is compared)."""
    rng = np.random.default_rng(0)
    stats = []
    for shift in (0.0, 0.1):
        x = np.abs(rng.normal(size=(n, d))) + shift  # pool3-like: non-negative
        stats.append((x.mean(0), np.cov(x, rowvar=False)))
    for device in devices:
        if device.type == "cuda":
            eval_fid.frechet_distance(*stats[0], *stats[1], device=device)  # warm-up (cuSOLVER, allocator)
    sqrtm_s, fast_s, fds = [], {device: [] for device in devices}, {}
    for _ in range(rounds):
        reference, seconds = timed(eval_fid.frechet_distance_sqrtm, *stats[0], *stats[1])
        sqrtm_s.append(seconds)
        for device in devices:
            fds[device], seconds = timed(eval_fid.frechet_distance, *stats[0], *stats[1], device=device)
            fast_s[device].append(seconds)
    report("frechet_distance_sqrtm_2048", min(sqrtm_s), "s", "cpu", n=n, fd=reference, all_s=sqrtm_s)
    for device in devices:
        report("frechet_distance_2048", min(fast_s[device]), "s", str(device), n=n, fd=fds[device],
               all_s=fast_s[device], speedup=round(min(sqrtm_s) / min(fast_s[device]), 2),
               relative_difference=abs(fds[device] - reference) / abs(reference))


def mmd2_unbiased_pow(x: np.ndarray, y: np.ndarray) -> float:
    """eval_fid's estimator as it was written before (pow for the cube, fresh temporaries)."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    m, n = len(x), len(y)
    within = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within - 2 * k_xy.mean())


def kid_pow(x: np.ndarray, y: np.ndarray, num_subsets: int = 100, m: int = 1000, seed: int = 0) -> float:
    """The mean of the old estimator over kid's subsets (the same draws)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([mmd2_unbiased_pow(x[rng.choice(len(x), m, replace=False)],
                                            y[rng.choice(len(y), m, replace=False)]) for _ in range(num_subsets)]))


def bench_kid(devices: list[torch.device], n: int = 10_000, d: int = 2048, num_subsets: int = 100) -> None:
    rng = np.random.default_rng(1)
    a, b = np.abs(rng.normal(size=(n, d))), np.abs(rng.normal(size=(n, d))) + 0.01  # KID ~ 1e-3
    reference, pow_s = timed(kid_pow, a, b, num_subsets)
    report(f"kid_pow_{num_subsets}x1000_2048", pow_s, "s", "cpu", kid=reference)
    for device in devices:
        if device.type == "cuda":
            eval_fid.kid(a, b, num_subsets=2, device=device)  # warm-up
        (value, _), seconds = timed(eval_fid.kid, a, b, num_subsets, device=device)
        report(f"kid_{num_subsets}x1000_2048", seconds, "s", str(device), kid=value,
               speedup=round(pow_s / seconds, 2), relative_difference=abs(value - reference) / abs(reference))


def bench_vs_pytorch_fid(batch_size: int) -> None:
    """Our InceptionV3 against pytorch-fid's FID network (FIDInceptionA/C/E_1/E_2 on torchvision's
    Inception3) on the same images. Its weights cannot be downloaded here, so both networks get one
    random state dict in the published file's layout (random BN statistics too, so that no layer is
    the identity), loaded by key into each, as the weights file would be. Features are compared in
    float32 (as measured) and float64 (the same arithmetic?), from uint8 images through each side's
    own scaling, grey-to-RGB and resize: ours via features.Extractor, theirs as fid_score feeds its
    model (float in [0, 1], RGB)."""
    try:
        import pytorch_fid.inception as theirs
    except ImportError as err:
        print(f"skipped: pytorch-fid is not installed ({err}); pip install pytorch-fid (it brings "
              "torchvision) to compare the feature pass with its network")
        return
    torch.manual_seed(0)
    ours = InceptionV3()
    for module in ours.modules():  # random BN scales, and statistics from a batch: features that vary with the input
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.momentum = None  # running statistics = this batch's
    with torch.no_grad():
        ours.train()(torch.rand(4, 3, 32, 32))
    ours.eval()
    state = ours.state_dict()
    theirs.load_state_dict_from_url = lambda *args, **kwargs: state  # fid_inception_v3 loads it strictly
    network = theirs.InceptionV3([theirs.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    for shape in ((3, 32, 32), (1, 28, 28), (3, 64, 64)):
        generator = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8, generator=generator)
        rgb = images.float().div(255).expand(-1, 3, -1, -1)  # PIL's convert('RGB') repeats a grey channel
        for dtype in (torch.float32, torch.float64):
            if dtype == torch.float32:  # what eval_fid measures with
                mine, _ = Extractor("inception", ours.float(), 2048, "random", torch.device("cpu"))(images)
            else:  # Extractor feeds float32: the float64 pass calls the network itself
                with torch.inference_mode():
                    mine = ours.double()(images.double() / 255).numpy()
            with torch.inference_mode():
                other = network.to(dtype)(rgb.to(dtype))[0].squeeze(3).squeeze(2).double().numpy()
            scale = np.abs(other).max()
            # what a difference looks like: each image's features against the next image's
            between = np.abs(np.roll(other, 1, axis=0) - other).max() / scale
            report("inception_vs_pytorch_fid", float(np.abs(mine - other).max() / scale), "max |diff| / max |f|",
                   "cpu", dtype=str(dtype), image_shape=list(shape), batch=batch_size, feature_scale=float(scale),
                   between_images=float(between))


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
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID's default is 100")
    parser.add_argument("--parts", nargs="+", default=["inception", "classifier", "frechet", "kid"],
                        choices=["inception", "classifier", "frechet", "kid", "pytorch-fid"])
    args = parser.parse_args(argv)
    devices = [torch.device(args.device)] if args.device else (
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
    for device in devices:
        if "inception" in args.parts:
            bench_inception(device, args.batch_size, args.batches if device.type == "cpu" else 10 * args.batches)
        if "classifier" in args.parts:
            bench_classifier(device, args.classifier_steps)
    if "frechet" in args.parts:
        bench_frechet(devices)
    if "kid" in args.parts:
        bench_kid(devices, num_subsets=args.kid_subsets)
    if "pytorch-fid" in args.parts:
        bench_vs_pytorch_fid(min(args.batch_size, 8))


if __name__ == "__main__":
    main()
