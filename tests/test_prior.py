"""prior.py: streamed class statistics against numpy's one-shot answer, sampling, save/load."""
import numpy as np
import pytest
import torch

import prior as prior_module
from prior import build_prior, prior_from_state
from plumbing.config import parse_prior_options
from prior import PRIORS, ClassPrior, GaussianPrior, KMeansPrior, MapperPrior
from plumbing.priorcache import load_prior, save_prior

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


def test_null_rows_use_dataset_component_and_ids_are_checked():
    images, labels = make_data()
    prior = ClassPrior(sigma=1e-4).fit(batches_of(images, labels, 32, np.arange(len(labels))), K)
    x0 = prior.sample(torch.tensor([1, 1]), torch.Generator().manual_seed(0), null=torch.tensor([True, False]))
    np.testing.assert_allclose(x0[0].double().numpy(), prior.means[K], atol=1e-3)
    np.testing.assert_allclose(x0[1].double().numpy(), prior.means[1], atol=1e-3)
    with pytest.raises(ValueError, match=r"class ids: class 4 is out of range 0\.\.3"):
        prior.sample(torch.tensor([K]))  # K is no id: "null" is the mask
    with pytest.raises(ValueError, match="int64 class ids"):
        prior.sample(torch.tensor([0], dtype=torch.int32))
    with pytest.raises(ValueError, match="needs class ids, got condition vectors"):
        prior.sample(torch.rand(2, 3))


def test_same_generator_seed_same_sample():
    images, labels = make_data()
    prior = ClassPrior().fit(batches_of(images, labels, 32, np.arange(len(labels))), K)
    a = prior.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(5))
    b = prior.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def vector_data(n=256, seed=0, noise=0.0):
    """Images that are a known affine function of a 2-d condition e in [0, 1]^2 (+ pixel noise)."""
    rng = np.random.default_rng(seed)
    e = rng.random((n, 2)).astype(np.float32)
    weights = np.linspace(-1, 1, 2 * 18).reshape(2, 18)
    x = np.clip(0.8 * (e @ weights) + noise * rng.normal(size=(n, 18)) * np.linspace(0.2, 1, 18), -1, 1)
    return torch.from_numpy(np.rint((x + 1) * 127.5).astype(np.uint8).reshape(n, *SHAPE)), torch.from_numpy(e)


@pytest.mark.parametrize("name", list(PRIORS))
def test_save_load_round_trips_exactly(tmp_path, name):
    if name == "mapper":
        images, cond = vector_data()
        batches, draw = [(images[i:i + 64], cond[i:i + 64]) for i in range(0, 256, 64)], cond[:5]
        prior = build_prior(name, epochs=2).fit(batches, 0)
    else:
        images, labels = make_data()
        batches, draw = list(batches_of(images, labels, 32, np.arange(len(labels)))), torch.tensor([0, 1, 2, 3, 0])
        prior = build_prior(name).fit(batches, K)
    save_prior(prior, tmp_path / "stats.npz")
    loaded = load_prior(tmp_path / "stats.npz", PRIORS[name])
    state, again = prior.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(again[key]))
    null = torch.tensor([False, False, False, False, True])
    assert torch.equal(prior.sample(draw, torch.Generator().manual_seed(3), null),
                       loaded.sample(draw, torch.Generator().manual_seed(3), null))
    assert type(prior_from_state(state)) is type(prior)


def test_gaussian_prior_is_standard_normal_whatever_the_label():
    prior = GaussianPrior().fit([(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))], 3)
    assert prior.shape == (1, 4, 4) and prior.num_classes == 3
    x0 = prior.sample(torch.zeros(20000, dtype=torch.int64), torch.Generator().manual_seed(0))
    assert abs(float(x0.mean())) < 0.01 and abs(float(x0.std()) - 1) < 0.01


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=f"unknown prior 'foo'; choose one of: {', '.join(PRIORS)}$"):
        build_prior("foo")
    with pytest.raises(ValueError, match="unknown covariance"):
        ClassPrior(cov="full")
    images, labels = make_data(20)
    labels[:] = 0
    labels[0] = 1  # class 1 has a single image, classes 2 and 3 none
    with pytest.raises(ValueError, match="class 1 has 1 image"):
        ClassPrior().fit(batches_of(images, labels, 8, np.arange(20)), K)
    with pytest.raises(ValueError, match=r"class ids: class 2 is out of range 0\.\.1"):
        ClassPrior().fit(batches_of(images, labels + 1, 8, np.arange(20)), 2)
    with pytest.raises(FileNotFoundError, match="no prior statistics file at"):
        load_prior("/nonexistent/stats.npz", ClassPrior)


def test_prior_options_are_checked_and_typed():
    prior = build_prior("class", cov="diag", sigma=0.3, scale=0.5)
    assert (prior.cov, prior.sigma, prior.scale) == ("diag", 0.3, 0.5)
    with pytest.raises(ValueError, match="prior 'gaussian' has no option cov"):
        build_prior("gaussian", cov="diag")
    assert parse_prior_options("kmeans", ["k=16", "cov=diag", "sigma=0.5"]) == {"k": 16, "cov": "diag", "sigma": 0.5}
    assert parse_prior_options("mapper", ["residual_std=true"]) == {"residual_std": True}
    with pytest.raises(ValueError, match="key one of: k=8, cov=iso"):
        parse_prior_options("kmeans", ["clusters=4"])
    with pytest.raises(ValueError, match="expected a finite int"):
        parse_prior_options("kmeans", ["k=four"])
    with pytest.raises(ValueError, match="expected a finite float"):
        parse_prior_options("class", ["sigma=nan"])


def modes_data(seed=0):
    """2 classes x 3 modes of known pixel level and share (50/30/20 %): k-means must find them."""
    rng = np.random.default_rng(seed)
    levels = np.array([[20, 90, 160], [60, 130, 230]])
    shares = np.array([0.5, 0.3, 0.2])
    labels = np.repeat([0, 1], 500)
    modes = np.concatenate([rng.choice(3, 500, p=shares) for _ in range(2)])
    images = levels[labels, modes][:, None, None, None] + rng.integers(-4, 5, (1000, *SHAPE))
    images = torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8))
    return images, torch.from_numpy(labels), modes, levels


def test_kmeans_finds_known_modes_and_their_shares():
    images, labels, modes, levels = modes_data()
    batches = [(images[i:i + 128], labels[i:i + 128]) for i in range(0, 1000, 128)]
    prior = KMeansPrior(k=3, sigma=1e-4, seed=1).fit(batches, 2)
    for c in range(2):
        found = (prior.means[3 * c:3 * c + 3].mean((1, 2, 3)) + 1) * 127.5
        order = np.argsort(found)
        np.testing.assert_allclose(found[order], levels[c], atol=0.5)  # +-4 noise averages out
        counted = np.bincount(modes[500 * c:500 * (c + 1)], minlength=3) / 500  # the shares drawn
        np.testing.assert_allclose(prior.weights[c][order], counted, atol=1e-12)
    # training: x0 sits on the component of x1's own mode
    x1 = images[:200].double() / 127.5 - 1
    x0 = prior.sample(labels[:200], torch.Generator().manual_seed(0), x1=x1.float())
    x0_level = (x0.mean((1, 2, 3)).double() + 1) * 127.5
    np.testing.assert_allclose(x0_level.numpy(), levels[labels[:200].numpy(), modes[:200]], atol=1.0)
    # sampling: the component is drawn by its weight
    draws = prior.sample(torch.zeros(20000, dtype=torch.int64), torch.Generator().manual_seed(1))
    drawn_level = ((draws.mean((1, 2, 3)).double() + 1) * 127.5).round().numpy()
    for j, level in enumerate(levels[0]):
        share = np.mean(np.abs(drawn_level - level) < 2)
        weight = prior.weights[0][np.argmin(np.abs((prior.means[:3].mean((1, 2, 3)) + 1) * 127.5 - level))]
        assert abs(share - weight) < 4 * np.sqrt(weight * (1 - weight) / 20000)


def test_kmeans_with_one_centroid_is_the_class_prior():
    images, labels = make_data(200)
    batches = list(batches_of(images, labels, 32, np.arange(200)))
    kmeans, single = KMeansPrior(k=1, cov="diag").fit(batches, K), ClassPrior(cov="diag").fit(batches, K)
    np.testing.assert_allclose(kmeans.means, single.means, atol=1e-12)  # rows c (k = 1) and the global row
    np.testing.assert_allclose(kmeans.stds, single.stds, atol=1e-12)


def test_mapper_learns_the_conditional_mean_and_the_residual_spread():
    images, cond = vector_data(n=2048, noise=0.1)
    batches = [(images[i:i + 256], cond[i:i + 256]) for i in range(0, 2048, 256)]
    prior = MapperPrior(sigma=1e-4, hidden=64, epochs=40, batch_size=64, residual_std=True).fit(batches, 0)
    test_images, test_cond = vector_data(n=256, seed=1)  # noise-free: the conditional mean itself
    centre = prior.net(test_cond).view(-1, *SHAPE).double()
    target = test_images.double() / 127.5 - 1
    assert float((centre - target).abs().mean()) < 0.03
    x0 = prior.sample(test_cond, torch.Generator().manual_seed(0)).double()  # P(e) + 1e-4 * std * noise
    assert float((x0 - centre).abs().max()) < 1e-3
    # the residual std per pixel follows the noise's known profile 0.1 * linspace(0.2, 1)
    expected = 0.1 * np.linspace(0.2, 1, 18).reshape(SHAPE)
    np.testing.assert_allclose(prior.pixel_std, expected, rtol=0.25, atol=0.01)
    # null rows: the dataset-wide component
    null = prior.sample(test_cond[:2], torch.Generator().manual_seed(0), null=torch.tensor([True, True]))
    assert torch.allclose(null.mean(0).double(), torch.from_numpy(prior.global_mean), atol=3 * float(
        prior.global_std.max()))
    with pytest.raises(ValueError, match="needs condition vectors"):
        prior.sample(torch.tensor([0, 1]))


def test_a_prior_that_lists_its_fitted_arrays_saves_and_loads_without_writing_either(tmp_path):
    """The base class saves the options (read back from attributes of the same names) and the
    arrays named in `fitted`; loading types each option again by its default, through an .npz."""

    class Offsets(prior_module.Prior):
        name = "offsets"
        fitted = ("offset",)

        def __init__(self, k: int = 2, scale: float = 1.0, mode: str = "add", signed: bool = False):
            self.k, self.scale, self.mode, self.signed = k, scale, mode, signed
            self.offset: np.ndarray | None = None

    with pytest.raises(ValueError, match="the offsets prior has not been fitted"):
        Offsets().state_dict()
    fitted = Offsets(k=5, scale=0.25, mode="mul", signed=True)
    fitted.offset, fitted.dataset = np.arange(6.0).reshape(2, 3), "toy"
    save_prior(fitted, tmp_path / "offsets.npz")
    loaded = load_prior(tmp_path / "offsets.npz", Offsets)
    assert (loaded.k, loaded.scale, loaded.mode, loaded.signed, loaded.dataset) == (5, 0.25, "mul", True, "toy")
    assert [type(v) for v in (loaded.k, loaded.scale, loaded.mode, loaded.signed)] == [int, float, str, bool]
    np.testing.assert_array_equal(loaded.offset, fitted.offset)
    assert Offsets.defaults() == {"k": 2, "scale": 1.0, "mode": "add", "signed": False}

    class Renamed(prior_module.Prior):  # an option stored under another name cannot be saved by name
        name = "renamed"

        def __init__(self, width: int = 3):
            self.w = width

    with pytest.raises(ValueError, match="keeps option width under another name: store it as self.width"):
        Renamed().state_dict()
