"""Statistics the priors fit in streamed passes over the training set, never holding it whole.

Per-class (or per-component) count, mean and variance in float64, merging per-batch
(count, mean, M2) triples with Chan et al.'s parallel update

    n = na + nb,  d = mb - ma,  m = ma + d nb / n,  M2 = M2a + M2b + d^2 na nb / n,

so memory is O(K D), not O(N D), and the result does not depend on batch size or order; and
per-class k-means (KMeansPrior): k-means++ seeds, then streamed Lloyd passes, each image
assigned to the nearest centroid of its own class; and per-class diagonal Gaussian mixtures
(GMMPrior): streamed EM passes from the k-means clusters, with soft responsibilities

    r_ij = w_cj N(x_i | m_cj, v_cj) / sum_l w_cl N(x_i | m_cl, v_cl)     (c = x_i's class)
    w_cj = R_cj / sum_l R_cl,  m_cj = sum_i r_ij x_i / R_cj,  v_cj = sum_i r_ij (x_i - m_cj)^2 / R_cj,
    R_cj = sum_i r_ij,

each pass summing r, r x and r x^2 per component in float64 (memory K k D, never the data).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from .conditions import check_class_ids
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
        check_class_ids(labels, k)
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


def class_dots(rows: torch.Tensor, cond: torch.Tensor, vectors: torch.Tensor, chunk: int = 256,
               dense_limit: int = 1024) -> torch.Tensor:
    """(N, k): rows_i . vectors[cond_i, j] for each of row i's own class's k vectors, in chunks
    to bound memory.

    With at most dense_limit vectors in all, the dot products with every vector are one matrix
    product and row i keeps its class's k columns: K times the arithmetic of the per-row gather
    below, but no (chunk, k, D) copy of the vectors, which is what costs."""
    num_classes, k, size = vectors.shape
    dense = num_classes * k <= dense_limit
    flat = vectors.reshape(num_classes * k, size)
    out = [torch.zeros(0, k, dtype=rows.dtype, device=rows.device)]
    for start in range(0, len(rows), chunk):
        ids, part = cond[start:start + chunk], rows[start:start + chunk]
        if dense:
            dots = (part @ flat.T).view(len(part), num_classes, k)
            out.append(dots.gather(1, ids.view(-1, 1, 1).expand(-1, 1, k)).squeeze(1))
        else:
            out.append(torch.einsum("bkd,bd->bk", vectors[ids], part))
    return torch.cat(out)


def nearest(x: torch.Tensor, cond: torch.Tensor, centroids: torch.Tensor, valid: torch.Tensor,
            chunk: int = 256, dense_limit: int = 1024) -> torch.Tensor:
    """argmin_j ||x_i - centroids[cond_i, j]||^2 over the valid centroids of row i's own class,
    as ||c||^2 - 2 c.x (the ||x||^2 term is the same for every j)."""
    centroids = centroids.to(x.dtype)
    distance = centroids.square().sum(-1)[cond] - 2 * class_dots(x, cond, centroids, chunk, dense_limit)
    return distance.masked_fill(~valid[cond], math.inf).argmin(1)


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


def mixture_tables(weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """log w_cj + log N(x | m_cj, diag v_cj) = [x^2, x] . vectors_cj + offsets_cj, for (K, k)
    weights and (K, k, D) means and variances: the quadratic expanded so that every row's k
    log-densities are one matrix product (class_dots), in float64, where the D-term sums of
    the images' log-densities (about D / v, 1e7 for D = 3072) still cancel to well below 1.
    A component of weight 0 has offset -inf: it never takes a responsibility."""
    means, variances = means.double(), variances.double()
    precision = 1 / variances
    vectors = torch.cat([-0.5 * precision, means * precision], -1)
    offsets = weights.double().log() - 0.5 * ((means.square() * precision).sum(-1) + variances.log().sum(-1)
                                              + means.shape[-1] * math.log(2 * math.pi))
    return vectors, offsets


def log_responsibilities(x: torch.Tensor, cond: torch.Tensor, vectors: torch.Tensor, offsets: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log r_ij (N, k), log p(x_i | c_i) (N,)) for (N, D) float64 rows under their class's
    mixture, normalised by log-sum-exp (the log-densities themselves are far outside exp's range)."""
    joint = class_dots(torch.cat([x.square(), x], 1), cond, vectors) + offsets[cond]
    log_likelihood = torch.logsumexp(joint, 1)
    return joint - log_likelihood[:, None], log_likelihood


def em_passes(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor, means: torch.Tensor,
              variances: torch.Tensor, passes: int, min_var: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`passes` streamed EM iterations on per-class diagonal mixtures: (K, k) weights, (K, k, D)
    means and variances (float64, on the data's device), each variance floored at min_var (a
    component on a few images, or a pixel constant in it, would otherwise collapse to a point
    of infinite density). A component that gets no responsibility keeps its mean and variance
    and has weight 0."""
    num_classes, k, size = means.shape
    means, variances = means.double().clone(), variances.double().clamp(min=min_var)
    weights = weights.double().clone()
    bar = tqdm(range(passes), desc=f"EM (k={k}) passes", leave=False)
    for _ in bar:
        vectors, offsets = mixture_tables(weights, means, variances)
        flat = means.view(num_classes * k, size)
        mass = torch.zeros(num_classes * k, dtype=torch.float64, device=means.device)
        first, second = torch.zeros_like(flat), torch.zeros_like(flat)
        total, seen = torch.zeros((), dtype=torch.float64, device=means.device), 0
        for images, labels in batches:
            x, labels = model_space(images).flatten(1), labels.to(images.device)
            log_r, log_likelihood = log_responsibilities(x, labels, vectors, offsets)
            r = log_r.exp()
            for j in range(k):  # sums around the component's current mean: x^2 sums would cancel
                rows = labels * k + j
                shifted = x - flat[rows]
                mass.index_add_(0, rows, r[:, j])
                first.index_add_(0, rows, r[:, j, None] * shifted)
                second.index_add_(0, rows, r[:, j, None] * shifted.square_())
            total += log_likelihood.sum()
            seen += len(x)
        kept = (mass > 0)[:, None]
        step = first / mass.clamp(min=1e-300)[:, None]
        variance = (second / mass.clamp(min=1e-300)[:, None] - step.square()).clamp(min=min_var)
        means = torch.where(kept, flat + step, flat).view_as(means)
        variances = torch.where(kept, variance, variances.view_as(flat)).view_as(means)
        weights = mass.view(num_classes, k) / mass.view(num_classes, k).sum(1, keepdim=True)
        bar.set_postfix(loglik_per_image=f"{float(total) / max(seen, 1):.1f}")
    return weights, means, variances
