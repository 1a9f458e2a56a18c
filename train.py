"""Train a conditional flow with a condition-specific prior, on one GPU (or a CPU).

One training step, the whole method (prior.py, flow.py, unet.py hold the pieces):

    (x1, c)        a batch of data, uint8 until it reaches the device, then x1 in [-1, 1];
                   c: class ids (N,) or condition vectors (N, E) (--cond, e.g. shapes attributes)
    null           True with probability --label-dropout: the row is unconditional (for guidance)
    x0             ~ prior(c, null, x1)     class: N(mu_c, Sigma_c); gaussian: N(0, I); kmeans:
                                            the component of x1's cluster; mapper: N(P(c), s^2 I);
                                            null rows: the dataset-wide component
                                            (prior(c, no null) with --null-source class)
    x0             re-paired by --coupling   (independent, ot, class_ot within prior.groups)
    t              ~ U[0, 1]                (--t-dist u_shaped: Lee et al. 2024's, flow.sample_t)
    loss           = || v_theta(x_t, t, c, null) - (x1 - x0) ||^2,   x_t = (1 - t) x0 + t x1

Reflow (--pairs DIR, Liu et al. 2022): the batch is (x0, x1, c) from a trained teacher's pairs
(sample.py --pairs: x0 from the teacher's prior, x1 its ODE solution), so x0 is the pair's, not a
fresh draw, and there is no coupling; the run takes the teacher's data, prior and network and by
default starts from its EMA weights (--init). A null row learns the flow from its class's own
prior component (what --null-source class trains), the x0 its pair was drawn from.

then AdamW with warm-up, gradient clipping and an EMA of the weights (the EMA is what
sample.py uses). Everything that is random comes from --seed and is saved in the
checkpoint, and the batch of step s is a function of (seed, s) alone, so a resumed run
gives the losses of the uninterrupted one.

    python train.py                                        # shapes, class prior, CPU or GPU
    python train.py --dataset imagenet64 --data-dir DIR    # the full job on one GPU
    torchrun --nproc_per_node 8 train.py ...               # the same, on 8 GPUs (DDP)
    python train.py --resume                               # continue out/ckpt.pt
    python train.py --pairs out/pairs --out out_reflow     # reflow on a teacher's pairs
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import flow
import sample
import unet
from prior import Prior, prior_from_state
from plumbing import checks, conditions, data, outputs, samplefiles
from plumbing.batches import Prefetcher
from plumbing.checkpoint import prior_to_checkpoint, rng_state, save_checkpoint, set_rng_state
from plumbing.config import (Config, check_config, check_resume_steps, dataset_options, load_resume, parse_args,
                             trim_log, with_pairs, with_preset)
from plumbing.pairs import PairsDataset, read_spec
from plumbing.priorcache import data_fingerprint, fit_prior

DIVERGENCE = 100.0  # a logged loss this many times the lowest one so far counts as diverged


# ----------------------------------------------------------------------------- one step: the method

def train_step(run: Run, images: torch.Tensor, cond: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 batch; returns (loss, grad norm) as device tensors (no sync)."""
    config, device, generator = run.config, run.device, run.generator
    cond = cond.to(device, non_blocking=True)
    null = torch.rand(len(cond), device=device, generator=generator) < config.label_dropout
    if config.pairs:  # reflow: the batch is (x0, x1) pairs of the teacher, x0 drawn from its prior
        x0, x1 = images.to(device, non_blocking=True).unbind(1)
    else:
        x1 = data.to_model(images.to(device, non_blocking=True))  # uint8 pixels -> float32 in [-1, 1]
        # --null-source global: a null row's x0 comes from the dataset-wide component; class: from its
        # own condition's, so the null field is the flow from the whole mixture, the source CFG starts from
        x0 = run.prior.sample(cond, generator, null if config.null_source == "global" else None, x1)
        x0 = couple(run, x0, x1, run.prior.groups(cond, null))
    if device.type == "cuda":
        x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
    t = flow.sample_t(len(cond), device, generator, config.t_dist)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    run.optimizer.zero_grad(set_to_none=True)
    loss = backward(run, x0, x1, cond, null, t)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.model, step, config.ema)
    return loss, grad_norm


def backward(run: Run, x0: torch.Tensor, x1: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
    """flow.flow_loss and its gradient, in --grad-accum slices of the batch whose losses, weighted
    by their share of the batch, add up to the whole batch's mean: the same gradient with 1/N of
    the activations. The random draws above were made for the whole batch, so N changes nothing."""
    n, k = len(cond), run.config.grad_accum  # k <= n (checked at the start): slices of n // k or n // k + 1 rows
    bounds = [i * (n // k) + min(i, n % k) for i in range(k + 1)]
    total = torch.zeros((), device=run.device)
    for index in range(k):
        part = slice(bounds[index], bounds[index + 1])  # a view: no copy of the batch, no index tensor
        # DDP: average the gradients across processes once, after the last slice
        last = index == k - 1
        sync = run.network.no_sync() if hasattr(run.network, "no_sync") and not last else contextlib.nullcontext()
        with sync, torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            loss = flow.flow_loss(run.network, x0[part], x1[part], cond[part], null[part], t[part],
                                  run.config.sigma_min)
            loss = loss * ((part.stop - part.start) / n)
            loss.backward()
        total = total + loss.detach()
    return total


def couple(run: Run, x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """flow.couple on this process's rows; with --couple-global under torchrun every process gathers
    the whole batch, solves the same assignment (the solver is deterministic) and keeps its rows."""
    method = run.config.coupling
    if not (run.config.couple_global and run.world > 1 and method != "independent"):
        return flow.couple(x0, x1, groups, method)
    return couple_global(x0, x1, groups, method, run.rank, run.world)


def couple_global(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor, method: str, rank: int,
                  world: int) -> torch.Tensor:
    def gather(part: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(part) for _ in range(world)]
        dist.all_gather(parts, part.contiguous())
        return torch.cat(parts)

    paired = flow.couple(gather(x0), gather(x1), gather(groups), method)
    return paired.tensor_split(world)[rank]


def learning_rate(step: int, config: Config) -> float:
    return config.lr * min(1.0, (step + 1) / max(config.warmup, 1))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # early on, follow the model closely
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


# ----------------------------------------------------------------------------- the loop

def train(config: Config) -> list[float]:
    """Train the run `config` describes (or continue it: config.resume); returns the logged losses.
    The --out folder holds one run at a time: a second one (or a --resume of this one) is refused."""
    config, checkpoint = checked_config(config)  # nothing is written before the flags are known good
    with outputs.hold_folder(config.out, "--out", int(os.environ.get("RANK", 0))):
        run, dataset, num_images = start_or_resume(config, checkpoint)
        return loop(run, dataset, num_images)


def loop(run: Run, dataset, num_images: int) -> list[float]:
    """Steps run.step + 1 .. --steps: log, check, checkpoint and sample at their cadence."""
    config, out, start = run.config, Path(run.config.out), run.step
    prefetch = Prefetcher(dataset, num_images, start, config.batch_size, config.seed, run.rank, run.world,
                          pin=run.device.type == "cuda")
    log = outputs.LogFile(out / "log.jsonl", start > 0, "--out") if run.rank == 0 else None
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=run.rank != 0,
               desc=f"{config.prior} prior, {config.coupling}", dynamic_ncols=True)
    losses: list[float] = []
    try:
        loss_sum = grad_sum = torch.zeros((), device=run.device)  # summed on the device: no sync per step
        timer, timed_steps = time.perf_counter(), 0
        for step in bar:
            images, cond = prefetch.next()
            loss, grad_norm = train_step(run, images, cond, step)
            loss_sum, grad_sum, timed_steps = loss_sum + loss, grad_sum + grad_norm, timed_steps + 1
            done = step + 1
            save_now = done % config.ckpt_every == 0 or done == config.steps
            if save_now or done % config.log_every == 0:
                if run.world > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= run.world
                mean_loss, mean_grad = (loss_sum / timed_steps).item(), (grad_sum / timed_steps).item()  # the sync
                check_progress(run, mean_loss, mean_grad, done)  # a diverged run stops before it saves
                run.best_loss = min(run.best_loss, mean_loss)
                rate = timed_steps * config.batch_size / (time.perf_counter() - timer)
                losses.append(mean_loss)
                if log:
                    log.write(json.dumps({"step": done, "loss": mean_loss, "lr": learning_rate(step, config),
                                          "grad_norm": mean_grad, "img_per_s": rate}) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                loss_sum = grad_sum = torch.zeros((), device=run.device)
                timer, timed_steps = time.perf_counter(), 0
            if save_now:
                save(run, done)
            if run.rank == 0 and config.sample_every and (done % config.sample_every == 0 or done == config.steps):
                sample_grid(run, dataset, done)
    finally:
        bar.close()
        prefetch.close()
        if log:
            log.close()
    if run.world > 1:
        dist.destroy_process_group()
    if run.rank == 0:
        grids = sorted((out / "samples").glob("step_*.png")) if config.sample_every else []
        print(f"done: {out / 'ckpt.pt'} (step {config.steps}), {out / 'log.jsonl'}"
              + (f", sample grids in {out / 'samples'}/ (latest {grids[-1].name})" if grids else ""))
    return losses


def check_progress(run: Run, mean_loss: float, mean_grad: float, step: int) -> None:
    """Stop before a checkpoint is written once the loss is non-finite or explodes (DIVERGENCE x
    the lowest logged loss), or the gradient is non-finite (the weights are already damaged)."""
    config, best_loss = run.config, run.best_loss
    if math.isfinite(mean_loss) and math.isfinite(mean_grad) and mean_loss <= DIVERGENCE * best_loss:
        return
    what = (f"the gradient norm became {mean_grad}" if math.isfinite(mean_loss) and not math.isfinite(mean_grad)
            else f"the loss became {mean_loss:.4g}")
    if run.saved_step is None:
        raise ValueError(f"{what} at step {step}, before the first checkpoint: start again with a lower --lr "
                         f"(now {config.lr:g}, e.g. --lr {config.lr / 4:g}) or a longer --warmup")
    raise ValueError(f"{what} at step {step} (lowest so far {best_loss:.4g}); the last good checkpoint "
                     f"{Path(config.out) / 'ckpt.pt'} (step {run.saved_step}) is untouched: continue it with a lower "
                     f"learning rate, e.g. --resume --lr {config.lr / 4:g} (or a longer --warmup)")


# ----------------------------------------------------------------------------- starting, saving, resuming

@dataclass
class Run:
    """Everything one training step touches, and where the run stands."""
    config: Config
    device: torch.device
    precision: str
    prior: Prior
    model: torch.nn.Module  # the weights (saved, averaged into the EMA)
    network: torch.nn.Module  # what the step calls: model, DDP-wrapped and/or compiled
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # prior noise, t and label dropout
    rank: int = 0
    world: int = 1
    step: int = 0  # the step the loop starts from (a checkpoint's on resume)
    best_loss: float = math.inf  # the lowest logged loss (kept across resumes): the divergence check
    saved_step: int | None = None  # the last checkpoint's step
    saved_config: dict = field(default_factory=dict)  # what every checkpoint stores as "config"
    class_names: list = field(default_factory=list)


def build_run(config: Config, dataset, prior: Prior, device: torch.device, rank: int = 0, world: int = 1) -> Run:
    torch.manual_seed(config.seed + rank)  # weights (DDP broadcasts rank 0's) and dropout
    model = unet.build_unet(config.preset, dataset.image_size, dataset.channels, dataset.num_classes,
                            dataset.cond_dim).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    network = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    network = torch.compile(network) if config.compile else network
    precision = ("bf16" if device.type == "cuda" else "fp32") if config.precision == "auto" else config.precision
    generator = torch.Generator(device).manual_seed(config.seed * 1000 + rank)
    return Run(config, device, precision, prior, model, network, ema, optimizer, generator, rank, world)


def checked_config(config: Config) -> tuple[Config, dict | None]:
    """(the config to run, the checkpoint it continues or None), every flag checked."""
    config, checkpoint = load_resume(config)
    config, _ = with_pairs(config)
    config = with_preset(config)
    check_config(config)
    check_resume_steps(config, checkpoint)
    return config, checkpoint


def start_or_resume(config: Config, checkpoint: dict | None) -> tuple[Run, object, int]:
    """(the run, its dataset, the number of training images): the prior fitted (or read from the
    cache) and a new network, or the checkpoint's prior, weights, optimizer and RNG states."""
    rank, world, device = setup_distributed(config.device)
    threads = checks.set_cpu_threads(device)
    if config.batch_size % world:
        raise ValueError(f"--batch-size {config.batch_size} must be divisible by the number of processes ({world})")
    if config.batch_size // world < config.grad_accum:
        raise ValueError(f"--grad-accum {config.grad_accum} is more than the {config.batch_size // world} images each "
                         f"process gets per step; use at most that")
    out = Path(config.out)
    if rank == 0:  # every path we write, checked before any work
        if config.prior_stats:
            outputs.check_out_file(config.prior_stats, "--prior-stats", (".npz",))
        if checkpoint is None and (out / "ckpt.pt").exists():
            raise ValueError(f"--out {out} already holds a run (ckpt.pt): continue it with --resume, "
                             f"or choose another --out (or delete that folder)")
        if checkpoint is None and (out / "log.jsonl").exists():  # a run stopped before its first checkpoint
            print(f"{out / 'log.jsonl'} of a run without a checkpoint is replaced by this run's")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    options = dataset_options(config)
    teacher = None
    if config.pairs:  # reflow: the pairs are the data, the teacher's prior is the prior
        teacher = load_teacher(config.pairs, checkpoint is None and config.init == "teacher")
        dataset = PairsDataset(config.pairs, teacher.get("class_names") or [])
        num_images, fingerprint = len(dataset), "pairs:" + checks.file_sha256(Path(config.pairs) / "pairs.json")
    else:
        dataset = data.load_dataset(config.dataset, config.data_dir, "train", **options)
        num_images = min(len(dataset), config.max_images or len(dataset))
        fingerprint = data_fingerprint(dataset, num_images)
    if config.batch_size > num_images:  # before the prior's fit, not when the first batch is read
        raise ValueError(f"--batch-size {config.batch_size} is larger than the {'pairs' if config.pairs else 'dataset'} "
                         f"({num_images} images): use at most {num_images}")
    if teacher is not None and checkpoint is None:
        prior = prior_from_state(teacher["prior"]["state"])
    elif checkpoint is None:
        prior = fit_prior(config, dataset, num_images, fingerprint, device, rank, world)
    else:  # the checkpoint's own prior, after checking that the data is the same
        saved = checkpoint["config"].get("data_fingerprint")
        if saved is not None and saved != fingerprint:
            raise ValueError(f"--resume: the images under --data-dir {config.data_dir} are not the ones this run was "
                             f"trained on (data fingerprint {fingerprint}, checkpoint {saved}); point --data-dir at "
                             f"the original data")
        prior = prior_from_state(checkpoint["prior"]["state"])
    run = build_run(config, dataset, prior, device, rank, world)
    if teacher is not None and checkpoint is None and config.init == "teacher":  # the teacher's EMA weights
        weights = {key.removeprefix("_orig_mod."): value for key, value in teacher["ema"].items()}
        run.model.load_state_dict(weights)
        run.ema.load_state_dict(weights)
    run.saved_config = {**config.saved(), "dataset_options": options, "image_size": dataset.image_size,
                        "channels": dataset.channels, "num_classes": dataset.num_classes,
                        "cond_dim": dataset.cond_dim, "world_size": world, "data_fingerprint": fingerprint}
    run.class_names = dataset.class_names
    if checkpoint is not None:
        restore(run, checkpoint)
    if rank == 0:
        what = f"{dataset.cond_dim}-d condition vectors" if dataset.cond_dim else f"{dataset.num_classes} classes"
        print(f"{config.dataset}: {num_images} {'reflow pairs' if config.pairs else 'images'}, {what}, {dataset.image_size}px | "
              f"prior {config.prior}, coupling {config.coupling} | preset {config.preset} "
              f"({unet.count_parameters(run.model):,} parameters) | {device} x{world}, {run.precision}"
              + (f" ({threads})" if threads else "") + " | "
              f"steps {run.step}..{config.steps} at batch {config.batch_size}"
              + (f" in {config.grad_accum} micro-batches" if config.grad_accum > 1 else "") + f" | writing to {out}/")
    return run, dataset, num_images


def load_teacher(folder: str, with_weights: bool) -> dict:
    """The checkpoint that made the pairs in `folder` (its prior, class names and, for --init
    teacher, EMA weights), checked to be the very file: its sha256 is in pairs.json."""
    spec = read_spec(folder)
    path = Path(spec["teacher"]["checkpoint"])
    hint = (f"the pairs in {folder} were made by {path}: put it back, or make new pairs with sample.py --pairs")
    if not path.is_file():
        raise FileNotFoundError(f"no teacher checkpoint at {path}: {hint}")
    if checks.file_sha256(path) != spec["teacher"]["sha256"]:
        raise ValueError(f"{path} is not the checkpoint that made the pairs in {folder} (its sha256 changed: trained "
                         f"on since?): make new pairs from it with sample.py --pairs")
    return checks.load_torch(path, "teacher checkpoint", hint, keys=("prior",) + (("ema",) if with_weights else ()))


def restore(run: Run, checkpoint: dict) -> None:
    """The checkpoint's weights, optimizer state, step and RNG states; the log cut to its step."""
    try:
        run.model.load_state_dict(checkpoint["model"])
        run.ema.load_state_dict(checkpoint["ema"])
    except RuntimeError as err:
        raise ValueError(f"--resume: the checkpoint does not match preset '{run.config.preset}': "
                         f"{str(err).splitlines()[0]}") from None
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    for group in run.optimizer.param_groups:  # the optimizer state keeps the old values; the flags win
        group["weight_decay"] = run.config.weight_decay
    run.step = run.saved_step = checkpoint["step"]
    run.best_loss = checkpoint.get("best_loss", math.inf)
    states = checkpoint["rng"]
    set_rng_state(states[run.rank] if len(states) == run.world else states[0], run.generator, run.device)
    if run.rank == 0:
        trim_log(Path(run.config.out) / "log.jsonl", run.step)


def save(run: Run, step: int) -> None:
    """ckpt.pt: written to a temporary file and renamed (a kill mid-write keeps the old one)."""
    states = [rng_state(run.generator, run.device)]
    if run.world > 1:
        states = [None] * run.world
        dist.all_gather_object(states, rng_state(run.generator, run.device))
    if run.rank == 0:
        save_checkpoint(Path(run.config.out) / "ckpt.pt", {
            "model": run.model.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
            "step": step, "rng": states, "config": run.saved_config, "class_names": run.class_names,
            "best_loss": run.best_loss, "prior": prior_to_checkpoint(run.prior)})
    run.saved_step = step


def sample_grid(run: Run, dataset, step: int, per_row: int = 8, rows: int = 10) -> None:
    """EMA samples of the first 10 classes (or the first 10 training images' condition vectors),
    8 a row, the same noise every time: OUT/samples/step_*.png."""
    if dataset.cond_dim:
        _, shown = dataset.get(torch.arange(min(rows, len(dataset))).numpy())
    else:
        shown = torch.arange(min(dataset.num_classes, rows))
    cond, row, seeds = conditions.per_condition(shown, list(range(len(shown))), per_row, run.config.seed)
    images = sample.generate(run.ema, run.prior, cond, seeds, run.config.sample_nfe, "euler", device=run.device)
    folder = Path(run.config.out) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    names = ({i: f"cond {i}" for i in range(len(shown))} if dataset.cond_dim else
             {i: f"{i} {name}" for i, name in enumerate(dataset.class_names or [])})
    samplefiles.save_grid(images, row, folder / f"step_{step:07d}.png", names)


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun one process per GPU; plain python: one process."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = checks.resolve_device(device_arg)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    checks.run_main(main)
