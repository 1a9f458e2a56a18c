"""What every experiment driver shares: one training budget for every method, trained once and
kept, then measured point by point into a cache that a killed run continues from.

    Config          the budget (preset, steps, batch, lr, EMA, samples per point, ...); CONFIGS:
                    cpu (MNIST, 2 CPU cores), gpu (CIFAR-10, one GPU), smoke (seconds, for tests)
    train_method    a method's train.Config under that budget, trained in segments ending at the
                    measured steps (a resumed run repeats the uninterrupted one exactly);
                    images_per_second: the budget's training speed, for a time estimate
    Evaluator       the feature network (Inception if its weights are found, else an offline
                    classifier trained here), the reference statistics, the checkpoints
    Results         results.json: every measured point, written atomically after each one
    path_straightness, side_by_side, table: measurements and report pieces

bench/compare.py (any set of priors, several training seeds, verdicts) builds on it;
bench/reproduce.py (the paper's comparison) and bench/priors.py (the priors beyond it) are named
lists of compare.py entries with a few extra measures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plumbing import checks, classifier, data, inception, outputs, samplefiles, shapes  # noqa: E402
import eval_fid  # noqa: E402
import sample  # noqa: E402
import sweep  # noqa: E402 (bench/sweep.py: plots, the run's transport cost)
import train  # noqa: E402
import unet  # noqa: E402
from plumbing.features import build_extractor  # noqa: E402


@dataclasses.dataclass
class Config:
    dataset: str
    data_dir: str | None
    preset: str
    steps: int
    batch_size: int
    lr: float
    warmup: int
    ema: float
    checkpoints: int  # FD at NFE 8 is measured at this many evenly spaced training steps
    n: int  # samples per measured point, class-balanced
    label_dropout: float = 0.1  # the null label's share in training (classifier-free guidance)
    euler_nfes: tuple[int, ...] = (1, 2, 4, 8, 15, 32)
    midpoint_nfes: tuple[int, ...] = (2, 4, 8, 32)  # midpoint spends 2 NFE per step: no 1 or 15
    cov_nfes: tuple[int, ...] = (1, 2, 4, 8)
    cfg_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    cfg_steps: int = 8
    straight_n: int = 100
    straight_nfe: int = 64
    grid_per_class: int = 6
    noise_seeds: int = 3  # NFE 8 is measured again from this many other sampling seeds
    features: str = "auto"  # inception if its weights are found, else the offline classifier
    clf_steps: int = 300
    clf_width: int = 32
    ref_images: int = 10_000
    sample_batch: int = 250
    image_size: int | None = None  # shapes only
    toy2d_steps: int = 2000


CONFIGS = {
    # 2 CPU cores: the tiny preset (the small one trains at 5 img/s there); 1000 steps per method take
    # 6 minutes, all parts about 80 minutes (bench/RESULTS.md)
    "cpu": Config(dataset="mnist", data_dir=str(ROOT.parent / "shared" / "data" / "mnist"), preset="tiny",
                  steps=1000, batch_size=32, lr=1e-3, warmup=100, ema=0.999, checkpoints=4, n=500),
    # one GPU: CIFAR-10, the small preset (6.95M parameters); meant for a few hours, not yet timed
    "gpu": Config(dataset="cifar10", data_dir=None, preset="small", steps=100_000, batch_size=128, lr=2e-4,
                  warmup=5000, ema=0.9999, checkpoints=5, n=10_000, straight_n=1000, grid_per_class=8,
                  clf_steps=2000, ref_images=50_000, sample_batch=500),
    # seconds: exercises every part (the test suite runs it)
    "smoke": Config(dataset="shapes", data_dir=None, preset="tiny", steps=4, batch_size=8, lr=1e-3, warmup=2,
                    ema=0.9, checkpoints=2, n=70, euler_nfes=(1, 2), midpoint_nfes=(2,), cov_nfes=(1,),
                    cfg_scales=(1.0, 2.0), cfg_steps=1, straight_n=4, straight_nfe=4, grid_per_class=2,
                    noise_seeds=1, features="clf", clf_steps=3, clf_width=8, ref_images=200, sample_batch=64,
                    image_size=16, toy2d_steps=20),
}


# ----------------------------------------------------------------------------- bookkeeping

class Results:
    """results.json: measured points by key, written atomically after each one.

    Several drivers may share one --out (compare.py with other --priors, one per core or GPU):
    put() re-reads the file under a lock (.results.json.lock, flock) and adds its one point, so
    each adds to the others' points instead of writing its own older copy over them."""

    def __init__(self, path: Path):
        self.path = path
        self.points: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}
        self.added = 0  # points this process measured (the file may grow by another's too)

    def get(self, key: str, compute) -> dict:
        if key not in self.points:
            self.put(key, compute())
        return self.points[key]

    def put(self, key: str, value: dict) -> None:
        lock = os.open(self.path.parent / f".{self.path.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            outputs.flock(lock, wait=True)  # released by the close
            self.points = (json.loads(self.path.read_text()) if self.path.is_file() else {}) | {key: value}
            outputs.write_text(self.path, json.dumps(self.points, indent=1))
        finally:
            os.close(lock)
        self.added += 1


def timed(results: Results, part: str, work) -> None:
    """Run one part; its wall time (of the runs that computed it) is kept in results.json. A re-run
    that finds every point measured adds nothing, so the time does not creep up."""
    begin, before = time.perf_counter(), results.added
    work()
    if results.added > before:
        previous = results.points.get(f"time/{part}", {}).get("seconds", 0.0)
        results.put(f"time/{part}", {"seconds": previous + time.perf_counter() - begin})


def driver_parser(description: str, configs: dict, parts: tuple[str, ...], name: str) -> checks.Parser:
    """The flags every driver takes: the budget (--config), what to measure (--parts), where (--out,
    default runs/NAME_CONFIG; a re-run there continues), on what and from which seed."""
    parser = checks.Parser(description=description)
    parser.add_argument("--config", default="cpu", help=f"one of: {', '.join(configs)}")
    parser.add_argument("--parts", default=",".join(parts), help=f"comma-separated, from: {', '.join(parts)}")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help=f"default: runs/{name}_CONFIG")
    return parser


def driver_setup(args: argparse.Namespace, configs: dict, parts: tuple[str, ...], name: str) -> list[str]:
    """driver_parser's flags checked: the chosen parts in order; args.out is made a Path (default
    runs/NAME_CONFIG) and created."""
    if args.config not in configs:
        raise ValueError(f"unknown --config '{args.config}'; choose one of: {', '.join(configs)}")
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in parts]
    if unknown or not chosen:
        raise ValueError(f"unknown --parts {', '.join(unknown) or '(none)'}; choose from: {', '.join(parts)}")
    args.out = Path(args.out or ROOT / "runs" / f"{name}_{args.config}")
    args.out.mkdir(parents=True, exist_ok=True)
    return chosen


# ----------------------------------------------------------------------------- training

def dataset_options(config: Config, args: argparse.Namespace) -> dict:
    """The loader's options: an image size, for the datasets that take one."""
    return {"image_size": config.image_size} if config.image_size and args.dataset in ("shapes", "folder") else {}


def train_config(config: Config, args: argparse.Namespace, run_dir: Path, steps: int, method: dict) -> train.Config:
    """The train.Config of one method, trained up to `steps` (the budget is the same for all)."""
    return train.Config(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed, device=args.device,
                        resize_to=dataset_options(config, args).get("image_size"), preset=config.preset,
                        steps=steps, batch_size=config.batch_size, lr=config.lr, warmup=config.warmup,
                        ema=config.ema, label_dropout=config.label_dropout, ckpt_every=steps, sample_every=0, out=str(run_dir),
                        compile=args.compile, **method)


def train_method(config: Config, args: argparse.Namespace, slug: str, method: dict) -> dict[int, Path]:
    """Train one method in segments ending at the measured steps; returns {step: checkpoint}.
    The learning rate is constant after warm-up and a resumed run repeats the uninterrupted one
    exactly (train.py), so the segments are one run; each segment end is kept as ckpt_STEP.pt."""
    run_dir = args.out / slug
    milestones = [round(config.steps * (k + 1) / config.checkpoints) for k in range(config.checkpoints)]
    saved = {}
    for step in milestones:
        keep = run_dir / f"ckpt_{step:07d}.pt"
        if not keep.is_file():
            resume = "auto" if (run_dir / "ckpt.pt").is_file() else None
            if resume and checks.load_torch(run_dir / "ckpt.pt", "checkpoint", "use another --out")["step"] > step:
                raise ValueError(f"{run_dir / 'ckpt.pt'} is past step {step}: it was trained for other "
                                 "--steps; use another --out")
            run = train_config(config, args, run_dir, step, method)
            # a resume may change only the steps and the checkpoint cadence: say so, as the command line would
            train.train(replace(run, resume=resume, given=("steps", "ckpt_every")))
            outputs.atomic_write(keep, lambda file: file.write((run_dir / "ckpt.pt").read_bytes()))
        saved[step] = keep
    return saved


def images_per_second(config: Config, args: argparse.Namespace, steps: int = 3) -> float:
    """Forward + backward of the preset's network on one batch, timed over a few steps."""
    train_set = data.load_dataset(args.dataset, args.data_dir, "train", **dataset_options(config, args))
    device = checks.resolve_device(args.device)
    model = unet.build_unet(config.preset, train_set.image_size, train_set.channels, max(train_set.num_classes, 1),
                            train_set.cond_dim).to(device)
    x = torch.randn(config.batch_size, train_set.channels, train_set.image_size, train_set.image_size, device=device)
    cond = (torch.zeros(config.batch_size, train_set.cond_dim, device=device) if train_set.cond_dim
            else torch.zeros(config.batch_size, dtype=torch.long, device=device))
    t = torch.rand(config.batch_size, device=device)
    begin = time.perf_counter()
    for _ in range(steps):
        model(x, t, cond).square().mean().backward()
    return steps * config.batch_size / (time.perf_counter() - begin)


# ----------------------------------------------------------------------------- measuring

class Evaluator:
    """The feature network, the reference statistics and a cache of loaded checkpoints."""

    def __init__(self, config: Config, args: argparse.Namespace):
        self.config, self.args, self.models = config, args, {}
        features = config.features
        if features == "auto":
            try:
                inception.find_inception_weights(None)
                features = "inception"
            except FileNotFoundError:
                features = "clf"
        train_set = data.load_dataset(args.dataset, args.data_dir, "train", **dataset_options(config, args))
        clf = args.out / "clf.pt"
        if features == "clf" and not clf.is_file():
            test_set = data.load_dataset(args.dataset, args.data_dir, "test", **dataset_options(config, args))
            classifier.fit_and_save(clf, train_set, test_set, config.clf_steps, 128, 2e-3, config.clf_width,
                                    args.seed, self.device, min(10_000, config.ref_images))
        ref = args.out / f"ref_{features}.npz"
        if not ref.is_file():
            extractor = build_extractor(features, str(clf) if features == "clf" else None, device=args.device)
            total = min(len(train_set), config.ref_images)
            shape = (train_set.channels, train_set.image_size, train_set.image_size)
            eval_fid.write_reference(ref, extractor, (images for images, _ in train_set.batches(100)), total, shape,
                                     f"{args.dataset}:train", args.seed)
        self.ref = eval_fid.load_ref(ref)
        self.extractor = build_extractor(features, str(clf) if features == "clf" else None, device=args.device)
        self.metric = self.extractor.metric

    def load(self, ckpt: Path):
        if ckpt not in self.models:
            self.models = {ckpt: sample.load_checkpoint(ckpt, self.device)}  # keep one: memory on big presets
        return self.models[ckpt]

    @property
    def device(self) -> torch.device:
        return checks.resolve_device(self.args.device)

    def conditions(self, run: dict, n: int, seed: int | None = None) -> tuple[torch.Tensor, list[int], np.ndarray | None]:
        """sweep.evaluation_conditions: class-balanced ids, or the first n held-out condition vectors."""
        return sweep.evaluation_conditions(run, n, self.args.seed if seed is None else seed)

    def real_images(self) -> dict:
        """The first n test images against the (training) reference: the metric's floor at this n."""
        test = data.load_dataset(self.args.dataset, self.args.data_dir, "test",
                                 **dataset_options(self.config, self.args))
        images, labels = test.get(np.arange(min(self.config.n, len(test))))
        return eval_fid.score(self.extractor, images, labels.numpy(), self.ref, 256, self.args.seed)

    def point(self, ckpt: Path, solver: str, nfe: int, cfg: float = 1.0, grid: Path | None = None,
              seed: int | None = None, time_grid=None) -> dict:
        """Metrics of n samples (class-balanced, or the first n held-out condition vectors: then
        the attribute errors of shapes attributes instead of the accuracy); optionally a grid (the
        PNG). time_grid: the solver's time grid, as sample.generate takes it (None: uniform)."""
        model, prior, run = self.load(ckpt)
        cond, seeds, classes = self.conditions(run, self.config.n, seed)
        images = sample.generate(model, prior, cond, seeds, nfe, solver, cfg, self.config.sample_batch,
                                 self.device, progress=True, grid=time_grid)
        result = eval_fid.score(self.extractor, images, classes, self.ref, 256, self.args.seed)
        if classes is None and run["dataset"] == "shapes":  # faithfulness to the attributes, from pixels
            result.update(shapes.attribute_errors(images.numpy(), cond.numpy()))
        if grid is not None:
            save_grid(images, cond, self.config.grid_per_class, grid)
        return {"solver": solver, "nfe": nfe, "cfg": cfg, **result}

    def transport_cost(self, ckpt: Path) -> float:
        _, prior, run = self.load(ckpt)
        return sweep.run_transport_cost(prior, run, self.args.seed)

    def straightness(self, ckpt: Path) -> dict:
        model, prior, run = self.load(ckpt)
        labels, seeds, _ = self.conditions(run, self.config.straight_n)
        labels = labels.to(self.device)
        x0 = sample.prior_noise(prior, labels, seeds)
        field = sample.guided_field(model, labels, 1.0)
        return {**path_straightness(field, x0, self.config.straight_nfe), "n": len(labels)}


@torch.no_grad()
def path_straightness(velocity: sample.Field, x0: torch.Tensor, nfe: int) -> dict:
    """How far a flow is from straight, per dimension, along a midpoint solve with `nfe` evaluations:

        endpoint_gap  E||x(1) - (x0 + v(x0, 0))||^2 / D     the one-step (straight-line) error
        straightness  E int_0^1 ||(x(1) - x0) - v(x(t), t)||^2 dt / D   (Liu et al., rectified flow)
        chord         E||x(1) - x0||^2 / D

    The integral uses the midpoint stages, v at t_k + h/2: the midpoint rule, second order."""
    recorded: list[torch.Tensor] = []

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = velocity(x, t)
        recorded.append(v)
        return v

    x1 = sample.integrate(recording, x0, nfe, "midpoint")
    chord, per_dim = x1 - x0, x0[0].numel()

    def mean_square(z: torch.Tensor) -> float:
        return float(z.double().pow(2).flatten(1).sum(1).mean()) / per_dim

    return {"endpoint_gap": mean_square(x1 - (x0 + recorded[0])),  # recorded[0] = v(x0, 0)
            "straightness": float(np.mean([mean_square(chord - v) for v in recorded[1::2]])),
            "chord": mean_square(chord)}


def save_grid(images: torch.Tensor, cond: torch.Tensor, per_class: int, path: Path, rows: int = 5) -> None:
    """Class ids: the first per_class samples of each class, one row per class; condition vectors
    (no classes): the first rows x 8 images in order."""
    if cond.ndim == 1:
        first = slice(0, per_class * (int(cond.max()) + 1))
        samplefiles.save_grid(images[first], cond[first], path)
    else:
        shown = images[:8 * rows]
        samplefiles.save_grid(shown, torch.arange(len(shown)) // 8, path)


def side_by_side(left: Path, right: Path, out: Path, captions: tuple[str, str]) -> None:
    """Two grids next to each other, captioned."""
    a, b = Image.open(left), Image.open(right)
    mode = "L" if a.mode == b.mode == "L" else "RGB"  # grey stays grey: a third of the file
    a, b = a.convert(mode), b.convert(mode)
    gap, head = 16, 18
    canvas = Image.new(mode, (a.width + gap + b.width, head + max(a.height, b.height)), "white")
    canvas.paste(a, (0, head))
    canvas.paste(b, (a.width + gap, head))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    draw.text((2, 3), captions[0], fill="black", font=font)
    draw.text((a.width + gap + 2, 3), captions[1], fill="black", font=font)
    outputs.atomic_write(out, lambda file: canvas.save(file, format=Image.registered_extensions()[out.suffix.lower()]))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
