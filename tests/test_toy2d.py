"""toy2d.py, reduced: the class prior shortens the paths and helps at few steps."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import toy2d  # noqa: E402


def test_blob_layout_puts_class_means_off_the_data():
    centres = toy2d.blob_centres(4, "ring")
    means = centres.mean(1)
    # the class mean sits between its two blobs, 3 sin(pi/8) ~ 1.15 away from each
    assert np.allclose(np.linalg.norm(centres - means[:, None], axis=-1), 3 * np.sin(np.pi / 8))
    inter = toy2d.blob_centres(2, "interleaved")
    assert np.allclose(inter[0].mean(0), inter[1][0])  # class 0's mean lies on a class-1 blob


def test_sliced_wasserstein_closed_form():
    # two point clouds that differ by a shift d: every projection moves by <d, theta>, and the
    # mean of cos^2 over half a circle is 1/2, so SW2 = |d| / sqrt(2)
    a = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert abs(toy2d.sliced_wasserstein(a, a + torch.tensor([3.0, 4.0])) - 5 / np.sqrt(2)) < 1e-3
    assert toy2d.sliced_wasserstein(a, a) == 0


def test_reduced_run_orders_transport_cost_and_nfe4_distance():
    results = toy2d.run(steps=800, n_per_class=500, nfes=(4,), seed=0)
    gaussian, ot, cls = results["gaussian"], results["gaussian+ot"], results["class"]
    assert cls["cost"] < gaussian["cost"] / 3
    assert ot["cost"] < gaussian["cost"]  # minibatch OT shortens paths too, though it ignores the class
    assert cls[4] < gaussian[4]


@pytest.mark.parametrize("argv,flag", [
    (["--steps", "0"], "--steps"), (["--batch-size", "0"], "--batch-size"), (["--classes", "1"], "--classes"),
    (["--sigma", "0"], "--sigma"), (["--sigma", "nan"], "--sigma"), (["--sigma", "inf"], "--sigma"),
    (["--png", "out.xyz"], "--png"), (["--png", "{file}/toy.png"], "--png"),
    (["--png", "{tmp}/folder.png"], "--png")])
def test_bad_flags_fail_before_training(tmp_path, monkeypatch, argv, flag):
    a_file = tmp_path / "a_file"
    a_file.write_text("a file, so nothing can be written under it")
    (tmp_path / "folder.png").mkdir()  # a folder where the image should go
    argv = [arg.format(file=a_file, tmp=tmp_path) for arg in argv]

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained before checking the flags")
    monkeypatch.setattr(toy2d, "run", must_not_train)
    with pytest.raises(ValueError, match=flag):
        toy2d.main(argv)


def test_one_step_run_writes_default_png_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --png is relative: runs/toy2d.png, folder created
    toy2d.main(["--steps", "1", "--classes", "3"])
    with Image.open(tmp_path / "runs" / "toy2d.png") as image:
        # three panels (one per method) of 360 px, plus a 20 px title band
        assert image.format == "PNG" and image.size == (3 * 360, 360 + 20)
    table = capsys.readouterr().out
    assert all(f"| {method} |" in table for method in toy2d.METHODS)
    assert "trajectories: runs/toy2d.png" in table
