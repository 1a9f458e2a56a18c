"""What a checkpoint holds, written so that a kill never loses one and read so that it runs no code.

    checkpoint   model, EMA, optimizer, step, every process's RNG states, the run's config and
                 the fitted prior; written to a new temporary file, fsynced and renamed
                 (outputs.save_torch), read back with weights_only=True (checks.load_torch): tensors
                 and plain Python values only, so the prior's numpy arrays are stored as tensors
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import outputs


def prior_to_checkpoint(prior) -> dict:
    """The prior's state as a checkpoint holds it: numpy arrays as tensors, numpy scalars as Python
    values, so that the checkpoint loads with weights_only=True (no code runs on loading)."""
    def plain(value):
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value))
        return value.item() if isinstance(value, np.generic) else value
    return {"name": prior.name, "state": {key: plain(value) for key, value in prior.state_dict().items()}}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a run killed mid-write keeps the old file."""
    outputs.save_torch(path, state, "--out")  # a full disk: one line naming the file and --out


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


CHECKPOINT_KEYS = ("model", "ema", "optimizer", "step", "rng", "config", "prior")
