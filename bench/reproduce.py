"""Reproduce the paper's comparison with equal budgets, and answer its reviewers' questions.

A named list of bench/compare.py entries (one training run each; same preset, steps, batch,
learning rate, EMA and seed), trained and measured by compare.py in --out:

    gaussian                     CondOT: independent pairs          (the paper's baseline)
    gaussian:coupling=ot         BatchOT: minibatch OT pairs        (ignores the class)
    class                        N(mu_c, sigma^2 I), independent    (the paper's method)
    class:coupling=class_ot      class prior, OT pairs within each class

Every run trains with label dropout 0.1 (the null label starts from the dataset-wide component),
so the same checkpoints also answer the guidance question. Parts (compare.py measures FD, KID,
accuracy, transport cost, straightness, FD against steps; the rest is measured here):

    comparison    compare.py's report at Euler NFE 1, 2, 4, 8, 15, 32; midpoint at the even
                  budgets; yardsticks: real test images, and NFE 8 again from 3 other sets of
                  starting noise; the headline (the fewest CondOT NFE matching the class prior)
    straightness  (compare.py measures it with the comparison; kept as a part name)
    cfg           guidance weights 1, 1.5, 2, 3 at a fixed number of Euler steps: gaussian, class,
                  and class:null_source=class (a dropped label's x0 from its own class's
                  component; one more run)
    cov           class:sigma=0.25, class:sigma=0.5, class:cov=diag (more compare.py entries)
    overlap       toy2d.py's interleaved layout (a class mean lies on the other class's data)

    python bench/reproduce.py --config cpu                          # MNIST (else shapes), 2 CPU cores
    python bench/reproduce.py --config cpu --parts comparison       # only the comparison
    python bench/reproduce.py --config gpu --data-dir DATA/cifar10  # CIFAR-10 on one GPU (not yet run)

Everything lands in --out (default runs/reproduce_CONFIG): compare.py's folder (train/,
results.json: every measured point, so a killed run continues; results.csv, plots, grids/) and
report.md, compare.py's report with this script's sections added.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from plumbing import checks, outputs  # noqa: E402
import compare  # noqa: E402
import compare_report  # noqa: E402
import toy2d  # noqa: E402
from experiment import CONFIGS, Config, Results, driver_parser, driver_setup, table, timed  # noqa: E402

METHODS = ["gaussian", "gaussian:coupling=ot", "class", "class:coupling=class_ot"]
COV_VARIANTS = ["class:sigma=0.25", "class:sigma=0.5", "class:cov=diag"]  # sigma 1 (iso) is "class"
CFG_VARIANTS = ["class:null_source=class"]  # dropped labels start from their own class's component
CFG_METHODS = ["gaussian", "class", *CFG_VARIANTS]
PARTS = ("comparison", "straightness", "cfg", "cov", "overlap")


def entries(parts: list[str]) -> list[str]:
    """The compare.py entries the chosen parts need."""
    found = list(METHODS) if set(parts) - {"cov", "overlap"} else ["gaussian", "class"]
    return found + CFG_VARIANTS * ("cfg" in parts) + COV_VARIANTS * ("cov" in parts)


# ----------------------------------------------------------------------------- the parts

def run_extras(done: compare.Comparison) -> None:
    """Midpoint points and the yardsticks (real test images, NFE 8 from other starting noise)."""
    ev, results, config, seed = done.evaluator, done.results, done.config, done.args.seeds[0]
    results.get("yardstick/test_images", ev.real_images)
    for method in done.methods[:len(METHODS)]:
        final = done.final(method, seed)
        for nfe in config.midpoint_nfes:
            results.get(compare.point_key(method, seed, done.config.steps, "midpoint", nfe),
                        lambda: ev.point(final, "midpoint", nfe))
        for k in range(1, config.noise_seeds + 1):
            results.get(f"noise/{method.key}/{k}", lambda: ev.point(final, "euler", 8, seed=ev.args.seed + k))


def cfg_key(done: compare.Comparison, method: compare.Method, scale: float) -> str:
    """Scale 1 is compare.py's unguided Euler point when it measured that NFE."""
    if scale == 1.0 and done.config.cfg_steps in done.args.nfes:
        return compare.point_key(method, done.args.seeds[0], done.config.steps, "euler", done.config.cfg_steps)
    return f"cfg/{method.key}/{scale:g}"


def run_cfg(done: compare.Comparison) -> None:
    for method in map(compare.parse_method, CFG_METHODS):
        final = done.final(method, done.args.seeds[0])
        for scale in done.config.cfg_scales:
            nfe = done.config.cfg_steps * (1 if scale == 1.0 else 2)  # a guided step is two evaluations
            done.results.get(cfg_key(done, method, scale), lambda: done.evaluator.point(final, "euler", nfe, scale))


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

def headline(curves: dict[str, dict[int, float]], metric: str) -> list[str]:
    """For each NFE of the class prior: the fewest Euler NFE at which CondOT (gaussian) is as good.
    curves: "class" and "condot" -> {NFE: FD}."""
    lines = []
    for nfe, value in sorted(curves["class"].items()):
        matched = [m for m, other in sorted(curves["condot"].items()) if other <= value]
        where = f"CondOT first gets as low at {matched[0]} NFE" if matched else \
            f"CondOT does not reach it at any measured NFE (up to {max(curves['condot'])})"
        lines.append(f"- class prior at {nfe} NFE ({metric} {value:.2f}): {where}")
    return lines


def sections(done: compare.Comparison, parts: list[str]) -> list[str]:
    """What compare.py's report lacks: midpoint, yardsticks, headline, guidance, covariance, overlap."""
    config, points, metric = done.config, done.results.points, done.evaluator.metric
    seed, final = done.args.seeds[0], config.steps

    def cell(key: str, form: str = "{:.2f}") -> str:
        return form.format(points[key]["value"]) if key in points else ""

    lines = []
    if "comparison" in parts:
        methods = done.methods[:len(METHODS)]
        lines += [f"## {metric} against NFE, midpoint (training seed {seed})", ""]
        lines += table(["method", *[f"NFE {n}" for n in config.midpoint_nfes]],
                       [[m.label, *[cell(compare.point_key(m, seed, final, "midpoint", n)) for n in config.midpoint_nfes]]
                        for m in methods])
        real = points.get("yardstick/test_images")
        if real:
            lines += ["", f"Yardstick: {real['n']} real test images score {metric} {real['value']:.2f} (accuracy "
                      f"{100 * real['accuracy']:.1f}%) against the reference: the floor at this sample size."]
        lines += ["", f"## Sampling noise: {metric} at Euler NFE 8 from {config.noise_seeds + 1} sets of starting "
                  "noise (same checkpoint)", ""]
        rows = []
        for m in methods:
            keys = [compare.point_key(m, seed, final, "euler", 8), *[f"noise/{m.key}/{k}"
                                                                     for k in range(1, config.noise_seeds + 1)]]
            found = [points[key]["value"] for key in keys if key in points]
            if found:
                rows.append([m.label, " ".join(f"{v:.2f}" for v in found), compare_report.spread_cell(found)])
        lines += table(["method", "values", "mean ± std [min, max]"], rows)
        curves = {name: {n: points[k]["value"] for n in done.args.nfes
                         if (k := compare.point_key(compare.parse_method(entry), seed, final, "euler", n)) in points}
                  for name, entry in (("class", "class"), ("condot", "gaussian"))}
        lines += ["", "Headline (Euler):", "", *headline(curves, metric), ""]
    if "cfg" in parts:
        lines += [f"## Guidance: {metric} (accuracy) at {config.cfg_steps} Euler steps", "",
                  f"A guided step costs 2 NFE: scale 1 is {config.cfg_steps} NFE, the others {2 * config.cfg_steps}.", ""]
        rows = []
        for m in map(compare.parse_method, CFG_METHODS):
            found = [points.get(cfg_key(done, m, scale)) for scale in config.cfg_scales]
            rows.append([m.label, *["" if p is None else f"{p['value']:.2f} ({100 * p['accuracy']:.1f}%)" for p in found]])
        lines += table(["method", *[f"w = {s:g}" for s in config.cfg_scales]], rows) + [""]
    if "cov" in parts:
        lines += [f"## Covariance of the class prior: {metric} against Euler NFE", ""]
        lines += table(["prior", *[f"NFE {n}" for n in config.cov_nfes]],
                       [[m.label, *[cell(compare.point_key(m, seed, final, "euler", n)) for n in config.cov_nfes]]
                        for m in map(compare.parse_method, ["gaussian", "class", *COV_VARIANTS])]) + [""]
    if "overlap" in parts and "overlap/toy2d" in points:
        found = points["overlap/toy2d"]
        nfes = [k for k in next(iter(found.values())) if k != "cost"]
        lines += ["## Overlapping classes: toy2d interleaved layout (SW2 to the true class samples)", ""]
        lines += table(["method", "transport cost", *[f"NFE {n}" for n in nfes]],
                       [[m, f"{v['cost']:.3f}", *[f"{v[n]:.3f}" for n in nfes]] for m, v in found.items()])
        lines += ["", "![toy2d interleaved](figures/toy2d_interleaved.png)", ""]
    return lines


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> Path:
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
    config = dataclasses.replace(config, dataset=args.dataset, data_dir=args.data_dir)
    parts = driver_setup(args, CONFIGS, PARTS, "reproduce")
    argv = [*compare.budget_flags(config), "--priors", *entries(parts), "--seeds", str(args.seed),
            "--sample-seed", str(args.seed), "--out", str(args.out)]
    argv += ["--device", args.device] * bool(args.device) + ["--compile"] * args.compile
    done = compare.run(argv, config)  # the flags, and its midpoint, cfg, noise settings
    if "comparison" in parts:
        timed(done.results, "extras", lambda: run_extras(done))
    if "cfg" in parts:
        timed(done.results, "cfg", lambda: run_cfg(done))
    if "overlap" in parts:
        timed(done.results, "overlap", lambda: run_overlap(config, args, done.results))
    # the report covers every part measured so far in this folder, not only this invocation's
    prefixes = {"comparison": "yardstick/", "straightness": "straight/", "cfg": "cfg/", "cov": f"point/{compare.parse_method(COV_VARIANTS[0]).key}_",
                "overlap": "overlap/"}
    measured = [p for p in PARTS if p in parts or any(key.startswith(prefixes[p]) for key in done.results.points)]
    body = (args.out / "report.md").read_text().split("\n", 1)[1]
    command = f"python bench/reproduce.py --config {args.config}" + (
        f" --data-dir {args.data_dir}" if args.data_dir and args.config != "cpu" else "")
    report = args.out / "report.md"
    outputs.write_text(report, "\n".join([f"# Reproduction: `{command}`", body, *sections(done, measured)]) + "\n")
    print(f"wrote {report}")
    return report


if __name__ == "__main__":
    checks.run_main(main)
