"""The metric, self-contained: FID (or offline FD-clf), KID and conditional accuracy of a sample set.

Features f(x) come from plumbing/features.py: Inception's 2048-d pool3 or, offline (`--features clf`), the
penultimate layer of a classifier trained on the dataset ("FD-clf", never FID), whose predictions give
the conditional accuracy (the share of samples classified as the class they were generated for).

Frechet distance between the Gaussians fitted to two feature sets (float64, unbiased covariance):

    FD = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr( (S1 S2)^(1/2) )

The trace term needs no general matrix square root. Any factor S1 = B B^T gives S1 S2 = B (B^T S2),
which has the eigenvalues of B^T S2 B (XY and YX share them), a symmetric positive semi-definite
matrix; so

    Tr (S1 S2)^(1/2) = sum_i sqrt(lambda_i(B^T S2 B))

from one symmetric eigendecomposition (eigvalsh), in float64, on the GPU when there is one. The
symmetric root B = S1^(1/2) (a second eigendecomposition) would do; the Cholesky factor B = L costs a
tenth of that, and fails where S1 is not numerically positive definite: about 10x faster than
scipy.linalg.sqrtm (pytorch-fid's way) at d = 2048 (bench/RESULTS.md). Where the product is
numerically singular (no Cholesky factor, or lambda_min <= d * 2^-52 * lambda_max: degenerate or too
few features) pytorch-fid's number is whatever its sqrtm does there, which it regularises when the
root fails; that case takes the reference path, frechet_distance_sqrtm: sqrtm, and a root that is
not finite or whose square is off S1 S2 by more than 1e-5 (relative, Frobenius) is retried with 1e-6
added to both diagonals; an imaginary part above 1e-3 on the diagonal is an error, else dropped.
Non-finite statistics, features or roots are errors, never a NaN result.

Kernel inception distance: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over
random subsets of m samples from each set (100 subsets of 1000 by default):

    MMD^2_u = sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2

Reference files are .npz with pytorch-fid's keys mu and sigma (its stats files work here, ours
there), plus up to 10k features for KID, the feature network's name and id, n and the image shape
(a calc with other features or sizes is refused). Printed: a JSON line (KID as is), then a readable
summary (KID x 1e3). `python -m plumbing.classifier` trains the offline classifier; bench/sweep.py measures
checkpoints at several NFEs with these functions.

    python eval_fid.py ref --dataset cifar10 [--features clf --clf runs/clf.pt]     # runs/ref.npz
    python eval_fid.py calc --samples out/samples_euler_nfe8_n100.npz --ref runs/ref.npz
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

from plumbing import checks, data, outputs, samplefiles
from plumbing.features import INCEPTION_ID, Extractor, build_extractor, extractor_for_ref
from plumbing.inception import INCEPTION_FILE

KID_KEEP = 10_000  # reference features stored for KID
SQRTM_TOLERANCE = 1e-5  # ||root^2 - S1 S2|| / ||S1 S2|| above this: the root is not trusted
REF_HINT = "make one with python eval_fid.py ref"


# ---------------------------------------------------------------- statistics

class RunningStats:
    """Streaming mean and unbiased covariance in float64. Sums are taken around a shift (the first
    batch's mean) so that S - n m m^T does not cancel; memory is O(d^2), not O(N d)."""

    def __init__(self):
        self.n, self.shift, self.sum, self.outer = 0, None, None, None

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)
        if self.shift is None:
            self.shift = features.mean(0)
            self.sum, self.outer = np.zeros_like(self.shift), np.zeros((len(self.shift),) * 2)
        centred = features - self.shift
        self.n += len(features)
        self.sum += centred.sum(0)
        self.outer += centred.T @ centred

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean_offset = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mean_offset, mean_offset)) / (self.n - 1)
        return self.shift + mean_offset, sigma


def check_enough(n: int, dim: int, hint: str = "measure more images") -> None:
    """n samples give a covariance of rank <= n - 1: below dim + 1 it is singular.
    hint: how the caller's user gets more (a flag, a command)."""
    if n < dim + 1:
        raise ValueError(f"{n} samples for {dim}-d features: the covariance is singular; "
                         f"use at least {dim + 1} (10000+ is usual for FID): {hint}")


def measure(extractor: Extractor, batches: Iterable[torch.Tensor], total: int, keep: np.ndarray | None = None,
            desc: str = "features") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One pass: (mu, sigma, kept features, predictions). keep = boolean mask over the total
    images whose features are returned (None = all)."""
    check_enough(total, extractor.dim)  # fail before the pass, not after it
    stats, kept, predictions, offset = RunningStats(), [], [], 0
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for images in batches:
            features, predicted = extractor(images[:total - offset])
            bar.update(len(features))
            stats.update(features)
            mask = slice(None) if keep is None else keep[offset:offset + len(features)]
            kept.append(features[mask].astype(np.float32))
            if predicted is not None:
                predictions.append(predicted)
            offset += len(features)
            if offset >= total:
                break
    if offset == 0:
        raise ValueError("no images to measure")
    check_enough(stats.n, extractor.dim)
    mu, sigma = stats.result()
    return mu, sigma, np.concatenate(kept), np.concatenate(predictions) if predictions else None


# ---------------------------------------------------------------- the numbers

def root_is_accurate(root: np.ndarray, product: np.ndarray, tol: float = SQRTM_TOLERANCE) -> bool:
    """Finite and squares back to `product` (relative Frobenius residual <= tol). We decide, not
    scipy: whether sqrtm returns NaN or a poor root on a singular product changes between versions."""
    return bool(np.isfinite(root).all() and np.linalg.norm(root @ root - product) <= tol * np.linalg.norm(product))


def check_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two (mean, covariance) pairs as float64 arrays of matching shapes, finite, or ValueError."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} "
                         f"vs {sigma2.shape} (made with different features?)")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        checks.check_finite(value, f"Frechet distance input {name}")
    return mu1, sigma1, mu2, sigma2


def product_eigenvalues(sigma1: np.ndarray, sigma2: np.ndarray,
                        device: torch.device | None = None) -> np.ndarray | None:
    """The eigenvalues of S1 S2, ascending, as those of the symmetric L^T S2 L with S1 = L L^T
    (Cholesky); None when S1 has no Cholesky factor (not positive definite: a singular product).
    float64 throughout: device None is numpy's LAPACK, a torch device torch.linalg there (a GPU;
    rounding-level differences). Both read one triangle: covariances are symmetric."""
    if device is None:
        try:
            factor = np.linalg.cholesky(sigma1)
        except np.linalg.LinAlgError:
            return None
        return np.linalg.eigvalsh(factor.T @ sigma2 @ factor)
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64).to(device) for s in (sigma1, sigma2))
    factor, info = torch.linalg.cholesky_ex(s1)  # no exception on failure: info > 0
    if int(info) != 0:
        return None
    return torch.linalg.eigvalsh(factor.T @ s2 @ factor).cpu().numpy()


def is_singular(eigenvalues: np.ndarray) -> bool:
    """Numerically singular: the smallest eigenvalue within rounding (d machine epsilons of the
    largest) of zero: an exact zero comes out of the factorisations as about +-1e-16 relative. Such
    a product is where sqrtm may fail and pytorch-fid regularises."""
    return bool(eigenvalues[0] <= len(eigenvalues) * np.finfo(np.float64).eps * max(eigenvalues[-1], 0.0))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, device: str | torch.device | None = None) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 sum sqrt(eigenvalues of S1 S2), float64 (the module
    docstring). A numerically singular S1 S2 takes frechet_distance_sqrtm, pytorch-fid's path with
    its eps regularisation. device: where the factorisations run (default: cuda if available)."""
    mu1, sigma1, mu2, sigma2 = check_statistics(mu1, sigma1, mu2, sigma2)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    eigenvalues = product_eigenvalues(sigma1, sigma2, None if device.type == "cpu" else device)
    if eigenvalues is None or is_singular(eigenvalues):  # a covariance that is not PSD too: the reference says so
        return frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigenvalues).sum())


def frechet_distance_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                           eps: float = 1e-6, sqrtm: Callable[[np.ndarray], np.ndarray] = scipy.linalg.sqrtm,
                           tol: float = SQRTM_TOLERANCE) -> float:
    """The reference: ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr sqrtm(S1 S2), float64, as pytorch-fid
    computes it, with its safeguards. A root that fails root_is_accurate is taken again of
    (S1 + eps I)(S2 + eps I); if that fails too, ValueError. sqrtm is injectable so that tests can
    make the first root fail. frechet_distance's path for singular products; slow (sqrtm)."""
    mu1, sigma1, mu2, sigma2 = check_statistics(mu1, sigma1, mu2, sigma2)
    product = sigma1 @ sigma2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular products are handled below
        root = sqrtm(product)
        if not root_is_accurate(root, product, tol):
            # a (nearly) singular product can make the Schur method fail: regularise both sides
            warnings.warn(f"sqrtm(S1 S2) is not finite or not accurate; adding {eps} to the covariance diagonals")
            offset = eps * np.eye(len(mu1))
            product = (sigma1 + offset) @ (sigma2 + offset)
            root = sqrtm(product)
            if not root_is_accurate(root, product, tol):  # a wrong root would be a wrong number
                raise ValueError(f"no accurate sqrtm(S1 S2) even with {eps} added to the diagonals: "
                                 "are both covariances positive semi-definite?")
    if np.iscomplexobj(root):
        # S1 S2 has real non-negative eigenvalues, so a small imaginary part is rounding error
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(S1 S2) has an imaginary component of {np.abs(root.imag).max():.3g}: "
                             "are both covariances positive semi-definite?")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def mmd2_unbiased(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float | torch.Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3, of two numpy arrays
    (a float) or two torch tensors (a 0-d tensor where they are: kid's GPU path, no host sync)."""
    d, m, n = x.shape[1], len(x), len(y)
    sums, diagonals = [], []
    for a, b in ((x, x), (y, y), (x, y)):
        kernel = a @ b.T  # for a @ a.T numpy calls BLAS syrk: half the work of a product
        kernel /= d
        kernel += 1  # in place: the numbers of a b^T / d + 1, without two temporaries
        cube = kernel * kernel
        cube *= kernel  # two products: 1 ulp from pow(k, 3) per entry, 6x faster than ** 3
        sums.append(cube.sum())
        diagonals.append(cube.diagonal().sum())
    within = (sums[0] - diagonals[0]) / (m * (m - 1)) + (sums[1] - diagonals[1]) / (n * (n - 1))
    value = within - 2 * sums[2] / (m * n)
    return value if isinstance(value, torch.Tensor) else float(value)


def kid(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0, device: str | torch.device | None = None) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over random subsets of min(subset_size, n1, n2) per side.
    float64; device: where the kernels are computed (default: cuda if available; the same subsets,
    rounding-level differences)."""
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature arrays of equal d, got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {len(x)} and {len(y)}")
    if m == len(x) == len(y):
        num_subsets = 1  # every subset would be the whole of both sets
    rng = np.random.default_rng(seed)
    subsets = [(rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False))
               for _ in range(num_subsets)]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        values = np.array([mmd2_unbiased(x[i], y[j]) for i, j in subsets])
    else:
        x_on, y_on = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        values = torch.stack([mmd2_unbiased(x_on[torch.from_numpy(i).to(device)],
                                            y_on[torch.from_numpy(j).to(device)]) for i, j in subsets]).cpu().numpy()
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------- files

def write_reference(path: str | Path, extractor: Extractor, batches: Iterable[torch.Tensor], total: int,
                    shape: tuple[int, int, int], source: str, seed: int = 0) -> int:
    """Reference statistics of `total` images into `path`: mu and sigma under pytorch-fid's
    --save-stats keys, a seeded subset of up to KID_KEEP features for KID, and what a calc must
    check. Returns how many features were kept."""
    check_enough(total, extractor.dim, "use more images (--max-images, or a larger --images set)")
    keep = np.zeros(total, bool)
    keep[np.random.default_rng(seed).choice(total, min(KID_KEEP, total), replace=False)] = True
    mu, sigma, features, _ = measure(extractor, batches, total, keep, desc="reference")
    outputs.save_npz(path, {"mu": mu, "sigma": sigma, "features": features, "feature_name": extractor.name,
                           "extractor_id": extractor.id, "clf_path": extractor.clf_path, "n": total,
                           "image_shape": np.asarray(shape, np.int64), "source": source}, "--out")
    return len(features)


def load_ref(path: str | Path) -> dict:
    ref = checks.load_npz(path, "reference statistics file", REF_HINT, keys=("mu", "sigma"))
    mu, sigma = ref["mu"], ref["sigma"]
    if mu.dtype.kind not in "fiu" or mu.ndim != 1 or sigma.dtype.kind not in "fiu" or sigma.shape != (len(mu),) * 2:
        raise ValueError(f"{path}: mu {mu.dtype} {mu.shape} and sigma {sigma.dtype} {sigma.shape} are not a "
                         f"mean and its covariance; {REF_HINT}")
    for key in ("mu", "sigma", "features"):  # NaN here would come out as a NaN metric
        if key in ref:
            checks.check_finite(ref[key], f"{path}: {key}", f"the file is damaged; {REF_HINT}")
    # a plain pytorch-fid stats file has only mu and sigma: Inception features, no KID
    for key, default in (("feature_name", "inception"), ("extractor_id", INCEPTION_ID), ("clf_path", "")):
        ref[key] = str(ref.get(key, default))
    return ref


def check_shape(samples_shape: tuple[int, ...], ref: dict) -> None:
    if "image_shape" in ref and tuple(int(s) for s in ref["image_shape"]) != tuple(samples_shape):
        raise ValueError(f"samples are {tuple(samples_shape)} (C, H, W) but the reference images were "
                         f"{tuple(int(s) for s in ref['image_shape'])}: compare images of one size")


def score(extractor: Extractor, images: torch.Tensor, labels: np.ndarray | None, ref: dict,
          batch_size: int, seed: int = 0) -> dict:
    """The metric, KID (when the reference stores features) and conditional accuracy."""
    check_shape(tuple(images.shape[1:]), ref)
    mu, sigma, features, predictions = measure(extractor, images.split(batch_size), len(images))
    result = {"metric": extractor.metric, "value": frechet_distance(mu, sigma, ref["mu"], ref["sigma"],
                                                                device=extractor.device),
              "kid": None, "kid_std": None, "accuracy": None, "n": len(images)}
    if "features" in ref:
        result["kid"], result["kid_std"] = kid(features, ref["features"], seed=seed, device=extractor.device)
    if predictions is not None and labels is not None:
        result["accuracy"] = float(np.mean(predictions == labels))
    return result


def summary(result: dict, extra: Iterable[str] = ()) -> str:
    """The readable line; extra: more parts before the sample count (bench/sweep.py's attribute errors)."""
    kid_name = "KID" if result["metric"] == "FID" else "KID-clf"
    parts = [f"{result['metric']} {result['value']:.3f}"]
    if result["kid"] is not None:
        parts.append(f"{kid_name} x1e3 {1e3 * result['kid']:.3f} +- {1e3 * result['kid_std']:.3f}")
    if result["accuracy"] is not None:
        parts.append(f"accuracy {100 * result['accuracy']:.1f}%")
    return ", ".join([*parts, *extra]) + f" ({result['n']} samples)"


# ---------------------------------------------------------------- commands

def run_ref(args: argparse.Namespace) -> None:
    out = outputs.check_out_file(args.out, "--out", (".npz",))
    if not args.images and not args.dataset:
        raise ValueError("ref needs --dataset NAME or --images PATH")
    # the network first: it fails fast (missing weights), reading the images may take long
    extractor = build_extractor(args.features, args.clf, args.inception_weights, args.device)
    if args.images:
        images, _ = samplefiles.load_samples(args.images)
        images = images[:args.max_images]  # None: all
        total, shape, source = len(images), tuple(images.shape[1:]), str(args.images)
        batches: Iterable[torch.Tensor] = images.split(args.batch_size)
    else:
        options = {"image_size": args.image_size} if args.image_size else {}
        dataset = data.load_dataset(args.dataset, args.data_dir, "train", **options)
        total = min(len(dataset), args.max_images or len(dataset))
        shape, source = (dataset.channels, dataset.image_size, dataset.image_size), f"{args.dataset}:train"
        batches = (images for images, _ in dataset.batches(args.batch_size))
    kept = write_reference(out, extractor, batches, total, shape, source, args.seed)
    print(f"wrote {out}: {extractor.name} statistics of {total} images from {source} ({kept} features kept for KID)")


def run_calc(args: argparse.Namespace) -> None:
    ref = load_ref(args.ref)
    images, labels = samplefiles.load_samples(args.samples)
    dim = len(ref["mu"])  # known before the feature network is loaded
    check_enough(len(images), dim, f"generate at least {dim + 1} with python sample.py --n N (images per class)")
    extractor = extractor_for_ref(ref, args.features, args.clf, args.inception_weights, args.device)
    result = {"samples": str(args.samples), "ref": str(args.ref)} | score(
        extractor, images, labels, ref, args.batch_size, args.seed)
    print(json.dumps(result))
    print(summary(result))


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = checks.Parser(prog=prog, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    subs = {}
    for name, help, features in (("ref", "reference statistics of a dataset or image set", "inception"),
                                 ("calc", "metrics of a sample file against reference statistics", None)):
        subs[name] = commands.add_parser(name, help=help, description=help, formatter_class=checks.DefaultsFormatter)
        arg = subs[name].add_argument
        arg("--batch-size", type=checks.positive_int, default=100, help="images per batch")
        arg("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
        arg("--seed", type=checks.seed_int, default=0, help="random seed")
        arg("--features", choices=["inception", "clf"], default=features,
            help="feature network" + ("" if features else " (default: the reference's)"))
        arg("--clf", default=None, help="classifier file for --features clf")
        arg("--inception-weights", default=None,
            help=f"path of {INCEPTION_FILE} (default: torch.hub's checkpoints folder)")
    arg = subs["ref"].add_argument
    arg("--dataset", default=None, help="dataset name, as in train.py")
    arg("--data-dir", default=None, help="folder of the dataset's files, as in train.py")
    arg("--image-size", type=checks.positive_int, default=None, help="for shapes/folder, as in train.py")
    arg("--images", default=None, help="an .npz (arr_0) or a folder of images instead")
    arg("--max-images", type=checks.positive_int, default=None, help="use the first N images (default: all)")
    arg("--out", default="runs/ref.npz", help="statistics file to write (.npz)")
    arg = subs["calc"].add_argument
    arg("--samples", required=True, help="sample.py's .npz or a folder of images")
    arg("--ref", required=True, help="statistics file written by ref")

    args = parser.parse_args(argv)
    for flag in ("batch_size", "max_images", "image_size"):  # calc has only --batch-size; None: the default
        checks.check_at_least(getattr(args, flag, None), 1, "--" + flag.replace("_", "-"))
    args.device = checks.resolve_device(args.device)
    checks.set_cpu_threads(args.device)
    {"ref": run_ref, "calc": run_calc}[args.command](args)


if __name__ == "__main__":
    checks.run_main(main)
