"""What defines a run: one plain object, printed at the start, saved whole in every checkpoint and
restored on --resume (nanoGPT keeps its configuration the same way).

Config's fields come in two groups: RUN_KEYS decide what is learnt (the data, the prior and its
options, the network, the pairing, the batches, the seed), so a resumed run must keep them;
RESUMABLE say how it runs (optimizer hyper-parameters, length, cadence, device), so a resume may
change them. A value comes from Config's default, then the dataset's RECIPES, then the command line.

    config = parse_args(["--prior", "kmeans", "--prior-opt", "k=8"])   # what train.py does
    config = Config(prior="kmeans", prior_options={"k": 8}, steps=1000)  # what an experiment does

How a run continues is here too (train.py is the only script that imports this file; the
prior's cache is priorcache.py):

    load_resume  RUN_KEYS from the checkpoint (a different value given is refused), RESUMABLE from
                 the command line where given, else from the checkpoint; trim_log cuts the log to
                 the checkpoint's step so it reads as one run
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

import flow
import prior as priors
import unet
from . import checks, data, outputs, pairs
from .checkpoint import CHECKPOINT_KEYS


@dataclass
class Config:
    """One run, as one plain object: printed at the start, saved whole in every checkpoint and
    restored on --resume. Defaults: the CPU demo (shapes, about 6 minutes on 2 idle cores);
    RECIPES changes some per dataset; the command line changes any (`--batch-size` = batch_size)."""

    # What is learnt (RUN_KEYS): the data, the prior, the network, the pairing, the batches, the
    # seed. A resume keeps them; a different value on its command line is refused.
    dataset: str = "shapes"
    resize_to: int | None = None  # --image-size (shapes, folder); None: the dataset's own size
    cond: str | None = None  # which condition the dataset gives (shapes: class or attributes)
    max_images: int | None = None  # only the first N training images; None: all
    prior: str = "class"
    prior_options: dict = field(default_factory=dict)  # --prior-opt key=value, typed by the prior
    coupling: str = "independent"
    couple_global: bool = False
    sigma_min: float = 0.0
    preset: str | None = None  # None: tiny on a CPU, small on a GPU (decided once, then saved)
    batch_size: int = 32  # the global batch, split over processes
    label_dropout: float = 0.1
    null_source: str = "global"
    seed: int = 0
    t_dist: str = "uniform"  # flow.sample_t: uniform, or u_shaped (Lee et al. 2024, for reflow)
    pairs: str | None = None  # reflow: train on this folder's (x0, x1) pairs (sample.py --pairs), not on data
    init: str = "teacher"  # with --pairs: start from the teacher's EMA weights, or from scratch
    # How it runs (RESUMABLE): a resume may change these; not given again, they keep their values.
    data_dir: str | None = None
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    steps: int = 2500
    grad_accum: int = 1
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 500  # 0: never
    sample_nfe: int = 16
    precision: str = "auto"
    compile: bool = False
    device: str | None = None  # None: cuda if available
    # Where, and whether to continue (not saved).
    out: str = "out"
    prior_stats: str | None = None  # None: OUT/prior_stats.npz
    resume: str | None = None  # "auto": OUT/ckpt.pt
    given: tuple[str, ...] = ()  # the fields set on the command line: a resume keeps the others' saved values

    def saved(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key not in ("resume", "given")}


# Per dataset, what differs from Config's defaults. imagenet64 follows the ADM / flow-matching
# ImageNet-64 setup (batch 256 at lr 1e-4, EMA 0.9999) and is meant for days on one GPU.
RECIPES: dict[str, dict] = {
    "imagenet64": dict(preset="imagenet64", batch_size=256, lr=1e-4, warmup=5000, steps=1_000_000, ema=0.9999,
                       ckpt_every=5000, sample_every=10_000),
}
# What defines a run and what a resume may change: the two groups of Config's fields.
RUN_KEYS = ("dataset", "resize_to", "cond", "max_images", "prior", "prior_options", "coupling", "couple_global",
            "sigma_min", "preset", "batch_size", "label_dropout", "null_source", "seed", "t_dist", "pairs", "init")
RESUMABLE = ("data_dir", "lr", "warmup", "weight_decay", "grad_clip", "ema", "steps", "grad_accum", "log_every",
             "ckpt_every", "sample_every", "sample_nfe", "precision", "compile", "device")


def build_parser() -> checks.Parser:
    """The command line: one flag per Config field (defaults shown are Config's, before RECIPES)."""
    files = "\n".join(f"  {name}: {what}" for name, what in data.EXPECTED_FILES.items())
    parser = checks.Parser(prog="train.py", epilog="--data-dir must hold:\n" + files,
                           description="Train a conditional flow with a condition-specific prior, on one GPU (or a "
                                       "CPU); every option is a field of config.Config.",
                           argument_default=argparse.SUPPRESS)  # only what is given: see parse_args
    arg, default = parser.add_argument, Config()

    def flag(name: str, help: str, **kwargs) -> None:
        field_name = kwargs.pop("dest", name.lstrip("-").replace("-", "_"))
        shown = getattr(default, field_name)
        arg(name, dest=field_name, help=help + ("" if shown is None else f" (default: {shown})"), **kwargs)

    flag("--dataset", f"one of: {', '.join(data.DATASETS)}")
    flag("--data-dir", "folder with the dataset's files (see below)")
    flag("--image-size", "for --dataset folder/shapes: image size", dest="resize_to", type=int, metavar="N")
    flag("--cond", "which condition the dataset gives (shapes: class or attributes; default: the dataset's own)")
    flag("--max-images", "use only the first N training images (quick runs)", type=int)
    flag("--prior", f"source distribution, one of: {', '.join(priors.PRIORS)}")
    arg("--prior-opt", dest="prior_opt", action="append", metavar="KEY=VALUE",
        help="an option of the prior's constructor, repeatable: --prior-opt sigma=0.5 --prior-opt cov=diag "
             "(a wrong key lists the prior's options)")
    flag("--prior-stats", "prior statistics .npz (default: OUT/prior_stats.npz, fitted if missing)")
    flag("--coupling", f"pairing of x0 and x1: {', '.join(flow.COUPLINGS)}; on class-conditional data prefer "
                       "class_ot to ot (ot pairs a class with noise that is not the source it is sampled from: "
                       "worse from NFE 4, lower accuracy; flow.py)")
    flag("--couple-global", "under torchrun: solve ot / class_ot over the whole gathered batch", action="store_true")
    flag("--sigma-min", "width of the probability path at t=1", type=float)
    flag("--preset", f"network size: {', '.join(unet.PRESETS)} (default: tiny on a CPU, small on a GPU)")
    flag("--batch-size", "global batch, split over processes", type=int)
    flag("--grad-accum", "split each process's batch into N micro-batches (one optimizer step)", type=int)
    flag("--lr", "peak learning rate", type=float)
    flag("--warmup", "steps of linear learning-rate warm-up", type=int)
    flag("--weight-decay", "AdamW weight decay", type=float)
    flag("--grad-clip", "gradient norm clipping", type=float)
    flag("--steps", "total optimizer steps", type=int)
    flag("--ema", "EMA decay, warmed up as min(decay, (1+s)/(10+s))", type=float)
    flag("--label-dropout", "share of rows trained as unconditional (null), for guidance", type=float)
    flag("--null-source", "x0 of a null row: the dataset-wide component (global) or its own condition's (class)",
         choices=["global", "class"])
    flag("--precision", "auto: bf16 on CUDA, fp32 on CPU", choices=["auto", "bf16", "fp32"])
    flag("--compile", "torch.compile the network", action="store_true")
    flag("--device", "cuda, cuda:N, cpu (default: cuda if available)")
    flag("--seed", "seed of everything random", type=int)
    flag("--t-dist", f"distribution of t in training: {', '.join(flow.T_DISTRIBUTIONS)} (Lee et al. 2024's, for reflow)",
         choices=list(flow.T_DISTRIBUTIONS))
    flag("--pairs", "reflow: train on the (x0, x1) pairs in this folder (python sample.py --ckpt TEACHER --pairs DIR) "
                    "instead of data and fresh prior draws; the teacher's dataset, prior and preset are taken over")
    flag("--init", "with --pairs: start from the teacher's EMA weights (teacher) or new ones (scratch)",
         choices=["teacher", "scratch"])
    flag("--out", "output folder: ckpt.pt, log.jsonl, samples/")
    flag("--log-every", "steps between log lines", type=int)
    flag("--ckpt-every", "steps between checkpoints", type=int)
    flag("--sample-every", "steps between EMA sample grids, 0: never", type=int)
    flag("--sample-nfe", "Euler steps of those grids", type=int)
    arg("--resume", nargs="?", const="auto",
        help="continue from OUT/ckpt.pt (or the given path); RESUMABLE says what may change")
    return parser


def flag_names() -> dict[str, str]:
    """Config field -> the flag a user types (resize_to -> --image-size, prior_options -> --prior-opt),
    read from build_parser's actions so that messages cannot name a flag that does not exist."""
    names = {action.dest: action.option_strings[-1] for action in build_parser()._actions if action.option_strings}
    names["prior_options"] = names.pop("prior_opt")  # parse_args turns --prior-opt pairs into prior_options
    return names


def flag_of(field_name: str) -> str:
    return flag_names().get(field_name, "--" + field_name.replace("_", "-"))


def parse_args(argv: list[str] | None) -> Config:
    """Config from a command line: Config's defaults, then the dataset's RECIPES, then the flags."""
    given = vars(build_parser().parse_args(argv))
    options = given.pop("prior_opt", None)
    prior = given.get("prior", Config.prior)
    if prior not in priors.PRIORS:
        raise ValueError(f"unknown prior '{prior}'; choose one of: {', '.join(priors.PRIORS)}")
    if options is not None:
        given["prior_options"] = parse_prior_options(prior, options)
    recipe = RECIPES.get(given.get("dataset", Config.dataset), {})
    fields = {key: value for key, value in given.items() if key != "resume"}
    return with_preset(Config(**{**recipe, **given, "given": tuple(sorted(fields))}))


def with_preset(config: Config) -> Config:
    """preset None: small where the run will use a GPU, tiny on a CPU (the demo stays minutes)."""
    if config.preset is not None:
        return config
    on_gpu = torch.cuda.is_available() and (config.device is None or str(config.device).startswith("cuda"))
    return replace(config, preset="small" if on_gpu else "tiny")


def check_config(config: Config) -> None:
    """Every option's range, named by its flag."""
    for name, table in (("dataset", data.DATASETS), ("prior", priors.PRIORS), ("coupling", flow.COUPLINGS),
                        ("preset", unet.PRESETS)):
        if getattr(config, name) not in table:
            raise ValueError(f"unknown {name} '{getattr(config, name)}'; choose one of: {', '.join(table)}")
    for name, minimum in (("batch_size", 1), ("grad_accum", 1), ("steps", 1), ("log_every", 1), ("ckpt_every", 1),
                          ("sample_every", 0), ("sample_nfe", 1), ("warmup", 0), ("max_images", 1),
                          ("resize_to", 8), ("seed", 0)):
        checks.check_at_least(getattr(config, name), minimum, flag_of(name))
    try:  # a bad value fails now, not after loading the data
        priors.build_prior(config.prior, **config.prior_options)
    except ValueError as err:
        if "--prior" in str(err):
            raise
        given = " ".join(f"--prior-opt {key}={value}" for key, value in config.prior_options.items())
        raise ValueError(f"--prior {config.prior} {given or '(default options)'}: {err}") from None
    check_prior_serves(config)
    if config.pairs is None and "init" in config.given:
        raise ValueError("--init applies to a reflow run only: give --pairs DIR (made by sample.py --pairs)")
    if config.t_dist not in flow.T_DISTRIBUTIONS:
        raise ValueError(f"unknown --t-dist '{config.t_dist}'; choose one of: {', '.join(flow.T_DISTRIBUTIONS)}")
    if config.seed > checks.MAX_SEED:  # image seeds (conditions.image_seed) must fit torch's 64 bits
        raise ValueError(f"--seed must be at most {checks.MAX_SEED}, got {config.seed}")
    for name in ("lr", "grad_clip"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag_of(name)} must be a positive number, got {value}")
    for name, low, high in (("label_dropout", 0, 1), ("ema", 0, 1), ("sigma_min", 0, 1)):
        value = getattr(config, name)
        if not low <= value < high:  # also false for NaN
            raise ValueError(f"{flag_of(name)} must be in [{low}, {high}), got {value}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a number >= 0, got {config.weight_decay}")


def check_prior_serves(config: Config) -> None:
    """The prior must serve the dataset's kind of condition (prior.Prior.conditions), checked before
    any data is read: kmeans on condition vectors would otherwise fail deep inside its fit."""
    dataset_options(config)  # --cond or --image-size for a dataset without them: that error first
    kind = data.DATASETS[config.dataset].condition_kind(config.cond)
    prior_class = priors.PRIORS[config.prior]
    served = tuple(getattr(prior_class, "conditions", priors.Prior.conditions))
    if kind not in served:
        given = f"--dataset {config.dataset}" + (f" --cond {config.cond}" if config.cond else "")
        what = {"classes": "class ids", "vectors": "condition vectors"}
        takers = [name for name, kind_class in priors.PRIORS.items()
                  if kind in getattr(kind_class, "conditions", priors.Prior.conditions)]
        raise ValueError(f"--prior {config.prior} needs {' or '.join(what.get(k, k) for k in served)}, but "
                         f"{given} gives {what[kind]}: use --prior {' or '.join(takers)}")


def check_resume_steps(config: Config, checkpoint: dict | None) -> None:
    """A resume must have steps left to train: --steps beyond the checkpoint's step."""
    if checkpoint is None:
        return
    step = int(checkpoint["step"])
    if config.steps <= step:
        said = f"--steps {config.steps} is" if "steps" in config.given else \
            f"the run's --steps {config.steps} (kept from the checkpoint) is"
        raise ValueError(f"--resume: {said} not beyond the checkpoint's step {step}, so nothing would be trained: "
                         f"give --steps > {step}")


def dataset_options(config: Config) -> dict:
    """The keyword options of data.load_dataset that the flags set (--image-size, --cond)."""
    accepted = inspect.signature(data.DATASETS[config.dataset]).parameters
    options = {}
    for flag, key, value in (("--image-size", "image_size", config.resize_to), ("--cond", "cond", config.cond)):
        if value is not None:
            if key not in accepted:
                takers = [n for n, kind in data.DATASETS.items() if key in inspect.signature(kind).parameters]
                raise ValueError(f"{flag} applies to {', '.join(takers)} only, not {config.dataset}")
            options[key] = value
    return options


def parse_prior_options(name: str, pairs: list[str]) -> dict[str, object]:
    """`--prior-opt key=value` pairs, checked against the prior's constructor and converted to
    the type of each option's default (int, float, bool, str)."""
    if name not in priors.PRIORS:
        raise ValueError(f"unknown prior '{name}'; choose one of: {', '.join(priors.PRIORS)}")
    accepted, options = priors.PRIORS[name].defaults(), {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in accepted:
            known = ", ".join(f"{k}={v}" for k, v in accepted.items()) or "none"
            raise ValueError(f"--prior-opt {pair!r}: prior '{name}' takes key=value with key one of: {known}")
        options[key] = convert_option(text.strip(), accepted[key], f"--prior-opt {key}")
    return options


def convert_option(text: str, default: object, flag: str) -> object:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected a finite {type(default).__name__}, like the default "
                         f"{default!r}") from None
    return text


# ----------------------------------------------------------------------------- reflow

def with_pairs(config: Config) -> tuple[Config, dict | None]:
    """(the config to run, pairs.json's record or None). A run on --pairs takes the teacher run's
    data, prior and network (pairs.RUN_FIELDS): its samples start from the teacher's prior, so
    sample.py and eval_fid.py need nothing new. A flag that says otherwise is refused, and so is a
    coupling: the pairs are the coupling."""
    if config.pairs is None:
        return config, None
    spec = pairs.read_spec(config.pairs)
    teacher = spec["run"]
    names = flag_names()
    clash = [key for key in pairs.RUN_FIELDS if key in config.given and key != "data_dir"
             and getattr(config, key) != teacher.get(key)]
    if clash:
        said = ", ".join(f"{names[key]} {getattr(config, key)} (the pairs' teacher: {teacher.get(key)})" for key in clash)
        raise ValueError(f"--pairs {config.pairs} were made by a run of another kind: {said}; drop "
                         f"{'that flag' if len(clash) == 1 else 'those flags'} (a reflow run takes the teacher's) "
                         f"or make pairs from a teacher of that kind")
    if config.coupling != "independent" or config.couple_global:
        raise ValueError(f"--coupling {config.coupling}: a reflow run's source for each x1 is its pair's x0; "
                         "drop --coupling / --couple-global with --pairs")
    taken = {key: teacher.get(key) for key in pairs.RUN_FIELDS if key not in config.given}
    if not taken.get("prior_options"):
        taken["prior_options"] = {}
    return replace(config, **taken), spec


# ----------------------------------------------------------------------------- resume

def load_resume(config: Config) -> tuple[Config, dict | None]:
    """(the config to run, the checkpoint to continue or None). On --resume, RUN_KEYS come from the
    checkpoint (a different value on the command line is refused) and RESUMABLE ones from the
    command line where given there, else from the checkpoint."""
    if config.resume is None:
        return config, None
    path = Path(config.out) / "ckpt.pt" if config.resume == "auto" else Path(config.resume)
    checkpoint = checks.load_torch(path, "checkpoint", "start without --resume, or give a checkpoint's path",
                                   keys=CHECKPOINT_KEYS)
    saved = checkpoint["config"]
    changed = [key for key in RUN_KEYS if key in config.given and getattr(config, key) != saved.get(key)]
    if changed:
        names = flag_names()
        flags = ", ".join(f"{names[k]} {getattr(config, k)} (checkpoint: {saved.get(k)})" for k in changed)
        raise ValueError(f"--resume {path}: {flags}: a resumed run keeps its data, prior, network and batches; "
                         f"only {', '.join(names[k] for k in RESUMABLE)} may change. "
                         f"Start a new run with another --out instead")
    # a key a checkpoint lacks (saved before the option existed) keeps Config's default: what it did then
    kept = {key: saved[key] for key in RUN_KEYS + RESUMABLE if key in saved and key not in config.given}
    return replace(config, **kept), checkpoint


def trim_log(path: Path, last_step: int) -> None:
    """Keep the log lines up to the checkpoint's step (atomically): lines written after it by the
    run that was stopped are written again by the resumed one."""
    if not path.exists():
        return
    def step_of(line: str) -> float:  # a line cut by a kill mid-write is dropped too
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return math.inf

    # errors="replace": a damaged byte makes its line unreadable (dropped), not the whole resume a UnicodeDecodeError
    kept = [line for line in path.read_text(errors="replace").splitlines() if step_of(line) <= last_step]
    outputs.atomic_write(path, lambda file: file.write("".join(line + "\n" for line in kept).encode()), "--out")
