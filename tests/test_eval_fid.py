"""eval_fid: closed-form Frechet distances, the eigvalsh path against pytorch-fid's sqrtm formula and
the reference path (sqrtm, its eps fallback) it takes on singular products,
KID against a double loop, the Inception layout of the published weights file, pytorch-fid's
preprocessing, damaged input files, and ref/calc/sweep end to end with the classifier features of
features.py (CPU, no weights file, no network). The command-line error lines: test_bad_input.py."""
from __future__ import annotations

import csv
import json
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from plumbing import classifier, conditions, samplefiles
import eval_fid
import sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sweep  # noqa: E402 (bench/sweep.py)
from plumbing.checkpoint import prior_to_checkpoint
from eval_fid import frechet_distance, frechet_distance_sqrtm, kid
from plumbing.classifier import Classifier
from plumbing.inception import InceptionV3, inception_preprocess

REPO = Path(__file__).resolve().parents[1]


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------- Frechet distance

def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fd_commuting_covariances():
    # same eigenbasis Q: Tr sqrt(S1 S2) = sum sqrt(a_i b_i)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.ones(6), np.zeros(6)
    expected = 6 + np.sum(a) + np.sum(b) - 2 * np.sum(np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fd_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 20), random_spd(rng, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def regularised_fd(mu1, s1, mu2, s2, eps: float) -> float:
    """pytorch-fid's fallback value, independently: Tr sqrt(A B) = sum sqrt(eigenvalues of A B)
    (real, positive for A, B positive definite), with A, B = S + eps I; the traces stay unregularised."""
    offset = eps * np.eye(len(mu1))
    eigenvalues = np.linalg.eigvals((s1 + offset) @ (s2 + offset))
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eigenvalues.real).sum())


@pytest.mark.parametrize("failure", ["nan", "not a root"])
def test_fd_fallback_when_our_check_rejects_the_root(failure):
    # the first root fails our check (not finite / does not square back to S1 S2): the value must be
    # the regularised one, taken from (S1 + eps I)(S2 + eps I)
    rng = np.random.default_rng(8)
    s1, s2, mu1, mu2 = random_spd(rng, 5), random_spd(rng, 5), rng.normal(size=5), rng.normal(size=5)
    calls = []

    def failing_once(matrix: np.ndarray) -> np.ndarray:
        calls.append(matrix)
        if len(calls) > 1:
            return scipy.linalg.sqrtm(matrix)
        return np.full_like(matrix, np.nan) if failure == "nan" else matrix  # M is no root of M (M^2 != M)

    eps = 1e-2  # large, so the regularised value is far from the plain one
    with pytest.warns(UserWarning, match="adding 0.01"):
        value = frechet_distance_sqrtm(mu1, s1, mu2, s2, eps=eps, sqrtm=failing_once)
    assert len(calls) == 2 and np.allclose(calls[1], (s1 + eps * np.eye(5)) @ (s2 + eps * np.eye(5)), rtol=1e-14)
    assert value == pytest.approx(regularised_fd(mu1, s1, mu2, s2, eps), rel=1e-10)
    assert abs(value - regularised_fd(mu1, s1, mu2, s2, 0.0)) > 1e-3  # it did not use the plain product

    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no accurate sqrtm"):  # both fail: no number
        frechet_distance_sqrtm(mu1, s1, mu2, s2, sqrtm=lambda matrix: matrix)


def test_fd_healthy_case_takes_no_fallback():
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    calls = []

    def counting(matrix: np.ndarray) -> np.ndarray:
        calls.append(matrix)
        return scipy.linalg.sqrtm(matrix)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback's warning would fail here
        value = frechet_distance_sqrtm(np.zeros(6), q @ np.diag(a) @ q.T, np.zeros(6), q @ np.diag(b) @ q.T,
                                       sqrtm=counting)
    assert len(calls) == 1  # commuting covariances: Tr sqrt(S1 S2) = sum sqrt(a_i b_i)
    assert value == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)


def test_fd_singular_product_whichever_path():
    # S1 = v v^T (rank 1): S1 S2 = v (S2 v)^T has the single non-zero eigenvalue v.S2 v = 10, so
    # Tr sqrt(S1 S2) = sqrt(10). Some scipy versions return NaN here (fallback), others a root:
    # either way the value is the closed form, up to the fallback's O(sqrt(eps)) per null direction
    v = np.array([1.0, 1, -1, -1])
    s1 = np.outer(v, v)
    s2 = np.array([[2.0, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = frechet_distance(np.zeros(4), s1, np.zeros(4), s2)
    assert value == pytest.approx(4 + 4 - 2 * np.sqrt(10), abs=1e-2)


def test_fd_refuses_non_finite_statistics():
    with pytest.raises(ValueError, match="sigma2 is not finite"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.diag([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="mu1 is not finite"):
        frechet_distance(np.array([0, np.inf, 0]), np.eye(3), np.zeros(3), np.eye(3))


def test_fd_rank_deficient_sample_covariances():
    # fewer samples than dimensions: the product is singular, the root may come back complex with
    # a tiny imaginary part (here forced, whatever scipy does): dropping it is right
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # independent reference: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix
    w, v = np.linalg.eigh(s1)
    half = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)))
    diff = x.mean(0) - y.mean(0)
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert frechet_distance(x.mean(0), s1, y.mean(0), s2) == pytest.approx(expected, rel=1e-6)
        complex_root = frechet_distance_sqrtm(x.mean(0), s1, y.mean(0), s2,
                                              sqrtm=lambda matrix: scipy.linalg.sqrtm(matrix) + 1e-9j)
    assert complex_root == pytest.approx(expected, rel=1e-6)


def test_fd_errors():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), -np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def pytorch_fid_value(mu1, s1, mu2, s2) -> float:
    """pytorch-fid 0.3.0's calculate_frechet_distance where its first root is finite (no eps): the
    real part of scipy's sqrtm of S1 S2, written out here, independent of eval_fid."""
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    assert np.isfinite(covmean).all()
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def feature_statistics(rng: np.random.Generator, n: int, d: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of n pool3-like features: non-negative and correlated (one mixing per d:
    one distribution for a shift of 0)."""
    mixing = np.eye(d) + np.random.default_rng(d).normal(size=(d, d)) / np.sqrt(d)
    x = np.abs(rng.normal(size=(n, d)) @ mixing) + shift
    return x.mean(0), np.cov(x, rowvar=False)


def sqrtm_calls(function, *args, **kwargs) -> tuple[object, int]:
    """(function's result, how many times a Python function named sqrtm ran inside it): whichever
    way sqrtm was bound (a default argument, a module attribute), the profiler sees the call."""
    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(1) if event == "call" and frame.f_code.co_name == "sqrtm"
                   else None)
    try:
        result = function(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return result, len(calls)


@pytest.mark.parametrize("d, n, shift", [(64, 400, 0.0), (128, 1000, 0.05), (256, 2000, 1.0)])
def test_fd_equals_pytorch_fids_formula_without_a_square_root(d, n, shift):
    # one distribution twice (a small FD: the traces cancel), a near one, a far one
    rng = np.random.default_rng(d)
    mu1, s1, mu2, s2 = *feature_statistics(rng, n, d, 0.0), *feature_statistics(rng, n, d, shift)
    value, calls = sqrtm_calls(frechet_distance, mu1, s1, mu2, s2, device="cpu")
    assert calls == 0  # the Cholesky-eigvalsh path: no matrix square root
    assert value == pytest.approx(pytorch_fid_value(mu1, s1, mu2, s2), rel=1e-9)
    assert value == pytest.approx(frechet_distance_sqrtm(mu1, s1, mu2, s2), rel=1e-9)


def test_fd_one_dimension_closed_form():
    # two 1-d Gaussians: FD = (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2
    for (m1, v1), (m2, v2) in [((0.3, 2.0), (-1.1, 0.5)), ((5.0, 1e-4), (5.0, 9.0)), ((1.0, 1.0), (1.0, 1.0))]:
        expected = (m1 - m2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2
        value = frechet_distance(np.array([m1]), np.array([[v1]]), np.array([m2]), np.array([[v2]]), device="cpu")
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_fd_closed_form_to_1e12_where_sqrtm_loses_digits():
    # commuting covariances whose eigenvalues span 1e-5 (condition 1e5 each, the product 1e10, not
    # singular): the Cholesky-eigvalsh path keeps the closed form to 1e-12; sqrtm's Schur form
    # (the reference, pytorch-fid's) is off by 1e-12 to 2e-11 on these draws
    for seed in range(1, 7):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
        a = np.logspace(0, -5, 64)
        b = a * rng.uniform(0.5, 2, 64)
        s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
        s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
        expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
        assert frechet_distance(np.zeros(64), s1, np.zeros(64), s2, device="cpu") == pytest.approx(expected, rel=1e-12)


def test_fd_product_eigenvalues_closed_form_numpy_and_torch():
    # commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: the eigenvalues of S1 S2 are a_i b_i; the
    # torch path (the GPU's, here on the CPU) gives the same numbers as numpy's
    rng = np.random.default_rng(10)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    a, b = rng.uniform(0.1, 3, 40), rng.uniform(0.1, 3, 40)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    expected = np.sort(a * b)
    for device in (None, torch.device("cpu")):
        assert np.allclose(eval_fid.product_eigenvalues(s1, s2, device), expected, rtol=0, atol=1e-12)
    mu1, s1, mu2, s2 = *feature_statistics(rng, 500, 96, 0.0), *feature_statistics(rng, 500, 96, 0.1)
    traces = [np.sqrt(eval_fid.product_eigenvalues(s1, s2, device)).sum() for device in (None, torch.device("cpu"))]
    assert traces[1] == pytest.approx(traces[0], rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_fd_on_the_gpu_equals_the_cpu():
    rng = np.random.default_rng(11)
    mu1, s1, mu2, s2 = *feature_statistics(rng, 1000, 256, 0.0), *feature_statistics(rng, 1000, 256, 0.1)
    assert frechet_distance(mu1, s1, mu2, s2, device="cuda") == pytest.approx(
        frechet_distance(mu1, s1, mu2, s2, device="cpu"), rel=1e-11)


def test_fd_singular_product_takes_pytorch_fids_path(monkeypatch):
    # a numerically singular S1 S2 (too few samples; a dead unit) is where pytorch-fid's sqrtm may fail
    # and it regularises: frechet_distance takes that path (frechet_distance_sqrtm), a healthy one not.
    # Here the reference's first root fails, so a singular product must give the regularised value
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(20, 32)), rng.normal(size=(25, 32)) + 0.5
    few = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    x, y = np.abs(rng.normal(size=(300, 32))), np.abs(rng.normal(size=(300, 32))) + 0.1
    x[:, 3] = y[:, 3] = 0  # a feature that never fires
    dead = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = [frechet_distance_sqrtm(*stats) for stats in (few, dead)]
        # unpatched: the reference's number, exactly
        assert [frechet_distance(*stats, device="cpu") for stats in (few, dead)] == plain

    reference, calls = eval_fid.frechet_distance_sqrtm, []

    def failing_first_root(*args, **kwargs):
        calls.append(args)
        roots = iter([lambda matrix: np.full_like(matrix, np.nan)])
        return reference(*args, sqrtm=lambda matrix: next(roots, scipy.linalg.sqrtm)(matrix), **kwargs)

    monkeypatch.setattr(eval_fid, "frechet_distance_sqrtm", failing_first_root)
    eps = 1e-2  # large, so the regularised value is far from the plain one
    for stats, plain_value in zip((few, dead), plain):
        with pytest.warns(UserWarning, match="adding 0.01"):
            value = frechet_distance(*stats, eps=eps, device="cpu")
        assert value == pytest.approx(regularised_fd(*stats, eps), rel=1e-10)
        assert abs(value - plain_value) > 1e-3
    assert len(calls) == 2
    healthy = (*feature_statistics(rng, 300, 32, 0.0), *feature_statistics(rng, 300, 32, 0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback's warning would fail here
        value = frechet_distance(*healthy, eps=eps, device="cpu")
    assert len(calls) == 2 and value == pytest.approx(pytorch_fid_value(*healthy), rel=1e-9)


def test_running_stats_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(301, 7)) * 3 + 1000  # a large offset: the shift keeps float64 exact
    stats = eval_fid.RunningStats()
    for start in range(0, len(x), 64):
        stats.update(x[start:start + 64])
    mu, sigma = stats.result()
    assert np.allclose(mu, x.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- KID

def test_mmd_matches_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)) + 0.3
    d, m = 4, 7

    def k(a, b):
        return (sum(a[i] * b[i] for i in range(d)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert eval_fid.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    mean, std = kid(x, y)  # every subset is the whole set: one subset, no spread
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == 0


def test_kid_near_zero_for_one_distribution_positive_for_two():
    rng = np.random.default_rng(6)
    a, b, c = rng.normal(size=(600, 16)), rng.normal(size=(600, 16)), rng.normal(size=(600, 16)) + 0.5
    same, same_std = kid(a, b, num_subsets=20, subset_size=300)
    other, _ = kid(a, c, num_subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert other > 20 * max(abs(same), same_std)
    assert kid(a, c, num_subsets=5, subset_size=100, seed=1) == kid(a, c, num_subsets=5, subset_size=100, seed=1)


def kid_as_written(x: np.ndarray, y: np.ndarray, num_subsets: int, m: int, seed: int) -> tuple[float, float]:
    """The estimator as the module docstring writes it (the kernel by pow, the diagonal by trace),
    on the subsets kid draws: x's then y's indices from one seeded generator."""
    rng, values = np.random.default_rng(seed), []
    for _ in range(num_subsets):
        a, b = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        k_xx, k_yy, k_xy = [(p @ q.T / x.shape[1] + 1) ** 3 for p, q in ((a, a), (b, b), (a, b))]
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values.append(within - 2 * k_xy.sum() / m ** 2)
    return float(np.mean(values)), float(np.std(values))


def test_kid_same_numbers_as_the_formula():
    rng = np.random.default_rng(13)
    x, y = np.abs(rng.normal(size=(500, 64))), np.abs(rng.normal(size=(400, 64))) + 0.05
    expected = kid_as_written(x, y, 8, 150, seed=3)
    assert kid(x, y, num_subsets=8, subset_size=150, seed=3, device="cpu") == pytest.approx(expected, rel=1e-12)


def test_mmd_torch_tensors_same_numbers_as_numpy():
    # kid's GPU path computes mmd2_unbiased on tensors: the same code, here on the CPU
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(120, 48)), rng.normal(size=(90, 48)) + 0.2
    value = eval_fid.mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float64
    assert float(value) == pytest.approx(eval_fid.mmd2_unbiased(x, y), rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_kid_on_the_gpu_equals_the_cpu():
    rng = np.random.default_rng(15)
    x, y = np.abs(rng.normal(size=(600, 256))), np.abs(rng.normal(size=(500, 256))) + 0.05
    on_gpu, on_cpu = (kid(x, y, num_subsets=10, subset_size=300, device=device) for device in ("cuda", "cpu"))
    assert on_gpu == pytest.approx(on_cpu, rel=1e-11)


# ---------------------------------------------------------------- Inception

def conv(name: str, cin: int, cout: int, kh: int, kw: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.conv.weight": (cout, cin, kh, kw), f"{name}.bn.weight": (cout,),
            f"{name}.bn.bias": (cout,), f"{name}.bn.running_mean": (cout,),
            f"{name}.bn.running_var": (cout,), f"{name}.bn.num_batches_tracked": ()}


def published_layout() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of pt_inception-2015-12-05-6726825d.pth: torchvision's Inception3 names,
    1008 classes, no AuxLogits; every BN saved with num_batches_tracked (see pytorch-fid issue #34)."""
    layers = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
              ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    for block, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        layers += [(f"{block}.branch1x1", cin, 64, 1, 1), (f"{block}.branch5x5_1", cin, 48, 1, 1),
                   (f"{block}.branch5x5_2", 48, 64, 5, 5), (f"{block}.branch3x3dbl_1", cin, 64, 1, 1),
                   (f"{block}.branch3x3dbl_2", 64, 96, 3, 3), (f"{block}.branch3x3dbl_3", 96, 96, 3, 3),
                   (f"{block}.branch_pool", cin, pool, 1, 1)]
    layers += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
               ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        layers += [(f"{block}.branch1x1", 768, 192, 1, 1), (f"{block}.branch7x7_1", 768, c7, 1, 1),
                   (f"{block}.branch7x7_2", c7, c7, 1, 7), (f"{block}.branch7x7_3", c7, 192, 7, 1),
                   (f"{block}.branch7x7dbl_1", 768, c7, 1, 1), (f"{block}.branch7x7dbl_2", c7, c7, 7, 1),
                   (f"{block}.branch7x7dbl_3", c7, c7, 1, 7), (f"{block}.branch7x7dbl_4", c7, c7, 7, 1),
                   (f"{block}.branch7x7dbl_5", c7, 192, 1, 7), (f"{block}.branch_pool", 768, 192, 1, 1)]
    layers += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
               ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
               ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    for block, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        layers += [(f"{block}.branch1x1", cin, 320, 1, 1), (f"{block}.branch3x3_1", cin, 384, 1, 1),
                   (f"{block}.branch3x3_2a", 384, 384, 1, 3), (f"{block}.branch3x3_2b", 384, 384, 3, 1),
                   (f"{block}.branch3x3dbl_1", cin, 448, 1, 1), (f"{block}.branch3x3dbl_2", 448, 384, 3, 3),
                   (f"{block}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{block}.branch3x3dbl_3b", 384, 384, 3, 1),
                   (f"{block}.branch_pool", cin, 192, 1, 1)]
    expected = {}
    for layer in layers:
        expected |= conv(*layer)
    return expected | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


@pytest.fixture(scope="module")
def inception() -> InceptionV3:
    return InceptionV3()


def test_inception_matches_published_weights_layout(inception):
    layout = {key: tuple(value.shape) for key, value in inception.state_dict().items()}
    assert layout == published_layout()
    # torchvision's Inception3 has 27,161,264 parameters with its 1000-class aux head; without
    # AuxLogits (3,326,696) and with 1008 classes (+16,392): 23,850,960
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960


def test_inception_forward_shape(inception):
    features = inception(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_preprocess_constant_and_bilinear():
    out = inception_preprocess(torch.full((1, 1, 7, 5), 0.25))
    assert out.shape == (1, 3, 299, 299) and torch.allclose(out, torch.full_like(out, -0.5))
    image = torch.tensor([[[[0.0, 1.0], [0.5, 0.2]]]]).expand(1, 3, 2, 2)
    out = inception_preprocess(image)

    def hand(i: int) -> tuple[int, int, float]:  # align_corners=False: src = (i + 0.5) * 2/299 - 0.5
        src = max((i + 0.5) * 2 / 299 - 0.5, 0.0)
        low = int(np.floor(src))
        return low, min(low + 1, 1), src - low

    for row, col in [(0, 0), (298, 298), (149, 149), (100, 40), (200, 260), (0, 149)]:
        r0, r1, a = hand(row)
        c0, c1, b = hand(col)
        img = image[0, 0].double()
        value = ((1 - a) * ((1 - b) * img[r0, c0] + b * img[r0, c1])
                 + a * ((1 - b) * img[r1, c0] + b * img[r1, c1]))
        assert out[0, :, row, col].double() == pytest.approx([2 * float(value) - 1] * 3, abs=1e-6)


def test_weights_file_loads_strictly(tmp_path, inception):
    path = tmp_path / eval_fid.INCEPTION_FILE
    state = {key: torch.randn_like(value.float()).to(value.dtype) for key, value in inception.state_dict().items()}
    torch.save(state, path)
    with pytest.warns(UserWarning, match="sha256"):  # not the real file
        loaded = InceptionV3(path)
    assert all(torch.equal(loaded.state_dict()[key], state[key]) for key in state)
    torch.save({"fc.weight": state["fc.weight"]}, path)  # keys missing: refused, not half-loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before the sha256 warning: the error is the only line
        with pytest.raises(ValueError, match="not the pytorch-fid Inception"):
            InceptionV3(path)
        path.write_bytes(path.read_bytes()[:1000])  # truncated
        with pytest.raises(ValueError, match=f"{path}: not a readable Inception weights file"):
            InceptionV3(path)


def test_missing_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        InceptionV3("auto")
    message = str(caught.value)  # where it looked, the file, where to get it, the offline alternative
    for part in (str(tmp_path / "checkpoints"), eval_fid.INCEPTION_FILE, "releases/download/fid_weights/",
                 "--inception-weights", "--features clf"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="no Inception weights file at .*--features clf"):
        eval_fid.main(["ref", "--images", str(tmp_path), "--out", str(tmp_path / "r.npz"),
                       "--inception-weights", str(tmp_path / "nothing.pth")])


# ---------------------------------------------------------------- files and errors

def test_load_images_folder_and_npz(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    arrays = rng.integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{i}.png")
    images, labels = samplefiles.load_samples(folder)
    assert labels is None and torch.equal(images, torch.from_numpy(arrays).permute(0, 3, 1, 2))
    np.savez(tmp_path / "s.npz", arr_0=arrays, arr_1=np.array([2, 0, 1]))
    images, labels = samplefiles.load_samples(tmp_path / "s.npz")
    assert images.shape == (3, 3, 6, 5) and labels.tolist() == [2, 0, 1]
    (folder / "broken.png").write_bytes((folder / "0.png").read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        samplefiles.load_samples(folder)
    (folder / "broken.png").unlink()
    Image.fromarray(arrays[0][:4]).save(folder / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        samplefiles.load_samples(folder)


def test_damaged_sample_files(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(tmp_path / "good.npz", arr_0=images)
    cases = {"garbage.npz": (b"not a zip file" * 10, "not a readable sample file"),
             "cut.npz": ((tmp_path / "good.npz").read_bytes()[:200], "not a readable sample file")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: {message}"):
            samplefiles.load_samples(tmp_path / name)
    np.savez(tmp_path / "other.npz", images=images)
    with pytest.raises(ValueError, match=r"other.npz: not a sample file \(no 'arr_0'\)"):
        samplefiles.load_samples(tmp_path / "other.npz")
    np.savez(tmp_path / "labels.npz", arr_0=images, arr_1=np.array([0, 1]))  # 3 images, 2 labels
    with pytest.raises(ValueError, match=r"labels.npz: arr_1 must hold one integer label per image.*\(3\)"):
        samplefiles.load_samples(tmp_path / "labels.npz")


def test_damaged_reference_files(tmp_path):
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"bad.npz: not a reference statistics file \(no 'mu', 'sigma'\)"):
        eval_fid.load_ref(tmp_path / "bad.npz")
    np.savez(tmp_path / "ok.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert eval_fid.load_ref(tmp_path / "ok.npz")["feature_name"] == "inception"  # a pytorch-fid file
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:150])
    with pytest.raises(ValueError, match="cut.npz: not a readable reference statistics file"):
        eval_fid.load_ref(tmp_path / "cut.npz")
    np.savez(tmp_path / "nan.npz", mu=np.zeros(3), sigma=np.diag([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="nan.npz: sigma is not finite"):
        eval_fid.load_ref(tmp_path / "nan.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="are not a mean and its covariance"):
        eval_fid.load_ref(tmp_path / "shape.npz")


def test_too_few_samples_say_how_to_get_more():
    with pytest.raises(ValueError, match="2048-d features.*at least 2049.*: raise --n"):
        eval_fid.check_enough(100, 2048, "raise --n")


@pytest.mark.parametrize("argv, flag", [
    (["classifier", "--dataset", "shapes", "--steps", "0"], "--steps"),
    (["classifier", "--dataset", "shapes", "--width", "0"], "--width"),
    (["classifier", "--dataset", "shapes", "--eval-images", "0"], "--eval-images"),
    (["classifier", "--dataset", "shapes", "--lr", "0"], "--lr"),
    (["ref", "--dataset", "shapes", "--max-images", "0"], "--max-images"),
    (["ref", "--dataset", "shapes", "--max-images", "-5"], "--max-images"),
    (["calc", "--samples", "s.npz", "--ref", "r.npz", "--batch-size", "0"], "--batch-size"),
    (["sweep", "--ckpt", "c.pt", "--ref", "r.npz", "--n", "0"], "--n"),
    (["sweep", "--ckpt", "c.pt", "--ref", "r.npz", "--nfe", "4,0"], "--nfe"),
    (["calc", "--samples", "s.npz", "--ref", "r.npz", "--device", "cuda:7"], "--device"),
    (["calc", "--samples", "s.npz"], "--ref"),  # argparse's own errors are one ValueError line too
])
def test_flags_out_of_range_name_the_flag(argv, flag):
    script = {"classifier": classifier.main, "sweep": sweep.main}.get(argv[0])
    with pytest.raises(ValueError, match=flag):
        script(argv[1:]) if script else eval_fid.main(argv)


def test_out_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder.npz").mkdir()
    common = ["--device", "cpu", "--images", str(tmp_path / "missing.npz")]  # would fail later, if reached
    with pytest.raises(ValueError, match="--out .*folder.npz is a folder"):
        eval_fid.main(["ref", *common, "--out", str(tmp_path / "folder.npz")])
    with pytest.raises(ValueError, match="--out .*file is a file, not a folder"):
        eval_fid.main(["ref", *common, "--out", str(tmp_path / "file" / "ref.npz")])
    with pytest.raises(ValueError, match="--out .*must end in .npz"):
        eval_fid.main(["ref", *common, "--out", str(tmp_path / "ref.txt")])
    with pytest.raises(ValueError, match="--out .*file is a file, not a folder"):  # before training
        classifier.main(["--dataset", "shapes", "--out", str(tmp_path / "file" / "clf.pt")])
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    argv = ["--ckpt", str(ckpt), "--ref", str(tmp_path / "missing.npz")]
    with pytest.raises(ValueError, match="--out .* is a folder; give a name prefix"):
        sweep.main([*argv, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--out .*file is a file, not a folder"):
        sweep.main([*argv, "--out", str(tmp_path / "file" / "sweep")])


def test_help_shows_defaults(capsys, monkeypatch):
    with pytest.raises(SystemExit) as caught:
        sweep.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert caught.value.code == 0 and "(default: 10000)" in text and "(default: runs/sweep)" in text
    # python -m plumbing.classifier --help: its own options
    monkeypatch.setattr(sys, "argv", ["classifier.py", "--help"])
    monkeypatch.delitem(sys.modules, "plumbing.classifier", raising=False)  # run it fresh, as python -m does
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("plumbing.classifier", run_name="__main__")
    text = " ".join(capsys.readouterr().out.split())
    assert caught.value.code == 0 and "usage: python -m plumbing.classifier" in text and "(default: runs/clf.pt)" in text


# ---------------------------------------------------------------- end to end (classifier features)

def write_checkpoint(path: Path, prior_name: str, coupling: str) -> Path:
    """A tiny untrained checkpoint in the format of the team spec (shapes at 16x16). Its network
    outputs v = 0 (zero-initialised last layer), so its samples are prior draws."""
    from plumbing import data
    from prior import build_prior
    import unet

    torch.manual_seed(0)
    dataset = data.load_dataset("shapes", image_size=16)
    model = unet.build_unet("tiny", dataset.image_size, dataset.channels, dataset.num_classes)
    prior = build_prior(prior_name).fit([dataset.get(np.arange(200))], dataset.num_classes)
    config = {"dataset": "shapes", "data_dir": None, "dataset_options": {"image_size": 16}, "preset": "tiny",
              "image_size": dataset.image_size,
              "channels": dataset.channels, "num_classes": dataset.num_classes, "prior": prior_name,
              "prior_options": {}, "coupling": coupling, "seed": 0, "batch_size": 32}
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 0, "rng": None,
                "config": config, "prior": prior_to_checkpoint(prior),
                "class_names": dataset.class_names}, path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny classifier (16-d features) and reference statistics of 300 shapes images at 16x16."""
    folder = tmp_path_factory.mktemp("eval")
    clf, shapes = str(folder / "clf.pt"), ["--dataset", "shapes", "--image-size", "16"]
    classifier.main([*shapes, "--out", clf, "--steps", "10", "--batch-size", "32", "--width", "2",
                   "--eval-images", "100", "--device", "cpu"])
    eval_fid.main(["ref", *shapes, "--features", "clf", "--clf", clf, "--max-images", "300",
                   "--out", str(folder / "ref.npz"), "--device", "cpu"])
    return folder


def load_classifier(path: Path) -> Classifier:
    saved = torch.load(path, weights_only=True)
    net = Classifier(saved["channels"], saved["num_classes"], saved["width"])
    net.load_state_dict(saved["model"])
    return net.eval()


@torch.inference_mode()
def predict(net: Classifier, images: torch.Tensor) -> np.ndarray:
    """The classifier's classes, computed here rather than by eval_fid's code."""
    return net.logits(images.float() / 255).argmax(1).numpy()


def test_classifier_and_reference_files(workdir, capsys):
    from plumbing import data
    saved = torch.load(workdir / "clf.pt", weights_only=True)
    assert saved["width"] == 2 and saved["num_classes"] == 10
    # the stored accuracies are the saved network's on the first --eval-images (100) images of each split
    net = load_classifier(workdir / "clf.pt")
    for split in ("train", "test"):
        images, labels = data.load_dataset("shapes", split=split, image_size=16).get(np.arange(100))
        expected = np.mean(predict(net, images) == labels.numpy())
        assert saved[f"{split}_accuracy"] == pytest.approx(expected, abs=1e-12)
    ref = eval_fid.load_ref(workdir / "ref.npz")
    assert ref["mu"].shape == (16,) and ref["sigma"].shape == (16, 16) and ref["features"].shape == (300, 16)
    assert ref["feature_name"] == "clf" and int(ref["n"]) == 300 and tuple(ref["image_shape"]) == (3, 16, 16)


def test_calc_on_real_images_gives_a_small_distance(workdir, capsys):
    from plumbing import data
    images, _ = data.load_dataset("shapes", split="test", image_size=16).get(np.arange(100))
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (100, 3, 16, 16), np.uint8))
    # accuracy known by construction: labels = the classifier's own predictions (1) or never them (0)
    net = load_classifier(workdir / "clf.pt")
    np.savez(workdir / "real.npz", arr_0=images.permute(0, 2, 3, 1).numpy(), arr_1=predict(net, images))
    np.savez(workdir / "noise.npz", arr_0=noise.permute(0, 2, 3, 1).numpy(), arr_1=(predict(net, noise) + 1) % 10)
    results = []
    for name in ("real", "noise"):
        capsys.readouterr()
        eval_fid.main(["calc", "--samples", str(workdir / f"{name}.npz"), "--ref", str(workdir / "ref.npz"),
                       "--device", "cpu"])
        line, readable = capsys.readouterr().out.strip().splitlines()[-2:]
        results.append(json.loads(line))
        assert readable.startswith("FD-clf ") and "KID-clf" in readable
    real, noise = results
    assert real["metric"] == "FD-clf" and real["n"] == 100
    assert real["accuracy"] == 1.0 and noise["accuracy"] == 0.0
    assert noise["value"] > 3 * real["value"] and noise["kid"] > real["kid"]


def test_calc_refuses_mismatches(workdir):
    ref = str(workdir / "ref.npz")
    np.savez(workdir / "large.npz", arr_0=np.zeros((50, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"samples are \(3, 32, 32\).*\(3, 16, 16\)"):
        eval_fid.main(["calc", "--samples", str(workdir / "large.npz"), "--ref", ref, "--device", "cpu"])
    np.savez(workdir / "few.npz", arr_0=np.zeros((10, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="10 samples for 16-d features.*at least 17.*python sample.py --n"):
        eval_fid.main(["calc", "--samples", str(workdir / "few.npz"), "--ref", ref, "--device", "cpu"])
    large = str(workdir / "large.npz")  # enough samples: the mismatches below are found first
    with pytest.raises(ValueError, match="--features inception, but the reference was made with clf"):
        eval_fid.main(["calc", "--samples", large, "--ref", ref, "--features", "inception"])
    other = workdir / "other_clf.pt"
    saved = torch.load(workdir / "clf.pt", weights_only=True)
    torch.save(saved | {"seed": 1}, other)
    with pytest.raises(ValueError, match="same --clf file"):
        eval_fid.main(["calc", "--samples", large, "--ref", ref, "--clf", str(other)])


def test_damaged_classifier_files(workdir, tmp_path):
    saved = torch.load(workdir / "clf.pt", weights_only=True)
    images = tmp_path / "images.npz"
    np.savez(images, arr_0=np.random.default_rng(1).integers(0, 256, (20, 16, 16, 3), np.uint8))
    (tmp_path / "garbage.pt").write_bytes(b"garbage" * 100)
    torch.save({k: v for k, v in saved.items() if k != "width"}, tmp_path / "no_width.pt")
    torch.save(saved | {"width": 3}, tmp_path / "other_net.pt")  # weights of a width-2 network
    broken = saved | {"model": {k: v.clone() for k, v in saved["model"].items()}}
    broken["model"]["trunk.0.weight"][0, 0, 0, 0] = float("nan")  # every feature becomes NaN
    torch.save(broken, tmp_path / "nan.pt")
    cases = {"garbage.pt": "garbage.pt is a text file, not a classifier file",
             "no_width.pt": r"no_width.pt: not a classifier file \(no 'width'\)",
             "other_net.pt": "other_net.pt: not a classifier file of this classifier.py",
             "nan.pt": "features of classifier .*nan.pt is not finite"}
    for name, message in cases.items():
        out = tmp_path / f"ref_{name}.npz"
        with pytest.raises(ValueError, match=message):
            eval_fid.main(["ref", "--images", str(images), "--features", "clf", "--clf", str(tmp_path / name),
                           "--out", str(out), "--device", "cpu"])
        assert not out.exists()  # no statistics written, NaN or otherwise


def test_sweep_writes_table_csv_and_plot(workdir, capsys):
    ckpts = [write_checkpoint(workdir / "gauss.pt", "gaussian", "independent"),
             write_checkpoint(workdir / "class.pt", "class", "ot")]
    out = workdir / "sweep"
    sweep.main(["--ckpt", *map(str, ckpts), "--ref", str(workdir / "ref.npz"), "--nfe", "1,2",
                   "--n", "20", "--out", str(out), "--device", "cpu"])
    rows = list(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    assert [(r["label"], r["nfe"]) for r in rows] == [("gaussian+independent", "1"), ("gaussian+independent", "2"),
                                                     ("class+ot", "1"), ("class+ot", "2")]
    assert all(float(r["value"]) > 0 for r in rows)
    # the untrained networks output v = 0, so every NFE returns the prior's draws themselves: equal rows
    for first, second in (rows[0], rows[1]), (rows[2], rows[3]):
        assert (first["value"], first["accuracy"], first["kid"]) == (second["value"], second["accuracy"], second["kid"])
    # the accuracy is the classifier's on those draws: image i of class i % 10 from image_seed(0, c, i // 10)
    model, prior, _ = sample.load_checkpoint(ckpts[1], "cpu")
    classes = np.arange(20) % 10
    seeds = [conditions.image_seed(0, int(c), i // 10) for i, c in enumerate(classes)]
    images = sample.generate(model, prior, torch.from_numpy(classes), seeds, 1)
    expected = np.mean(predict(load_classifier(workdir / "clf.pt"), images) == classes)
    assert float(rows[2]["accuracy"]) == pytest.approx(expected, abs=1e-12)
    # the class prior starts near the data: its coupling is far cheaper than N(0, I)'s
    assert float(rows[2]["transport_cost"]) < float(rows[0]["transport_cost"])
    assert out.with_suffix(".md").read_text().startswith("| checkpoint | NFE | FD-clf |")
    assert Image.open(out.with_suffix(".png")).size == (720, 460)


@pytest.mark.parametrize("log_y", [False, True])
def test_plot_places_points_on_linear_or_log_axes(tmp_path, log_y):
    # y = 1, 10, 100 at x = 1, 2, 4: on a log-y axis the three dots are equally spaced vertically,
    # on a linear one the second is 10 times closer to the first than the third is to the second
    path = tmp_path / "plot.png"
    sweep.plot_curves({"a": [(1, 1.0), (2, 10.0), (4, 100.0)]}, path, "FD", log_y=log_y)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = np.abs(pixels - [0x1F, 0x77, 0xB4]).sum(-1) == 0
    blue[:80] = False  # the legend swatch sits in the top rows
    # the plot spans x pixels 80..700 (log x: NFE 1, 2, 4 at 80, 390, 700); a dot's row is the mean
    # row of the blue pixels within 3 columns of its x
    rows = [np.flatnonzero(blue[:, max(x - 3, 0):x + 4].any(1)).mean() for x in (80, 390, 700)]
    upper, lower = rows[0] - rows[1], rows[1] - rows[2]  # image rows grow downwards
    assert upper > 0 and lower > 0
    if log_y:
        assert abs(upper - lower) < 3
    else:
        assert lower > 5 * upper


def test_sweep_of_a_vector_conditioned_checkpoint_reports_attribute_errors(workdir, capsys):
    """Conditions: the held-out split's first n attribute vectors, image i from image_seed(0, i, 0);
    faithfulness measured from the pixels (shapes.attribute_errors)."""
    from plumbing import data
    from prior import build_prior
    from plumbing import shapes
    import unet

    torch.manual_seed(0)
    dataset = data.load_dataset("shapes", image_size=16, cond="attributes")
    model = unet.build_unet("tiny", 16, 3, dataset.num_classes, dataset.cond_dim)
    prior = build_prior("mapper", epochs=1, hidden=16).fit([dataset.get(np.arange(200))], 0)
    config = {"dataset": "shapes", "data_dir": None, "dataset_options": {"image_size": 16, "cond": "attributes"},
              "cond": "attributes", "preset": "tiny", "image_size": 16, "channels": 3, "num_classes": 10,
              "cond_dim": 8, "prior": "mapper", "prior_options": {}, "coupling": "independent", "seed": 0,
              "batch_size": 32}
    path = workdir / "attributes.pt"
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 0, "rng": None,
                "config": config, "prior": prior_to_checkpoint(prior)}, path)
    out = workdir / "sweep_attributes"
    capsys.readouterr()
    sweep.main(["--ckpt", str(path), "--ref", str(workdir / "ref.npz"), "--nfe", "1", "--n", "20",
                   "--out", str(out), "--device", "cpu"])
    row = next(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    readable = capsys.readouterr().out.strip().splitlines()[-2]  # the last line: the files written
    assert ", attribute errors: colour " in readable  # before the sample count, as eval_fid.summary puts it
    assert readable.endswith(f" (20 samples), transport cost {float(row['transport_cost']):.2f}")
    assert row["accuracy"] == ""  # no class was asked for
    held_out = data.load_dataset("shapes", None, "test", image_size=16, cond="attributes")
    _, cond = held_out.get(np.arange(20))
    loaded, loaded_prior, _ = sample.load_checkpoint(path, "cpu")
    images = sample.generate(loaded, loaded_prior, cond, [conditions.image_seed(0, i, 0) for i in range(20)], 1)
    expected = shapes.attribute_errors(images.numpy(), cond.numpy())
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, rel=1e-9)
