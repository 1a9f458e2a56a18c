"""Is my prior better than the Gaussian, the class prior and kmeans, at which NFE, and beyond the noise?

One command for any set of priors, each trained with the same budget from each training seed,
then measured on the same per-image sampling seeds:

    python bench/compare.py --dataset mnist --data-dir DIR \\
        --priors gaussian class kmeans:k=16 gmm:k=16 mine:rank=8 --steps 2000 --seeds 0,1 --nfe 1,2,4,8,16

An entry is NAME[:key=value[,key=value...]]: NAME from prior.PRIORS (a fork's own prior too),
keys its constructor's options, typed by their defaults, plus four reserved keys:

    coupling=independent|ot|class_ot   how x0 and x1 are paired in training (flow.COUPLINGS)
    null_source=global|class           where a dropped label's x0 comes from in training
    cfg=W                              guidance weight at sampling time: the same trained run as
                                       the entry without it (a guided step costs 2 NFE: odd NFE
                                       are skipped for it)
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
continues too. Runs with other --priors may share one --out at the same time (one per core or
GPU): each adds its points to results.json, and train.py's folder lock refuses one run twice.

Measured, per method, training seed and NFE at the final checkpoint: FD (FID with the Inception
weights when found, else FD-clf, the features of an offline classifier trained in OUT/clf.pt),
KID, conditional accuracy (attribute errors for vector conditions), the training coupling's
transport cost and the path straightness (experiment.path_straightness); FD at --step-nfe at
every measured training step. Then over the training seeds: the mean, the spread (sample std,
ddof 1) and min/max, and the verdicts against --baseline (compare_report.py: `verdict` and `step_verdict`).

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
from plumbing import checks, data, outputs  # noqa: E402
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
    grid: str = "uniform"  # the time grid at sampling time (canonical: parse_time_grid)

    @property
    def label(self) -> str:
        """The canonical entry: options sorted, reserved keys only when not the default."""
        pairs = [f"{k}={v}" for k, v in self.options]
        pairs += [f"coupling={self.coupling}"] * (self.coupling != "independent")
        pairs += [f"null_source={self.null_source}"] * (self.null_source != "global")
        pairs += [f"cfg={self.cfg:g}"] * (self.cfg != 1.0)
        pairs += [f"grid={self.grid}"] * (self.grid != "uniform")
        return self.prior + (":" + ",".join(pairs) if pairs else "")

    @property
    def slug(self) -> str:
        """The training run's folder name (cfg and grid are not part of it: sampling only)."""
        return (self.prior + "".join(f"-{k}{v}" for k, v in self.options)
                + (f"-coupling_{self.coupling}" if self.coupling != "independent" else "")
                + (f"-null_source_{self.null_source}" if self.null_source != "global" else ""))

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
            if key.strip() in ("coupling", "null_source", "cfg", "grid"):
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
    except ValueError as err:
        raise ValueError(f"--priors {text!r}: {str(err).replace('--prior-opt ', '')}") from None
    return Method(name, tuple(sorted(prior_options.items())), coupling, null_source, cfg, grid)


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


def method_json(method: Method, seed: int, budget: dict) -> str:
    """What a training folder was trained for (null_source only when not the default)."""
    record = {"prior": method.prior, "prior_options": dict(method.options), "coupling": method.coupling,
              "seed": seed, "budget": budget}
    if method.null_source != "global":
        record["null_source"] = method.null_source
    return json.dumps(record, indent=1, sort_keys=True)


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


def milestones(config: experiment.Config) -> list[int]:
    return [round(config.steps * (k + 1) / config.checkpoints) for k in range(config.checkpoints)]


def plan(config: experiment.Config, args: argparse.Namespace, runs: list[tuple[Method, int]]) -> list[str]:
    """Before training: which runs are cached, partly trained or new, and a time estimate."""
    lines, new_steps = [], 0
    for method, seed in runs:
        run_dir = args.out / "train" / f"{method.slug}_seed{seed}"
        done = [s for s in milestones(config) if (run_dir / f"ckpt_{s:07d}.pt").is_file()]
        state = "cached" if len(done) == config.checkpoints else f"trained to step {max(done)}" if done else "new"
        new_steps += config.steps - max(done, default=0)
        lines.append(f"  {method.slug}_seed{seed}: {state}")
    if new_steps:
        rate = experiment.images_per_second(config, args)
        lines.append(f"  to train: {new_steps} steps x batch {config.batch_size}, about "
                     f"{new_steps * config.batch_size / rate / 60:.1f} min at {rate:.0f} img/s "
                     "(3 timed network steps; the prior's fit and the measuring come on top)")
    return lines


def train_runs(config: experiment.Config, args: argparse.Namespace, methods: list[Method], results: Results
               ) -> dict[tuple[str, int], dict[int, Path]]:
    """Every (training slug, seed) once: {(slug, seed): {step: checkpoint}}; the wall time of a
    run that trained anything is kept in results.json as time/train/SLUG_seedS."""
    runs: dict[tuple[str, int], dict[int, Path]] = {}
    limit = {key: getattr(args, key) for key in ("cond", "max_images") if getattr(args, key) is not None}
    for method in methods:
        for seed in args.seeds:
            if (method.slug, seed) in runs:
                continue
            name = f"{method.slug}_seed{seed}"
            before = all((args.out / "train" / name / f"ckpt_{s:07d}.pt").is_file() for s in milestones(config))
            targs = argparse.Namespace(**{**vars(args), "out": args.out / "train", "seed": seed})
            begin = time.perf_counter()
            runs[(method.slug, seed)] = experiment.train_method(config, targs, name, {**method.training(), **limit})
            if not before:
                previous = results.points.get(f"time/train/{name}", {}).get("seconds", 0.0)
                results.put(f"time/train/{name}", {"seconds": previous + time.perf_counter() - begin})
    return runs


# ----------------------------------------------------------------------------- measuring

def measure(ev: Evaluator, args: argparse.Namespace, methods: list[Method],
            runs: dict[tuple[str, int], dict[int, Path]], results: Results) -> None:
    """Every NFE at the final checkpoint, --step-nfe at every measured step, the transport cost
    and the straightness of each run; grids (first training seed) at the fewest NFE and --step-nfe."""
    for method in methods:
        for seed in args.seeds:
            steps = runs[(method.slug, seed)]
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
    sha256 = sample.checkpoint_sha256(ckpt)
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
    return f"point/{method.key}_seed{seed}/step{step}/{solver}/{nfe}"


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
    arg("--sample-seed", type=int, default=0, help="seed of the per-image starting noise (the same for all)")
    arg("--features", default="auto", choices=["auto", "inception", "clf"])
    arg("--clf-steps", type=int, default=300, help="training steps of the offline classifier (features clf)")
    arg("--clf-width", type=int, default=32)
    arg("--ref-images", type=int, default=10_000, help="training images in the reference statistics")
    arg("--straight-n", type=int, default=100, help="samples of the straightness measure")
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
    for flag in ("steps", "batch_size", "checkpoints", "n", "straight_n"):
        checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    if args.checkpoints > args.steps:
        raise ValueError(f"--checkpoints {args.checkpoints} is more than --steps {args.steps}")
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
    data.load_dataset(args.dataset, args.data_dir, "train")  # a missing dataset fails now, with its message
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
    budget = budget_of(config, args)
    runs = [(m, seed) for m in {m.slug: m for m in methods}.values() for seed in args.seeds]
    for method, seed in runs:  # every folder checked before any training
        run_dir = args.out / "train" / f"{method.slug}_seed{seed}"
        if (run_dir / "method.json").is_file():
            claim_run(run_dir, method_json(method, seed, budget))
    print("Training runs:", *plan(config, args, runs), sep="\n")
    for method, seed in runs:
        claim_run(args.out / "train" / f"{method.slug}_seed{seed}", method_json(method, seed, budget))
    results = Results(args.out / "results.json")
    measured = json.loads(json.dumps({"n": config.n, "sample_seed": args.sample_seed, "features": config.features,
                                      "clf_steps": config.clf_steps, "clf_width": config.clf_width,
                                      "ref_images": config.ref_images, "straight_n": config.straight_n,
                                      "dataset": args.dataset}))
    if results.get("config", lambda: measured) != measured:
        changed = sorted(k for k in measured if results.points["config"].get(k) != measured[k])
        raise ValueError(f"{args.out / 'results.json'} holds points measured otherwise ({', '.join(changed)} "
                         "differ): use another --out")
    trained = train_runs(config, args, methods, results)
    ev = Evaluator(config, argparse.Namespace(**{**vars(args), "seed": args.sample_seed}))
    timed(results, "measure", lambda: measure(ev, args, methods, trained, results))
    lines, terminal = report(args, config, methods, ev.metric, results.points, milestones(config), point_key,
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
