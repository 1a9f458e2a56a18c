"""Statistics the priors fit in streamed passes over the training set, never holding it whole.

Per-class (or per-component) count, mean and variance in float64, merging per-batch
(count, mean, M2) triples with Chan et al.'s parallel update

    n = na + nb,  d = mb - ma,  m = ma + d nb / n,  M2 = M2a + M2b + d^2 na nb / n,

so memory is O(K D), not O(N D), and the result does not depend on batch size or order; and
per-class k-means (KMeansPrior): k-means++ seeds, then streamed Lloyd passes, each image
assigned to the nearest centroid of its own class.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from .data import to_model


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
        if labels.dtype != torch.int64:
            raise ValueError("this prior groups images by class id, got condition vectors; "
                             "for vector conditions use --prior mapper or gaussian")
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
        """counts (K+1,), means and population variances (K+1, *shape of x) as float64 numpy;
        row K is the whole dataset, merged from the classes with the same formula."""
        if self.count is None:
            raise ValueError("no images were seen; the dataset is empty")
        total = self.count.sum()
        mean = (self.count[:, None] * self.mean).sum(0) / total
        m2 = self.m2.sum(0) + (self.count[:, None] * (self.mean - mean).square()).sum(0)
        counts = torch.cat([self.count, total[None]])
        means = torch.cat([self.mean, mean[None]])
        variances = torch.cat([self.m2, m2[None]]) / counts.clamp(min=1)[:, None]
        shape = (len(counts), *self.shape)
        return counts.long().cpu().numpy(), means.view(shape).cpu().numpy(), variances.view(shape).cpu().numpy()


def model_space(images: torch.Tensor) -> torch.Tensor:
    """float64 images in model space: uint8 batches are pixels; float batches are taken as already
    in model space (toy2d.py fits the same priors to points in the plane)."""
    return to_model(images, torch.float64) if images.dtype == torch.uint8 else images.double()


def nearest(x: torch.Tensor, cond: torch.Tensor, centroids: torch.Tensor, valid: torch.Tensor,
            chunk: int = 256, dense_limit: int = 1024) -> torch.Tensor:
    """argmin_j ||x_i - centroids[cond_i, j]||^2 over the valid centroids of row i's own class,
    as ||c||^2 - 2 c.x (the ||x||^2 term is the same for every j), in chunks to bound memory.

    With at most dense_limit centroids in all, the dot products with every centroid are one
    matrix product and row i keeps its class's k columns: K times the arithmetic of the
    per-row gather below, but no (chunk, k, D) copy of the centroids, which is what costs."""
    centroids = centroids.to(x.dtype)
    num_classes, k, size = centroids.shape
    squared = centroids.square().sum(-1)  # (K, k)
    dense = num_classes * k <= dense_limit
    flat = centroids.reshape(num_classes * k, size)
    out = []
    for start in range(0, len(x), chunk):
        ids, rows = cond[start:start + chunk], x[start:start + chunk]
        if dense:
            dots = (rows @ flat.T).view(len(rows), num_classes, k)
            dots = dots.gather(1, ids.view(-1, 1, 1).expand(-1, 1, k)).squeeze(1)
        else:
            dots = torch.einsum("bkd,bd->bk", centroids[ids], rows)
        distance = squared[ids] - 2 * dots
        out.append(distance.masked_fill(~valid[ids], math.inf).argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


def kmeans_plus_plus(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int, k: int,
                     init_images: int, seed: int) -> torch.Tensor:
    """k seeds per class, (K, k, D) float64 in model space: k-means++ (the next seed drawn with
    probability proportional to its squared distance D(x)^2 to the nearest seed so far) on the
    first init_images images of each class, read once."""
    kept: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    seen = np.zeros(num_classes, dtype=np.int64)
    for images, labels in batches:  # kept as read (uint8): 1/8 of float64 model space
        x, labels = images.flatten(1), labels.to(images.device)
        for c in torch.unique(labels).tolist():
            if seen[c] < init_images:
                rows = x[labels == c][:init_images - seen[c]].clone()
                kept[c].append(rows)
                seen[c] += len(rows)
        if seen.min() >= init_images:
            break
    if seen.min() == 0:
        raise ValueError(f"class {int(np.argmin(seen))} has no images; the kmeans prior needs every class")
    generator = np.random.default_rng(seed)
    seeds = []
    for points in (model_space(torch.cat(rows)) for rows in kept):
        chosen = [int(generator.integers(len(points)))]
        distance = (points - points[chosen[0]]).square().sum(1)
        for _ in range(1, k):
            weights = distance.cpu().numpy()
            pick = int(generator.choice(len(points), p=weights / weights.sum())) if weights.sum() > 0 \
                else int(generator.integers(len(points)))  # fewer distinct images than k
            chosen.append(pick)
            distance = torch.minimum(distance, (points - points[pick]).square().sum(1))
        seeds.append(points[chosen])
    return torch.stack(seeds)


def cluster_stats(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], centroids: torch.Tensor
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RunningClassStats.result() of the clusters: row c k + j is cluster j of class c (its images
    are those nearest to centroids[c, j] among class c's), the last row the whole dataset."""
    num_classes, k, _ = centroids.shape
    stats = RunningClassStats(num_classes * k)
    valid = torch.ones(centroids.shape[:2], dtype=torch.bool, device=centroids.device)
    for images, labels in batches:
        x, labels = model_space(images), labels.to(images.device)
        stats.update(x, labels * k + nearest(x.flatten(1), labels, centroids, valid))
    return stats.result()


def lloyd_passes(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], centroids: torch.Tensor,
                 passes: int) -> torch.Tensor:
    """`passes` streamed Lloyd iterations on (K, k, D) per-class centroids: assign every image to
    the nearest centroid of its own class, then move each centroid to its cluster's mean (an
    empty cluster keeps its centroid). Memory: the sums, K k D, never the data."""
    centroids = centroids.clone()
    valid = torch.ones(centroids.shape[:2], dtype=torch.bool, device=centroids.device)
    for _ in tqdm(range(passes), desc=f"k-means (k={centroids.shape[1]}) passes", leave=False):
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(centroids.shape[:2], dtype=torch.float64, device=centroids.device)
        for images, labels in batches:
            x, labels = model_space(images).flatten(1), labels.to(images.device)
            cluster = nearest(x, labels, centroids, valid)
            sums.index_put_((labels, cluster), x, accumulate=True)
            counts.index_put_((labels, cluster), torch.ones_like(x[:, 0]), accumulate=True)
        moved = counts > 0
        centroids[moved] = sums[moved] / counts[moved][:, None]
    return centroids
