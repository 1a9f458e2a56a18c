"""GMMPrior: EM recovers a known mixture, is k-means in the hard limit, draws the training
component from x1's posterior, floors the variances, round-trips, and trains through the scripts."""
import numpy as np
import pytest
import torch

import sample
import train
from plumbing.checkpoint import prior_to_checkpoint
from prior import GMMPrior, KMeansPrior, prior_from_state
from plumbing.priorcache import load_prior, save_prior

WEIGHTS = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])  # 2 classes x 3 components
SHAPE = (1, 2, 2)  # D = 4


def known_mixture(n=6000, spread=1.0, std_range=(0.03, 0.08), seed=0):
    """Points in model space (float batches are taken as model space) from a 2-class, 3-component
    diagonal mixture with known weights, means (spread apart) and per-dimension stds."""
    rng = np.random.default_rng(seed)
    means = spread * np.array([[[-1, -1, 0, 0], [1, 0, 1, 0], [0, 1, -1, 1]],
                               [[1, 1, 0, 0], [-1, 0, -1, 0], [0, -1, 1, -1]]], np.float64)
    stds = rng.uniform(*std_range, means.shape)
    labels = np.repeat([0, 1], n // 2)
    comps = np.concatenate([rng.choice(3, n // 2, p=WEIGHTS[c]) for c in (0, 1)])
    x = means[labels, comps] + stds[labels, comps] * rng.normal(size=(n, 4))
    order = rng.permutation(n)  # classes interleaved in the batches
    images, labels, comps = torch.from_numpy(x[order].reshape(n, *SHAPE)), torch.from_numpy(labels[order]), comps[order]
    return images, labels, comps, means, stds


def batches(images, labels, size=512):
    return [(images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size)]


def matched(prior, c, means):
    """Component order of the fit against the truth's, by nearest mean."""
    fitted = prior.means[3 * c:3 * c + 3].reshape(3, -1)
    order = [int(np.argmin(((fitted - m) ** 2).sum(1))) for m in means[c]]
    assert sorted(order) == [0, 1, 2]
    return order


def test_em_recovers_a_known_mixture():
    images, labels, comps, means, stds = known_mixture()
    prior = GMMPrior(k=3, passes=5, min_std=1e-3, seed=0).fit(batches(images, labels), 2)
    for c in (0, 1):
        order = matched(prior, c, means)
        n = 3000 * WEIGHTS[c]  # images per component, about
        # weights: binomial share, sd sqrt(w (1 - w) / 3000) <= 0.0092; 5 sd
        np.testing.assert_allclose(prior.weights[c][order], WEIGHTS[c], atol=5 * np.sqrt(0.25 / 3000))
        got_means = prior.means[3 * c:3 * c + 3].reshape(3, -1)[order]
        got_stds = prior.stds[3 * c:3 * c + 3].reshape(3, -1)[order]
        # mean: sd std / sqrt(n); variance: sd v sqrt(2 / n), so the std's relative sd is sqrt(1 / (2 n)); 5 sd
        assert np.all(np.abs(got_means - means[c]) < 5 * stds[c] / np.sqrt(n)[:, None])
        assert np.all(np.abs(got_stds / stds[c] - 1) < 5 * np.sqrt(1 / (2 * n))[:, None])
    assert prior.weights.sum(1) == pytest.approx([1, 1], abs=1e-12)
    # the last row: the whole dataset's mean and std
    x = images.double().numpy().reshape(len(images), -1)
    np.testing.assert_allclose(prior.means[-1].ravel(), x.mean(0), atol=1e-12)
    np.testing.assert_allclose(prior.stds[-1].ravel(), x.std(0), atol=1e-12)


def test_the_hard_limit_is_kmeans():
    """Tiny, well-separated clusters: the responsibilities are 0 or 1, so EM's means and weights
    are k-means' clusters', and argmax assigns x1 to k-means' cluster of x1."""
    images, labels, *_ = known_mixture(n=1200, std_range=(1e-3, 2e-3), seed=1)
    data = batches(images, labels, 100)
    kmeans = KMeansPrior(k=3, passes=4, seed=3).fit(data, 2)
    gmm = GMMPrior(k=3, kmeans_passes=4, passes=3, seed=3, min_std=1e-5, assign="argmax").fit(data, 2)
    np.testing.assert_allclose(gmm.weights, kmeans.weights, atol=1e-12)
    np.testing.assert_allclose(gmm.means, kmeans.means, atol=1e-10)
    np.testing.assert_allclose(gmm.stds, kmeans.stds, atol=1e-8)
    x1 = images[:300].float()
    assert torch.equal(gmm.components(labels[:300], torch.Generator().manual_seed(0), x1),
                       kmeans.components(labels[:300], None, x1))
    # the posterior draw is the same where the posterior is one-hot
    posterior = GMMPrior(k=3, kmeans_passes=4, passes=3, seed=3, min_std=1e-5).fit(data, 2)
    assert torch.equal(posterior.components(labels[:300], torch.Generator().manual_seed(0), x1),
                       kmeans.components(labels[:300], None, x1))


def two_components(weights, size, std=0.1):
    """One class, two components of equal spread at -0.5 and +0.5 in every dimension."""
    prior = GMMPrior(k=2)
    prior.weights = np.array([weights], np.float64)
    prior.means = np.stack([np.full(size, -0.5), np.full(size, 0.5), np.zeros(size)]).reshape(3, 1, 1, size)
    prior.stds = np.full((3, 1, 1, size), std)
    return prior


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.25, 0.75)])
def test_a_point_between_two_components_draws_them_by_their_posterior(weights):
    prior, n = two_components(list(weights), size=8), 20000
    x1 = torch.zeros(n, 1, 1, 8)  # exactly between: the posterior is the weights
    rows = prior.components(torch.zeros(n, dtype=torch.int64), torch.Generator().manual_seed(0), x1)
    share = float((rows == 1).double().mean())
    assert abs(share - weights[1]) < 4 * np.sqrt(weights[1] * (1 - weights[1]) / n)  # 4 binomial sd


def test_responsibilities_are_exact_for_cifar_sized_images():
    """D = 3072: the log-densities at the midpoint are about -D (0.5 / std)^2 / 2 = -38400, far
    below exp's range, yet the responsibilities are the weights, and a step of 0.001 towards
    component 1 multiplies its odds by exp(2 * 0.5 * 0.001 * D / std^2) = exp(307.2)."""
    from plumbing.stats import log_responsibilities
    prior = two_components([0.25, 0.75], size=3072)
    _, _, _, vectors, offsets = prior._tables(torch.device("cpu"))
    x = torch.tensor([0.0, 0.001, -0.001], dtype=torch.float64)[:, None].expand(3, 3072)
    log_r, log_p = log_responsibilities(x, torch.zeros(3, dtype=torch.int64), vectors, offsets)
    assert torch.isfinite(log_p).all() and torch.allclose(log_r.exp().sum(1), torch.ones(3, dtype=torch.float64))
    odds = (log_r[:, 1] - log_r[:, 0]).numpy() - np.log(3)
    np.testing.assert_allclose(odds, [0, 307.2, -307.2], atol=1e-6)
    expected = -0.5 * 3072 * (25 + np.log(2 * np.pi * 0.01))  # log N(0 | +-0.5, 0.01 I), either component
    assert float(log_p[0]) == pytest.approx(expected, abs=1e-6)


def test_the_variance_floor_holds():
    images, labels, *_ = known_mixture(n=1200, std_range=(1e-3, 2e-3), seed=2)
    prior = GMMPrior(k=3, passes=3, min_std=0.05).fit(batches(images, labels), 2)
    assert np.all(prior.stds[:-1] >= 0.05) and np.any(prior.stds[:-1] == 0.05)
    with pytest.raises(ValueError, match="min_std > 0"):
        GMMPrior(min_std=0)
    with pytest.raises(ValueError, match="unknown assign 'mode'"):
        GMMPrior(assign="mode")


@pytest.mark.parametrize("cov", ["diag", "iso"])
def test_save_load_gives_identical_samples(tmp_path, cov):
    images, labels, *_ = known_mixture(n=1200, seed=3)
    prior = GMMPrior(k=3, passes=2, cov=cov, sigma=0.5).fit(batches(images, labels), 2)
    save_prior(prior, tmp_path / "gmm.npz")
    loaded = [load_prior(tmp_path / "gmm.npz", GMMPrior), prior_from_state(prior_to_checkpoint(prior)["state"])]
    cond, null, x1 = labels[:64], torch.arange(64) % 5 == 0, images[:64].float()
    for again in loaded:
        assert (again.k, again.cov, again.sigma, again.assign) == (3, cov, 0.5, "posterior")
        for x in (None, x1):  # sampling, and training's posterior draw
            a = prior.sample(cond, torch.Generator().manual_seed(7), null, x)
            assert torch.equal(a, again.sample(cond, torch.Generator().manual_seed(7), null, x))
            assert not torch.equal(a, prior.sample(cond, torch.Generator().manual_seed(8), null, x))
    # null rows: the dataset-wide component; the others: a component of their own class
    x0 = prior.sample(cond, torch.Generator().manual_seed(0), null)
    assert x0.shape == (64, *SHAPE) and x0.dtype == torch.float32


def test_gmm_trains_and_samples_through_the_scripts(tmp_path):
    quick = ["--preset", "tiny", "--max-images", "64", "--batch-size", "8", "--log-every", "1",
             "--sample-every", "0", "--device", "cpu", "--warmup", "2"]
    losses = train.train(train.parse_args([*quick, "--out", str(tmp_path), "--steps", "2", "--prior", "gmm",
                                           "--prior-opt", "k=2", "--prior-opt", "passes=2",
                                           "--prior-opt", "kmeans_passes=1"]))
    assert len(losses) == 2 and all(np.isfinite(losses))
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert checkpoint["prior"]["name"] == "gmm" and checkpoint["config"]["prior_options"]["k"] == 2
    state = checkpoint["prior"]["state"]
    assert state["weights"].shape == (10, 2) and state["means"].shape == (10 * 2 + 1, 3, 32, 32)  # shapes: 10 classes
    assert float(state["stds"][:-1].min()) >= 1e-2  # the default floor, on 3072-d images
    sample.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--nfe", "2", "--n", "2", "--classes", "0,3"])
    with np.load(next(tmp_path.glob("samples_*.npz"))) as arrays:
        assert arrays["arr_0"].shape == (4, 32, 32, 3) and arrays["arr_1"].tolist() == [0, 0, 3, 3]


def test_nearest_is_the_nearest_mean_where_argmax_is_not():
    """assign="nearest": argmin_j ||x1 - m_cj||^2 over x1's class, by brute force; with unequal
    variances the most likely component (argmax) is another one for some x1."""
    images, labels, *_ = known_mixture(n=2000, std_range=(0.05, 0.6), seed=4)
    data = batches(images, labels)
    nearest_gmm = GMMPrior(k=3, passes=3, seed=0, assign="nearest").fit(data, 2)
    argmax_gmm = GMMPrior(k=3, passes=3, seed=0, assign="argmax").fit(data, 2)
    x1, cond = images[:500].float(), labels[:500]
    got = nearest_gmm.components(cond, torch.Generator().manual_seed(0), x1).numpy()
    means = nearest_gmm.means[:-1].reshape(2, 3, -1)
    flat = x1.flatten(1).double().numpy()
    expected = [3 * c + int(np.argmin(((means[c] - row) ** 2).sum(1))) for row, c in zip(flat, cond.tolist())]
    np.testing.assert_array_equal(got, expected)
    most_likely = argmax_gmm.components(cond, torch.Generator().manual_seed(0), x1).numpy()
    assert (most_likely != got).any()
