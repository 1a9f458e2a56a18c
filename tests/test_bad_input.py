"""Bad input and damaged files, as a user meets them: every case runs a script as a subprocess and
must end with exit status 2 and ONE line on stderr, "error: ...", naming the file or the flag; no
traceback, nothing before it, nothing written.

One representative case per class of failure (see checks.py): files we read that are damaged or
something else, paths we cannot write, non-finite numbers, flags out of range, and a resume that
would change the run. Each case is a fresh python (about 2 s of imports), so four run at a time.
"""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("--preset tiny --max-images 64 --batch-size 8 --log-every 1 --sample-every 0 --device cpu --warmup 2")


def make_files(folder: Path) -> dict[str, str]:
    """Fixture files by name ("." -> "_"): valid ones, and damaged ones to pair with them."""
    (folder / "a_file").write_text("a file, so nothing can be written under it\n")
    # a trained checkpoint, then damaged copies of it
    run = folder / "run"
    train.train(train.parse_args([*QUICK.split(), "--steps", "1", "--out", str(run)]))
    checkpoint = run / "ckpt.pt"
    (folder / "cut.pt").write_bytes(checkpoint.read_bytes()[:5000])
    torch.save({"model": {}, "ema": {}}, folder / "foreign.pt")  # a torch file, not one of train.py's
    state = torch.load(checkpoint, weights_only=True)
    first = next(iter(state["ema"]))
    state["ema"][first] = torch.full_like(state["ema"][first], float("nan"))
    torch.save(state, folder / "nan.pt")
    (folder / "stats.npz").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    # eval_fid inputs
    np.savez(folder / "samples.npz", arr_0=np.zeros((20, 8, 8, 3), np.uint8))
    np.savez(folder / "ref.npz", mu=np.zeros(4), sigma=np.eye(4))
    np.savez(folder / "nan_ref.npz", mu=np.zeros(4), sigma=np.diag([1.0, np.nan, 1.0, 1.0]))
    (folder / "cut_ref.npz").write_bytes((folder / "ref.npz").read_bytes()[:120])
    (folder / "garbage.npz").write_bytes(b"these are not images " * 20)
    (folder / "garbage.pth").write_bytes(b"\x00\x01 not weights " * 50)
    torch.save({"model": {}, "channels": 3}, folder / "keyless_clf.pt")  # no image_size, width, ...
    # an MNIST folder whose images .gz has a corrupt deflate stream
    mnist = folder / "mnist"
    mnist.mkdir()
    for stem, magic, array in (("train-images-idx3-ubyte", 2051, np.zeros((4, 28, 28), np.uint8)),
                               ("train-labels-idx1-ubyte", 2049, np.arange(4, dtype=np.uint8))):
        raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
        (mnist / f"{stem}.gz").write_bytes(gzip.compress(raw))
    images = mnist / "train-images-idx3-ubyte.gz"
    raw = images.read_bytes()
    # RFC 1951: the first deflate block header (byte 10, after gzip's fixed header) with BTYPE = 11,
    # a reserved block type: zlib.error inside gzip, which used to escape as a traceback
    images.write_bytes(raw[:10] + bytes([raw[10] | 0b111]) + raw[11:])
    files = {path.name.replace(".", "_"): str(path) for path in folder.iterdir()}
    return {**files, "ckpt": str(checkpoint), "tmp": str(folder), "quick": QUICK}


# (script and arguments, {NAME} for a fixture path; what the error line must name)
CASES = {
    # files we read: damaged, or something else
    "checkpoint_truncated": ("sample.py --ckpt {cut_pt} --nfe 1 --n 1", "cut.pt"),
    "checkpoint_of_something_else": ("sample.py --ckpt {foreign_pt} --nfe 1", "foreign.pt"),
    "prior_statistics_garbage": ("train.py {quick} --steps 1 --out {tmp}/r1 --prior-stats {stats_npz}", "stats.npz"),
    "idx_gz_corrupt_deflate": ("train.py --dataset mnist --data-dir {mnist} --steps 1 --device cpu --out {tmp}/r2",
                               "train-images-idx3-ubyte.gz"),
    "samples_not_a_zip": ("eval_fid.py calc --samples {garbage_npz} --ref {ref_npz}", "garbage.npz"),
    "reference_truncated": ("eval_fid.py calc --samples {samples_npz} --ref {cut_ref_npz}", "cut_ref.npz"),
    "inception_weights_garbage": ("eval_fid.py ref --images {samples_npz} --inception-weights {garbage_pth} "
                                  "--out {tmp}/made_ref.npz", "garbage.pth"),
    "classifier_without_keys": ("eval_fid.py ref --images {samples_npz} --features clf --clf {keyless_clf_pt} "
                                "--out {tmp}/made_ref.npz", "keyless_clf.pt"),
    # paths we write
    "train_out_under_a_file": ("train.py {quick} --steps 1 --out {a_file}/run", "--out"),
    "png_unknown_extension": ("sample.py --ckpt {ckpt} --nfe 1 --n 1 --out-png {tmp}/grid.pgnn", "--out-png"),
    "ref_out_under_a_file": ("eval_fid.py ref --images {samples_npz} --out {a_file}/ref.npz", "--out"),
    "toy2d_png_under_a_file": ("bench/toy2d.py --png {a_file}/toy.png", "--png"),
    # non-finite numbers
    "guidance_nan": ("sample.py --ckpt {ckpt} --nfe 2 --cfg nan", "--cfg"),
    "checkpoint_nan_weights": ("sample.py --ckpt {nan_pt} --nfe 1 --n 1 --out-png {tmp}/nan.png", "nan.pt"),
    "reference_nan": ("eval_fid.py calc --samples {samples_npz} --ref {nan_ref_npz}", "nan_ref.npz"),
    "train_lr_nan": ("train.py {quick} --steps 1 --out {tmp}/r3 --lr nan", "--lr"),
    # flags out of range
    "max_images_zero": ("train.py {quick} --steps 1 --out {tmp}/r4 --max-images 0", "--max-images"),
    "batch_size_zero": ("train.py {quick} --steps 1 --out {tmp}/r5 --batch-size 0", "--batch-size"),
    "device_absent": ("train.py {quick} --steps 1 --out {tmp}/r6 --device cuda:7", "--device"),
    "toy2d_zero_steps": ("bench/toy2d.py --steps 0 --png {tmp}/toy.png", "--steps"),
    # a resume that would change what the run learns
    "resume_with_another_prior": ("train.py {quick} --steps 2 --out {tmp}/run --resume --prior gaussian",
                                  "--prior gaussian"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    folder = tmp_path_factory.mktemp("bad_input")
    files = make_files(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(arguments: str) -> subprocess.CompletedProcess:
        argv = arguments.format_map(files).split()
        return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=180)

    with ThreadPoolExecutor(max_workers=4) as pool:  # about half the wall time on 2 cores
        done = dict(zip(CASES, pool.map(run, [arguments for arguments, _ in CASES.values()])))
    return done, folder


@pytest.mark.parametrize("case", CASES)
def test_one_error_line_naming_the_file_or_flag(results, case):
    result, named = results[0][case], CASES[case][1]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]


def test_what_the_lines_say_and_that_nothing_was_written(results):
    done, folder = results
    assert "'config'" in done["checkpoint_of_something_else"].stderr  # which key is missing
    assert "non-finite" in done["checkpoint_nan_weights"].stderr and not (folder / "nan.png").exists()
    assert "--lr" in done["resume_with_another_prior"].stderr  # it says what a resume may change
    assert not (folder / "made_ref.npz").exists() and not (folder / "r4").exists()
