"""Is my prior better than the Gaussian, the class prior and kmeans, at which NFE, and beyond the noise?

One command for any set of priors, each trained with the same budget from each training seed,
then measured on the same per-image sampling seeds:

    python bench/compare.py --dataset mnist --data-dir DIR \\
        --priors gaussian class kmeans:k=16 gmm:k=16 mine:rank=8 --steps 2000 --seeds 0,1 --nfe 1,2,4,8,16

An entry is NAME[:key=value[,key=value...]]: NAME from prior.PRIORS (a fork's own prior too),
keys its constructor's options, typed by their defaults, plus three reserved keys:

    coupling=independent|ot|class_ot   how x0 and x1 are paired in training (flow.COUPLINGS)
    null_source=global|class           where a dropped label's x0 comes from in training
    cfg=W                              guidance weight at sampling time: the same trained run as
                                       the entry without it (a guided step costs 2 NFE: odd NFE
                                       are skipped for it)

Training is cached by its whole configuration: OUT/train/SLUG_seedS/ with method.json (what
was trained: prior, options, coupling, seed, budget) and ckpt_STEP.pt at each measured step
(experiment.train_method: segments, so a killed run continues and a re-run trains nothing).
SLUG is the prior name, each option sorted by key as -KEYVALUE, then -coupling_NAME and
-null_source_NAME when not the default: kmeans:k=16 -> kmeans-k16, gaussian:coupling=ot ->
gaussian-coupling_ot. A folder whose method.json differs from this run's is refused (another
--out). Every measured point lands in OUT/results.json (experiment.Results), so measuring
continues too.

Measured, per method, training seed and NFE at the final checkpoint: FD (FID with the Inception
weights when found, else FD-clf, the features of an offline classifier trained in OUT/clf.pt),
KID, conditional accuracy (attribute errors for vector conditions), the training coupling's
transport cost and the path straightness (experiment.path_straightness); FD at --step-nfe at
every measured training step. Then over the training seeds: the mean, the spread (sample std,
ddof 1) and min/max, and the verdicts against --baseline (see `verdict` and `step_verdict`).

Writes OUT/report.md, OUT/results.csv (one row per method x seed x step x NFE), OUT/fd_vs_nfe.png,
OUT/fd_vs_step.png and sample grids in OUT/grids/.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from plumbing import checks, data, outputs  # noqa: E402
from plumbing.config import convert_option, parse_prior_options  # noqa: E402
import experiment  # noqa: E402
import flow  # noqa: E402
import prior as priors  # noqa: E402
import sample  # noqa: E402
import sweep  # noqa: E402
import unet  # noqa: E402
from experiment import Evaluator, Results, table, timed  # noqa: E402

NULL_SOURCES = ("global", "class")
ATTRIBUTES = ("colour_error", "position_error_px", "size_rank_correlation")


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

    @property
    def label(self) -> str:
        """The canonical entry: options sorted, reserved keys only when not the default."""
        pairs = [f"{k}={v}" for k, v in self.options]
        pairs += [f"coupling={self.coupling}"] * (self.coupling != "independent")
        pairs += [f"null_source={self.null_source}"] * (self.null_source != "global")
        pairs += [f"cfg={self.cfg:g}"] * (self.cfg != 1.0)
        return self.prior + (":" + ",".join(pairs) if pairs else "")

    @property
    def slug(self) -> str:
        """The training run's folder name (cfg is not part of it: sampling only)."""
        return (self.prior + "".join(f"-{k}{v}" for k, v in self.options)
                + (f"-coupling_{self.coupling}" if self.coupling != "independent" else "")
                + (f"-null_source_{self.null_source}" if self.null_source != "global" else ""))

    @property
    def key(self) -> str:
        """The measured method's name in results.json and file names: the slug, and its cfg."""
        return self.slug + (f"-cfg{self.cfg:g}" if self.cfg != 1.0 else "")

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
            if key.strip() in ("coupling", "null_source", "cfg"):
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
    except ValueError as err:
        raise ValueError(f"--priors {text!r}: {str(err).replace('--prior-opt ', '')}") from None
    return Method(name, tuple(sorted(prior_options.items())), coupling, null_source, cfg)


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


# ----------------------------------------------------------------------------- the verdicts

def verdict(label: str, base: str, values: list[float], base_values: list[float]) -> str:
    """The method's FD against the baseline's over training seeds (lower is better).

    With at least two seeds on each side, the spread of each is its sample std (ddof 1), and the
    method is "below" (or "above") the baseline by more than the seed spread when the difference
    of the means is larger than the sum of the two spreads, else "within the seed spread". With one
    seed on either side there is no spread to compare: only the difference is reported."""
    mean, base_mean = float(np.mean(values)), float(np.mean(base_values))
    if min(len(values), len(base_values)) < 2:
        return (f"{label} vs {base}: one seed: no spread to compare ({mean:.3g} vs {base_mean:.3g}, "
                f"difference {mean - base_mean:+.3g})")
    spread, base_spread = float(np.std(values, ddof=1)), float(np.std(base_values, ddof=1))
    numbers = f"({mean:.3g} vs {base_mean:.3g}, spread {spread:.2g}/{base_spread:.2g})"
    if abs(mean - base_mean) <= spread + base_spread:
        return f"{label} within the seed spread of {base} {numbers}"
    side = "below" if mean < base_mean else "above"
    return f"{label} {side} {base} by more than the seed spread {numbers}"


def step_verdict(label: str, base: str, ratios: dict[int, float], tolerance: float = 0.1) -> str:
    """Does the lead at the final step hold? ratios: step -> mean FD of the method / the baseline's.
    Ahead (ratio < 1) or behind at the final step; over the whole run and over its second half
    (the steps from the middle one on), the lead grew when the final ratio is below the earlier
    one by more than `tolerance` of it (10%: on MNIST the ratio moved by up to 5% between
    neighbouring measured steps of one run, bench/RESULTS.md), shrank when above it by more,
    else held: a lead that shrinks early and then holds is told apart from one that keeps
    shrinking."""
    steps = sorted(ratios)
    trail = ", ".join(f"{ratios[s]:.2f}" for s in steps)
    where = f"ratio {label} / {base} at steps {', '.join(map(str, steps))}: {trail}"
    last = ratios[steps[-1]]
    if last >= 1:
        return f"{label} not ahead of {base} at the final step ({where})"

    def trend(since: int) -> str:
        earlier = ratios[since]
        return "grew" if last < earlier * (1 - tolerance) else "shrank" if last > earlier * (1 + tolerance) else "held"

    middle = steps[(len(steps) - 1) // 2]
    return (f"{label} ahead of {base} at the final step; the lead {trend(steps[0])} since step {steps[0]} and "
            f"{trend(middle)} since step {middle} ({where})")


def spread_cell(values: list[float]) -> str:
    """mean ± std [min, max] over training seeds (only the mean for one seed)."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.mean(values):.3g} ± {np.std(values, ddof=1):.2g} [{min(values):.3g}, {max(values):.3g}]"


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
        rate = images_per_second(config, args)
        lines.append(f"  to train: {new_steps} steps x batch {config.batch_size}, about "
                     f"{new_steps * config.batch_size / rate / 60:.1f} min at {rate:.0f} img/s "
                     "(3 timed network steps; the prior's fit and the measuring come on top)")
    return lines


def images_per_second(config: experiment.Config, args: argparse.Namespace, steps: int = 3) -> float:
    """Forward + backward of the preset's network on one batch, timed over a few steps."""
    train_set = data.load_dataset(args.dataset, args.data_dir, "train", **experiment.dataset_options(config, args))
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
                    grid = (args.out / "grids" / f"{method.key}_nfe{nfe}.png"
                            if step == final and seed == args.seeds[0] and nfe in grid_nfes(args) else None)
                    results.get(point_key(method, seed, step, args.solver, nfe),
                                lambda: ev.point(ckpt, args.solver, nfe, method.cfg, grid=grid))


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


# ----------------------------------------------------------------------------- the report

def collect(args: argparse.Namespace, config: experiment.Config, methods: list[Method], points: dict
            ) -> list[dict]:
    """One row per method x seed x step x NFE with every metric (what results.csv holds)."""
    rows = []
    for method in methods:
        for seed in args.seeds:
            run = f"{method.slug}_seed{seed}"
            for step in milestones(config):
                for nfe in args.nfes:
                    point = points.get(point_key(method, seed, step, args.solver, nfe))
                    if point is None:
                        continue
                    final = step == config.steps
                    extras = {"transport_cost": points.get(f"cost/{run}", {}).get("transport_cost"),
                              **{k: v for k, v in points.get(f"straight/{run}", {}).items() if k != "n"}} if final else {}
                    rows.append({"method": method.label, "prior": method.prior,
                                 "prior_options": json.dumps(dict(method.options), sort_keys=True),
                                 "coupling": method.coupling, "null_source": method.null_source, "cfg": method.cfg,
                                 "seed": seed, "step": step, "solver": args.solver, "nfe": nfe,
                                 **{k: v for k, v in point.items() if k not in ("solver", "nfe", "cfg")}, **extras})
    return rows


def values(rows: list[dict], label: str, field: str, **where) -> list[float]:
    return [r[field] for r in rows if r["method"] == label and r.get(field) is not None
            and all(r[k] == v for k, v in where.items())]


def write_csv(rows: list[dict], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    outputs.write_text(path, text.getvalue())


def report(args: argparse.Namespace, config: experiment.Config, methods: list[Method], metric: str,
           points: dict) -> tuple[list[str], list[str]]:
    """(the report's lines, the lines printed in the terminal: the FD table and the verdicts)."""
    rows = collect(args, config, methods, points)
    write_csv(rows, args.out / "results.csv")
    labels, base, final = [m.label for m in methods], args.baseline, config.steps
    name = metric + (" (features of an offline classifier trained on the data, not FID)" if metric == "FD-clf" else "")
    fd = table(["method", *[f"NFE {n}" for n in args.nfes]],
               [[label, *[spread_cell(values(rows, label, "value", step=final, nfe=n)) for n in args.nfes]]
                for label in labels])
    verdicts = []
    for nfe in args.nfes:
        base_values = values(rows, base, "value", step=final, nfe=nfe)
        for label in labels:
            mine = values(rows, label, "value", step=final, nfe=nfe)
            if label != base and mine and base_values:
                verdicts.append(f"- NFE {nfe}: {verdict(label, base, mine, base_values)}")
    steps = milestones(config)
    step_means = {label: {s: float(np.mean(v)) for s in steps
                          if (v := values(rows, label, "value", step=s, nfe=args.step_nfe))} for label in labels}
    step_lines = [f"- {step_verdict(label, base, {s: step_means[label][s] / step_means[base][s] for s in steps if s in step_means[label] and s in step_means[base]})}"
                  for label in labels if label != base and set(step_means[label]) & set(step_means[base])]
    terminal = [f"{metric} at step {final} (mean ± std [min, max] over training seeds {args.seeds}):", *fd, "",
                f"Against {base} (lower is better):", *verdicts, *step_lines]

    vector = any(r.get("colour_error") is not None for r in rows)
    quality = ATTRIBUTES if vector else ("accuracy",)
    lines = [f"# Prior comparison: `{args.command}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {checks.describe_device(checks.resolve_device(args.device))}, "
             f"torch {torch.__version__}. Dataset {args.dataset}; preset {config.preset}, {config.steps} steps at "
             f"batch {config.batch_size}, lr {config.lr:g} (warm-up {config.warmup}), EMA {config.ema}, label dropout "
             f"{config.label_dropout}, the same for every method; training seeds {args.seeds}. {config.n} samples per "
             f"point ({'held-out condition vectors' if vector else 'class-balanced'}, sampling seed "
             f"{args.sample_seed}: the same starting noise for every method); solver {args.solver}; metric {name}.",
             "", "Wall time: " + ", ".join(f"{k.removeprefix('time/')} {v['seconds'] / 60:.1f} min"
                                           for k, v in sorted(points.items()) if k.startswith("time/")) + ".", "",
             f"## {metric} against NFE at the final step (lower is better)", "", *fd, "",
             "## Verdicts", "", "Rule: with two or more training seeds per method, a method is below (better) or "
             f"above the baseline {base} when the difference of the means exceeds the sum of the two sample std's "
             "over training seeds; else within the seed spread. With one seed there is no spread to compare.", "",
             *verdicts, "", f"FD at NFE {args.step_nfe} against training steps, as the ratio to {base}:", "",
             *step_lines, ""]
    lines += [f"## {', '.join(quality)} at the final step (mean over seeds)", ""]
    lines += table(["method", "metric", *[f"NFE {n}" for n in args.nfes]],
                   [[label, field, *[spread_cell(values(rows, label, field, step=final, nfe=n)) for n in args.nfes]]
                    for label in labels for field in quality])
    lines += ["", "## Paths at the final step", "", "transport cost E‖x1 − x0‖² of the training coupling (summed "
              f"over pixels); from a {config.straight_nfe}-NFE midpoint solve of {config.straight_n} samples, per "
              "dimension: endpoint gap E‖x(1) − (x0 + v(x0, 0))‖²/D, straightness E∫‖(x(1) − x0) − v(x(t), t)‖² dt/D "
              "(0 when straight), chord E‖x(1) − x0‖²/D.", ""]
    first_nfe = args.nfes[0]
    lines += table(["method", "transport cost", "endpoint gap", "straightness", "chord"],
                   [[label, *[spread_cell(values(rows, label, f, step=final, nfe=first_nfe))
                              for f in ("transport_cost", "endpoint_gap", "straightness", "chord")]]
                    for label in labels])
    lines += ["", f"## {metric} at NFE {args.step_nfe} against training steps (mean over seeds)", ""]
    lines += table(["method", *[f"step {s}" for s in steps]],
                   [[label, *[spread_cell(values(rows, label, "value", step=s, nfe=args.step_nfe)) for s in steps]]
                    for label in labels])
    sweep.plot_curves({label: [(n, float(np.mean(v))) for n in args.nfes
                               if (v := values(rows, label, "value", step=final, nfe=n))] for label in labels},
                      args.out / "fd_vs_nfe.png", metric, f"{args.dataset}, {args.solver}", log_y=True)
    sweep.plot_curves({label: sorted(curve.items()) for label, curve in step_means.items()},
                      args.out / "fd_vs_step.png", f"{metric} at NFE {args.step_nfe}", args.dataset,
                      "training step (log scale)", log_y=True)
    lines += ["", "![FD against NFE](fd_vs_nfe.png)", "", "![FD against training steps](fd_vs_step.png)", "",
              f"## Samples at NFE {' and '.join(map(str, grid_nfes(args)))} (training seed {args.seeds[0]}; one row per "
              "class, or the first held-out conditions in order)", ""]
    few, more = grid_nfes(args)
    for method in methods:
        left, right = (args.out / "grids" / f"{method.key}_nfe{n}.png" for n in (few, more))
        if left.is_file() and right.is_file():
            experiment.side_by_side(left, right, args.out / "grids" / f"{method.key}.png",
                                    (f"{method.label}, NFE {few}", f"{method.label}, NFE {more}"))
            lines += [f"![{method.label}, NFE {few} and {more}](grids/{method.key}.png)", ""]
    return lines, terminal


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
    lines, terminal = report(args, config, methods, ev.metric, results.points)
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
