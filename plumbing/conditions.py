"""A condition is data: what the model is asked for, checked here once for every script.

Two kinds, and the rest of the code passes them along without looking inside:

    class ids          int64 (N,),   each in 0..K-1         (a dataset's labels)
    condition vectors  float (N, E), each finite            (attributes, a text or image embedding)

plus a `null` mask (N,) bool for the rows classifier-free guidance asks unconditionally (the
network's learned null vector, the prior's dataset-wide component). Only unet.ConditionEncoder
turns a condition into features, and only a prior decides what a condition means for x0.

Which images a run draws is also decided here, so that every number can be reproduced: image j
of condition c starts from the seed

    image_seed(run_seed, c, j) = (run_seed * 1000003 + c) * 1000033 + j,

whatever else the run samples and however it is batched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import checks


def check_class_ids(ids: torch.Tensor, num_classes: int, what: str = "class ids") -> None:
    """The one range check of class ids, 0..num_classes-1 (it reads them on the host: a sync on CUDA)."""
    if len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < num_classes:
        bad = sorted({int(i) for i in ids[(ids < 0) | (ids >= num_classes)].tolist()})
        named = (f"class {bad[0]} is" if len(bad) == 1 else
                 f"classes {', '.join(map(str, bad[:4]))}{', ...' if len(bad) > 4 else ''} are")
        valid = f"0..{num_classes - 1}" if num_classes > 0 else "(this model takes no class ids)"
        raise ValueError(f"{what}: {named} out of range {valid}")


def check_cond(cond: torch.Tensor, num_classes: int, vectors: bool | None = None) -> None:
    """Class ids: int64 in 0..num_classes-1; vectors: float (N, E). vectors=False/True: only that kind
    (what a prior calls in sample(); it runs every training step, so it never syncs a GPU)."""
    if cond.dtype == torch.int64 and cond.ndim == 1:
        if vectors:
            raise ValueError("this prior needs condition vectors (N, E), got class ids; use --prior class or kmeans")
        # Only on CPU: there a bad id would index past the table silently, while on CUDA the
        # check would cost a host sync every training step (and indexing asserts on device).
        if cond.device.type == "cpu":
            check_class_ids(cond, num_classes)
    elif cond.is_floating_point() and cond.ndim == 2:
        if vectors is False:
            raise ValueError("this prior needs class ids, got condition vectors; use --prior mapper or gaussian")
    else:
        raise ValueError(f"a condition is int64 class ids (N,) or float vectors (N, E), got {cond.dtype} "
                         f"of shape {tuple(cond.shape)}")


def as_condition(cond, num_classes: int, cond_dim: int) -> torch.Tensor:
    """What a user hands to a model taking K classes (cond_dim 0) or cond_dim-d vectors, made one:
    class ids -> int64 (N,) in 0..K-1; vectors -> float32 (N, cond_dim); anything else an error."""
    cond = torch.as_tensor(cond)
    if cond_dim:
        if cond.ndim != 2 or cond.shape[1] != cond_dim:
            raise ValueError(f"this model takes {cond_dim}-d condition vectors, got shape {tuple(cond.shape)}")
        cond = cond.float()
        checks.check_finite(cond, "the condition vectors")
        return cond.cpu()
    if cond.ndim != 1 or cond.is_floating_point():
        raise ValueError(f"this model takes class ids (N,), got {cond.dtype} of shape {tuple(cond.shape)}")
    cond = cond.long().cpu()
    check_class_ids(cond, num_classes)
    return cond


def image_seed(run_seed: int, class_id: int, index: int) -> int:
    """Seed of image `index` of class (or condition row) `class_id`."""
    return (run_seed * 1_000_003 + class_id) * 1_000_033 + index


# image_seed is one-to-one on (run seed, class < 1_000_003, index < 1_000_033) and checks.MAX_SEED
# caps the run seeds of samples and metrics at 2**24 - 1; pair seeds take run seeds from 2**24 on,
# so no pair starts from the noise of any image a metric or grid draws
PAIR_SEEDS_FROM = 2**24
MAX_PAIR_SEED = 2**20 - 1  # the largest seed below keeps every pair seed under 2**64 (torch's limit)


def pair_seed(seed: int, index: int) -> int:
    """Seed of reflow pair `index` made with --seed `seed`: image_seed(2**24 + seed, index // 1_000_033,
    index % 1_000_033), i.e. (2**24 + seed) * 1_000_003 * 1_000_033 + index."""
    return image_seed(PAIR_SEEDS_FROM + seed, index // 1_000_033, index % 1_000_033)


# Pilot draws (sample.py fit: the prior draws a time grid is fitted on) come from another seed space,
# so a fitted grid never saw an image it is evaluated on (nor a reflow pair: pair seeds stay below 1.79e19). image_seed's largest value, at
# run_seed = checks.MAX_SEED = 2^24 - 1, class < 1000003 and index < 1000033, is below
# 2^24 * 1000003 * 1000033 < 1.68e19; the pilot seeds start at 2^64 - 2^41 > 1.84e19, and
# class * 2^20 + index stays below 2^41 for class, index < 2^20 (manual_seed takes up to 2^64 - 1).
PILOT_SEED_BASE = 2**64 - 2**41


def pilot_seed(class_id: int, index: int) -> int:
    """Seed of pilot draw `index` of class (or condition row) `class_id`: never an image_seed."""
    if not (0 <= class_id < 2**20 and 0 <= index < 2**20):
        raise ValueError(f"pilot draws take class ids and indices below 2^20, got class {class_id}, index {index}")
    return PILOT_SEED_BASE + class_id * 2**20 + index


def per_condition(conditions: torch.Tensor, ids: list[int], n: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """n images of each condition, condition by condition: (cond, id of each image's condition,
    seeds), image j of condition id c seeded image_seed(seed, c, j). Grids and sample.py use this."""
    rows = torch.arange(len(ids)).repeat_interleave(n)
    row_ids = torch.tensor(ids, dtype=torch.long)[rows]
    return conditions[rows], row_ids, [image_seed(seed, int(c), j % n) for j, c in enumerate(row_ids)]


def balanced_classes(num_classes: int, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """n class ids cycling 0..K-1 (class-balanced, for metrics) and their seeds: image i is image
    i // K of class i % K, seeded image_seed(seed, class, i // K) as in per_condition."""
    classes = torch.arange(n) % num_classes
    return classes, [image_seed(seed, int(c), i // num_classes) for i, c in enumerate(classes)]


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    """--classes "0,3,7" -> [0, 3, 7] (all classes when None); ids checked, repeats dropped."""
    if text is None:
        return list(range(num_classes))
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--classes must be comma-separated class ids like 0,3,7, got {text!r}") from None
    if not classes:
        raise ValueError(f"--classes {text!r} names no class; give ids in 0..{num_classes - 1}")
    check_class_ids(torch.tensor(classes), num_classes, f"--classes {text!r}")  # the checkpoint's classes
    return list(dict.fromkeys(classes))  # a repeated id would only repeat the same seeds


def check_guidance(cfg: float, config: dict, path: object = "") -> None:
    """--cfg w != 1 mixes in the network's null condition, which only training with
    --label-dropout > 0 teaches; a checkpoint trained without it would guide with noise."""
    dropout = config.get("label_dropout")
    if cfg != 1.0 and dropout is not None and float(dropout) <= 0:
        where = f" ({path})" if path else ""
        raise ValueError(f"--cfg {cfg:g} needs a model trained with --label-dropout > 0; this checkpoint{where} was "
                         f"trained with --label-dropout {dropout:g}: use --cfg 1")


def read_vectors(path: str, cond_dim: int) -> torch.Tensor:
    """--cond-file: an .npy of (M, cond_dim) finite numbers, M >= 1; anything else is one line naming
    --cond-file, the file and the fix (never allow_pickle: a pickle in an .npy can run code)."""
    flag, want = f"--cond-file {path}", f"np.save an (M, {cond_dim}) float array, one row per condition"
    if Path(path).is_dir():
        raise ValueError(f"{flag} is a folder; give an .npy file: {want}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} not found: give an .npy of (M, {cond_dim}) vectors ({want})")
    with open(path, "rb") as file:
        head = file.read(6)
    if head[:2] == b"PK":
        raise ValueError(f"{flag}: an .npz archive (np.savez), not an .npy of one array; {want}")
    if head != b"\x93NUMPY":
        raise ValueError(f"{flag}: not an .npy file (no numpy header: a text or other file?); {want}")
    try:
        vectors = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"{flag}: holds Python objects (an object array), not numbers; {want}") from None
        raise ValueError(f"{flag}: not a readable .npy ({checks.first_line(err)}); {want}") from None
    except Exception as err:
        raise ValueError(f"{flag}: not a readable .npy ({checks.first_line(err)}); {want}") from None
    if vectors.dtype.kind not in "iuf":
        kind = "strings" if vectors.dtype.kind in "SU" else f"{vectors.dtype} values"
        raise ValueError(f"{flag}: holds {kind}, not numbers; {want}")
    if vectors.ndim == 1 and len(vectors) == cond_dim:
        raise ValueError(f"{flag}: a 1-D array of shape ({cond_dim},); give one row per condition, (M, {cond_dim}): "
                         f"np.save it as vector[None]")
    if vectors.ndim != 2 or vectors.shape[1] != cond_dim:
        raise ValueError(f"{flag}: shape {vectors.shape}, but this checkpoint takes {cond_dim}-d condition vectors; "
                         f"{want}")
    if len(vectors) == 0:
        raise ValueError(f"{flag}: holds no rows (shape {vectors.shape}); {want}")
    bad = np.flatnonzero(~np.isfinite(vectors.astype(np.float64)).all(1))
    if len(bad):
        raise ValueError(f"{flag}: row {bad[0]} holds NaN or inf ({len(bad)} such rows); every condition must be "
                         f"finite")
    return as_condition(vectors.astype(np.float32), 0, cond_dim)


def first_conditions(dataset, count: int) -> torch.Tensor:
    """--conditions M: the first M condition vectors of the held-out split, all M or an error."""
    checks.check_at_least(count, 1, "--conditions")
    if count > len(dataset):
        raise ValueError(f"--conditions {count}: the held-out split of {dataset.name} has only {len(dataset)} "
                         f"conditions; give --conditions {len(dataset)} or fewer, or --cond-file")
    _, vectors = dataset.get(np.arange(count))
    return vectors
