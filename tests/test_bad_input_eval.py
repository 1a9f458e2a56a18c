"""Bad input to eval_fid.py, as a user meets it: the command ends with exit status 2 and ONE line
on stderr, "error: ...", naming the file or the flag; no traceback, nothing before it.

One case per kind of mistake (damaged samples, reference and weights files, NaN statistics, a
classifier file of something else, an unwritable --out, flags out of range, a missing device).
Each case is a fresh python (about 2-3 s of imports), so four run at a time."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def make_files(folder: Path) -> dict[str, str]:
    """The fixture files (valid ones to pair with each damaged one), by name with "_" for "."."""
    np.savez(folder / "samples.npz", arr_0=np.zeros((20, 8, 8, 3), np.uint8))
    np.savez(folder / "ref.npz", mu=np.zeros(4), sigma=np.eye(4))
    np.savez(folder / "nan_ref.npz", mu=np.zeros(4), sigma=np.diag([1.0, np.nan, 1.0, 1.0]))
    (folder / "cut_ref.npz").write_bytes((folder / "ref.npz").read_bytes()[:120])
    (folder / "garbage.npz").write_bytes(b"these are not images " * 20)
    (folder / "garbage.pth").write_bytes(b"\x00\x01 not weights " * 50)
    torch.save({"model": {}, "channels": 3}, folder / "keyless_clf.pt")  # no image_size, width, ...
    (folder / "a_file").write_text("a file, so nothing can be written under it\n")
    return {path.name.replace(".", "_"): str(path) for path in folder.iterdir()}  # {samples_npz}: samples.npz


# (arguments after eval_fid.py with {NAME} for a fixture file, what the error line must name)
CASES = {
    "samples_not_a_zip": ("calc --samples {garbage_npz} --ref {ref_npz}", "garbage.npz"),
    "reference_truncated": ("calc --samples {samples_npz} --ref {cut_ref_npz}", "cut_ref.npz"),
    "reference_with_nan": ("calc --samples {samples_npz} --ref {nan_ref_npz}", "nan_ref.npz"),
    "inception_weights_garbage": ("ref --images {samples_npz} --inception-weights {garbage_pth} --out {a_file}.npz",
                                  "garbage.pth"),
    "classifier_without_keys": ("ref --images {samples_npz} --features clf --clf {keyless_clf_pt} --out {a_file}.npz",
                                "keyless_clf.pt"),
    "out_under_a_file": ("ref --images {samples_npz} --out {a_file}/ref.npz", "--out"),
    "max_images_zero": ("ref --images {samples_npz} --max-images 0", "--max-images"),
    "device_absent": ("calc --samples {samples_npz} --ref {ref_npz} --device cuda:99", "--device"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    files = make_files(tmp_path_factory.mktemp("bad_input"))

    def run(arguments: str) -> subprocess.CompletedProcess:
        argv = [part.format_map(files) for part in arguments.split()]
        return subprocess.run([sys.executable, "eval_fid.py", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:  # 4 pythons at a time: about half the wall time on 2 cores
        return dict(zip(CASES, pool.map(run, [arguments for arguments, _ in CASES.values()])))


@pytest.mark.parametrize("case", CASES)
def test_one_error_line_naming_the_file_or_flag(results, case):
    result, named = results[case], CASES[case][1]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]
