"""What survives a kill: atomic checkpoints, exact resume, and the prior's cached statistics.

    checkpoint   model, EMA, optimizer, step, every process's RNG states, the Config and the fitted
                 prior, written to a temporary file, fsynced and renamed (checks.save_torch)
    resume       load_resume: RUN_KEYS from the checkpoint (a different value given is refused),
                 RESUMABLE from the command line where given, else from the checkpoint; the log is
                 trimmed to the checkpoint's step so it reads as one run
    prior cache  OUT/prior_stats.npz under a key of the prior's name, its options and a fingerprint
                 of the data, so statistics are never reused for other data or options
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import checks
import prior as priors
from config import RESUMABLE, RUN_KEYS, Config, build_prior


def data_fingerprint(dataset, num_images: int) -> str:
    """What identifies the training data: name, count, shape, every label and the pixels and
    conditions of 64 images spread over the set (a cheap content hash: two folders of equal size
    differ here)."""
    probe = np.unique(np.linspace(0, num_images - 1, min(64, num_images)).round().astype(np.int64))
    images, cond = dataset.get(probe)
    digest = hashlib.sha256(f"{dataset.name}|{num_images}|{dataset.channels}x{dataset.image_size}|"
                            f"{dataset.num_classes}|{dataset.cond_dim}".encode())
    digest.update(np.ascontiguousarray(dataset.labels[:num_images]).tobytes())
    digest.update(images.numpy().tobytes())
    digest.update(cond.numpy().tobytes())
    return digest.hexdigest()[:16]


class Passes:
    """The training images as (uint8 images, cond) batches on `device`; every iteration is a new
    pass, so a prior's fit can read the data as often as it needs (k-means, the mapper)."""

    def __init__(self, dataset, num_images: int, device: torch.device, batch_size: int = 1024):
        self.dataset, self.num_images, self.device, self.batch_size = dataset, num_images, device, batch_size

    def __len__(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def __iter__(self):
        for start in range(0, self.num_images, self.batch_size):
            images, cond = self.dataset.get(np.arange(start, min(start + self.batch_size, self.num_images)))
            yield images.to(self.device), cond.to(self.device)  # the fit's float64 work runs on the GPU


def cache_key(name: str, options: dict, fingerprint: str) -> str:
    """Statistics are reused only for the same prior, options and data."""
    text = json.dumps({"prior": name, "options": options, "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prior_to_checkpoint(prior: priors.Prior) -> dict:
    """The prior's state as a checkpoint holds it: numpy arrays as tensors, numpy scalars as Python
    values, so that the checkpoint loads with weights_only=True (no code runs on loading)."""
    def plain(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value))
        return value.item() if isinstance(value, np.generic) else value
    return {"name": prior.name, "state": {key: plain(value) for key, value in prior.state_dict().items()}}


def prior_from_state(state: dict) -> priors.Prior:
    """A saved prior (checkpoint or statistics file) as the class its name says."""
    state = {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in state.items()}
    name = str(state["name"])
    if name not in priors.PRIORS:
        raise ValueError(f"the statistics were saved by prior '{name}', which this code does not know; "
                         f"known: {', '.join(priors.PRIORS)}")
    return priors.PRIORS[name].from_state_dict(state)


def make_prior(config: Config, dataset, num_images: int, fingerprint: str, device: torch.device,
               rank: int, world: int):
    """Fit the prior (one streaming pass) and cache it in OUT/prior_stats.npz under a key of the
    prior, its options and the data; a file with another key is refitted (or, when given by
    --prior-stats, refused)."""
    options = config.prior_options
    key = cache_key(config.prior, options, fingerprint)
    path = Path(config.prior_stats or Path(config.out) / "prior_stats.npz")
    hint = "delete it, or pass --prior-stats with another path"
    if rank == 0:
        stored = None
        if path.exists():
            stored = priors.load_npz(str(path))
            if str(stored.get("cache_key", "")) != key:
                if config.prior_stats:
                    raise ValueError(f"--prior-stats {path} holds {stored.get('name')} prior statistics of other data "
                                     f"or options (key {stored.get('cache_key', 'none')}, this run needs {key}); {hint}")
                print(f"{path} was fitted on other data or prior options: fitting again")
                stored = None
        if stored is None:
            fitted = build_prior(config.prior, **options)
            print(f"fitting the {config.prior} prior on {num_images} images ({options or 'default options'})")
            fitted.fit(Passes(dataset, num_images, device), dataset.num_classes, dataset=config.dataset)
            checks.save_npz(path, {**fitted.state_dict(), "num_images": num_images, "cache_key": key})
    if world > 1:
        dist.barrier()  # the other processes wait for rank 0's file
    fitted = prior_from_state(priors.load_npz(str(path)))
    expected = (dataset.channels, dataset.image_size, dataset.image_size)
    if tuple(fitted.shape) != expected:
        raise ValueError(f"{path} was fitted on images of shape {tuple(fitted.shape)}, but {config.dataset} has "
                         f"{expected}; {hint}")
    return fitted


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a run killed mid-write keeps the old file."""
    checks.save_torch(path, state)


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


CHECKPOINT_KEYS = ("model", "ema", "optimizer", "step", "rng", "config", "prior")


def load_resume(config: Config) -> tuple[Config, dict | None]:
    """(the config to run, the checkpoint to continue or None). On --resume, RUN_KEYS come from the
    checkpoint (a different value on the command line is refused) and RESUMABLE ones from the
    command line where given there, else from the checkpoint."""
    if config.resume is None:
        return config, None
    path = Path(config.out) / "ckpt.pt" if config.resume == "auto" else Path(config.resume)
    checkpoint = checks.load_torch(path, "checkpoint", "start without --resume, or give a checkpoint's path",
                                   keys=CHECKPOINT_KEYS)
    saved = checkpoint["config"]
    changed = [key for key in RUN_KEYS if key in config.given and getattr(config, key) != saved.get(key)]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)} (checkpoint: {saved.get(k)})"
                          for k in changed)
        raise ValueError(f"--resume {path}: {flags}: a resumed run keeps its data, prior, network and batches; "
                         f"only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change. "
                         f"Start a new run with another --out instead")
    # a key a checkpoint lacks (saved before the option existed) keeps Config's default: what it did then
    kept = {key: saved[key] for key in RUN_KEYS + RESUMABLE if key in saved and key not in config.given}
    return replace(config, **kept), checkpoint


def trim_log(path: Path, last_step: int) -> None:
    """Keep the log lines up to the checkpoint's step (atomically): lines written after it by the
    run that was stopped are written again by the resumed one."""
    if not path.exists():
        return
    def step_of(line: str) -> float:  # a line cut by a kill mid-write is dropped too
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return math.inf

    kept = [line for line in path.read_text().splitlines() if step_of(line) <= last_step]
    checks.atomic_write(path, lambda file: file.write("".join(line + "\n" for line in kept).encode()))
