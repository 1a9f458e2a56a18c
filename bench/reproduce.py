"""Reproduce the paper's comparison with equal budgets, and answer its reviewers' questions.

Methods (one training run each; same preset, steps, batch, learning rate, EMA and seed):

    CondOT              gaussian prior, independent pairs      (the paper's baseline)
    BatchOT             gaussian prior, minibatch OT pairs     (ignores the class)
    class prior         N(mu_c, sigma^2 I), independent pairs  (the paper's method)
    class prior + OT    class prior, OT pairs within each class

Every run trains with label dropout 0.1 (the null label starts from the dataset-wide component),
so the same checkpoints also answer the guidance question. Measured on class-balanced samples
(image j of class c from seed image_seed(0, c, j), identical across methods):

    comparison    FD (FID with the Inception weights, else FD-clf), KID, conditional accuracy, at
                  Euler NFE 1, 2, 4, 8, 15, 32 and midpoint at the even budgets; FD at NFE 8 against
                  training steps; the transport cost E||x1 - x0||^2 of each training coupling;
                  yardsticks: real test images, and NFE 8 again from 3 other sets of starting noise
    straightness  from the same starting points, the gap between the straight-line endpoint
                  x0 + v(x0, 0) and a fine solve (midpoint, 64 NFE), and rectified flow's
                  straightness S = E int_0^1 ||(x1 - x0) - v(x_t, t)||^2 dt along that solve
                  (both per dimension; 0 for a perfectly straight flow)
    cfg           guidance weights 1, 1.5, 2, 3 at a fixed number of Euler steps: CondOT, the class
                  prior, and the class prior trained with --null-source class (a dropped label's x0
                  from its own class's component instead of the dataset-wide one; one more run)
    cov           class prior with sigma 0.25, 0.5, 1 (iso) and per-class diagonal std
    overlap       toy2d.py's interleaved layout (a class mean lies on the other class's data)

    python bench/reproduce.py --config cpu                          # MNIST (else shapes), 2 CPU cores
    python bench/reproduce.py --config cpu --parts comparison       # only the comparison: 42 min there
    python bench/reproduce.py --config gpu --data-dir DATA/cifar10  # CIFAR-10 on one GPU (not yet run)

Everything lands in --out (default runs/reproduce_CONFIG): checkpoints, results.json (every
measured point; a re-run skips what is there, so a killed run continues where it stopped),
report.md (the tables) and the PNG plots and sample grids.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plumbing import checks, data  # noqa: E402
import sweep  # noqa: E402 (bench/sweep.py: plots, the run's transport cost)
import toy2d  # noqa: E402
from experiment import (CONFIGS, Config, Evaluator, Results, driver_parser, driver_setup, side_by_side, table,  # noqa: E402
                        timed, train_method)

# label -> (slug: the run's folder, train.Config fields of the method)
METHODS = {
    "CondOT": ("condot", dict(prior="gaussian", coupling="independent")),
    "BatchOT": ("batchot", dict(prior="gaussian", coupling="ot")),
    "class prior": ("class", dict(prior="class", coupling="independent")),
    "class prior + OT": ("class_ot", dict(prior="class", coupling="class_ot")),
}
COV_VARIANTS = {  # the class prior with sigma 1 (iso) is "class prior" above
    "class, sigma 0.25": ("class_sigma0.25", dict(prior="class", prior_options={"sigma": 0.25})),
    "class, sigma 0.5": ("class_sigma0.5", dict(prior="class", prior_options={"sigma": 0.5})),
    "class, diag std": ("class_diag", dict(prior="class", prior_options={"cov": "diag"})),
}
CFG_VARIANTS = {  # dropped labels start from their own class's component, not the dataset-wide one
    "class prior, null from class": ("class_nullclass", dict(prior="class", null_source="class")),
}
PARTS = ("comparison", "straightness", "cfg", "cov", "overlap")


# ----------------------------------------------------------------------------- the parts

def euler_key(config: Config, slug: str, nfe: int, part: str) -> str:
    """A main method's unguided Euler point is one measurement, whichever part asks for it first."""
    main = slug in {s for s, _ in METHODS.values()} and nfe in config.euler_nfes
    return f"cmp/{slug}/euler/{nfe}" if main else f"{part}/{slug}/{nfe}"


def run_comparison(ev: Evaluator, results: Results, runs: dict[str, dict[int, Path]]) -> None:
    config, figures = ev.config, ev.args.out / "figures"
    # yardsticks: real test images (the floor at this n), and NFE 8 again from other starting noise
    results.get("yardstick/test_images", ev.real_images)
    for label, (slug, _) in METHODS.items():
        final = runs[label][max(runs[label])]
        for k in range(1, config.noise_seeds + 1):
            results.get(f"noise/{slug}/{k}", lambda: ev.point(final, "euler", 8, seed=ev.args.seed + k))
    for label, (slug, _) in METHODS.items():
        steps = runs[label]
        final = steps[max(steps)]
        results.get(f"cost/{slug}", lambda: {"transport_cost": ev.transport_cost(final)})
        for nfe in config.euler_nfes:
            grid = figures / f"grid_{slug}_euler_nfe{nfe}.png" if nfe in (2, 8) else None
            results.get(f"cmp/{slug}/euler/{nfe}", lambda: ev.point(final, "euler", nfe, grid=grid))
        for nfe in config.midpoint_nfes:
            results.get(f"cmp/{slug}/midpoint/{nfe}", lambda: ev.point(final, "midpoint", nfe))
        for step, ckpt in steps.items():
            key = f"cmp/{slug}/euler/8" if ckpt == final and 8 in config.euler_nfes else f"conv/{slug}/{step}"
            results.get(key, lambda: ev.point(ckpt, "euler", 8))


def run_straightness(ev: Evaluator, results: Results, runs: dict[str, dict[int, Path]]) -> None:
    for label, (slug, _) in METHODS.items():
        final = runs[label][max(runs[label])]
        results.get(f"straight/{slug}", lambda: ev.straightness(final))


def run_cfg(ev: Evaluator, results: Results, runs: dict[str, dict[int, Path]]) -> None:
    for label in ("CondOT", "class prior", *CFG_VARIANTS):
        slug, final = {**METHODS, **CFG_VARIANTS}[label][0], runs[label][max(runs[label])]
        for scale in ev.config.cfg_scales:
            nfe = ev.config.cfg_steps * (1 if scale == 1.0 else 2)  # a guided step is two evaluations
            key = euler_key(ev.config, slug, nfe, "cfg") if scale == 1.0 else f"cfg/{slug}/{scale:g}"
            results.get(key, lambda: ev.point(final, "euler", nfe, scale))


def run_cov(ev: Evaluator, results: Results, runs: dict[str, dict[int, Path]]) -> None:
    for label, (slug, _) in COV_VARIANTS.items():
        final = runs[label][max(runs[label])]
        results.get(f"cost/{slug}", lambda: {"transport_cost": ev.transport_cost(final)})
        for nfe in ev.config.cov_nfes:
            results.get(f"cov/{slug}/{nfe}", lambda: ev.point(final, "euler", nfe))
    for label in ("CondOT", "class prior"):  # the sigma = 1 and Gaussian rows, at the same NFEs
        slug, final = METHODS[label][0], runs[label][max(runs[label])]
        for nfe in ev.config.cov_nfes:
            results.get(euler_key(ev.config, slug, nfe, "cov"), lambda: ev.point(final, "euler", nfe))


def run_overlap(config: Config, args: argparse.Namespace, results: Results) -> None:
    def measure() -> dict:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # 2-D points: extra threads only add overhead
        try:
            png = args.out / "figures" / "toy2d_interleaved.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            found = toy2d.run("interleaved", 2, config.toy2d_steps, seed=args.seed, png=str(png))
        finally:
            torch.set_num_threads(threads)
        return {method: {str(k): v for k, v in values.items()} for method, values in found.items()}
    results.get("overlap/toy2d", measure)


# ----------------------------------------------------------------------------- the report

def headline(points: dict, metric: str) -> list[str]:
    """For each NFE of the class prior: the fewest Euler NFE at which CondOT is as good."""
    lines = []
    curves = {slug: {int(k.split("/")[-1]): v["value"] for k, v in points.items()
                     if k.startswith(f"cmp/{slug}/euler/")} for slug in ("class", "condot")}
    for nfe, value in sorted(curves["class"].items()):
        matched = [m for m, other in sorted(curves["condot"].items()) if other <= value]
        where = f"CondOT first gets as low at {matched[0]} NFE" if matched else \
            f"CondOT does not reach it at any measured NFE (up to {max(curves['condot'])})"
        lines.append(f"- class prior at {nfe} NFE ({metric} {value:.2f}): {where}")
    return lines


def write_report(ev: Evaluator, results: Results, args: argparse.Namespace, parts: list[str]) -> Path:
    config, points, metric, figures = ev.config, results.points, ev.metric, args.out / "figures"
    # KID of Inception features is quoted x 1e3 by convention; the classifier's features are on another scale
    kid_name, kid_scale = ("KID x1e3", 1e3) if metric == "FID" else ("KID-clf", 1.0)
    device = checks.describe_device(ev.device)
    command = f"python bench/reproduce.py --config {args.config}" + (
        f" --data-dir {args.data_dir}" if args.data_dir and args.config != "cpu" else "")
    lines = [f"# Reproduction: `{command}`", "",
             f"{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}, seed {args.seed}. "
             f"Dataset {args.dataset}; preset {config.preset}, {config.steps} steps at batch {config.batch_size}, "
             f"lr {config.lr:g} (warm-up {config.warmup}), EMA {config.ema}, label dropout 0.1, same for every "
             f"method. {config.n} class-balanced samples per point; metric {metric}"
             + (" (features of a small classifier trained on the dataset, not FID)" if metric == "FD-clf" else "")
             + ". Wall time per part: "
             + ", ".join(f"{p} {points[f'time/{p}']['seconds'] / 60:.1f} min" for p in ("training", *parts)
                         if f"time/{p}" in points) + ".", ""]

    def row_values(prefix: str, nfes, field: str = "value", scale: float = 1.0, fmt: str = "{:.2f}"):
        out = []
        for nfe in nfes:
            point = points.get(f"{prefix}/{nfe}")
            out.append("" if point is None or point.get(field) is None else fmt.format(scale * point[field]))
        return out

    if "comparison" in parts:
        for solver, nfes in (("euler", config.euler_nfes), ("midpoint", config.midpoint_nfes)):
            lines += [f"## {metric} against NFE, {solver}", ""]
            lines += table(["method", *[f"NFE {n}" for n in nfes], "transport cost"],
                           [[label, *row_values(f"cmp/{slug}/{solver}", nfes),
                             f"{points[f'cost/{slug}']['transport_cost']:.1f}"]
                            for label, (slug, _) in METHODS.items()])
            lines.append("")
        lines += [f"## {kid_name} and conditional accuracy, Euler", ""]
        lines += table(["method", *[f"NFE {n}" for n in config.euler_nfes]],
                       [[f"{label}, {kid_name}", *row_values(f"cmp/{slug}/euler", config.euler_nfes, "kid",
                                                               kid_scale, "{:.3g}")]
                        for label, (slug, _) in METHODS.items()]
                       + [[f"{label}, accuracy", *row_values(f"cmp/{slug}/euler", config.euler_nfes, "accuracy",
                                                              100, "{:.1f}%")] for label, (slug, _) in METHODS.items()])
        real = points.get("yardstick/test_images")
        if real:
            lines += ["", f"Yardstick: {real['n']} real test images score {metric} {real['value']:.2f} (accuracy "
                      f"{100 * real['accuracy']:.1f}%) against the reference: the floor at this sample size."]
        lines += ["", f"## Sampling noise: {metric} at Euler NFE 8 from {config.noise_seeds + 1} sets of "
                  "starting noise (same checkpoint)", ""]
        rows = []
        for label, (slug, _) in METHODS.items():
            keys = [f"cmp/{slug}/euler/8", *[f"noise/{slug}/{k}" for k in range(1, config.noise_seeds + 1)]]
            values = [points[key]["value"] for key in keys if key in points]
            if values:
                rows.append([label, " ".join(f"{v:.2f}" for v in values),
                             f"{np.mean(values):.2f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}"])
        lines += table(["method", f"seeds {args.seed}..{args.seed + config.noise_seeds}", "mean +- std"], rows)
        lines += ["", "One training seed per method: the noise of training is not measured."]
        lines += ["", "Headline (Euler):", "", *headline(points, metric), ""]
        series = {solver: {label: [(p["nfe"], p["value"]) for k, p in points.items()
                                   if k.startswith(f"cmp/{slug}/{solver}/")] for label, (slug, _) in METHODS.items()}
                  for solver in ("euler", "midpoint")}
        for solver, curves in series.items():
            sweep.plot_curves(curves, figures / f"{metric.lower()}_vs_nfe_{solver}.png", metric, f"{solver} solver",
                                 log_y=True)
            lines.append(f"![{metric} against NFE, {solver}](figures/{metric.lower()}_vs_nfe_{solver}.png)")
        milestones = sorted({int(k.split("/")[-1]) for k in points if k.startswith("conv/")} | {config.steps})
        convergence = {}
        for label, (slug, _) in METHODS.items():
            convergence[label] = [(s, points.get(f"conv/{slug}/{s}", points.get(f"cmp/{slug}/euler/8") if
                                   s == config.steps else None)) for s in milestones]
        lines += ["", f"## {metric} at Euler NFE 8 against training steps", ""]
        lines += table(["method", *[f"step {s}" for s in milestones]],
                       [[label, *["" if p is None else f"{p['value']:.2f}" for _, p in curve]]
                        for label, curve in convergence.items()])
        sweep.plot_curves({label: [(s, p["value"]) for s, p in curve if p is not None]
                              for label, curve in convergence.items()},
                             figures / f"{metric.lower()}_vs_step.png", f"{metric} at Euler NFE 8", "",
                             "training step (log scale)", log_y=True)
        lines += ["", f"![{metric} against training step](figures/{metric.lower()}_vs_step.png)", "",
                  "## Samples at Euler NFE 2 (left) and 8 (right), one row per class", ""]
        for label, (slug, _) in METHODS.items():
            left, right = figures / f"grid_{slug}_euler_nfe2.png", figures / f"grid_{slug}_euler_nfe8.png"
            if left.is_file() and right.is_file():
                side_by_side(left, right, figures / f"grids_{slug}.png", (f"{label}, NFE 2", f"{label}, NFE 8"))
                lines += [f"{label}:", "", f"![{label} at NFE 2 and 8](figures/grids_{slug}.png)", ""]

    if "straightness" in parts:
        lines += ["## Straightness (midpoint solve, "
                  f"{config.straight_nfe} NFE, {config.straight_n} samples; per dimension, data in [-1, 1])", ""]
        lines += ["endpoint gap = E ‖x(1) − (x0 + v(x0, 0))‖² / D (the one-step error); straightness = "
                  "E ∫ ‖(x(1) − x0) − v(x(t), t)‖² dt / D (rectified flow's; 0 when straight); chord = "
                  "E ‖x(1) − x0‖² / D (path length²). From each method's own prior, the same seeds.", ""]
        lines += table(["method", "endpoint gap", "straightness", "chord"],
                       [[label, *[f"{points[f'straight/{slug}'][f]:.4f}" for f in ("endpoint_gap", "straightness",
                                                                                    "chord")]]
                        for label, (slug, _) in METHODS.items() if f"straight/{slug}" in points])
        lines.append("")

    if "cfg" in parts:
        lines += [f"## Guidance: {metric} (accuracy) at {config.cfg_steps} Euler steps", "",
                  f"A guided step costs 2 NFE: scale 1 is {config.cfg_steps} NFE, the others "
                  f"{2 * config.cfg_steps}.", ""]
        rows = []
        for label in ("CondOT", "class prior", *CFG_VARIANTS):
            slug = {**METHODS, **CFG_VARIANTS}[label][0]
            cells = []
            for scale in config.cfg_scales:
                p = points.get(euler_key(config, slug, config.cfg_steps, "cfg") if scale == 1.0
                               else f"cfg/{slug}/{scale:g}")
                cells.append("" if p is None else f"{p['value']:.2f} ({100 * p['accuracy']:.1f}%)")
            rows.append([label, *cells])
        lines += table(["method", *[f"w = {s:g}" for s in config.cfg_scales]], rows) + [""]

    if "cov" in parts:
        lines += [f"## Covariance of the class prior: {metric} against Euler NFE", ""]
        rows = []
        for label, slug in [("CondOT (N(0, I))", "condot"), ("class, sigma 1 (iso)", "class"),
                            *[(label, slug) for label, (slug, _) in COV_VARIANTS.items()]]:
            cells = []
            for nfe in config.cov_nfes:
                p = points.get(euler_key(config, slug, nfe, "cov"))
                cells.append("" if p is None else f"{p['value']:.2f}")
            cost, last = points.get(f"cost/{slug}"), p  # p: the point at the largest NFE
            rows.append([label, *cells, "" if last is None else f"{100 * last['accuracy']:.1f}%",
                         "" if cost is None else f"{cost['transport_cost']:.1f}"])
        lines += table(["prior", *[f"NFE {n}" for n in config.cov_nfes], f"accuracy at NFE {config.cov_nfes[-1]}",
                        "transport cost"], rows) + [""]

    if "overlap" in parts and "overlap/toy2d" in points:
        found = points["overlap/toy2d"]
        nfes = [k for k in next(iter(found.values())) if k != "cost"]
        lines += ["## Overlapping classes: toy2d interleaved layout (SW2 to the true class samples)", ""]
        lines += table(["method", "transport cost", *[f"NFE {n}" for n in nfes]],
                       [[m, f"{v['cost']:.3f}", *[f"{v[n]:.3f}" for n in nfes]] for m, v in found.items()])
        lines += ["", "![toy2d interleaved](figures/toy2d_interleaved.png)", ""]

    report = args.out / "report.md"
    checks.write_text(report, "\n".join(lines) + "\n")
    return report


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    parser = driver_parser(__doc__.split("\n\n")[0], CONFIGS, PARTS, "reproduce")
    parser.add_argument("--dataset", default=None, help="override the configuration's dataset")
    parser.add_argument("--data-dir", default=None, help="the dataset's folder (required for --config gpu)")
    parser.add_argument("--steps", type=int, default=None, help="override the training steps per method")
    parser.add_argument("--n", type=int, default=None, help="override the samples per measured point")
    parser.add_argument("--features", default=None, choices=["auto", "inception", "clf"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks in training")
    args = parser.parse_args(argv)
    if args.config not in CONFIGS:  # checked again by driver_setup; needed here for the overrides
        raise ValueError(f"unknown --config '{args.config}'; choose one of: {', '.join(CONFIGS)}")
    overrides = {k: v for k, v in (("steps", args.steps), ("n", args.n), ("features", args.features)) if v}
    config = dataclasses.replace(CONFIGS[args.config], **overrides)
    args.dataset = args.dataset or config.dataset
    args.data_dir = args.data_dir or (config.data_dir if args.dataset == config.dataset else None)
    if args.config == "cpu" and args.dataset == "mnist" and not (args.data_dir and Path(args.data_dir).is_dir()):
        print(f"no MNIST at {args.data_dir}: using the built-in shapes dataset")
        args.dataset, args.data_dir = "shapes", None
    data.load_dataset(args.dataset, args.data_dir, "train")  # a missing dataset fails now, with its message
    parts, results = driver_setup(args, CONFIGS, PARTS, "reproduce")
    # cached points are only valid for the configuration that measured them
    setup = json.loads(json.dumps({**dataclasses.asdict(config), "dataset": args.dataset, "seed": args.seed}))
    if results.get("config", lambda: setup) != setup:
        changed = sorted(key for key in setup if results.points["config"].get(key) != setup[key])
        raise ValueError(f"{args.out} holds results of another configuration ({', '.join(changed)} differ): "
                         "use another --out")

    trained = dict(METHODS) if set(parts) - {"cov", "overlap"} else {}
    if "cfg" in parts:
        trained |= CFG_VARIANTS
    if "cov" in parts:
        trained |= {"CondOT": METHODS["CondOT"], "class prior": METHODS["class prior"], **COV_VARIANTS}
    runs: dict[str, dict[int, Path]] = {}
    timed(results, "training", lambda: runs.update(
        {label: train_method(config, args, slug, options) for label, (slug, options) in trained.items()}))
    evaluator = Evaluator(config, args)
    for part in parts:
        if part == "overlap":
            timed(results, part, lambda: run_overlap(config, args, results))
        else:
            work = {"comparison": run_comparison, "straightness": run_straightness, "cfg": run_cfg,
                    "cov": run_cov}[part]
            timed(results, part, lambda: work(evaluator, results, runs))
    # the report covers every part measured so far in this folder, not only this invocation's
    prefixes = {"comparison": "yardstick/", "straightness": "straight/", "cfg": "cfg/", "cov": "cov/",
                "overlap": "overlap/"}
    measured = [p for p in PARTS if p in parts or any(key.startswith(prefixes[p]) for key in results.points)]
    report = write_report(evaluator, results, args, measured)
    print(f"wrote {report} and {args.out / 'figures'}")


if __name__ == "__main__":
    checks.run_main(main)
