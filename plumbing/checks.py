"""Checks every script shares: files we read, flags, devices, finite numbers, the entry point.

A user's mistake or a damaged file must end in ONE line that names the file or the flag and
says what to do, and a non-zero exit; never a traceback, never silent output. So:

    read    load_torch / load_npz turn any failure of the reader (truncated zip, garbage,
            pickle errors, a missing key) into ValueError("PATH: what is wrong; what to do").
    write   outputs.py: paths checked before any work, atomic writes, one run per folder.
    devices resolve_device("cuda:7") on a machine with one GPU is an error naming --device.
    numbers check_finite refuses NaN/inf where it would otherwise flow silently into results.

Scripts end with `run_main(main)`: ValueError, FileNotFoundError and other OSErrors print
"error: ..." on one line and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import platform
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterable, NoReturn

import numpy as np
import torch


# ----------------------------------------------------------------------------- reading

def first_line(err: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message`, cut to `limit` characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks: what a file made from another (reflow
    pairs, a fitted grid) records of it, so that a changed or swapped source is refused."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_torch(path: str | Path, what: str, hint: str, keys: Iterable[str] = ()) -> dict:
    """torch.load a dict from `path`; any failure, or a missing key, is one ValueError line.

    Always weights_only=True: tensors and plain Python values (dict, list, str, int, float, bool,
    None) only. Checkpoints are passed around ("here is my run"); a full unpickler would run any
    code a hostile file names. Nothing we save needs more (numpy arrays are stored as tensors).
    what: what the file should be ("checkpoint"); hint: what to do when it is not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}: {hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # garbage bytes, a truncated pickle
            # (no zip check before: files saved by torch < 1.6, e.g. pytorch-fid's Inception weights, are no zip)
            refuse_other_kind(path, what)
            raise ValueError(f"{path}: not a readable {what} (another kind of file, or a damaged one); {hint}") \
                from None
        # an object other than tensors and plain values: torch's text goes on to advise
        # weights_only=False, which would run what the file names
        found = str(err).split("GLOBAL")[1].split()[0].strip(" :.,") if "GLOBAL " in str(err) else "an object"
        raise ValueError(f"{path}: refused: the {what} holds {found}, which is not a tensor or a plain value, "
                         f"and loading it could run code (we load with weights_only=True); {hint}") from None
    except Exception as err:  # truncated zip, garbage bytes: the same news for the user
        refuse_other_kind(path, what)
        raise ValueError(f"{path}: not a readable {what} ({first_line(err)}); {hint}") from None
    return require_keys(obj, keys, path, what, hint)


def refuse_other_kind(path: Path, what: str) -> None:
    """A file torch cannot load that is plainly something else (our own .npz files, an image, a
    text): say what it is, not torch's message about zip records, and where the right file may be."""
    kind = file_kind(path)
    if kind is None:
        return
    sibling = path.parent / "ckpt.pt"  # a run's folder: its checkpoint is beside its other files
    nearby = (f" ({sibling} is this run's checkpoint)" if what == "checkpoint" and sibling.is_file()
              and sibling.resolve() != path.resolve() else "")
    raise ValueError(f"{path} is {kind}, not a {what}: give the path of a {what}{nearby}") from None


def file_kind(path: Path) -> str | None:
    """What a file plainly is, from its first bytes (and an .npz's array names): the files our scripts
    write and the usual mix-ups; None when it is not plainly anything (a damaged file, say)."""
    names = None
    try:
        with open(path, "rb") as file:
            head = file.read(512)
        if not head:
            return "an empty file (0 bytes)"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if head.startswith(b"PK"):
        if names is None:  # a damaged zip: a truncated checkpoint, say
            return None
        if not names or not all(name.endswith(".npy") for name in names):
            return None if any(name.endswith("data.pkl") for name in names) else "a zip archive"
        arrays = {name[:-4] for name in names}
        if {"name", "dataset"} <= arrays:
            return "a prior statistics file (the .npz train.py writes as prior_stats.npz)"
        if "arr_0" in arrays:
            return "a sample file (an .npz of images in arr_0, as sample.py writes)"
        if {"mu", "sigma"} <= arrays:
            return "a reference statistics file (an .npz of mu and sigma, as eval_fid.py ref writes)"
        return f"a numpy .npz archive (arrays {', '.join(sorted(arrays)[:4])}{', ...' if len(arrays) > 4 else ''})"
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x93NUMPY", "a numpy .npy array"),
                        (b"\x1f\x8b", "a gzip-compressed file")):
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # binary, or a character cut by the 512 bytes we read
        if err.start < len(head) - 3:
            return None
        text = head[:err.start].decode("utf-8")
    return "a text file" if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def load_npz(path: str | Path, what: str, hint: str, keys: Iterable[str] = ()) -> dict:
    """All arrays of an .npz (no pickles); a missing, truncated or foreign file is one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}: {hint}")
    if not zipfile.is_zipfile(path):  # else np.load tries a pickle and reports "pickled data": misleading
        raise ValueError(f"{path}: not a readable {what} (not an .npz archive: truncated, or another kind of "
                         f"file); {hint}")
    try:
        with np.load(path, allow_pickle=False) as file:
            if not hasattr(file, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            arrays = {key: file[key] for key in file.files}
    except Exception as err:  # BadZipFile, zlib.error, EOFError, pickled objects, ...
        raise ValueError(f"{path}: not a readable {what} ({first_line(err)}); {hint}") from None
    return require_keys(arrays, keys, path, what, hint)


def require_keys(obj: object, keys: Iterable[str], path: str | Path, what: str, hint: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a {what} (holds a {type(obj).__name__}, not a dict); {hint}")
    missing = [key for key in keys if key not in obj]
    if missing:
        raise ValueError(f"{path}: not a {what} (no {', '.join(map(repr, missing))}); {hint}")
    return obj


# ----------------------------------------------------------------------------- devices, numbers

def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`name` if this machine has it, else an error naming --device; None: cuda if available."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {name}: unsupported device type '{device.type}'; use cpu or cuda")
    return device


def set_cpu_threads(device: torch.device) -> str:
    """On a CPU, torch's default of one thread per core busy-waits at every OpenMP barrier, so when
    other jobs share the cores it collapses: on 2 shared cores the demo ran at 9-60 img/s in
    windows where one thread gave a steady ~100 (bench/RESULTS.md, "CPU threads"). Unless
    OMP_NUM_THREADS says otherwise, use half the cores (one on a 2-core machine). Returns what
    was chosen, for the run's header line; on a GPU nothing is changed."""
    if device.type != "cpu":
        return ""
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} CPU thread{'s' * (torch.get_num_threads() > 1)}, set by OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // 2)
    torch.set_num_threads(threads)
    return f"{threads} CPU thread{'s' * (threads > 1)} of {cores} cores, OMP_NUM_THREADS=N to choose"


def describe_device(device: torch.device) -> str:
    """What a benchmark or report ran on, for its header: the GPU's name, or the CPU and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def check_finite(value: float | np.ndarray | torch.Tensor, what: str, hint: str = "") -> None:
    """ValueError when `value` holds NaN or inf; `what` names it for the user."""
    if isinstance(value, torch.Tensor):
        finite = bool(torch.isfinite(value).all())
    elif isinstance(value, np.ndarray):
        finite = bool(np.isfinite(value).all()) if value.dtype.kind in "fc" else True
    else:
        finite = math.isfinite(value)
    if not finite:
        raise ValueError(f"{what} is not finite (NaN or inf)" + (f"; {hint}" if hint else ""))


def check_at_least(value: int | float | None, minimum: int | float, flag: str) -> None:
    """`--flag must be at least minimum` unless value is None (= the default applies)."""
    if value is not None and (not math.isfinite(value) or value < minimum):
        raise ValueError(f"{flag} must be at least {minimum}, got {value}")


# argparse types: a bad value is refused while parsing, as "argument --nfe: must be at least 1, got 0"
# (Parser.error makes it one line). A seed is bounded so that conditions.image_seed(seed, c, j) stays
# within the 64 bits torch.Generator.manual_seed takes (a larger one failed with "Overflow when unpacking").
MAX_SEED = 2**24 - 1


def _int(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be at least {low}" + (f" and at most {high}" if high is not None
                                                                      else "") + f", got {value}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1)


def nonnegative_int(text: str) -> int:
    return _int(text, 0)


def seed_int(text: str) -> int:
    return _int(text, 0, MAX_SEED)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# ----------------------------------------------------------------------------- entry point

class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one ValueError line (run_main prints it), like any bad input,
    no abbreviated flags (--sigma must not quietly mean --sigma-min), and defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{self.prog}: {message} (see {self.prog} --help)")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every default but None (whose meaning the help text says); descriptions and
    epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is argparse.SUPPRESS or action.default is False:
            return action.help
        return super()._get_help_string(action)


def run_main(main: Callable[[], None]) -> None:
    """Every script's `if __name__ == "__main__"`: expected failures become one line and exit 2."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, zipfile.BadZipFile) as err:  # OSError: a FileNotFoundError, a full disk, ...
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message
        sys.exit(2)
