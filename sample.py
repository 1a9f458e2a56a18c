"""Sample a trained flow: integrate dx/dt = v(x, t, c) from the condition's prior to data.

A sample with condition c (a class id, or a vector such as an embedding) starts at
x(0) ~ p0(. | c) (the class's own Gaussian for the "class" prior, N(P(c), sigma^2 I) for the
"mapper", N(0, I) for the "gaussian" one) and is carried to x(1) by the learned velocity
field. We use
fixed-step explicit Runge-Kutta on the uniform grid t_k = k h, h = 1 / steps:

    euler     x += h k1                                  k1 = v(x, t)
    midpoint  x += h v(x + h/2 k1, t + h/2)
    heun      x += h/2 (k1 + v(x + h k1, t + h))         (explicit trapezoid, no reuse)
    rk4       x += h/6 (k1 + 2 k2 + 2 k3 + k4)           (the classical one)

NFE (network function evaluations) is the budget: steps = NFE / evaluations-per-step.
Classifier-free guidance mixes the conditional and unconditional (null = True) fields,

    v = v_uncond + w (v_cond - v_uncond),

and costs two evaluations per velocity (both run in ONE batched network call), so with
w != 1 the NFE budget must be a multiple of 2 x evaluations-per-step.

    python sample.py --nfe 8 --solver euler    # reads out/ckpt.pt, writes a PNG grid and an .npz
    python sample.py --cond-file e.npy         # a vector-conditioned checkpoint: one row per vector

The .npz follows the guided-diffusion evaluation suite: arr_0 uint8 (N, H, W, C), arr_1 int64 labels
(for vectors: the condition's row, and `cond` holds the vectors). Image j of class c (or of
condition row c) is drawn with the seed conditions.image_seed(--seed, c, j), so it does not change with
the batch size, the device count or which other conditions are sampled in the same run.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import unet
from prior import prior_from_state
from plumbing import checks, data, outputs, pairs, readers, samplefiles
from plumbing.conditions import (MAX_PAIR_SEED, as_condition, check_guidance, first_conditions, pair_seed,
                                 parse_classes, per_condition, read_vectors)

# what the solver integrates: dx/dt = field(x, t), one batch's conditions already bound (guided_field)
Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SOLVERS: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}  # evaluations per step


def num_steps(nfe: int, solver: str, evals_per_velocity: int = 1) -> int:
    """Steps that spend exactly `nfe` evaluations; ValueError naming the nearest valid budgets."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    per_step = SOLVERS[solver] * evals_per_velocity
    if nfe >= per_step and nfe % per_step == 0:
        return nfe // per_step
    lower = (nfe // per_step) * per_step
    budgets = [b for b in (lower, lower + per_step) if b >= per_step] or [per_step]
    cost = f"{solver} uses {SOLVERS[solver]} evaluation{'s' * (SOLVERS[solver] > 1)} per step"
    if evals_per_velocity == 2:
        cost += " and guidance doubles each (conditional + unconditional)"
    raise ValueError(f"--nfe {nfe} cannot be spent exactly: {cost}, so --nfe must be a positive "
                     f"multiple of {per_step}: try {' or '.join(map(str, budgets))}")


# One step of each solver; t is the (N,) float32 time at the start of the step.
def euler_step(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    return x + h * field(x, t)


def midpoint_step(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    k1 = field(x, t)
    return x + h * field(x + 0.5 * h * k1, t + 0.5 * h)


def heun_step(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    k1 = field(x, t)
    k2 = field(x + h * k1, t + h)  # also on the last step: the budget stays exactly 2 per step
    return x + 0.5 * h * (k1 + k2)


def rk4_step(field: Field, x: torch.Tensor, t: torch.Tensor, h: float) -> torch.Tensor:
    k1 = field(x, t)
    k2 = field(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = field(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = field(x + h * k3, t + h)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


STEP_FUNCTIONS = {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step, "rk4": rk4_step}


def integrate(field: Field, x0: torch.Tensor, nfe: int, solver: str = "euler") -> torch.Tensor:
    """Carry x0 (at t=0) to t=1 with exactly `nfe` calls of field(x, t), t float32 (N,)."""
    steps = num_steps(nfe, solver)
    step, h, x = STEP_FUNCTIONS[solver], 1.0 / steps, x0
    for k in range(steps):
        # k / steps from Python floats: the grid is exact and building it needs no host sync
        t = torch.full((x0.shape[0],), k / steps, dtype=torch.float32, device=x0.device)
        x = step(field, x, t, h)
    return x


def guided_field(model: torch.nn.Module, cond: torch.Tensor, cfg: float,
                 null: torch.Tensor | None = None) -> Field:
    """The field the solver sees for one batch: v(x, t, c), or its guided mix when cfg != 1,
    v_uncond + cfg (v_cond - v_uncond), both halves in one batched call."""
    on_cuda = cond.device.type == "cuda"
    null = torch.zeros(len(cond), dtype=torch.bool, device=cond.device) if null is None else null
    both_cond, both_null = torch.cat([cond, cond]), torch.cat([null, torch.ones_like(null)])

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # bf16 only inside the network; the integration state stays float32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            if cfg == 1.0:
                return model(x, t, cond, null).float()
            v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), both_cond, both_null).float().chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    return velocity


def prior_noise(prior, cond: torch.Tensor, seeds: list[int], null: torch.Tensor | None = None) -> torch.Tensor:
    """x0 (N, C, H, W) float32 on cond's device; row j drawn from prior(cond[j]) with seeds[j].
    One generator per image: an image's noise does not depend on the batch it lands in."""
    generator = torch.Generator(cond.device)
    return torch.cat([prior.sample(cond[j:j + 1], generator.manual_seed(int(seeds[j])),
                                   None if null is None else null[j:j + 1])
                      for j in range(len(cond))]).float()


def solve(model: torch.nn.Module, prior, cond: torch.Tensor, seeds: list[int], calls: int, solver: str,
          cfg: float = 1.0, null: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1) float32 for one batch on cond's device: x0 from the prior with one seed per image,
    x1 its ODE solution with `calls` velocity calls."""
    x0 = prior_noise(prior, cond, seeds, null)
    if cond.device.type == "cuda":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    return x0, integrate(guided_field(model, cond, cfg, null), x0, calls, solver)


@torch.no_grad()  # not inference_mode: the prior caches tables made here for later training use
def generate(model: torch.nn.Module, prior, cond: torch.Tensor, seeds: list[int] | torch.Tensor,
             nfe: int, solver: str = "euler", cfg: float = 1.0, batch_size: int = 256,
             device: torch.device | str | None = None, progress: bool = False,
             null: torch.Tensor | None = None) -> torch.Tensor:
    """Images (N, C, H, W) uint8 for conditions `cond` (class ids (N,) or vectors (N, E)); image i
    starts from prior noise seeded by seeds[i]. null (N,) bool marks unconditional images. nfe
    counts both halves of a guided evaluation. The model is used as given (eval mode, on `device`).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cond = as_condition(cond, model.num_classes, model.cond_dim)
    seeds = [int(seed) for seed in seeds]
    if len(seeds) != len(cond):
        raise ValueError(f"need one seed per condition: got {len(seeds)} seeds for {len(cond)} conditions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    null = torch.zeros(len(cond), dtype=torch.bool) if null is None else torch.as_tensor(null, dtype=torch.bool)
    guided = cfg != 1.0
    calls = num_steps(nfe, solver, 2 if guided else 1) * SOLVERS[solver]  # velocity calls
    images = []
    for start in tqdm(range(0, len(cond), batch_size), desc="sampling", disable=not progress):
        batch_cond, batch_null = cond[start:start + batch_size].to(device), null[start:start + batch_size].to(device)
        _, x1 = solve(model, prior, batch_cond, seeds[start:start + batch_size], calls, solver, cfg, batch_null)
        images.append(data.to_uint8(x1).cpu())  # one sync per batch, none inside the solver
    if not images:
        return torch.zeros((0, *prior.shape), dtype=torch.uint8)
    return torch.cat(images).contiguous()


# ----------------------------------------------------------------------------- reflow pairs
# Reflow (Liu et al. 2022, "Flow Straight and Fast", Sec. 2.3) trains a new flow on the pairs
# (x0, x1 = ODE_teacher(x0)) of a trained one; train.py --pairs trains on what this writes.

def pair_conditions(config: dict, count: int, seed: int) -> torch.Tensor:
    """The condition of each pair: class ids cycling 0..K-1 (class-balanced, as the metrics draw
    them); condition vectors: the teacher's training rows in an order drawn from the seed."""
    if not config.get("cond_dim", 0):
        return torch.arange(count) % config["num_classes"]
    train_split = data.load_dataset(config["dataset"], config.get("data_dir"), "train",
                                    **config.get("dataset_options", {}))
    rows = min(len(train_split), config.get("max_images") or len(train_split))
    order = np.random.default_rng([seed, rows]).permutation(rows)
    return as_condition(train_split.get(order[np.arange(count) % rows])[1], 0, config["cond_dim"])


@torch.no_grad()
def make_pairs(model: torch.nn.Module, prior, config: dict, teacher: Path, folder: str | Path, count: int,
               nfe: int, solver: str = "midpoint", cfg: float = 1.0, seed: int = 0, chunk: int = 1024,
               batch_size: int = 256, device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Write `count` reflow pairs of the teacher (model, prior, config: load_checkpoint's) to
    folder, chunk by chunk (plumbing/pairs.py); a folder a killed run left is continued. Pair j
    starts from prior noise seeded conditions.pair_seed(seed, j) (disjoint from every sample and
    metric seed); x1 is the teacher's solution with `solver` in exactly `nfe` evaluations, with
    guidance cfg baked in (as InstaFlow does). Returns pairs.json's record; memory: one chunk."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    calls = num_steps(nfe, solver, 1 if cfg == 1.0 else 2) * SOLVERS[solver]
    spec = {"kind": pairs.KIND, "version": pairs.VERSION, "count": count, "chunk": chunk, "seed": seed,
            "teacher": {"checkpoint": str(Path(teacher).resolve()), "sha256": pairs.sha256_of(teacher),
                        "step": config.get("step")},
            "solver": solver, "nfe": nfe, "cfg": cfg, "run": {key: config.get(key) for key in pairs.RUN_FIELDS},
            **{key: config.get(key, 0) for key in ("dataset", "image_size", "channels", "num_classes", "cond_dim",
                                                   "prior", "prior_options")}}
    todo = pairs.begin(folder, spec)
    cond_all = pair_conditions(config, count, seed)
    left = sum(len(pairs.chunk_rows(spec, index)) for index in todo)
    bar = tqdm(total=count, initial=count - left, unit="pair", desc=f"pairs ({solver}, NFE {nfe})",
               disable=not progress, dynamic_ncols=True)
    start_time = time.perf_counter()
    for index in todo:
        rows = pairs.chunk_rows(spec, index)
        seeds = [pair_seed(seed, j) for j in rows]
        x0s, x1s = [], []
        for first in range(0, len(rows), batch_size):
            cond = cond_all[rows.start + first:min(rows.start + first + batch_size, rows.stop)].to(device)
            x0, x1 = solve(model, prior, cond, seeds[first:first + batch_size], calls, solver, cfg)
            x0s.append(x0.cpu())
            x1s.append(x1.cpu())
            bar.update(len(cond))
        pairs.write_chunk(folder, index, torch.cat(x0s), torch.cat(x1s), cond_all[rows.start:rows.stop], seeds)
    bar.close()
    spec = pairs.read_spec(folder)
    spec["pairs_per_second"] = left / max(time.perf_counter() - start_time, 1e-9) if left else None
    return spec


def load_checkpoint(path: str | Path, device: torch.device | str) -> tuple[torch.nn.Module, object, dict]:
    """(model with the EMA weights in eval mode on device, the checkpoint's own prior, config)."""
    path, device = Path(path), torch.device(device)
    path = path / "ckpt.pt" if path.is_dir() else path  # a run's folder: its checkpoint
    hint = "train one first (python train.py) or pass --ckpt PATH"
    checkpoint = checks.load_torch(path, "checkpoint", hint, keys=("ema", "config", "prior"))
    config = checks.require_keys(checkpoint["config"], ("preset", "image_size", "channels", "num_classes"),
                                 path, "train.py checkpoint (its config)", hint)
    if config["preset"] not in unet.PRESETS:
        raise ValueError(f"checkpoint {path} uses preset {config['preset']!r}, which this unet.py does not have")
    model = unet.build_unet(config["preset"], config["image_size"], config["channels"], config["num_classes"],
                            config.get("cond_dim", 0))
    # a torch.compile'd module saves its weights under "_orig_mod."; the plain UNet does not
    ema = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["ema"].items()}
    try:
        model.load_state_dict(ema, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        if len(detail) > 240:
            detail = detail[:237] + "..."
        raise ValueError(f"checkpoint {path} does not match preset {config['preset']!r} (was unet.py changed "
                         f"since it was trained? sample with that version): {detail}") from None
    bad = [name for name, value in model.state_dict().items() if value.is_floating_point()
           and not torch.isfinite(value).all()]
    if bad:  # would give all-black images and exit 0
        raise ValueError(f"checkpoint {path} has non-finite (NaN/inf) EMA weights in {bad[0]}"
                         f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}: the run diverged before "
                         f"it was saved; use an earlier checkpoint or retrain with a lower --lr")
    try:
        prior = prior_from_state(checkpoint["prior"]["state"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path}: its prior state is incomplete ({checks.first_line(err)}); {hint}") from None
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, prior, {**config, "class_names": checkpoint.get("class_names") or [], "step": checkpoint.get("step")}


def load_conditions(args: argparse.Namespace, config: dict) -> tuple[torch.Tensor, list[int]]:
    """(one condition per row, its id for the seeds): class ids from --classes; vectors from
    --cond-file (an .npy of (M, E)) or the first --conditions of the dataset's held-out split."""
    if not config.get("cond_dim", 0):
        if args.cond_file:
            raise ValueError("--cond-file is for checkpoints trained on condition vectors; this one takes "
                             "class ids: use --classes")
        classes = parse_classes(args.classes, config["num_classes"])
        return torch.tensor(classes, dtype=torch.long), classes
    if args.classes:
        raise ValueError("--classes is for class-conditional checkpoints; this one takes condition vectors: "
                         "use --cond-file FILE.npy or --conditions M (from the held-out split)")
    if args.cond_file:
        vectors = read_vectors(args.cond_file, config["cond_dim"])
    else:
        checks.check_at_least(args.conditions, 1, "--conditions")
        held_out = data.load_dataset(config["dataset"], config.get("data_dir"), "test",
                                     **config.get("dataset_options", {}))
        vectors = as_condition(first_conditions(held_out, args.conditions), 0, config["cond_dim"])
    return vectors, list(range(len(vectors)))


def row_names(config: dict, ids: list[int]) -> dict[int, str]:
    """What the grid's rows are called: "3 circle" (the dataset's class names), or "cond 3" (the
    condition's row in --cond-file or the held-out split)."""
    if config.get("cond_dim", 0):
        return {i: f"cond {i}" for i in ids}
    names = config.get("class_names") or []
    return {i: f"{i} {names[i]}" if i < len(names) else str(i) for i in ids}


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint written by train.py (or its run's folder)")
    parser.add_argument("--nfe", type=checks.positive_int, default=None,
                        help="network evaluations per image, cfg: both halves (default: 8; with --pairs 32)")
    parser.add_argument("--solver", default=None, choices=list(SOLVERS), help="default: euler; with --pairs midpoint")
    parser.add_argument("--n", type=checks.positive_int, default=8, help="images per class (or per condition vector)")
    parser.add_argument("--classes", default=None, help="comma-separated class ids (default: all)")
    parser.add_argument("--cond-file", default=None, help="vector checkpoints: an .npy of (M, E) conditions")
    parser.add_argument("--conditions", type=checks.positive_int, default=10,
                        help="vector checkpoints without --cond-file: the first M of the held-out split")
    parser.add_argument("--seed", type=checks.seed_int, default=0,
                        help="image j of condition c uses image_seed(seed, c, j)")
    parser.add_argument("--batch-size", type=checks.positive_int, default=256)
    parser.add_argument("--cfg", type=checks.finite_float, default=1.0, help="guidance weight w; 1 = no guidance")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out-png", default=None, help="default: next to the checkpoint")
    parser.add_argument("--out-npz", default=None, help="default: next to the checkpoint")
    parser.add_argument("--pairs", default=None, metavar="DIR",
                        help="instead of images: write --count reflow pairs (x0, the teacher's x1) to DIR for "
                             "train.py --pairs; a stopped run continues")
    parser.add_argument("--count", type=checks.positive_int, default=4096, help="with --pairs: how many pairs")
    parser.add_argument("--chunk", type=checks.positive_int, default=1024,
                        help="with --pairs: pairs per file (what a stopped run may lose; the memory it takes)")
    args = parser.parse_args(argv)
    if Path(args.ckpt).is_dir():  # a run's folder: its checkpoint, and the outputs beside it
        args.ckpt = str(Path(args.ckpt) / "ckpt.pt")
    args.nfe = args.nfe or (32 if args.pairs else 8)
    args.solver = args.solver or ("midpoint" if args.pairs else "euler")
    if args.pairs:
        return main_pairs(args)

    checks.check_finite(args.cfg, "--cfg", "give a number such as 1 (no guidance) or 2")
    num_steps(args.nfe, args.solver, 1 if args.cfg == 1.0 else 2)  # fail on a bad budget before loading
    checks.check_at_least(args.n, 1, "--n")
    checks.check_at_least(args.batch_size, 1, "--batch-size")
    device = checks.resolve_device(args.device)
    checks.set_cpu_threads(device)
    stem = (f"samples_{args.solver}_nfe{args.nfe}" + (f"_cfg{args.cfg:g}" if args.cfg != 1.0 else "")
            + f"_n{args.n}" + (f"_seed{args.seed}" if args.seed else ""))  # other runs keep their files
    model, prior, config = load_checkpoint(args.ckpt, device)
    check_guidance(args.cfg, config, args.ckpt)
    conditions, ids = load_conditions(args, config)
    # both outputs are checked before the sampling starts, not after it
    out_png = outputs.check_out_file(args.out_png or Path(args.ckpt).parent / f"{stem}.png", "--out-png",
                                    readers.IMAGE_SUFFIXES)
    out_npz = outputs.check_out_file(args.out_npz or Path(args.ckpt).parent / f"{stem}.npz", "--out-npz", (".npz",))
    cond, row_ids, seeds = per_condition(conditions, ids, args.n, args.seed)
    images = generate(model, prior, cond, seeds, args.nfe, args.solver, args.cfg, args.batch_size, device,
                      progress=True)
    # the .npz first, then its grid, as one set: a kill never leaves a grid of other images beside it
    rows, columns = samplefiles.save_samples_and_grid(out_npz, out_png, images, row_ids,
                                                      cond if config.get("cond_dim", 0) else None,
                                                      row_names(config, ids), "--out-npz", "--out-png")
    kind = "conditions" if config.get("cond_dim", 0) else "classes"
    print(f"wrote {out_npz} ({len(ids)} {kind} x {args.n} = {len(images)} images) and {out_png} (a grid of "
          f"{rows} rows x {columns} images{f', the first {rows} {kind}' if len(ids) > rows else ''}"
          f"{f', the first {columns} of each' if args.n > columns else ''})")


def main_pairs(args: argparse.Namespace) -> None:
    """sample.py --pairs DIR: the teacher's reflow pairs instead of images."""
    used = [flag for flag, value in (("--classes", args.classes), ("--cond-file", args.cond_file),
                                     ("--out-png", args.out_png), ("--out-npz", args.out_npz)) if value]
    if used:
        raise ValueError(f"--pairs makes pairs of every condition and writes only DIR: drop {', '.join(used)}")
    if args.seed > MAX_PAIR_SEED:
        raise ValueError(f"--seed must be at most {MAX_PAIR_SEED} with --pairs (pair seeds must fit 64 bits), "
                         f"got {args.seed}")
    checks.check_finite(args.cfg, "--cfg", "give a number such as 1 (no guidance) or 2")
    num_steps(args.nfe, args.solver, 1 if args.cfg == 1.0 else 2)
    device = checks.resolve_device(args.device)
    checks.set_cpu_threads(device)
    model, prior, config = load_checkpoint(args.ckpt, device)
    check_guidance(args.cfg, config, args.ckpt)
    spec = make_pairs(model, prior, config, Path(args.ckpt), args.pairs, args.count, args.nfe, args.solver, args.cfg,
                      args.seed, args.chunk, args.batch_size, device)
    rate = spec["pairs_per_second"]
    speed = f" at {rate:.1f} pairs/s = {rate * args.nfe:.0f} network evaluations/s" if rate else " (all were made before)"
    print(f"wrote {args.count} pairs to {args.pairs}/{speed}; train on them: python train.py --pairs {args.pairs} "
          f"--out OUT")


if __name__ == "__main__":
    checks.run_main(main)
