"""Is my prior better than the Gaussian, the class prior and kmeans, at which NFE, and beyond the noise?

One command for any set of priors, each trained with the same budget from each training seed,
then measured on the same per-image sampling seeds:

    python bench/compare.py --dataset mnist --data-dir DIR \\
        --priors gaussian class kmeans:k=16 gmm:k=16 mine:rank=8 --steps 2000 --seeds 0,1 --nfe 1,2,4,8,16

An entry is NAME[:key=value[,key=value...]]: NAME from prior.PRIORS (a fork's own prior too),
keys its constructor's options, typed by their defaults, plus six reserved keys:

    coupling=independent|ot|class_ot   how x0 and x1 are paired in training (flow.COUPLINGS)
    null_source=global|class           where a dropped label's x0 comes from in training
    cfg=W                              guidance weight at sampling time: the same trained run as
                                       the entry without it (a guided step costs 2 NFE: odd NFE
                                       are skipped for it)
    reflow=N                           reflow (Liu et al. 2022): N pairs of the entry's trained run
                                       (its final checkpoint, --reflow-solver in --reflow-nfe
                                       evaluations, seeds from the training seed) in OUT/pairs/, then
                                       --reflow-steps of train.py --pairs from its EMA weights
    longer=N                           the control: the trained run trained on, on data with fresh
                                       prior draws, for the compute reflow=N adds (its fine-tuning
                                       steps, and its pairs' evaluations at 3 per training image)
    grid=NAME                          the solver's time grid at sampling time, the same trained run:
                                       a named one (uniform, shift:S, edm:RHO: sample.py), or
                                       fit[:OBJECTIVE] / fit-class[:OBJECTIVE], a grid fitted to each
                                       measured checkpoint, solver and NFE (sample.fit_grid, pooled
                                       or per class, objective local or endpoint), cached in
                                       OUT/fitted_grids/KEY_seedS_stepN_SOLVER_nfeN.json

Training is cached by its whole configuration: OUT/train/SLUG_seedS/ with method.json (what
was trained: prior, options, coupling, seed, budget) and ckpt_STEP.pt at each measured step
(experiment.train_method: segments, so a killed run continues and a re-run trains nothing).
SLUG is the prior name, each option sorted by key as -KEYVALUE, then -coupling_NAME and
-null_source_NAME when not the default: kmeans:k=16 -> kmeans-k16, gaussian:coupling=ot ->
gaussian-coupling_ot. A folder whose method.json differs from this run's is refused (another
--out). Every measured point lands in OUT/results.json (experiment.Results), so measuring
continues too, under the settings it was measured with (measurement_key: --n, --sample-seed,
...; point_key: the solver and NFE): another --n measures the cached runs again, the old points
kept apart. Runs with other --priors may share one --out at the same time (one per core or
GPU): each adds its points to results.json, and train.py's folder lock refuses one run twice.

Measured, per method, training seed and NFE at the final checkpoint: FD (FID with the Inception
weights when found, else FD-clf, the features of an offline classifier trained in OUT/clf.pt),
KID, conditional accuracy (attribute errors for vector conditions), the training coupling's
transport cost and the path straightness (experiment.path_straightness); FD at --step-nfe at
every measured training step; the floor (real held-out images). Then over the training seeds:
the mean, the spread (sample std, ddof 1), min/max and the verdicts against --baseline
(compare_report.py). Every flag the measuring needs is checked before any training.

The report gives each entry's compute (training images seen, pair-generation evaluations), so
"is reflow from my prior better than from the Gaussian, and than training longer, at equal compute?"
is one command:

    python bench/compare.py --dataset mnist --priors gaussian gaussian:reflow=4096 gaussian:longer=4096 \
        kmeans:k=16 kmeans:k=16,reflow=4096 kmeans:k=16,longer=4096 --steps 4000 --nfe 1,2,4,8,16

Writes OUT/report.md, OUT/results.csv (one row per method x seed x step x NFE), OUT/fd_vs_nfe.png,
OUT/fd_vs_step.png and sample grids in OUT/grids/ (KEY_seedS_nfeN.png, of the first training seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from plumbing import checks, outputs  # noqa: E402
from plumbing.config import convert_option, parse_prior_options  # noqa: E402
import experiment  # noqa: E402
import flow  # noqa: E402
import prior as priors  # noqa: E402
import sample  # noqa: E402
from compare_report import report  # noqa: E402
from experiment import Evaluator, Results, timed  # noqa: E402

NULL_SOURCES = ("global", "class")


# ----------------------------------------------------------------------------- the methods

@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of --priors: what is trained (prior, options, coupling, null source) and the
    guidance weight it is sampled with."""
    prior: str
    options: tuple[tuple[str, object], ...] = ()  # sorted by key
    coupling: str = "independent"
    null_source: str = "global"
    cfg: float = 1.0
    reflow: int = 0  # > 0: reflowed from the trained run on this many of its pairs
    longer: int = 0  # > 0: the control: the trained run trained on for the compute of reflow=N
    grid: str = "uniform"  # the time grid at sampling time (canonical: parse_time_grid)

    @property
    def base(self) -> Method:
        """The entry's trained run (the reflow teacher), sampled without guidance."""
        return Method(self.prior, self.options, self.coupling, self.null_source)

    @property
    def label(self) -> str:
        """The canonical entry: options sorted, reserved keys only when not the default."""
        pairs = [f"{k}={v}" for k, v in self.options]
        pairs += [f"coupling={self.coupling}"] * (self.coupling != "independent")
        pairs += [f"null_source={self.null_source}"] * (self.null_source != "global")
        pairs += [f"cfg={self.cfg:g}"] * (self.cfg != 1.0)
        pairs += [f"reflow={self.reflow}"] * bool(self.reflow) + [f"longer={self.longer}"] * bool(self.longer)
        pairs += [f"grid={self.grid}"] * (self.grid != "uniform")
        return self.prior + (":" + ",".join(pairs) if pairs else "")

    @property
    def slug(self) -> str:
        """The training run's folder name (cfg and grid are not part of it: sampling only)."""
        return (self.prior + "".join(f"-{k}{v}" for k, v in self.options)
                + (f"-coupling_{self.coupling}" if self.coupling != "independent" else "")
                + (f"-null_source_{self.null_source}" if self.null_source != "global" else "")
                + (f"-reflow{self.reflow}" if self.reflow else "") + (f"-longer{self.longer}" if self.longer else ""))

    @property
    def key(self) -> str:
        """The measured method's name in results.json and file names: the slug, its cfg and grid."""
        return (self.slug + (f"-cfg{self.cfg:g}" if self.cfg != 1.0 else "")
                + (f"-grid_{self.grid.replace(':', '_')}" if self.grid != "uniform" else ""))

    def training(self) -> dict:
        """The train.Config fields of the method."""
        return dict(prior=self.prior, prior_options=dict(self.options), coupling=self.coupling,
                    null_source=self.null_source)


def parse_method(text: str) -> Method:
    """NAME[:key=value,...] -> Method; any mistake is a ValueError naming the entry."""
    name, _, rest = text.strip().partition(":")
    pairs = [p.strip() for p in rest.split(",") if p.strip()] if rest else []
    try:
        reserved, options = {}, []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"{pair!r} is not key=value")
            if key.strip() in reserved or key.strip() in [o.partition("=")[0].strip() for o in options]:
                raise ValueError(f"{key.strip()} is given twice")
            if key.strip() in ("coupling", "null_source", "cfg", "grid", "reflow", "longer"):
                reserved[key.strip()] = value.strip()
            else:
                options.append(pair)
        prior_options = parse_prior_options(name, options)
        coupling = reserved.get("coupling", "independent")
        if coupling not in flow.COUPLINGS:
            raise ValueError(f"coupling={coupling!r}: choose one of {', '.join(flow.COUPLINGS)}")
        null_source = reserved.get("null_source", "global")
        if null_source not in NULL_SOURCES:
            raise ValueError(f"null_source={null_source!r}: choose one of {', '.join(NULL_SOURCES)}")
        cfg = float(convert_option(reserved.get("cfg", "1.0"), 1.0, "cfg"))
        grid = parse_time_grid(reserved.get("grid", "uniform"))
        reflow, longer = (int(convert_option(reserved.get(k, "0"), 0, k)) for k in ("reflow", "longer"))
        if min(reflow, longer) < 0 or (reflow and longer):
            raise ValueError("reflow=N (pairs) or longer=N (the control for N pairs' compute) takes one N > 0, "
                             "and an entry is one or the other")
    except ValueError as err:
        raise ValueError(f"--priors {text!r}: {str(err).replace('--prior-opt ', '')}") from None
    return Method(name, tuple(sorted(prior_options.items())), coupling, null_source, cfg, grid=grid,
                  reflow=reflow, longer=longer)


FITTED_GRIDS = ("fit", "fit-class")  # grid=fit[:OBJECTIVE] pooled over the classes, fit-class per class


def parse_time_grid(text: str) -> str:
    """grid=... made canonical: "shift" -> "shift:3", "fit" -> "fit:local"; a bad one is a ValueError."""
    name, _, value = text.strip().partition(":")
    if name in FITTED_GRIDS:
        objective = value or sample.FIT_OBJECTIVES[0]
        if objective not in sample.FIT_OBJECTIVES:
            raise ValueError(f"grid={text}: objective {objective!r}, choose one of {', '.join(sample.FIT_OBJECTIVES)}")
        return f"{name}:{objective}"
    try:
        name, param = sample.parse_grid(text)
    except ValueError as err:
        raise ValueError(str(err).replace("--grid", "grid=", 1).replace(" or a fitted grid's .json file "
                                                                      "(python sample.py fit)", ", fit or fit-class")) from None
    return name if param is None else f"{name}:{param:g}"


def parse_methods(texts: list[str]) -> list[Method]:
    """Every entry parsed; the same method twice (in any spelling) is an error."""
    methods = [parse_method(text) for text in texts]
    labels = [m.label for m in methods]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"--priors names {', '.join(twice)} twice")
    if not methods:
        raise ValueError("--priors needs at least one entry")
    return methods


# ----------------------------------------------------------------------------- training

def budget_of(config: experiment.Config, args: argparse.Namespace) -> dict:
    """The budget in method.json: what every method shares; data-subset keys only when set."""
    budget = {key: getattr(config, key) for key in ("preset", "steps", "batch_size", "lr", "warmup", "ema",
                                                   "label_dropout", "checkpoints")}
    extra = {"cond": args.cond, "max_images": args.max_images, "image_size": config.image_size}
    return {**budget, **{key: value for key, value in extra.items() if value is not None}}


def method_json(method: Method, seed: int, budget: dict, reflow: experiment.Reflow | None = None) -> str:
    """What a training folder was trained for (null_source only when not the default; a reflowed
    run or its control: the pairs and fine-tuning settings too)."""
    record = {"prior": method.prior, "prior_options": dict(method.options), "coupling": method.coupling,
              "seed": seed, "budget": budget}
    if method.null_source != "global":
        record["null_source"] = method.null_source
    if method.reflow or method.longer:
        record["reflow"] = {"pairs" if method.reflow else "longer_for_pairs": method.reflow or method.longer,
                            **dataclasses.asdict(reflow or experiment.Reflow())}
    return json.dumps(record, indent=1, sort_keys=True)


def milestones(config: experiment.Config) -> list[int]:
    return [round(config.steps * (k + 1) / config.checkpoints) for k in range(config.checkpoints)]


def folder_steps(method: Method, config: experiment.Config, args: argparse.Namespace) -> list[int]:
    """The steps a training folder keeps as ckpt_STEP.pt (a reflowed run counts its own steps)."""
    reflow = args.reflow
    if method.reflow:
        return [round(reflow.steps * (k + 1) / reflow.checkpoints) for k in range(reflow.checkpoints)]
    if method.longer:
        extra = reflow.control_steps(method.longer, config.batch_size)
        return [config.steps + round(extra * (k + 1) / reflow.checkpoints) for k in range(reflow.checkpoints)]
    return milestones(config)


def compute(method: Method, config: experiment.Config, args: argparse.Namespace) -> dict:
    """What an entry cost: training images seen and network evaluations spent on reflow pairs."""
    steps = config.steps + (args.reflow.steps if method.reflow else 0)
    if method.longer:
        steps = max(folder_steps(method, config, args))
    return {"training_images": steps * config.batch_size, "pair_evaluations": method.reflow * args.reflow.nfe,
            "evaluations": 3 * steps * config.batch_size + method.reflow * args.reflow.nfe}


def plan(config: experiment.Config, args: argparse.Namespace, runs: list[tuple[Method, int]]) -> list[str]:
    """Before training: which runs are cached, partly trained or new, and a time estimate from
    training steps timed as they will run (the threads already set as train.py sets them)."""
    lines, new_steps, first = [], 0, None
    for method, seed in runs:
        run_dir = args.out / "train" / f"{method.slug}_seed{seed}"
        wanted = folder_steps(method, config, args)
        done = [s for s in wanted if (run_dir / f"ckpt_{s:07d}.pt").is_file()]
        state = "cached" if len(done) == len(wanted) else f"trained to step {max(done)}" if done else "new"
        new_steps += max(wanted) - max(done, default=config.steps if method.longer else 0)
        first = first or (method if state != "cached" else None)
        lines.append(f"  {method.slug}_seed{seed}: {state}")
    if new_steps:
        targs = argparse.Namespace(**{**vars(args), "seed": args.seeds[0]})
        seconds = experiment.training_step_seconds(config, targs, {**first.training(), **data_limits(args)})
        lines.append(f"  to train: {new_steps} steps x batch {config.batch_size}, "
                     + experiment.time_estimate(seconds, config.batch_size, new_steps, args.threads)
                     + "; the priors' fits, the classifier, the reference and the measuring come on top")
    return lines


def data_limits(args: argparse.Namespace) -> dict:
    """The train.Config fields of the data flags that are set (--cond, --max-images)."""
    return {key: getattr(args, key) for key in ("cond", "max_images") if getattr(args, key) is not None}


def train_runs(config: experiment.Config, args: argparse.Namespace, methods: list[Method], results: Results
               ) -> dict[tuple[str, int], dict[int, Path]]:
    """Every (training slug, seed) once: {(slug, seed): {step: checkpoint}}; the wall time of a
    run that trained anything is kept in results.json as time/train/SLUG_seedS, with its threads."""
    runs: dict[tuple[str, int], dict[int, Path]] = {}
    limit = data_limits(args)

    def trained(method: Method, seed: int) -> dict[int, Path]:
        if (method.slug, seed) in runs:
            return runs[(method.slug, seed)]
        teacher = trained(method.base, seed) if method.reflow or method.longer else {}
        name = f"{method.slug}_seed{seed}"
        run_dir = args.out / "train" / name
        before = all((run_dir / f"ckpt_{s:07d}.pt").is_file() for s in folder_steps(method, config, args))
        targs = argparse.Namespace(**{**vars(args), "out": args.out / "train", "seed": seed})
        begin = time.perf_counter()
        if method.reflow:  # the pairs of the trained run's final checkpoint, then a run on them
            pairs_dir = args.out / "pairs" / f"{method.base.slug}_seed{seed}_{args.reflow.solver}{args.reflow.nfe}"
            pairs_dir = pairs_dir.with_name(pairs_dir.name + f"_n{method.reflow}")
            if not before:
                timed_part(results, f"pairs/{pairs_dir.name}", lambda: experiment.make_pairs(
                    teacher[max(teacher)], pairs_dir, method.reflow, args.reflow, seed, args.device, config.sample_batch))
                begin = time.perf_counter()  # the pairs' time is their own
            runs[(method.slug, seed)] = experiment.train_reflow(config, targs, teacher[max(teacher)], pairs_dir, run_dir,
                                                                args.reflow)
        elif method.longer:
            extra = args.reflow.control_steps(method.longer, config.batch_size)
            runs[(method.slug, seed)] = experiment.train_longer(config, targs, teacher[max(teacher)], run_dir, extra,
                                                                args.reflow, {**method.training(), **limit})
        else:
            runs[(method.slug, seed)] = experiment.train_method(config, targs, name, {**method.training(), **limit})
        if not before:  # with what it ran on: the report's header says what training used
            previous = results.points.get(f"time/train/{name}", {}).get("seconds", 0.0)
            results.put(f"time/train/{name}", {"seconds": previous + time.perf_counter() - begin,
                                               "ran_on": args.threads or checks.describe_device(args.device)})
        return runs[(method.slug, seed)]

    for method in methods:
        for seed in args.seeds:
            trained(method, seed)
    return runs


def timed_part(results: Results, part: str, work, seconds: float = 0.0) -> None:
    """Run work() and add its wall time (plus `seconds` already spent) to results.json's time/PART."""
    begin = time.perf_counter()
    work()
    previous = results.points.get(f"time/{part}", {}).get("seconds", 0.0)
    results.put(f"time/{part}", {"seconds": previous + seconds + time.perf_counter() - begin})


# ----------------------------------------------------------------------------- measuring

def measure(ev: Evaluator, args: argparse.Namespace, methods: list[Method],
            runs: dict[tuple[str, int], dict[int, Path]], results: Results) -> None:
    """The floor (real held-out images); every NFE at the final checkpoint, --step-nfe at every
    measured step, the transport cost and the straightness of each run; grids (first training
    seed) at the fewest NFE and --step-nfe. Each run's time: time/measure/KEY_seedS."""
    if min(ev.config.n, ev.held_out) > ev.extractor.dim:  # else the floor's covariance is singular
        timed(results, "measure/floor", lambda: results.get("floor/test_images", ev.real_images))
    for method in methods:
        for seed in args.seeds:
            timed(results, f"measure/{method.key}_seed{seed}", lambda: measure_run(ev, args, method, seed,
                                                                                    runs[(method.slug, seed)], results))


def measure_run(ev: Evaluator, args: argparse.Namespace, method: Method, seed: int, steps: dict[int, Path],
                results: Results) -> None:
    final, run = max(steps), f"{method.slug}_seed{seed}"
    results.get(f"cost/{run}", lambda: {"transport_cost": ev.transport_cost(steps[final])})
    results.get(f"straight/{run}", lambda: ev.straightness(steps[final]))
    for step, ckpt in steps.items():
        for nfe in args.nfes if step == final else [args.step_nfe]:
            if not spendable(nfe, args.solver, method.cfg):
                continue
            grid = (args.out / "grids" / f"{method.key}_seed{seed}_nfe{nfe}.png"
                    if step == final and seed == args.seeds[0] and nfe in grid_nfes(args) else None)
            results.get(point_key(method, seed, step, args.solver, nfe),
                        lambda: ev.point(ckpt, args.solver, nfe, method.cfg, grid=grid,
                                         time_grid=time_grid(ev, args, method, seed, step, nfe, ckpt)))


def time_grid(ev: Evaluator, args: argparse.Namespace, method: Method, seed: int, step: int, nfe: int, ckpt: Path):
    """What sample.generate is given as its grid: the name, or the times of the fitted grid (fitted
    here once, then read from OUT/fitted_grids/, refused if it was fitted for another checkpoint)."""
    name, _, objective = method.grid.partition(":")
    if name not in FITTED_GRIDS:
        return method.grid
    path = args.out / "fitted_grids" / f"{method.key}_seed{seed}_step{step}_{args.solver}_nfe{nfe}.json"
    sha256 = checks.file_sha256(ckpt)
    if not path.is_file():
        model, prior, _ = ev.load(ckpt)
        record = sample.fit_grid(model, prior, sha256, nfe, args.solver, method.cfg, objective,
                                 per_class=name == "fit-class", device=ev.device, progress=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs.write_text(path, json.dumps(record, indent=1) + "\n")
    return sample.load_fitted_grid(path, sha256, nfe, args.solver, method.cfg)


def spendable(nfe: int, solver: str, cfg: float) -> bool:
    try:
        sample.num_steps(nfe, solver, 1 if cfg == 1.0 else 2)
        return True
    except ValueError:
        return False


def grid_nfes(args: argparse.Namespace) -> tuple[int, int]:
    return min(args.nfes), args.step_nfe


def point_key(method: Method, seed: int, step: int, solver: str, nfe: int) -> str:
    """A point's key within its measurement (measurement_key): what was sampled, and how."""
    return f"point/{method.key}_seed{seed}/step{step}/{solver}/{nfe}"


REFERENCE = ("dataset", "features", "clf_steps", "clf_width", "ref_images")  # what OUT/clf.pt and ref_*.npz are


def measurement(config: experiment.Config, sample_seed: int) -> dict:
    """Everything a measured point depends on beyond point_key's method, seed, step, solver and
    NFE: the samples per point, the starting noise, the straightness samples, and the reference.
    Points measured otherwise are kept apart in results.json (measurement_key), so a change here
    measures again over the cached training runs. A new measurement setting is one entry here
    (and its value for the points of files that predate it, in legacy_measurement)."""
    return {"n": config.n, "sample_seed": sample_seed, "straight_n": config.straight_n,
            "dataset": config.dataset, "features": config.features, "clf_steps": config.clf_steps,
            "clf_width": config.clf_width, "ref_images": config.ref_images}


def measurement_key(measured: dict) -> str:
    """Where results.json keeps the points of one measurement: measured/n=1000,sample_seed=0,.../KEY."""
    return experiment.MEASURED + ",".join(f"{key}={measured[key]}" for key in sorted(measured))


def measured_results(out: Path, measured: dict) -> Results:
    """OUT/results.json seen as the points of one measurement (a file of an earlier version: its
    unscoped points when they were measured so)."""
    legacy = legacy_measurement(Results(out / "results.json").points)
    scope = measurement_key(measured)
    return Results(out / "results.json", scope, legacy is not None and measurement_key(legacy) == scope)


def measured_points(out: Path, config: experiment.Config, sample_seed: int = 0) -> dict:
    """The points of a budget's measurement in OUT/results.json, as compare.run sees them."""
    return measured_results(out, measurement(config, sample_seed)).points


def legacy_measurement(stored: dict) -> dict | None:
    """A results.json of an earlier version (before 2026-12-08) kept one measurement's points
    unscoped, its settings in "config"; None for a newer file. A setting added to measurement()
    since: its value for those points goes here."""
    return {**stored["config"]} if isinstance(stored.get("config"), dict) else None


# ----------------------------------------------------------------------------- main

def build_parser() -> checks.Parser:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    arg = parser.add_argument
    arg("--priors", nargs="+", required=True, help="entries NAME[:key=value,...]; prior names: "
        + ", ".join(priors.PRIORS))
    arg("--baseline", default=None, help="the entry the others are compared with (default: the first)")
    arg("--dataset", default="shapes")
    arg("--data-dir", default=None)
    arg("--cond", default=None, help="which condition the dataset gives (shapes: class or attributes)")
    arg("--max-images", type=int, default=None, help="train on the first N images only")
    arg("--image-size", type=int, default=None, help="shapes and folder only")
    arg("--preset", default=None, help="network size; default tiny on a CPU, small on a GPU")
    arg("--steps", type=int, default=2000)
    arg("--batch-size", type=int, default=32)
    arg("--lr", type=float, default=1e-3)
    arg("--warmup", type=int, default=100)
    arg("--ema", type=float, default=0.999)
    arg("--label-dropout", type=float, default=0.1)
    arg("--checkpoints", type=int, default=4, help="FD at --step-nfe at this many evenly spaced steps")
    arg("--seeds", default="0", help="comma-separated training seeds")
    arg("--n", type=int, default=1000, help="samples per measured point")
    arg("--nfe", default="1,2,4,8,16", help="comma-separated NFE budgets")
    arg("--step-nfe", type=int, default=None, help="the NFE of FD against steps (default: 8 or the largest below)")
    arg("--solver", default="euler", choices=sorted(sample.SOLVERS))
    arg("--sample-seed", type=checks.seed_int, default=0,
        help="seed of the per-image starting noise (the same for all)")
    arg("--features", default="auto", choices=["auto", "inception", "clf"])
    arg("--clf-steps", type=int, default=300, help="training steps of the offline classifier (features clf)")
    arg("--clf-width", type=int, default=32)
    arg("--ref-images", type=int, default=10_000, help="training images in the reference statistics")
    arg("--straight-n", type=int, default=100, help="samples of the straightness measure")
    arg("--reflow-nfe", type=int, default=32, help="reflow=N entries: the teacher's NFE per pair")
    arg("--reflow-solver", default="midpoint", choices=sorted(sample.SOLVERS), help="reflow=N: the teacher's solver")
    arg("--reflow-steps", type=int, default=1000, help="reflow=N: fine-tuning steps on the pairs (from the EMA)")
    arg("--reflow-lr", type=float, default=2e-4, help="reflow=N and longer=N: their learning rate")
    arg("--reflow-t-dist", default="uniform", choices=list(flow.T_DISTRIBUTIONS), help="reflow=N: t in fine-tuning")
    arg("--reflow-checkpoints", type=int, default=4, help="reflow=N and longer=N: measured steps of the fine-tuning")
    arg("--compile", action="store_true", help="torch.compile the networks in training")
    arg("--device", default=None, help="default: cuda if available, else cpu")
    arg("--out", default=None, help="default: runs/compare_DATASET")
    return parser


def int_list(text: str, flag: str) -> list[int]:
    try:
        found = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not found or len(set(found)) != len(found):
        raise ValueError(f"{flag} needs distinct integers, got {text!r}")
    return found


def setup(argv: list[str], base: experiment.Config | None = None
          ) -> tuple[argparse.Namespace, experiment.Config, list[Method]]:
    """The flags checked, all before any training; base: where the settings without a flag come
    from (a preset's sampling batch, grid size, straightness NFE, ...), default experiment.Config's."""
    args = build_parser().parse_args(argv)
    args.command = "python bench/compare.py " + shlex.join(argv)
    methods = parse_methods(args.priors)
    labels = [m.label for m in methods]
    args.baseline = parse_method(args.baseline).label if args.baseline else labels[0]
    if args.baseline not in labels:
        raise ValueError(f"--baseline {args.baseline} is not one of --priors ({', '.join(labels)})")
    args.seeds, args.nfes = int_list(args.seeds, "--seeds"), sorted(int_list(args.nfe, "--nfe"))
    checks.check_at_least(min(args.nfes), 1, "--nfe")
    for flag in ("steps", "batch_size", "checkpoints", "n", "straight_n", "clf_steps", "clf_width", "ref_images"):
        checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    if args.checkpoints > args.steps:
        raise ValueError(f"--checkpoints {args.checkpoints} is more than --steps {args.steps}")
    for flag in ("reflow_nfe", "reflow_steps", "reflow_checkpoints"):
        checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    checks.check_finite(args.reflow_lr, "--reflow-lr")
    sample.num_steps(args.reflow_nfe, args.reflow_solver)  # a budget the teacher's solver cannot spend fails now
    args.reflow = experiment.Reflow(args.reflow_nfe, args.reflow_solver, args.reflow_steps, args.reflow_lr,
                                    args.reflow_t_dist, min(args.reflow_checkpoints, args.reflow_steps))
    args.step_nfe = args.step_nfe or max([n for n in args.nfes if n <= 8] or args.nfes[:1])
    if args.step_nfe not in args.nfes:
        raise ValueError(f"--step-nfe {args.step_nfe} is not one of --nfe {args.nfe}")
    for nfe in args.nfes:
        sample.num_steps(nfe, args.solver)  # a bad budget fails now
    preset = args.preset or ("small" if checks.resolve_device(args.device).type == "cuda" else "tiny")
    fields = dict(dataset=args.dataset, data_dir=args.data_dir, preset=preset, steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, ema=args.ema, checkpoints=args.checkpoints,
                  n=args.n, label_dropout=args.label_dropout, euler_nfes=tuple(args.nfes), straight_n=args.straight_n,
                  features=args.features, clf_steps=args.clf_steps, clf_width=args.clf_width,
                  ref_images=args.ref_images, image_size=args.image_size)
    config = dataclasses.replace(base, **fields) if base else experiment.Config(**fields)
    args.out = Path(args.out or ROOT / "runs" / f"compare_{args.dataset}")
    experiment.check_measurable(config, args)
    return args, config, methods


@dataclasses.dataclass
class Comparison:
    """A finished run: what the presets (bench/priors.py, bench/reproduce.py) build on."""
    args: argparse.Namespace
    config: experiment.Config
    methods: list[Method]
    runs: dict[tuple[str, int], dict[int, Path]]  # (slug, training seed) -> {step: checkpoint}
    evaluator: Evaluator
    results: Results
    terminal: list[str]  # the FD table and the verdicts

    def final(self, method: Method, seed: int) -> Path:
        steps = self.runs[(method.slug, seed)]
        return steps[max(steps)]


def run(argv: list[str], base: experiment.Config | None = None) -> Comparison:
    """Check everything, train what is missing, measure what is missing, write the report (base:
    as in setup)."""
    args, config, methods = setup(argv, base)
    args.threads = checks.set_cpu_threads(checks.resolve_device(args.device))  # as train.py will: the estimate too
    budget = budget_of(config, args)
    # every training folder, a reflowed entry's trained run (its teacher) before it
    trains = {m.slug: m for entry in methods for m in ([entry.base] if entry.reflow or entry.longer else []) + [entry]}
    runs = [(m, seed) for m in trains.values() for seed in args.seeds]
    for method, seed in runs:  # every folder checked before any training
        run_dir = args.out / "train" / f"{method.slug}_seed{seed}"
        if (run_dir / "method.json").is_file():
            experiment.claim_run(run_dir, method_json(method, seed, budget, args.reflow))
    shared = Results(args.out / "results.json")  # training times, the reference's settings
    made = shared.points.get("reference") or legacy_measurement(shared.points) or {}
    experiment.check_reference(args.out, {key: made[key] for key in REFERENCE if key in made},
                               {key: measurement(config, args.sample_seed)[key] for key in REFERENCE})
    print("Training runs:", *plan(config, args, runs), sep="\n")
    for method, seed in runs:
        experiment.claim_run(args.out / "train" / f"{method.slug}_seed{seed}", method_json(method, seed, budget, args.reflow))
    args.compute = {m.label: compute(m, config, args) for m in methods}
    trained = train_runs(config, args, methods, shared)
    ev = Evaluator(config, argparse.Namespace(**{**vars(args), "seed": args.sample_seed}))
    for part, seconds in ev.built.items():
        shared.put(f"time/{part}", {"seconds": seconds})
    measured = measurement(config, args.sample_seed)
    if ev.built or "reference" not in shared.points:
        shared.put("reference", {key: measured[key] for key in REFERENCE})
    results = measured_results(args.out, measured)
    measure(ev, args, methods, trained, results)
    every_step = sorted({step for method in methods for seed in args.seeds for step in trained[(method.slug, seed)]})
    lines, terminal = report(args, config, methods, ev, results.points, shared.points, every_step, point_key,
                             grid_nfes(args))
    outputs.write_text(args.out / "report.md", "\n".join(lines) + "\n")
    return Comparison(args, config, methods, trained, ev, results, terminal)


def budget_flags(config: experiment.Config) -> list[str]:
    """An experiment.Config as this script's flags: how the presets pass their budgets."""
    flags = {"--dataset": config.dataset, "--data-dir": config.data_dir, "--preset": config.preset,
             "--steps": config.steps, "--batch-size": config.batch_size, "--lr": config.lr, "--warmup": config.warmup,
             "--ema": config.ema, "--label-dropout": config.label_dropout, "--checkpoints": config.checkpoints,
             "--n": config.n, "--nfe": ",".join(map(str, config.euler_nfes)), "--features": config.features,
             "--clf-steps": config.clf_steps, "--clf-width": config.clf_width, "--ref-images": config.ref_images,
             "--straight-n": config.straight_n, "--image-size": config.image_size}
    return [text for flag, value in flags.items() if value is not None for text in (flag, str(value))]


def main(argv: list[str] | None = None) -> Path:
    done = run(sys.argv[1:] if argv is None else argv)
    out = done.args.out
    print("", *done.terminal, "", f"wrote {out / 'report.md'}, {out / 'results.csv'} and the plots", sep="\n")
    return out / "report.md"


if __name__ == "__main__":
    checks.run_main(main)
