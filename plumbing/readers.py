"""Reading the published datasets' files, exactly and safely: idx, CIFAR pickles, npz, images.

data.py knows which files a dataset needs; this file turns their bytes into uint8 arrays.

Formats
- idx (MNIST, Fashion-MNIST), optionally gzipped: a big-endian int32 magic (0x08 = ubyte, low
  byte = ndim), ndim big-endian int32 sizes, then the bytes; sizes must account for every byte.
- CIFAR-10 python batches: a pickled dict, b'data' uint8 (N, 3072) whose rows are planar (1024
  red values, row-major 32x32, then green, then blue) and b'labels'.
- npz (downsampled ImageNet): np.savez writes a ZIP_STORED zip of .npy members, so a member is
  memory-mapped by skipping the zip local header and the .npy header; 15.7 GB is never read.
- images pillow can read: every mode to 8 bits by one stated rule (to_8bit: 16-bit >> 8, alpha
  on white, others refused by name), RGB, centre-cropped to a square, bicubic-resized.

Safety
- Pickles go through a restricted unpickler (numpy arrays only), npz members never allow pickles:
  a hostile file runs no code.
- Every failure is ONE ValueError line naming the file and the fix ("PATH: what; re-download
  it"): library errors are caught by `reading`, and our own checks name the file themselves.
- Labels must be whole numbers, one per image, in range (checked_labels).
- idx files are read as a stream bounded by the sizes their header declares (read_idx): a small
  .gz that inflates to gigabytes (a decompression bomb) is refused after declared + 1 bytes.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import math
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from . import checks


@contextlib.contextmanager
def reading(path: Path, problem: str, hint: str = "re-download it") -> Iterator[None]:
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


def checked_labels(labels: np.ndarray, num_classes: int, count: int, source: object,
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


def class_ids(labels: np.ndarray, count: int, source: object) -> np.ndarray:
    """Class ids of a file that sets its own number of classes (max + 1): whole numbers >= 0, one
    per image; NaN, 2.5, strings, -1 or a wrong count is one line naming `source`."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{source}: class ids must be a 1-D array, one per image, got shape {labels.shape}")
    whole = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and bool(
        np.isfinite(labels).all() and (labels == np.round(labels)).all()))
    if not whole:
        raise ValueError(f"{source}: class ids must be whole numbers (no NaN, inf or fractions), got "
                         f"{labels.dtype}; write integer ids 0..K-1")
    if len(labels) != count:
        raise ValueError(f"{source}: {len(labels)} class ids for {count} images; give one per image")
    if count and labels.min() < 0:
        raise ValueError(f"{source}: class ids must be >= 0, got {labels.min()}")
    if count and labels.max() >= 1_000_000:
        raise ValueError(f"{source}: class id {labels.max()} is implausibly large; number the classes 0..K-1")
    return labels.astype(np.int64)


# ---------------------------------------------------------------- idx (MNIST / Fashion-MNIST)

# the largest payload an idx header may declare: MNIST's training images are 47 MB, EMNIST's
# largest file 0.7 GB; a header asking for more is damaged or hostile, not a dataset
MAX_IDX_BYTES = 2 ** 32


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file: big-endian int32 magic (0x08 = ubyte, low byte = ndim), ndim sizes, bytes.

    Read as a stream bounded by what the header declares, never whole: a 1 MB .gz can hold
    gigabytes of zeros (a decompression bomb), so the header is read first, its sizes checked
    (none negative, the product at most MAX_IDX_BYTES), then exactly that many bytes and one more
    to prove there are no more; at most declared + 1 bytes are ever decompressed."""
    gz = path.suffix == ".gz"
    # not gzip at all (BadGzipFile), a corrupt deflate stream (zlib.error), cut short (EOFError)
    problem = "cannot decompress this .gz file" if gz else "cannot read this idx file"
    with contextlib.ExitStack() as stack:
        with reading(path, problem):
            file = stack.enter_context(gzip.open(path, "rb") if gz else open(path, "rb"))
            head = read_at_most(file, 4)
        found = int.from_bytes(head, "big")
        if len(head) == 4 and found != magic:
            raise ValueError(f"{path}: wrong magic number {found}, expected {magic}; not the idx file "
                             "this name promises, re-download it")
        ndim = magic & 0xFF
        header = 4 + 4 * ndim
        with reading(path, problem):
            head += read_at_most(file, header - len(head)) if len(head) == 4 else b""
        if len(head) < header:
            raise ValueError(f"{path}: truncated ({len(head)} bytes, shorter than the idx header); "
                             "re-download it")
        shape = struct.unpack(f">{ndim}i", head[4:header])
        size = idx_payload_size(path, shape)
        if not gz and path.stat().st_size != header + size:  # a plain file says its length for free
            raise ValueError(f"{path}: header says {shape} = {size} bytes but {path.stat().st_size - header} "
                             "follow; truncated or corrupt, re-download it")
        with reading(path, problem):
            payload = read_at_most(file, size)
            more = file.read(1) if len(payload) == size else b""  # at the end of a .gz: its CRC is checked
    if len(payload) < size:
        raise ValueError(f"{path}: header says {shape} = {size} bytes but {len(payload)} follow; truncated "
                         "or corrupt, re-download it")
    if more:
        raise ValueError(f"{path}: holds more data than its header declares ({shape} = {size} bytes); "
                         "corrupt, re-download it")
    return np.frombuffer(payload, np.uint8).reshape(shape)


def idx_payload_size(path: Path, shape: tuple[int, ...]) -> int:
    """The bytes an idx header's sizes declare, computed in Python ints (numpy's product wraps
    around); a negative size or more than MAX_IDX_BYTES is a damaged file, named."""
    if any(size < 0 for size in shape):
        raise ValueError(f"{path}: header declares a negative size {shape}; corrupt, re-download it")
    size = math.prod(shape)
    if size > MAX_IDX_BYTES:
        raise ValueError(f"{path}: header declares {shape} = {size} bytes, more than any idx dataset holds "
                         f"(at most {MAX_IDX_BYTES}); corrupt, re-download it")
    return size


def read_at_most(file, count: int, chunk: int = 1 << 20) -> bytearray:
    """Up to `count` bytes (fewer at the end of the file), read a chunk at a time: memory grows with
    what the file really holds, not with what a header claims."""
    data = bytearray()
    while len(data) < count:
        piece = file.read(min(chunk, count - len(data)))
        if not piece:
            break
        data += piece
    return data


def bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Grey uint8 (N, H, W) -> (N, size, size), bilinear (no antialiasing), rounded back to uint8."""
    grey = torch.tensor(images, dtype=torch.float32)[:, None]
    resized = torch.nn.functional.interpolate(grey, size=size, mode="bilinear", align_corners=False)
    return resized[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

class _NumpyOnlyUnpickler(pickle._Unpickler):
    """The CIFAR batches are pickles; allow only what they need so a hostile file runs no code.

    Python's own unpickler (pickle._Unpickler, not the C one) so that BUILD can be checked: a
    numpy dtype is rebuilt from a pickled internal state (byte order, sizes, flags), and a state
    that claims what a plain dtype never has (object flags on uint8) breaks numpy's internals
    (it prints `RuntimeError: Internal error, get_clear_loop not set` tracebacks on its own).
    A dtype's state must be the one numpy itself writes for that dtype."""

    numpy_names = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str) -> object:
        numpy_part = module.split(".")[0] == "numpy" and name in self.numpy_names
        if numpy_part or (module, name) == ("_codecs", "encode"):  # _codecs: protocol-2 bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.dtype) and state != genuine_dtype_state(target, state):
            raise pickle.UnpicklingError(f"a {target} dtype whose pickled internal state {state!r} is not "
                                         f"numpy's own")
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}


def genuine_dtype_state(dtype: np.dtype, state: object) -> tuple | None:
    """The state numpy pickles for `dtype` in the byte order `state` names (None if it names none)."""
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
    if order not in ("<", ">", "|", "="):
        return None
    return dtype.newbyteorder(order).__reduce__()[2]


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: pixels uint8 (N, 3, 32, 32) and its labels int64 0..9."""
    with reading(path, "not a CIFAR-10 python batch"):  # truncated, garbage, not a dict, ...
        batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise ValueError(f"{path}: b'data' should be uint8 (N, 3072), got "
                         f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}; "
                         "re-download it")
    if len(data) == 0:
        raise ValueError(f"{path}: b'data' holds no images; re-download it")
    # a damaged pickle can carry a dtype equal to uint8 with corrupt internal flags (numpy then
    # prints internal errors on every copy): keep only the raw bytes, under numpy's own uint8.
    # Rows are planar: 1024 red values (row-major 32x32), then green, then blue.
    pixels = np.frombuffer(data.tobytes(), np.uint8).reshape(-1, 3, 32, 32)
    return pixels, checked_labels(labels, 10, len(data), path)


# ---------------------------------------------------------------- npz (downsampled ImageNet)

def npz_array(path: Path, key: str) -> np.ndarray:
    """Array `key` of an .npz, memory-mapped when stored uncompressed.

    np.savez (the official files) writes a plain ZIP_STORED zip of .npy members, so the member's
    bytes sit contiguously in the file: skip the zip local header and the .npy header and map
    the rest. A compressed member (np.savez_compressed) cannot be mapped and is loaded instead.
    A damaged zip directory or .npy header is an error naming the file; a flipped byte inside
    a mapped member's pixels is not caught (its CRC would mean reading all 15.7 GB up front).
    """
    damaged = "not a readable .npz archive (truncated or corrupt)"
    with reading(path, damaged):  # not a zip, cut inside the central directory, ...
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            info = archive.getinfo(f"{key}.npy") if f"{key}.npy" in names else None
    if info is None:
        raise ValueError(f"{path}: has no '{key}' array (it holds {', '.join(names) or 'nothing'}); "
                         "not a downsampled ImageNet file, re-download it")
    with reading(path, damaged):  # a directory entry pointing at garbage, a bad .npy header
        if info.compress_type != zipfile.ZIP_STORED:
            return load_member(path, key)
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
                return load_member(path, key)
            shape, fortran_order, dtype = read_header(file)
            offset = file.tell()
        if fortran_order or dtype.hasobject:
            return load_member(path, key)
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise ValueError(f"{path}: truncated ({path.stat().st_size} bytes, '{key}' needs more); "
                         "re-download it")
    with reading(path, damaged):
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def load_member(path: Path, key: str) -> np.ndarray:
    """Array `key` read whole; no pickles (an object array in a pixel file is never right)."""
    with np.load(path, allow_pickle=False) as archive:
        return archive[key]


# ---------------------------------------------------------------- images (pillow)

# the image files we read (dataset folders, folders of samples) and write (grids, plots)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# How every pillow mode becomes 8 bits (the model and the metric see uint8 L or RGB only):
#   1, L, RGB                     as they are (1: 0 or 255)
#   I;16, I;16L, I;16B, I;16N     16-bit: value >> 8 (the high byte; 257 * v -> v exactly)
#   I (32-bit int)                values 0..255 as they are; up to 65535 as 16-bit (>> 8); others refused
#   F (32-bit float)              values in 0..1 scaled: round(255 * v); any other range refused
#   P, PA, LA, RGBA, RGBa         alpha composited on WHITE (a transparent pixel is white, as viewers show it)
#   CMYK, YCbCr, LAB, HSV, RGBX   pillow's own conversion to RGB
#   anything else                 refused, naming the file and the mode
_GREY, _COLOUR = ("1", "L"), ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_ALPHA = ("LA", "PA", "RGBA", "RGBa")
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(image: Image.Image, path: Path) -> Image.Image:
    """`image` as 8-bit "L" or "RGB" by the rules above, or one ValueError naming the file and its mode."""
    mode = image.mode
    if mode in _GREY:
        return image.convert("L")
    if mode in _COLOUR:
        return image.convert("RGB")
    if mode == "P":
        return _on_white(image.convert("RGBA")) if "transparency" in image.info else image.convert("RGB")
    if mode in _ALPHA:
        flat = _on_white(image.convert("RGBA"))  # RGBa (premultiplied) is un-premultiplied first
        return flat.convert("L") if mode == "LA" else flat
    if mode in _SIXTEEN or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"{path}: 32-bit integer image (mode I) with values {values.min()}..{values.max()}, "
                             "outside 0..65535; save it as an 8- or 16-bit image")
        if mode in _SIXTEEN or (values.size and values.max() > 255):
            values = values >> 8
        return Image.fromarray(values.astype(np.uint8), "L")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not (np.isfinite(values).all() and values.min(initial=0) >= 0 and values.max(initial=0) <= 1):
            raise ValueError(f"{path}: float image (mode F) with values outside 0..1 (or NaN); only 0..1 floats "
                             "are read (as round(255 v)): save it as an 8-bit image")
        return Image.fromarray(np.round(values * 255).astype(np.uint8), "L")
    raise ValueError(f"{path}: images of pillow mode {mode} are not read (only 1, L, P, RGB, RGBA, LA, PA, CMYK, "
                     "YCbCr, LAB, HSV, I;16, I, F); save it as an 8-bit RGB or grey PNG")


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def read_image(path: Path) -> Image.Image:
    """The decoded image as 8-bit "L" or "RGB" (to_8bit), or one line naming the file: Image.open
    is lazy, so decode now."""
    try:
        image = Image.open(path)
        image.load()
    except Exception as err:  # UnidentifiedImageError, truncated data, decompression bombs, ...
        raise ValueError(f"{path}: not a readable image (pillow cannot read it: {checks.first_line(err)}); "
                         "remove or replace it (in its folder)") from None
    return to_8bit(image, path)


def read_image_square(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB (3, size, size): 8 bits by to_8bit's rules, centre-cropped to a
    square, bicubic-resized."""
    image = read_image(path)
    with reading(path, "pillow cannot resize this image", "remove or replace it"):
        square = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return np.asarray(square).transpose(2, 0, 1)
