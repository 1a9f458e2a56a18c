"""The built-in `shapes` images: how they are drawn, and how their attributes are read back.

Image i of a split is fully determined by 10 uniforms hashed from (seed, split, i): a radius
(u0), a centre (u1, u2), a rotation in turns (u3), a fill colour from HSV (u4..u6) and a dark
background (u7..u9); its class fixes the polygons (SHAPES). render() draws a batch at 4x
resolution on one pillow canvas and box-downsamples (anti-aliasing); attributes() returns what
was drawn, and measure_attributes() recovers most of it from the pixels alone, in closed form,
so a generated image can be checked against the attributes it was asked for (attribute_errors).
data.Shapes is the dataset around these functions (`--cond class` or `--cond attributes`).
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # anti-aliasing: draw at 4x resolution, average 4x4 blocks
ATTRIBUTE_DIM = 8  # the condition vector of --cond attributes (attribute_vector)


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

# How many rotations by 1/k turn map each shape onto itself (circle and ring are 40-gons), so a
# rotation attribute is only defined modulo 1/k turn: a square at 0.05 and 0.3 turns is one image.
ROTATION_SYMMETRY: dict[str, int] = {"circle": 40, "square": 4, "triangle": 3, "ring": 40, "cross": 4,
                                     "star": 5, "crescent": 1, "frame": 4, "half-disk": 1, "arrow": 1}


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


def parameters(seed: int, stream: int, indices: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """What render draws for each image, from its uniforms u0..u9 (the only place they are read):
    radius (u0) and centre (x, y) in pixels (u1, u2; polygon coordinates, see attributes),
    rotation in turns (u3), fill RGB in [0, 1] from HSV (u4..u6), background RGB 0..70 (u7..u9)."""
    u = _hash_uniforms(seed, stream, indices, 10)
    radius = size * (0.25 + 0.15 * u[:, 0])  # 8..12.8 pixels at 32x32: big enough to read
    margin = radius + size / 32
    centres = margin[:, None] + (size - 2 * margin[:, None]) * u[:, 1:3]
    # saturated bright fill over a dark background: the shape always stands out
    fills = np.array([colorsys.hsv_to_rgb(h, 0.65 + 0.35 * s, 0.8 + 0.2 * v)
                      for h, s, v in u[:, 4:7]], np.float32).reshape(-1, 3)
    backgrounds = (70 * u[:, 7:10]).astype(np.float32)
    return {"radius": radius, "centres": centres, "turns": u[:, 3], "fills": fills,
            "backgrounds": backgrounds}



def attributes(params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """float32 (n, 7) per image: fill r, g, b in [0, 1] (before rounding to uint8), radius / size,
    centre x / size, centre y / size, rotation in turns [0, 1).

    The centre is in the convention where pixel j spans [j, j + 1): PIL puts polygon
    coordinates on super-pixel centres, so a drawn centre c sits at c + 0.5 / SUPERSAMPLE.
    The rotation is only defined modulo 1 / ROTATION_SYMMETRY[class] turn (a square turned by
    1/4 is the same image), so compare it modulo that, or not at all for circle and ring.
    """
    centres = (params["centres"] + 0.5 / SUPERSAMPLE) / size
    return np.column_stack([params["fills"], params["radius"] / size, centres, params["turns"]]).astype(np.float32)


def render(labels: np.ndarray, params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """uint8 (n, 3, size, size): shape labels[i] drawn with params row i."""
    scale, count = SUPERSAMPLE, len(labels)
    radius, centres = params["radius"], params["centres"].copy()
    centres[:, 1] += size * np.arange(count)  # image i is the i-th tile of a tall canvas
    cos, sin = np.cos(2 * np.pi * params["turns"]), np.sin(2 * np.pi * params["turns"])
    rotations = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
    # one canvas for the chunk: PIL's per-image overhead, not the drawing, is the cost
    canvas = Image.new("L", (size * scale, size * scale * count), 0)
    draw = ImageDraw.Draw(canvas)
    for class_id, polygons in enumerate(SHAPES.values()):
        rows = np.flatnonzero(labels == class_id)
        for vertices, value in polygons:
            points = (vertices @ rotations[rows] * radius[rows, None, None]
                      + centres[rows, None]) * scale
            for polygon in points.reshape(len(rows), 2 * len(vertices)).tolist():
                draw.polygon(polygon, fill=value)
    alpha = np.asarray(canvas.reduce(scale)).reshape(count, 1, size, size) / np.float32(255)
    fills = params["fills"][:, :, None, None] * 255
    backgrounds = params["backgrounds"][:, :, None, None]
    return np.rint(backgrounds + (fills - backgrounds) * alpha).astype(np.uint8)




def attribute_vector(attributes: np.ndarray) -> np.ndarray:
    """The condition `--cond attributes` gives the network: (n, 8) float32 fill r, g, b, radius,
    centre x, centre y (all / image size, as attributes() returns them), and the rotation as
    cos and sin of its angle (continuous where turns wraps from 1 to 0)."""
    angle = 2 * np.pi * attributes[:, 6:7]
    return np.concatenate([attributes[:, :6], np.cos(angle), np.sin(angle)], 1).astype(np.float32)


def attribute_errors(images: np.ndarray | torch.Tensor, requested: np.ndarray) -> dict[str, float]:
    """How faithfully images show the attributes asked for (rows of attribute_vector), measured
    from their pixels by measure_attributes: colour as the mean absolute error in grey levels,
    position as the mean distance in pixels between the requested centre and the measured
    centroid (exact for the centrally symmetric shapes, a fraction of the radius off for crescent,
    half-disk and arrow), size as the rank correlation of the requested radius with the measured
    size (its scale depends on the shape, which the attributes leave free). Rotation is not
    measured (see measure_attributes)."""
    images = np.asarray(images)
    measured, requested = measure_attributes(images).astype(np.float64), np.asarray(requested, np.float64)
    size = images.shape[-1]

    def ranks(v: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(v)).astype(np.float64)

    return {"colour_error": float(np.abs(measured[:, :3] - requested[:, :3]).mean() * 255),
            "position_error_px": float(np.linalg.norm(measured[:, 4:6] - requested[:, 4:6], axis=1).mean() * size),
            "size_rank_correlation": float(np.corrcoef(ranks(measured[:, 3]), ranks(requested[:, 3]))[0, 1])}


def measure_attributes(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """float32 (n, 6) measured from the pixels of uint8 (n, 3, H, W) images of one flat-coloured
    shape on a flat background (the shapes dataset): fill r, g, b in [0, 1], size, centroid x / W,
    centroid y / H. No network, no fitting; per image, in closed form:

    background  the per-channel median of the border pixels (a shape never touches the border)
    fill        the mean of the pixels within 2 grey levels (Euclidean, RGB) of the pixel farthest
                from the background: the fully covered pixels, which all hold the flat fill
    alpha       each pixel's coverage, (pixel - background) . (fill - background) / |fill - background|^2
                clipped to [0, 1]: exact for anti-aliased edges that blend the two colours linearly
    size        sqrt(sum(alpha) / (H * W)): the square root of the covered share of the image. For a
                given class it is proportional to the radius (area = class constant * radius^2), up to
                how the rasteriser treats edges; across classes it is not comparable to the radius
    centroid    the alpha-weighted mean of pixel centres (pixel j spans [j, j + 1)), over W and H;
                equal to the drawn centre for shapes symmetric under a rotation (circle, square,
                triangle, ring, cross, star, frame), offset by a fixed multiple of the radius for
                crescent, half-disk and arrow (their area centroid is not their centre)

    Rotation is not measured: many shapes look the same after a fraction of a turn (see
    ROTATION_SYMMETRY), and an angle robust to that needs more than moments of the mask.
    """
    x = np.asarray(images, dtype=np.float64)
    n, _, h, w = x.shape
    border = np.concatenate([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], axis=2)
    background = np.median(border, axis=2)  # (n, 3)
    offset = x - background[:, :, None, None]
    distance = np.sqrt((offset ** 2).sum(1))  # (n, H, W)
    inside = distance >= distance.max((1, 2), keepdims=True) - 2
    fill = (x * inside[:, None]).sum((2, 3)) / inside.sum((1, 2))[:, None]
    direction = fill - background
    squared = np.maximum((direction ** 2).sum(1), 1e-9)  # a shape the colour of its background: no area
    alpha = np.clip(np.einsum("nchw,nc->nhw", offset, direction) / squared[:, None, None], 0, 1)
    area = np.maximum(alpha.sum((1, 2)), 1e-9)
    centre_x = (alpha.sum(1) * (np.arange(w) + 0.5)).sum(1) / area / w
    centre_y = (alpha.sum(2) * (np.arange(h) + 0.5)).sum(1) / area / h
    return np.column_stack([fill / 255, np.sqrt(area / (h * w)), centre_x, centre_y]).astype(np.float32)
