"""Linear flow matching: the path, the objective, and how source and data are paired.

Given a source point x0 (from a prior) paired with a data point x1 of condition c, the
straight path and its constant velocity are (Lipman et al. 2023, "CondOT" path)

    x_t = (1 - (1 - sigma_min) t) x0 + t x1,     u = d x_t / dt = x1 - (1 - sigma_min) x0,

with t ~ U[0, 1]; sigma_min = 0 gives x_t = (1 - t) x0 + t x1 and u = x1 - x0. The network
v_theta(x_t, t, c) is trained by regression onto u (c: class ids or condition vectors, with
a null mask for the unconditional rows of classifier-free guidance):

    loss = E || v_theta(x_t, t, c) - u ||^2          (mean over pixels and batch)

Its minimiser is E[u | x_t, c], a field whose ODE dx/dt = v(x, t, c) carries the prior to
the data. How x0 is paired with x1 decides how straight that field is:

    independent  x0 and x1 drawn independently (the prior may still depend on c)
    ot           minibatch optimal transport: the permutation P minimising
                 sum_i ||x0_P(i) - x1_i||^2 (exact, scipy's linear_sum_assignment)
    class_ot     the same, but solved within each of the prior's groups (prior.groups: one class,
                 null rows apart; every row alone for condition vectors), so a source drawn
                 for class c is never paired with another class's image

On class-conditional data prefer class_ot to ot. With a class-blind source (--prior gaussian),
`ot` pairs class c's images with the noise points nearest to them, so the source class c is
trained from is no longer the N(0, I) it is sampled from. Measured on MNIST (tiny network, 1000
steps, one seed, bench/RESULTS.md): ot is better at NFE 1-2 (FD-clf 128 vs 153 and 17.7 vs
22.0 for independent pairing) but worse from NFE 4 on (4.65 vs 3.47 at NFE 8) and less faithful
to the class (accuracy 0.82 vs 0.89 at NFE 8); class_ot is better than both from NFE 4 (2.95 at
NFE 8, accuracy 0.90).

The paper's measure of path length is the transport cost E ||x1 - x0||^2.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# v(x_t, t, cond, null): what the network computes (unet.UNet.forward)
Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ot_permutation(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """perm with x0[perm][i] paired to x1[i], minimising the total squared distance."""
    # float32 cost on the batch's device: the assignment only needs the ORDER of the costs, which
    # float32 keeps for image batches (float64 doubled the time with the same permutation)
    x0f, x1f = x0.flatten(1).float(), x1.flatten(1).float()
    cost = x1f.square().sum(1, keepdim=True) + x0f.square().sum(1) - 2 * x1f @ x0f.T  # (n1, n0)
    # The assignment is solved on the CPU (one host sync per step; scipy's solver is
    # exact and O(n^3), about 10 ms at n = 256).
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x0.device)


def couple(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor, method: str = "independent") -> torch.Tensor:
    """x0 re-ordered to pair with x1 (the data side keeps its order); groups: (N,) ids, rows
    of one id may swap sources under class_ot."""
    if method == "independent":
        return x0
    if method == "ot":
        return x0[ot_permutation(x0, x1)]
    if method == "class_ot":
        perm = torch.arange(len(x0), device=x0.device)
        ids, counts = torch.unique(groups, return_counts=True)
        for g in ids[counts > 1].tolist():  # a group of one keeps its own source
            members = torch.nonzero(groups == g).flatten()
            perm[members] = members[ot_permutation(x0[members], x1[members])]
        return x0[perm]
    raise ValueError(f"unknown coupling '{method}'; choose one of: {', '.join(COUPLINGS)}")


COUPLINGS = ("independent", "ot", "class_ot")


T_DISTRIBUTIONS = ("uniform", "u_shaped")
U_SHAPE = 4.0  # Lee et al. 2024's a


def sample_t(n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
             distribution: str = "uniform") -> torch.Tensor:
    """t, float32, shape (n,): U[0, 1], or the U-shaped density of Lee et al. 2024 ("Improving the
    Training of Rectified Flows", Sec. 3.2), an even mix of p(t) ~ exp(a t) and its mirror,

        p(t) = a cosh(a (t - 1/2)) / (2 sinh(a / 2)),   a = 4,

    drawn by inverting its CDF F(t) = 1/2 + sinh(a (t - 1/2)) / (2 sinh(a / 2)): one uniform u per
    row, t = 1/2 + asinh((2u - 1) sinh(a / 2)) / a. It spends more of the training near t = 0 and
    t = 1, where a reflowed field is hardest to fit (at t = 0 the target is a whole pair's x1 - x0
    from x0 alone): cosh(2) = 3.8 times the density at either end as at t = 1/2."""
    u = torch.rand(n, device=device, generator=generator)
    if distribution == "uniform":
        return u
    if distribution == "u_shaped":
        half = math.sinh(U_SHAPE / 2)
        return (0.5 + torch.asinh((2 * u - 1) * half) / U_SHAPE).clamp(0.0, 1.0)
    raise ValueError(f"unknown t distribution '{distribution}'; choose one of: {', '.join(T_DISTRIBUTIONS)}")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                sigma_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The point x_t on the straight path and its velocity u (see the module docstring)."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - (1 - sigma_min) * t) * x0 + t * x1
    u = x1 - (1 - sigma_min) * x0
    return x_t, u


def flow_loss(model: Velocity, x0: torch.Tensor, x1: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
              t: torch.Tensor, sigma_min: float = 0.0) -> torch.Tensor:
    """Mean squared error between v_theta(x_t, t, cond, null) and the path velocity u."""
    x_t, u = interpolate(x0, x1, t, sigma_min)
    velocity = model(x_t, t, cond, null)
    return (velocity.float() - u).pow(2).mean()


def transport_cost(x0: torch.Tensor, x1: torch.Tensor, per_dim: bool = False) -> torch.Tensor:
    """Mean over the batch of ||x1 - x0||^2 (divided by the dimension if per_dim)."""
    squared = (x1 - x0).flatten(1).double().pow(2)
    return squared.mean(1).mean() if per_dim else squared.sum(1).mean()
