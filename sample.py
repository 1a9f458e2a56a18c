"""Sample a trained flow: integrate dx/dt = v(x, t, c) from the condition's prior to data.

A sample with condition c (a class id, or a vector such as an embedding) starts at
x(0) ~ p0(. | c) (the class's own Gaussian for the "class" prior, N(P(c), sigma^2 I) for the
"mapper", N(0, I) for the "gaussian" one) and is carried to x(1) by the learned velocity
field. We use
fixed-step explicit Runge-Kutta on a time grid 0 = t_0 < t_1 < ... < t_K = 1, step k from t = t_k
with h = t_{k+1} - t_k (the uniform grid t_k = k / K, h = 1 / K, unless --grid says otherwise):

    euler     x += h k1                                  k1 = v(x, t)
    midpoint  x += h v(x + h/2 k1, t + h/2)
    heun      x += h/2 (k1 + v(x + h k1, t + h))         (explicit trapezoid, no reuse)
    rk4       x += h/6 (k1 + 2 k2 + 2 k3 + k4)           (the classical one)

The grids (our t runs from the prior, t = 0, to the data, t = 1):

    uniform   t_k = k / K
    shift:s   t_k = u / (s - (s - 1) u), u = k / K: SD3's time shift (Esser et al. 2024) in our
              direction; s > 1 puts the short steps near the prior, s < 1 near the data
    edm:rho   EDM's rho grid (Karras et al. 2022) over sigma = (1 - t) / t, i.e. t = 1 / (1 + sigma)
    FILE.json a grid fitted to this checkpoint, solver and NFE (`python sample.py fit`, at the end)

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
import json
import sys
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
                                 parse_classes, per_condition, pilot_seed, read_vectors)

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


# ----------------------------------------------------------------------------- time grids
# A grid is K + 1 Python floats 0 = t_0 < ... < t_K = 1 (floats: building each step's t needs no
# host sync). Where the short steps go matters at few steps: the error of a step grows with the
# curvature of the paths it crosses.

def uniform_grid(steps: int) -> list[float]:
    return [k / steps for k in range(steps + 1)]


def shift_grid(steps: int, s: float = 3.0) -> list[float]:
    """SD3's time shift (Esser et al. 2024, s = 3 at 1024 px). SD3's time u runs from the data (0)
    to the noise (1) and it samples at u' = s u / (1 + (s - 1) u), so for s > 1 its short steps
    are near the noise. Our t = 1 - u runs the other way: t' = 1 - u' = t / (s - (s - 1) t), the
    same s meaning the same grid: s > 1 short steps near the prior (t = 0), s < 1 near the data.
    (The formula applied to our t as it stands, s t / (1 + (s - 1) t), is shift:1/s.)"""
    times = [t / (s - (s - 1) * t) for t in uniform_grid(steps)]
    return [0.0, *times[1:-1], 1.0]  # the ends exactly, whatever the rounding


EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0  # EDM's defaults (images in [-1, 1], as ours)


def edm_grid(steps: int, rho: float = 7.0) -> list[float]:
    """EDM's grid (Karras et al. 2022, eq. 5): sigma_k = (a + k/K (b - a))^rho, a = sigma_max^(1/rho),
    b = sigma_min^(1/rho), mapped to our time by t = 1 / (1 + sigma). Why that map: our path
    x_t = (1 - t) x0 + t x1 divided by t is x1 + sigma x0 with sigma = (1 - t) / t, EDM's state
    at noise level sigma (the relation of rectified flow to the VE ODE), and a solve is the same
    ODE in either time. EDM runs from sigma_max (all but pure noise) towards sigma_min and ends
    with one more step to 0; ours starts at the prior itself and ends at the data, so sigma_max
    is taken as t = 0 and sigma_min as t = 1 (not a near-wasted last step from 0.998 to 1), and
    the K - 1 interior times are the rho spacing between them: rho > 1 short steps near the data."""
    a, b = EDM_SIGMA_MAX ** (1 / rho), EDM_SIGMA_MIN ** (1 / rho)
    interior = [1 / (1 + (a + k / steps * (b - a)) ** rho) for k in range(1, steps)]
    return [0.0, *interior, 1.0]


GRIDS = {"uniform": (uniform_grid, None), "shift": (shift_grid, 3.0), "edm": (edm_grid, 7.0)}  # name: (grid, default)


def parse_grid(spec: str) -> tuple[str, float | None]:
    """"shift:3" -> ("shift", 3.0); a name alone takes its default; ValueError naming the fix."""
    name, sep, value = spec.strip().partition(":")
    if name not in GRIDS:
        raise ValueError(f"--grid {spec!r}: unknown grid; choose one of {', '.join(GRIDS)} (NAME or NAME:VALUE, "
                         "e.g. shift:3, edm:7) or a fitted grid's .json file (python sample.py fit)")
    default = GRIDS[name][1]
    if default is None:
        if sep:
            raise ValueError(f"--grid {spec!r}: {name} takes no value; use --grid {name}")
        return name, None
    try:
        param = float(value) if sep else default
    except ValueError:
        raise ValueError(f"--grid {spec!r}: {value!r} is not a number; e.g. --grid {name}:{default:g}") from None
    if not (param > 0 and param < float("inf")):
        raise ValueError(f"--grid {spec!r}: the {name} grid's value must be a positive number; e.g. "
                         f"--grid {name}:{default:g}")
    return name, param


def named_grid(spec: str, steps: int) -> list[float]:
    """The grid called `spec` ("uniform", "shift:3", "edm", ...) with `steps` steps."""
    name, param = parse_grid(spec)
    grid, _ = GRIDS[name]
    return check_grid(grid(steps) if param is None else grid(steps, param), steps, spec)


def check_grid(grid, steps: int, what: str = "the grid") -> list[float]:
    """steps + 1 finite times from exactly 0 to exactly 1, strictly increasing, as Python floats."""
    times = [float(t) for t in (grid.tolist() if isinstance(grid, torch.Tensor) else grid)]
    if len(times) != steps + 1:
        raise ValueError(f"{what} has {len(times)} times, but {steps} steps need {steps + 1} (0 = t_0 < ... < t_K = 1)")
    if times[0] != 0.0 or times[-1] != 1.0:
        raise ValueError(f"{what} must start at t = 0 (the prior) and end at t = 1 (the data), got "
                         f"{times[0]:g} .. {times[-1]:g}")
    if not all(a < b for a, b in zip(times, times[1:])):  # also refuses NaN
        raise ValueError(f"{what} must increase strictly from 0 to 1, got {', '.join(f'{t:.4g}' for t in times)}")
    return times


def integrate(field: Field, x0: torch.Tensor, nfe: int, solver: str = "euler", grid=None) -> torch.Tensor:
    """Carry x0 (at t=0) to t=1 with exactly `nfe` calls of field(x, t), t float32 (N,), on `grid`
    (steps + 1 times from 0 to 1, a list or tensor; default uniform)."""
    steps = num_steps(nfe, solver)
    times = uniform_grid(steps) if grid is None else check_grid(grid, steps)
    # The uniform grid steps by 1/steps exactly, as it always has: (k + 1)/steps - k/steps can be
    # an ulp off in float64, which after h / 6 (rk4) may change a float32 bit.
    uniform = times == uniform_grid(steps)
    step, x = STEP_FUNCTIONS[solver], x0
    for k in range(steps):
        t = torch.full((x0.shape[0],), times[k], dtype=torch.float32, device=x0.device)
        x = step(field, x, t, 1.0 / steps if uniform else times[k + 1] - times[k])
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
          cfg: float = 1.0, null: torch.Tensor | None = None, times=None,
          ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1) float32 for one batch on cond's device: x0 from the prior with one seed per image,
    x1 its ODE solution with `calls` velocity calls on the grid `times` (resolve_grid's: times, or
    {class id: times} with ids the batch's class ids on the host)."""
    x0 = prior_noise(prior, cond, seeds, null)
    if cond.device.type == "cuda":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    if not isinstance(times, dict):
        return x0, integrate(guided_field(model, cond, cfg, null), x0, calls, solver, times)
    x1 = torch.empty_like(x0)  # a per-class grid: each class's rows on their own grid
    for c in sorted(set(ids.tolist())):  # ids on the host: no sync
        rows = (ids == c).nonzero()[:, 0].to(cond.device)
        x1[rows] = integrate(guided_field(model, cond[rows], cfg, None if null is None else null[rows]), x0[rows],
                             calls, solver, times[c])
    return x0, x1


@torch.no_grad()  # not inference_mode: the prior caches tables made here for later training use
def generate(model: torch.nn.Module, prior, cond: torch.Tensor, seeds: list[int] | torch.Tensor,
             nfe: int, solver: str = "euler", cfg: float = 1.0, batch_size: int = 256,
             device: torch.device | str | None = None, progress: bool = False,
             null: torch.Tensor | None = None, grid=None) -> torch.Tensor:
    """Images (N, C, H, W) uint8 for conditions `cond` (class ids (N,) or vectors (N, E)); image i
    starts from prior noise seeded by seeds[i]. null (N,) bool marks unconditional images. nfe
    counts both halves of a guided evaluation. The model is used as given (eval mode, on `device`).
    grid: None (uniform), a grid's name ("shift:3"), its times, or {class id: times} (a per-class
    fitted grid: each class is solved on its own grid).
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
    steps = num_steps(nfe, solver, 2 if guided else 1)
    calls, times = steps * SOLVERS[solver], resolve_grid(grid, steps, cond)  # velocity calls
    images = []
    for start in tqdm(range(0, len(cond), batch_size), desc="sampling", disable=not progress):
        batch_cond, batch_null = cond[start:start + batch_size].to(device), null[start:start + batch_size].to(device)
        _, x1 = solve(model, prior, batch_cond, seeds[start:start + batch_size], calls, solver, cfg, batch_null, times,
                      cond[start:start + batch_size])
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
            "teacher": {"checkpoint": str(Path(teacher).resolve()), "sha256": checks.file_sha256(teacher),
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


def resolve_grid(grid, steps: int, cond: torch.Tensor | None = None):
    """generate's grid as times (a list) or {class id: times}, checked for `steps` steps and, per
    class, for every class in cond."""
    if grid is None or isinstance(grid, str):
        return named_grid(grid or "uniform", steps)
    if not isinstance(grid, dict):
        return check_grid(grid, steps)
    if cond is not None and (cond.ndim != 1 or cond.is_floating_point()):
        raise ValueError("a per-class grid needs class ids; this model takes condition vectors")
    missing = sorted(set(cond.tolist()) - set(grid)) if cond is not None else []
    if missing:
        raise ValueError(f"the per-class grid has no times for class {missing[0]}: fit it on every class sampled")
    return {int(c): check_grid(times, steps, f"the grid of class {c}") for c, times in grid.items()}


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
    parser.add_argument("--grid", default="uniform", help=f"time grid: {', '.join(GRIDS)} (NAME or NAME:VALUE, e.g. "
                        "shift:3, edm:7), or a fitted grid's .json (python sample.py fit)")
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
    fitted = args.grid.endswith(".json")
    if not fitted:
        parse_grid(args.grid)  # a bad name fails before loading too
    checks.check_at_least(args.n, 1, "--n")
    checks.check_at_least(args.batch_size, 1, "--batch-size")
    device = checks.resolve_device(args.device)
    checks.set_cpu_threads(device)
    stem = (f"samples_{args.solver}_nfe{args.nfe}" + (f"_cfg{args.cfg:g}" if args.cfg != 1.0 else "")
            + (f"_grid-{Path(args.grid).stem if fitted else args.grid.replace(':', '')}" if args.grid != "uniform" else "")
            + f"_n{args.n}" + (f"_seed{args.seed}" if args.seed else ""))  # other runs keep their files
    model, prior, config = load_checkpoint(args.ckpt, device)
    grid = (load_fitted_grid(args.grid, checks.file_sha256(args.ckpt), args.nfe, args.solver, args.cfg) if fitted
            else args.grid)
    check_guidance(args.cfg, config, args.ckpt)
    conditions, ids = load_conditions(args, config)
    # both outputs are checked before the sampling starts, not after it
    out_png = outputs.check_out_file(args.out_png or Path(args.ckpt).parent / f"{stem}.png", "--out-png",
                                    readers.IMAGE_SUFFIXES)
    out_npz = outputs.check_out_file(args.out_npz or Path(args.ckpt).parent / f"{stem}.npz", "--out-npz", (".npz",))
    cond, row_ids, seeds = per_condition(conditions, ids, args.n, args.seed)
    images = generate(model, prior, cond, seeds, args.nfe, args.solver, args.cfg, args.batch_size, device,
                      progress=True, grid=grid)
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
                                     ("--out-png", args.out_png), ("--out-npz", args.out_npz),
                                     ("--grid", args.grid != "uniform")) if value]
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


# ----------------------------------------------------------------------------- fitted grids
#
#     python sample.py fit --ckpt RUN --nfe 4 [--solver euler] [--objective local] [--per-class]
#
# A grid fitted to one checkpoint, solver and NFE (Align Your Steps, Sabour et al. 2024; BOSS,
# Nguyen et al. 2024). Here and not in a module of its own: it is the grid the solvers above take,
# chosen for one model, and sampling (--grid FILE.json) reads what it writes. A pilot set of prior
# draws, `pilot` per class with the seeds conditions.pilot_seed (a seed space no evaluation draws
# from), is solved by a teacher (rk4, TEACHER_SUBSTEPS steps per interval of a fine uniform grid of
# at least `points` intervals, a multiple of K), recording its states x* at the fine times. The K - 1
# interior times are chosen among the fine ones, for one objective (D pixels per image):
#
#   local     sum_k E||step(x*(t_k), t_k -> t_k+1) - x*(t_k+1)||^2 / D: each step's error started
#             from the teacher's own state (BOSS's local error), minimized exactly over the fine
#             grid by dynamic programming; Euler's first stages are the teacher's, so it is cheap.
#   endpoint  E||x_K - x*(1)||^2 / D, the error of the whole solve at the end (the baseline):
#             coordinate descent from the uniform grid, each interior time tried at every fine
#             time between its neighbours, until a sweep changes nothing.
#
# Both end no worse than uniform on the pilot (the fine grid holds the uniform one). Neither looks
# at an evaluation's features (that would tune the grid to the metric); whether a fitted grid
# beats uniform on held-out samples is a measurement (bench/RESULTS.md), not a given: a grid
# closer to the teacher in pixels can be blurrier.

FIT_OBJECTIVES = ("local", "endpoint")
TEACHER_SUBSTEPS = 1  # teacher rk4 steps per fine interval (32 intervals: 128 NFE)
GRID_FILE_KIND = "condprior fitted time grid"


def fine_grid(steps: int, points: int) -> list[float]:
    """The uniform grid the fitted times are chosen from: at least `points` intervals, a multiple of steps."""
    return uniform_grid(steps * -(-points // steps))


def reusing(field: Field, x: torch.Tensor, v: torch.Tensor) -> Field:
    """field, with its value v at x itself already known (a step's first stage is not evaluated again)."""
    return lambda y, t: v if y is x else field(y, t)


def mean_square(difference: torch.Tensor) -> float:
    """E||d||^2 / D over the batch (float64)."""
    return float(difference.double().pow(2).flatten(1).sum(1).mean()) / difference[0].numel()


@torch.no_grad()
def teacher_solve(field: Field, x0: torch.Tensor, fine: list[float], substeps: int = TEACHER_SUBSTEPS, bar=None
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(x* at every fine time, v(x*, t) at every fine time but the last): rk4, `substeps` per interval."""
    states, velocities, x = [x0], [], x0
    for k in range(len(fine) - 1):
        h = (fine[k + 1] - fine[k]) / substeps
        for j in range(substeps):
            t = torch.full((len(x0),), fine[k] + j * h, dtype=torch.float32, device=x0.device)
            v = field(x, t)
            if j == 0:
                velocities.append(v)
            x = rk4_step(reusing(field, x, v), x, t, h)
        states.append(x)
        if bar is not None:
            bar.update(1)
    return states, velocities


@torch.no_grad()
def local_errors(field: Field, states: list[torch.Tensor], velocities: list[torch.Tensor], fine: list[float],
                 solver: str, bar=None) -> torch.Tensor:
    """errors[i, j] (i < j): E||one solver step from x*(t_i) to t_j - x*(t_j)||^2 / D; inf elsewhere."""
    last = len(fine) - 1
    errors = torch.full((last + 1, last + 1), float("inf"), dtype=torch.float64)
    for i in range(last):
        t = torch.full((len(states[i]),), fine[i], dtype=torch.float32, device=states[i].device)
        for j in range(i + 1, last + 1):
            x = STEP_FUNCTIONS[solver](reusing(field, states[i], velocities[i]), states[i], t, fine[j] - fine[i])
            errors[i, j] = mean_square(x - states[j])
        if bar is not None:
            bar.update(1)
    return errors


def best_path(errors: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """The fine indices 0 = i_0 < ... < i_K = last minimizing sum_k errors[i_k, i_k+1] (dynamic
    programming: cost[k][j] = min_i cost[k-1][i] + errors[i, j]), and that sum."""
    last = errors.shape[0] - 1
    cost = torch.full((steps + 1, last + 1), float("inf"), dtype=torch.float64)
    back = torch.zeros((steps + 1, last + 1), dtype=torch.long)
    cost[0, 0] = 0.0
    for k in range(1, steps + 1):
        for j in range(1, last + 1):
            total = cost[k - 1, :j] + errors[:j, j]
            back[k, j] = int(total.argmin())
            cost[k, j] = total[back[k, j]]
    path = [last]
    for k in range(steps, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1], float(cost[steps, last])


@torch.no_grad()
def endpoint_error(field: Field, x0: torch.Tensor, target: torch.Tensor, times: list[float], solver: str) -> float:
    return mean_square(integrate(field, x0, (len(times) - 1) * SOLVERS[solver], solver, times) - target)


def best_endpoint(field: Field, x0: torch.Tensor, target: torch.Tensor, fine: list[float], steps: int,
                  solver: str, bar=None, max_sweeps: int = 8) -> tuple[list[int], float]:
    """Coordinate descent on the fine indices from the uniform grid's: each interior index tried
    at every fine index between its neighbours; stops when a sweep changes nothing."""
    per = (len(fine) - 1) // steps
    path = [k * per for k in range(steps + 1)]
    best = endpoint_error(field, x0, target, [fine[i] for i in path], solver)
    for _ in range(max_sweeps):
        before = list(path)
        for k in range(1, steps):
            for i in range(path[k - 1] + 1, path[k + 1]):
                trial = path[:k] + [i] + path[k + 1:]
                if i != path[k] and (error := endpoint_error(field, x0, target, [fine[j] for j in trial],
                                                             solver)) < best:
                    best, path = error, trial
        if bar is not None:
            bar.update(1)
        if path == before:
            break
    return path, best


def fit_times(field: Field, x0: torch.Tensor, steps: int, solver: str, objective: str, points: int,
              bar=None, substeps: int = TEACHER_SUBSTEPS) -> tuple[list[float], float, float]:
    """(the fitted grid, its objective on the pilot x0, the uniform grid's) for one field and pilot."""
    if objective not in FIT_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(FIT_OBJECTIVES)}")
    fine = fine_grid(steps, points)
    states, velocities = teacher_solve(field, x0, fine, substeps, bar)
    uniform = list(range(0, len(fine), (len(fine) - 1) // steps))
    if objective == "local":
        errors = local_errors(field, states, velocities, fine, solver, bar)
        path, value = best_path(errors, steps)
        baseline = float(sum(errors[a, b] for a, b in zip(uniform, uniform[1:])))
    else:
        baseline = endpoint_error(field, x0, states[-1], [fine[i] for i in uniform], solver)
        path, value = best_endpoint(field, x0, states[-1], fine, steps, solver, bar)
    return [fine[i] for i in path], value, baseline


def fit_grid(model: torch.nn.Module, prior, ckpt_sha256: str, nfe: int, solver: str = "euler", cfg: float = 1.0,
             objective: str = "local", per_class: bool = False, pilot: int = 16, points: int = 32,
             device: torch.device | str | None = None, progress: bool = False) -> dict:
    """The grid file's record: a grid fitted on `pilot` draws of every class (pooled, or each class
    on its own with per_class), for this checkpoint, solver, NFE and guidance weight."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if model.cond_dim:
        raise ValueError("fitting a grid needs a class-conditional checkpoint; this one takes condition vectors")
    steps = num_steps(nfe, solver, 2 if cfg != 1.0 else 1)
    if objective not in FIT_OBJECTIVES:
        raise ValueError(f"--objective {objective!r}: choose one of {', '.join(FIT_OBJECTIVES)}")
    checks.check_at_least(pilot, 1, "--pilot")
    checks.check_at_least(points, steps, "--points")
    groups = [[c] for c in range(model.num_classes)] if per_class else [list(range(model.num_classes))]
    fine = fine_grid(steps, points)
    work = len(fine) - 1 + (len(fine) - 1 if objective == "local" else 8)  # per group: teacher steps, then DP
    # rows or coordinate-descent sweeps (at most 8)
    times, values, baselines = {}, {}, {}
    with tqdm(total=len(groups) * work, desc=f"fitting {objective} grid", disable=not progress) as bar:
        for group in groups:
            ids = [c for c in group for _ in range(pilot)]
            cond = torch.tensor(ids, dtype=torch.long, device=device)
            x0 = prior_noise(prior, cond, [pilot_seed(c, j % pilot) for j, c in enumerate(ids)])
            name = str(group[0]) if per_class else "all"
            times[name], values[name], baselines[name] = fit_times(guided_field(model, cond, cfg), x0, steps,
                                                                   solver, objective, points, bar)
            bar.set_postfix(pilot=f"{values[name]:.3g} vs uniform {baselines[name]:.3g}")
    return {"kind": GRID_FILE_KIND, "checkpoint_sha256": ckpt_sha256, "solver": solver, "nfe": nfe, "cfg": cfg,
            "steps": steps, "per_class": per_class, "objective": objective, "pilot_per_class": pilot,
            "pilot_seeds": "conditions.pilot_seed(class, j), j < pilot_per_class",
            "teacher": f"rk4, {TEACHER_SUBSTEPS} steps per interval of the uniform {len(fine) - 1}-interval grid "
                       f"({4 * TEACHER_SUBSTEPS * (len(fine) - 1)} NFE), its states at those {len(fine)} times",
            "times": times, "objective_on_pilot": values, "uniform_on_pilot": baselines}


def load_fitted_grid(path: str | Path, ckpt_sha256: str, nfe: int, solver: str, cfg: float = 1.0):
    """A fitted grid file's times (a list, or {class id: times}), refused in one line when it was
    fitted for another checkpoint, solver, NFE or guidance weight."""
    path = Path(path)
    fix = "fit one for it: python sample.py fit --ckpt CKPT --solver SOLVER --nfe N"
    if not path.is_file():
        raise FileNotFoundError(f"--grid {path}: no such file; {fix}")
    try:
        record = json.loads(path.read_text())
        record = record if isinstance(record, dict) and record.get("kind") == GRID_FILE_KIND else None
    except (ValueError, UnicodeDecodeError):
        record = None
    if record is None:
        raise ValueError(f"--grid {path}: not a fitted grid file (python sample.py fit writes them)")
    wanted = {"checkpoint_sha256": ckpt_sha256, "solver": solver, "nfe": nfe, "cfg": cfg}
    wrong = [f"{key} {record.get(key)!r}, not {value!r}" for key, value in wanted.items() if record.get(key) != value]
    if wrong:
        raise ValueError(f"--grid {path} was fitted for another {' / '.join(k.split('_')[0] for k in wanted)}: "
                         f"{'; '.join(wrong)}; {fix.replace('CKPT --solver SOLVER --nfe N', f'CKPT --solver {solver} --nfe {nfe}')}")
    times = record.get("times", {})
    try:
        return list(times["all"]) if not record.get("per_class") else {int(c): list(t) for c, t in times.items()}
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"--grid {path}: its times are incomplete; fit it again") from None


def fit_main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(prog="sample.py fit", description="Fit a time grid to a checkpoint, solver and NFE.")
    parser.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint written by train.py (or its run's folder)")
    parser.add_argument("--nfe", type=checks.positive_int, default=4, help="network evaluations per image (cfg: both halves)")
    parser.add_argument("--solver", default="euler", choices=list(SOLVERS))
    parser.add_argument("--cfg", type=checks.finite_float, default=1.0, help="guidance weight w; 1 = no guidance")
    parser.add_argument("--objective", default="local", choices=list(FIT_OBJECTIVES))
    parser.add_argument("--per-class", action="store_true", help="one grid per class, each on its own pilot")
    parser.add_argument("--pilot", type=checks.positive_int, default=16, help="pilot prior draws per class")
    parser.add_argument("--points", type=checks.positive_int, default=32, help="fine grid intervals the times are chosen from")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", default=None, help="default: grid_SOLVER_nfeN[_cfgW]_OBJECTIVE[_class].json next to the checkpoint")
    args = parser.parse_args(argv)
    if Path(args.ckpt).is_dir():
        args.ckpt = str(Path(args.ckpt) / "ckpt.pt")
    steps = num_steps(args.nfe, args.solver, 1 if args.cfg == 1.0 else 2)  # fail on a bad budget before loading
    checks.check_at_least(args.points, steps, "--points")
    device = checks.resolve_device(args.device)
    checks.set_cpu_threads(device)
    stem = (f"grid_{args.solver}_nfe{args.nfe}" + (f"_cfg{args.cfg:g}" if args.cfg != 1.0 else "")
            + f"_{args.objective}" + ("_class" if args.per_class else ""))
    out = outputs.check_out_file(args.out or Path(args.ckpt).parent / f"{stem}.json", "--out", (".json",))
    model, prior, config = load_checkpoint(args.ckpt, device)
    check_guidance(args.cfg, config, args.ckpt)
    record = fit_grid(model, prior, checks.file_sha256(args.ckpt), args.nfe, args.solver, args.cfg, args.objective,
                      args.per_class, args.pilot, args.points, device, progress=True)
    outputs.write_text(out, json.dumps(record, indent=1) + "\n")
    for name, times in record["times"].items():
        fitted, uniform = record["objective_on_pilot"][name], record["uniform_on_pilot"][name]
        change = f" ({fitted / uniform - 1:+.0%})" if uniform > 0 else ""
        print(f"{name}: {', '.join(f'{t:.4f}' for t in times)}; {args.objective} error on the pilot {fitted:.4g}, "
              f"uniform's {uniform:.4g}{change}")
    print(f"wrote {out}: sample with python sample.py --ckpt {args.ckpt} --solver {args.solver} --nfe {args.nfe} "
          f"--grid {out}")


if __name__ == "__main__":
    checks.run_main(lambda: fit_main(sys.argv[2:]) if sys.argv[1:2] == ["fit"] else main())
