"""An NFE sweep: sample checkpoints at several budgets and measure each point with eval_fid.

For each checkpoint and each NFE: images from the checkpoint's own prior and EMA network (Euler,
or --solver) for class-balanced ids (image i of class i % K seeded image_seed(seed, i % K, i // K))
or, for a vector-conditioned run, the first --n conditions of the held-out split; then FID or
FD-clf, KID and the conditional accuracy against a reference made by `eval_fid.py ref`, the
attribute errors for shapes attributes, and the transport cost of the run's own training
coupling. Writes OUT.csv (every field), OUT.md (a table) and OUT.png (the metric against NFE,
drawn with pillow; plot_curves is what the other experiment drivers draw with too).

    python bench/sweep.py --ckpt a/ckpt.pt b/ckpt.pt --ref runs/ref.npz --nfe 1,2,4,8 --n 10000
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plumbing import checks, conditions, data, features, outputs, shapes  # noqa: E402
import eval_fid  # noqa: E402
import flow  # noqa: E402
import sample  # noqa: E402


@torch.no_grad()
def coupling_cost(prior, dataset, batch_size: int, coupling: str, batches: int = 4, seed: int = 0) -> float:
    """The paper's path length for a prior and a coupling: mean ||x1 - x0||^2 over a few training
    batches (shuffled by `seed`), x0 drawn and paired as train.py does; no row is null here, so
    this is the conditional cost."""
    generator = torch.Generator().manual_seed(seed)
    costs = []
    for images, cond in dataset.batches(batch_size, shuffle=True, seed=seed):
        x1 = data.to_model(images)
        x0 = prior.sample(cond, generator, x1=x1)  # x1: the training coupling of data-dependent priors
        costs.append(float(flow.transport_cost(flow.couple(x0, x1, prior.groups(cond), coupling), x1)))
        if len(costs) == batches:
            break
    return float(np.mean(costs))


def run_transport_cost(prior, config: dict, seed: int = 0, batches: int = 4) -> float:
    """coupling_cost on the run's own training set, batch size and coupling."""
    dataset = data.load_dataset(config["dataset"], config.get("data_dir"), "train", **config.get("dataset_options", {}))
    return coupling_cost(prior, dataset, int(config.get("batch_size", 256)),
                              config.get("coupling", "independent"), batches, seed)


def sweep_paths(out: str | Path) -> list[Path]:
    """OUT.csv, OUT.md and OUT.png, each checked writable now, before any sampling."""
    if Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; give a name prefix such as {Path(out) / 'sweep'}")
    return [outputs.check_out_file(Path(out).with_suffix(suffix), "--out") for suffix in (".csv", ".md", ".png")]


def run_sweep(args: argparse.Namespace) -> None:
    try:
        nfes = [int(part) for part in args.nfe.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--nfe must be comma-separated integers like 1,2,4,8, got {args.nfe!r}") from None
    if not nfes:
        raise ValueError(f"--nfe needs at least one integer, got {args.nfe!r}")
    checks.check_at_least(min(nfes), 1, "--nfe")
    checks.check_finite(args.cfg, "--cfg")
    labels_given = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels_given is not None and len(labels_given) != len(args.ckpt):
        raise ValueError(f"--labels has {len(labels_given)} names for {len(args.ckpt)} checkpoints")
    for nfe in nfes:  # a bad budget fails now, not after the first checkpoint's samples
        sample.num_steps(nfe, args.solver, 1 if args.cfg == 1.0 else 2)
    missing = [ckpt for ckpt in args.ckpt if not Path(ckpt).is_file()]
    if missing:
        raise FileNotFoundError(f"--ckpt: no checkpoint at {', '.join(missing)}; train one with python train.py")
    paths = sweep_paths(args.out)
    ref = eval_fid.load_ref(args.ref)
    eval_fid.check_enough(args.n, len(ref["mu"]), "raise --n (samples per point)")
    extractor = features.extractor_for_ref(ref, args.features, args.clf, args.inception_weights, args.device)
    rows = []
    for index, ckpt in enumerate(args.ckpt):
        model, prior, config = sample.load_checkpoint(ckpt, args.device)
        conditions.check_guidance(args.cfg, config, ckpt)
        eval_fid.check_shape((config["channels"], config["image_size"], config["image_size"]), ref)
        label = labels_given[index] if labels_given else f"{config['prior']}+{config['coupling']}"
        cost = run_transport_cost(prior, config, args.seed)
        cond, seeds, classes = evaluation_conditions(config, args.n, args.seed)
        for nfe in nfes:
            images = sample.generate(model, prior, cond, seeds, nfe, args.solver, args.cfg,
                                     args.sample_batch_size, args.device, progress=True)
            result = eval_fid.score(extractor, images, classes, ref, args.batch_size, args.seed)
            if config["dataset"] == "shapes" and config.get("cond") == "attributes":  # faithfulness, from pixels
                result.update(shapes.attribute_errors(images.numpy(), cond.numpy()))
            row = {"label": label, "ckpt": str(ckpt), "prior": config["prior"], "coupling": config["coupling"],
                   "solver": args.solver, "nfe": nfe, "cfg": args.cfg, **result, "transport_cost": cost}
            rows.append(row)
            print(json.dumps(row))
            print(f"{label} NFE {nfe}: {eval_fid.summary(result, attribute_summary(result))}, "
                  f"transport cost {cost:.2f}")
    write_sweep(rows, paths, extractor.metric, args.solver)


def attribute_summary(result: dict) -> list[str]:
    """The readable part of shapes.attribute_errors, for eval_fid.summary (none without them)."""
    if "colour_error" not in result:
        return []
    return [f"attribute errors: colour {result['colour_error']:.1f} levels, position "
            f"{result['position_error_px']:.2f} px, size rank correlation {result['size_rank_correlation']:.2f}"]


def evaluation_conditions(config: dict, n: int, seed: int) -> tuple[torch.Tensor, list[int], np.ndarray | None]:
    """(cond, seeds, class ids or None) for n samples: class-balanced ids (image j of class c has
    seed image_seed(seed, c, j)), or the first n condition vectors of the held-out split (one
    image each, seed image_seed(seed, i, 0))."""
    if config.get("cond_dim", 0):
        held_out = data.load_dataset(config["dataset"], config.get("data_dir"), "test",
                                     **config.get("dataset_options", {}))
        if len(held_out) < n:
            raise ValueError(f"the held-out split has {len(held_out)} conditions, fewer than --n {n}")
        _, cond = held_out.get(np.arange(n))
        return cond, [conditions.image_seed(seed, i, 0) for i in range(n)], None
    classes, seeds = conditions.balanced_classes(config["num_classes"], n, seed)
    return classes, seeds, classes.numpy()


def write_sweep(rows: list[dict], paths: list[Path], metric: str, solver: str) -> None:
    """paths = OUT.csv (every field), OUT.md (the readable table), OUT.png (metric against NFE)."""
    csv_path, md_path, png_path = paths
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    outputs.write_text(csv_path, table.getvalue())
    kid_name = "KID" if metric == "FID" else "KID-clf"
    lines = [f"| checkpoint | NFE | {metric} | {kid_name} x1e3 | accuracy | transport cost |", "|---" * 6 + "|"]
    for row in rows:
        kid_text = "" if row["kid"] is None else f"{1e3 * row['kid']:.2f} +- {1e3 * row['kid_std']:.2f}"
        acc_text = "" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"| {row['label']} | {row['nfe']} | {row['value']:.2f} | {kid_text} | {acc_text} | "
                     f"{row['transport_cost']:.2f} |")
    outputs.write_text(md_path, "\n".join(lines) + "\n")
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        series.setdefault(row["label"], []).append((row["nfe"], row["value"]))
    plot_curves(series, png_path, metric, f"{solver} solver")
    print(f"wrote {csv_path}, {md_path}, {png_path}")


def plot_curves(series: dict[str, list[tuple[float, float]]], path: str | Path, y_label: str,
                title: str = "", x_label: str = "NFE (log scale)", log_y: bool = False) -> None:
    """Metric against NFE (or any positive x), log-x (and log-y if asked), one line per checkpoint,
    drawn with pillow."""
    width, height, left, right, top, bottom = 720, 460, 80, 20, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()

    def shown(y: float) -> bool:
        return math.isfinite(y) and (y > 0 or not log_y)

    def to_axis(y: float) -> float:  # y as plotted: log10 on a log axis
        return math.log10(y) if log_y else y

    series = {label: sorted((x, y) for x, y in curve if shown(y)) for label, curve in series.items()}
    points = [(x, to_axis(y)) for curve in series.values() for x, y in curve]
    xs = sorted({x for x, _ in points}) or [1.0]
    ys = [y for _, y in points] or [0.0]
    x_lo, x_hi = math.log(xs[0]), math.log(xs[-1])
    if x_hi - x_lo < 1e-9:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    pad = 0.05 * (max(ys) - min(ys)) or 1.0
    legend_share = (16 * len(series) + 10) / (height - top - bottom)  # headroom so the legend hides no point
    y_lo, y_hi = min(ys) - pad, max(ys) + pad + legend_share * (max(ys) - min(ys) + 2 * pad)

    def px(x: float, y: float) -> tuple[float, float]:  # y already on the axis scale
        return (left + (math.log(x) - x_lo) / (x_hi - x_lo) * (width - left - right),
                height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for x in xs:  # x ticks at the measured NFEs
        u, _ = px(x, y_lo)
        draw.line([u, height - bottom, u, height - bottom + 5], fill="black")
        draw.text((u, height - bottom + 8), f"{x:g}", fill="black", font=font, anchor="ma")
    if log_y:  # y ticks at 1, 2 and 5 times powers of ten
        ticks = [m * 10.0 ** k for k in range(math.floor(y_lo) - 1, math.ceil(y_hi) + 1) for m in (1, 2, 5)]
        ticks = [y for y in ticks if y_lo <= math.log10(y) <= y_hi]
    else:  # y ticks at round numbers: 1, 2 or 5 times a power of ten, 4 to 8 of them
        raw = (y_hi - y_lo) / 8
        power = 10 ** math.floor(math.log10(raw))
        step = min(m * power for m in (1, 2, 5, 10) if m * power >= raw)
        ticks = [k * step for k in range(math.ceil(y_lo / step), math.floor(y_hi / step) + 1)]
    for y in ticks:
        _, v = px(xs[0], to_axis(y))
        draw.line([left - 5, v, left, v], fill="black")
        draw.text((left - 8, v), f"{y:g}", fill="black", font=font, anchor="rm")
    draw.text(((left + width - right) / 2, height - 20), x_label, fill="black", font=font, anchor="mm")
    draw.text((left, top - 8), y_label + (" (log scale)" if log_y else ""), fill="black", font=font, anchor="ls")
    draw.text((width - right, top - 8), title, fill="black", font=font, anchor="rs")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for index, (label, curve) in enumerate(series.items()):
        color = colors[index % len(colors)]
        if len(curve) > 1:
            draw.line([px(x, to_axis(y)) for x, y in curve], fill=color, width=2)
        for x, y in curve:
            u, v = px(x, to_axis(y))
            draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=color)
        legend_y = top + 10 + 16 * index  # legend in the top-right corner
        draw.line([width - right - 150, legend_y, width - right - 130, legend_y], fill=color, width=3)
        draw.text((width - right - 125, legend_y), label, fill="black", font=font, anchor="lm")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # atomic: a run killed mid-write keeps the old plot; a file object needs the format named
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    outputs.atomic_write(path, lambda file: image.save(file, format=image_format))


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    arg = parser.add_argument
    arg("--ckpt", nargs="+", required=True, help="checkpoints written by train.py")
    arg("--ref", required=True, help="statistics file written by eval_fid.py ref")
    arg("--nfe", default="1,2,4,8,15,32", help="comma-separated network evaluations per image")
    arg("--solver", default="euler", help="ODE solver, as in sample.py")
    arg("--cfg", type=checks.finite_float, default=1.0, help="guidance weight; 1 = no guidance")
    arg("--n", type=checks.positive_int, default=10_000, help="samples per point, class-balanced")
    arg("--sample-batch-size", type=checks.positive_int, default=256, help="images per sampling batch")
    arg("--batch-size", type=checks.positive_int, default=100, help="images per feature batch")
    arg("--labels", default=None, help="comma-separated legend names, one per --ckpt")
    arg("--out", default="runs/sweep", help="writes OUT.csv, OUT.md and OUT.png")
    arg("--features", choices=["inception", "clf"], default=None, help="feature network (default: the reference's)")
    arg("--clf", default=None, help="classifier file for --features clf")
    arg("--inception-weights", default=None, help="path of the Inception weights (default: torch.hub's folder)")
    arg("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    arg("--seed", type=checks.seed_int, default=0, help="seed of the images and of KID's subsets")
    args = parser.parse_args(argv)
    for flag in ("n", "sample_batch_size", "batch_size"):
        checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    args.device = checks.resolve_device(args.device)
    run_sweep(args)


if __name__ == "__main__":
    checks.run_main(main)
