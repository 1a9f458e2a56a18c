"""Datasets: every dataset gives uint8 images (N, C, H, W) and int64 labels 0..K-1.

Conventions
- Images stay uint8 until the training device; the ONE place they become model inputs is
      to_model(x) = x / 127.5 - 1          (0 -> -1, 255 -> 1)
  and to_uint8 is its exact inverse on the 256 grey levels.
- A dataset has `name`, `num_classes`, `channels`, `image_size`, `class_names` (or None), `labels`
  (int64 numpy), `len()`, `get(indices) -> (images, labels)` for random access (train.py draws
  its own index permutation per epoch) and `batches(batch_size, shuffle, seed)` for one pass.
- `load_dataset(name, data_dir, split, **options)`; split is "train" or "test" ("val" = "test").

Datasets
- shapes (default): built in, drawn on the fly; image i of class i % K, its colour, size, position
  and rotation come from a counter-based hash of (seed, split, i), so it never changes.
  Shapes.attributes(indices) returns them; measure_attributes(images) reads most back from pixels.
- mnist, fashion-mnist: idx files, 28x28 grey, padded (or bilinearly resized) to 32x32.
- cifar10: the python pickle batches.
- imagenet32, imagenet64: the official downsampled .npz files, memory-mapped (1.28M images at
  64x64 are 15.7 GB of uint8, so they are never loaded, let alone as floats).
- folder: one sub-folder per class, decoded once into memory (meant for small folders).
- embeddings: your images (npz) with a condition vector each (npy), e.g. CLIP features.
This file knows which files each dataset needs and what they must hold; readers.py reads their bytes.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import readers
from . import shapes

_IDX_FILES = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte (each optionally .gz)")
EXPECTED_FILES: dict[str, str] = {  # what --data-dir must hold, per dataset (for --help)
    "shapes": "nothing (images are drawn on the fly)",
    "mnist": _IDX_FILES + ", from yann.lecun.com/exdb/mnist (or a mirror)",
    "fashion-mnist": _IDX_FILES + ", from github.com/zalandoresearch/fashion-mnist",
    "cifar10": "cifar-10-batches-py/ (or its contents) with data_batch_1..5 and test_batch, "
    "the 'CIFAR-10 python version' from cs.toronto.edu/~kriz/cifar.html",
    "imagenet32": "train_data_batch_1..10.npz and val_data.npz, "
    "from image-net.org 'Downsampled ImageNet 32x32' (npz format)",
    "imagenet64": "train_data_batch_1..10.npz and val_data.npz, "
    "from image-net.org 'Downsampled ImageNet 64x64' (npz format)",
    "folder": "one sub-folder per class (sorted names = class ids) of images pillow can read",
    "embeddings": "train_images.npz (arr_0: uint8 N x H x W x C, optional arr_1 class ids) and train_cond.npy "
    "(N x E float condition vectors, e.g. CLIP features); test_images.npz / test_cond.npy for the held-out split",
}


def to_model(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]; call it after moving the uint8 batch to the device.

    dtype=torch.float64 is for statistics (prior.py): float32 rounding would cost 1e-8."""
    if images.dtype != torch.uint8:
        raise ValueError(f"to_model expects uint8 images, got {images.dtype} (already scaled?)")
    return images.to(dtype) / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], the inverse of to_model (exact on its 256 values)."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class Dataset:
    """Images held as one or more uint8 (N, C, H, W) arrays (in memory or memory-mapped)."""

    name = ""
    num_classes = 0
    cond_dim = 0  # 0: get() gives class ids; E > 0: (n, E) float32 condition vectors
    class_names: list[str] | None = None

    @classmethod
    def condition_kind(cls, cond: str | None = None) -> str:
        """What get() gives as the condition, known before loading: "classes" or "vectors" (cond: the
        --cond option of datasets that take one). train.py checks the prior serves it before any work."""
        return "vectors" if cls.cond_dim else "classes"

    def _set_arrays(self, parts: list[np.ndarray], labels: np.ndarray, source: object = None) -> None:
        """source: what the labels came from (a file), for the error when they are wrong."""
        if sum(len(part) for part in parts) == 0:  # every reader checks its own files; this is the backstop
            raise ValueError(f"{source or self.name}: no images; check the files under --data-dir")
        self.parts = parts
        self.part_starts = np.cumsum([0] + [len(part) for part in parts])
        _, self.channels, self.image_size, _ = parts[0].shape
        self.labels = readers.checked_labels(labels, self.num_classes, self.part_starts[-1], source or self.name)

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, indices: np.ndarray) -> np.ndarray:
        images = np.empty((len(indices), self.channels, self.image_size, self.image_size), np.uint8)
        part_ids = np.searchsorted(self.part_starts, indices, side="right") - 1
        for part_id in np.unique(part_ids):
            rows = np.flatnonzero(part_ids == part_id)
            local = indices[rows] - self.part_starts[part_id]
            order = np.argsort(local, kind="stable")  # ascending reads are kind to a memory map
            images[rows[order]] = self.parts[part_id][local[order]]
        return images

    def _checked_indices(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f"{self.name}: indices must lie in 0..{len(self) - 1}")
        return indices

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images uint8 (n, C, H, W) and labels int64 (n,), in the order of `indices`."""
        indices = self._checked_indices(indices)
        return torch.from_numpy(self._read(indices)), torch.from_numpy(self.labels[indices])

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the data; the last batch may be smaller."""
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(self), batch_size):
            yield self.get(order[start:start + batch_size])


def _split(name: str, split: str) -> str:
    if split not in ("train", "test", "val"):
        raise ValueError(f"{name}: unknown split '{split}'; use train or test (val = test)")
    return "train" if split == "train" else "test"


def _data_folder(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise ValueError(f"dataset '{name}' needs --data-dir: a folder with {EXPECTED_FILES[name]}")
    folder = Path(data_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{name}: --data-dir {folder} is a file; give the folder that holds "
                         f"{EXPECTED_FILES[name]}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: data dir {folder} not found; "
                                f"it should hold {EXPECTED_FILES[name]}")
    return folder


def _missing(name: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{name}: {path} not found; expected {EXPECTED_FILES[name]}")


# ---------------------------------------------------------------- shapes (built in; drawn by shapes.py)

class Shapes(Dataset):
    """Procedural coloured shapes on a dark background (shapes.py draws and measures them)."""

    name = "shapes"
    class_names = list(shapes.SHAPES)
    num_classes = len(shapes.SHAPES)
    channels = 3

    def __init__(self, data_dir: str | None = None, split: str = "train", length: int | None = None,
                 seed: int = 0, image_size: int = 32, cond: str = "class"):
        self.stream = 0 if _split(self.name, split) == "train" else 1  # test draws other images
        length = (50_000 if self.stream == 0 else 10_000) if length is None else length
        if image_size < 8:
            raise ValueError(f"shapes: --image-size must be at least 8, got {image_size}")
        if length < 1 or seed < 0:
            raise ValueError("shapes: need length >= 1 and seed >= 0")
        if cond not in ("class", "attributes"):
            raise ValueError(f"shapes: unknown --cond '{cond}'; choose class (the shape's id) or attributes "
                             f"(colour, size, position, rotation as a {shapes.ATTRIBUTE_DIM}-d vector)")
        self.seed, self.image_size, self.cond = seed, image_size, cond
        self.cond_dim = shapes.ATTRIBUTE_DIM if cond == "attributes" else 0
        self.labels = np.arange(length, dtype=np.int64) % self.num_classes  # balanced classes

    @classmethod
    def condition_kind(cls, cond: str | None = None) -> str:
        if cond not in (None, "class", "attributes"):
            raise ValueError(f"shapes: unknown --cond '{cond}'; choose class (the shape's id) or attributes "
                             f"(colour, size, position, rotation as a {shapes.ATTRIBUTE_DIM}-d vector)")
        return "vectors" if cond == "attributes" else "classes"

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and class ids, or (cond="attributes") images and their attribute vectors."""
        images, labels = super().get(indices)
        if self.cond == "class":
            return images, labels
        return images, torch.from_numpy(shapes.attribute_vector(self.attributes(indices)))

    def attributes(self, indices: np.ndarray) -> np.ndarray:
        """What was drawn, (n, 7): see shapes.attributes."""
        indices = self._checked_indices(indices)
        return shapes.attributes(shapes.parameters(self.seed, self.stream, indices, self.image_size), self.image_size)

    def _read(self, indices: np.ndarray) -> np.ndarray:
        images = np.empty((len(indices), 3, self.image_size, self.image_size), np.uint8)
        for start in range(0, len(indices), 256):  # chunks: one canvas, cache-sized arrays
            part = indices[start:start + 256]
            params = shapes.parameters(self.seed, self.stream, part, self.image_size)
            images[start:start + 256] = shapes.render(self.labels[part], params, self.image_size)
        return images


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (idx)

class MNIST(Dataset):
    """28x28 grey digits; resize="pad" adds 2 black pixels per side, "bilinear" rescales to 32."""

    name = "mnist"
    num_classes = 10
    class_names = [str(digit) for digit in range(10)]

    def __init__(self, data_dir: str | None = None, split: str = "train", resize: str = "pad"):
        if resize not in ("pad", "bilinear"):
            raise ValueError(f"{self.name}: unknown resize '{resize}'; use pad or bilinear")
        folder = _data_folder(self.name, data_dir)
        prefix = "train" if _split(self.name, split) == "train" else "t10k"
        image_path = self._find(folder, f"{prefix}-images-idx3-ubyte")
        label_path = self._find(folder, f"{prefix}-labels-idx1-ubyte")
        images = readers.read_idx(image_path, 2051)
        if len(images) == 0 or images.shape[1:] != (28, 28):
            raise ValueError(f"{image_path}: holds images of shape {images.shape}, expected "
                             f"(N >= 1, 28, 28); re-download it")
        labels = readers.checked_labels(readers.read_idx(label_path, 2049), 10, len(images), label_path)
        if resize == "pad":
            images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
        else:  # in chunks of 10k so the float copy stays small
            images = np.concatenate([readers.bilinear(images[start:start + 10_000], 32)
                                     for start in range(0, len(images), 10_000)])
        self._set_arrays([images[:, None]], labels)

    def _find(self, folder: Path, stem: str) -> Path:
        for path in (folder / stem, folder / f"{stem}.gz"):
            if path.is_file():
                return path
        raise _missing(self.name, folder / f"{stem}[.gz]")


class FashionMNIST(MNIST):
    name = "fashion-mnist"
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

class CIFAR10(Dataset):
    name = "cifar10"
    num_classes = 10
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]

    def __init__(self, data_dir: str | None = None, split: str = "train"):
        folder = _data_folder(self.name, data_dir)
        if (folder / "cifar-10-batches-py").is_dir():  # accept the parent folder too
            folder = folder / "cifar-10-batches-py"
        train = _split(self.name, split) == "train"
        names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
        images, labels = zip(*(self._load_batch(folder / name) for name in names))
        self._set_arrays([np.concatenate(images)], np.concatenate(labels))

    def _load_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if not path.is_file():
            raise _missing(self.name, path)
        return readers.read_cifar_batch(path)


# ---------------------------------------------------------------- downsampled ImageNet (npz)

class ImageNet(Dataset):
    """Official downsampled ImageNet: `data` uint8 (N, 3*S*S) planar RGB, `labels` 1..1000."""

    num_classes = 1000
    size: int  # 32 or 64, set by the two subclasses below

    def __init__(self, data_dir: str | None = None, split: str = "train"):
        folder = _data_folder(self.name, data_dir)
        train = _split(self.name, split) == "train"
        names = [f"train_data_batch_{k}.npz" for k in range(1, 11)] if train else ["val_data.npz"]
        parts, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise _missing(self.name, path)
            data = readers.npz_array(path, "data")
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * self.size**2:
                raise ValueError(f"{path}: 'data' should be uint8 (N, {3 * self.size**2}) for "
                                 f"{self.size}x{self.size}, got {data.dtype} {data.shape}; "
                                 f"re-download the {self.size}x{self.size} files")
            if len(data) == 0:
                raise ValueError(f"{path}: 'data' holds no images; re-download it")
            parts.append(data.reshape(-1, 3, self.size, self.size))  # planar rows = (C, H, W)
            labels.append(readers.checked_labels(readers.npz_array(path, "labels"), 1000, len(data), path,
                                                 first=1))
        self._set_arrays(parts, np.concatenate(labels))


class ImageNet32(ImageNet):
    name, size = "imagenet32", 32


class ImageNet64(ImageNet):
    name, size = "imagenet64", 64


# ---------------------------------------------------------------- image folder

class ImageFolder(Dataset):
    """data_dir/<class>/<image>; each image is centre-cropped to a square and resized."""

    name = "folder"

    def __init__(self, data_dir: str | None = None, split: str = "train", image_size: int = 32):
        _split(self.name, split)  # no splits here: point --data-dir at the split's folder
        folder = _data_folder(self.name, data_dir)
        class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and d.name[0] != ".")
        if not class_dirs:
            raise ValueError(f"folder: {folder} has no class sub-folders; expected "
                             f"{EXPECTED_FILES['folder']}")
        images, labels = [], []
        for class_id, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in readers.IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"folder: class folder {class_dir} holds no images")
            for path in files:
                images.append(readers.read_image_square(path, image_size))
                labels.append(class_id)
        self.num_classes = len(class_dirs)
        self.class_names = [d.name for d in class_dirs]
        self._set_arrays([np.stack(images)], np.array(labels))


# ---------------------------------------------------------------- images with your own condition vectors

class Embeddings(Dataset):
    """Your images with a condition vector each (e.g. CLIP text or image features computed
    elsewhere): data_dir/{split}_images.npz (arr_0 uint8 (N, H, W, C), optional arr_1 class ids,
    the layout sample.py writes) and data_dir/{split}_cond.npy (N, E) float; split = train or test."""

    name = "embeddings"

    @classmethod
    def condition_kind(cls, cond: str | None = None) -> str:
        return "vectors"  # their width E is known once the files are read

    def __init__(self, data_dir: str | None = None, split: str = "train"):
        folder = _data_folder(self.name, data_dir)
        prefix = _split(self.name, split)
        images_path, cond_path = folder / f"{prefix}_images.npz", folder / f"{prefix}_cond.npy"
        for path in (images_path, cond_path):
            if not path.is_file():
                raise _missing(self.name, path)
        with readers.reading(images_path, "not a readable .npz of images (np.savez of arr_0, arr_1)",
                             "write it with np.savez(path, arr_0=images, arr_1=class_ids)"), \
                np.load(images_path, allow_pickle=False) as file:
            if "arr_0" not in file.files:
                raise KeyError(f"no arr_0, it holds {', '.join(file.files) or 'nothing'}")
            images = file["arr_0"]
            labels = file["arr_1"] if "arr_1" in file.files else np.zeros(len(images), np.int64)
        with readers.reading(cond_path, "not a readable .npy of float condition vectors",
                             "write an (N, E) float array with np.save"):
            vectors = np.load(cond_path, allow_pickle=False)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2] or \
                images.shape[3] not in (1, 3) or images.shape[1] < 8:
            raise ValueError(f"{images_path}: arr_0 should be uint8 (N, S, S, 1 or 3) with S >= 8, got {images.dtype} "
                             f"{images.shape}")
        if len(images) == 0:
            raise ValueError(f"{images_path}: arr_0 holds no images; give at least one")
        if vectors.ndim != 2 or len(vectors) != len(images) or vectors.shape[1] == 0 or vectors.dtype.kind != "f":
            raise ValueError(f"{cond_path}: should hold finite float vectors (N={len(images)}, E >= 1), one per "
                             f"image of {images_path.name}; got {vectors.dtype} {vectors.shape}")
        bad = np.flatnonzero(~np.isfinite(vectors).all(1))
        if len(bad):
            raise ValueError(f"{cond_path}: row {bad[0]} (and {len(bad) - 1} more) holds NaN or inf; every condition "
                             f"vector must be finite")
        labels = readers.class_ids(labels, len(images), f"{images_path} (arr_1)")
        self.num_classes = int(labels.max()) + 1
        self.cond_dim, self.vectors = vectors.shape[1], vectors.astype(np.float32)
        self._set_arrays([np.ascontiguousarray(images.transpose(0, 3, 1, 2))], labels, f"{images_path} (arr_1)")

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, _ = super().get(indices)
        return images, torch.from_numpy(self.vectors[self._checked_indices(indices)])


# ---------------------------------------------------------------- entry point

DATASETS: dict[str, type[Dataset]] = {
    "shapes": Shapes, "mnist": MNIST, "fashion-mnist": FashionMNIST, "cifar10": CIFAR10,
    "imagenet32": ImageNet32, "imagenet64": ImageNet64, "folder": ImageFolder, "embeddings": Embeddings}


def load_dataset(name: str, data_dir: str | None = None, split: str = "train", **options
                 ) -> Dataset:
    """Open dataset `name` (see DATASETS / EXPECTED_FILES); options are the class's keywords."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    dataset_class = DATASETS[name]
    known = [p for p in inspect.signature(dataset_class.__init__).parameters
             if p not in ("self", "data_dir", "split")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"dataset '{name}' has no option {', '.join(unknown)}; "
                         f"its options: {', '.join(known) or 'none'}")
    return dataset_class(data_dir, split, **options)
