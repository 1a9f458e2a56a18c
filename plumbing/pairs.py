"""Reflow pairs on disk: (x0, x1) made by a trained flow, the training set of the next one.

Reflow (Liu et al. 2022, "Flow Straight and Fast", Sec. 2.3) trains a new flow on the pairs
(x0, x1 = ODE_teacher(x0)) instead of independent draws: the teacher's coupling is
deterministic, so the new flow's straight paths cross less and few steps go further.
sample.make_pairs writes them, train.py --pairs trains on them. A pairs folder holds

    pairs.json          what made them (SPEC_KEYS: the teacher checkpoint's path, sha256 and
                        step, its run's dataset, image size, condition kind and prior, the
                        solver, NFE and guidance, the pair seed) and the sha256 of every finished
                        chunk, so a damaged or swapped chunk is refused
    chunk_NNNNN.npz     pairs [N * chunk, (N + 1) * chunk): x0 and x1 float32 (n, C, H, W) in model
                        space (x1 not clipped or rounded: the teacher's own endpoint), cond (class
                        ids int64 (n,) or vectors float32 (n, E)) and seed int64 (n,), the seed x0
                        was drawn with (conditions.pair_seed)

Each chunk is written to a temporary file and renamed, then recorded in pairs.json (also
atomically); a killed run finds the chunks it recorded and makes the rest, and since a chunk is
a function of its seeds the resumed folder is the one an uninterrupted run writes. Everything is
read with np.load(allow_pickle=False) and json: no code runs on reading.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import checks, outputs

KIND = "condprior reflow pairs"
VERSION = 1
# what the pairs were made for and by: two folders with the same values hold the same pairs
SPEC_KEYS = ("kind", "version", "count", "chunk", "seed", "teacher", "solver", "nfe", "cfg", "dataset",
             "image_size", "channels", "num_classes", "cond_dim", "prior", "prior_options", "run")
# the teacher run's settings a student trained on its pairs must share (train.py checks them)
RUN_FIELDS = ("dataset", "resize_to", "cond", "max_images", "prior", "prior_options", "preset", "data_dir")
HINT = "make them with: python sample.py --ckpt TEACHER --pairs DIR --count N"


def chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk_{index:05d}.npz"


def num_chunks(spec: dict) -> int:
    return -(-int(spec["count"]) // int(spec["chunk"]))


def chunk_rows(spec: dict, index: int) -> range:
    """The pair indices chunk `index` holds."""
    start = index * int(spec["chunk"])
    return range(start, min(start + int(spec["chunk"]), int(spec["count"])))


def read_spec(folder: str | Path) -> dict:
    """pairs.json of a pairs folder, checked to be one; FileNotFoundError / ValueError in one line."""
    path = Path(folder) / "pairs.json"
    if not path.is_file():
        raise FileNotFoundError(f"no reflow pairs at {folder} (no pairs.json): {HINT}")
    try:
        spec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: damaged pairs description ({checks.first_line(err)}); make the pairs again") \
            from None
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise ValueError(f"{path}: not a reflow pairs description; {HINT}")
    if spec.get("version") != VERSION or any(key not in spec for key in SPEC_KEYS + ("chunks",)):
        raise ValueError(f"{path}: pairs of another format (version {spec.get('version')}, this code reads "
                         f"{VERSION}); make them again with this code")
    return spec


def begin(folder: str | Path, spec: dict) -> list[int]:
    """Start (or continue) writing `spec`'s pairs in folder; returns the chunks still to make.
    A folder holding pairs made otherwise is refused, naming what differs."""
    folder = Path(folder)
    if (folder / "pairs.json").is_file():
        found = read_spec(folder)
        differ = [key for key in SPEC_KEYS if found.get(key) != spec.get(key)]
        if differ:
            said = "; ".join(f"{key} {found.get(key)!r} there, {spec.get(key)!r} here" for key in differ[:3])
            raise ValueError(f"--pairs {folder} holds pairs made otherwise ({said}): choose another --pairs folder "
                             f"(or delete that one)")
        spec = found
    else:
        outputs.check_out_dir(folder, "--pairs")
        folder.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "chunks": [None] * num_chunks(spec)}
        outputs.write_text(folder / "pairs.json", json.dumps(spec, indent=1), "--pairs")
    return [index for index, digest in enumerate(spec["chunks"])
            if digest is None or not chunk_path(folder, index).is_file() or checks.file_sha256(chunk_path(folder, index)) != digest]


def write_chunk(folder: str | Path, index: int, x0: torch.Tensor, x1: torch.Tensor, cond: torch.Tensor,
                seeds: list[int]) -> None:
    """Chunk `index` to its file (atomic), then its checksum into pairs.json (atomic)."""
    folder = Path(folder)
    path = chunk_path(folder, index)
    outputs.save_npz(path, {"x0": x0.float().cpu().numpy(), "x1": x1.float().cpu().numpy(),
                            "cond": cond.cpu().numpy(), "seed": np.asarray(seeds, dtype=np.uint64)}, "--pairs")
    spec = read_spec(folder)
    spec["chunks"][index] = checks.file_sha256(path)
    outputs.write_text(folder / "pairs.json", json.dumps(spec, indent=1), "--pairs")


def load(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(spec, {"x0", "x1", "cond", "seed"}) of a finished pairs folder, every chunk checked against
    its checksum and the spec's shapes; anything else is one ValueError line."""
    folder = Path(folder)
    spec = read_spec(folder)
    missing = [index for index, digest in enumerate(spec["chunks"]) if digest is None]
    if missing:
        raise ValueError(f"--pairs {folder}: {len(missing)} of {len(spec['chunks'])} chunks are not made yet "
                         f"(a pair run was stopped): run the same sample.py --pairs command again to finish them")
    parts: dict[str, list[np.ndarray]] = {"x0": [], "x1": [], "cond": [], "seed": []}
    shape = (int(spec["channels"]), int(spec["image_size"]), int(spec["image_size"]))
    for index, digest in enumerate(spec["chunks"]):
        path = chunk_path(folder, index)
        if not path.is_file() or checks.file_sha256(path) != digest:
            raise ValueError(f"{path}: damaged or replaced (its sha256 is not the one pairs.json recorded): delete it "
                             f"and run the same sample.py --pairs command again to make it anew")
        arrays = checks.load_npz(path, "pairs chunk", "make the pairs again", keys=tuple(parts))
        rows = len(chunk_rows(spec, index))
        if arrays["x0"].shape != (rows, *shape) or arrays["x1"].shape != (rows, *shape) or len(arrays["cond"]) != rows:
            raise ValueError(f"{path}: holds arrays of other shapes than pairs.json says ({rows} x {shape}); "
                             f"make the pairs again")
        for key in parts:
            parts[key].append(arrays[key])
    return spec, {key: np.concatenate(value) for key, value in parts.items()}


class PairsDataset:
    """Pairs as train.py's batches: get(indices) -> (x0 and x1 stacked (n, 2, C, H, W) float32,
    cond), with the attributes of a plumbing.data.Dataset that the training loop reads."""

    def __init__(self, folder: str | Path, class_names: list[str] | None = None):
        self.spec, arrays = load(folder)
        self.pairs = torch.from_numpy(np.stack([arrays["x0"], arrays["x1"]], axis=1))
        self.cond = torch.from_numpy(arrays["cond"])
        self.seeds = arrays["seed"]
        self.image_size, self.channels = int(self.spec["image_size"]), int(self.spec["channels"])
        self.num_classes, self.cond_dim = int(self.spec["num_classes"]), int(self.spec["cond_dim"])
        self.class_names = class_names or []

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.pairs[indices], self.cond[indices]
