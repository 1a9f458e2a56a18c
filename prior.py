"""Source distributions p0(. | c) for flow matching: where every sample starts.

Flow matching transports a source x0 ~ p0(. | c) to data x1 ~ q(. | c). The standard
choice ("CondOT") ignores the condition:

    GaussianPrior:  x0 ~ N(0, I)

The paper (Issachar et al., TMLR 2025) starts each sample near its own condition instead:

    ClassPrior:     x0 ~ N(mu_c, Sigma_c),   mu_c = E[x1 | c]   (the class mean, the point
                                                               of least mean squared distance)
        cov="iso":  Sigma_c = sigma^2 I
        cov="diag": Sigma_c = diag(scale * std_c)^2   (the class's own per-pixel spread)
    MapperPrior:    x0 ~ N(P(e), sigma^2 I)   for a condition VECTOR e (a text embedding, attributes):
                    P is a small network fitted by L2 regression onto the data, so P(e) ~ E[x1 | e]
    KMeansPrior:    x0 ~ sum_j w_cj N(m_cj, s_cj^2)   k centroids per class from k-means; at training
                    time x0 comes from the component of x1's own cluster (a data-dependent coupling
                    whose x0-marginal is still the mixture), at sampling time j is drawn by w_cj
    GMMPrior:       the same mixture fitted by EM (soft clusters, each with its own diagonal
                    variances); at training time j is drawn from x1's posterior responsibilities

so the marginal source is a mixture with components near the data; the paths x0 -> x1 are
shorter and cross less. A "null" row (classifier-free guidance's unconditional half) draws
from the dataset-wide component N(mu, Sigma) built from the global mean and std.

The statistics are fitted in streamed passes (plumbing/stats.py: Chan's merge, per-class k-means, EM).

A prior is one class here and one name in PRIORS; train.py and sample.py need nothing else:

    __init__(**options)    keyword options with defaults: `--prior-opt key=value`, checked
                           against this signature, typed by the defaults, stored under the
                           same names (self.k = int(k)): that is how they are saved
    fit(batches, num_classes, dataset)   batches: (images, cond) pairs on the training device,
                           images uint8 (N, C, H, W) pixels (convert with stats.model_space:
                           float64 in [-1, 1]), cond int64 class ids (N,) or float vectors (N, E)
                           (num_classes 0); iterating it again is a new pass over the data
    sample(cond, generator, null=None, x1=None) -> x0     float32 (N, C, H, W) in model space;
                           x1: the training images, for priors that couple with them; None at
                           sampling time
    groups(cond, null)     which rows `class_ot` may pair with each other (default: one class)
    conditions = ("classes",)  which condition kinds it serves: "classes" (int64 ids), "vectors" (float (N, E));
                           train.py refuses a dataset of another kind before loading anything. The base
                           class says both, so a fork's prior without the attribute is never refused up
                           front (its own sample()/fit() checks still apply)
    check_counts(counts)   images per class, before fit(): refuse options the data cannot serve
                           (kmeans: k above the smallest class) before any big allocation
    fitted = ("means", ...)   what fit() sets: numpy arrays (a number is saved as a 0-d array
                           and comes back a Python number); with the options they are the saved
                           state (state_dict / from_state_dict, which a prior with other state,
                           a network, extends)

Training uses the prior RELOADED from OUT/prior_stats.npz, and sample.py the checkpoint's copy:
whatever fit() sets that is not in `fitted` is lost. train.py checks this right after fit
(priorcache.checked_state: each name in `fitted` is set and numeric, each array, number or tuple
fit() set comes back on reloading) and caches the statistics under the prior's name, options,
data and source code (priorcache.prior_code), so an edited fit() refits.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from plumbing.conditions import check_cond
from plumbing.stats import (RunningClassStats, cluster_stats, em_passes, kmeans_plus_plus, lloyd_passes,
                            log_responsibilities, mixture_tables, model_space, nearest)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Prior:
    """What every prior shares: the interface above with its defaults, and saving and loading
    (the options, read back from attributes of the same names, and the arrays in `fitted`)."""

    name = ""
    shape: tuple[int, ...] = ()
    num_classes = 0  # 0 for vector conditions
    dataset = ""
    fitted: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ("classes", "vectors")  # what it serves; see the module's docstring

    def __setattr__(self, key: str, value: object) -> None:
        # `shape` is the image shape (C, H, W) everywhere: a tuple of Python ints, whether fit() set
        # it from a torch.Size or a numpy array, or it came back from prior_stats.npz as an array
        if key == "shape" and value is not None:
            value = tuple(int(size) for size in np.asarray(value).reshape(-1))
        super().__setattr__(key, value)

    def check_counts(self, counts: np.ndarray) -> None:
        """counts[c]: training images of class c; raise ValueError if the options ask for more."""

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> Prior:
        raise NotImplementedError

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def groups(self, cond: torch.Tensor, null: torch.Tensor | None = None) -> torch.Tensor:
        """Rows that may swap sources under `class_ot`: one class (null rows form their own
        group); with vector conditions every row is its own group (no two share a condition)."""
        if cond.dtype != torch.int64:
            return torch.arange(len(cond), device=cond.device)
        return cond if null is None else torch.where(null, -1, cond)

    @classmethod
    def defaults(cls) -> dict[str, object]:
        """The options (the constructor's keywords) with their defaults: what --prior-opt may set."""
        return {key: p.default for key, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def state_dict(self) -> dict:
        if any(getattr(self, key, None) is None for key in self.fitted):
            raise ValueError(f"the {self.name} prior has not been fitted; call fit() or load a statistics file")
        missing = [key for key in self.defaults() if not hasattr(self, key)]
        if missing:  # a fork's prior that renamed an option on the way in
            raise ValueError(f"prior '{self.name}' keeps option {missing[0]} under another name: store it as "
                             f"self.{missing[0]} (state_dict saves options by name) or override state_dict")
        return {"name": self.name, "dataset": self.dataset, **{key: getattr(self, key) for key in self.defaults()},
                **{key: getattr(self, key) for key in self.fitted}}

    @classmethod
    def from_state_dict(cls, state: dict) -> Prior:
        # a saved option comes back as a 0-d array: typed again by its default (int, float, str, bool)
        options = {key: type(default)(np.asarray(state[key]).item()) if default is not None else state[key]
                   for key, default in cls.defaults().items()}
        prior = cls(**options)
        prior.dataset = str(state.get("dataset", ""))
        for key in cls.fitted:  # a number was saved as a 0-d array: a Python number again
            value = np.asarray(state[key])
            setattr(prior, key, value.item() if value.ndim == 0 else value)
        return prior

    def on_device(self, device: torch.device, make: Callable[[torch.device], tuple]) -> tuple:
        """make(device)'s tensors, made once per device (sample() runs every training step); a
        prior's fit() empties the cache by setting self._device_cache = {}."""
        cache = self.__dict__.setdefault("_device_cache", {})
        if str(device) not in cache:
            cache[str(device)] = make(device)
        return cache[str(device)]


def check_spread(cov: str, sigma: float, scale: float) -> None:
    """The noise around a component: cov="iso" sigma * I, or "diag" scale * its per-pixel std."""
    if cov not in ("iso", "diag"):
        raise ValueError(f"unknown covariance '{cov}'; choose 'iso' (sigma * I) or 'diag' (per-component std)")
    if not (sigma > 0 and scale > 0 and math.isfinite(sigma) and math.isfinite(scale)):
        raise ValueError(f"sigma and scale must be positive, got sigma={sigma}, scale={scale}")


def spread(stds: np.ndarray, cov: str, sigma: float, scale: float, min_std: float) -> np.ndarray:
    """Per-component std for check_spread's two choices; the floor keeps always-constant pixels
    (e.g. MNIST borders) from a zero std."""
    return np.full_like(stds, sigma) if cov == "iso" else scale * np.maximum(stds, min_std)


class GaussianPrior(Prior):
    """x0 ~ N(0, I) whatever the condition: the standard flow-matching source (CondOT)."""

    name = "gaussian"

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> GaussianPrior:
        # Nothing to estimate; only read one batch for the image shape.
        images, _ = next(iter(batches))
        self.shape, self.num_classes, self.dataset = tuple(images.shape[1:]), num_classes, dataset
        return self

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, self.num_classes)
        return torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)

    def state_dict(self) -> dict:
        return super().state_dict() | {"shape": np.array(self.shape), "num_classes": self.num_classes}

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianPrior:
        prior = super().from_state_dict(state)
        prior.shape, prior.num_classes = tuple(int(s) for s in state["shape"]), int(state["num_classes"])
        return prior


class ClassPrior(Prior):
    """x0 ~ N(mu_c, Sigma_c): a Gaussian at each class's mean (the paper's prior)."""

    name = "class"
    fitted = ("counts", "means", "stds")
    conditions = ("classes",)

    def check_counts(self, counts: np.ndarray) -> None:
        if len(counts) and counts.min() < self.min_count:
            c = int(np.argmin(counts))
            raise ValueError(f"class {c} has {int(counts[c])} image(s) but the class prior needs at least "
                             f"{self.min_count} per class (--prior-opt min_count); use more data (--max-images) "
                             f"or --prior gaussian")

    def __init__(self, cov: str = "iso", sigma: float = 1.0, scale: float = 1.0,
                 min_count: int = 2, min_std: float = 1e-3):
        check_spread(cov, sigma, scale)
        self.cov, self.sigma, self.scale = cov, float(sigma), float(scale)
        self.min_count, self.min_std = int(min_count), float(min_std)
        # Filled by fit(): row c < K is class c, row K is the whole dataset (the null rows).
        self.counts: np.ndarray | None = None  # (K+1,) int64
        self.means: np.ndarray | None = None  # (K+1, C, H, W) float64, model space
        self.stds: np.ndarray | None = None  # (K+1, C, H, W) float64, model space

    @property
    def num_classes(self) -> int:
        return len(self.counts) - 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> ClassPrior:
        stats = RunningClassStats(num_classes)
        for images, labels in batches:
            stats.update(model_space(images), labels)
        counts, means, variances = stats.result()
        too_few = np.flatnonzero(counts[:num_classes] < self.min_count)
        if len(too_few):
            raise ValueError(f"class {int(too_few[0])} has {int(counts[too_few[0]])} image(s) but the class prior "
                             f"needs at least {self.min_count} per class; use more data or --prior gaussian")
        self.counts, self.means, self.stds = counts, means, np.sqrt(variances)
        self.dataset, self._device_cache = dataset, {}
        return self

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, self.num_classes, vectors=False)
        mean, std = self.on_device(cond.device, self._tables)
        rows = cond if null is None else torch.where(null, self.num_classes, cond)  # row K: the whole dataset
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        return mean[rows] + std[rows] * noise

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        std = spread(self.stds, self.cov, self.sigma, self.scale, self.min_std)
        return (torch.tensor(self.means, dtype=torch.float32, device=device),
                torch.tensor(std, dtype=torch.float32, device=device))


class KMeansPrior(Prior):
    """k Gaussians per class, at the centroids of a per-class k-means (the brief's centroid/GMM prior).

    One centroid per class cannot represent a class with several modes: at NFE 1 every sample
    lands on the class mean. Here class c has components (w_cj, m_cj, s_cj), j < k:
        fit     per class, k-means++ on the first `init_images` images of the class, then `passes`
                streamed Lloyd passes over all images (plumbing/stats.py); a last pass measures the final
                clusters: w_cj = share of the class, m_cj = mean, s_cj = per-pixel std
        train   x0 = m_cj + s * noise with j = the cluster of x1 (nearest m_cj of x1's class)
        sample  j ~ Categorical(w_c), then the same; null rows: the dataset-wide N(mu, std)
    s = sigma (cov="iso") or scale * s_cj (cov="diag").
    """

    name = "kmeans"
    fitted = ("weights", "means", "stds")
    conditions = ("classes",)

    def check_counts(self, counts: np.ndarray) -> None:
        if len(counts) and self.k > counts.min():
            c = int(np.argmin(counts))
            if counts[c] == 0:
                raise ValueError(f"class {c} has no training images; the {self.name} prior needs every class: use more "
                                 f"data (--max-images) or --prior gaussian")
            raise ValueError(f"--prior-opt k={self.k}: class {c} has only {int(counts[c])} images; k must be "
                             f"at most {int(counts[c])}")

    def __init__(self, k: int = 8, cov: str = "iso", sigma: float = 1.0, scale: float = 1.0, passes: int = 4,
                 init_images: int = 2000, seed: int = 0, min_std: float = 1e-3):
        if k < 1 or passes < 0 or init_images < 1:
            raise ValueError(f"kmeans needs k >= 1, passes >= 0 and init_images >= 1, got {k}, {passes}, {init_images}")
        check_spread(cov, sigma, scale)
        self.k, self.cov, self.sigma, self.scale = int(k), cov, float(sigma), float(scale)
        self.passes, self.init_images, self.seed, self.min_std = int(passes), int(init_images), int(seed), float(min_std)
        self.weights: np.ndarray | None = None  # (K, k) float64, rows sum to 1
        self.means: np.ndarray | None = None  # (K*k + 1, C, H, W) float64; last row: the whole dataset
        self.stds: np.ndarray | None = None  # (K*k + 1, C, H, W)

    @property
    def num_classes(self) -> int:
        return len(self.weights)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> KMeansPrior:
        k = self.k
        centroids = kmeans_plus_plus(batches, num_classes, k, self.init_images, self.seed)  # (K, k, D) float64
        centroids = lloyd_passes(batches, centroids, self.passes)
        counts, means, variances = cluster_stats(batches, centroids)  # rows c k + j, and the dataset's
        per_class = counts[:-1].reshape(num_classes, k)
        if (per_class.sum(1) == 0).any():
            missing = int(np.flatnonzero(per_class.sum(1) == 0)[0])
            raise ValueError(f"class {missing} has no images; the kmeans prior needs every class")
        self.weights = per_class / per_class.sum(1, keepdims=True)
        self.means, self.stds = means, np.sqrt(variances)
        self.dataset, self._device_cache = dataset, {}
        return self

    def components(self, cond: torch.Tensor, generator: torch.Generator | None,
                   x1: torch.Tensor | None) -> torch.Tensor:
        """Component row c k + j of each sample: x1's own cluster, or drawn by weight."""
        means, _, weights, valid = self.on_device(cond.device, self._tables)
        if x1 is not None:
            centroids = means[:-1].view(self.num_classes, self.k, -1)
            j = nearest(x1.flatten(1).float(), cond, centroids, valid)
        else:
            j = torch.multinomial(weights[cond], 1, generator=generator).squeeze(1)
        return cond * self.k + j

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, self.num_classes, vectors=False)
        means, stds = self.on_device(cond.device, self._tables)[:2]
        rows = self.components(cond, generator, x1)
        if null is not None:
            rows = torch.where(null, len(means) - 1, rows)
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        return (means[rows] + stds[rows] * noise.flatten(1)).view(len(cond), *self.shape)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        std = spread(self.stds, self.cov, self.sigma, self.scale, self.min_std)
        return (torch.tensor(self.means.reshape(len(self.means), -1), dtype=torch.float32, device=device),
                torch.tensor(std.reshape(len(std), -1), dtype=torch.float32, device=device),
                torch.tensor(self.weights, dtype=torch.float32, device=device),
                torch.tensor(self.weights > 0, device=device))


class GMMPrior(KMeansPrior):
    """A diagonal Gaussian mixture per class, fitted by EM: KMeansPrior with soft clusters (its
    tables' layout, check_counts and sample() are KMeansPrior's; its options, fit and components()
    are its own).

        p0(x | c) = sum_j w_cj N(m_cj, diag v_cj),   j < k,   v_cj >= min_std^2
        fit     k-means as KMeansPrior (k-means++ seeds, `kmeans_passes` Lloyd passes); its
                clusters' shares, means and variances start `passes` streamed EM passes
                (stats.em_passes: soft responsibilities in float64, the variances floored)
        train   x0 = m_cj + s * noise, j drawn from x1's posterior r_j(x1) under the fitted
                mixture (assign="posterior"; x0's marginal is still the mixture), x1's most
                likely component (assign="argmax"), or the component of the nearest mean
                (assign="nearest": KMeansPrior's rule, argmin_j ||x1 - m_cj||^2, which argmax
                equals only where the variances are equal)
        sample  j ~ Categorical(w_c); null rows: the dataset-wide N(mu, std)
    s = scale * sqrt(v_cj) (cov="diag": at scale 1 the fitted mixture itself) or sigma (cov="iso").
    """

    name = "gmm"
    fitted = ("weights", "means", "stds")

    def __init__(self, k: int = 8, cov: str = "diag", sigma: float = 1.0, scale: float = 1.0, passes: int = 5,
                 kmeans_passes: int = 4, init_images: int = 2000, seed: int = 0, min_std: float = 1e-2,
                 assign: str = "posterior"):
        if k < 1 or passes < 0 or kmeans_passes < 0 or init_images < 1 or not min_std > 0:
            raise ValueError(f"gmm needs k >= 1, passes >= 0, kmeans_passes >= 0, init_images >= 1 and min_std > 0, "
                             f"got {k}, {passes}, {kmeans_passes}, {init_images}, {min_std}")
        if assign not in ("posterior", "argmax", "nearest"):
            raise ValueError(f"unknown assign '{assign}'; choose 'posterior' (drawn from x1's responsibilities), "
                             f"'argmax' (x1's most likely component) or 'nearest' (the nearest mean)")
        check_spread(cov, sigma, scale)
        self.k, self.cov, self.sigma, self.scale = int(k), cov, float(sigma), float(scale)
        self.passes, self.kmeans_passes, self.init_images = int(passes), int(kmeans_passes), int(init_images)
        # min_std: about one uint8 step (2/255) in model space; a smaller spread is quantisation,
        # and without a floor a component on a few images collapses onto them (infinite density)
        self.seed, self.min_std, self.assign = int(seed), float(min_std), assign
        self.weights: np.ndarray | None = None  # (K, k) float64, rows sum to 1
        self.means: np.ndarray | None = None  # (K*k + 1, C, H, W) float64; last row: the whole dataset
        self.stds: np.ndarray | None = None  # (K*k + 1, C, H, W): sqrt(v_cj); last row: the dataset's std

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> GMMPrior:
        k = self.k
        centroids = kmeans_plus_plus(batches, num_classes, k, self.init_images, self.seed)  # (K, k, D) float64
        centroids = lloyd_passes(batches, centroids, self.kmeans_passes)
        counts, means, variances = cluster_stats(batches, centroids)  # the start; last row: the dataset's
        shares = torch.from_numpy(counts[:-1].reshape(num_classes, k) / 1.0).to(centroids.device)
        start = [torch.from_numpy(a[:-1]).to(centroids.device).view(num_classes, k, -1) for a in (means, variances)]
        weights, mixture_means, mixture_variances = em_passes(batches, shares / shares.sum(1, keepdim=True), *start,
                                                              self.passes, self.min_std ** 2)
        rows = (-1, *means.shape[1:])
        self.weights = weights.cpu().numpy()
        self.means = np.concatenate([mixture_means.cpu().numpy().reshape(rows), means[-1:]])
        self.stds = np.sqrt(np.concatenate([mixture_variances.cpu().numpy().reshape(rows), variances[-1:]]))
        self.dataset, self._device_cache = dataset, {}
        return self

    def components(self, cond: torch.Tensor, generator: torch.Generator | None,
                   x1: torch.Tensor | None) -> torch.Tensor:
        """Component row c k + j of each sample: from x1 (assign), or drawn by weight."""
        means, _, log_weights, vectors, offsets = self.on_device(cond.device, self._tables)
        if x1 is None:
            scores = log_weights[cond]
        elif self.assign == "nearest":
            centroids = means[:-1].view(self.num_classes, self.k, -1)
            return cond * self.k + nearest(x1.flatten(1).float(), cond, centroids, log_weights.isfinite())
        else:
            scores = log_responsibilities(x1.flatten(1).double(), cond, vectors, offsets)[0]
            if self.assign == "argmax":
                return cond * self.k + scores.argmax(1)
        # Gumbel-max: argmax_j (log p_j + G_j) is j with probability p_j; on the device, no host sync
        uniform = torch.rand(scores.shape, generator=generator, device=cond.device, dtype=torch.float64)
        return cond * self.k + (scores - (-uniform.log()).log()).argmax(1)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """KMeansPrior's means and stds (x0's), then the log weights and the mixture's own tables
        (the posterior's, whatever cov and scale say)."""
        fitted = [torch.tensor(a[:-1].reshape(self.num_classes, self.k, -1), dtype=torch.float64, device=device)
                  for a in (self.means, self.stds)]
        weights = torch.tensor(self.weights, dtype=torch.float64, device=device)
        return (*super()._tables(device)[:2], weights.log(), *mixture_tables(weights, fitted[0], fitted[1].square()))


class MapperPrior(Prior):
    """x0 ~ N(P(e), sigma^2 I) for condition vectors e: the paper's prior for continuous conditions.

    P is a small MLP, e (+ optional noise z) -> image, fitted by L2 regression onto the data,
        min_P  E || P(e) - x1 ||^2,      whose minimiser is P(e) = E[x1 | e],
    for `epochs` passes over the training set (Adam, mini-batches of `batch_size`). Options:
    noise_dim > 0 appends z ~ N(0, I) of that size to e (the official code's extra input noise);
    residual_std=True replaces sigma by sigma times the per-pixel std of x1 - P(e), measured in
    one more pass. Null rows draw from the dataset-wide N(mu, std) (measured in that pass too).
    """

    name = "mapper"
    conditions = ("vectors",)
    fitted = ("global_mean", "global_std", "pixel_std")

    def __init__(self, sigma: float = 1.0, hidden: int = 256, epochs: int = 3, lr: float = 1e-3,
                 batch_size: int = 256, noise_dim: int = 0, residual_std: bool = False, seed: int = 0):
        if not (sigma > 0 and math.isfinite(sigma)) or hidden < 1 or epochs < 1 or batch_size < 1 or noise_dim < 0:
            raise ValueError("mapper needs sigma > 0, hidden >= 1, epochs >= 1, batch_size >= 1, noise_dim >= 0")
        self.sigma, self.hidden, self.epochs, self.lr = float(sigma), int(hidden), int(epochs), float(lr)
        self.batch_size, self.noise_dim, self.residual_std, self.seed = int(batch_size), int(noise_dim), \
            bool(residual_std), int(seed)
        self.net: torch.nn.Module | None = None
        self.cond_dim, self.shape = 0, ()
        self.global_mean: np.ndarray | None = None  # (C, H, W) model space
        self.global_std: np.ndarray | None = None
        self.pixel_std: np.ndarray | None = None  # per-pixel residual std (residual_std=True), else ones

    def _build(self, cond_dim: int, shape: tuple[int, ...]) -> torch.nn.Module:
        size = int(np.prod(shape))
        return torch.nn.Sequential(torch.nn.Linear(cond_dim + self.noise_dim, self.hidden), torch.nn.SiLU(),
                                   torch.nn.Linear(self.hidden, self.hidden), torch.nn.SiLU(),
                                   torch.nn.Linear(self.hidden, size))

    def _input(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        cond = cond.float()
        if self.noise_dim:
            z = torch.randn((len(cond), self.noise_dim), generator=generator, device=cond.device)
            cond = torch.cat([cond, z], 1)
        return cond

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> MapperPrior:
        images, cond = next(iter(batches))
        check_cond(cond, num_classes, vectors=True)
        self.cond_dim, self.shape, self.dataset = cond.shape[1], tuple(images.shape[1:]), dataset
        device = images.device
        with torch.random.fork_rng(devices=[]):  # the fit's own seed; the caller's RNG is untouched
            torch.manual_seed(self.seed)
            net = self._build(self.cond_dim, self.shape).to(device)
        generator = torch.Generator(device).manual_seed(self.seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
        for epoch in range(self.epochs):
            bar = tqdm(batches, desc=f"fitting mapper, pass {epoch + 1}/{self.epochs}", leave=False)
            for images, cond in bar:
                x = model_space(images).float().flatten(1)
                for part in torch.randperm(len(x), generator=generator, device=device).split(self.batch_size):
                    loss = (net(self._input(cond[part].to(device), generator)) - x[part]).square().mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                bar.set_postfix(mse=f"{loss.item():.4f}")
        self.net = net.requires_grad_(False).eval()
        # one more pass: the dataset-wide component (null rows) and the per-pixel residual spread
        data_stats, residual_stats = RunningClassStats(1), RunningClassStats(1)
        for images, cond in batches:
            x = model_space(images)
            zeros = torch.zeros(len(x), dtype=torch.int64, device=x.device)
            data_stats.update(x, zeros)
            if self.residual_std:
                predicted = self.net(self._input(cond.to(device), generator)).double().view_as(x)
                residual_stats.update(x - predicted, zeros)
        _, means, variances = data_stats.result()
        self.global_mean, self.global_std = means[0], np.sqrt(variances[0])
        self.pixel_std = np.sqrt(residual_stats.result()[2][0]) if self.residual_std else np.ones(self.shape)
        self._device_cache = {}
        return self

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, 0, vectors=True)
        if cond.shape[1] != self.cond_dim:
            raise ValueError(f"the mapper was fitted on {self.cond_dim}-d conditions, got {cond.shape[1]}-d")
        net, mean, std, pixel_std = self.on_device(cond.device, self._tables)
        centre = net(self._input(cond, generator)).view(len(cond), *self.shape)
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        x0 = centre + self.sigma * pixel_std * noise
        if null is not None:  # the unconditional half: the whole dataset's component
            x0 = torch.where(null.view(-1, *[1] * len(self.shape)), mean + std * noise, x0)
        return x0

    def _tables(self, device: torch.device) -> tuple:
        return (self.net.to(device), *(torch.tensor(a, dtype=torch.float32, device=device)
                                       for a in (self.global_mean, self.global_std, self.pixel_std)))

    def state_dict(self) -> dict:
        state = super().state_dict()  # refuses an unfitted prior (its fitted arrays are None)
        weights = {f"net.{key}": value.detach().cpu().numpy() for key, value in self.net.state_dict().items()}
        return state | {"cond_dim": self.cond_dim, "shape": np.array(self.shape), **weights}

    @classmethod
    def from_state_dict(cls, state: dict) -> MapperPrior:
        prior = super().from_state_dict(state)
        prior.cond_dim, prior.shape = int(state["cond_dim"]), tuple(int(s) for s in state["shape"])
        net = prior._build(prior.cond_dim, prior.shape)
        net.load_state_dict({key[4:]: torch.from_numpy(np.asarray(value)) for key, value in state.items()
                             if key.startswith("net.")})
        prior.net = net.requires_grad_(False).eval()
        return prior


PRIORS: dict[str, type[Prior]] = {"gaussian": GaussianPrior, "class": ClassPrior, "kmeans": KMeansPrior,
                                  "mapper": MapperPrior, "gmm": GMMPrior}


def build_prior(name: str, **options) -> Prior:
    """An unfitted prior from its command-line name and options (unknown ones are an error)."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior '{name}'; choose one of: {', '.join(PRIORS)}")
    unknown = sorted(set(options) - set(PRIORS[name].defaults()))
    if unknown:
        raise ValueError(f"prior '{name}' has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(PRIORS[name].defaults()) or 'none'}")
    return PRIORS[name](**options)


def prior_from_state(state: dict) -> Prior:
    """A saved prior (a checkpoint's, whose arrays are tensors, or a statistics file's) as the
    class its name says."""
    state = {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in state.items()}
    name = str(state["name"])
    if name not in PRIORS:
        raise ValueError(f"the statistics were saved by prior '{name}', which this code does not know; "
                         f"known: {', '.join(PRIORS)}")
    return PRIORS[name].from_state_dict(state)
