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
- mnist, fashion-mnist: idx files, 28x28 grey, padded (or bilinearly resized) to 32x32.
- cifar10: the python pickle batches.
- imagenet32, imagenet64: the official downsampled .npz files, memory-mapped (1.28M images at
  64x64 are 15.7 GB of uint8, so they are never loaded, let alone as floats).
- folder: one sub-folder per class, decoded once into memory (meant for small folders).
"""
from __future__ import annotations

import colorsys
import gzip
import inspect
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

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

    def _set_arrays(self, parts: list[np.ndarray], labels: np.ndarray) -> None:
        self.parts = parts
        self.part_starts = np.cumsum([0] + [len(part) for part in parts])
        _, self.channels, self.image_size, _ = parts[0].shape
        self.labels = _checked_labels(labels, self.num_classes, self.part_starts[-1], self.name)

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

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images uint8 (n, C, H, W) and labels int64 (n,), in the order of `indices`."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(f"{self.name}: indices must lie in 0..{len(self) - 1}")
        return torch.from_numpy(self._read(indices)), torch.from_numpy(self.labels[indices])

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the data; the last batch may be smaller."""
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(self), batch_size):
            yield self.get(order[start:start + batch_size])


def _checked_labels(labels: np.ndarray, num_classes: int, count: int, source: object) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != count:
        raise ValueError(f"{source}: {len(labels)} labels for {count} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{source}: labels out of range {labels.min()}..{labels.max()}, "
                         f"expected 0..{num_classes - 1}")
    return labels


def _split(name: str, split: str) -> str:
    if split not in ("train", "test", "val"):
        raise ValueError(f"{name}: unknown split '{split}'; use train or test (val = test)")
    return "train" if split == "train" else "test"


def _data_folder(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise ValueError(f"dataset '{name}' needs --data-dir: a folder with {EXPECTED_FILES[name]}")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: data dir {folder} not found; "
                                f"it should hold {EXPECTED_FILES[name]}")
    return folder


def _missing(name: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{name}: {path} not found; expected {EXPECTED_FILES[name]}")


# ---------------------------------------------------------------- shapes (built in)

def _ngon(corners: int, radius: float = 1.0, start: float = np.pi / 2, dx: float = 0.0
          ) -> np.ndarray:
    """Regular polygon (or, with many corners, a circle) centred at (dx, 0)."""
    angles = start + 2 * np.pi * np.arange(corners) / corners
    return np.stack([radius * np.cos(angles) + dx, radius * np.sin(angles)], axis=1)


_ARM, _LONG = 0.3, 0.95  # cross: half-width and length of the arms
_HALF_DISK = 0.92 * np.array([[np.cos(a), np.sin(a) - 0.42] for a in np.linspace(0, np.pi, 25)])

# Each shape is filled polygons in unit coordinates, drawn in order (255 = fill, 0 = cut a hole).
# Every vertex lies inside the unit disc, so a shape never leaves its own tile of the canvas.
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_ngon(40), 255)],
    "square": [(_ngon(4, start=np.pi / 4), 255)],
    "triangle": [(_ngon(3), 255)],
    "ring": [(_ngon(40), 255), (_ngon(40, 0.55), 0)],
    "cross": [(np.array([[_ARM, _ARM], [_LONG, _ARM], [_LONG, -_ARM], [_ARM, -_ARM], [_ARM, -_LONG],
                         [-_ARM, -_LONG], [-_ARM, -_ARM], [-_LONG, -_ARM], [-_LONG, _ARM],
                         [-_ARM, _ARM], [-_ARM, _LONG], [_ARM, _LONG]]), 255)],
    "star": [(_ngon(10) * np.where(np.arange(10) % 2, 0.42, 1.0)[:, None], 255)],  # 5 points
    "crescent": [(_ngon(40), 255), (_ngon(40, 0.7, dx=0.3), 0)],
    "frame": [(_ngon(4, start=np.pi / 4), 255), (_ngon(4, 0.55, start=np.pi / 4), 0)],
    "half-disk": [(_HALF_DISK, 255)],
    "arrow": [(np.array([[-0.95, -0.25], [0.1, -0.25], [0.1, -0.7], [1, 0], [0.1, 0.7], [0.1, 0.25],
                         [-0.95, 0.25]]), 255)],
}


def _hash_uniforms(seed: int, stream: int, indices: np.ndarray, count: int) -> np.ndarray:
    """(n, count) uniforms in [0, 1) that depend only on (seed, stream, index, column).

    Counter-based (splitmix64 finaliser on a unique counter), so image i is the same whichever
    batch it is drawn in, and vectorised (a Generator per image would cost ~50 us each).
    """
    key = (seed * 2 + stream) * 0x9E3779B97F4A7C15 % 2**64
    z = indices.astype(np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)
    z = z + np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


class Shapes(Dataset):
    """Procedural coloured shapes on a dark background, drawn at 4x and box-downsampled."""

    name = "shapes"
    class_names = list(SHAPES)
    num_classes = len(SHAPES)
    channels = 3
    supersample = 4  # anti-aliasing: draw at 4x resolution, average 4x4 blocks

    def __init__(self, data_dir: str | None = None, split: str = "train", length: int | None = None,
                 seed: int = 0, image_size: int = 32):
        self.stream = 0 if _split(self.name, split) == "train" else 1  # test draws other images
        length = (50_000 if self.stream == 0 else 10_000) if length is None else length
        if length < 1 or seed < 0 or image_size < 8:
            raise ValueError("shapes: need length >= 1, seed >= 0 and image_size >= 8")
        self.seed, self.image_size = seed, image_size
        self.labels = np.arange(length, dtype=np.int64) % self.num_classes  # balanced classes

    def _read(self, indices: np.ndarray) -> np.ndarray:
        images = np.empty((len(indices), 3, self.image_size, self.image_size), np.uint8)
        for start in range(0, len(indices), 256):  # chunks: one canvas, cache-sized arrays
            images[start:start + 256] = self._render(indices[start:start + 256])
        return images

    def _render(self, indices: np.ndarray) -> np.ndarray:
        size, scale, count = self.image_size, self.supersample, len(indices)
        u = _hash_uniforms(self.seed, self.stream, indices, 10)
        radius = size * (0.25 + 0.15 * u[:, 0])  # 8..12.8 pixels at 32x32: big enough to read
        margin = radius + size / 32
        centres = margin[:, None] + (size - 2 * margin[:, None]) * u[:, 1:3]
        centres[:, 1] += size * np.arange(count)  # image i is the i-th tile of a tall canvas
        cos, sin = np.cos(2 * np.pi * u[:, 3]), np.sin(2 * np.pi * u[:, 3])
        rotations = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
        # one canvas for the chunk: PIL's per-image overhead, not the drawing, is the cost
        canvas = Image.new("L", (size * scale, size * scale * count), 0)
        draw = ImageDraw.Draw(canvas)
        labels = self.labels[indices]
        for class_id, polygons in enumerate(SHAPES.values()):
            rows = np.flatnonzero(labels == class_id)
            for vertices, value in polygons:
                points = (vertices @ rotations[rows] * radius[rows, None, None]
                          + centres[rows, None]) * scale
                for polygon in points.reshape(len(rows), 2 * len(vertices)).tolist():
                    draw.polygon(polygon, fill=value)
        alpha = np.asarray(canvas.reduce(scale)).reshape(count, 1, size, size) / np.float32(255)
        # saturated bright fill over a dark background: the shape always stands out
        fills = np.array([colorsys.hsv_to_rgb(h, 0.65 + 0.35 * s, 0.8 + 0.2 * v)
                          for h, s, v in u[:, 4:7]], np.float32)[:, :, None, None] * 255
        backgrounds = (70 * u[:, 7:10]).astype(np.float32)[:, :, None, None]
        return np.rint(backgrounds + (fills - backgrounds) * alpha).astype(np.uint8)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (idx)

def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file: big-endian int32 magic (0x08 = ubyte, low byte = ndim), ndim sizes, bytes."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot decompress ({err}); re-download it") from None
    found = int.from_bytes(raw[:4], "big")
    if len(raw) >= 4 and found != magic:
        raise ValueError(f"{path}: wrong magic number {found}, expected {magic}; wrong idx file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated ({len(raw)} bytes, shorter than the idx header)")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} = {int(np.prod(shape))} bytes but "
                         f"{len(raw) - header} follow; truncated or corrupt, re-download it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


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
        images = _read_idx(self._find(folder, f"{prefix}-images-idx3-ubyte"), 2051)
        labels = _read_idx(self._find(folder, f"{prefix}-labels-idx1-ubyte"), 2049)
        if resize == "pad":
            images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
        else:  # in chunks of 10k so the float copy stays small
            images = np.concatenate([_bilinear(images[start:start + 10_000], 32)
                                     for start in range(0, len(images), 10_000)])
        self._set_arrays([images[:, None]], labels)

    def _find(self, folder: Path, stem: str) -> Path:
        for path in (folder / stem, folder / f"{stem}.gz"):
            if path.is_file():
                return path
        raise _missing(self.name, folder / f"{stem}[.gz]")


def _bilinear(images: np.ndarray, size: int) -> np.ndarray:
    grey = torch.tensor(images, dtype=torch.float32)[:, None]
    resized = torch.nn.functional.interpolate(grey, size=size, mode="bilinear", align_corners=False)
    return resized[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


class FashionMNIST(MNIST):
    name = "fashion-mnist"
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; allow only what they need so a hostile file runs no code."""

    numpy_names = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str) -> object:
        numpy_part = module.split(".")[0] == "numpy" and name in self.numpy_names
        if numpy_part or (module, name) == ("_codecs", "encode"):  # _codecs: protocol-2 bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


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
        try:
            batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
            data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as err:  # any unpickling failure means the same thing to the user
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err}); "
                             "re-download it") from None
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072):
            raise ValueError(f"{path}: b'data' should be uint8 (N, 3072), got "
                             f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
        # rows are planar: 1024 red values (row-major 32x32), then green, then blue
        return data.reshape(-1, 3, 32, 32), _checked_labels(labels, 10, len(data), path)


# ---------------------------------------------------------------- downsampled ImageNet (npz)

def _npz_array(path: Path, key: str) -> np.ndarray:
    """Array `key` of an .npz, memory-mapped when stored uncompressed.

    np.savez (the official files) writes a plain ZIP_STORED zip of .npy members, so the member's
    bytes sit contiguously in the file: skip the zip local header and the .npy header and map
    the rest. A compressed member (np.savez_compressed) cannot be mapped and is loaded instead.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{key}.npy")
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a valid .npz (truncated or corrupt?); re-download it"
                         ) from None
    except KeyError:
        raise ValueError(f"{path}: has no '{key}' array; not a downsampled ImageNet file") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return np.load(path)[key]
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local_header = file.read(30)
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        file.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(file)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:  # a newer .npy header version: let numpy read it
            return np.load(path)[key]
        shape, fortran_order, dtype = read_header(file)
        offset = file.tell()
    if fortran_order or dtype.hasobject:
        return np.load(path)[key]
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise ValueError(f"{path}: truncated ({path.stat().st_size} bytes, '{key}' needs more); "
                         "re-download it")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


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
            data = _npz_array(path, "data")
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * self.size**2:
                raise ValueError(f"{path}: 'data' should be uint8 (N, {3 * self.size**2}) for "
                                 f"{self.size}x{self.size}, got {data.dtype} {data.shape}")
            parts.append(data.reshape(-1, 3, self.size, self.size))  # planar rows = (C, H, W)
            one_based = np.asarray(_npz_array(path, "labels"))
            labels.append(_checked_labels(one_based - 1, 1000, len(data), path))
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
        extensions = set(Image.registered_extensions())
        images, labels = [], []
        for class_id, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in extensions)
            if not files:
                raise ValueError(f"folder: class folder {class_dir} holds no images")
            for path in files:
                images.append(_load_image(path, image_size))
                labels.append(class_id)
        self.num_classes = len(class_dirs)
        self.class_names = [d.name for d in class_dirs]
        self._set_arrays([np.stack(images)], np.array(labels))


def _load_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            square = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    except OSError as err:  # includes UnidentifiedImageError and truncated files
        raise ValueError(f"{path}: pillow cannot read it ({err})") from None
    return np.asarray(square).transpose(2, 0, 1)


# ---------------------------------------------------------------- entry point

DATASETS: dict[str, type[Dataset]] = {
    "shapes": Shapes,
    "mnist": MNIST,
    "fashion-mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "imagenet32": ImageNet32,
    "imagenet64": ImageNet64,
    "folder": ImageFolder,
}


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
