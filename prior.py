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

so the marginal source is a mixture with components near the data; the paths x0 -> x1 are
shorter and cross less. A "null" row (classifier-free guidance's unconditional half) draws
from the dataset-wide component N(mu, Sigma) built from the global mean and std.

The statistics are fitted in streamed passes (stats.py: Chan's merge, k-means assignment).

A prior is one class here and one name in PRIORS; train.py and sample.py need nothing else:

    __init__(**options)    plain keyword options with defaults: `--prior-opt key=value` on the
                           command line, checked against this signature, saved with the prior
    fit(batches, num_classes, dataset)   batches: (uint8 images, cond) pairs; iterating it again
                           starts a new pass over the data (for priors that need several)
    sample(cond, generator, null=None, x1=None) -> x0     x1: the training images, for priors
                           that couple with them; None at sampling time
    groups(cond, null)     which rows `class_ot` may pair with each other
    state_dict() / from_state_dict(state)   numpy arrays and plain values (checkpoint, cache)
"""
from __future__ import annotations

import inspect
import math
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

import checks
from stats import RunningClassStats, model_space, nearest

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Prior:
    """What every prior shares; a new prior overrides fit / sample / state_dict / from_state_dict,
    and groups when `class_ot` should pair other rows than those of one class."""

    name = ""
    shape: tuple[int, ...] = ()
    num_classes = 0  # 0 for vector conditions

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

    def state_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, state: dict) -> Prior:
        raise NotImplementedError

    def save(self, path: str) -> None:
        checks.save_npz(path, self.state_dict())  # temporary file + rename: a killed fit leaves no half file

    @classmethod
    def load(cls, path: str) -> Prior:
        return cls.from_state_dict(load_npz(path))


class GaussianPrior(Prior):
    """x0 ~ N(0, I) whatever the condition: the standard flow-matching source (CondOT)."""

    name = "gaussian"

    def __init__(self, shape: tuple[int, ...] | None = None, num_classes: int = 0, dataset: str = ""):
        self.shape = tuple(shape) if shape is not None else ()
        self.num_classes, self.dataset = num_classes, dataset

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
        return {"name": self.name, "shape": np.array(self.shape), "num_classes": self.num_classes,
                "dataset": self.dataset}

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianPrior:
        return cls(tuple(int(s) for s in state["shape"]), int(state["num_classes"]), str(state.get("dataset", "")))


class ClassPrior(Prior):
    """x0 ~ N(mu_c, Sigma_c): a Gaussian at each class's mean (the paper's prior)."""

    name = "class"

    def __init__(self, cov: str = "iso", sigma: float = 1.0, scale: float = 1.0,
                 min_count: int = 2, min_std: float = 1e-3):
        if cov not in ("iso", "diag"):
            raise ValueError(f"unknown covariance '{cov}'; choose 'iso' (sigma * I) or 'diag' (per-class std)")
        if not (sigma > 0 and scale > 0 and math.isfinite(sigma) and math.isfinite(scale)):
            raise ValueError(f"sigma and scale must be positive, got sigma={sigma}, scale={scale}")
        self.cov, self.sigma, self.scale = cov, float(sigma), float(scale)
        self.min_count, self.min_std = int(min_count), float(min_std)
        # Filled by fit(): row c < K is class c, row K is the whole dataset (the null rows).
        self.counts: np.ndarray | None = None  # (K+1,) int64
        self.means: np.ndarray | None = None  # (K+1, C, H, W) float64, model space
        self.stds: np.ndarray | None = None  # (K+1, C, H, W) float64, model space
        self.dataset = ""
        self._device_cache: dict = {}

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
        means, variances = means.reshape(-1, *stats.shape), variances.reshape(-1, *stats.shape)
        too_few = np.flatnonzero(counts[:num_classes] < self.min_count)
        if len(too_few):
            raise ValueError(f"class {int(too_few[0])} has {int(counts[too_few[0]])} image(s) but the class prior "
                             f"needs at least {self.min_count} per class; use more data or --prior gaussian")
        self.counts, self.means, self.stds = counts, means, np.sqrt(variances)
        self.dataset = dataset
        self._device_cache = {}
        return self

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, self.num_classes, vectors=False)
        mean, std = self._tables(cond.device)
        rows = cond if null is None else torch.where(null, self.num_classes, cond)  # row K: the whole dataset
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        return mean[rows] + std[rows] * noise

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 copies on the sampling device, made once: sample() runs every training step.
        key = str(device)
        if key not in self._device_cache:
            if self.cov == "iso":
                std = np.full_like(self.stds, self.sigma)
            else:  # the floor keeps always-constant pixels (e.g. MNIST borders) from a zero std
                std = self.scale * np.maximum(self.stds, self.min_std)
            self._device_cache[key] = (torch.tensor(self.means, dtype=torch.float32, device=device),
                                       torch.tensor(std, dtype=torch.float32, device=device))
        return self._device_cache[key]

    def state_dict(self) -> dict:
        if self.counts is None:
            raise ValueError("the class prior has not been fitted; call fit() or load a statistics file")
        return {"name": self.name, "cov": self.cov, "sigma": self.sigma, "scale": self.scale,
                "min_count": self.min_count, "min_std": self.min_std, "dataset": self.dataset,
                "counts": self.counts, "means": self.means, "stds": self.stds,
                "shape": np.array(self.shape)}

    @classmethod
    def from_state_dict(cls, state: dict) -> ClassPrior:
        prior = cls(str(state["cov"]), float(state["sigma"]), float(state["scale"]),
                    int(state["min_count"]), float(state["min_std"]))
        prior.counts = np.asarray(state["counts"], dtype=np.int64)
        prior.means = np.asarray(state["means"], dtype=np.float64)
        prior.stds = np.asarray(state["stds"], dtype=np.float64)
        prior.dataset = str(state["dataset"])
        return prior


class KMeansPrior(Prior):
    """k Gaussians per class, at the centroids of a per-class k-means (the brief's centroid/GMM prior).

    One centroid per class cannot represent a class with several modes: at NFE 1 every sample
    lands on the class mean. Here class c has components (w_cj, m_cj, s_cj), j < k:
        fit     per class, k-means++ on the first `init_images` images of the class, then `passes`
                streamed Lloyd passes over all images (assign to the nearest centroid of the own
                class, move centroids to their cluster means); a last pass measures the final
                clusters: w_cj = share of the class, m_cj = mean, s_cj = per-pixel std
        train   x0 = m_cj + s * noise with j = the cluster of x1 (nearest m_cj of x1's class)
        sample  j ~ Categorical(w_c), then the same; null rows: the dataset-wide N(mu, std)
    s = sigma (cov="iso") or scale * s_cj (cov="diag").
    """

    name = "kmeans"

    def __init__(self, k: int = 8, cov: str = "iso", sigma: float = 1.0, scale: float = 1.0, passes: int = 4,
                 init_images: int = 2000, seed: int = 0, min_std: float = 1e-3):
        if k < 1 or passes < 0 or init_images < 1:
            raise ValueError(f"kmeans needs k >= 1, passes >= 0 and init_images >= 1, got {k}, {passes}, {init_images}")
        if cov not in ("iso", "diag"):
            raise ValueError(f"unknown covariance '{cov}'; choose 'iso' (sigma * I) or 'diag' (per-component std)")
        if not (sigma > 0 and scale > 0 and math.isfinite(sigma) and math.isfinite(scale)):
            raise ValueError(f"sigma and scale must be positive, got sigma={sigma}, scale={scale}")
        self.k, self.cov, self.sigma, self.scale = int(k), cov, float(sigma), float(scale)
        self.passes, self.init_images, self.seed, self.min_std = int(passes), int(init_images), int(seed), float(min_std)
        self.weights: np.ndarray | None = None  # (K, k) float64, rows sum to 1
        self.means: np.ndarray | None = None  # (K*k + 1, C, H, W) float64; last row: the whole dataset
        self.stds: np.ndarray | None = None  # (K*k + 1, C, H, W)
        self.dataset = ""
        self._device_cache: dict = {}

    @property
    def num_classes(self) -> int:
        return len(self.weights)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> KMeansPrior:
        k = self.k
        centroids = self._kmeans_plus_plus(batches, num_classes)  # (K, k, D) float64
        for _ in tqdm(range(self.passes), desc=f"k-means (k={k}) passes", leave=False):
            sums, counts = torch.zeros_like(centroids), torch.zeros(centroids.shape[:2], dtype=torch.float64,
                                                                      device=centroids.device)
            for images, labels in batches:
                x, labels = model_space(images).flatten(1), labels.to(images.device)
                cluster = nearest(x, labels, centroids, torch.ones_like(counts, dtype=torch.bool))
                sums.index_put_((labels, cluster), x, accumulate=True)
                counts.index_put_((labels, cluster), torch.ones_like(x[:, 0]), accumulate=True)
            moved = counts > 0  # an empty cluster keeps its centroid
            centroids[moved] = sums[moved] / counts[moved][:, None]
        # the final clusters, measured with the class statistics' streaming merge (component = c k + j)
        stats = RunningClassStats(num_classes * k)
        valid = torch.ones(centroids.shape[:2], dtype=torch.bool, device=centroids.device)
        for images, labels in batches:
            x, labels = model_space(images), labels.to(images.device)
            stats.update(x, labels * k + nearest(x.flatten(1), labels, centroids, valid))
        counts, means, variances = stats.result()
        per_class = counts[:-1].reshape(num_classes, k)
        if (per_class.sum(1) == 0).any():
            missing = int(np.flatnonzero(per_class.sum(1) == 0)[0])
            raise ValueError(f"class {missing} has no images; the kmeans prior needs every class")
        self.weights = per_class / per_class.sum(1, keepdims=True)
        self.means, self.stds = means.reshape(-1, *stats.shape), np.sqrt(variances).reshape(-1, *stats.shape)
        self.dataset, self._device_cache = dataset, {}
        return self

    def _kmeans_plus_plus(self, batches: Batches, num_classes: int) -> torch.Tensor:
        """k-means++ seeds per class from the first init_images images of each class (one read)."""
        kept: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
        seen = np.zeros(num_classes, dtype=np.int64)
        for images, labels in batches:  # kept as read (uint8): 1/8 of float64 model space
            x, labels = images.flatten(1), labels.to(images.device)
            for c in torch.unique(labels).tolist():
                if seen[c] < self.init_images:
                    rows = x[labels == c][:self.init_images - seen[c]].clone()
                    kept[c].append(rows)
                    seen[c] += len(rows)
            if seen.min() >= self.init_images:
                break
        if seen.min() == 0:
            raise ValueError(f"class {int(np.argmin(seen))} has no images; the kmeans prior needs every class")
        generator = np.random.default_rng(self.seed)
        seeds = []
        for points in (model_space(torch.cat(rows)) for rows in kept):
            chosen = [int(generator.integers(len(points)))]
            distance = (points - points[chosen[0]]).square().sum(1)
            for _ in range(1, self.k):  # the next seed with probability proportional to D(x)^2
                weights = distance.cpu().numpy()
                pick = int(generator.choice(len(points), p=weights / weights.sum())) if weights.sum() > 0 \
                    else int(generator.integers(len(points)))  # fewer distinct images than k
                chosen.append(pick)
                distance = torch.minimum(distance, (points - points[pick]).square().sum(1))
            seeds.append(points[chosen])
        return torch.stack(seeds)

    def components(self, cond: torch.Tensor, generator: torch.Generator | None,
                   x1: torch.Tensor | None) -> torch.Tensor:
        """Component row c k + j of each sample: x1's own cluster, or drawn by weight."""
        means, _, weights, valid = self._tables(cond.device)
        if x1 is not None:
            centroids = means[:-1].view(self.num_classes, self.k, -1)
            j = nearest(x1.flatten(1).float(), cond, centroids, valid)
        else:
            j = torch.multinomial(weights[cond], 1, generator=generator).squeeze(1)
        return cond * self.k + j

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, self.num_classes, vectors=False)
        means, stds, _, _ = self._tables(cond.device)
        rows = self.components(cond, generator, x1)
        if null is not None:
            rows = torch.where(null, len(means) - 1, rows)
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        return (means[rows] + stds[rows] * noise.flatten(1)).view(len(cond), *self.shape)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._device_cache:
            std = np.full_like(self.stds, self.sigma) if self.cov == "iso" else \
                self.scale * np.maximum(self.stds, self.min_std)
            self._device_cache[key] = (
                torch.tensor(self.means.reshape(len(self.means), -1), dtype=torch.float32, device=device),
                torch.tensor(std.reshape(len(std), -1), dtype=torch.float32, device=device),
                torch.tensor(self.weights, dtype=torch.float32, device=device),
                torch.tensor(self.weights > 0, device=device))
        return self._device_cache[key]

    def state_dict(self) -> dict:
        if self.weights is None:
            raise ValueError("the kmeans prior has not been fitted; call fit() or load a statistics file")
        return {"name": self.name, "k": self.k, "cov": self.cov, "sigma": self.sigma, "scale": self.scale,
                "passes": self.passes, "init_images": self.init_images, "seed": self.seed, "min_std": self.min_std,
                "dataset": self.dataset, "weights": self.weights, "means": self.means, "stds": self.stds}

    @classmethod
    def from_state_dict(cls, state: dict) -> KMeansPrior:
        prior = cls(int(state["k"]), str(state["cov"]), float(state["sigma"]), float(state["scale"]),
                    int(state["passes"]), int(state["init_images"]), int(state["seed"]), float(state["min_std"]))
        prior.weights = np.asarray(state["weights"], dtype=np.float64)
        prior.means = np.asarray(state["means"], dtype=np.float64)
        prior.stds = np.asarray(state["stds"], dtype=np.float64)
        prior.dataset = str(state["dataset"])
        return prior


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

    def __init__(self, sigma: float = 1.0, hidden: int = 256, epochs: int = 3, lr: float = 1e-3,
                 batch_size: int = 256, noise_dim: int = 0, residual_std: bool = False, seed: int = 0):
        if not (sigma > 0 and math.isfinite(sigma)) or hidden < 1 or epochs < 1 or batch_size < 1 or noise_dim < 0:
            raise ValueError("mapper needs sigma > 0, hidden >= 1, epochs >= 1, batch_size >= 1, noise_dim >= 0")
        self.sigma, self.hidden, self.epochs, self.lr = float(sigma), int(hidden), int(epochs), float(lr)
        self.batch_size, self.noise_dim, self.residual_std, self.seed = int(batch_size), int(noise_dim), \
            bool(residual_std), int(seed)
        self.net: torch.nn.Module | None = None
        self.cond_dim, self.shape, self.dataset = 0, (), ""
        self.global_mean: np.ndarray | None = None  # (C, H, W) model space
        self.global_std: np.ndarray | None = None
        self.pixel_std: np.ndarray | None = None  # per-pixel residual std (residual_std=True), else ones
        self._device_cache: dict = {}

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
        self.global_mean, self.global_std = means[0].reshape(self.shape), np.sqrt(variances[0]).reshape(self.shape)
        self.pixel_std = (np.sqrt(residual_stats.result()[2][0]).reshape(self.shape) if self.residual_std
                          else np.ones(self.shape))
        self._device_cache = {}
        return self

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None,
               null: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
        check_cond(cond, 0, vectors=True)
        if cond.shape[1] != self.cond_dim:
            raise ValueError(f"the mapper was fitted on {self.cond_dim}-d conditions, got {cond.shape[1]}-d")
        net, mean, std, pixel_std = self._tables(cond.device)
        centre = net(self._input(cond, generator)).view(len(cond), *self.shape)
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        x0 = centre + self.sigma * pixel_std * noise
        if null is not None:  # the unconditional half: the whole dataset's component
            x0 = torch.where(null.view(-1, *[1] * len(self.shape)), mean + std * noise, x0)
        return x0

    def _tables(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._device_cache:
            net = self.net.to(device)
            self._device_cache[key] = (net, *(torch.tensor(a, dtype=torch.float32, device=device)
                                              for a in (self.global_mean, self.global_std, self.pixel_std)))
        return self._device_cache[key]

    def state_dict(self) -> dict:
        if self.net is None:
            raise ValueError("the mapper prior has not been fitted; call fit() or load a statistics file")
        weights = {f"net.{key}": value.detach().cpu().numpy() for key, value in self.net.state_dict().items()}
        return {"name": self.name, "sigma": self.sigma, "hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "noise_dim": self.noise_dim, "residual_std": self.residual_std,
                "seed": self.seed, "cond_dim": self.cond_dim, "shape": np.array(self.shape), "dataset": self.dataset,
                "global_mean": self.global_mean, "global_std": self.global_std, "pixel_std": self.pixel_std, **weights}

    @classmethod
    def from_state_dict(cls, state: dict) -> MapperPrior:
        prior = cls(float(state["sigma"]), int(state["hidden"]), int(state["epochs"]), float(state["lr"]),
                    int(state["batch_size"]), int(state["noise_dim"]), bool(state["residual_std"]), int(state["seed"]))
        prior.cond_dim, prior.shape = int(state["cond_dim"]), tuple(int(s) for s in state["shape"])
        prior.dataset = str(state["dataset"])
        prior.global_mean, prior.global_std, prior.pixel_std = (np.asarray(state[k], dtype=np.float64) for k in
                                                                ("global_mean", "global_std", "pixel_std"))
        net = prior._build(prior.cond_dim, prior.shape)
        net.load_state_dict({key[4:]: torch.from_numpy(np.asarray(value)) for key, value in state.items()
                             if key.startswith("net.")})
        prior.net = net.requires_grad_(False).eval()
        return prior


def check_cond(cond: torch.Tensor, num_classes: int, vectors: bool | None = None) -> None:
    """Class ids: int64 in 0..num_classes-1; vectors: float (N, E). vectors=False/True: only that kind."""
    if cond.dtype == torch.int64 and cond.ndim == 1:
        if vectors:
            raise ValueError("this prior needs condition vectors (N, E), got class ids; use --prior class or kmeans")
        # Only on CPU: there a bad id would index past the table silently, while on CUDA the
        # check would cost a host sync every training step (and indexing asserts on device).
        if cond.device.type == "cpu" and len(cond) and (int(cond.min()) < 0 or int(cond.max()) >= num_classes):
            raise ValueError(f"class ids must be in 0..{num_classes - 1}, got {int(cond.min())}..{int(cond.max())}")
    elif cond.is_floating_point() and cond.ndim == 2:
        if vectors is False:
            raise ValueError("this prior needs class ids, got condition vectors; use --prior mapper or gaussian")
    else:
        raise ValueError(f"a condition is int64 class ids (N,) or float vectors (N, E), got {cond.dtype} "
                         f"of shape {tuple(cond.shape)}")


def load_npz(path: str) -> dict:
    """A prior's saved state; a missing, damaged or foreign file is a one-line error naming it."""
    return checks.load_npz(path, "prior statistics file", "train.py fits and writes it when the file is absent",
                           keys=("name",))


PRIORS: dict[str, type[Prior]] = {"gaussian": GaussianPrior, "class": ClassPrior, "kmeans": KMeansPrior,
                                  "mapper": MapperPrior}


def prior_options(name: str) -> dict[str, object]:
    """The options prior `name` takes (its constructor's keywords) with their defaults."""
    return {key: p.default for key, p in inspect.signature(PRIORS[name]).parameters.items()
            if p.default is not inspect.Parameter.empty}


def build_prior(name: str, **options) -> Prior:
    """An unfitted prior from its command-line name and options (unknown options are an error)."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior '{name}'; choose one of: {', '.join(PRIORS)}")
    unknown = sorted(set(options) - set(prior_options(name)))
    if unknown:
        raise ValueError(f"prior '{name}' has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(prior_options(name)) or 'none'}")
    return PRIORS[name](**options)


def prior_from_state(state: dict) -> Prior:
    name = str(state["name"])
    if name not in PRIORS:
        raise ValueError(f"the statistics were saved by prior '{name}', which this code does not know; "
                         f"known: {', '.join(PRIORS)}")
    return PRIORS[name].from_state_dict(state)
