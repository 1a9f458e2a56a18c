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
    t              ~ U[0, 1]
    loss           = || v_theta(x_t, t, c, null) - (x1 - x0) ||^2,   x_t = (1 - t) x0 + t x1

then AdamW with warm-up, gradient clipping and an EMA of the weights (the EMA is what
sample.py uses). Everything that is random comes from --seed and is saved in the
checkpoint, and the batch of step s is a function of (seed, s) alone, so a resumed run
gives the losses of the uninterrupted one.

    python train.py                                        # shapes, class prior, CPU or GPU
    python train.py --dataset imagenet64 --data-dir DIR    # the full job on one GPU
    torchrun --nproc_per_node 8 train.py ...               # the same, on 8 GPUs (DDP)
    python train.py --resume                               # continue out/ckpt.pt
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import flow
import sample
import unet
from prior import prior_from_state
from plumbing import checks, conditions, data, samplefiles
from plumbing.checkpoint import prior_to_checkpoint, rng_state, save_checkpoint, set_rng_state
from plumbing.config import (Config, check_config, check_resume_steps, data_fingerprint, dataset_options, fit_prior,
                             load_resume, parse_args, trim_log, with_preset)

DIVERGENCE = 100.0  # a logged loss this many times the lowest one so far counts as diverged


# ----------------------------------------------------------------------------- processes

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


# ----------------------------------------------------------------------------- data

@functools.lru_cache(maxsize=2)
def epoch_order(dataset_size: int, seed: int, epoch: int) -> np.ndarray:
    # cached: permuting 1.28M indices every step would cost ~20 ms
    return np.random.default_rng([seed, epoch]).permutation(dataset_size)


def batch_indices(step: int, dataset_size: int, batch_size: int, seed: int) -> np.ndarray:
    """The global batch of step `step`: epoch e is one permutation drawn from (seed, e)."""
    per_epoch = dataset_size // batch_size
    if per_epoch < 1:
        raise ValueError(f"--batch-size {batch_size} is larger than the dataset ({dataset_size} images)")
    epoch, position = divmod(step, per_epoch)
    return epoch_order(dataset_size, seed, epoch)[position * batch_size:(position + 1) * batch_size]


class Prefetcher:
    """Reads the batches of steps start, start+1, ... on a thread, ahead of the GPU.

    Each process takes its slice rank::world of the global batch. Pinned memory lets the
    copy to the GPU overlap with compute."""

    def __init__(self, dataset, num_images: int, start: int, batch_size: int, seed: int, rank: int, world: int,
                 pin: bool):
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.reading = dataset, num_images, batch_size, seed, rank, world, pin
        self.thread = threading.Thread(target=self._work, args=(start,), daemon=True)
        self.thread.start()

    def _work(self, step: int) -> None:
        dataset, num_images, batch_size, seed, rank, world, pin = self.reading
        while not self.stop.is_set():
            try:
                indices = batch_indices(step, num_images, batch_size, seed)[rank::world]
                images, cond = dataset.get(indices)
                item = (images.pin_memory(), cond.pin_memory()) if pin else (images, cond)
            except Exception as err:  # hand the error to the training loop instead of dying silently
                item = err
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            step += 1

    def close(self) -> None:
        """Stop the thread and wait for it: a thread still inside the data path while the
        interpreter shuts down can abort the process ("terminate called ...", exit 134)."""
        self.stop.set()
        self.thread.join()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item


# ----------------------------------------------------------------------------- training

def learning_rate(step: int, config: Config) -> float:
    return config.lr * min(1.0, (step + 1) / max(config.warmup, 1))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # early on, follow the model closely
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


def grid_conditions(dataset, seed: int, per_row: int = 8, rows: int = 10) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """What the progress grids show: (cond, row of each image, seeds). Class ids: the first 10
    classes; vectors: the conditions of the first 10 training images. 8 images a row."""
    if dataset.cond_dim:
        _, shown = dataset.get(np.arange(min(rows, len(dataset))))
    else:
        shown = torch.arange(min(dataset.num_classes, rows))
    return conditions.per_condition(shown, list(range(len(shown))), per_row, seed)


def sample_grid(ema: torch.nn.Module, prior, dataset, config, step: int, device: torch.device) -> None:
    cond, row, seeds = grid_conditions(dataset, config.seed)
    images = sample.generate(ema, prior, cond, seeds, config.sample_nfe, "euler", device=device)
    folder = Path(config.out) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    samplefiles.save_grid(images, row, folder / f"step_{step:07d}.png")


@dataclass
class Run:
    """Everything one training step touches."""
    config: Config
    device: torch.device
    precision: str
    prior: object
    model: torch.nn.Module  # the weights (saved, averaged into the EMA)
    network: torch.nn.Module  # what the step calls: model, DDP-wrapped and/or compiled
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # prior noise, t and label dropout
    rank: int = 0
    world: int = 1


def build_run(config: Config, dataset, prior, device: torch.device, rank: int = 0, world: int = 1) -> Run:
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


def train_step(run: Run, images: torch.Tensor, cond: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 batch; returns (loss, grad norm) as device tensors (no sync).

    With --grad-accum N the batch's random draws (null rows, x0, coupling, t) are made for
    the whole batch first, then the network runs on N slices whose losses, weighted by their
    share of the batch, add up to the whole batch's mean: the same gradient, 1/N of the activations."""
    config, device, generator = run.config, run.device, run.generator
    x1 = data.to_model(images.to(device, non_blocking=True))
    if device.type == "cuda":
        x1 = x1.contiguous(memory_format=torch.channels_last)
    cond = cond.to(device, non_blocking=True)
    null = torch.rand(len(cond), device=device, generator=generator) < config.label_dropout
    # --null-source global: a null row's x0 comes from the dataset-wide component; class: from its own
    # condition's, so the null field is the flow from the whole mixture, the source CFG starts from
    x0 = run.prior.sample(cond, generator, null if config.null_source == "global" else None, x1)
    groups = run.prior.groups(cond, null)
    if config.couple_global and run.world > 1 and config.coupling != "independent":
        x0 = couple_global(x0, x1, groups, config.coupling, run.rank, run.world)
    else:
        x0 = flow.couple(x0, x1, groups, config.coupling)
    t = flow.sample_t(len(cond), device, generator)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    run.optimizer.zero_grad(set_to_none=True)
    n, k = len(cond), config.grad_accum  # k <= n (train checks): k slices of n // k or n // k + 1 rows
    bounds = [i * (n // k) + min(i, n % k) for i in range(k + 1)]
    total = torch.zeros((), device=device)
    for index in range(k):
        part = slice(bounds[index], bounds[index + 1])  # a view: no copy of the batch, no index tensor
        # DDP: average the gradients across processes once, after the last micro-batch
        last = index == k - 1
        sync = run.network.no_sync() if hasattr(run.network, "no_sync") and not last else contextlib.nullcontext()
        with sync, torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
            loss = flow.flow_loss(run.network, x0[part], x1[part], cond[part], null[part], t[part], config.sigma_min)
            loss = loss * ((part.stop - part.start) / n)
            loss.backward()
        total = total + loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.model, step, config.ema)
    return total, grad_norm


def couple_global(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor, method: str, rank: int,
                  world: int) -> torch.Tensor:
    """--couple-global: every process gathers the whole batch, solves the same assignment (the
    solver is deterministic) and keeps its own rows: OT over batch pairs, not batch / world."""
    def gather(part: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(part) for _ in range(world)]
        dist.all_gather(parts, part.contiguous())
        return torch.cat(parts)

    paired = flow.couple(gather(x0), gather(x1), gather(groups), method)
    return paired.tensor_split(world)[rank]


def train(config: Config) -> list[float]:
    """Train the run `config` describes (or continue it: config.resume); returns the logged losses."""
    config, checkpoint = load_resume(config)
    config = with_preset(config)
    check_config(config)
    check_resume_steps(config, checkpoint)
    rank, world, device = setup_distributed(config.device)
    if config.batch_size % world:
        raise ValueError(f"--batch-size {config.batch_size} must be divisible by the number of processes ({world})")
    if config.batch_size // world < config.grad_accum:
        raise ValueError(f"--grad-accum {config.grad_accum} is more than the {config.batch_size // world} images each "
                         f"process gets per step; use at most that")
    out = Path(config.out)
    if rank == 0:  # every path we write, checked before any work
        checks.check_out_dir(out, "--out")
        if config.prior_stats:
            checks.check_out_file(config.prior_stats, "--prior-stats", (".npz",))
        if checkpoint is None and (out / "ckpt.pt").exists():
            raise ValueError(f"--out {out} already holds a run (ckpt.pt): continue it with --resume, "
                             f"or choose another --out (or delete that folder)")
        if checkpoint is None and (out / "log.jsonl").exists():  # a run stopped before its first checkpoint
            print(f"{out / 'log.jsonl'} of a run without a checkpoint is replaced by this run's")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    options = dataset_options(config)
    dataset = data.load_dataset(config.dataset, config.data_dir, "train", **options)
    num_images = min(len(dataset), config.max_images or len(dataset))
    fingerprint = data_fingerprint(dataset, num_images)
    if checkpoint is None:
        prior = fit_prior(config, dataset, num_images, fingerprint, device, rank, world)
    else:  # the checkpoint's own prior, after checking that the data is the same
        saved = checkpoint["config"].get("data_fingerprint")
        if saved is not None and saved != fingerprint:
            raise ValueError(f"--resume: the images under --data-dir {config.data_dir} are not the ones this run was "
                             f"trained on (data fingerprint {fingerprint}, checkpoint {saved}); point --data-dir at "
                             f"the original data")
        prior = prior_from_state(checkpoint["prior"]["state"])
    run = build_run(config, dataset, prior, device, rank, world)
    model, ema, optimizer, generator = run.model, run.ema, run.optimizer, run.generator
    saved_config = {**config.saved(), "dataset_options": options,
              "image_size": dataset.image_size, "channels": dataset.channels, "num_classes": dataset.num_classes,
              "cond_dim": dataset.cond_dim,
              "world_size": world, "data_fingerprint": fingerprint}
    start, best_loss = 0, math.inf
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            ema.load_state_dict(checkpoint["ema"])
        except RuntimeError as err:
            raise ValueError(f"--resume: the checkpoint does not match preset '{config.preset}': "
                             f"{str(err).splitlines()[0]}") from None
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:  # the optimizer state keeps the old values; the flags win
            group["weight_decay"] = config.weight_decay
        start, best_loss = checkpoint["step"], checkpoint.get("best_loss", math.inf)
        states = checkpoint["rng"]
        set_rng_state(states[rank] if len(states) == world else states[0], generator, device)
        if rank == 0:
            trim_log(out / "log.jsonl", start)
    if rank == 0:
        what = f"{dataset.cond_dim}-d condition vectors" if dataset.cond_dim else f"{dataset.num_classes} classes"
        print(f"{config.dataset}: {num_images} images, {what}, {dataset.image_size}px | "
              f"prior {config.prior}, coupling {config.coupling} | preset {config.preset} "
              f"({unet.count_parameters(model):,} parameters) | {device} x{world}, {run.precision} | "
              f"steps {start}..{config.steps} at batch {config.batch_size}"
              + (f" in {config.grad_accum} micro-batches" if config.grad_accum > 1 else "") + f" | writing to {out}/")

    def save(step: int) -> None:
        states = [rng_state(generator, device)]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, rng_state(generator, device))
        if rank == 0:
            save_checkpoint(out / "ckpt.pt", {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng": states, "config": saved_config, "class_names": dataset.class_names,
                "best_loss": best_loss, "prior": prior_to_checkpoint(prior)})

    prefetch = Prefetcher(dataset, num_images, start, config.batch_size, config.seed, rank, world,
                          pin=device.type == "cuda")
    log = open(out / "log.jsonl", "a" if checkpoint is not None else "w") if rank == 0 else None
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=rank != 0,
               desc=f"{config.prior} prior, {config.coupling}", dynamic_ncols=True)
    losses: list[float] = []
    saved_step = start if checkpoint is not None else None
    try:
        loss_sum = grad_sum = torch.zeros((), device=device)
        timer, timed_steps = time.perf_counter(), 0
        for step in bar:
            images, cond = prefetch.next()
            loss, grad_norm = train_step(run, images, cond, step)
            loss_sum, grad_sum, timed_steps = loss_sum + loss, grad_sum + grad_norm, timed_steps + 1
            done = step + 1
            if done % config.log_every == 0 or done % config.ckpt_every == 0 or done == config.steps:
                if world > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= world
                mean_loss, mean_grad = (loss_sum / timed_steps).item(), (grad_sum / timed_steps).item()  # the sync
                check_progress(mean_loss, mean_grad, best_loss, done, out, saved_step, config)  # before any save
                best_loss = min(best_loss, mean_loss)
                rate = timed_steps * config.batch_size / (time.perf_counter() - timer)
                losses.append(mean_loss)
                if log:
                    log.write(json.dumps({"step": done, "loss": mean_loss, "lr": learning_rate(step, config),
                                          "grad_norm": mean_grad, "img_per_s": rate}) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}")
                loss_sum = grad_sum = torch.zeros((), device=device)
                timer, timed_steps = time.perf_counter(), 0
            if done % config.ckpt_every == 0 or done == config.steps:
                save(done)
                saved_step = done
            if rank == 0 and config.sample_every and (done % config.sample_every == 0 or done == config.steps):
                sample_grid(ema, prior, dataset, config, done, device)
    finally:
        bar.close()
        prefetch.close()
        if log:
            log.close()
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        grids = sorted((out / "samples").glob("step_*.png")) if config.sample_every else []
        print(f"done: {out / 'ckpt.pt'} (step {config.steps}), {out / 'log.jsonl'}"
              + (f", sample grids in {out / 'samples'}/ (latest {grids[-1].name})" if grids else ""))
    return losses


def check_progress(mean_loss: float, mean_grad: float, best_loss: float, step: int, out: Path,
                   saved_step: int | None, config: Config) -> None:
    """Stop before a checkpoint is written once the loss is non-finite or explodes (DIVERGENCE x
    the lowest logged loss), or the gradient is non-finite (the weights are already damaged)."""
    if math.isfinite(mean_loss) and math.isfinite(mean_grad) and mean_loss <= DIVERGENCE * best_loss:
        return
    what = (f"the gradient norm became {mean_grad}" if math.isfinite(mean_loss) and not math.isfinite(mean_grad)
            else f"the loss became {mean_loss:.4g}")
    if saved_step is None:
        raise ValueError(f"{what} at step {step}, before the first checkpoint: start again with a lower --lr "
                         f"(now {config.lr:g}, e.g. --lr {config.lr / 4:g}) or a longer --warmup")
    raise ValueError(f"{what} at step {step} (lowest so far {best_loss:.4g}); the last good checkpoint "
                     f"{out / 'ckpt.pt'} (step {saved_step}) is untouched: continue it with a lower learning rate, "
                     f"e.g. --resume --lr {config.lr / 4:g} (or a longer --warmup)")


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    checks.run_main(main)
