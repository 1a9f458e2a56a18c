"""Files we write and files we read, when the disk, the folder or the file works against us.

    writes    a temporary file is created new (a planted PATH.tmp symlink is not followed); a write
              that fails (here: the file-size limit, RLIMIT_FSIZE, which fails a write with EFBIG
              like a full disk fails it with ENOSPC) is one line naming the file, leaves no
              temporary file and keeps the old file byte for byte; train.py then exits 2
    folders   one train.py per --out: a second one, or a --resume of a run that still trains, is
              refused naming the holder's pid; after kill -9 a --resume takes the stale lock over;
              after SIGTERM or a normal end no lock file remains
    idx       a .gz whose header declares 784 bytes but that inflates to 64 MB is refused after
              reading 785, naming the file; negative, overflowing and truncated sizes likewise

The limit is set in a child process only (preexec_fn): pytest's own files must stay writable.
"""
from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from plumbing import outputs, readers

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--max-images", "64", "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
         "--device", "cpu", "--warmup", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FILE_LIMIT = 2 << 20  # bytes: the tiny run's prior statistics (0.5 MB) fit, its checkpoint (5.6 MB) does not


def limit_file_size(limit: int = FILE_LIMIT):
    """A preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, not fatal)."""
    def set_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def leftovers(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp") or name == ".lock"]


# ---------------------------------------------------------------- writes

def test_the_temporary_file_is_new_and_a_planted_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "ckpt.pt.tmp").symlink_to(victim)  # the name the old code opened for writing
    outputs.save_torch(tmp_path / "ckpt.pt", {"step": 1})
    assert victim.read_text() == "precious"
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True) == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt.pt.tmp", "victim"]  # nothing else left
    umask = outputs.current_umask()
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    (tmp_path / "ckpt.pt").chmod(0o640)
    outputs.write_text(tmp_path / "ckpt.pt", "again")
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o640  # a rewrite keeps the file's mode


WRITE_OVER_OLD_FILES = r"""
import json, sys
from pathlib import Path
import torch
from plumbing import outputs
folder, results = Path(sys.argv[1]), {}
big = "x" * (1 << 20)
for name, save in (("ckpt.pt", lambda p: outputs.save_torch(p, {"weights": torch.zeros(1 << 18)}, "--out")),
                   ("stats.npz", lambda p: outputs.save_npz(p, {"mu": list(range(1 << 17))})),
                   ("report.txt", lambda p: outputs.write_text(p, big))):
    try:
        save(folder / name)
        results[name] = None
    except Exception as err:
        results[name] = [type(err).__name__, str(err), getattr(err, "errno", None)]
print(json.dumps(results))
"""


def test_a_write_past_the_file_size_limit_is_one_line_and_keeps_the_old_file(tmp_path):
    old = {"ckpt.pt": b"old checkpoint", "stats.npz": b"old statistics", "report.txt": b"old report"}
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    result = subprocess.run([sys.executable, "-c", WRITE_OVER_OLD_FILES, str(tmp_path)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size(64 << 10))
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout)
    for name, content in old.items():
        kind, message, code = failures[name]
        assert kind == "OSError" and code == 27 and "\n" not in message, failures[name]  # EFBIG
        assert message.startswith(f"cannot write {tmp_path / name}: file too large"), message
        assert (tmp_path / name).read_bytes() == content
    assert "or choose another --out" in failures["ckpt.pt"][1]
    assert sorted(os.listdir(tmp_path)) == sorted(old)  # no temporary file left


def test_train_on_a_full_disk_exits_2_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    train.train(train.parse_args([*QUICK, "--steps", "2", "--out", str(tmp_path)]))
    assert not leftovers(tmp_path)  # the lock is gone after a normal end
    before = (tmp_path / "ckpt.pt").read_bytes()
    assert len(before) > FILE_LIMIT  # else the limit below would not bite
    result = subprocess.run([sys.executable, "train.py", *QUICK, "--steps", "4", "--out", str(tmp_path), "--resume"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180,
                            preexec_fn=limit_file_size())
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"cannot write {tmp_path / 'ckpt.pt'}: file too large" in lines[0] and "--out" in lines[0], lines[0]
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert not leftovers(tmp_path), os.listdir(tmp_path)


# ---------------------------------------------------------------- one run per folder

def start_training(out: Path, *extra: str) -> subprocess.Popen:
    """A run that would take minutes, to be killed by the test."""
    return subprocess.Popen([sys.executable, "train.py", *QUICK, "--steps", "100000", "--ckpt-every", "5",
                             "--out", str(out), *extra], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def lock_holder(out: Path) -> int | None:
    try:
        return json.loads((out / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_one_run_per_folder_and_a_killed_run_resumes(tmp_path):
    first = start_training(tmp_path)
    second = None
    try:
        wait_for(lambda: lock_holder(tmp_path) == first.pid and (tmp_path / "ckpt.pt").exists(), first)
        arguments = [*QUICK, "--steps", "100000", "--out", str(tmp_path)]
        refused = [subprocess.Popen([sys.executable, "train.py", *arguments, *extra], cwd=ROOT, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for extra in ([], ["--resume"])]  # a second run, and a resume of the running one
        for process in refused:
            _, stderr = process.communicate(timeout=180)
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert process.returncode == 2 and len(lines) == 1, stderr[-2000:]
            assert lines[0].startswith(f"error: --out {tmp_path} is in use by pid {first.pid} on host "), lines[0]
            assert "wait for it, or choose another --out" in lines[0]

        first.send_signal(signal.SIGKILL)  # no finally runs: the lock file stays, its flock goes
        first.wait(timeout=60)
        assert lock_holder(tmp_path) == first.pid
        second = start_training(tmp_path, "--resume")
        wait_for(lambda: lock_holder(tmp_path) == second.pid, second)
        second.send_signal(signal.SIGTERM)  # torchrun's way to stop a run: finally blocks run
        stdout, stderr = second.communicate(timeout=120)
        assert second.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr[-2000:]
        assert f"taking over the lock of pid {first.pid}" in stdout and "which no longer runs" in stdout, stdout
        assert not leftovers(tmp_path), os.listdir(tmp_path)
        train.train(train.parse_args([*QUICK, "--steps", str(torch.load(tmp_path / "ckpt.pt", weights_only=True)[
            "step"] + 1), "--out", str(tmp_path), "--resume"]))
        assert not leftovers(tmp_path)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_taking_the_folder_removes_what_a_killed_write_left(tmp_path, capsys):
    """kill -9 inside atomic_write leaves its .NAME.XXXXXXXX.tmp; the next holder of the folder
    (the only writer there) removes such files, and nothing else."""
    (tmp_path / "samples").mkdir()
    stale = [tmp_path / ".ckpt.pt.abc123xy.tmp", tmp_path / "samples" / ".step_0000010.png.k2j4l5m6.tmp"]
    kept = [tmp_path / "ckpt.pt", tmp_path / "notes.tmp", tmp_path / "samples" / "step_0000010.png"]
    for path in stale + kept:
        path.write_bytes(b"x")
    with outputs.FolderLock(tmp_path):
        assert [path.exists() for path in stale + kept] == [False, False, True, True, True]
    assert "removed 2 temporary file(s)" in capsys.readouterr().out


def test_a_failed_run_releases_the_folder(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="already holds a run"):  # raised while the lock is held
        train.train(train.parse_args([*QUICK, "--steps", "1", "--out", str(tmp_path)]))
    assert not leftovers(tmp_path)
    with outputs.FolderLock(tmp_path):  # free again, in this process too
        with pytest.raises(ValueError, match=f"in use by pid {os.getpid()}"):
            outputs.FolderLock(tmp_path).acquire()


def test_a_stale_or_empty_lock_file_is_taken_over(tmp_path, capsys):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": "another-host", "started": "then"}))
    with outputs.FolderLock(tmp_path):  # its flock is free: whoever wrote it is gone
        assert lock_holder(tmp_path) == os.getpid()
    lock.write_text("")
    os.utime(lock, (0, 0))  # empty and old: its writer died before writing its name
    with outputs.FolderLock(tmp_path):
        pass
    assert "pid 4206649 on host another-host" in capsys.readouterr().out and not lock.exists()
    lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="cannot open .*remove it"):
        outputs.FolderLock(tmp_path).acquire()


# ---------------------------------------------------------------- what a killed writer leaves

# A writer that stops inside atomic_write with its temporary file half written: it writes a
# first chunk, says so, and waits (to be killed) before writing the rest.
STUCK_WRITER = r"""
import sys, time
from pathlib import Path
from plumbing import outputs

def write(file):
    file.write(b"half a file")
    file.flush()
    print("writing", flush=True)
    time.sleep(600)

outputs.atomic_write(Path(sys.argv[1]), write)
"""


def test_the_next_write_of_a_file_removes_a_dead_writers_temporary_file_only(tmp_path, capsys):
    """sample.py or eval_fid.py ref killed while writing PATH leave .PATH.XXXXXXXX.tmp; the next
    write of PATH removes it once its writer is dead, and never a live writer's (it holds the
    file's flock until its rename), a young file nobody holds (a writer that takes no flock), a
    symlink, or another file's temporary file."""
    target = tmp_path / "samples.npz"
    target.write_bytes(b"old")
    writer = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, str(target)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        [live] = tmp_path.glob(".samples.npz.*.tmp")
        os.utime(live, (0, 0))  # as old as can be: only the flock tells that its writer lives
        young = tmp_path / ".samples.npz.young123.tmp"  # nobody holds it, but just written
        other = tmp_path / ".grid.png.abcdefgh.tmp"  # a killed writer's, of another file
        aged = tmp_path / ".samples.npz.aged1234.tmp"  # a killed writer's, of this file
        link = tmp_path / ".samples.npz.link1234.tmp"
        for path in (young, other, aged):
            path.write_bytes(b"left")
        link.symlink_to(other)
        for path in (other, aged):
            os.utime(path, (0, 0))
        os.utime(link, (0, 0), follow_symlinks=False)
        outputs.save_npz(target, {"x": np.arange(3)})
        assert live.exists() and young.exists() and other.exists() and link.is_symlink() and not aged.exists()
        assert "removed 1 temporary file(s) a killed writer of it left" in capsys.readouterr().out
        writer.send_signal(signal.SIGKILL)  # no finally runs: its temporary file stays, its flock goes
        writer.wait(timeout=60)
        assert live.exists() and target.read_bytes().startswith(b"PK")  # our write went through whole
        outputs.save_npz(target, {"x": np.arange(4)})
        assert not live.exists() and young.exists() and other.exists() and link.is_symlink()
        with np.load(target) as arrays:
            assert arrays["x"].tolist() == [0, 1, 2, 3]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


# sample.py, killed at the k-th call of os.fsync or os.replace: every point where a kill leaves
# the writes in between (each temporary file written, each rename done)
KILLED_SAMPLE = r"""
import os, signal, sys
point, k = sys.argv[1], int(sys.argv[2])
calls = {"fsync": 0, "replace": 0}
real = {"fsync": os.fsync, "replace": os.replace}

def hooked(name):
    def call(*args, **kwargs):
        calls[name] += 1
        if name == point and calls[name] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real[name](*args, **kwargs)
    return call

os.fsync, os.replace = hooked("fsync"), hooked("replace")
import sample
sample.main(sys.argv[3:])
"""


def test_a_killed_sample_never_leaves_a_grid_beside_another_runs_samples(tmp_path):
    """sample.py writes an .npz and a PNG grid of the same images. Killed at any point of its
    writes, the two files left must not disagree: never the new .npz beside the old grid, nor the
    old .npz beside the new grid (the new .npz without a grid is allowed: README says so)."""
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image
    import sample
    run = tmp_path / "run"
    train.train(train.parse_args([*QUICK, "--steps", "1", "--out", str(run)]))
    base = ["--ckpt", str(run / "ckpt.pt"), "--nfe", "1", "--n", "2", "--device", "cpu"]
    versions = {}
    for seed in ("1", "2"):  # seed 1: the files already there; seed 2: the killed command's
        sample.main([*base, "--seed", seed, "--out-png", str(tmp_path / f"s{seed}.png"),
                     "--out-npz", str(tmp_path / f"s{seed}.npz")])
        with np.load(tmp_path / f"s{seed}.npz") as arrays, Image.open(tmp_path / f"s{seed}.png") as grid:
            versions[seed] = arrays["arr_0"].copy(), np.asarray(grid).copy()
    assert not np.array_equal(versions["1"][0], versions["2"][0])

    # the first rename, the second, and the second fsync (the second temporary file written): with
    # both files in one folder these are the points between the writes (a kill during the first
    # temporary file leaves what the second rename's does not touch either: the old set)
    points = [("fsync", 2), ("replace", 1), ("replace", 2)]

    def killed(point: tuple[str, int]) -> tuple[str, str]:
        folder = tmp_path / f"{point[0]}{point[1]}"
        folder.mkdir()
        for suffix in ("png", "npz"):
            (folder / f"out.{suffix}").write_bytes((tmp_path / f"s1.{suffix}").read_bytes())
        argv = [*base, "--seed", "2", "--out-png", str(folder / "out.png"), "--out-npz", str(folder / "out.npz")]
        result = subprocess.run([sys.executable, "-c", KILLED_SAMPLE, point[0], str(point[1]), *argv], cwd=ROOT,
                                env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]  # killed where asked

        def which(path: Path, index: int) -> str:
            if not path.exists():
                return "missing"
            if index == 0:
                with np.load(path) as arrays:
                    found = arrays["arr_0"]
            else:
                with Image.open(path) as grid:
                    found = np.asarray(grid)
            return next(seed for seed, kept in versions.items() if np.array_equal(kept[index], found))
        return which(folder / "out.npz", 0), which(folder / "out.png", 1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        states = dict(zip(points, pool.map(killed, points)))
    for point, (npz, png) in states.items():
        assert npz != "missing" and png in (npz, "missing"), (point, npz, png)
    assert ("1", "1") in states.values() and ("2", "missing") in states.values()  # the points were reached

    # the killed command's temporary files stay until the same command runs again, which removes
    # them (their writer is dead) and writes both files
    folder = tmp_path / "replace1"
    left = sorted(path.name for path in folder.glob(".*.tmp"))
    assert [name.split(".")[1] for name in left] == ["out", "out"], left  # .out.npz.X.tmp, .out.png.X.tmp
    for path in folder.glob(".*.tmp"):
        os.utime(path, (0, 0))  # older than a minute
    sample.main([*base, "--seed", "2", "--out-png", str(folder / "out.png"), "--out-npz", str(folder / "out.npz")])
    assert sorted(os.listdir(folder)) == ["out.npz", "out.png"]


# ---------------------------------------------------------------- idx headers that lie

def idx_header(magic: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack(">i", magic) + struct.pack(f">{len(shape)}i", *shape)


def test_a_gzip_bomb_is_refused_after_its_declared_size(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as file:  # 64 MB of zeros: about 0.3 MB on disk
        file.write(idx_header(2051, (1, 28, 28)))
        zeros = bytes(1 << 20)
        for _ in range(64):
            file.write(zeros)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ValueError) as err:
            readers.read_idx(path, 2051)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert message.startswith(f"{path}: holds more data than its header declares ((1, 28, 28) = 784 bytes)"), message
    assert "re-download it" in message and "\n" not in message
    assert peak < 4 << 20 and time.perf_counter() - started < 5, (peak, time.perf_counter() - started)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape, payload, said", [
    ((1, -28, 28), b"", "declares a negative size (1, -28, 28)"),
    ((2 ** 31 - 1,) * 3, b"", "declares (2147483647, 2147483647, 2147483647) = 9903520300447984150353281023 bytes"),
    ((6000, 1000, 1000), b"", "declares (6000, 1000, 1000) = 6000000000 bytes, more than any idx dataset holds"),
    ((2, 28, 28), bytes(784), "header says (2, 28, 28) = 1568 bytes but 784 follow"),
])
def test_lying_idx_headers_are_one_line_naming_the_file(tmp_path, suffix, shape, payload, said):
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    raw = idx_header(2051, shape) + payload
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    with pytest.raises(ValueError) as err:
        readers.read_idx(path, 2051)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and said in message and "re-download it" in message, message
    assert "\n" not in message


def test_a_valid_idx_file_still_reads_gzipped_or_not(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for suffix in ("", ".gz"):
        path = tmp_path / f"train-images-idx3-ubyte{suffix}"
        raw = idx_header(2051, images.shape) + images.tobytes()
        path.write_bytes(gzip.compress(raw) if suffix else raw)
        assert (readers.read_idx(path, 2051) == images).all()
        path.write_bytes(gzip.compress(raw + b"\x00") if suffix else raw + b"\x00")  # one byte too many
        with pytest.raises(ValueError, match="more data than its header declares|but 2353 follow"):
            readers.read_idx(path, 2051)
