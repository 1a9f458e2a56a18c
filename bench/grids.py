"""Does a time grid beat uniform? Trained checkpoints sampled on named and fitted grids, measured alike.

For each checkpoint, NFE and grid: n class-balanced samples (the evaluation seeds, image_seed(0, c, j))
measured by experiment.Evaluator (FD-clf with compare.py's offline classifier, or FID where the
Inception weights are found; KID; conditional accuracy). A fitted grid (fit:OBJECTIVE pooled over
the classes, fit-class:OBJECTIVE per class) is fitted by sample.fit_grid on its own pilot draws
(conditions.pilot_seed: never an evaluation seed) and cached in OUT/fitted_grids/. The uniform
grid is also measured from --noise-seeds other sampling seeds: the spread a grid must beat.

    python bench/grids.py --ckpt RUN_A/ckpt_0004000.pt RUN_B/ckpt_0004000.pt --nfe 2,4 \\
        --grids uniform,shift:3,shift:0.3333,edm,fit:local,fit:endpoint,fit-class:local --out runs/grids

Writes OUT/results.json (every point; a re-run measures only what is missing) and OUT/report.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from plumbing import checks, outputs  # noqa: E402
import compare  # noqa: E402 (parse_time_grid: the grid names of compare.py's grid= key)
import experiment  # noqa: E402
import sample  # noqa: E402


def fitted_times(ev: experiment.Evaluator, results: experiment.Results, out: Path, run: str, ckpt: Path,
                 solver: str, nfe: int, grid: str, pilot: int, points: int):
    """The fitted grid's times, fitted once (its wall time and pilot objective kept in results.json)."""
    name, _, objective = grid.partition(":")
    path = out / "fitted_grids" / f"{run}_{solver}_nfe{nfe}_{grid.replace(':', '_')}.json"
    sha256 = checks.file_sha256(ckpt)
    if not path.is_file():
        model, prior, _ = ev.load(ckpt)
        begin = time.perf_counter()
        record = sample.fit_grid(model, prior, sha256, nfe, solver, 1.0, objective, name == "fit-class", pilot,
                                 points, ev.device, progress=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs.write_text(path, json.dumps(record, indent=1) + "\n")
        results.put(f"fit/{run}/{solver}/{nfe}/{grid}", {"seconds": time.perf_counter() - begin,
                                                        "times": record["times"],
                                                        "objective_on_pilot": record["objective_on_pilot"],
                                                        "uniform_on_pilot": record["uniform_on_pilot"]})
    return sample.load_fitted_grid(path, sha256, nfe, solver)


def describe(times) -> str:
    if isinstance(times, dict):
        return "per class: " + "; ".join(f"{c}: " + ", ".join(f"{t:.2f}" for t in ts[1:-1]) for c, ts in times.items())
    return ", ".join(f"{t:.3f}" for t in times[1:-1])


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="checkpoints (RUN/ckpt_STEP.pt); RUN names the row")
    parser.add_argument("--nfe", default="2,4")
    parser.add_argument("--solver", default="euler", choices=list(sample.SOLVERS))
    parser.add_argument("--grids", default="uniform,shift:3,shift:0.3333,edm,fit:local,fit:endpoint,fit-class:local")
    parser.add_argument("--n", type=checks.positive_int, default=1000, help="samples per point")
    parser.add_argument("--noise-seeds", type=checks.nonnegative_int, default=2,
                        help="uniform again from this many other sampling seeds")
    parser.add_argument("--pilot", type=checks.positive_int, default=16, help="fitted grids: pilot draws per class")
    parser.add_argument("--points", type=checks.positive_int, default=32, help="fitted grids: fine grid intervals")
    parser.add_argument("--features", default="auto", choices=["auto", "inception", "clf"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    nfes = compare.int_list(args.nfe, "--nfe")
    grids = [compare.parse_time_grid(g) for g in args.grids.split(",") if g.strip()]
    ckpts = [Path(c) for c in args.ckpt]
    for ckpt in ckpts:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--ckpt {ckpt}: no such checkpoint")
    run_config = sample.load_checkpoint(ckpts[0], "cpu")[2]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = experiment.Config(dataset=run_config["dataset"], data_dir=run_config.get("data_dir"),
                               preset=run_config["preset"], steps=0, batch_size=0, lr=0, warmup=0, ema=0,
                               checkpoints=1, n=args.n, features=args.features)
    device = checks.resolve_device(args.device)
    checks.set_cpu_threads(device)
    ev = experiment.Evaluator(config, argparse.Namespace(dataset=config.dataset, data_dir=config.data_dir, out=out,
                                                         seed=0, device=args.device))
    results = experiment.Results(out / "results.json")
    begin = time.perf_counter()
    rows = []
    for ckpt in ckpts:
        run = f"{ckpt.parent.name}/{ckpt.stem}"
        for nfe in nfes:
            for grid in grids:
                fitted = grid.partition(":")[0] in compare.FITTED_GRIDS
                times = (fitted_times(ev, results, out, run.replace("/", "_"), ckpt, args.solver, nfe, grid,
                                      args.pilot, args.points) if fitted else sample.named_grid(grid, nfe // sample.SOLVERS[args.solver]))
                point = results.get(f"point/{run}/{args.solver}/{nfe}/{grid}",
                                    lambda: ev.point(ckpt, args.solver, nfe, time_grid=times))
                spread = ""
                if grid == "uniform" and args.noise_seeds:
                    others = [results.get(f"point/{run}/{args.solver}/{nfe}/{grid}/seed{s}",
                                          lambda: ev.point(ckpt, args.solver, nfe, seed=s))["value"]
                              for s in range(1, args.noise_seeds + 1)]
                    every = [point["value"], *others]
                    spread = f"{min(every):.2f}-{max(every):.2f} (seeds 0-{args.noise_seeds})"
                fit = results.points.get(f"fit/{run.replace('/', '_')}/{args.solver}/{nfe}/{grid}", {})
                pilot = ("" if not fit else "; ".join(f"{fit['objective_on_pilot'][k]:.3g} vs {fit['uniform_on_pilot'][k]:.3g}"
                                                       for k in list(fit["objective_on_pilot"])[:1])
                         + (f" ({len(fit['objective_on_pilot'])} classes, first shown)" if len(fit.get('objective_on_pilot', {})) > 1 else "")
                         + (f", fitted in {fit['seconds']:.0f} s" if fit else ""))
                rows.append([run, str(nfe), grid, describe(times), f"{point['value']:.2f}", spread,
                             f"{point.get('accuracy', float('nan')):.3f}", pilot])
                print(" | ".join(rows[-1]), flush=True)
    header = ["checkpoint", "NFE", "grid", "interior times", ev.metric, f"uniform {ev.metric} over sampling seeds",
              "accuracy", "fit: pilot objective vs uniform's"]
    lines = [f"`python bench/grids.py {shlex.join(sys.argv[1:] if argv is None else argv)}`", "",
             *experiment.table(header, rows), "", f"wall time of this run: {time.perf_counter() - begin:.0f} s"]
    outputs.write_text(out / "report.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'}")


if __name__ == "__main__":
    checks.run_main(main)
