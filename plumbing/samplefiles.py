"""The files sample.py writes and eval_fid.py reads: sample files (.npz) and PNG grids.

    sample file   the guided-diffusion evaluation layout: arr_0 uint8 (N, H, W, C), arr_1 int64 (N,)
                  labels (for condition vectors: the condition's row) and, for vectors, `cond`
                  (N, E) float32; a folder of images is read as samples too (no labels)
    grid          one row per class or condition, its samples left to right, the row's name on its left
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import checks, outputs, readers


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path, names: dict[int, str] | None = None,
              pad: int = 2, max_rows: int = 20, max_columns: int = 16, flag: str = "") -> tuple[int, int]:
    """PNG grid: one row per class or condition (ascending id), its samples left to right, the
    row's name on its left (names[id], else the id); white padding. Returns (rows, columns) shown.

    At most max_rows rows and max_columns samples each are shown (a picture to look at; the .npz
    keeps every image). Tiles under 64 px are upscaled by an integer factor (nearest).
    """
    picture, shown = grid_picture(images, labels, names, pad, max_rows, max_columns)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    outputs.atomic_write(path, picture_writer(picture, path), flag)
    return shown


def grid_picture(images: torch.Tensor, labels: torch.Tensor, names: dict[int, str] | None = None, pad: int = 2,
                 max_rows: int = 20, max_columns: int = 16) -> tuple[Image.Image, tuple[int, int]]:
    """save_grid's picture and its (rows, columns) of images, not yet written."""
    images, labels = images.cpu().numpy(), np.asarray(torch.as_tensor(labels).cpu())
    _, channels, height, width = images.shape
    scale = max(1, 64 // max(height, width))
    ids = np.unique(labels)[:max_rows]
    rows = [images[labels == c][:max_columns] for c in ids]
    texts = [(names or {}).get(int(c), str(int(c))) for c in ids]
    columns = max((len(row) for row in rows), default=0)
    tile_h, tile_w, left = height * scale + pad, width * scale + pad, label_margin(texts)
    canvas = np.full((len(rows) * tile_h + pad, left + columns * tile_w + pad, channels), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = image.transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
            top, start = pad + r * tile_h, left + pad + c * tile_w
            canvas[top:top + height * scale, start:start + width * scale] = tile
    picture = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    for r, text in enumerate(texts):
        draw.text((pad + 2, pad + r * tile_h + (tile_h - pad) // 2), text, fill=0 if channels == 1 else (0, 0, 0),
                  font=font, anchor="lm")
    return picture, (len(rows), columns)


def picture_writer(picture: Image.Image, path: str | Path):
    """write(file) for outputs.atomic_write: the picture in the format PATH's suffix names."""
    image_format = Image.registered_extensions()[Path(path).suffix.lower()]
    return lambda file: picture.save(file, format=image_format)


def label_margin(texts: list[str]) -> int:
    """Width in pixels of the grid's left column of row names (pillow's default font), 0 for none."""
    font = ImageFont.load_default()
    return max((int(font.getlength(text)) + 8 for text in texts), default=0)


def save_samples(path: str | Path, images: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None,
                 flag: str = "") -> None:
    """guided-diffusion evaluation format: arr_0 uint8 (N, H, W, C), arr_1 int64 (N,) class ids (for
    vector conditions: the condition's row), plus `cond` (N, E) float32 when given; atomic."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    outputs.save_npz(path, sample_arrays(images, labels, cond), flag)


def sample_arrays(images: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
    arrays = {"arr_0": images.cpu().permute(0, 2, 3, 1).numpy().astype(np.uint8),
              "arr_1": torch.as_tensor(labels).cpu().numpy().astype(np.int64)}
    if cond is not None:
        arrays["cond"] = cond.cpu().numpy().astype(np.float32)
    return arrays


def save_samples_and_grid(npz: str | Path, png: str | Path, images: torch.Tensor, labels: torch.Tensor,
                          cond: torch.Tensor | None = None, names: dict[int, str] | None = None,
                          npz_flag: str = "", png_flag: str = "") -> tuple[int, int]:
    """sample.py's two files, save_samples' .npz and save_grid's picture of the same images, written
    as a set (outputs.write_together, the .npz first): a kill never leaves a grid of other images
    beside the .npz, at worst the new .npz without its grid. Returns the grid's (rows, columns)."""
    picture, shown = grid_picture(images, labels, names)
    arrays = {key: np.asarray(value) for key, value in sample_arrays(images, labels, cond).items()}
    for path in (npz, png):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    outputs.write_together([(Path(npz), lambda file: np.savez(file, **arrays), npz_flag),
                            (Path(png), picture_writer(picture, png), png_flag)])
    return shown


SAMPLES_HINT = "make one with python sample.py (arr_0: uint8 images N x H x W x C, arr_1: N labels)"


def load_samples(path: str | Path) -> tuple[torch.Tensor, np.ndarray | None]:
    """What save_samples wrote, read back for a metric: uint8 (N, C, H, W) and labels (or None),
    from its .npz (arr_0 NHWC uint8, arr_1 labels) or from a folder of images (grey if every
    image is grey, else RGB)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in readers.IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images ({', '.join(readers.IMAGE_SUFFIXES)}) in folder {path}")
        opened = [readers.read_image(p) for p in files]
        mode = "L" if all(im.mode == "L" for im in opened) else "RGB"  # read_image gives 8-bit L or RGB
        sizes = {im.size for im in opened}
        if len(sizes) > 1:
            raise ValueError(f"images in {path} have different sizes {sorted(sizes)[:4]}: resize them to one size")
        arrays = [np.asarray(im.convert(mode)) for im in opened]
        images = np.stack(arrays)[..., None] if mode == "L" else np.stack(arrays)
        labels = None
    elif path.suffix.lower() == ".npz":
        arrays = checks.load_npz(path, "sample file", SAMPLES_HINT, keys=("arr_0",))
        images, labels = arrays["arr_0"], arrays.get("arr_1")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
        if labels is not None:  # a label per image, or the accuracy would compare the wrong pairs
            if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
                raise ValueError(f"{path}: arr_1 must hold one integer label per image of arr_0 ({len(images)}), "
                                 f"got {labels.dtype} {labels.shape}")
            labels = labels.astype(np.int64)
    elif path.exists():
        raise ValueError(f"{path} is neither an .npz sample file nor a folder of images")
    else:
        raise FileNotFoundError(f"no sample file or image folder at {path}: {SAMPLES_HINT}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(), labels
