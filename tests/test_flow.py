"""flow.py: couplings against brute force, the path, the loss and the transport cost."""
import itertools

import pytest
import torch

from flow import couple, flow_loss, interpolate, sample_t, transport_cost


def total_cost(x0, x1):
    return float((x1 - x0).flatten(1).pow(2).sum())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_ot_equals_brute_force(n):
    g = torch.Generator().manual_seed(n)
    for trial in range(3):
        x0, x1 = torch.randn(n, 2, 3, generator=g), torch.randn(n, 2, 3, generator=g)
        labels = torch.arange(n)
        best = min(total_cost(x0[list(p)], x1) for p in itertools.permutations(range(n)))
        y0 = couple(x0, x1, labels, "ot")
        assert total_cost(y0, x1) == pytest.approx(best, rel=1e-6)
        # a permutation: every source used exactly once
        assert sorted(map(tuple, y0.flatten(1).tolist())) == sorted(map(tuple, x0.flatten(1).tolist()))
        assert torch.equal(couple(x0, x1, labels, "independent"), x0)


def test_class_ot_never_crosses_classes_and_is_optimal_within_each():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1, 0])
    # source rows tagged by their class in the last coordinate so crossings are visible
    x0 = torch.randn(9, 3, generator=g)
    x0[:, 2] = labels.float() * 100
    x1 = torch.randn(9, 3, generator=g)
    y0 = couple(x0, x1, labels, "class_ot")
    assert torch.equal(y0[:, 2], labels.float() * 100)
    for c in range(3):
        m = labels == c
        best = min(total_cost(x0[m][list(p)], x1[m]) for p in itertools.permutations(range(int(m.sum()))))
        assert total_cost(y0[m], x1[m]) == pytest.approx(best, rel=1e-6)
    # plain ot ignores classes: with the tags it would still not cross here, so drop them
    x0[:, 2] = 0
    assert total_cost(couple(x0, x1, labels, "ot"), x1) <= total_cost(couple(x0, x1, labels, "class_ot"), x1) + 1e-6


def test_class_ot_with_singleton_groups_is_the_identity():
    # condition vectors: every row is its own group (prior.Prior.groups), so nothing may swap
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.equal(couple(x0, x1, torch.arange(6), "class_ot"), x0)
    assert not torch.equal(couple(x0, x1, torch.zeros(6, dtype=torch.int64), "class_ot"), x0)


def test_unknown_coupling():
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="unknown coupling 'sinkhorn'; choose one of: independent, ot, class_ot"):
        couple(x, x, torch.zeros(2, dtype=torch.int64), "sinkhorn")


def test_path_endpoints_and_velocity():
    x0, x1 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 5.0]])
    for t, expected in [(0.0, [1.0, -2.0]), (1.0, [3.0, 5.0]), (0.25, [1.5, -0.25])]:
        x_t, u = interpolate(x0, x1, torch.tensor([t]))
        assert torch.allclose(x_t, torch.tensor([expected])) and torch.equal(u, x1 - x0)
    # sigma_min: x_t = (1 - 0.9 t) x0 + t x1, u = x1 - 0.9 x0; finite difference checks u
    t, h = torch.tensor([0.3], dtype=torch.float64), 1e-6
    x0, x1 = x0.double(), x1.double()
    (xa, u), (xb, _) = interpolate(x0, x1, t, 0.1), interpolate(x0, x1, t + h, 0.1)
    assert torch.allclose((xb - xa) / h, u, atol=1e-6)
    assert torch.allclose(u, x1 - 0.9 * x0)


def test_loss_zero_for_exact_velocity_and_positive_otherwise():
    x0, x1 = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    labels, t = torch.zeros(1, dtype=torch.int64), torch.rand(1)
    null = torch.zeros(1, dtype=torch.bool)
    exact = lambda x_t, t, c, null: (x1 - x0).expand_as(x_t)  # noqa: E731
    assert float(flow_loss(exact, x0, x1, labels, null, t)) == 0.0
    zero = lambda x_t, t, c, null: torch.zeros_like(x_t)  # noqa: E731
    assert float(flow_loss(zero, x0, x1, labels, null, t)) == pytest.approx(float((x1 - x0).pow(2).mean()))


def test_transport_cost_hand_computed():
    x0 = torch.zeros(2, 1, 2)
    x1 = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])  # squared norms 25 and 1
    assert float(transport_cost(x0, x1)) == 13.0
    assert float(transport_cost(x0, x1, per_dim=True)) == 6.5


def test_sample_t_uniform_and_seeded():
    t = sample_t(100000, generator=torch.Generator().manual_seed(0))
    assert 0 <= float(t.min()) and float(t.max()) < 1 and abs(float(t.mean()) - 0.5) < 0.005
    assert torch.equal(t[:5], sample_t(5, generator=torch.Generator().manual_seed(0)))
