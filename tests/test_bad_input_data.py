"""Bad input to toy2d.py and a damaged dataset file given to train.py, as a user meets them: exit
status 2 and ONE line on stderr, "error: ...", naming the flag or the file; no traceback.

Each case is a fresh python (about 2 s of imports), so all of them start at once. That toy2d checks
its flags before training is tested in-process in test_toy2d.py."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def make_files(folder: Path) -> dict[str, str]:
    (folder / "a_file").write_text("a file, so nothing can be written under it\n")
    mnist = folder / "mnist"
    mnist.mkdir()
    for stem, magic, array in (("train-images-idx3-ubyte", 2051, np.zeros((4, 28, 28), np.uint8)),
                               ("train-labels-idx1-ubyte", 2049, np.arange(4, dtype=np.uint8))):
        raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
        (mnist / f"{stem}.gz").write_bytes(gzip.compress(raw))
    images = mnist / "train-images-idx3-ubyte.gz"
    raw = images.read_bytes()
    # RFC 1951: the first deflate block header (byte 10 after gzip's fixed header) with BTYPE = 11,
    # a reserved block type: zlib.error inside gzip, which used to escape as a traceback
    images.write_bytes(raw[:10] + bytes([raw[10] | 0b111]) + raw[11:])
    return {"file": str(folder / "a_file"), "mnist": str(mnist), "out": str(folder / "run"),
            "tmp": str(folder)}


# (script and arguments with {NAME} for a fixture path, what the error line must name)
CASES = {
    "toy2d_zero_steps": ("toy2d.py --steps 0 --png {tmp}/toy.png", "--steps"),
    "toy2d_png_under_a_file": ("toy2d.py --png {file}/toy.png", "--png"),
    "toy2d_png_unknown_extension": ("toy2d.py --png {tmp}/out.xyz", "--png"),
    "train_corrupt_mnist_gz": ("train.py --dataset mnist --data-dir {mnist} --steps 1 --device cpu --out {out}",
                               "train-images-idx3-ubyte.gz"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    files = make_files(tmp_path_factory.mktemp("bad_input_data"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = {case: subprocess.Popen([sys.executable, *arguments.format_map(files).split()], cwd=REPO,
                                      env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for case, (arguments, _) in CASES.items()}
    done = {}
    for case, process in running.items():
        out, err = process.communicate(timeout=120)  # reads the pipes while waiting: no full-pipe stall
        done[case] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.mark.parametrize("case", CASES)
def test_one_error_line_naming_the_flag_or_file(results, case):
    result, named = results[case], CASES[case][1]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]
