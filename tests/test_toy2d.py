"""toy2d.py, reduced: the class prior shortens the paths and helps at few steps."""
import numpy as np
import torch

import toy2d


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
