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
"""
from __future__ import annotations

import contextlib
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
from PIL import Image, ImageOps

import checks
import shapes

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


def _checked_labels(labels: np.ndarray, num_classes: int, count: int, source: object,
                    first: int = 0) -> np.ndarray:
    """Labels first..first + num_classes - 1 as int64 0..num_classes - 1, one per image."""
    labels = np.asarray(labels).reshape(-1)
    # integers, or floats holding integers; anything else (strings, NaN, 2.5) is not a label file
    whole = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and bool(
        np.isfinite(labels).all() and (labels == np.round(labels)).all()))
    if not whole:
        raise ValueError(f"{source}: labels must be whole numbers, got {labels.dtype}; re-download it")
    labels = labels.astype(np.int64) - first
    if len(labels) != count:
        raise ValueError(f"{source}: {len(labels)} labels for {count} images; re-download it")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{source}: labels out of range {labels.min() + first}..{labels.max() + first}, "
                         f"expected {first}..{num_classes - 1 + first}; re-download it")
    return labels


@contextlib.contextmanager
def _reading(path: Path, problem: str, hint: str = "re-download it") -> Iterator[None]:
    """Any failure inside the block becomes ValueError("PATH: PROBLEM (why); HINT"), one line.

    A damaged download fails deep inside gzip/zlib (zlib.error, EOFError), zipfile (BadZipFile,
    KeyError, NotImplementedError), numpy's .npy header parser (ValueError, SyntaxError, even
    tokenize.TokenError), struct, pickle or pillow, with types no one can list in advance; to
    the user they all mean the same thing. So every read of a dataset file goes through here,
    and only our own checks, which already name the file, run outside these blocks."""
    try:
        yield
    except Exception as err:
        raise ValueError(f"{path}: {problem} ({checks.first_line(err)}); {hint}") from None


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
        if length < 1 or seed < 0 or image_size < 8:
            raise ValueError("shapes: need length >= 1, seed >= 0 and image_size >= 8")
        if cond not in ("class", "attributes"):
            raise ValueError(f"shapes: unknown --cond '{cond}'; choose class (the shape's id) or attributes "
                             f"(colour, size, position, rotation as a {shapes.ATTRIBUTE_DIM}-d vector)")
        self.seed, self.image_size, self.cond = seed, image_size, cond
        self.cond_dim = shapes.ATTRIBUTE_DIM if cond == "attributes" else 0
        self.labels = np.arange(length, dtype=np.int64) % self.num_classes  # balanced classes

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

def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file: big-endian int32 magic (0x08 = ubyte, low byte = ndim), ndim sizes, bytes."""
    gz = path.suffix == ".gz"
    # not gzip at all (BadGzipFile), a corrupt deflate stream (zlib.error), cut short (EOFError)
    with _reading(path, "cannot decompress this .gz file" if gz else "cannot read this idx file"):
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    found = int.from_bytes(raw[:4], "big")
    if len(raw) >= 4 and found != magic:
        raise ValueError(f"{path}: wrong magic number {found}, expected {magic}; not the idx file "
                         "this name promises, re-download it")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated ({len(raw)} bytes, shorter than the idx header); "
                         "re-download it")
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
        image_path = self._find(folder, f"{prefix}-images-idx3-ubyte")
        label_path = self._find(folder, f"{prefix}-labels-idx1-ubyte")
        images = _read_idx(image_path, 2051)
        if len(images) == 0 or images.shape[1:] != (28, 28):
            raise ValueError(f"{image_path}: holds images of shape {images.shape}, expected "
                             f"(N >= 1, 28, 28); re-download it")
        labels = _checked_labels(_read_idx(label_path, 2049), 10, len(images), label_path)
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
        with _reading(path, "not a CIFAR-10 python batch"):  # truncated, garbage, not a dict, ...
            batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
            data, labels = batch[b"data"], np.asarray(batch[b"labels"])
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072):
            raise ValueError(f"{path}: b'data' should be uint8 (N, 3072), got "
                             f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}; "
                             "re-download it")
        # a damaged pickle can carry a dtype equal to uint8 with corrupt internal flags (numpy then
        # prints internal errors on every copy): keep only the raw bytes, under numpy's own uint8.
        # Rows are planar: 1024 red values (row-major 32x32), then green, then blue.
        pixels = np.frombuffer(data.tobytes(), np.uint8).reshape(-1, 3, 32, 32)
        return pixels, _checked_labels(labels, 10, len(data), path)


# ---------------------------------------------------------------- downsampled ImageNet (npz)

def _npz_array(path: Path, key: str) -> np.ndarray:
    """Array `key` of an .npz, memory-mapped when stored uncompressed.

    np.savez (the official files) writes a plain ZIP_STORED zip of .npy members, so the member's
    bytes sit contiguously in the file: skip the zip local header and the .npy header and map
    the rest. A compressed member (np.savez_compressed) cannot be mapped and is loaded instead.
    A damaged zip directory or .npy header is an error naming the file; a flipped byte inside
    a mapped member's pixels is not caught (its CRC would mean reading all 15.7 GB up front).
    """
    damaged = "not a readable .npz archive (truncated or corrupt)"
    with _reading(path, damaged):  # not a zip, cut inside the central directory, ...
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            info = archive.getinfo(f"{key}.npy") if f"{key}.npy" in names else None
    if info is None:
        raise ValueError(f"{path}: has no '{key}' array (it holds {', '.join(names) or 'nothing'}); "
                         "not a downsampled ImageNet file, re-download it")
    with _reading(path, damaged):  # a directory entry pointing at garbage, a bad .npy header
        if info.compress_type != zipfile.ZIP_STORED:
            return _load_member(path, key)
        with open(path, "rb") as file:
            file.seek(info.header_offset)
            local_header = file.read(30)
            if local_header[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"no local header for {key}.npy where the directory says")
            name_length, extra_length = struct.unpack("<HH", local_header[26:30])
            file.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:  # a newer .npy header version: let numpy read it
                return _load_member(path, key)
            shape, fortran_order, dtype = read_header(file)
            offset = file.tell()
        if fortran_order or dtype.hasobject:
            return _load_member(path, key)
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise ValueError(f"{path}: truncated ({path.stat().st_size} bytes, '{key}' needs more); "
                         "re-download it")
    with _reading(path, damaged):
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _load_member(path: Path, key: str) -> np.ndarray:
    """Array `key` read whole; no pickles (an object array in a pixel file is never right)."""
    with np.load(path, allow_pickle=False) as archive:
        return archive[key]


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
                                 f"{self.size}x{self.size}, got {data.dtype} {data.shape}; "
                                 f"re-download the {self.size}x{self.size} files")
            parts.append(data.reshape(-1, 3, self.size, self.size))  # planar rows = (C, H, W)
            labels.append(_checked_labels(_npz_array(path, "labels"), 1000, len(data), path, first=1))
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
    # UnidentifiedImageError, truncated files, DecompressionBombError, a decoder's own errors
    with _reading(path, "pillow cannot read this image", "remove or replace it"):
        with Image.open(path) as image:
            square = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return np.asarray(square).transpose(2, 0, 1)


# ---------------------------------------------------------------- images with your own condition vectors

class Embeddings(Dataset):
    """Your images with a condition vector each (e.g. CLIP text or image features computed
    elsewhere): data_dir/{split}_images.npz (arr_0 uint8 (N, H, W, C), optional arr_1 class ids,
    the layout sample.py writes) and data_dir/{split}_cond.npy (N, E) float; split = train or test."""

    name = "embeddings"

    def __init__(self, data_dir: str | None = None, split: str = "train"):
        folder = _data_folder(self.name, data_dir)
        prefix = _split(self.name, split)
        images_path, cond_path = folder / f"{prefix}_images.npz", folder / f"{prefix}_cond.npy"
        for path in (images_path, cond_path):
            if not path.is_file():
                raise _missing(self.name, path)
        with _reading(images_path, "not a readable .npz of images"), np.load(images_path, allow_pickle=False) as file:
            images = file["arr_0"]
            labels = file["arr_1"] if "arr_1" in file.files else np.zeros(len(images), np.int64)
        with _reading(cond_path, "not a readable .npy of condition vectors"):
            vectors = np.load(cond_path, allow_pickle=False)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2] or \
                images.shape[3] not in (1, 3):
            raise ValueError(f"{images_path}: arr_0 should be uint8 (N, S, S, 1 or 3), got {images.dtype} "
                             f"{images.shape}")
        if vectors.ndim != 2 or len(vectors) != len(images) or vectors.dtype.kind != "f" or \
                not np.isfinite(vectors).all():
            raise ValueError(f"{cond_path}: should hold finite float vectors (N={len(images)}, E), one per image; "
                             f"got {vectors.dtype} {vectors.shape}")
        self.num_classes = int(labels.max()) + 1 if len(labels) else 1
        self.cond_dim, self.vectors = vectors.shape[1], vectors.astype(np.float32)
        self._set_arrays([np.ascontiguousarray(images.transpose(0, 3, 1, 2))], labels)

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, _ = super().get(indices)
        return images, torch.from_numpy(self.vectors[self._checked_indices(indices)])


# ---------------------------------------------------------------- entry point

DATASETS: dict[str, type[Dataset]] = {
    "shapes": Shapes,
    "mnist": MNIST,
    "fashion-mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "imagenet32": ImageNet32,
    "imagenet64": ImageNet64,
    "folder": ImageFolder,
    "embeddings": Embeddings,
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
