"""prior.py: streamed class statistics against numpy's one-shot answer, sampling, save/load."""
import numpy as np
import pytest
import torch

from prior import PRIORS, ClassPrior, GaussianPrior, build_prior, prior_from_state

K, SHAPE = 4, (2, 3, 3)


def make_data(n=103, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    # Classes differ in brightness so the statistics are not all alike.
    images = np.clip(rng.normal(40 + 50 * labels[:, None, None, None], 30, (n, *SHAPE)), 0, 255).astype(np.uint8)
    return images, labels


def batches_of(images, labels, batch_size, order):
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])


@pytest.mark.parametrize("batch_size,shuffle", [(1, False), (7, True), (50, True), (1000, False)])
def test_streamed_statistics_equal_numpy(batch_size, shuffle):
    images, labels = make_data()
    order = np.random.default_rng(batch_size).permutation(len(labels)) if shuffle else np.arange(len(labels))
    prior = ClassPrior().fit(batches_of(images, labels, batch_size, order), K)
    x = images.astype(np.float64) / 127.5 - 1  # model space, computed independently of data.to_model
    for c in range(K):
        members = x[labels == c]
        assert prior.counts[c] == len(members)
        np.testing.assert_allclose(prior.means[c], members.mean(0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(prior.stds[c], members.std(0), rtol=0, atol=1e-9)
    assert prior.counts[K] == len(x)
    np.testing.assert_allclose(prior.means[K], x.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(prior.stds[K], x.std(0), rtol=0, atol=1e-9)


def test_streaming_survives_large_offsets():
    # Naive sum-of-squares would cancel catastrophically: values near 1 with tiny spread.
    rng = np.random.default_rng(1)
    images = np.full((200, 1, 1, 2), 250, np.uint8) + rng.integers(0, 3, (200, 1, 1, 2)).astype(np.uint8)
    labels = np.zeros(200, np.int64)
    labels[100:] = 1
    prior = ClassPrior().fit(batches_of(images, labels, 9, np.arange(200)), 2)
    x = images.astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(prior.stds[0], x[:100].std(0), atol=1e-12)


def test_samples_have_class_mean_and_spread():
    images, labels = make_data(400)
    n = 20000
    draw = torch.full((n,), 2, dtype=torch.int64)
    for cov, expected_std in [("iso", lambda p: np.full(SHAPE, 0.5)), ("diag", lambda p: 2.0 * p.stds[2])]:
        prior = ClassPrior(cov=cov, sigma=0.5, scale=2.0).fit(batches_of(images, labels, 64, np.arange(400)), K)
        x0 = prior.sample(draw, torch.Generator().manual_seed(0)).double().numpy()
        std = expected_std(prior)
        # Standard error of the mean is std / sqrt(n); 5 of them is a safe margin.
        assert np.all(np.abs(x0.mean(0) - prior.means[2]) < 5 * std / np.sqrt(n) + 1e-6)
        assert np.all(np.abs(x0.std(0) / std - 1) < 0.05)


def test_null_label_uses_dataset_component_and_ids_are_checked():
    images, labels = make_data()
    prior = ClassPrior(sigma=1e-4).fit(batches_of(images, labels, 32, np.arange(len(labels))), K)
    x0 = prior.sample(torch.tensor([K]), torch.Generator().manual_seed(0))[0].double().numpy()
    np.testing.assert_allclose(x0, prior.means[K], atol=1e-3)
    with pytest.raises(ValueError, match=r"class ids must be in 0\.\.3"):
        prior.sample(torch.tensor([K + 1]))
    with pytest.raises(ValueError, match="int64"):
        prior.sample(torch.tensor([0], dtype=torch.int32))


def test_same_generator_seed_same_sample():
    images, labels = make_data()
    prior = ClassPrior().fit(batches_of(images, labels, 32, np.arange(len(labels))), K)
    a = prior.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(5))
    b = prior.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(PRIORS))
def test_save_load_round_trips_exactly(tmp_path, name):
    images, labels = make_data()
    prior = build_prior(name).fit(batches_of(images, labels, 32, np.arange(len(labels))), K)
    prior.save(tmp_path / "stats.npz")
    loaded = PRIORS[name].load(tmp_path / "stats.npz")
    state, again = prior.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(again[key]))
    draw = torch.tensor([0, 1, 2, 3, K])
    assert torch.equal(prior.sample(draw, torch.Generator().manual_seed(3)),
                       loaded.sample(draw, torch.Generator().manual_seed(3)))
    assert type(prior_from_state(state)) is type(prior)


def test_gaussian_prior_is_standard_normal_whatever_the_label():
    prior = GaussianPrior((1, 4, 4), num_classes=3)
    x0 = prior.sample(torch.zeros(20000, dtype=torch.int64), torch.Generator().manual_seed(0))
    assert abs(float(x0.mean())) < 0.01 and abs(float(x0.std()) - 1) < 0.01


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown prior 'foo'; choose one of: gaussian, class"):
        build_prior("foo")
    with pytest.raises(ValueError, match="unknown covariance"):
        ClassPrior(cov="full")
    images, labels = make_data(20)
    labels[:] = 0
    labels[0] = 1  # class 1 has a single image, classes 2 and 3 none
    with pytest.raises(ValueError, match="class 1 has 1 image"):
        ClassPrior().fit(batches_of(images, labels, 8, np.arange(20)), K)
    with pytest.raises(ValueError, match=r"class ids must be in 0\.\.1"):
        ClassPrior().fit(batches_of(images, labels + 1, 8, np.arange(20)), 2)
    with pytest.raises(FileNotFoundError, match="no prior statistics file at"):
        ClassPrior.load("/nonexistent/stats.npz")


def test_build_prior_passes_each_prior_the_options_it_takes():
    assert isinstance(build_prior("gaussian", cov="diag", sigma=2.0, scale=0.5), GaussianPrior)
    prior = build_prior("class", cov="diag", sigma=0.3, scale=0.5)
    assert (prior.cov, prior.sigma, prior.scale) == ("diag", 0.3, 0.5)
