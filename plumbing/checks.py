"""Checks every script shares: files we read, paths we write, devices, finite numbers.

A user's mistake or a damaged file must end in ONE line that names the file or the flag and
says what to do, and a non-zero exit; never a traceback, never silent output. So:

    read    load_torch / load_npz turn any failure of the reader (truncated zip, garbage,
            pickle errors, a missing key) into ValueError("PATH: what is wrong; what to do").
    write   check_out_dir / check_out_file test, BEFORE any work starts, that the path can be
            written (not a file where a folder is wanted, not under a file, not read-only, a
            known image extension); atomic_write writes a NEW temporary file with a unique name
            in PATH's folder (never one opened by a predictable name: a planted symlink there
            is not followed), fsyncs it and renames it over PATH, so a run killed mid-write
            keeps the old file whole; a failed write (full disk, quota, file-size limit, I/O
            error) removes its temporary file, keeps the old PATH and is one line naming PATH.
    folders FolderLock / hold_folder: one run per --out folder at a time (OUT/.lock, flock).
    devices resolve_device("cuda:7") on a machine with one GPU is an error naming --device.
    numbers check_finite refuses NaN/inf where it would otherwise flow silently into results.

Scripts end with `run_main(main)`: ValueError, FileNotFoundError and other OSErrors print
"error: ..." on one line and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import functools
import json
import math
import os
import pickle
import platform
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable, NoReturn, TypeVar

import numpy as np
import torch


# ----------------------------------------------------------------------------- reading

def first_line(err: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message`, cut to `limit` characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            raise ValueError(f"{path}: not a readable {what} (its pickle is damaged); {hint}") from None
        # an object other than tensors and plain values: torch's text goes on to advise
        # weights_only=False, which would run what the file names
        found = str(err).split("GLOBAL")[1].split()[0].strip(" :.,") if "GLOBAL " in str(err) else "an object"
        raise ValueError(f"{path}: refused: the {what} holds {found}, which is not a tensor or a plain value, "
                         f"and loading it could run code (we load with weights_only=True); {hint}") from None
    except Exception as err:  # truncated zip, garbage bytes: the same news for the user
        raise ValueError(f"{path}: not a readable {what} ({first_line(err)}); {hint}") from None
    return require_keys(obj, keys, path, what, hint)


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


# ----------------------------------------------------------------------------- writing

def check_out_dir(path: str | Path, flag: str) -> Path:
    """Create folder `path` (and its parents) now and prove it writable, or say why not."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=path, prefix=".write_test.")  # a new file, unique name
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write there ({err.strerror or first_line(err)}); "
                         f"choose another {flag}") from None
    return path


def check_out_file(path: str | Path, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """A file we will write later: a known suffix, not a folder, and a writable folder."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: the name must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    check_out_dir(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: the file exists and is read-only; choose another {flag}")
    return path


def atomic_write(path: str | Path, write: Callable[[object], None], flag: str = "") -> None:
    """write(file) into a new temporary file next to PATH, fsync, rename over PATH.

    Readers see the old file or the new one, never half of one. The temporary file is created
    new (O_EXCL, unique name): a predictable PATH.tmp could be a planted symlink, and opening it
    would overwrite whatever it points to. When anything fails (a full disk, a quota, the
    file-size limit, an I/O error, even a kill that raises) the temporary file is removed and
    PATH is left as it was; an OS error, also one torch.save wraps in a RuntimeError, becomes one
    OSError line naming PATH and the fix ("or choose another FLAG" when the caller names its flag)."""
    path = Path(path)
    folder = path.parent
    try:
        descriptor, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err, flag) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            mode = new_file_mode(path)  # mkstemp's 0600: make it what a plain open would
            os.fchmod(file.fileno(), mode) if hasattr(os, "fchmod") else os.chmod(tmp, mode)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = os_error_in(err)
        if cause is None:  # a bug in write(), a KeyboardInterrupt: not a write failure
            raise
        raise write_error(path, cause, flag) from None
    sync_folder(folder)


def new_file_mode(path: Path) -> int:
    """The permission bits open(path, "w") would leave: the existing file's, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask can only set)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """fsync the folder so that the rename itself survives a power cut; where folders cannot be
    opened or synced (some file systems, Windows) the rename is still atomic, so go on."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind a failed write: err itself, or one it was raised from or during
    (torch.save reports a failed write as RuntimeError("... unexpected pos ...") raised while
    handling the OSError of the file's write)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# what a failed write means, and what to do about it; the flag (or "write it elsewhere") completes it
WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota"),
    errno.EFBIG: ("file too large (the file-size limit, ulimit -f, or the file system's largest file)",
                  "raise the limit"),
    errno.EIO: ("input/output error (a failing disk or network file system)", "check the disk"),
    errno.EROFS: ("read-only file system", "write somewhere writable"),
    errno.EACCES: ("permission denied", "write somewhere writable"),
    errno.EPERM: ("operation not permitted", "write somewhere writable"),
}


def write_error(path: Path, err: OSError, flag: str = "") -> OSError:
    """OSError("cannot write PATH: CAUSE; FIX"), one line, keeping err's errno."""
    cause, fix = WRITE_ERRORS.get(err.errno, (err.strerror or first_line(err), "check the folder"))
    elsewhere = f"choose another {flag}" if flag else "write it elsewhere"
    error = OSError(f"cannot write {path}: {cause}; {fix}, or {elsewhere}")
    error.errno = err.errno
    return error


def write_text(path: str | Path, text: str, flag: str = "") -> None:
    atomic_write(path, lambda file: file.write(text.encode()), flag)


def save_torch(path: str | Path, obj: object, flag: str = "") -> None:
    atomic_write(path, lambda file: torch.save(obj, file), flag)


def save_npz(path: str | Path, arrays: dict, flag: str = "") -> None:
    # a file object: np.savez would append ".npz" to other names
    atomic_write(path, lambda file: np.savez(file, **{key: np.asarray(v) for key, v in arrays.items()}), flag)


class LogFile:
    """A log we append to line by line (not atomic: a kill loses at most the last line, which a
    resume trims): opening it or writing it fails in one line naming it, like atomic_write."""

    def __init__(self, path: str | Path, append: bool, flag: str = ""):
        self.path, self.flag = Path(path), flag
        try:
            self.file = open(self.path, "a" if append else "w", encoding="utf-8")
        except OSError as err:
            raise write_error(self.path, err, flag) from None

    def write(self, text: str) -> None:
        self.attempt(self.file.write, text)

    def flush(self) -> None:
        self.attempt(self.file.flush)

    def close(self) -> None:
        self.attempt(self.file.close)

    def attempt(self, action: Callable, *args) -> None:
        try:
            action(*args)
        except OSError as err:
            raise write_error(self.path, err, self.flag) from None


# ----------------------------------------------------------------------------- one run per folder

class FolderLock:
    """FOLDER/.lock, held while a run writes into FOLDER: a second run there is refused in one line.

    Two runs in one --out would overwrite each other's checkpoints and logs, and a --resume of a
    run that still trains would continue a checkpoint that is about to change. The file is
    created new (O_CREAT | O_EXCL) and holds {pid, host, started} for the message; the lock
    itself is flock on the open file, which the kernel drops when the process dies however it
    dies (kill -9 too), so a lock file whose flock is free is stale and is taken over with a note.
    Where flock is missing or unsupported, the pid decides: a lock of a process gone from this
    host is stale, as is an empty or unreadable file older than STALE_EMPTY_S (its writer died
    between creating and filling it). While held, SIGTERM (kill, torchrun stopping its workers)
    raises SystemExit(143) instead of ending the process at once, so finally blocks run, write
    nothing half and remove the lock."""

    NAME = ".lock"
    STALE_EMPTY_S = 5.0

    def __init__(self, folder: str | Path, flag: str = "--out"):
        self.folder, self.flag = Path(folder), flag
        self.path = self.folder / self.NAME
        self.descriptor: int | None = None
        self.previous_sigterm = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "FolderLock":
        deadline = time.monotonic() + 2 * self.STALE_EMPTY_S
        while True:
            taken = self.try_acquire()
            if taken:
                break
            if time.monotonic() > deadline:  # a holder that never writes its name: a broken file system
                raise ValueError(f"{self.flag} {self.folder}: cannot take {self.path} (it keeps changing, or "
                                 f"is empty and locked); if no run uses this folder, delete that file")
            time.sleep(0.05)
        self.catch_sigterm()
        return self

    def try_acquire(self) -> bool:
        """One attempt: True when held; False to try again in a moment; ValueError when in use."""
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            descriptor, created = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                descriptor, created = os.open(self.path, flags), False
            except FileNotFoundError:  # its holder removed it just now
                return False
            except OSError as err:  # a symlink (ELOOP), a folder, no permission
                raise ValueError(f"{self.flag} {self.folder}: cannot open {self.path} ({err.strerror}); "
                                 f"remove it if no run uses this folder") from None
        except OSError as err:
            raise ValueError(f"{self.flag} {self.folder}: cannot create {self.path} ({err.strerror}); "
                             f"choose another {self.flag}") from None
        held = False
        try:
            held = self.take(descriptor, created)
        finally:
            if not held:
                os.close(descriptor)
        if held:
            self.descriptor = descriptor
        return held

    def take(self, descriptor: int, created: bool) -> bool:
        """Lock the open file and write our name in it (True), or say why not (False: try again)."""
        # our new file: wait for anyone looking at it, who lets go at once (it is young and empty)
        locked = flock(descriptor, wait=created)
        if locked is False:
            holder = read_holder(descriptor)
            if holder is None and self.young():  # its holder is writing its name now
                return False
            raise ValueError(self.in_use(holder))
        if not same_file(descriptor, self.path):  # its holder removed it before we locked it
            return False
        if not created:
            holder = read_holder(descriptor)
            if holder is None and self.young():  # created a moment ago, not yet locked or written
                return False
            if locked is None and holder is not None and not holder_gone(holder):
                raise ValueError(self.in_use(holder))  # no flock here: the pid says it still runs
            print(f"{self.path}: taking over the lock of "
                  + (f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')}), "
                     "which no longer runs" if holder else "a run that left it empty"))
        write_holder(descriptor)
        return True

    def young(self) -> bool:
        try:
            return time.time() - os.stat(self.path).st_mtime < self.STALE_EMPTY_S
        except OSError:
            return True

    def in_use(self, holder: dict | None) -> str:
        who = (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}" if holder
               else "another process")
        return (f"{self.flag} {self.folder} is in use by {who} ({self.path}): wait for it, or choose another "
                f"{self.flag}")

    def release(self) -> None:
        """Remove the file (only if it is still ours), then let go of the flock; never raises."""
        if self.descriptor is None:
            return
        descriptor, self.descriptor = self.descriptor, None
        try:
            if same_file(descriptor, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(descriptor)
            self.restore_sigterm()

    def catch_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous_sigterm = signal.signal(signal.SIGTERM, raise_system_exit)

    def restore_sigterm(self) -> None:
        if self.previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.previous_sigterm)
        self.previous_sigterm = None


def raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def flock(descriptor: int, wait: bool = False) -> bool | None:
    """flock(LOCK_EX), not waiting unless told: True taken, False held by another open file,
    None where this system or file system has no flock."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as err:  # ENOLCK, EOPNOTSUPP: a file system without locks
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def same_file(descriptor: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(descriptor), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def read_holder(descriptor: int) -> dict | None:
    """The lock's {pid, host, started}, or None when it is empty or not ours."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def write_holder(descriptor: int) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text, 0)
    os.fsync(descriptor)


def holder_gone(holder: dict) -> bool:
    """True when the holder ran on this host and its pid is gone (another host's: cannot tell)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


Function = TypeVar("Function", bound=Callable)
_scopes = threading.local()


def hold_folder(folder: str | Path, flag: str = "--out") -> FolderLock:
    """Take FOLDER's lock (FolderLock) until the innermost function decorated with @holding_folders
    returns or raises: one line in a long function instead of a `with` around all of it."""
    scopes = getattr(_scopes, "stack", None)
    if not scopes:
        raise RuntimeError("hold_folder() outside a function decorated with @checks.holding_folders")
    lock = FolderLock(folder, flag).acquire()
    scopes[-1].append(lock)
    return lock


def holding_folders(function: Function) -> Function:
    """Release every lock hold_folder took during a call of `function`, however the call ends."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not hasattr(_scopes, "stack"):
            _scopes.stack = []
        _scopes.stack.append([])
        try:
            return function(*args, **kwargs)
        finally:
            for lock in reversed(_scopes.stack.pop()):
                lock.release()
    return wrapper  # type: ignore[return-value]


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
