"""sample.py's time grids: the named grids, any grid in the solvers, the fitted grid and its file."""
from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sample  # noqa: E402
from plumbing import checks, conditions, outputs  # noqa: E402
from test_sample import FakePrior  # noqa: E402 (N(0.3 (label - 1), 0.2^2) per pixel of 1x4x4)

REPO = Path(__file__).resolve().parents[1]
NAMED = ["uniform", "shift", "shift:3", "shift:0.25", "edm", "edm:3", "edm:1"]


@pytest.mark.parametrize("spec", NAMED)
def test_named_grids_increase_from_0_to_1(spec):
    for steps in (1, 2, 3, 4, 7, 8, 16, 64):
        times = sample.named_grid(spec, steps)
        assert len(times) == steps + 1 and times[0] == 0.0 and times[-1] == 1.0
        assert all(a < b for a, b in zip(times, times[1:])), (spec, steps, times)


def test_shift_direction_and_its_flip():
    # K = 2 by hand: t1 = 0.5 / (s - (s - 1) 0.5) = 1 / (s + 1): s = 3 gives the short step at the prior
    assert sample.named_grid("shift:3", 2)[1] == pytest.approx(0.25)
    assert sample.named_grid("shift:0.25", 2)[1] == pytest.approx(0.8)
    # SD3's formula applied to our t as it stands, s t / (1 + (s - 1) t), is shift:1/s
    for s in (3.0, 0.2):
        flipped = [s * t / (1 + (s - 1) * t) for t in sample.uniform_grid(8)]
        assert sample.named_grid(f"shift:{1 / s}", 8) == pytest.approx(flipped, abs=1e-12)
    assert sample.named_grid("shift:1", 8) == pytest.approx(sample.uniform_grid(8), abs=1e-15)


def test_edm_grid_is_rho_spaced_in_sigma():
    # sigma = (1 - t) / t of the interior times is evenly spaced in sigma^(1/rho), and the line
    # through them reaches sigma_max at k = 0 and sigma_min at k = K (Karras et al. 2022, eq. 5)
    for rho, steps in ((7.0, 8), (3.0, 5)):
        times = sample.named_grid(f"edm:{rho:g}", steps)
        roots = [((1 - t) / t) ** (1 / rho) for t in times[1:-1]]
        gap = roots[1] - roots[0]
        assert all(b - a == pytest.approx(gap, rel=1e-9) for a, b in zip(roots, roots[1:]))
        assert (roots[0] - gap) ** rho == pytest.approx(80.0, rel=1e-9)
        assert (roots[-1] + gap) ** rho == pytest.approx(0.002, rel=1e-6)
    assert sample.named_grid("edm", 8)[-2] > 0.9  # rho = 7: the short steps near the data


@pytest.mark.parametrize("spec,pattern", [
    ("cosine", "unknown grid; choose one of uniform, shift, edm"), ("uniform:2", "uniform takes no value"),
    ("shift:x", "'x' is not a number"), ("shift:-1", "must be a positive number"), ("edm:0", "positive number"),
    ("edm:nan", "positive number")])
def test_bad_grid_names(spec, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        sample.named_grid(spec, 4)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("grid,pattern", [([0.0, 1.0], "has 2 times, but 2 steps need 3"),
                                          ([0.1, 0.5, 1.0], "start at t = 0"), ([0.0, 0.5, 0.9], "end at t = 1"),
                                          ([0.0, 1.0, 1.0], "increase strictly"),
                                          ([0.0, float("nan"), 1.0], "increase strictly")])
def test_bad_grids_are_refused(grid, pattern):
    with pytest.raises(ValueError, match=pattern):
        sample.integrate(lambda x, t: x, torch.zeros(1, 1), 2, "euler", grid)


def random_grid(steps: int, seed: int) -> list[float]:
    cuts = torch.rand(steps - 1, generator=torch.Generator().manual_seed(seed)).sort().values.tolist()
    return [0.0, *cuts, 1.0]


@pytest.mark.parametrize("solver", list(sample.SOLVERS))
def test_constant_field_is_exact_on_any_grid(solver):
    x0, c = torch.randn(4, 3, 5, 5), torch.randn(3, 5, 5)
    grids = [sample.named_grid(spec, 5) for spec in NAMED] + [random_grid(5, seed) for seed in range(3)]
    for grid in grids:
        x1 = sample.integrate(lambda x, t: c.expand_as(x), x0, 5 * sample.SOLVERS[solver], solver, grid)
        torch.testing.assert_close(x1, x0 + c)


def test_solvers_step_on_the_grid_given():
    # v = t: Euler is the left Riemann sum of t over the grid, 0 * 0.25 + 0.25 * 0.75 = 0.1875 by
    # hand; midpoint, Heun and RK4 integrate a linear-in-t field exactly, 1/2, on any grid
    x0 = torch.zeros(2, 1)
    field = lambda x, t: t[:, None]  # noqa: E731
    grid = [0.0, 0.25, 1.0]
    assert sample.integrate(field, x0, 2, "euler", grid).tolist() == [[0.1875], [0.1875]]
    for solver in ("midpoint", "heun", "rk4"):
        x1 = sample.integrate(field, x0, 2 * sample.SOLVERS[solver], solver, random_grid(2, 5))
        torch.testing.assert_close(x1, torch.full((2, 1), 0.5))


@pytest.mark.parametrize("solver", list(sample.SOLVERS))
def test_nfe_stays_exact_on_every_grid(solver):
    per_step = sample.SOLVERS[solver]
    for spec, steps in itertools.product(NAMED, (1, 3, 8)):
        calls = []
        grid = sample.named_grid(spec, steps)

        def velocity(x, t):
            calls.append(t.clone())
            return -x

        sample.integrate(velocity, torch.ones(3, 2), steps * per_step, solver, grid)
        assert len(calls) == steps * per_step
        firsts = [calls[k * per_step][0].item() for k in range(steps)]  # each step's first stage is at t_k
        assert firsts == [float(torch.tensor(t, dtype=torch.float32)) for t in grid[:-1]]
    with pytest.raises(ValueError, match="has 3 times, but 4 steps need 5"):  # the budget picks the steps
        sample.integrate(lambda x, t: x, torch.ones(1, 1), 4 * per_step, solver, [0.0, 0.5, 1.0])


def old_integrate(field, x0, nfe, solver):
    """sample.integrate before grids (2026-12-07), verbatim: t_k = k / steps, h = 1 / steps."""
    steps = sample.num_steps(nfe, solver)
    step, h, x = sample.STEP_FUNCTIONS[solver], 1.0 / steps, x0
    for k in range(steps):
        t = torch.full((x0.shape[0],), k / steps, dtype=torch.float32, device=x0.device)
        x = step(field, x, t, h)
    return x


@pytest.mark.parametrize("solver", list(sample.SOLVERS))
def test_uniform_is_bit_for_bit_the_old_solver(solver):
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    field = lambda x, t: torch.sin(3 * x) * (1 + 7 * t[:, None]) - x * t[:, None] ** 2  # noqa: E731
    for steps in range(1, 13):  # 3, 5, 6, 7, ...: (k + 1)/steps - k/steps is an ulp off 1/steps
        nfe = steps * sample.SOLVERS[solver]
        old = old_integrate(field, x0, nfe, solver)
        for grid in (None, sample.named_grid("uniform", steps), torch.tensor(sample.uniform_grid(steps),
                                                                               dtype=torch.float64)):
            assert torch.equal(sample.integrate(field, x0, nfe, solver, grid), old)


class FakeModel(torch.nn.Module):
    """A label-, time- and state-dependent field, curved so that grids differ."""

    num_classes, cond_dim = 3, 0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, labels, null):
        labels = torch.where(null, -1, labels)[:, None, None, None].float()
        return -self.scale * torch.tanh(x) * 4 * t[:, None, None, None] ** 3 + (labels - 1) * 0.1


def test_same_seeds_same_samples_on_any_grid():
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    seeds = [11 * i + 5 for i in range(7)]
    per_class = {0: [0.0, 0.1, 0.3, 1.0], 1: [0.0, 0.5, 0.9, 1.0], 2: sample.uniform_grid(3)}
    model, prior = FakeModel(), FakePrior()
    for grid, cfg in (("shift:3", 1.0), ("edm", 1.5), (per_class, 1.0), (per_class, 2.0)):
        nfe = 3 * sample.SOLVERS["heun"] * (2 if cfg != 1.0 else 1)
        runs = [sample.generate(model, prior, labels, seeds, nfe, "heun", cfg=cfg, batch_size=b, grid=grid)
                for b in (1, 3, 7)]
        assert all(torch.equal(runs[0], run) for run in runs[1:])
    run = lambda grid: sample.generate(model, prior, labels, seeds, 3, "euler", grid=grid)  # noqa: E731
    assert torch.equal(run(None), run("uniform")) and not torch.equal(run("uniform"), run("shift:3"))
    # a per-class grid is each class's own grid: class 2's rows as on the uniform grid, the others not
    mixed, uniform = run(per_class), run(None)
    assert torch.equal(mixed[labels == 2], uniform[labels == 2]) and not torch.equal(mixed, uniform)
    with pytest.raises(ValueError, match="no times for class 1"):
        run({0: per_class[0], 2: per_class[2]})


# --- fitted grids against brute force on dx/dt = 4 t^3 x, x(t) = x0 exp(t^4) ---------------

def growth(x, t):
    return 4 * t.double()[:, None] ** 3 * x


def euler_step(t, s):
    """x(s) / x0 after one Euler step from the exact x(t): e^{t^4} (1 + (s - t) 4 t^3)."""
    return math.exp(t ** 4) * (1 + (s - t) * 4 * t ** 3)


def midpoint_step(t, s):
    h, m = s - t, t + (s - t) / 2
    return math.exp(t ** 4) * (1 + h * 4 * m ** 3 * (1 + h / 2 * 4 * t ** 3))


def test_fitted_grid_matches_brute_force():
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    power = float(x0.pow(2).mean())  # E||x0||^2 / D: every error below is (ratio error)^2 times this
    points = 16
    for solver, step in (("euler", euler_step), ("midpoint", midpoint_step)):
        per_step = sample.SOLVERS[solver]
        fine = sample.fine_grid(2, points)
        # endpoint, K = 2: every t1 on the fine grid, the two-step solve in closed form
        endpoint = {t1: power * (endpoint_ratio(step, [0.0, t1, 1.0]) - math.e) ** 2 for t1 in fine[1:-1]}
        times, value, uniform = sample.fit_times(growth, x0, 2, solver, "endpoint", points, substeps=4)
        best = min(endpoint, key=endpoint.get)
        assert times == [0.0, best, 1.0] and value == pytest.approx(endpoint[best], rel=1e-5)
        assert uniform == pytest.approx(endpoint[0.5], rel=1e-5) and value < uniform
        # local, K = 2 and K = 3: every set of interior times, each step from the exact state
        for steps in (2, 3):
            fine = sample.fine_grid(steps, points)
            local = {}
            for inner in itertools.combinations(fine[1:-1], steps - 1):
                grid = [0.0, *inner, 1.0]
                local[inner] = power * sum((step(a, b) - math.exp(b ** 4)) ** 2 for a, b in zip(grid, grid[1:]))
            times, value, uniform = sample.fit_times(growth, x0, steps, solver, "local", points, substeps=4)
            best = min(local, key=local.get)
            assert times == [0.0, *best, 1.0] and value == pytest.approx(local[best], rel=1e-5)
            assert uniform == pytest.approx(local[tuple(sample.uniform_grid(steps)[1:-1])], rel=1e-5)
            assert value <= uniform


def endpoint_ratio(step, grid):
    """x(1) / x0 of a solve on `grid` of the linear ODE (each step multiplies by its one-step factor)."""
    ratio = 1.0
    for a, b in zip(grid, grid[1:]):
        ratio *= step(a, b) / math.exp(a ** 4)  # step() starts from the exact state e^{a^4}
    return ratio


def test_fitted_grid_no_worse_than_uniform_for_more_steps():
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for objective, solver, steps in (("endpoint", "euler", 4), ("local", "heun", 4), ("endpoint", "rk4", 3)):
        times, value, uniform = sample.fit_times(growth, x0, steps, solver, objective, 12, substeps=4)
        assert sample.check_grid(times, steps) and value <= uniform
        # the value is what the grid scores: re-measured from scratch against the teacher's endpoint,
        # which is the exact one up to the teacher's own (rk4) error
        if objective == "endpoint":
            x1 = sample.integrate(growth, x0, steps * sample.SOLVERS[solver], solver, times)
            states, _ = sample.teacher_solve(growth, x0, sample.fine_grid(steps, 12), 4)
            torch.testing.assert_close(states[-1], x0 * math.e, rtol=1e-5, atol=1e-5)
            assert value == pytest.approx(float((x1 - states[-1]).pow(2).mean()), rel=1e-9)


def test_pilot_seeds_are_never_image_seeds():
    largest_image = conditions.image_seed(checks.MAX_SEED, 1_000_002, 1_000_032)
    assert largest_image < conditions.pilot_seed(0, 0) < conditions.pilot_seed(2**20 - 1, 2**20 - 1) < 2**64
    torch.Generator().manual_seed(conditions.pilot_seed(2**20 - 1, 2**20 - 1))  # within manual_seed's range
    assert len({conditions.pilot_seed(c, j) for c in range(3) for j in range(5)}) == 15


# --- the grid file ------------------------------------------------------------------------

def test_grid_file_is_refused_for_another_checkpoint_solver_or_nfe(tmp_path):
    record = sample.fit_grid(FakeModel(), FakePrior(), "a" * 64, 2, "euler", objective="local", per_class=True,
                             pilot=3, points=4)
    assert set(record["times"]) == {"0", "1", "2"} and record["pilot_per_class"] == 3
    path = tmp_path / "grid.json"
    outputs.write_text(path, json.dumps(record))
    loaded = sample.load_fitted_grid(path, "a" * 64, 2, "euler")
    assert loaded == {c: record["times"][str(c)] for c in range(3)}
    for args, pattern in ((("b" * 64, 2, "euler"), "checkpoint_sha256 'aaa"), (("a" * 64, 2, "midpoint"),
                          "solver 'euler', not 'midpoint'"), (("a" * 64, 4, "euler"), "nfe 2, not 4")):
        with pytest.raises(ValueError, match="was fitted for another checkpoint / solver / nfe / cfg: " + pattern) \
                as info:
            sample.load_fitted_grid(path, *args)
        assert "\n" not in str(info.value) and "python sample.py fit" in str(info.value)
    outputs.write_text(tmp_path / "other.json", json.dumps({"times": [0, 1]}))
    with pytest.raises(ValueError, match="not a fitted grid file"):
        sample.load_fitted_grid(tmp_path / "other.json", "a" * 64, 2, "euler")


def test_fit_cli_then_sample_with_the_file(tmp_path):
    from test_sample import write_checkpoint  # the spec-format checkpoint of sample.py's tests

    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    sample.fit_main(["--ckpt", str(tmp_path), "--nfe", "2", "--pilot", "2", "--points", "4", "--device", "cpu"])
    fitted = tmp_path / "grid_euler_nfe2_local.json"
    record = json.loads(fitted.read_text())
    assert record["checkpoint_sha256"] == checks.file_sha256(ckpt) and record["nfe"] == 2
    sample.main(["--ckpt", str(ckpt), "--nfe", "2", "--n", "1", "--grid", str(fitted), "--device", "cpu"])
    assert (tmp_path / "samples_euler_nfe2_grid-grid_euler_nfe2_local_n1.npz").is_file()
    with pytest.raises(ValueError, match="fitted for another.*nfe 2, not 4"):
        sample.main(["--ckpt", str(ckpt), "--nfe", "4", "--n", "1", "--grid", str(fitted), "--device", "cpu"])
    result = subprocess.run([sys.executable, "sample.py", "fit", "--ckpt", str(ckpt), "--objective", "nope"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "invalid choice: 'nope'" in lines[0]


# --- bench/compare.py: grid=NAME, the same trained run on another grid -----------------------

def test_compare_entries_with_a_grid():
    sys.path.insert(0, str(REPO / "bench"))
    import compare

    shifted = compare.parse_method("gaussian:grid=shift")
    assert (shifted.label, shifted.slug, shifted.key) == ("gaussian:grid=shift:3", "gaussian", "gaussian-grid_shift_3")
    assert compare.parse_method("gaussian:grid=shift:3.0") == shifted
    assert compare.parse_method("gaussian:grid=uniform") == compare.parse_method("gaussian")
    fitted = compare.parse_method("kmeans:k=16,grid=fit-class,cfg=2")
    assert fitted.label == "kmeans:k=16,cfg=2,grid=fit-class:local" and fitted.key == "kmeans-k16-cfg2-grid_fit-class_local"
    assert fitted.slug == "kmeans-k16"
    with pytest.raises(ValueError, match="--priors 'gaussian:grid=cosine': grid= 'cosine': unknown grid.*fit or fit-class"):
        compare.parse_method("gaussian:grid=cosine")
    with pytest.raises(ValueError, match="objective 'pixels', choose one of local, endpoint"):
        compare.parse_method("gaussian:grid=fit:pixels")
    with pytest.raises(ValueError, match="twice"):
        compare.parse_methods(["gaussian:grid=shift", "gaussian:grid=shift:3"])


def test_compare_fits_once_then_reads_the_cache(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import compare

    class Ev:
        device = torch.device("cpu")

        def load(self, ckpt):
            return FakeModel(), FakePrior(), {}

    ckpt = tmp_path / "ckpt_0000004.pt"
    ckpt.write_bytes(b"weights")
    args = type("Args", (), {"out": tmp_path, "solver": "euler"})()
    method = compare.parse_method("class:grid=fit-class")
    monkeypatch.setattr(sample, "fit_grid", lambda *a, **k: fit_small(*a, **k))
    times = compare.time_grid(Ev(), args, method, 0, 4, 2, ckpt)
    assert sorted(times) == [0, 1, 2] and all(sample.check_grid(t, 2) for t in times.values())
    assert (tmp_path / "fitted_grids" / "class-grid_fit-class_local_seed0_step4_euler_nfe2.json").is_file()
    monkeypatch.setattr(sample, "fit_grid", lambda *a, **k: pytest.fail("fitted again"))
    assert compare.time_grid(Ev(), args, method, 0, 4, 2, ckpt) == times
    ckpt.write_bytes(b"other weights")  # the cached grid is now for another checkpoint
    with pytest.raises(ValueError, match="fitted for another checkpoint"):
        compare.time_grid(Ev(), args, method, 0, 4, 2, ckpt)
    assert compare.time_grid(Ev(), args, compare.parse_method("class:grid=edm"), 0, 4, 2, ckpt) == "edm:7"


FIT_GRID = sample.fit_grid


def fit_small(*args, **kwargs):
    return FIT_GRID(*args, **{**kwargs, "pilot": 2, "points": 4})
