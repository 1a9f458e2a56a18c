"""Source distributions p0 for flow matching: where every sample starts.

Flow matching transports a source x0 ~ p0(. | c) to data x1 ~ q(. | c). The standard
choice ("CondOT") ignores the condition:

    GaussianPrior:  x0 ~ N(0, I)

The paper (Issachar et al., TMLR 2025) starts each sample near its own class instead:

    ClassPrior:     x0 ~ N(mu_c, Sigma_c),   mu_c = E[x1 | c]   (the class mean, the point
                                                               of least mean squared distance)
        cov="iso":  Sigma_c = sigma^2 I
        cov="diag": Sigma_c = diag(scale * std_c)^2   (the class's own per-pixel spread)

so the marginal source is a Gaussian mixture with one component per class; the paths
x0 -> x1 are shorter and cross less. Label K (= num_classes) is the "null" label used by
classifier-free guidance: it draws from the dataset-wide component N(mu, Sigma) built from
the global mean and std in the same way.

The class statistics are fitted in ONE streaming pass with float64 accumulators, merging
per-batch (count, mean, M2) triples with Chan et al.'s parallel update

    n = na + nb,  d = mb - ma,  m = ma + d nb / n,  M2 = M2a + M2b + d^2 na nb / n,

so memory is O(K D), not O(N D), and the result does not depend on batch size or order.

A prior is a small class with `fit`, `sample`, `state_dict`/`from_state_dict` and one name
in `PRIORS`; that is all the scripts need to use a new one.
"""
from __future__ import annotations

import inspect
from typing import Iterable

import numpy as np
import torch

import checks
from data import to_model

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class GaussianPrior:
    """x0 ~ N(0, I) whatever the label: the standard flow-matching source (CondOT)."""

    name = "gaussian"

    def __init__(self, shape: tuple[int, ...] | None = None, num_classes: int = 0, dataset: str = ""):
        self.shape = tuple(shape) if shape is not None else None
        self.num_classes, self.dataset = num_classes, dataset

    def fit(self, batches: Batches, num_classes: int, dataset: str = "") -> GaussianPrior:
        # Nothing to estimate; only read one batch for the image shape.
        images, _ = next(iter(batches))
        self.shape, self.num_classes, self.dataset = tuple(images.shape[1:]), num_classes, dataset
        return self

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_labels(labels, self.num_classes)
        return torch.randn((len(labels), *self.shape), generator=generator, device=labels.device)

    def state_dict(self) -> dict:
        return {"name": self.name, "shape": np.array(self.shape), "num_classes": self.num_classes,
                "dataset": self.dataset}

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianPrior:
        return cls(tuple(int(s) for s in state["shape"]), int(state["num_classes"]), str(state.get("dataset", "")))

    def save(self, path: str) -> None:
        save_npz(path, self.state_dict())

    @classmethod
    def load(cls, path: str) -> GaussianPrior:
        return cls.from_state_dict(load_npz(path))


class ClassPrior:
    """x0 ~ N(mu_c, Sigma_c): a Gaussian at each class's mean (the paper's prior)."""

    name = "class"

    def __init__(self, cov: str = "iso", sigma: float = 1.0, scale: float = 1.0,
                 min_count: int = 2, min_std: float = 1e-3):
        if cov not in ("iso", "diag"):
            raise ValueError(f"unknown covariance '{cov}'; choose 'iso' (sigma * I) or 'diag' (per-class std)")
        if sigma <= 0 or scale <= 0:
            raise ValueError(f"sigma and scale must be positive, got sigma={sigma}, scale={scale}")
        self.cov, self.sigma, self.scale = cov, float(sigma), float(scale)
        self.min_count, self.min_std = int(min_count), float(min_std)
        # Filled by fit(): row c < K is class c, row K is the whole dataset (the null label).
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
            # uint8 batches are pixels; float batches are taken as already in model space
            # (toy2d.py fits the same prior to points in the plane).
            x = to_model(images, torch.float64) if images.dtype == torch.uint8 else images.double()
            stats.update(x, labels)
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

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_labels(labels, self.num_classes)
        mean, std = self._tables(labels.device)
        noise = torch.randn((len(labels), *self.shape), generator=generator, device=labels.device)
        return mean[labels] + std[labels] * noise

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

    def save(self, path: str) -> None:
        save_npz(path, self.state_dict())

    @classmethod
    def load(cls, path: str) -> ClassPrior:
        return cls.from_state_dict(load_npz(path))


class RunningClassStats:
    """Per-class count, mean and sum of squared deviations (M2), merged batch by batch.

    Only the classes present in a batch are touched, in place: memory stays K x D float64 and
    the work per batch is proportional to the batch. The dataset-wide component (row K) is the
    same merge taken over the classes at the end, so no image is accumulated twice."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.shape: tuple[int, ...] = ()
        self.count: torch.Tensor | None = None  # (K,) float64
        self.mean: torch.Tensor | None = None  # (K, D)
        self.m2: torch.Tensor | None = None  # (K, D)

    def update(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        k = self.num_classes
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"class ids must be in 0..{k - 1}, got {int(labels.min())}..{int(labels.max())}")
        self.shape = tuple(x.shape[1:])
        x, labels = x.flatten(1).double(), labels.to(x.device)
        if self.count is None:
            self.count = torch.zeros(k, dtype=torch.float64, device=x.device)
            self.mean = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
            self.m2 = torch.zeros_like(self.mean)
        present, rows = torch.unique(labels, return_inverse=True)  # batch stats for present classes only
        count_b = torch.bincount(rows, minlength=len(present)).double()
        mean_b = torch.zeros(len(present), x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, rows, x)
        mean_b /= count_b[:, None]
        m2_b = torch.zeros_like(mean_b).index_add_(0, rows, (x - mean_b[rows]).square_())
        # Chan et al.: n = na + nb, m = ma + d nb / n, M2 = M2a + M2b + d^2 na nb / n, d = mb - ma
        count_a, mean_a = self.count[present], self.mean[present]
        n = count_a + count_b
        delta = mean_b - mean_a
        weight = (count_b / n)[:, None]
        self.mean[present] = mean_a + delta * weight
        self.m2[present] += m2_b + delta.square_() * (count_a[:, None] * weight)
        self.count[present] = n

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """counts (K+1,), means and population variances (K+1, D) as float64 numpy; row K is
        the whole dataset, merged from the classes with the same formula."""
        if self.count is None:
            raise ValueError("no images were seen; the dataset is empty")
        total = self.count.sum()
        mean = (self.count[:, None] * self.mean).sum(0) / total
        m2 = self.m2.sum(0) + (self.count[:, None] * (self.mean - mean).square()).sum(0)
        counts = torch.cat([self.count, total[None]])
        means = torch.cat([self.mean, mean[None]])
        variances = torch.cat([self.m2, m2[None]]) / counts.clamp(min=1)[:, None]
        return counts.long().cpu().numpy(), means.cpu().numpy(), variances.cpu().numpy()


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Labels must be int64 in 0..num_classes (num_classes itself is the null label)."""
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 class ids, got {labels.dtype}")
    # Only on CPU: there a bad id would index past the table silently, while on CUDA the
    # check would cost a host sync every training step (and indexing asserts on device).
    if labels.device.type == "cpu" and len(labels) and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise ValueError(f"class ids must be in 0..{num_classes - 1} (or {num_classes} for the null label), "
                         f"got {int(labels.min())}..{int(labels.max())}")


def save_npz(path: str, state: dict) -> None:
    checks.save_npz(path, state)  # temporary file + rename: a killed fit leaves no half-written file


def load_npz(path: str) -> dict:
    """A prior's saved state; a missing, damaged or foreign file is a one-line error naming it."""
    return checks.load_npz(path, "prior statistics file", "train.py fits and writes it when the file is absent",
                           keys=("name",))


PRIORS: dict[str, type] = {"gaussian": GaussianPrior, "class": ClassPrior}


def build_prior(name: str, **options) -> GaussianPrior | ClassPrior:
    """An unfitted prior from its command-line name. train.py passes every prior option it
    has (cov, sigma, scale); each prior takes those its constructor names and ignores the rest."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior '{name}'; choose one of: {', '.join(PRIORS)}")
    accepted = inspect.signature(PRIORS[name]).parameters
    return PRIORS[name](**{key: value for key, value in options.items() if key in accepted})


def prior_from_state(state: dict) -> GaussianPrior | ClassPrior:
    name = str(state["name"])
    if name not in PRIORS:
        raise ValueError(f"the statistics were saved by prior '{name}', which this code does not know; "
                         f"known: {', '.join(PRIORS)}")
    return PRIORS[name].from_state_dict(state)
