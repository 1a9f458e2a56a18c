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
import subprocess
import sys
from pathlib import Path

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
