"""The priors beyond the paper, measured as the paper would: k-means centroids and the mapper.

Two parts, each a named list of bench/compare.py entries under one training budget
(bench/experiment.py's `cpu` configuration: tiny preset, 1000 steps at batch 32, lr 1e-3 after
100 warm-up steps, EMA 0.999, label dropout 0.1, seed 0):

    mnist              gaussian (CondOT), class, kmeans:k=4, kmeans:k=16 (class-conditional).
                       compare.py's measures (FD-clf, accuracy, transport cost, straightness at
                       Euler NFE 1-32; FD-clf at NFE 8 against steps; grids), plus a copy check:
                       the RMS distance of NFE-8 samples to their nearest training image
    shapes_attributes  the built-in shapes conditioned on 8-d attribute vectors (--cond attributes):
                       gaussian vs mapper; FD-clf and shapes.attribute_errors on the first n
                       held-out conditions, transport cost

    python bench/priors.py --config cpu                         # both parts, 2 CPU cores
    python bench/priors.py --config cpu --parts mnist
    python bench/priors.py --config smoke --out /tmp/smoke      # seconds, shapes only (the test)

Everything lands in --out (default runs/priors_cpu): one compare.py folder per part (train/,
results.json, results.csv, report.md, plots, grids/; a re-run measures only what is missing) and
report.md, the two parts' reports in one.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from plumbing import checks, data, outputs  # noqa: E402
import compare  # noqa: E402
import experiment  # noqa: E402
import sample  # noqa: E402
from experiment import Evaluator, driver_parser, driver_setup, table  # noqa: E402

PARTS = {  # part -> (compare.py flags beyond the budget, its entries)
    "mnist": ([], ["gaussian", "class", "kmeans:k=4", "kmeans:k=16"]),
    "shapes_attributes": (["--cond", "attributes"], ["gaussian", "mapper"]),
}

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


def run_part(args, part: str) -> compare.Comparison:
    """The part's compare.py run in OUT/PART, with the driver's seed for training and sampling."""
    config, max_images = CONFIGS[args.config][part]
    flags, entries = PARTS[part]
    argv = [*compare.budget_flags(config), *flags, "--priors", *entries, "--seeds", str(args.seed),
            "--sample-seed", str(args.seed), "--out", str(args.out / part)]
    argv += ["--max-images", str(max_images)] * bool(max_images) + ["--device", args.device] * bool(args.device)
    return compare.run(argv, config)


def copy_distance(ev: Evaluator, max_images: int | None, ckpt: Path | None, nfe: int = 8) -> dict:
    """A memorisation check (a prior built from training images could copy them): the RMS pixel
    distance (model space) from each of n images to its nearest training image, as median and 5th
    percentile; ckpt None: the first n real test images (what new data scores)."""
    options = experiment.dataset_options(ev.config, ev.args)
    if ckpt is None:
        images, _ = data.load_dataset(ev.args.dataset, ev.args.data_dir, "test", **options).get(np.arange(ev.config.n))
    else:
        model, prior, run = ev.load(ckpt)
        cond, seeds, _ = ev.conditions(run, ev.config.n)
        images = sample.generate(model, prior, cond, seeds, nfe, "euler", 1.0, ev.config.sample_batch, ev.device)
    x = data.to_model(images).flatten(1).double()
    best = torch.full((len(x),), float("inf"), dtype=torch.float64)
    train = data.load_dataset(ev.args.dataset, ev.args.data_dir, "train", **options)
    for start in range(0, min(len(train), max_images or len(train)), 5000):
        y = data.to_model(train.get(np.arange(start, min(start + 5000, max_images or len(train))))[0]).flatten(1)
        squared = x.square().sum(1, keepdim=True) - 2 * x @ y.double().T + y.double().square().sum(1)
        best = torch.minimum(best, squared.min(1).values)
    rms = (best.clamp(min=0) / x.shape[1]).sqrt().numpy()
    return {"median": float(np.median(rms)), "p5": float(np.percentile(rms, 5)), "n": len(rms), "nfe": nfe}


def copy_section(done: compare.Comparison, max_images: int | None) -> list[str]:
    """Measure (once, into the part's results.json) and tabulate the copy check."""
    ev, results = done.evaluator, done.results
    rows = [["real test images", results.get("copy/real", lambda: copy_distance(ev, max_images, None))]]
    for method in done.methods:
        final = done.final(method, done.args.seeds[0])
        rows.append([method.label, results.get(f"copy/{method.key}", lambda: copy_distance(ev, max_images, final))])
    return ["### Copy check", "", "RMS pixel distance (in [-1, 1]) of each NFE-8 sample to its nearest training "
            "image, median and 5th percentile (real test images: what new data scores; far lower would mean "
            "copying).", "", *table(["method", "median", "5th percentile"],
                                    [[label, f"{p['median']:.3f}", f"{p['p5']:.3f}"] for label, p in rows]), ""]


def main(argv: list[str] | None = None) -> Path:
    args = driver_parser(__doc__.split("\n\n")[0], CONFIGS, tuple(PARTS), "priors").parse_args(argv)
    parts = driver_setup(args, CONFIGS, tuple(PARTS), "priors")
    lines = [f"# Priors beyond the paper: `python bench/priors.py --config {args.config}`", ""]
    for part in PARTS:  # every part measured so far in this folder goes into the report
        if part in parts:
            done = run_part(args, part)
            if part == "mnist":
                extra = copy_section(done, CONFIGS[args.config][part][1])
                outputs.write_text(args.out / part / "copy.md", "\n".join(extra))
        if (args.out / part / "report.md").is_file():
            body = (args.out / part / "report.md").read_text().split("\n", 2)[2]  # below its title
            lines += [f"## {part}", "", re.sub(r"\]\((?!http)", f"]({part}/", body.replace("\n## ", "\n### "))]
            if (args.out / part / "copy.md").is_file():
                lines += [(args.out / part / "copy.md").read_text(), ""]
    report = args.out / "report.md"
    outputs.write_text(report, "\n".join(lines) + "\n")
    print(f"wrote {report}")
    return report


if __name__ == "__main__":
    checks.run_main(main)
