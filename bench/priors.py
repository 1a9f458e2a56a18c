"""The priors beyond the paper, measured as the paper would: k-means centroids and the mapper.

Two parts, one training budget (bench/experiment.py's `cpu` configuration: tiny preset, 1000
steps at batch 32, lr 1e-3 after 100 warm-up steps, EMA 0.999, label dropout 0.1, seed 0):

    mnist              CondOT (gaussian), the class prior, kmeans k=4 and k=16 (class-conditional).
                       Euler NFE 1-32 on class-balanced samples (image j of class c from seed
                       image_seed(0, c, j), the same for every method): FD-clf, conditional accuracy,
                       the training coupling's transport cost, path straightness; FD-clf at NFE 8
                       against training steps (the runs are trained in segments, each end kept);
                       sample grids at NFE 1 and 8
    shapes_attributes  the built-in shapes conditioned on 8-d attribute vectors (--cond attributes):
                       CondOT vs the mapper prior. Euler NFE 1-16 on the first n held-out conditions:
                       FD-clf (a classifier trained on the shapes' classes), shapes.attribute_errors
                       against the requested attributes, transport cost; real held-out images as
                       the yardstick

    python bench/priors.py --config cpu                         # both parts, 2 CPU cores
    python bench/priors.py --config cpu --parts mnist
    python bench/priors.py --config smoke --out /tmp/smoke      # seconds, shapes only (the test)

Everything lands in --out (default runs/priors_cpu): one folder per part (checkpoints, classifier,
reference, figures/), results.json (every measured point; a re-run skips what is there, so a killed
run continues) and report.md.
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
sys.path.insert(0, str(ROOT / "bench"))
from plumbing import checks, data, samplefiles, shapes  # noqa: E402
import eval_fid  # noqa: E402
import experiment  # noqa: E402
import sample  # noqa: E402
import sweep  # noqa: E402
from experiment import Evaluator, Results, driver_parser, driver_setup, side_by_side, table, timed  # noqa: E402

METHODS = {  # part -> label -> (slug, train.Config fields of the method)
    "mnist": {
        "CondOT": ("condot", dict(prior="gaussian")),
        "class prior": ("class", dict(prior="class")),
        "kmeans k=4": ("kmeans4", dict(prior="kmeans", prior_options={"k": 4})),
        "kmeans k=16": ("kmeans16", dict(prior="kmeans", prior_options={"k": 16})),
    },
    "shapes_attributes": {
        "CondOT": ("condot", dict(cond="attributes", prior="gaussian")),
        "mapper": ("mapper", dict(cond="attributes", prior="mapper")),
    },
}
PARTS = tuple(METHODS)

ATTRIBUTES = (("colour_error", "colour error (grey levels)", "{:.1f}"),
              ("position_error_px", "position error (px)", "{:.2f}"),
              ("size_rank_correlation", "size rank corr.", "{:.3f}"))

_cpu, _smoke = experiment.CONFIGS["cpu"], experiment.CONFIGS["smoke"]
CONFIGS = {  # config -> part -> (experiment.Config, training images: None = all)
    "cpu": {
        "mnist": (dataclasses.replace(_cpu, euler_nfes=(1, 2, 4, 8, 16, 32), checkpoints=4, features="clf",
                                      grid_per_class=8), None),
        "shapes_attributes": (dataclasses.replace(_cpu, dataset="shapes", data_dir=None, euler_nfes=(1, 2, 4, 8, 16),
                                                  checkpoints=1, features="clf", grid_per_class=8), None),
    },
    "smoke": {  # both parts on 16 px shapes (the mnist part with class ids), a few hundred training images
        "mnist": (dataclasses.replace(_smoke, n=40, clf_width=4, euler_nfes=(1, 2), checkpoints=2, straight_n=4), 300),
        "shapes_attributes": (dataclasses.replace(_smoke, n=40, clf_width=4, euler_nfes=(1, 2), checkpoints=1), 300),
    },
}


def part_args(args: argparse.Namespace, part: str, config: experiment.Config) -> argparse.Namespace:
    """What experiment.train_method and Evaluator read: the part's dataset and folder."""
    out = args.out / part
    out.mkdir(parents=True, exist_ok=True)
    return argparse.Namespace(out=out, dataset=config.dataset, data_dir=config.data_dir, seed=args.seed,
                              device=args.device, compile=False)


def train_all(config, max_images, pargs, methods, results: Results, part: str) -> dict[str, dict[int, Path]]:
    runs = {}
    limit = {"max_images": max_images} if max_images else {}
    for label, (slug, method) in methods.items():
        begin, trained = time.perf_counter(), (pargs.out / slug / f"ckpt_{config.steps:07d}.pt").is_file()
        runs[label] = experiment.train_method(config, pargs, slug, {**method, **limit})
        if not trained:  # the wall time of the run that trained it (segments, prior fit and data included)
            results.put(f"time/{part}/train/{slug}", {"seconds": time.perf_counter() - begin})
    return runs


# ----------------------------------------------------------------------------- the parts

def run_mnist(config, max_images, pargs, results: Results) -> Evaluator:
    methods, figures = METHODS["mnist"], pargs.out / "figures"
    runs = train_all(config, max_images, pargs, methods, results, "mnist")
    ev = Evaluator(config, pargs)
    results.get("mnist/real", ev.real_images)
    results.get("mnist/copy/real", lambda: copy_distance(ev, max_images, None))
    for label, (slug, _) in methods.items():
        final = runs[label][max(runs[label])]
        results.get(f"mnist/cost/{slug}", lambda: {"transport_cost": ev.transport_cost(final)})
        for nfe in config.euler_nfes:
            grid = figures / f"grid_{slug}_nfe{nfe}.png" if nfe in grid_nfes(config) else None
            results.get(f"mnist/{slug}/{nfe}", lambda: ev.point(final, "euler", nfe, grid=grid))
        results.get(f"mnist/straight/{slug}", lambda: ev.straightness(final))
        results.get(f"mnist/copy/{slug}", lambda: copy_distance(ev, max_images, final))
        for step, ckpt in runs[label].items():
            if ckpt != final:
                results.get(f"mnist/step/{slug}/{step}", lambda: ev.point(ckpt, "euler", 8))
    return ev


def copy_distance(ev: Evaluator, max_images: int | None, ckpt: Path | None, nfe: int = 8) -> dict:
    """A memorisation check (a prior built from training images could copy them): the RMS pixel
    distance (model space) from each of n images to its nearest training image, as median and 5th
    percentile; ckpt None: the first n real test images (what new data scores)."""
    options = experiment.dataset_options(ev.config, ev.args)
    if ckpt is None:
        images, _ = data.load_dataset(ev.args.dataset, ev.args.data_dir, "test", **options).get(np.arange(ev.config.n))
    else:
        model, prior, run = ev.load(ckpt)
        labels, seeds = ev.balanced(run["num_classes"], ev.config.n)
        images = sample.generate(model, prior, labels, seeds, nfe, "euler", 1.0, ev.config.sample_batch, ev.device)
    x = data.to_model(images).flatten(1).double()
    best = torch.full((len(x),), float("inf"), dtype=torch.float64)
    train = data.load_dataset(ev.args.dataset, ev.args.data_dir, "train", **options)
    for start in range(0, min(len(train), max_images or len(train)), 5000):
        y = data.to_model(train.get(np.arange(start, min(start + 5000, max_images or len(train))))[0]).flatten(1)
        squared = x.square().sum(1, keepdim=True) - 2 * x @ y.double().T + y.double().square().sum(1)
        best = torch.minimum(best, squared.min(1).values)
    rms = (best.clamp(min=0) / x.shape[1]).sqrt().numpy()
    return {"median": float(np.median(rms)), "p5": float(np.percentile(rms, 5)), "n": len(rms), "nfe": nfe}


def shapes_point(ev: Evaluator, ckpt: Path, nfe: int, grid: Path | None) -> dict:
    model, prior, run = ev.load(ckpt)
    cond, seeds, _ = sweep.evaluation_conditions(run, ev.config.n, ev.args.seed)
    images = sample.generate(model, prior, cond, seeds, nfe, "euler", 1.0, ev.config.sample_batch, ev.device,
                             progress=True)
    if grid is not None:
        save_rows(images, grid)
    return {"nfe": nfe, **eval_fid.score(ev.extractor, images, None, ev.ref, 256, ev.args.seed),
            **shapes.attribute_errors(images.numpy(), cond.numpy())}


def save_rows(images: torch.Tensor, path: Path, per_row: int = 8, rows: int = 5) -> None:
    """The first rows x per_row images, in order (conditions are vectors: no class rows)."""
    shown = images[:per_row * rows]
    samplefiles.save_grid(shown, torch.arange(len(shown)) // per_row, path)


def run_shapes(config, max_images, pargs, results: Results) -> Evaluator:
    methods, figures = METHODS["shapes_attributes"], pargs.out / "figures"
    runs = train_all(config, max_images, pargs, methods, results, "shapes_attributes")
    ev = Evaluator(config, pargs)

    def real() -> dict:  # the held-out images whose attributes every method is asked for
        options = {"cond": "attributes", **experiment.dataset_options(config, pargs)}
        images, cond = data.load_dataset("shapes", None, "test", **options).get(np.arange(config.n))
        save_rows(images, figures / "grid_real.png")
        return {**eval_fid.score(ev.extractor, images, None, ev.ref, 256, pargs.seed),
                **shapes.attribute_errors(images.numpy(), cond.numpy())}

    results.get("shapes_attributes/real", real)
    for label, (slug, _) in methods.items():
        final = runs[label][max(runs[label])]
        results.get(f"shapes_attributes/cost/{slug}", lambda: {"transport_cost": ev.transport_cost(final)})
        for nfe in config.euler_nfes:
            grid = figures / f"grid_{slug}_nfe{nfe}.png" if nfe in grid_nfes(config) else None
            results.get(f"shapes_attributes/{slug}/{nfe}", lambda: shapes_point(ev, final, nfe, grid))
    return ev


# ----------------------------------------------------------------------------- the report

def grid_nfes(config) -> tuple[int, int]:
    """Sample grids at the fewest NFE and at 8 (or the most, when 8 is not measured)."""
    return config.euler_nfes[0], 8 if 8 in config.euler_nfes else config.euler_nfes[-1]


def fmt(point: dict | None, field: str = "value", form: str = "{:.2f}", scale: float = 1.0) -> str:
    return "" if point is None or point.get(field) is None else form.format(scale * point[field])


def grids(part: str, config, methods: dict, figures: Path) -> list[str]:
    few, more = grid_nfes(config)
    lines = [f"Samples at Euler NFE {few} (left) and {more} (right), the same seeds for every method:", ""]
    for label, (slug, _) in methods.items():
        left, right = (figures / f"grid_{slug}_nfe{n}.png" for n in (few, more))
        if left.is_file() and right.is_file():
            side_by_side(left, right, figures / f"grids_{slug}.png", (f"{label}, NFE {few}", f"{label}, NFE {more}"))
            lines += [f"![{label}]({part}/figures/grids_{slug}.png)", ""]
    return lines


def report_mnist(config, pargs, points: dict) -> list[str]:
    methods, figures, nfes = METHODS["mnist"], pargs.out / "figures", config.euler_nfes
    get = {label: {n: points.get(f"mnist/{slug}/{n}") for n in nfes} for label, (slug, _) in methods.items()}
    base = get["CondOT"]
    lines = ["## mnist: class-conditional priors", "", "FD-clf against Euler NFE (lower is better):", ""]
    lines += table(["method", *[f"NFE {n}" for n in nfes]],
                   [[label, *[fmt(curve[n]) for n in nfes]] for label, curve in get.items()])
    lines += ["", "Long form, one row per method and NFE (ratio: FD-clf / CondOT's at that NFE):", ""]
    lines += table(["method", "NFE", "FD-clf", "ratio to CondOT", "accuracy", "KID-clf"],
                   [[label, str(n), fmt(curve[n]),
                     f"{curve[n]['value'] / base[n]['value']:.2f}" if curve[n] and base[n] else "",
                     fmt(curve[n], "accuracy", "{:.1f}%", 100), fmt(curve[n], "kid", "{:.3g}")]
                    for label, curve in get.items() for n in nfes])
    real = points.get("mnist/real")
    if real:
        lines += ["", f"Yardstick: {real['n']} real test images score FD-clf {real['value']:.2f}, accuracy "
                  f"{100 * real['accuracy']:.1f}%."]
    lines += ["", "Per method: transport cost E‖x1 − x0‖² of the training coupling (summed over pixels); from a "
              f"{config.straight_nfe}-NFE midpoint solve of {config.straight_n} samples, per dimension: endpoint gap "
              "E‖x(1) − (x0 + v(x0, 0))‖²/D, straightness E∫‖(x(1) − x0) − v(x(t), t)‖² dt/D, chord E‖x(1) − x0‖²/D. "
              "Copy check: RMS pixel distance (in [-1, 1]) of each NFE-8 sample to its nearest training image, median "
              "and 5th percentile (real test images: what new data scores; far lower would mean copying).", ""]
    rows = []
    for label, (slug, _) in methods.items():
        cost, s, near = (points.get(f"mnist/{key}/{slug}") for key in ("cost", "straight", "copy"))
        rows.append([label, fmt(cost, "transport_cost", "{:.1f}"),
                     *[fmt(s, f, "{:.4f}") for f in ("endpoint_gap", "straightness", "chord")],
                     fmt(near, "median", "{:.3f}"), fmt(near, "p5", "{:.3f}")])
    near = points.get("mnist/copy/real")
    rows.append(["real test images", "", "", "", "", fmt(near, "median", "{:.3f}"), fmt(near, "p5", "{:.3f}")])
    lines += table(["method", "transport cost", "endpoint gap", "straightness", "chord", "nearest training image, "
                    "median", "5th percentile"], rows)
    steps = sorted({int(k.split("/")[-1]) for k in points if k.startswith("mnist/step/")} | {config.steps})
    conv = {label: {s: points.get(f"mnist/step/{slug}/{s}") if s != config.steps else get[label].get(8)
                    for s in steps} for label, (slug, _) in methods.items()}
    lines += ["", "FD-clf at Euler NFE 8 against training steps (one run per method, checkpoints kept):", ""]
    lines += table(["method", *[f"step {s}" for s in steps]],
                   [[label, *[fmt(curve[s]) for s in steps]] for label, curve in conv.items()])
    sweep.plot_curves({label: [(n, p["value"]) for n, p in curve.items() if p] for label, curve in get.items()},
                         figures / "fd-clf_vs_nfe.png", "FD-clf", "MNIST, Euler", log_y=True)
    sweep.plot_curves({label: [(n, 100 - 100 * p["accuracy"]) for n, p in curve.items() if p]
                          for label, curve in get.items()}, figures / "error_vs_nfe.png",
                         "classification error % (100 - accuracy)", "MNIST, Euler", log_y=True)
    sweep.plot_curves({label: [(s, p["value"]) for s, p in curve.items() if p] for label, curve in conv.items()},
                         figures / "fd-clf_vs_step.png", "FD-clf at Euler NFE 8", "MNIST",
                         "training step (log scale)", log_y=True)
    lines += ["", *[f"![{name}](mnist/figures/{name}.png)" for name in ("fd-clf_vs_nfe", "error_vs_nfe",
                                                                        "fd-clf_vs_step")], ""]
    return lines + grids("mnist", config, methods, figures)


def report_shapes(config, pargs, points: dict) -> list[str]:
    methods, figures, nfes = METHODS["shapes_attributes"], pargs.out / "figures", config.euler_nfes
    get = {label: {n: points.get(f"shapes_attributes/{slug}/{n}") for n in nfes}
           for label, (slug, _) in methods.items()}
    lines = ["## shapes_attributes: 8-d attribute conditions", "",
             f"The first {config.n} held-out conditions; FD-clf from a classifier of the shapes' classes; attribute "
             "errors measured from the pixels (shapes.attribute_errors) against the requested attributes.", ""]
    real = points.get("shapes_attributes/real")
    rows = [[label, str(n), fmt(curve[n]), *[fmt(curve[n], key, form) for key, _, form in ATTRIBUTES],
             fmt(points.get(f"shapes_attributes/cost/{slug}"), "transport_cost", "{:.1f}")]
            for (label, curve), (slug, _) in zip(get.items(), methods.values()) for n in nfes]
    if real:
        rows.append(["real held-out images", "", fmt(real), *[fmt(real, key, form) for key, _, form in ATTRIBUTES],
                     ""])
    lines += table(["method", "NFE", "FD-clf", *[name for _, name, _ in ATTRIBUTES], "transport cost"], rows)
    for key, name in (("value", "FD-clf"), ("colour_error", "colour error"), ("position_error_px", "position error")):
        curves = {label: [(n, p[key]) for n, p in curve.items() if p] for label, curve in get.items()}
        if real:  # the yardstick as a flat line
            curves["real images"] = [(n, real[key]) for n in nfes]
        slug = key.split("_")[0] if key != "value" else "fd-clf"
        sweep.plot_curves(curves, figures / f"{slug}_vs_nfe.png", name, "shapes, attributes, Euler", log_y=True)
        lines += ["", f"![{name}](shapes_attributes/figures/{slug}_vs_nfe.png)"]
    lines += ["", "Real held-out images (the requested attributes):", "",
              "![real](shapes_attributes/figures/grid_real.png)", ""]
    return lines + grids("shapes_attributes", config, methods, figures)


def write_report(args: argparse.Namespace, results: Results, done: dict) -> Path:
    points = results.points
    times = ", ".join(f"{k.removeprefix('time/')} {v['seconds'] / 60:.1f} min" for k, v in points.items()
                      if k.startswith("time/"))
    lines = [f"# Priors beyond the paper: `python bench/priors.py --config {args.config}`", "",
             f"{time.strftime('%Y-%m-%d')}, {checks.describe_device(checks.resolve_device(args.device))}, torch {torch.__version__}, seed {args.seed}. "
             f"Wall time: {times}.", ""]
    for part, (config, pargs) in done.items():
        lines += {"mnist": report_mnist, "shapes_attributes": report_shapes}[part](config, pargs, points)
    report = args.out / "report.md"
    checks.write_text(report, "\n".join(lines) + "\n")
    return report


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> Path:
    args = driver_parser(__doc__.split("\n\n")[0], CONFIGS, PARTS, "priors").parse_args(argv)
    parts, results = driver_setup(args, CONFIGS, PARTS, "priors")
    done = {}
    for part in PARTS:  # every part measured so far in this folder goes into the report
        config, max_images = CONFIGS[args.config][part]
        if part not in parts and not any(k.startswith(f"{part}/") for k in results.points):
            continue
        setup = json.loads(json.dumps({**dataclasses.asdict(config), "max_images": max_images, "seed": args.seed}))
        if results.get(f"config/{part}", lambda: setup) != setup:
            raise ValueError(f"{args.out} holds {part} results of another configuration: use another --out")
        pargs = part_args(args, part, config)
        if part in parts:
            work = {"mnist": run_mnist, "shapes_attributes": run_shapes}[part]
            timed(results, part, lambda: work(config, max_images, pargs, results))
        done[part] = (config, pargs)
    report = write_report(args, results, done)
    print(f"wrote {report}")
    return report


if __name__ == "__main__":
    checks.run_main(main)
