"""The metric, self-contained: FID (or offline FD-clf), KID and conditional accuracy of a sample set.

Features f(x): the 2048-d pool3 output of pytorch-fid's FID InceptionV3 (inception.py). Offline,
`--features clf` uses the penultimate layer of a small classifier trained on the dataset itself;
its distance is reported as "FD-clf", never as FID, and its predictions give the conditional
accuracy (the share of samples classified as the class they were generated for).

Frechet distance between the Gaussians fitted to two feature sets (float64, unbiased covariance):

    FD = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr( (S1 S2)^(1/2) )

with scipy.linalg.sqrtm and pytorch-fid's safeguards: a root that is not finite, or whose square is
off S1 S2 by more than 1e-5 (relative, Frobenius), is retried with 1e-6 added to both diagonals; an
imaginary part above 1e-3 on the diagonal is an error, else dropped. Non-finite statistics, features
or roots are errors, never a NaN result.

Kernel inception distance: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over
random subsets of m samples from each set (100 subsets of 1000 by default):

    MMD^2_u = sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2

Reference files are .npz with pytorch-fid's keys mu and sigma (its stats files work here, ours
there), plus up to 10k features for KID, the feature network's name and id, n and the image
shape (a calc with other features or sizes is refused). Printed: a JSON line (KID as is),
then a readable summary (KID x 1e3).

    python eval_fid.py ref --dataset cifar10 [--features clf --clf runs/clf.pt]     # runs/ref.npz
    python eval_fid.py calc --samples out/samples_euler_nfe8_n100.npz --ref runs/ref.npz

(`python classifier.py` trains the offline classifier; `python bench/sweep.py` measures
checkpoints at several NFEs with these functions.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
from tqdm import tqdm

import checks
import data
import sample
from classifier import Classifier
from inception import INCEPTION_FILE, InceptionV3  # noqa: F401 (re-exported: from eval_fid import InceptionV3)

INCEPTION_ID = "pt_inception-2015-12-05"  # the feature id in reference files (pytorch-fid's have none)
KID_KEEP = 10_000  # reference features stored for KID
SQRTM_TOLERANCE = 1e-5  # ||root^2 - S1 S2|| / ||S1 S2|| above this: the root is not trusted
REF_HINT = "make one with python eval_fid.py ref"
CLF_HINT = "train one with python classifier.py --dataset NAME --out runs/clf.pt"
CLF_KEYS = ("model", "channels", "image_size", "num_classes", "width")



# ---------------------------------------------------------------- features and statistics

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


class Extractor:
    """A feature network with its name ("inception" or "clf") and an id that ties statistics to
    the exact weights (a reference made with one classifier is refused with another)."""

    def __init__(self, name: str, net: nn.Module, dim: int, extractor_id: str, device: torch.device,
                 clf_path: str = "", image_shape: tuple[int, int, int] | None = None):
        self.name, self.dim, self.id = name, dim, extractor_id
        self.metric = "FID" if name == "inception" else "FD-clf"
        self.clf_path, self.image_shape = clf_path, image_shape
        self.device, self.net = device, net.to(device)
        if device.type == "cuda":  # float32 math (no autocast, no TF32): numbers comparable with pytorch-fid
            self.net = self.net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (n, C, H, W) -> (float64 features (n, dim), predicted classes or None)."""
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images of shape {tuple(images.shape[1:])}, but the classifier takes "
                             f"{self.image_shape}")
        x = images.to(self.device).float() / 255
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32
        try:
            features = self.net(x)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        # a broken network (NaN weights, overflow) stops here instead of becoming NaN statistics
        network = f"classifier {self.clf_path}" if self.clf_path else f"the {self.name} network"
        checks.check_finite(features, f"features of {network}",
                            "its weights are damaged: retrain or re-download it")
        predictions = self.net.head(features).argmax(1).cpu().numpy() if self.name == "clf" else None
        return features.double().cpu().numpy(), predictions


def build_extractor(name: str, clf: str | None = None, inception_weights: str | None = None,
                    device: torch.device | str | None = None) -> Extractor:
    device = checks.resolve_device(device)
    if name == "inception":
        return Extractor(name, InceptionV3(inception_weights or "auto"), 2048, INCEPTION_ID, device)
    if name == "clf":
        if clf is None:
            raise ValueError(f"--features clf needs --clf FILE: {CLF_HINT}")
        saved = checks.load_torch(clf, "classifier file", CLF_HINT, keys=CLF_KEYS)
        try:  # right keys, wrong contents (another network, strings for sizes): still the file's fault
            channels, size, width = int(saved["channels"]), int(saved["image_size"]), int(saved["width"])
            net = Classifier(channels, int(saved["num_classes"]), width)
            net.load_state_dict(saved["model"])
        except (TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise ValueError(f"{clf}: not a classifier file of this classifier.py "
                             f"({' '.join(str(err).split())[:200]}); {CLF_HINT}") from None
        net.requires_grad_(False).eval()
        fingerprint = "clf-" + hashlib.sha256(Path(clf).read_bytes()).hexdigest()[:16]
        return Extractor(name, net, 8 * width, fingerprint, device, str(clf), (channels, size, size))
    raise ValueError(f"unknown features '{name}'; choose inception or clf")


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
    if not np.isfinite(root).all():
        return False
    return bool(np.linalg.norm(root @ root - product) <= tol * np.linalg.norm(product))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, sqrtm: Callable[[np.ndarray], np.ndarray] = scipy.linalg.sqrtm,
                     tol: float = SQRTM_TOLERANCE) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr sqrtm(S1 S2), float64, pytorch-fid's safeguards.
    A root that fails root_is_accurate is taken again of (S1 + eps I)(S2 + eps I); if that fails
    too, ValueError. sqrtm is injectable so that tests can make the first root fail."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} "
                         f"vs {sigma2.shape} (made with different features?)")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        checks.check_finite(value, f"Frechet distance input {name}")
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


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    m, n = len(x), len(y)
    within = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within - 2 * k_xy.mean())


def kid(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over random subsets of min(subset_size, n1, n2) per side."""
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature arrays of equal d, got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {len(x)} and {len(y)}")
    if m == len(x) == len(y):
        num_subsets = 1  # every subset would be the whole of both sets
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------- files

def save_ref(path: str | Path, extractor: Extractor, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray,
             n: int, image_shape: tuple[int, ...], source: str) -> None:
    """mu and sigma under pytorch-fid's --save-stats keys, plus what a calc must check."""
    checks.save_npz(path, {"mu": mu, "sigma": sigma, "features": features, "feature_name": extractor.name,
                           "extractor_id": extractor.id, "clf_path": extractor.clf_path, "n": n,
                           "image_shape": np.asarray(image_shape, np.int64), "source": source})


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
    ref["feature_name"] = str(ref.get("feature_name", "inception"))
    ref["extractor_id"] = str(ref.get("extractor_id", INCEPTION_ID))
    ref["clf_path"] = str(ref.get("clf_path", ""))
    return ref


def extractor_for_ref(ref: dict, args: argparse.Namespace) -> Extractor:
    """The feature network the reference was made with; mismatches are refused."""
    if args.features is not None and args.features != ref["feature_name"]:
        raise ValueError(f"--features {args.features}, but the reference was made with "
                         f"{ref['feature_name']} features: make a matching reference")
    clf = args.clf or ref["clf_path"] or None
    extractor = build_extractor(ref["feature_name"], clf, args.inception_weights, args.device)
    if extractor.id != ref["extractor_id"]:
        raise ValueError(f"the reference was made with feature network {ref['extractor_id']}, this one is "
                         f"{extractor.id}: use the same --clf file or remake the reference")
    return extractor


def check_shape(samples_shape: tuple[int, ...], ref: dict) -> None:
    if "image_shape" in ref and tuple(int(s) for s in ref["image_shape"]) != tuple(samples_shape):
        raise ValueError(f"samples are {tuple(samples_shape)} (C, H, W) but the reference images were "
                         f"{tuple(int(s) for s in ref['image_shape'])}: compare images of one size")


def score(extractor: Extractor, images: torch.Tensor, labels: np.ndarray | None, ref: dict,
          batch_size: int, seed: int = 0) -> dict:
    """The metric, KID (when the reference stores features) and conditional accuracy."""
    check_shape(tuple(images.shape[1:]), ref)
    mu, sigma, features, predictions = measure(extractor, images.split(batch_size), len(images))
    result = {"metric": extractor.metric, "value": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
              "kid": None, "kid_std": None, "accuracy": None, "n": len(images)}
    if "features" in ref:
        result["kid"], result["kid_std"] = kid(features, ref["features"], seed=seed)
    if predictions is not None and labels is not None:
        result["accuracy"] = float(np.mean(predictions == labels))
    return result


def summary(result: dict) -> str:
    kid_name = "KID" if result["metric"] == "FID" else "KID-clf"
    parts = [f"{result['metric']} {result['value']:.3f}"]
    if result["kid"] is not None:
        parts.append(f"{kid_name} x1e3 {1e3 * result['kid']:.3f} +- {1e3 * result['kid_std']:.3f}")
    if result["accuracy"] is not None:
        parts.append(f"accuracy {100 * result['accuracy']:.1f}%")
    if "colour_error" in result:
        parts.append(f"attribute errors: colour {result['colour_error']:.1f} levels, position "
                     f"{result['position_error_px']:.2f} px, size rank correlation {result['size_rank_correlation']:.2f}")
    return ", ".join(parts) + f" ({result['n']} samples)"


# ---------------------------------------------------------------- commands

def write_reference(path: str | Path, extractor: Extractor, batches: Iterable[torch.Tensor], total: int,
                    shape: tuple[int, int, int], source: str, seed: int = 0) -> int:
    """Reference statistics of `total` images into `path` (mu, sigma and a seeded subset of up to
    KID_KEEP features for KID); returns how many features were kept."""
    check_enough(total, extractor.dim, "use more images (--max-images, or a larger --images set)")
    keep = np.zeros(total, bool)
    keep[np.random.default_rng(seed).choice(total, min(KID_KEEP, total), replace=False)] = True
    mu, sigma, features, _ = measure(extractor, batches, total, keep, desc="reference")
    save_ref(path, extractor, mu, sigma, features, total, shape, source)
    return len(features)


def run_ref(args: argparse.Namespace) -> None:
    out = checks.check_out_file(args.out, "--out", (".npz",))
    if not args.images and not args.dataset:
        raise ValueError("ref needs --dataset NAME or --images PATH")
    # the network first: it fails fast (missing weights), reading the images may take long
    extractor = build_extractor(args.features, args.clf, args.inception_weights, args.device)
    if args.images:
        images, _ = sample.load_samples(args.images)
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
    images, labels = sample.load_samples(args.samples)
    dim = len(ref["mu"])  # known before the feature network is loaded
    check_enough(len(images), dim, f"generate at least {dim + 1} with python sample.py --n N (images per class)")
    extractor = extractor_for_ref(ref, args)
    result = {"samples": str(args.samples), "ref": str(args.ref)} | score(
        extractor, images, labels, ref, args.batch_size, args.seed)
    print(json.dumps(result))
    print(summary(result))


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = checks.Parser(prog=prog, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, batch_size: int = 100) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, formatter_class=checks.DefaultsFormatter)
        sub.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
        sub.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
        sub.add_argument("--seed", type=int, default=0, help="random seed")
        return sub

    def features(sub: argparse.ArgumentParser, default: str | None) -> None:
        sub.add_argument("--features", choices=["inception", "clf"], default=default,
                         help="feature network" + ("" if default else " (default: the reference's)"))
        sub.add_argument("--clf", default=None, help="classifier file for --features clf")
        sub.add_argument("--inception-weights", default=None,
                         help=f"path of {INCEPTION_FILE} (default: torch.hub's checkpoints folder)")

    def dataset(sub: argparse.ArgumentParser, required: bool) -> None:
        sub.add_argument("--dataset", required=required, default=None, help="dataset name, as in train.py")
        sub.add_argument("--data-dir", default=None, help="folder of the dataset's files, as in train.py")
        sub.add_argument("--image-size", type=int, default=None, help="for shapes/folder, as in train.py")

    sub = command("ref", "reference statistics of a dataset or image set")
    features(sub, "inception")
    dataset(sub, required=False)
    sub.add_argument("--images", default=None, help="an .npz (arr_0) or a folder of images instead")
    sub.add_argument("--max-images", type=int, default=None, help="use the first N images (default: all)")
    sub.add_argument("--out", default="runs/ref.npz", help="statistics file to write (.npz)")

    sub = command("calc", "metrics of a sample file against reference statistics")
    features(sub, None)
    sub.add_argument("--samples", required=True, help="sample.py's .npz or a folder of images")
    sub.add_argument("--ref", required=True, help="statistics file written by ref")

    args = parser.parse_args(argv)
    for flag in ("batch_size", "steps", "width", "eval_images", "max_images", "image_size", "n",
                 "sample_batch_size"):
        if hasattr(args, flag):  # each sub-command has some of them; None = the default applies
            checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    if hasattr(args, "lr") and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    args.device = checks.resolve_device(args.device)
    {"ref": run_ref, "calc": run_calc}[args.command](args)


if __name__ == "__main__":
    checks.run_main(main)
