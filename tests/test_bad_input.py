"""Bad input and damaged files, as a user meets them: each case runs a script as a subprocess and
must end with a non-zero exit and ONE line on stderr that names the file or the flag, no traceback.

One representative case per class of failure (see checks.py): damaged files we read, paths we
cannot write, non-finite numbers, flags out of range, and a resume that would change the run.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--max-images", "64", "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
         "--device", "cpu", "--warmup", "2"]


def one_line_error(argv: list[str], must_name: str, cwd: Path = ROOT) -> str:
    """Run a script; assert the failure is one line naming `must_name`; return that line."""
    result = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout[-500:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and must_name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train.train(train.parse_args([*QUICK, "--steps", "1", "--out", str(out)]))
    return out / "ckpt.pt"


# --------------------------------------------------------------------------- files we read

def test_truncated_checkpoint(checkpoint, tmp_path):
    damaged = tmp_path / "cut.pt"
    damaged.write_bytes(checkpoint.read_bytes()[:5000])
    one_line_error(["sample.py", "--ckpt", str(damaged), "--nfe", "1", "--n", "1"], str(damaged))


def test_checkpoint_that_is_something_else(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"model": {}, "ema": {}}, other)  # a torch file, but not one of train.py's checkpoints
    line = one_line_error(["sample.py", "--ckpt", str(other), "--nfe", "1"], str(other))
    assert "'config'" in line


def test_garbage_prior_statistics(tmp_path):
    stats = tmp_path / "stats.npz"
    stats.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    one_line_error(["train.py", *QUICK, "--steps", "1", "--out", str(tmp_path / "run"), "--prior-stats", str(stats)],
                   str(stats))


# --------------------------------------------------------------------------- paths we write

def test_out_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("")
    one_line_error(["train.py", *QUICK, "--steps", "1", "--out", str(tmp_path / "taken" / "run")], "--out")


def test_png_with_an_unknown_extension(checkpoint, tmp_path):
    one_line_error(["sample.py", "--ckpt", str(checkpoint), "--nfe", "1", "--n", "1",
                    "--out-png", str(tmp_path / "grid.pgnn")], "--out-png")


# --------------------------------------------------------------------------- non-finite numbers

def test_guidance_weight_nan(checkpoint):
    one_line_error(["sample.py", "--ckpt", str(checkpoint), "--nfe", "2", "--cfg", "nan"], "--cfg")


def test_checkpoint_with_nan_weights(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=False)
    first = next(iter(state["ema"]))
    state["ema"][first] = torch.full_like(state["ema"][first], float("nan"))
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    line = one_line_error(["sample.py", "--ckpt", str(broken), "--nfe", "1", "--n", "1"], str(broken))
    assert "non-finite" in line and not list(tmp_path.glob("*.png"))  # no black images written


# --------------------------------------------------------------------------- flags out of range

@pytest.mark.parametrize("flag,value", [("--max-images", "0"), ("--batch-size", "0"), ("--lr", "nan"),
                                        ("--device", "cuda:7")])
def test_train_flag_out_of_range(tmp_path, flag, value):
    one_line_error(["train.py", *QUICK, "--steps", "1", "--out", str(tmp_path), flag, value], flag)


# --------------------------------------------------------------------------- resume

def test_resume_that_would_change_the_prior(checkpoint):
    line = one_line_error(["train.py", *QUICK, "--steps", "2", "--out", str(checkpoint.parent), "--resume",
                           "--prior", "gaussian"], "--prior gaussian")
    assert "--lr" in line  # it says what may change
