"""The feature networks the metric measures with: uint8 images -> float64 features f(x).

    inception   the 2048-d pool3 output of pytorch-fid's FID InceptionV3 (inception.py): the
                network behind published FIDs; its distance is reported as "FID"
    clf         the penultimate layer (8 x width) of the small offline classifier trained on the
                dataset itself (classifier.py); its distance is reported as "FD-clf", never as
                FID, and its predictions give the conditional accuracy

Each network has an id that reference statistics store: INCEPTION_ID for Inception, and for a
classifier "clf-" plus the first 16 hex digits of its file's sha256, so that a reference made with
one classifier is refused with another (same architecture, other weights: other features).

Features are computed in float32 with TF32 off (no autocast): TF32 rounds matmul and conv inputs
to 10 mantissa bits, which can move FID in its decimals, and the numbers must be comparable
with pytorch-fid's. Non-finite features are an error, never NaN statistics.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import checks
from .classifier import Classifier
from .inception import InceptionV3

INCEPTION_ID = "pt_inception-2015-12-05"  # the feature id in reference files (pytorch-fid's have none)
CLF_HINT = "train one with python -m plumbing.classifier --dataset NAME --out runs/clf.pt"
CLF_KEYS = ("model", "channels", "image_size", "num_classes", "width")


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
        if not Path(clf).is_file():
            raise FileNotFoundError(f"--clf {clf}: no classifier file there; pass the right path, or {CLF_HINT}")
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
        # absolute: a reference stores it, and a calc from another folder must find the same file
        return Extractor(name, net, 8 * width, fingerprint, device, str(Path(clf).resolve()), (channels, size, size))
    raise ValueError(f"unknown features '{name}'; choose inception or clf")


def extractor_for_ref(ref: dict, features: str | None = None, clf: str | None = None,
                      inception_weights: str | None = None, device: torch.device | str | None = None) -> Extractor:
    """The feature network a reference (eval_fid.load_ref's dict) was made with; features and clf
    (the --features and --clf flags, None = the reference's) must agree with it."""
    if features is not None and features != ref["feature_name"]:
        raise ValueError(f"--features {features}, but the reference was made with "
                         f"{ref['feature_name']} features: make a matching reference")
    stored = ref["clf_path"]
    if clf is None and ref["feature_name"] == "clf" and not (stored and Path(stored).is_file()):
        raise FileNotFoundError(f"the reference was made with the classifier {stored or '(path not stored)'}, which "
                                f"is not there: pass --clf PATH (that classifier's file)")
    extractor = build_extractor(ref["feature_name"], clf or stored or None, inception_weights, device)
    if extractor.id != ref["extractor_id"]:
        raise ValueError(f"the reference was made with feature network {ref['extractor_id']}, this one is "
                         f"{extractor.id}: use the same --clf file or remake the reference")
    return extractor
