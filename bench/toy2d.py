"""The paper's claim in two dimensions, in under a minute on a CPU.

K classes live in the plane. Each class is two small blobs on a ring, so its mean (the
centre of the class prior) lies between them and is not itself a data point. The same
small MLP velocity field v(x, t, c) is trained three ways, with the same steps and seed:

    gaussian     x0 ~ N(0, I),                   independent pairs   (CondOT)
    gaussian+ot  x0 ~ N(0, I),                   minibatch OT pairs  (BatchOT)
    class        x0 ~ N(mu_c, sigma^2 I),        independent pairs   (the paper)

and sampled by Euler with NFE 1, 2, 4, 8. The table reports the transport cost
E||x1 - x0||^2 of each training coupling and, per NFE, the sliced Wasserstein-2 distance

    SW2(P, Q)^2 = E_theta W2^2(<P, theta>, <Q, theta>),   theta uniform on the circle,

between generated and true samples of each class (1-D W2 of sorted projections), averaged
over classes. The expected outcome is a class-prior transport cost at most a third of the
Gaussian's and a clearly lower distance at NFE 4 and 8; the script prints what it finds.
`--layout interleaved` is the hard case: class 0's mean falls on class 1's data.
A PNG shows sample trajectories of each method (pillow).

    python bench/toy2d.py                      # table + runs/toy2d.png
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flow import couple, flow_loss, sample_t, transport_cost  # noqa: E402
from plumbing import checks, outputs, readers  # noqa: E402
from prior import ClassPrior, GaussianPrior  # noqa: E402
from sample import integrate  # noqa: E402

METHODS = {"gaussian": ("gaussian", "independent"),  # method: (prior, coupling)
           "gaussian+ot": ("gaussian", "ot"),
           "class": ("class", "independent")}
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (128, 128, 0)]


def blob_centres(num_classes: int, layout: str, radius: float = 3.0) -> np.ndarray:
    """(K, 2, 2): the two blob centres of each class."""
    if layout == "ring":  # class c's blobs sit at angles 2 pi c / K +- pi / (2K) on the ring
        centre = 2 * np.pi * np.arange(num_classes)[:, None] / num_classes
        angles = centre + np.array([-1, 1]) * np.pi / (2 * num_classes)
        return radius * np.stack([np.cos(angles), np.sin(angles)], -1)
    if layout == "interleaved":  # class 0 at (+-2, 0) has its mean (0, 0) on class 1's blob
        return np.array([[[-2.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 2.5]]])
    raise ValueError(f"unknown layout '{layout}'; choose ring or interleaved")


def sample_data(centres: np.ndarray, labels: torch.Tensor, generator: torch.Generator,
                blob_std: float = 0.15) -> torch.Tensor:
    """Points of the requested classes: a random one of the class's two blobs, plus noise."""
    blob = torch.randint(0, 2, (len(labels),), generator=generator)
    means = torch.tensor(centres, dtype=torch.float32)[labels, blob]
    return means + blob_std * torch.randn(len(labels), 2, generator=generator)


class VelocityMLP(nn.Module):
    """v(x, t, c): x, a sinusoidal embedding of t and a learned class embedding, through an MLP."""

    def __init__(self, num_classes: int, width: int = 128):
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes + 1, 16)
        self.net = nn.Sequential(nn.Linear(2 + 16 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                null: torch.Tensor | None = None) -> torch.Tensor:
        if null is not None:  # row K of the embedding is the unconditional one
            labels = torch.where(null, self.class_embedding.num_embeddings - 1, labels)
        freqs = torch.exp(torch.linspace(0, math.log(100), 8, device=x.device))
        t_embedding = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
        return self.net(torch.cat([x, t_embedding, self.class_embedding(labels)], 1))


def fit_prior(name: str, centres: np.ndarray, sigma: float, generator: torch.Generator):
    labels = torch.arange(len(centres)).repeat(2000)
    if name == "gaussian":  # nothing to estimate: it reads the shape (2,) of one point
        return GaussianPrior().fit([(torch.zeros(1, 2), labels[:1])], len(centres))
    # The class means come from the data, as on images: one streaming pass over a sample.
    return ClassPrior(cov="iso", sigma=sigma).fit([(sample_data(centres, labels, generator), labels)], len(centres))


def train(method: str, centres: np.ndarray, steps: int, batch_size: int, sigma: float, seed: int):
    prior_name, coupling = METHODS[method]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prior = fit_prior(prior_name, centres, sigma, generator)
    model = VelocityMLP(len(centres))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, foreach=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        labels = torch.randint(0, len(centres), (batch_size,), generator=generator)
        x1 = sample_data(centres, labels, generator)
        x0 = couple(prior.sample(labels, generator), x1, labels, coupling)
        no_null = torch.zeros(batch_size, dtype=torch.bool)
        loss = flow_loss(model, x0, x1, labels, no_null, sample_t(batch_size, generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval(), prior, coupling


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 128) -> float:
    angles = torch.linspace(0, math.pi, projections + 1)[:-1]
    directions = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    pa, pb = torch.sort(a @ directions.T, 0)[0], torch.sort(b @ directions.T, 0)[0]
    return float((pa - pb).pow(2).mean().sqrt())


@torch.no_grad()
def evaluate(model, prior, coupling, centres, nfes, n_per_class, batch_size, seed) -> dict:
    generator = torch.Generator().manual_seed(seed + 1)
    k = len(centres)
    labels = torch.arange(k).repeat_interleave(n_per_class)
    x1 = sample_data(centres, labels, generator)
    # Transport cost of the training coupling, on training-sized batches.
    costs = []
    for start in range(0, len(labels), batch_size):
        part = slice(start, start + batch_size)
        x0 = couple(prior.sample(labels[part], generator), x1[part], labels[part], coupling)
        costs.append(float(transport_cost(x0, x1[part])))
    result = {"cost": float(np.mean(costs))}
    x0 = prior.sample(labels, generator)
    for nfe in nfes:
        out = integrate(lambda x, t: model(x, t, labels), x0, nfe, "euler")
        result[nfe] = float(np.mean([sliced_wasserstein(out[labels == c], x1[labels == c]) for c in range(k)]))
    return result


@torch.no_grad()
def draw_trajectories(runs: dict, centres: np.ndarray, path: str, per_class: int = 40, nfe: int = 32,
                      size: int = 360, seed: int = 0) -> None:
    """One panel per method: faint data, then each sample's Euler path coloured by class."""
    generator = torch.Generator().manual_seed(seed)
    k = len(centres)
    labels = torch.arange(k).repeat_interleave(per_class)
    data = sample_data(centres, labels, generator)
    extent = float(np.abs(centres).max()) + 1.5
    image = Image.new("RGB", (size * len(runs), size + 20), "white")
    draw = ImageDraw.Draw(image)
    def to_pixel(p: list[float], panel: int) -> tuple[float, float]:
        return panel * size + (p[0] / extent + 1) * size / 2, (1 - p[1] / extent) * size / 2 + 20

    for i, (method, (model, prior, _)) in enumerate(runs.items()):
        draw.text((i * size + 8, 4), method, fill="black")
        for point, c in zip(data.tolist(), labels.tolist()):
            x, y = to_pixel(point, i)
            draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=tuple(v // 3 + 170 for v in COLOURS[c % 8]))
        x = prior.sample(labels, generator)
        path_points = [x]
        for step in range(nfe):  # Euler, keeping every intermediate point
            t = torch.full((len(x),), step / nfe)
            x = x + model(x, t, labels) / nfe
            path_points.append(x)
        paths = torch.stack(path_points, 1)
        for trajectory, c in zip(paths.tolist(), labels.tolist()):
            draw.line([to_pixel(p, i) for p in trajectory], fill=COLOURS[c % 8], width=1)
            x0 = to_pixel(trajectory[0], i)
            draw.ellipse((x0[0] - 2, x0[1] - 2, x0[0] + 2, x0[1] + 2), outline="black")
    outputs.atomic_write(path, lambda file: image.save(file, format=Image.registered_extensions()[
        Path(path).suffix.lower()]), "--png")


def run(layout: str = "ring", num_classes: int = 4, steps: int = 2000, batch_size: int = 128,
        sigma: float = 0.5, nfes: tuple[int, ...] = (1, 2, 4, 8), n_per_class: int = 2000, seed: int = 0,
        png: str | None = None) -> dict:
    centres = blob_centres(num_classes, layout)
    runs = {method: train(method, centres, steps, batch_size, sigma, seed) for method in METHODS}
    results = {method: evaluate(*runs[method], centres, nfes, n_per_class, batch_size, seed) for method in runs}
    if png:
        draw_trajectories(runs, centres, png, seed=seed)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", default="ring", choices=["ring", "interleaved"])
    parser.add_argument("--classes", type=int, default=4, help="number of classes (ring layout)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sigma", type=checks.finite_float, default=0.5, help="std of each class prior component")
    parser.add_argument("--seed", type=checks.seed_int, default=0)
    parser.add_argument("--png", default="runs/toy2d.png", help="trajectory plot (default runs/toy2d.png)")
    args = parser.parse_args(argv)
    # every flag is checked before two minutes of training, not after them
    checks.check_at_least(args.steps, 1, "--steps")  # 0 steps would compare untrained networks
    checks.check_at_least(args.batch_size, 1, "--batch-size")
    if args.layout == "ring":  # interleaved always has 2 classes
        checks.check_at_least(args.classes, 2, "--classes")  # one class: its mean is the origin, no contrast
    checks.check_finite(args.sigma, "--sigma", "give a positive number such as 0.5")
    if args.sigma <= 0:
        raise ValueError(f"--sigma must be positive, got {args.sigma}")
    outputs.check_out_file(args.png, "--png", readers.IMAGE_SUFFIXES)  # creates runs/ if needed
    torch.set_num_threads(1)  # 2-D points and a small MLP: extra threads only add overhead
    nfes = (1, 2, 4, 8)
    results = run(args.layout, args.classes if args.layout == "ring" else 2, args.steps, args.batch_size,
                  args.sigma, nfes, seed=args.seed, png=args.png)
    print(f"layout={args.layout} steps={args.steps} batch={args.batch_size} sigma={args.sigma} seed={args.seed}")
    print("| method | transport cost | " + " | ".join(f"SW2 @ NFE {n}" for n in nfes) + " |")
    print("|---|---|" + "---|" * len(nfes))
    for method, r in results.items():
        print(f"| {method} | {r['cost']:.3f} | " + " | ".join(f"{r[n]:.3f}" for n in nfes) + " |")
    g, c = results["gaussian"], results["class"]
    print(f"class/gaussian transport cost: {c['cost'] / g['cost']:.2f} (claim: <= 0.33); "
          f"SW2 at NFE 4: {c[4]:.3f} vs {g[4]:.3f}, at NFE 8: {c[8]:.3f} vs {g[8]:.3f} "
          f"({'class prior lower' if c[4] < g[4] and c[8] < g[8] else 'class prior NOT lower'})")
    print(f"trajectories: {args.png}")


if __name__ == "__main__":
    checks.run_main(main)
