"""data.py: each loader against small files written here in the official formats.

Expected pixels are built independently from the documented flat layouts (pixel (c, y, x) of
image i is data[i, c*S*S + y*S + x] in the planar CIFAR / ImageNet rows), never by reshaping.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plumbing.data import DATASETS, EXPECTED_FILES, load_dataset, to_model, to_uint8  # noqa: E402
from plumbing.shapes import ROTATION_SYMMETRY, SHAPES, measure_attributes  # noqa: E402


def planar_to_chw(flat: np.ndarray, size: int) -> np.ndarray:
    """Independent reading of planar rows: all red row-major, then green, then blue."""
    images = np.zeros((len(flat), 3, size, size), np.uint8)
    for c in range(3):
        for y in range(size):
            for x in range(size):
                images[:, c, y, x] = flat[:, c * size * size + y * size + x]
    return images


# ---------------------------------------------------------------- scaling

def test_to_model_to_uint8_round_trip_all_values():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    scaled = to_model(values)
    assert scaled.dtype == torch.float32
    assert scaled.flatten()[0] == -1 and scaled.flatten()[255] == 1
    assert torch.equal(to_uint8(scaled), values)
    with pytest.raises(ValueError, match="uint8"):
        to_model(scaled)


# ---------------------------------------------------------------- shapes

def test_shapes_deterministic_per_index_and_seed():
    dataset = load_dataset("shapes", length=100)
    images, labels = dataset.get(np.array([7, 3, 42]))
    again, _ = load_dataset("shapes", length=100).get(np.array([42, 7]))
    assert torch.equal(images[2], again[0]) and torch.equal(images[0], again[1])  # batch-independent
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert labels.dtype == torch.int64
    assert not torch.equal(images[0], images[1])
    other_seed, _ = load_dataset("shapes", length=100, seed=1).get(np.array([7]))
    test_split, _ = load_dataset("shapes", split="test", length=100).get(np.array([7]))
    assert not torch.equal(images[0], other_seed[0]) and not torch.equal(images[0], test_split[0])
    assert len(load_dataset("shapes")) == 50_000 and len(load_dataset("shapes", split="test")) == 10_000


def radial_profile(masks: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Share of a shape's pixels at each distance from its centroid, in units of sqrt(area):
    a position-, size- and (nearly) rotation-invariant signature of the shape."""
    coords = torch.arange(float(masks.shape[-1]))
    area = masks.sum((1, 2))
    centre_y = (masks.sum(2) * coords).sum(1) / area
    centre_x = (masks.sum(1) * coords).sum(1) / area
    distance = ((coords[None, :, None] - centre_y[:, None, None]) ** 2
                + (coords[None, None, :] - centre_x[:, None, None]) ** 2).sqrt()
    which_bin = (2.5 * distance / area.sqrt()[:, None, None]).long().clamp(max=bins - 1)
    profile = torch.zeros(len(masks), bins).scatter_add_(1, which_bin.flatten(1), masks.flatten(1))
    return profile / area[:, None]


def test_shapes_classes_present_distinct_and_recognisable():
    dataset = load_dataset("shapes", length=3000)
    assert dataset.num_classes == len(dataset.class_names) == len(SHAPES) >= 10
    assert (dataset.channels, dataset.image_size) == (3, 32)
    images, labels = dataset.get(np.arange(3000))
    assert torch.equal(torch.bincount(labels), torch.full((dataset.num_classes,), 300))
    assert images.min() < 40 and images.max() > 240  # dark background, bright fill
    # the shape (fill >= 0.8 * 255 in some channel) against the background (every channel < 70)
    masks = (images.max(dim=1).values > 137).float()
    assert (masks.mean((1, 2)) > 0.05).all()  # big enough to see
    train, held_out = slice(0, 2000), slice(2000, 3000)
    mean_masks = torch.stack([masks[train][labels[train] == k].flatten(1).mean(0) for k in range(10)])
    assert torch.pdist(mean_masks).min() > 0.5  # per-class mean images differ
    # nearest class mean on the radial signature recognises every class well above chance (0.1);
    # the data are deterministic, so these thresholds (measured 0.66 overall, 0.28 worst) are stable
    signatures = radial_profile(masks)
    class_means = torch.stack([signatures[train][labels[train] == k].mean(0) for k in range(10)])
    predicted = torch.cdist(signatures[held_out], class_means).argmin(1)
    correct = (predicted == labels[held_out]).float()
    assert correct.mean() > 0.5
    assert all(correct[labels[held_out] == k].mean() > 0.2 for k in range(10))


def test_shapes_stay_inside_their_tile():
    for polygons in SHAPES.values():
        for vertices, _ in polygons:
            assert np.linalg.norm(vertices, axis=1).max() <= 1 + 1e-9


def test_shapes_options_and_batches():
    big, _ = load_dataset("shapes", length=4, image_size=64).get(np.arange(4))
    assert big.shape == (4, 3, 64, 64)
    dataset = load_dataset("shapes", length=25)
    sizes = [len(labels) for _, labels in dataset.batches(10)]
    assert sizes == [10, 10, 5]
    in_order = torch.cat([labels for _, labels in dataset.batches(10)])
    assert torch.equal(in_order, torch.arange(25) % 10)
    first = [images for images, _ in dataset.batches(10, shuffle=True, seed=3)]
    second = [images for images, _ in dataset.batches(10, shuffle=True, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    everything = torch.cat(first).flatten(1)
    reference = dataset.get(np.arange(25))[0].flatten(1)
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, reference.tolist()))
    with pytest.raises(ValueError, match="indices"):
        dataset.get(np.array([25]))
    with pytest.raises(ValueError, match="length"):
        load_dataset("shapes", length=0)


def polygon_area_centroid(polygons: list[tuple[np.ndarray, int]]) -> tuple[float, np.ndarray]:
    """Area and area centroid of filled polygons minus holes (shoelace formulas), unit coordinates."""
    area, moment = 0.0, np.zeros(2)
    for vertices, value in polygons:
        x, y = vertices[:, 0], vertices[:, 1]
        x1, y1 = np.roll(x, -1), np.roll(y, -1)
        cross = x * y1 - x1 * y
        signed = cross.sum() / 2
        centroid = np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()]) / (6 * signed)
        sign = 1 if value else -1  # value 0 cuts a hole, which lies inside the filled polygon
        area, moment = area + sign * abs(signed), moment + sign * abs(signed) * centroid
    return area, moment / area


def test_measure_attributes_hand_built_image():
    image = np.zeros((1, 3, 32, 32), np.uint8) + np.array([10, 20, 30], np.uint8)[:, None, None]
    image[0, :, 5:11, 8:12] = np.array([200, 100, 50])[:, None, None]  # rows 5..10, columns 8..11
    image[0, :, 5:11, 12] = np.array([105, 60, 40])[:, None]  # column 12 half covered
    r, g, b, size, x, y = measure_attributes(image)[0]
    assert np.allclose([r, g, b], np.array([200, 100, 50]) / 255, atol=1e-6)
    assert np.isclose(size, np.sqrt((6 * 4 + 6 * 0.5) / 32**2), atol=1e-6)
    # pixel j spans [j, j + 1): columns 8..11 full (centre 10), column 12 half (centre 12.5)
    assert np.isclose(x * 32, (24 * 10 + 3 * 12.5) / 27, atol=1e-5) and np.isclose(y * 32, 8, atol=1e-5)


def test_shapes_attributes_agree_with_measured_pixels():
    dataset = load_dataset("shapes", length=200)
    images, labels = (t.numpy() for t in dataset.get(np.arange(200)))
    drawn = dataset.attributes(np.arange(200)).astype(np.float64)
    assert drawn.shape == (200, 7) and set(ROTATION_SYMMETRY) == set(SHAPES)
    assert np.allclose(dataset.attributes(np.array([150, 3])), drawn[[150, 3]])  # batch-independent
    assert ((drawn[:, 3] >= 0.25) & (drawn[:, 3] < 0.4)).all()  # radius: 0.25 + 0.15 u
    assert ((drawn[:, 6] >= 0) & (drawn[:, 6] < 1)).all()  # turns
    measured = measure_attributes(images).astype(np.float64)
    size = 32
    # colour: fully covered pixels hold the fill rounded to uint8, so within half a grey level
    assert np.abs(measured[:, :3] - drawn[:, :3]).max() * 255 < 0.51
    turns = 2 * np.pi * drawn[:, 6]
    rotations = np.stack([np.stack([np.cos(turns), np.sin(turns)], -1),
                          np.stack([-np.sin(turns), np.cos(turns)], -1)], -2)  # as drawn: v @ R
    for class_id, name in enumerate(SHAPES):
        rows = labels == class_id
        area, centroid = polygon_area_centroid(SHAPES[name])
        radius = drawn[rows, 3] * size
        # centroid = drawn centre + the shape's own area centroid, turned and scaled (zero for the
        # rotation-symmetric shapes; 0.29 radius for the crescent, which checks the rotation too)
        offset = np.einsum("i,nij->nj", centroid, rotations[rows]) * radius[:, None]
        expected = drawn[rows, 4:6] * size + offset
        assert np.abs(measured[rows, 4:6] * size - expected).max() < 0.5, name  # pixels
        # size: measured area = closed-form polygon area * radius^2, plus the rasteriser's edges
        # (measured 0.1 % to 7 % more, most for the pointed triangle, star and arrow)
        ratio = (measured[rows, 3] * size) ** 2 / (area * radius**2)
        assert (ratio > 0.99).all() and (ratio < 1.10).all(), (name, ratio.min(), ratio.max())
        assert np.corrcoef(measured[rows, 3], drawn[rows, 3])[0, 1] > 0.99, name
    with pytest.raises(ValueError, match="indices"):
        dataset.attributes(np.array([200]))


# ---------------------------------------------------------------- MNIST idx

def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_mnist(folder: Path, rng: np.random.Generator, count: int = 6) -> dict:
    folder.mkdir(exist_ok=True)
    arrays = {}
    for prefix, suffix in (("train", ".gz"), ("t10k", "")):  # one split gzipped, one raw
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", 2051, images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", 2049, labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_padded_pixels_and_labels(tmp_path, name):
    arrays = write_mnist(tmp_path, np.random.default_rng(0))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        dataset = load_dataset(name, tmp_path, split)
        assert (dataset.channels, dataset.image_size, dataset.num_classes) == (1, 32, 10)
        images, labels = (t.numpy() for t in dataset.get(np.arange(len(dataset))))
        raw_images, raw_labels = arrays[prefix]
        for i in range(len(raw_images)):
            assert labels[i] == raw_labels[i]
            for y in range(32):
                for x in range(32):
                    inside = 2 <= y < 30 and 2 <= x < 30
                    expected = raw_images[i, y - 2, x - 2] if inside else 0
                    assert images[i, 0, y, x] == expected
    assert load_dataset("fashion-mnist", tmp_path).class_names[9] == "Ankle boot"


def test_mnist_bilinear_resize(tmp_path):
    images = np.full((3, 28, 28), 200, np.uint8)
    images[1] = 0
    write_idx(tmp_path / "train-images-idx3-ubyte", 2051, images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, np.array([1, 2, 3], np.uint8))
    resized, labels = load_dataset("mnist", tmp_path, resize="bilinear").get(np.arange(3))
    assert resized.shape == (3, 1, 32, 32) and labels.tolist() == [1, 2, 3]
    assert (resized[0] == 200).all() and (resized[1] == 0).all()  # flat images stay flat
    with pytest.raises(ValueError, match="resize"):
        load_dataset("mnist", tmp_path, resize="nearest")


def test_mnist_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    write_mnist(tmp_path, rng)
    raw_images = tmp_path / "t10k-images-idx3-ubyte"
    raw_labels = tmp_path / "t10k-labels-idx1-ubyte"
    good_images, good_labels = raw_images.read_bytes(), raw_labels.read_bytes()

    raw_images.write_bytes(good_images[:-5])
    with pytest.raises(ValueError, match="header says"):
        load_dataset("mnist", tmp_path, "test")
    raw_images.write_bytes(good_images[:10])
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("mnist", tmp_path, "test")
    raw_images.write_bytes(good_labels)  # a label file where images belong
    with pytest.raises(ValueError, match="wrong magic number 2049, expected 2051"):
        load_dataset("mnist", tmp_path, "test")
    raw_images.write_bytes(good_images)

    write_idx(raw_labels, 2049, np.array([1, 2, 3], np.uint8))
    with pytest.raises(ValueError, match="3 labels for 6 images"):
        load_dataset("mnist", tmp_path, "test")
    write_idx(raw_labels, 2049, np.array([0, 1, 2, 3, 4, 10], np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("mnist", tmp_path, "test")

    gz_images = tmp_path / "train-images-idx3-ubyte.gz"
    gz_images.write_bytes(gz_images.read_bytes()[:-20])
    with pytest.raises(ValueError, match="decompress"):
        load_dataset("mnist", tmp_path, "train")


# ---------------------------------------------------------------- CIFAR-10

def write_cifar(folder: Path, rng: np.random.Generator, count: int = 3) -> dict:
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, count)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"x.png"] * count}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = (data, labels)
    return batches


def test_cifar10_pixels_and_labels(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(2))
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the folder itself
        train = load_dataset("cifar10", data_dir, "train")
        assert (len(train), train.channels, train.image_size) == (15, 3, 32)
        images, labels = train.get(np.arange(15))
        data = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
        expected_labels = sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), [])
        assert np.array_equal(images.numpy(), planar_to_chw(data, 32))
        assert labels.tolist() == expected_labels
    images, labels = load_dataset("cifar10", tmp_path, "test").get(np.array([2, 0]))
    data, expected = batches["test_batch"]
    assert np.array_equal(images.numpy(), planar_to_chw(data[[2, 0]], 32))
    assert labels.tolist() == [expected[2], expected[0]]


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_bad_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, np.random.default_rng(3))
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": RunsCode(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        load_dataset("cifar10", tmp_path, "test")
    bad_labels = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad_labels, protocol=2))
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("cifar10", tmp_path, "test")
    (folder / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5.*cs.toronto.edu"):
        load_dataset("cifar10", tmp_path, "train")


# ---------------------------------------------------------------- downsampled ImageNet

def write_imagenet(folder: Path, rng: np.random.Generator, size: int, count: int = 4) -> dict:
    folder.mkdir(exist_ok=True)
    files = {}
    for name in [f"train_data_batch_{k}.npz" for k in range(1, 11)] + ["val_data.npz"]:
        data = rng.integers(0, 256, (count, 3 * size * size), dtype=np.uint8)
        labels = rng.integers(1, 1001, count)  # 1-based, as in the official files
        np.savez(folder / name, data=data, labels=labels, mean=np.zeros(3 * size * size))
        files[name] = (data, labels)
    return files


@pytest.mark.parametrize("name,size", [("imagenet32", 32), ("imagenet64", 64)])
def test_imagenet_memory_mapped_pixels_and_labels(tmp_path, name, size):
    files = write_imagenet(tmp_path, np.random.default_rng(4), size)
    train = load_dataset(name, tmp_path, "train")
    assert (len(train), train.channels, train.image_size, train.num_classes) == (40, 3, size, 1000)
    assert all(isinstance(part, np.memmap) for part in train.parts)
    data = np.concatenate([files[f"train_data_batch_{k}.npz"][0] for k in range(1, 11)])
    file_labels = np.concatenate([files[f"train_data_batch_{k}.npz"][1] for k in range(1, 11)])
    order = np.array([39, 0, 17, 5, 5, 22, 3, 38])  # out of order, across files, repeated
    images, labels = train.get(order)
    assert np.array_equal(images.numpy(), planar_to_chw(data[order], size))
    assert labels.tolist() == (file_labels[order] - 1).tolist()
    for split in ("val", "test"):
        images, labels = load_dataset(name, tmp_path, split).get(np.arange(4))
        assert np.array_equal(images.numpy(), planar_to_chw(files["val_data.npz"][0], size))
        assert labels.tolist() == (files["val_data.npz"][1] - 1).tolist()


def test_imagenet_compressed_npz_falls_back_to_loading(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (5, 3 * 32 * 32), dtype=np.uint8)
    np.savez_compressed(tmp_path / "val_data.npz", data=data, labels=np.array([1, 2, 3, 1000, 7]))
    dataset = load_dataset("imagenet32", tmp_path, "val")
    assert not isinstance(dataset.parts[0], np.memmap)
    images, labels = dataset.get(np.arange(5))
    assert np.array_equal(images.numpy(), planar_to_chw(data, 32))
    assert labels.tolist() == [0, 1, 2, 999, 6]


def test_imagenet_bad_files(tmp_path):
    data = np.zeros((3, 3 * 32 * 32), np.uint8)
    val = tmp_path / "val_data.npz"
    np.savez(val, data=data, labels=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"uint8 \(N, 12288\)"):  # 32x32 files read as 64x64
        load_dataset("imagenet64", tmp_path, "val")
    val.write_bytes(val.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_dataset("imagenet32", tmp_path, "val")
    np.savez(val, data=data, labels=np.array([0, 1, 2]))  # 0 is not a 1-based label
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("imagenet32", tmp_path, "val")
    np.savez(val, data=data, labels=np.array([1, 2]))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        load_dataset("imagenet32", tmp_path, "val")
    np.savez(val, pixels=data, labels=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="no 'data' array"):
        load_dataset("imagenet32", tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="train_data_batch_1.npz.*Downsampled ImageNet 64x64"):
        load_dataset("imagenet64", tmp_path, "train")


def test_imagenet_truncated_member_data(tmp_path):
    """A stored member whose bytes are cut short (zip directory rewritten) is caught, not mapped."""
    path = tmp_path / "val_data.npz"
    np.savez(path, data=np.zeros((8, 3 * 32 * 32), np.uint8), labels=np.arange(1, 9))
    raw = path.read_bytes()
    assert raw.count(b"(8, 3072), }") == 1
    raw = raw.replace(b"(8, 3072), }", b"(80, 3072),}")  # same length: claims 80 images
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("imagenet32", tmp_path, "val")


# ---------------------------------------------------------------- image folder

def test_folder_dataset(tmp_path):
    colours = {"b_red": (250, 10, 10), "a_blue": (10, 10, 250)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for k, shape in enumerate([(40, 20), (16, 16)]):
            Image.new("RGB", shape, colour).save(tmp_path / name / f"{k}.png")
    (tmp_path / "a_blue" / "notes.txt").write_text("not an image")
    dataset = load_dataset("folder", tmp_path, image_size=8)
    assert dataset.class_names == ["a_blue", "b_red"] and dataset.num_classes == 2
    images, labels = dataset.get(np.arange(len(dataset)))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1]
    for image, label in zip(images, labels):
        colour = colours[dataset.class_names[label]]
        assert all((image[c] == colour[c]).all() for c in range(3))
    (tmp_path / "b_red" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="pillow cannot read"):
        load_dataset("folder", tmp_path)
    (tmp_path / "b_red" / "broken.png").unlink()
    (tmp_path / "c_empty").mkdir()
    with pytest.raises(ValueError, match="c_empty holds no images"):
        load_dataset("folder", tmp_path)
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset("folder", tmp_path / "c_empty")


# ---------------------------------------------------------------- names, options, folders

def test_bad_names_options_and_folders(tmp_path):
    assert set(EXPECTED_FILES) == set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*shapes, mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="no option colour; its options: length, seed, image_size"):
        load_dataset("shapes", colour="red")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("shapes", split="validation")
    with pytest.raises(ValueError, match="needs --data-dir.*train-images-idx3-ubyte"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="not found.*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- damaged downloads
# Every file data.py reads, written valid in its official layout and then damaged: each must be
# ONE ValueError line that names the file and says what to do, whatever the reader raised inside.

def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, advice: str = "re-download it") -> None:
    message = str(err.value)
    assert err.type is ValueError and "\n" not in message, message
    assert str(path) in message and advice in message, message


def damage_gzip(raw: bytes, how: str) -> bytes:
    """RFC 1952: magic 1f 8b, method 08 (deflate), flags; gzip.compress sets no optional fields,
    so the deflate stream (RFC 1951) starts at byte 10 and ends before CRC32 + ISIZE (8 bytes)."""
    assert raw[:4] == b"\x1f\x8b\x08\x00"
    if how == "reserved_block_type":  # first block header: BFINAL bit 0, BTYPE bits 1-2; 11 is reserved
        return raw[:10] + bytes([raw[10] | 0b111]) + raw[11:]
    if how == "cut_mid_stream":
        return raw[: len(raw) // 2]
    if how == "bad_crc":
        return raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]
    if how == "not_gzip":
        return np.random.default_rng(0).bytes(len(raw))
    assert how == "empty"
    return b""


@pytest.mark.parametrize("how", ["reserved_block_type", "cut_mid_stream", "bad_crc", "not_gzip", "empty"])
def test_mnist_damaged_gz(tmp_path, how):
    write_mnist(tmp_path, np.random.default_rng(6))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    damaged = damage_gzip(path.read_bytes(), how)
    if how == "reserved_block_type":  # the fixture reaches zlib itself, which used to escape
        with pytest.raises(zlib.error):
            gzip.decompress(damaged)
    path.write_bytes(damaged)
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path, "train")
    assert_one_line_naming(err, path)


def test_mnist_wrong_image_size_and_random_bytes(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(7))
    images = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(images, 2051, np.zeros((6, 32, 32), np.uint8))  # a valid idx file, but not 28x28
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path, "test")
    assert_one_line_naming(err, images)
    assert "(6, 32, 32)" in str(err.value)
    images.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", tmp_path, "test")
    assert_one_line_naming(err, images)


@pytest.mark.parametrize("keep", [0, 1, 2, 40, 0.5, -1])  # bytes kept (or a share of them / all but one)
def test_cifar10_truncated_batches(tmp_path, keep):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, np.random.default_rng(8))
    path = folder / "test_batch"
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10", tmp_path, "test")
    assert_one_line_naming(err, path)


def test_cifar10_batch_that_is_not_a_dict(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, np.random.default_rng(9))
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10", tmp_path, "test")
    assert_one_line_naming(err, path)


def npz_landmarks(raw: bytes) -> dict[str, int]:
    """Byte offsets in an np.savez file from the ZIP format (PKWARE APPNOTE 4.3): local file
    headers PK 03 04, then the members, then the central directory PK 01 02 and the end record
    PK 05 06; each .npy member starts with the magic 93 'NUMPY' and a header ending in a newline."""
    npy = raw.index(b"\x93NUMPY")
    return {"local_header": raw.index(b"PK\x03\x04"), "npy_magic": npy,
            "member_data": raw.index(b"\n", npy) + 1, "central": raw.index(b"PK\x01\x02"),
            "end": raw.rindex(b"PK\x05\x06")}


def write_val_npz(path: Path) -> bytes:
    # a flat value: no stray "PK.." or NUMPY bytes inside the pixels to confuse npz_landmarks
    np.savez(path, data=np.full((4, 3 * 32 * 32), 7, np.uint8), labels=np.array([1, 2, 3, 4]))
    return path.read_bytes()


@pytest.mark.parametrize("where", ["empty", "local_header", "npy_magic", "member_data", "central", "end",
                                   "last_byte"])
def test_imagenet_npz_truncated_anywhere(tmp_path, where):
    path = tmp_path / "val_data.npz"
    raw = write_val_npz(path)
    marks = npz_landmarks(raw)
    order = [marks[key] for key in ("local_header", "npy_magic", "member_data", "central", "end")]
    assert order[0] == 0 and order == sorted(set(order))
    cut = {"empty": 0, "last_byte": len(raw) - 1}.get(where, marks.get(where, 0) + 3)  # 3 bytes into it
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet32", tmp_path, "val")
    assert_one_line_naming(err, path)


def test_imagenet_npz_damaged_in_place(tmp_path):
    """Same-length damage that used to escape as struct.error, NotImplementedError or a ValueError
    from numpy's header parser that did not name the file."""
    path = tmp_path / "val_data.npz"
    raw = write_val_npz(path)
    marks = npz_landmarks(raw)
    central_method = marks["central"] + 10  # central directory entry: compression method, 2 bytes
    damaged = {
        "random_bytes": np.random.default_rng(1).bytes(len(raw)),
        "local_header_signature": b"XXXX" + raw[4:],
        "npy_header_key": raw.replace(b"'descr'", b"'dexcr'", 1),
        "unknown_compression": raw[:central_method] + struct.pack("<H", 99) + raw[central_method + 2:],
        "npy_magic": raw[:marks["npy_magic"]] + b"\x00" * 6 + raw[marks["npy_magic"] + 6:],
    }
    for name, content in damaged.items():
        assert len(content) == len(raw) and content != raw, name
        path.write_bytes(content)
        with pytest.raises(ValueError) as err:
            load_dataset("imagenet32", tmp_path, "val")
        assert_one_line_naming(err, path)


def test_imagenet_npz_wrong_arrays(tmp_path):
    path = tmp_path / "val_data.npz"
    data = np.zeros((3, 3 * 32 * 32), np.uint8)
    wrong = {"string labels": dict(data=data, labels=np.array(["a", "b", "c"])),
             "fractional labels": dict(data=data, labels=np.array([1.0, 2.5, 3.0])),
             "float pixels": dict(data=data.astype(np.float32), labels=np.array([1, 2, 3])),
             "pickled objects": dict(data=np.array([object()] * 3, dtype=object), labels=np.array([1, 2, 3])),
             "images as 3-D": dict(data=data.reshape(3, 3, 1024), labels=np.array([1, 2, 3]))}
    for name, arrays in wrong.items():
        np.savez(path, **arrays)
        with pytest.raises(ValueError) as err:
            load_dataset("imagenet32", tmp_path, "val")
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    np.savez(path, data=data, labels=np.array([1.0, 2.0, 1000.0]))  # whole numbers stored as floats are fine
    assert load_dataset("imagenet32", tmp_path, "val").get(np.arange(3))[1].tolist() == [0, 1, 999]


def test_folder_damaged_images(tmp_path):
    (tmp_path / "a").mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, format="PNG")
    buffer.seek(0)
    Image.open(buffer).save(tmp_path / "a" / "good.png")
    path = tmp_path / "a" / "cut.png"
    for content in (buffer.getvalue()[:40], buffer.getvalue()[:8], b"", b"GIF89a garbage"):
        path.write_bytes(content)
        with pytest.raises(ValueError) as err:
            load_dataset("folder", tmp_path)
        assert_one_line_naming(err, path, "remove or replace it")


@pytest.mark.parametrize("name,expected", [
    ("mnist", "train-images-idx3-ubyte"), ("fashion-mnist", "t10k-labels-idx1-ubyte"),
    ("cifar10", "data_batch_1"), ("imagenet32", "val_data.npz"), ("imagenet64", "train_data_batch_1"),
    ("folder", "sub-folder per class")])
def test_data_dir_missing_a_file_or_empty_names_the_expected_files(tmp_path, name, expected):
    a_file = tmp_path / "downloaded.tar"
    a_file.write_bytes(b"an archive, not yet unpacked")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"not found.*{expected}"):
        load_dataset(name, tmp_path / "missing")
    with pytest.raises(ValueError, match=f"downloaded.tar is a file.*{expected}"):
        load_dataset(name, a_file)
    with pytest.raises((FileNotFoundError, ValueError), match=expected):
        load_dataset(name, tmp_path / "empty")


def test_shapes_attribute_condition_is_what_was_drawn():
    from plumbing import data
    from plumbing import shapes
    plain, attributed = data.load_dataset("shapes", None, "train"), data.load_dataset("shapes", None, "train",
                                                                                     cond="attributes")
    indices = np.array([3, 17, 256, 4000])
    images, labels = plain.get(indices)
    same_images, vectors = attributed.get(indices)
    assert torch.equal(images, same_images) and labels.dtype == torch.int64 and attributed.cond_dim == 8
    raw = plain.attributes(indices)  # r, g, b, radius, x, y (/ size), turns
    assert vectors.shape == (4, 8) and vectors.dtype == torch.float32
    np.testing.assert_allclose(vectors[:, :6].numpy(), raw[:, :6])
    angle = 2 * np.pi * raw[:, 6]
    np.testing.assert_allclose(vectors[:, 6:].numpy(), np.column_stack([np.cos(angle), np.sin(angle)]), atol=1e-6)
    # real images show what they were asked for: the yardstick of attribute_errors
    images, vectors = attributed.get(np.arange(300))
    errors = shapes.attribute_errors(images.numpy(), vectors.numpy())
    assert errors["colour_error"] < 0.5 and errors["position_error_px"] < 1.0 and errors["size_rank_correlation"] > 0.6
    # and a wrong condition is far off: the same images against shuffled conditions
    shuffled = shapes.attribute_errors(images.numpy(), vectors.numpy()[::-1].copy())
    assert shuffled["colour_error"] > 20 and shuffled["position_error_px"] > 4
    with pytest.raises(ValueError, match="unknown --cond 'colour'"):
        data.load_dataset("shapes", None, "train", cond="colour")


def test_embeddings_dataset_reads_images_and_vectors(tmp_path):
    from plumbing import data
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    vectors = rng.normal(size=(6, 5)).astype(np.float32)
    np.savez(tmp_path / "train_images.npz", arr_0=images, arr_1=np.array([0, 1, 2, 0, 1, 2]))
    np.save(tmp_path / "train_cond.npy", vectors)
    dataset = data.load_dataset("embeddings", str(tmp_path), "train")
    assert (len(dataset), dataset.cond_dim, dataset.num_classes, dataset.image_size) == (6, 5, 3, 8)
    got_images, got_vectors = dataset.get(np.array([4, 1]))
    assert torch.equal(got_images, torch.from_numpy(images[[4, 1]].transpose(0, 3, 1, 2)))
    assert torch.equal(got_vectors, torch.from_numpy(vectors[[4, 1]]))
    np.save(tmp_path / "train_cond.npy", vectors[:5])  # one vector short
    with pytest.raises(ValueError, match="train_cond.npy: should hold finite float vectors"):
        data.load_dataset("embeddings", str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="test_images.npz"):
        data.load_dataset("embeddings", str(tmp_path), "test")
