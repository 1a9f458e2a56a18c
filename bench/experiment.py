"""What every experiment driver shares: one training budget for every method, trained once and
kept, then measured point by point into a cache that a killed run continues from.

    Config          the budget (preset, steps, batch, lr, EMA, samples per point, ...); CONFIGS:
                    cpu (MNIST, 2 CPU cores), gpu (CIFAR-10, one GPU), smoke (seconds, for tests)
    train_method    a method's train.Config under that budget, trained in segments ending at the
                    measured steps (a resumed run repeats the uninterrupted one exactly), one header
                    and one bar per run; training_step_seconds and time_estimate: the budget's
                    training steps timed as they will run, for a time estimate with its range
    claim_run       a training folder's method.json: what it was trained for, a mismatch refused
    Evaluator       the feature network (Inception if its weights are found, else an offline
                    classifier trained here, its held-out accuracy), the reference statistics (how
                    many images they hold), the checkpoints, the floor (real_images); before
                    training, check_measurable and check_reference refuse what could not be measured
    Results         results.json: every measured point, written atomically after each one, the
                    points of each measurement apart (a scope)
    path_straightness, side_by_side, table: measurements and report pieces

bench/compare.py (any set of priors, several training seeds, verdicts) builds on it;
bench/reproduce.py (the paper's comparison) and bench/priors.py (the priors beyond it) are named
lists of compare.py entries with a few extra measures.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
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
from plumbing import checks, classifier, data, inception, outputs, pairs, samplefiles, shapes  # noqa: E402
import flow  # noqa: E402
import eval_fid  # noqa: E402
import prior as priors  # noqa: E402
import sample  # noqa: E402
import sweep  # noqa: E402 (bench/sweep.py: plots, the run's transport cost)
import train  # noqa: E402
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

MEASURED = "measured/"  # where results.json keeps the points of each measurement: MEASURED + settings + /KEY


class Results:
    """results.json: measured points by key, written atomically after each one.

    Several drivers may share one --out (compare.py with other --priors, one per core or GPU):
    put() re-reads the file under a lock (.results.json.lock, flock) and adds its one point, so
    each adds to the others' points instead of writing its own older copy over them.

    scope: the points of one measurement (compare.measurement_key: the samples per point, the
    sampling seed, ...) are kept in the file as SCOPE/KEY and seen here as KEY, so points measured
    otherwise stay in the file, apart. legacy: also see the file's unscoped keys as this scope's
    (a file of an earlier version, whose points were all of one measurement)."""

    def __init__(self, path: Path, scope: str = "", legacy: bool = False):
        self.path, self.scope, self.legacy = path, scope, legacy
        self.points: dict[str, dict] = self.view(json.loads(path.read_text()) if path.is_file() else {})
        self.added = 0  # points this process measured (the file may grow by another's too)

    def view(self, stored: dict) -> dict:
        if not self.scope:
            return stored
        prefix = self.scope + "/"
        old = {k: v for k, v in stored.items() if not k.startswith(MEASURED)} if self.legacy else {}
        return old | {k.removeprefix(prefix): v for k, v in stored.items() if k.startswith(prefix)}

    def get(self, key: str, compute) -> dict:
        if key not in self.points:
            self.put(key, compute())
        return self.points[key]

    def put(self, key: str, value: dict) -> None:
        lock = os.open(self.path.parent / f".{self.path.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            outputs.flock(lock, wait=True)  # released by the close
            stored = (json.loads(self.path.read_text()) if self.path.is_file() else {})
            stored[f"{self.scope}/{key}" if self.scope else key] = value
            outputs.write_text(self.path, json.dumps(stored, indent=1))
            self.points = self.view(stored)
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


def claim_run(run_dir: Path, record: str) -> bool:
    """Write method.json in a new folder; an existing one must say the same. Returns whether the
    folder was trained before (its method.json existed)."""
    found = run_dir / "method.json"
    if not found.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        outputs.write_text(found, record)
        return False
    if found.read_text() != record:
        old, new = json.loads(found.read_text()), json.loads(record)
        flat_old, flat_new = flatten(old), flatten(new)
        changed = [f"{k} {flat_old.get(k)} there, {flat_new.get(k)} here" for k in sorted({*flat_old, *flat_new})
                   if flat_old.get(k) != flat_new.get(k)]
        raise ValueError(f"{run_dir} was trained for another configuration ({'; '.join(changed)}): "
                         "use another --out")
    return True


def flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def train_method(config: Config, args: argparse.Namespace, slug: str, method: dict) -> dict[int, Path]:
    """Train one method in segments ending at the measured steps; returns {step: checkpoint}.
    The learning rate is constant after warm-up and a resumed run repeats the uninterrupted one
    exactly (train.py), so the segments are one run; each segment end is kept as ckpt_STEP.pt."""
    run_dir = args.out / slug
    milestones = [round(config.steps * (k + 1) / config.checkpoints) for k in range(config.checkpoints)]
    saved, trained = {}, 0
    for step in milestones:
        keep = run_dir / f"ckpt_{step:07d}.pt"
        if not keep.is_file():
            resume = "auto" if (run_dir / "ckpt.pt").is_file() else None
            if resume and checks.load_torch(run_dir / "ckpt.pt", "checkpoint", "use another --out")["step"] > step:
                raise ValueError(f"{run_dir / 'ckpt.pt'} is past step {step}: it was trained for other "
                                 "--steps; use another --out")
            run = train_config(config, args, run_dir, step, method)
            # one header and one bar per run, not per segment: train.py's header and "done" lines of the
            # later segments are dropped, and each segment's bar is drawn over the one before
            with (contextlib.redirect_stdout(Lines(sys.stdout, header=not trained)),
                  contextlib.redirect_stderr(OneLine(sys.stderr))):
                # a resume may change only the steps and the checkpoint cadence: say so, as the command line would
                train.train(replace(run, resume=resume, given=("steps", "ckpt_every")))
            outputs.atomic_write(keep, lambda file: file.write((run_dir / "ckpt.pt").read_bytes()))
            trained += 1
        saved[step] = keep
    if trained:
        sys.stderr.write("\n")  # the end of the run's bar
    return saved


# Reflow from a trained run (Liu et al. 2022): its pairs, a run trained on them, and the control
# that trains the same run on data for the same added compute instead.

@dataclasses.dataclass(frozen=True)
class Reflow:
    """What every reflowed entry shares: the pairs' teacher solve and the fine-tuning budget."""
    nfe: int = 32  # the teacher's solve per pair
    solver: str = "midpoint"
    steps: int = 1000  # fine-tuning steps on the pairs, from the teacher's EMA weights
    lr: float = 2e-4
    t_dist: str = "uniform"
    checkpoints: int = 4  # measured fine-tuning steps

    def control_steps(self, pairs: int, batch_size: int) -> int:
        """Steps of training on data with the compute of `pairs` pairs and the fine-tuning: a
        training image costs about 3 network evaluations (forward, and a backward of about twice
        the forward's cost), a pair `nfe` forward ones."""
        return self.steps + math.ceil(pairs * self.nfe / (3 * batch_size))


def make_pairs(teacher: Path, folder: Path, count: int, reflow: Reflow, seed: int, device: str | None,
               batch_size: int) -> Path:
    """sample.py --pairs, as a function: `count` pairs of the teacher checkpoint in folder
    (resumed where a killed run stopped; pairs made otherwise there are refused)."""
    model, prior, run = sample.load_checkpoint(teacher, checks.resolve_device(device))
    sample.make_pairs(model, prior, run, teacher, folder, count, reflow.nfe, reflow.solver, 1.0, seed,
                      min(count, 1024), batch_size, checks.resolve_device(device))
    return folder


def train_segments(config: Config, args: argparse.Namespace, run_dir: Path, milestones: list[int],
                   fields: dict) -> dict[int, Path]:
    """train.py up to each milestone in turn (resuming the folder's ckpt.pt), each kept as
    ckpt_STEP.pt: {step: checkpoint}. fields: train.Config's, beyond train_config's budget."""
    saved = {}
    for step in milestones:
        keep = run_dir / f"ckpt_{step:07d}.pt"
        if not keep.is_file():
            resume = "auto" if (run_dir / "ckpt.pt").is_file() else None
            run = replace(train_config(config, args, run_dir, step, {}), **fields)
            train.train(replace(run, resume=resume, given=("steps", "ckpt_every", "lr")))
            outputs.atomic_write(keep, lambda file: file.write((run_dir / "ckpt.pt").read_bytes()))
        saved[step] = keep
    return saved


def train_reflow(config: Config, args: argparse.Namespace, teacher: Path, pairs_dir: Path, run_dir: Path,
                 reflow: Reflow) -> dict[int, Path]:
    """train.py --pairs from the teacher's EMA: {teacher's step + fine-tuning step: checkpoint}."""
    fine = config.steps
    milestones = [round(reflow.steps * (k + 1) / reflow.checkpoints) for k in range(reflow.checkpoints)]
    saved = train_segments(replace(config, lr=reflow.lr), args, run_dir, milestones,
                           dict(pairs=str(pairs_dir), t_dist=reflow.t_dist, init="teacher"))
    return {fine + step: path for step, path in saved.items()}


def train_longer(config: Config, args: argparse.Namespace, teacher: Path, run_dir: Path, extra: int,
                 reflow: Reflow, method: dict) -> dict[int, Path]:
    """The control: the teacher's run trained on (on data, fresh prior draws) for `extra` more steps
    at the fine-tuning's learning rate; {step: checkpoint}."""
    if not (run_dir / "ckpt.pt").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        outputs.atomic_write(run_dir / "ckpt.pt", lambda file: file.write(teacher.read_bytes()))
    milestones = [config.steps + round(extra * (k + 1) / reflow.checkpoints) for k in range(reflow.checkpoints)]
    return train_segments(replace(config, lr=reflow.lr), args, run_dir, milestones, method)


class Lines(io.TextIOBase):
    """stdout of one training segment: train.py's lines before its bar (the header, the prior's
    fit) when header, never its closing "done: ..." line (the run goes on in the next segment)."""

    def __init__(self, stream, header: bool):
        self.stream, self.header, self.pending = stream, header, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if self.header and not line.startswith("done: "):
                self.stream.write(line + "\n")
        return len(text)


class OneLine(io.TextIOBase):
    """stderr of one training segment: the bar without the line break it ends with, so that the
    next segment's bar is drawn over it (the run's bar is one line)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if text != "\n":
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def step_seconds(step, warmup: int = 2, timed: int = 6) -> list[float]:
    """Seconds of each of `timed` calls of step(k), after `warmup` untimed ones (the first steps
    allocate and tune: on a CPU they were several times slower than the rest)."""
    for k in range(warmup):
        step(k)
    times = []
    for k in range(warmup, warmup + timed):
        begin = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - begin)
    return times


def training_step_seconds(config: Config, args: argparse.Namespace, method: dict, warmup: int = 2,
                          timed: int = 6) -> list[float]:
    """train.train_step as the training will run it (its network, optimizer, EMA, precision, the
    method's coupling; the batches of the data; the threads already set), timed per step. The
    prior is N(0, I): fitting the method's own would cost more than the estimate is worth."""
    run_config = replace(train_config(config, args, args.out, config.steps, method), prior="gaussian",
                         prior_options={})
    train_set = data.load_dataset(args.dataset, args.data_dir, "train", **train.dataset_options(run_config))
    prior = priors.GaussianPrior()
    prior.shape = (train_set.channels, train_set.image_size, train_set.image_size)
    prior.num_classes = max(train_set.num_classes, 0)
    device = checks.resolve_device(args.device)
    run = train.build_run(run_config, train_set, prior, device)
    count = min(len(train_set), run_config.max_images or len(train_set))

    def step(k: int) -> None:
        images, cond = train_set.get(np.arange(k * config.batch_size, (k + 1) * config.batch_size) % count)
        loss, _ = train.train_step(run, images, cond, k)
        loss.item()  # wait for the device

    return step_seconds(step, warmup, timed)


def time_estimate(seconds: list[float], batch_size: int, steps: int, threads: str) -> str:
    """The training time of `steps` from timed steps: the median step's, and the range from the
    fastest and the slowest timed step (other jobs on the machine move it)."""
    fast, middle, slow = min(seconds), float(np.median(seconds)), max(seconds)
    return (f"about {steps * middle / 60:.1f} min ({steps * fast / 60:.1f}-{steps * slow / 60:.1f}) at "
            f"{batch_size / middle:.0f} img/s ({batch_size / slow:.0f}-{batch_size / fast:.0f} over {len(seconds)} "
            f"timed steps after warm-up{', ' + threads if threads else ''})")


# ----------------------------------------------------------------------------- measuring

def check_measurable(config: Config, args: argparse.Namespace) -> None:
    """What the measuring needs, checked before any training: the dataset, enough samples per
    point and reference images for a covariance of full rank (n > the feature dimension), enough
    held-out condition vectors; a --ref-images beyond the dataset is said, not silently cut."""
    train_set = data.load_dataset(args.dataset, args.data_dir, "train")  # a missing dataset fails now
    if config.features == "inception":
        try:
            inception.find_inception_weights(None)
        except FileNotFoundError as err:
            raise ValueError(f"--features inception: {err}; or leave --features auto (FD-clf without them)") from None
    features = resolve_features(config.features)
    dim = feature_dim(config.features, config.clf_width)
    network = "Inception" if features == "inception" else f"the classifier of --clf-width {config.clf_width}"
    what = f"{dim}-d features ({network})"
    if config.n <= dim:
        raise ValueError(f"--n {config.n} samples per point for {what}: the covariance is singular; use --n "
                         f"{dim + 1} or more" + (" (or --features clf)" if features == "inception" else ""))
    if min(config.ref_images, len(train_set)) <= dim:
        raise ValueError(f"the reference needs more than {dim} images for {what}; --ref-images {config.ref_images} "
                         f"of {len(train_set)} training images are too few")
    if config.ref_images > len(train_set):
        print(f"warning: --ref-images {config.ref_images} but the {args.dataset} training split has "
              f"{len(train_set)} images: the reference uses {len(train_set)}")
    if args.cond == "attributes" or train_set.cond_dim:  # one held-out condition vector per sample
        options = dataset_options(config, args) | ({"cond": args.cond} if args.cond else {})
        held_out = len(data.load_dataset(args.dataset, args.data_dir, "test", **options))
        for flag, count in (("--n", config.n), ("--straight-n", config.straight_n)):
            if count > held_out:
                raise ValueError(f"{flag} {count}: the held-out split has {held_out} condition vectors; "
                                 "use at most that")


def check_reference(out: Path, made: dict, wanted: dict) -> None:
    """The classifier and the reference statistics in `out` (clf.pt, ref_*.npz) are made once, for
    the settings `made` (dataset, features, clf_steps, ...): other settings are refused while they
    exist, before any training, naming the flags and the way out. Another dataset always is: the
    training runs beside them were trained on the first (their method.json does not say)."""
    if made.get("dataset", wanted["dataset"]) != wanted["dataset"]:
        raise ValueError(f"{out} holds runs of --dataset {made['dataset']}: use another --out")
    files = [p.name for p in [out / "clf.pt", *sorted(out.glob("ref_*.npz"))] if p.is_file()]
    changed = [f"--{k.replace('_', '-')} {made[k]} there, {wanted[k]} here" for k in wanted
               if k in made and made[k] != wanted[k]]
    if files and changed:
        raise ValueError(f"{out}: {', '.join(files)} were made for other settings ({'; '.join(changed)}): pass the "
                         f"same flags, or delete {' and '.join(files)} to make them again (the training runs and "
                         "the points measured are kept)")


class Evaluator:
    """The feature network, the reference statistics and a cache of loaded checkpoints."""

    def __init__(self, config: Config, args: argparse.Namespace):
        self.config, self.args, self.models = config, args, {}
        features = resolve_features(config.features)
        self.built: dict[str, float] = {}  # seconds of what this process made: "clf", "reference"
        train_set = data.load_dataset(args.dataset, args.data_dir, "train", **dataset_options(config, args))
        test_set = data.load_dataset(args.dataset, args.data_dir, "test", **dataset_options(config, args))
        self.held_out = len(test_set)  # the most real images the floor (real_images) can use
        clf = args.out / "clf.pt"
        if features == "clf" and not clf.is_file():
            begin = time.perf_counter()
            classifier.fit_and_save(clf, train_set, test_set, config.clf_steps, 128, 2e-3, config.clf_width,
                                    args.seed, self.device, min(10_000, config.ref_images))
            self.built["clf"] = time.perf_counter() - begin
        # the classifier's accuracy on held-out images: what its features can tell apart
        self.clf_accuracy = (checks.load_torch(clf, "classifier", "delete it: it is made again")
                             .get("test_accuracy") if features == "clf" else None)
        ref = args.out / f"ref_{features}.npz"
        if not ref.is_file():
            begin = time.perf_counter()
            extractor = build_extractor(features, str(clf) if features == "clf" else None, device=args.device)
            total = min(len(train_set), config.ref_images)
            shape = (train_set.channels, train_set.image_size, train_set.image_size)
            eval_fid.write_reference(ref, extractor, (images for images, _ in train_set.batches(100)), total, shape,
                                     f"{args.dataset}:train", args.seed)
            self.built["reference"] = time.perf_counter() - begin
        self.ref = eval_fid.load_ref(ref)
        self.ref_images = int(self.ref["n"]) if "n" in self.ref else None  # how many it really holds
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
        """The first n test images against the (training) reference: the metric's floor at this n
        (fewer when the held-out split is smaller; the result's n says how many)."""
        test = data.load_dataset(self.args.dataset, self.args.data_dir, "test",
                                 **dataset_options(self.config, self.args))
        images, labels = test.get(np.arange(min(self.config.n, len(test))))
        return eval_fid.score(self.extractor, images, labels.numpy() if labels.ndim == 1 else None, self.ref, 256,
                              self.args.seed)

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
            save_grid(images, cond, self.config.grid_per_class, grid, run.get("class_names"))
        return {"solver": solver, "nfe": nfe, "cfg": cfg, **result}

    def transport_cost(self, ckpt: Path) -> float:
        """E||x1 - x0||^2 of the coupling the run trained on: a reflowed run's, of its pairs."""
        _, prior, run = self.load(ckpt)
        if run.get("pairs"):
            _, arrays = pairs.load(run["pairs"])
            return float(flow.transport_cost(torch.from_numpy(arrays["x0"]), torch.from_numpy(arrays["x1"])))
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


def resolve_features(features: str) -> str:
    """"auto": inception when its weights are found, else the offline classifier ("clf")."""
    if features != "auto":
        return features
    try:
        inception.find_inception_weights(None)
        return "inception"
    except FileNotFoundError:
        return "clf"


def feature_dim(features: str, clf_width: int) -> int:
    """The features' dimension: Inception's pool layer, or the classifier's penultimate one."""
    return 2048 if resolve_features(features) == "inception" else 8 * clf_width


def row_names(class_names: list[str] | None, ids: list[int]) -> dict[int, str]:
    """A grid row's name: "3 circle", or the id alone where the name is the id (MNIST's "3")."""
    names = class_names or []
    return {i: (str(i) if i >= len(names) or names[i] == str(i) else f"{i} {names[i]}") for i in ids}


def save_grid(images: torch.Tensor, cond: torch.Tensor, per_class: int, path: Path,
              class_names: list[str] | None = None, rows: int = 5) -> None:
    """Class ids: the first per_class samples of each class, one row per class, named by
    row_names; condition vectors (no classes): the first rows x 8 images in order."""
    if cond.ndim == 1:
        first = slice(0, per_class * (int(cond.max()) + 1))
        samplefiles.save_grid(images[first], cond[first], path, row_names(class_names, range(int(cond.max()) + 1)))
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
