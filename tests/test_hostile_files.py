"""Files a user is handed must not run code, however they were made.

A checkpoint is a pickle inside a zip. A full unpickler calls whatever callable the file names
(here: open(MARKER, "w"), which creates a file); torch.load(weights_only=True) only rebuilds
tensors and plain Python values and refuses anything else. Every script that reads a checkpoint
(sample.py --ckpt, train.py --resume; bench/sweep.py goes through sample.load_checkpoint) must refuse this file with one
line, exit 2, and leave no marker: on code that unpickles with weights_only=False the marker
appears and the run goes on with exit 0.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--preset tiny --max-images 64 --batch-size 8 --log-every 1 --sample-every 0 --device cpu --warmup 2"


class Hostile:
    """Unpickling this calls open(marker, "w"): the file appearing proves that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a folder whose ckpt.pt is a real checkpoint plus one hostile entry, that file, the marker)."""
    folder = tmp_path_factory.mktemp("hostile")
    run = folder / "run"
    train.train(train.parse_args([*QUICK.split(), "--steps", "1", "--out", str(run)]))
    marker = folder / "code_ran"
    checkpoint = torch.load(run / "ckpt.pt", weights_only=False)  # our own file; False: also with older code
    checkpoint["extra"] = Hostile(marker)
    torch.save(checkpoint, run / "ckpt.pt")
    assert not marker.exists()
    return run, run / "ckpt.pt", marker


@pytest.mark.parametrize("command", [
    "sample.py --ckpt {ckpt} --nfe 1 --n 1 --device cpu",
    "train.py " + QUICK + " --steps 2 --out {run} --resume",
    "train.py " + QUICK + " --steps 2 --out {folder}/other --resume {ckpt}",
])
def test_a_hostile_checkpoint_runs_no_code(hostile, command):
    run, ckpt, marker = hostile
    argv = command.format(ckpt=ckpt, run=run, folder=run.parent).split()
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert not marker.exists(), "loading the checkpoint ran code"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert str(ckpt) in lines[0] and "Traceback" not in result.stderr, lines[0]


# ---------------------------------------------------------------- a CIFAR batch with a forged dtype

class ForgedUint8:
    """Pickles as numpy's uint8 dtype, but with the internal state's flags set to `flags` (numpy's
    own uint8 pickles flags 0; 0x3f claims it holds Python objects, needs init, ...)."""

    def __init__(self, flags: int):
        self.flags = flags

    def __reduce__(self):
        return np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, self.flags)


class ForgedArray:
    """Pickles as ndarray.__reduce__ does (numpy's _reconstruct, then the array's state), with a forged dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: object):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return (np.ndarray.__reduce__(np.zeros(0, np.uint8))[0], (np.ndarray, (0,), b"b"),
                (1, self.shape, self.dtype, False, bytes(int(np.prod(self.shape)))))


@pytest.mark.parametrize("flags", [0x3f, 0x01])
def test_a_cifar_batch_with_a_forged_dtype_state_is_one_clean_error(tmp_path, capfd, flags):
    """Only allowed names (numpy's dtype, ndarray and _reconstruct), but the uint8 dtype's pickled
    state claims object flags: numpy's internals break on it (with 0x3f they print a RuntimeError
    traceback of their own, 'get_clear_loop not set'). The file must be refused in one line naming
    it, with nothing else on stderr; the same file with numpy's own state (flags 0) reads."""
    from plumbing import data
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for name in names:
        forged = ForgedUint8(flags if name == "test_batch" else 0)
        batch = {b"data": ForgedArray((2, 3072), forged), b"labels": [1, 2]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    images, labels = data.load_dataset("cifar10", tmp_path, "train").get(np.array([0, 1]))  # flags 0: read
    assert images.shape == (2, 3, 32, 32) and not images.any() and labels.tolist() == [1, 2]
    capfd.readouterr()
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch \(.*dtype.*state") as caught:
        data.load_dataset("cifar10", tmp_path, "test")
    assert "\n" not in str(caught.value)
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out and "RuntimeError" not in err + out, err
