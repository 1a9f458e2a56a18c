"""The FID variant of InceptionV3: (N, 1 or 3, H, W) images in [0, 1] -> (N, 2048) pool3 features.

This is the network behind published FIDs: the TensorFlow graph of 2015-12-05, as pytorch-fid
ports it (FIDInceptionA/C/E_1/E_2), not torchvision's Inception3. Module names and shapes are those
of torchvision's Inception3 with 1008 logits and no auxiliary head, so pytorch-fid's weights file
pt_inception-2015-12-05-6726825d.pth loads with strict key matching. It is never downloaded here:
pass its path, or put it in torch.hub's checkpoints folder where pytorch-fid caches it.

How the TF graph differs from torchvision's network, patched here:
  - the 3x3 average pool of every pooling branch (Mixed_5b..5d, 6b..6e, 7b) divides by the
    number of valid pixels only (count_include_pad=False), as TF's SAME padding does;
  - the last block, Mixed_7c, max-pools in that branch instead (a quirk of the TF graph).

Preprocessing (pytorch-fid's): grey images repeat to RGB, x is resized to 299x299 by bilinear
interpolation with align_corners=False and no antialias, then scaled to 2x - 1. The feature is
pool3, the mean over the last 8x8 map:

    f(x) = mean_{h,w} Mixed_7c(...Conv2d_1a_3x3(2 resize_299(x) - 1))   in R^2048
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub names files by the first 8 hex digits of the sha256


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU: one TF conv layer with its folded BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def pool3x3(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The pooling branch's 3x3/stride-1 pool. TF averages over the valid pixels only, hence
    count_include_pad=False; the TF graph's last block max-pools instead (a quirk of that graph)."""
    if mode == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b..5d, 35x35
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(pool3x3(x, "avg"))], 1)


class InceptionB(nn.Module):  # Mixed_6a, 35x35 -> 17x17
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b..6e, 17x17, factorised 7x7 convolutions
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x),
                          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          double,
                          self.branch_pool(pool3x3(x, "avg"))], 1)


class InceptionD(nn.Module):  # Mixed_7a, 17x17 -> 8x8
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), branch7x7x3,
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool), 8x8
    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
                          self.branch_pool(pool3x3(x, self.pool))], 1)


def inception_preprocess(images: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) in [0, 1] -> (N, 3, 299, 299) in [-1, 1], exactly as pytorch-fid does."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Inception takes (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)  # grey -> RGB by repetition
    images = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * images - 1


class InceptionV3(nn.Module):
    """(N, 1 or 3, H, W) in [0, 1] -> (N, 2048) pool3 features. weights_path None = random init
    (for tests); "auto" looks in torch.hub's checkpoints folder, like pytorch-fid."""

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # the TF graph's 1008-way logits; unused for features
        if weights_path is not None:
            self.load_weights(find_inception_weights(None if weights_path == "auto" else weights_path))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: Path) -> None:
        """Strictly, or one ValueError naming the file: garbage, truncated, or another network's."""
        hint = f"get {INCEPTION_URL}, or use --features clf"
        state = checks.load_torch(path, "Inception weights file", hint)
        try:
            self.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as err:
            lines = str(err).splitlines()
            first = lines[1].strip() if len(lines) > 1 else str(err)  # line 0 only says "Error(s) in loading"
            raise ValueError(f"{path} is not the pytorch-fid Inception weights file ({first[:200]}); "
                             f"{hint}") from None
        # after loading, so that a file we refuse gets one error line, not a warning first
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(INCEPTION_SHA256_PREFIX):
            warnings.warn(f"{path} has sha256 {digest[:8]}..., not {INCEPTION_SHA256_PREFIX}...: "
                          f"numbers may not be comparable with published FIDs")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = inception_preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))  # pool3: adaptive average pool to 1x1, flattened


def find_inception_weights(path: str | Path | None) -> Path:
    """The weights file: `path`, else torch.hub's checkpoint folder (where pytorch-fid caches it).
    FileNotFoundError when it is not there (bench/reproduce.py falls back to --features clf on it)."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no Inception weights file at {path}: download {INCEPTION_URL} "
                                    "and pass its path with --inception-weights, or use --features clf "
                                    "for offline features")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file():
        raise FileNotFoundError(f"no Inception weights file {INCEPTION_FILE} in {cached.parent}: "
                                f"download it from {INCEPTION_URL} into that folder or pass "
                                "--inception-weights PATH, or use --features clf for offline features")
    return cached
