"""The prior, fitted once per run and cached: OUT/prior_stats.npz (or --prior-stats).

    data_fingerprint  what identifies the training data: name, count, shape, every label and the
                      pixels and conditions of 64 images spread over the set
    fit_prior         the statistics are reused only under the same key: the prior's name, its
                      options, its source code (prior_code: an edited fit() refits) and the data's
                      fingerprint; otherwise fitted again (a --prior-stats file is refused instead)
    checked_state     right after fit(): what fit() set must come back when the prior is reloaded
                      from the file (training uses the reloaded prior), each mistake one line
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import prior as priors
from . import batches, checks, outputs
from .config import Config


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


def cache_key(name: str, options: dict, fingerprint: str, code: str = "") -> str:
    """Statistics are reused only for the same prior, options, data and prior code (prior_code)."""
    text = json.dumps({"prior": name, "options": options, "data": fingerprint, "code": code}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prior_code(cls: type) -> str:
    """A hash of the prior class's source and its bases' up to Prior: editing fit() refits rather
    than reusing stale statistics. Helpers it calls elsewhere (stats.py) are not part of it.
    Without source (a class made at run time) the qualified name stands in."""
    parts = []
    for klass in cls.__mro__:
        if klass in (priors.Prior, object):
            break
        try:
            parts.append(inspect.getsource(klass))
        except (OSError, TypeError):
            parts.append(f"{klass.__module__}.{klass.__qualname__}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def fit_prior(config: Config, dataset, num_images: int, fingerprint: str, device: torch.device,
               rank: int, world: int):
    """Fit the prior (streamed passes) and cache it in OUT/prior_stats.npz under a key of the
    prior, its options, its code (prior_code) and the data; a file with another key is refitted
    (or, when given by --prior-stats, refused). A fresh fit is checked (checked_state) before it
    is written; training uses the prior reloaded from the file, as sampling will."""
    options = config.prior_options
    code = prior_code(priors.PRIORS[config.prior])
    key = cache_key(config.prior, options, fingerprint, code)
    path = Path(config.prior_stats or Path(config.out) / "prior_stats.npz")
    hint = "delete it, or pass --prior-stats with another path"
    if rank == 0:
        stored = None
        if path.exists():
            stored = read_stats(path)
            if str(stored.get("cache_key", "")) != key:
                edited = str(stored.get("name")) == config.prior and str(stored.get("prior_code", code)) != code
                why = f"another version of the {config.prior} prior's code" if edited else "other data or options"
                if config.prior_stats:
                    raise ValueError(f"--prior-stats {path} holds {stored.get('name')} prior statistics of {why} "
                                     f"(key {stored.get('cache_key', 'none')}, this run needs {key}); {hint}")
                print(f"{path} was fitted by {why}: fitting again" if edited else
                      f"{path} was fitted on other data or prior options: fitting again")
                stored = None
        if stored is None:
            fitted = priors.build_prior(config.prior, **options)
            if dataset.cond_dim == 0 and hasattr(fitted, "check_counts"):  # options the data cannot serve
                fitted.check_counts(np.bincount(dataset.labels[:num_images], minlength=dataset.num_classes))
            before = public_attributes(fitted)
            print(f"fitting the {config.prior} prior on {num_images} images ({options or 'default options'})")
            fitted.fit(batches.Passes(dataset, num_images, device), dataset.num_classes, dataset=config.dataset)
            outputs.save_npz(path, {**checked_state(fitted, before), "num_images": num_images, "cache_key": key,
                                   "prior_code": code}, "--prior-stats" if config.prior_stats else "--out")
    if world > 1:
        dist.barrier()  # the other processes wait for rank 0's file
    fitted = priors.prior_from_state(read_stats(path))
    expected = (dataset.channels, dataset.image_size, dataset.image_size)
    if tuple(fitted.shape) != expected:
        raise ValueError(f"{path} was fitted on images of shape {tuple(fitted.shape)}, but {config.dataset} has "
                         f"{expected}; {hint}")
    return fitted


# ----------------------------------------------------------------------------- what fit() must leave behind
# Training uses the prior RELOADED from prior_stats.npz (as sample.py does from the checkpoint), so
# whatever fit() set that the state does not carry would be silently lost; a fork learns it here,
# right after its first fit, in one line naming the attribute.

SAVED_KINDS = (np.ndarray, torch.Tensor, np.generic, int, float, bool, str, tuple, list, torch.nn.Module)


def public_attributes(prior) -> dict:
    """The prior's public instance attributes, arrays copied (fit() may change them in place)."""
    return {key: value.copy() if isinstance(value, np.ndarray) else
            value.detach().clone() if isinstance(value, torch.Tensor) else value
            for key, value in vars(prior).items() if not key.startswith("_")}


def same_value(a: object, b: object) -> bool:
    """Equal as saved state: arrays, tensors, numbers and tuples by value; networks by weights."""
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
        a, b = a.state_dict(), b.state_dict()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[key], b[key]) for key in a)
    if a is None or b is None:
        return a is b
    x, y = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for v in (a, b))
    if "O" in (x.dtype.kind, y.dtype.kind):
        return a is b
    numeric = x.dtype.kind in "biuf" and y.dtype.kind in "biuf"
    return x.shape == y.shape and np.array_equal(x, y, equal_nan=numeric and "f" in (x.dtype.kind, y.dtype.kind))


def checked_state(prior, before: dict) -> dict:
    """prior.state_dict() after fit(), checked: each name in `fitted` holds numbers (an array, or a
    number saved as a 0-d array), and every array, number or tuple fit() set comes back equal when
    that state is reloaded (before: public_attributes(prior) right after __init__)."""
    who = f"prior '{prior.name}'"
    for key in getattr(prior, "fitted", ()):
        value = getattr(prior, key, None)
        if value is None:
            raise ValueError(f"{who} lists '{key}' in fitted, but its fit() did not set self.{key}")
        if isinstance(value, torch.Tensor):
            raise ValueError(f"{who}: self.{key} is a tensor; fitted holds numpy arrays (they come back as "
                             f"numpy): set self.{key} = ....cpu().numpy() in fit()")
        try:
            kind = np.asarray(value).dtype.kind
        except ValueError:  # a ragged list
            kind = "O"
        if kind not in "biuf":
            raise ValueError(f"{who}: fitted '{key}' is a {type(value).__name__}, not numbers; fitted holds numeric "
                             f"arrays or numbers (a setting belongs in the options, other state in state_dict)")
    state = prior.state_dict()
    reloaded = priors.prior_from_state({key: np.asarray(value) for key, value in state.items()})  # as from .npz
    for key, value in public_attributes(prior).items():
        if not isinstance(value, SAVED_KINDS) or (key in before and same_value(before[key], value)):
            continue  # not state, or not set by fit()
        if not same_value(value, getattr(reloaded, key, None)):
            if key in getattr(prior, "fitted", ()):
                raise ValueError(f"{who} lists '{key}' in fitted, but its from_state_dict does not restore "
                                 f"self.{key}")
            raise ValueError(f"{who} set self.{key} in fit() but '{key}' is not in fitted: add it to fitted = (...)"
                             f"{' as a numpy array' if isinstance(value, torch.Tensor) else ''}, or it is lost when "
                             f"the prior is reloaded from prior_stats.npz")
    return state


# ----------------------------------------------------------------------------- the statistics file

def read_stats(path: str | Path) -> dict:
    """A prior's saved state; a missing, damaged or foreign file is a one-line error naming it."""
    return checks.load_npz(path, "prior statistics file", "train.py fits and writes it when the file is absent",
                           keys=("name",))


def save_prior(prior: priors.Prior, path: str | Path, flag: str = "") -> None:
    outputs.save_npz(path, prior.state_dict(), flag)  # temporary file + rename: a killed fit leaves no half file


def load_prior(path: str | Path, cls: type[priors.Prior] | None = None) -> priors.Prior:
    """The prior saved in `path`, as `cls` or (None) as the class its name says in prior.PRIORS."""
    state = read_stats(path)
    return cls.from_state_dict(state) if cls is not None else priors.prior_from_state(state)
