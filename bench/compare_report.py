"""How bench/compare.py judges and writes up a comparison: the verdicts, the tables, results.csv,
the plots and report.md, from the measured points (results.json) alone.

    verdict       per NFE, a method against the baseline: below or above it when the difference of
                  the means over training seeds exceeds the two sample std's added, else within the
                  seed spread; one seed: the difference only
    step_verdict  against training steps: whether the lead changed over the run and its second half
    yardsticks    what the numbers compare with: the reference's size, the classifier's held-out
                  accuracy, the floor (real held-out images at the same n)
    wall_time     this run's own training (and the threads it used), classifier, reference, measuring
    report        report.md's lines and the terminal's (the FD table, the yardsticks, the verdicts)
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import experiment  # bench/experiment.py: side_by_side, table
import sweep  # bench/sweep.py: plot_curves
from experiment import table
from plumbing import checks, outputs

ATTRIBUTES = ("colour_error", "position_error_px", "size_rank_correlation")


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


def collect(args: argparse.Namespace, steps: list[int], methods: list, points: dict, key: Callable) -> list[dict]:
    """One row per method x seed x step x NFE with every metric (what results.csv holds)."""
    rows = []
    for method in methods:
        for seed in args.seeds:
            run = f"{method.slug}_seed{seed}"
            own = [s for s in steps if any(key(method, seed, s, args.solver, n) in points for n in args.nfes)]
            for step in own:
                for nfe in args.nfes:
                    point = points.get(key(method, seed, step, args.solver, nfe))
                    if point is None:
                        continue
                    final = step == own[-1]  # a reflowed run ends after its teacher's steps
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


def own_runs(args: argparse.Namespace, methods: list) -> tuple[list[str], list[str]]:
    """(this run's training folders SLUG_seedS, its measured runs KEY_seedS): a process sharing
    --out with others reports only these."""
    return ([f"{slug}_seed{seed}" for slug in dict.fromkeys(m.slug for m in methods) for seed in args.seeds],
            [f"{m.key}_seed{seed}" for m in methods for seed in args.seeds])


def wall_time(args: argparse.Namespace, methods: list, points: dict, shared: dict) -> list[str]:
    """What this comparison cost: its own runs' training (not another process's in the same --out),
    the classifier and the reference (when made for this --out), its own runs' measuring."""
    trained, measured = own_runs(args, methods)
    train = [shared[f"time/train/{run}"] for run in trained if f"time/train/{run}" in shared]
    parts = [("training", sum(t["seconds"] for t in train))] if train else []
    parts += [(what, shared[f"time/{part}"]["seconds"]) for part, what in (("clf", "the offline classifier"),
                                                                          ("reference", "the reference"))
              if f"time/{part}" in shared]
    measuring = [points[k]["seconds"] for k in [*(f"time/measure/{run}" for run in measured), "time/measure/floor"]
                 if k in points]
    parts += [("measuring", sum(measuring))] if measuring else []
    parts += [(k.removeprefix("time/"), v["seconds"]) for k, v in sorted(points.items())  # a preset's own parts
              if k.startswith("time/") and not k.startswith(("time/train/", "time/measure", "time/clf",
                                                             "time/reference"))]
    ran_on = sorted({t.get("ran_on", "threads not recorded (an earlier version)") for t in train})
    return [f"Wall time: {', '.join(f'{what} {seconds / 60:.1f} min' for what, seconds in parts) or 'nothing yet'}"
            + (f"; training used {' / '.join(ran_on)}" if ran_on else "") + "."]


def yardsticks(config: experiment.Config, ev, points: dict) -> list[str]:
    """What makes the numbers readable: the reference's real size, the classifier's held-out
    accuracy, and the floor (real held-out images against the same reference, at the same n)."""
    held = ev.ref_images  # None: a reference file that does not say (pytorch-fid's own)
    cut = held is not None and held < config.ref_images
    lines = [f"- Reference: {'an unknown number of' if held is None else held} training images"
             + (f" (--ref-images {config.ref_images}: the dataset has no more)" if cut else "")
             + f"; {ev.extractor.dim}-d features."]
    if ev.clf_accuracy is not None:
        lines.append(f"- The offline classifier ({config.clf_steps} steps, width {config.clf_width}): held-out "
                     f"accuracy {100 * ev.clf_accuracy:.1f}% (the samples' accuracy is read against it).")
    real = points.get("floor/test_images")
    if real is not None:
        lines.append(f"- Floor: {real['metric']} of {real['n']} real held-out images against the same reference: "
                     f"{real['value']:.3g} (a perfect generator scores about this at this n, not 0)"
                     + (f"; their accuracy {100 * real['accuracy']:.1f}%" if real.get("accuracy") is not None else "")
                     + (f"; fewer than the samples' {config.n}: the held-out split has no more" if real["n"] < config.n
                        else "") + ".")
    else:
        lines.append(f"- Floor: not measured (the held-out split has {ev.held_out} images, too few for "
                     f"{ev.extractor.dim}-d features).")
    return lines


def report(args: argparse.Namespace, config: experiment.Config, methods: list, ev, points: dict, shared: dict,
           steps: list[int], key: Callable, grid_nfes: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(the report's lines, the lines printed in the terminal: the FD table and the verdicts).
    ev: the experiment.Evaluator; points: this measurement's results (experiment.Results.points),
    shared: results.json's unscoped keys (training times); steps: the measured training steps;
    key(method, seed, step, solver, nfe): a point's key; grid_nfes: the two NFE of the sample grids."""
    metric = ev.metric
    rows = collect(args, steps, methods, points, key)
    write_csv(rows, args.out / "results.csv")
    labels, base, final = [m.label for m in methods], args.baseline, config.steps
    ends = {label: max([r["step"] for r in rows if r["method"] == label] or [final]) for label in labels}
    name = metric + (" (features of an offline classifier trained on the data, not FID)" if metric == "FD-clf" else "")
    fd = table(["method", *[f"NFE {n}" for n in args.nfes]],
               [[label, *[spread_cell(values(rows, label, "value", step=ends[label], nfe=n)) for n in args.nfes]]
                for label in labels])
    verdicts = []
    for nfe in args.nfes:
        base_values = values(rows, base, "value", step=ends[base], nfe=nfe)
        for label in labels:
            mine = values(rows, label, "value", step=ends[label], nfe=nfe)
            if label != base and mine and base_values:
                verdicts.append(f"- NFE {nfe}: {verdict(label, base, mine, base_values)}")
    step_means = {label: {s: float(np.mean(v)) for s in steps
                          if (v := values(rows, label, "value", step=s, nfe=args.step_nfe))} for label in labels}
    step_lines = [f"- {step_verdict(label, base, {s: step_means[label][s] / step_means[base][s] for s in steps if s in step_means[label] and s in step_means[base]})}"
                  for label in labels if label != base and set(step_means[label]) & set(step_means[base])]
    terminal = [f"{metric} at step {final} (a reflowed run or its control: at its own last step; mean ± std [min, "
                f"max] over training seeds {args.seeds}):", *fd, "", *yardsticks(config, ev, points), "",
                f"Against {base} (lower is better):", *verdicts, *step_lines]
    compute = getattr(args, "compute", {})

    vector = any(r.get("colour_error") is not None for r in rows)
    quality = ATTRIBUTES if vector else ("accuracy",)
    lines = [f"# Prior comparison: `{args.command}`", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, measured on "
             f"{checks.describe_device(checks.resolve_device(args.device))}, "
             f"torch {torch.__version__}. Dataset {args.dataset}; preset {config.preset}, {config.steps} steps at "
             f"batch {config.batch_size}, lr {config.lr:g} (warm-up {config.warmup}), EMA {config.ema}, label dropout "
             f"{config.label_dropout}, the same for every method; training seeds {args.seeds}. {config.n} samples per "
             f"point ({'held-out condition vectors' if vector else 'class-balanced'}, sampling seed "
             f"{args.sample_seed}: the same starting noise for every method); solver {args.solver}; metric {name}.",
             "", *wall_time(args, methods, points, shared), "",
             f"## {metric} against NFE at the final step (lower is better)", "", *fd, "",
             "What the numbers can be compared with:", "", *yardsticks(config, ev, points), "",
             "## Verdicts", "", "Rule: with two or more training seeds per method, a method is below (better) or "
             f"above the baseline {base} when the difference of the means exceeds the sum of the two sample std's "
             "over training seeds; else within the seed spread. With one seed there is no spread to compare.", "",
             *verdicts, "", f"FD at NFE {args.step_nfe} against training steps, as the ratio to {base}:", "",
             *step_lines, ""]
    if compute:
        lines += ["## Compute per entry (one training seed)", "", "Training images seen (training, and a reflowed "
                  "run's fine-tuning), network evaluations spent on reflow pairs, and both in network evaluations "
                  "(a training image counted as 3: the forward and a backward of about twice its cost).", ""]
        lines += table(["method", "training images", "pair evaluations", "evaluations in all"],
                       [[label, f"{compute[label]['training_images']:,}", f"{compute[label]['pair_evaluations']:,}",
                         f"{compute[label]['evaluations']:,}"] for label in labels if label in compute])
        lines += [""]
    lines += [f"## {', '.join(quality)} at the final step (mean over seeds)", ""]
    lines += table(["method", "metric", *[f"NFE {n}" for n in args.nfes]],
                   [[label, field, *[spread_cell(values(rows, label, field, step=ends[label], nfe=n))
                                     for n in args.nfes]] for label in labels for field in quality])
    lines += ["", "## Paths at the final step", "", "transport cost E‖x1 − x0‖² of the training coupling (summed "
              f"over pixels); from a {config.straight_nfe}-NFE midpoint solve of {config.straight_n} samples, per "
              "dimension: endpoint gap E‖x(1) − (x0 + v(x0, 0))‖²/D, straightness E∫‖(x(1) − x0) − v(x(t), t)‖² dt/D "
              "(0 when straight), chord E‖x(1) − x0‖²/D.", ""]
    first_nfe = args.nfes[0]
    lines += table(["method", "transport cost", "endpoint gap", "straightness", "chord"],
                   [[label, *[spread_cell(values(rows, label, f, step=ends[label], nfe=first_nfe))
                              for f in ("transport_cost", "endpoint_gap", "straightness", "chord")]]
                    for label in labels])
    lines += ["", f"## {metric} at NFE {args.step_nfe} against training steps (mean over seeds)", ""]
    lines += table(["method", *[f"step {s}" for s in steps]],
                   [[label, *[spread_cell(values(rows, label, "value", step=s, nfe=args.step_nfe)) for s in steps]]
                    for label in labels])
    sweep.plot_curves({label: [(n, float(np.mean(v))) for n in args.nfes
                               if (v := values(rows, label, "value", step=ends[label], nfe=n))] for label in labels},
                      args.out / "fd_vs_nfe.png", metric, f"{args.dataset}, {args.solver}", log_y=True)
    sweep.plot_curves({label: sorted(curve.items()) for label, curve in step_means.items()},
                      args.out / "fd_vs_step.png", f"{metric} at NFE {args.step_nfe}", args.dataset,
                      "training step (log scale)", log_y=True)
    lines += ["", "![FD against NFE](fd_vs_nfe.png)", "", "![FD against training steps](fd_vs_step.png)", "",
              f"## Samples at NFE {' and '.join(map(str, grid_nfes))} (training seed {args.seeds[0]}; one row per "
              "class, or the first held-out conditions in order)", ""]
    few, more = grid_nfes
    for method in methods:
        # the seed in the name: runs of other --seeds in this --out (in parallel) write their own
        name = f"{method.key}_seed{args.seeds[0]}"
        left, right = (args.out / "grids" / f"{name}_nfe{n}.png" for n in (few, more))
        if left.is_file() and right.is_file():
            experiment.side_by_side(left, right, args.out / "grids" / f"{name}.png",
                                    (f"{method.label}, NFE {few}", f"{method.label}, NFE {more}"))
            lines += [f"![{method.label}, NFE {few} and {more}](grids/{name}.png)", ""]
    return lines, terminal
