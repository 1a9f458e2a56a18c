"""What we write, and how: every output survives a kill, a full disk and a second run.

    check_out_dir / check_out_file   test, BEFORE any work starts, that a path can be written (not
                 a file where a folder is wanted, not under a file, not read-only, a known suffix)
    atomic_write writes a NEW temporary file with a unique name in PATH's folder (never one opened
                 by a predictable name: a planted symlink there is not followed), fsyncs it and
                 renames it over PATH, so a run killed mid-write keeps the old file whole; a failed
                 write (full disk, quota, file-size limit, I/O error) removes its temporary file,
                 keeps the old PATH and is one line naming PATH, the cause and the flag to change;
                 the writer holds a flock on its temporary file, so the next write of PATH can tell
                 a dead writer's leftover (removed) from a live one's (kept)
    write_together  a command's set of files (samples .npz + grid): never a new one beside an old one
    LogFile      the training log, appended to; its failures are one line too
    FolderLock   one run per --out folder at a time (OUT/.lock, held with flock; a lock left by a
                 killed run is taken over); `with hold_folder(OUT):` in train.py, which also removes
                 the folders it created when the run wrote nothing there
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import signal
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checks import first_line


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
    OSError line naming PATH and the fix ("or choose another FLAG" when the caller names its flag).
    A kill -9 leaves the temporary file: the next write of PATH removes it (remove_stale_temps)."""
    write_together([(Path(path), write, flag)])


def write_together(files: list[tuple[Path, Callable[[object], None], str]]) -> None:
    """Several files one command writes as a set, e.g. sample.py's .npz and the grid of the same
    images, [(path, write, flag), ...]: no kill ever leaves a new one beside an old one.

    Every file is written to its temporary file first (a failure removes them all and keeps the old
    set whole). Then the old files after the first are removed, and the new ones renamed in order.
    A kill leaves the old set (perhaps with some of the later files removed), or the new first file
    with each later one new or missing: a missing grid, never one of other images."""
    temps: list[TempFile] = []
    current = files[0][0], files[0][2]
    try:
        for path, write, flag in files:
            current = Path(path), flag
            temps.append(TempFile(Path(path), flag))
            temps[-1].fill(write)
        for temp in temps[1:]:
            current = temp.path, temp.flag
            temp.path.unlink(missing_ok=True)
        for temp in temps:
            current = temp.path, temp.flag
            temp.commit()
    except BaseException as err:
        for temp in temps:
            temp.discard()
        cause = os_error_in(err)
        if cause is None:  # a bug in write(), a KeyboardInterrupt: not a write failure
            raise
        raise write_error(current[0], cause, current[1]) from None
    for folder in dict.fromkeys(temp.path.parent for temp in temps):
        sync_folder(folder)


class TempFile:
    """PATH's new temporary file, .NAME.XXXXXXXX.tmp in PATH's folder, created exclusively and
    held with flock from creation to rename: the kernel drops the flock when its writer dies,
    however it dies, so a temporary file whose flock is free belongs to a dead writer and may be
    removed (remove_stale_temps) while a live writer's never is. Before creating its own, it
    removes such leftovers of the same PATH."""

    def __init__(self, path: Path, flag: str = ""):
        self.path, self.flag, self.done = path, flag, False
        remove_stale_temps(path)
        while True:
            self.descriptor, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            self.locked = flock(self.descriptor)
            if self.locked is not False and same_file(self.descriptor, Path(self.tmp)):
                return
            # another writer's remove_stale_temps took it between our creation and our flock (it
            # is removed or about to be): make another
            os.close(self.descriptor)

    def fill(self, write: Callable[[object], None]) -> None:
        with os.fdopen(self.descriptor, "wb", closefd=False) as file:
            mode = new_file_mode(self.path)  # mkstemp's 0600: make it what a plain open would
            os.fchmod(file.fileno(), mode) if hasattr(os, "fchmod") else os.chmod(self.tmp, mode)
            write(file)
            file.flush()
            os.fsync(file.fileno())

    def commit(self) -> None:
        if not self.locked:  # no flock here (Windows): close first, an open file cannot be renamed there
            self.close()
        os.replace(self.tmp, self.path)
        self.done = True
        self.close()  # after the rename: until then the flock says a live writer holds it

    def discard(self) -> None:
        if not self.done:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None


# a temporary file younger than this is left alone even when no one holds its flock: a writer that
# takes no flock (an older version of this code) may still be writing it
STALE_TEMP_S = 60.0


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of PATH (.NAME.XXXXXXXX.tmp beside it) that a killed writer left:
    only regular files whose flock we can take (no live writer holds it) and that were last written
    more than STALE_TEMP_S ago; never a symlink, never another file's. Where flock is missing or
    unsupported (some network file systems, Windows) nothing is removed. Says what it removed."""
    leftovers = path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp")
    removed = [leftover for leftover in leftovers if remove_unheld(leftover, STALE_TEMP_S)]
    if removed:
        print(f"{path}: removed {len(removed)} temporary file(s) a killed writer of it left ({removed[0].name}, ...)")
    return removed


def remove_unheld(leftover: Path, min_age: float) -> bool:
    """Unlink `leftover` if it is a regular file last written over min_age seconds ago whose flock
    no one holds (its writer is dead); True when removed."""
    flags = os.O_RDWR | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(leftover, flags)
    except OSError:  # a symlink (ELOOP), gone, another user's
        return False
    try:
        info = os.fstat(descriptor)
        if (stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime >= min_age
                and flock(descriptor) is True and same_file(descriptor, leftover)):
            leftover.unlink()
            return True
    except OSError:
        pass
    finally:
        os.close(descriptor)
    return False


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
        self.created: list[Path] = []  # folders made for this run, deepest first (hold_folder)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "FolderLock":
        deadline = time.monotonic() + 2 * self.STALE_EMPTY_S
        # SIGTERM becomes SystemExit (finally blocks run) before our name is in the lock file: once
        # another process can read that we hold the folder, a SIGTERM it sends must release it
        self.catch_sigterm()
        try:
            while not self.try_acquire():
                if time.monotonic() > deadline:  # a holder that never writes its name: a broken file system
                    raise ValueError(f"{self.flag} {self.folder}: cannot take {self.path} (it keeps changing, or "
                                     f"is empty and locked); if no run uses this folder, delete that file")
                time.sleep(0.05)
        except BaseException:
            self.restore_sigterm()
            raise
        remove_leftovers(self.folder)
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
            remove_if_empty(self.created)

    def catch_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous_sigterm = signal.signal(signal.SIGTERM, raise_system_exit)

    def restore_sigterm(self) -> None:
        if self.previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.previous_sigterm)
        self.previous_sigterm = None


def remove_if_empty(folders: list[Path]) -> None:
    """rmdir each folder, deepest first, while they are empty: a run that failed before writing
    anything (no dataset at --data-dir, say) leaves no empty --out behind; one that wrote keeps it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours to remove): keep it and everything above it
            return


def remove_leftovers(folder: Path) -> None:
    """The temporary files a killed run left behind (atomic_write's .NAME.XXXXXXXX.tmp, in the
    folder and its sub-folders such as samples/): a run that holds the folder's lock is the only
    training run there, but sample.py or eval_fid.py may be writing beside its checkpoint, so a
    file whose flock a live writer holds is kept (see TempFile)."""
    stale = [path for pattern in (".*.tmp", "*/.*.tmp") for path in folder.glob(pattern)
             if path.is_file() and remove_unheld(path, 0.0)]
    if stale:
        print(f"{folder}: removed {len(stale)} temporary file(s) a stopped run left ({stale[0].name}, ...)")


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


def hold_folder(folder: str | Path, flag: str = "--out", rank: int = 0) -> contextlib.AbstractContextManager:
    """`with hold_folder(OUT):` the folder checked writable, then held (FolderLock) for the block;
    only rank 0 of a torchrun job holds it (the others write nothing there)."""
    if rank != 0:
        return contextlib.nullcontext()
    created = [path for path in [Path(folder), *Path(folder).parents] if not path.exists()]
    lock = FolderLock(check_out_dir(folder, flag), flag)
    lock.created = created  # made for this run: removed again if the run ends without writing there
    return lock
