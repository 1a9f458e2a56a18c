"""sample.py: exact NFE budgets, convergence orders of the solvers, determinism, output files, errors."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sample  # noqa: E402
from plumbing import samplefiles
from plumbing.checkpoint import prior_to_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def counting(field):
    """Wrap velocity(x, t) to record every call's t; calls = len(times)."""
    times = []

    def velocity(x, t):
        assert t.dtype == torch.float32 and t.shape == (x.shape[0],)
        times.append(t.clone())
        return field(x, t)

    return velocity, times


@pytest.mark.parametrize("solver", list(sample.SOLVERS))
def test_integrate_spends_exactly_nfe(solver):
    per_step = sample.SOLVERS[solver]
    for nfe in (per_step, 2 * per_step, 3 * per_step, 8 * per_step):
        velocity, times = counting(lambda x, t: -x)
        sample.integrate(velocity, torch.ones(3, 2), nfe, solver)
        assert len(times) == nfe
        all_t = torch.stack(times)
        assert all_t.min() >= 0 and all_t.max() <= 1 and all_t[0].eq(0).all()


def global_error(field, exact, x0, solver, steps):
    nfe = steps * sample.SOLVERS[solver]
    return (sample.integrate(field, x0, nfe, solver) - exact).abs().max().item()


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_convergence_order(solver, order):
    x0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)
    # dx/dt = (1 + t) x has x(1) = x0 e^{3/2}; the rotation field (-y, x) turns x0 by 1 radian
    growth = (lambda x, t: (1 + t.double())[:, None] * x, x0 * math.exp(1.5))
    cos, sin = math.cos(1), math.sin(1)
    rotation_matrix = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
    rotation = (lambda x, t: torch.stack([-x[:, 1], x[:, 0]], dim=1), x0 @ rotation_matrix)
    for field, exact in (growth, rotation):
        coarse, fine = (global_error(field, exact, x0, solver, steps) for steps in (16, 32))
        measured = math.log2(coarse / fine)
        assert abs(measured - order) < 0.15, f"{solver}: order {measured:.2f}, expected {order}"


@pytest.mark.parametrize("solver", list(sample.SOLVERS))
def test_constant_field_is_exact_in_one_step(solver):
    x0, c = torch.randn(4, 3, 5, 5), torch.randn(3, 5, 5)
    x1 = sample.integrate(lambda x, t: c.expand_as(x), x0, sample.SOLVERS[solver], solver)
    torch.testing.assert_close(x1, x0 + c)


@pytest.mark.parametrize("solver", ["midpoint", "heun", "rk4"])
def test_linear_in_t_field_is_exact_in_one_step(solver):
    x0, a, b = torch.randn(4, 2), torch.randn(2), torch.randn(2)
    x1 = sample.integrate(lambda x, t: a + b * t[:, None], x0, sample.SOLVERS[solver], solver)
    torch.testing.assert_close(x1, x0 + a + b / 2)  # integral of a + b t over [0, 1]


@pytest.mark.parametrize("nfe,solver,pattern", [
    (0, "euler", "positive multiple of 1: try 1"),
    (-3, "heun", "positive multiple of 2: try 2"),
    (7, "rk4", "rk4 uses 4 evaluations per step.*multiple of 4: try 4 or 8"),
    (3, "midpoint", "multiple of 2: try 2 or 4"),
])
def test_bad_budget_names_valid_ones(nfe, solver, pattern):
    with pytest.raises(ValueError, match=pattern):
        sample.integrate(lambda x, t: x, torch.zeros(1, 1), nfe, solver)


class FakePrior:
    """N(label, 1) per image on a 1x4x4 image; enough to drive generate()."""

    num_classes, shape = 3, (1, 4, 4)

    def sample(self, labels, generator=None, null=None, x1=None):
        noise = torch.randn((len(labels), *self.shape), generator=generator, device=labels.device)
        return labels[:, None, None, None].float() * 0.3 - 0.3 + 0.2 * noise


class FakeModel(torch.nn.Module):
    """A label- and time-dependent field that records each call's labels (null rows as -1)."""

    num_classes, cond_dim = 3, 0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.calls: list[torch.Tensor] = []

    def forward(self, x, t, labels, null):
        labels = torch.where(null, -1, labels)
        self.calls.append(labels.clone())
        return -self.scale * x + t[:, None, None, None] * (labels[:, None, None, None].float() - 1) * 0.1


@pytest.mark.parametrize("solver", list(sample.SOLVERS))
def test_generate_counts_guided_evaluations(solver):
    per_step = sample.SOLVERS[solver]
    labels, seeds = torch.tensor([0, 1, 2, 2, 1]), list(range(5))
    for cfg, evals_per_call in ((1.0, 1), (2.5, 2)):
        for nfe in (per_step * evals_per_call, 3 * per_step * evals_per_call):
            model = FakeModel()
            sample.generate(model, FakePrior(), labels, seeds, nfe, solver, cfg=cfg, batch_size=5)
            assert len(model.calls) * evals_per_call == nfe  # ONE network call per velocity
            for call in model.calls:
                expected = torch.cat([labels, torch.full_like(labels, -1)]) if cfg != 1 else labels
                assert torch.equal(call, expected)
    with pytest.raises(ValueError, match="guidance doubles.*multiple of 2: try 2 or 4"):
        sample.generate(FakeModel(), FakePrior(), labels, seeds, 3, "euler", cfg=2.0)


def test_generate_does_not_depend_on_batch_size():
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    seeds = [11 * i + 5 for i in range(7)]
    runs = [sample.generate(FakeModel(), FakePrior(), labels, seeds, 4, "heun", cfg=1.5, batch_size=b)
            for b in (1, 3, 7)]
    assert runs[0].dtype == torch.uint8 and runs[0].shape == (7, 1, 4, 4)
    assert all(torch.equal(runs[0], run) for run in runs[1:])
    assert len(set(runs[0].flatten(1).sum(1).tolist())) > 1  # images differ from each other


@pytest.mark.parametrize("channels", [1, 3])
def test_save_grid_and_npz(tmp_path, channels):
    images = torch.randint(0, 256, (5, channels, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 2, 2])
    samplefiles.save_grid(images, labels, tmp_path / "grid.png", names={2: "square"})
    samplefiles.save_samples(tmp_path / "samples", images, labels)
    left = samplefiles.label_margin(["0", "square"])  # the row names' column
    assert left > samplefiles.label_margin(["0"]) > 0
    with Image.open(tmp_path / "grid.png") as grid:  # 2 rows x 3 columns of 64 px tiles, 2 px padding
        assert grid.size == (left + 3 * 66 + 2, 2 * 66 + 2) and grid.mode == ("L" if channels == 1 else "RGB")
        pixels = np.asarray(grid).reshape(2 * 66 + 2, left + 3 * 66 + 2, channels)
    assert np.array_equal(pixels[2:66:2, left + 2:left + 66:2].transpose(2, 0, 1), images[0].numpy())  # nearest x2
    assert np.array_equal(pixels[68:132:2, left + 2:left + 66:2].transpose(2, 0, 1), images[3].numpy())  # class 2
    for row in (slice(2, 66), slice(68, 132)):  # each row's name is drawn (dark pixels) in the margin
        assert pixels[row, :left].min() < 128
    with np.load(tmp_path / "samples") as arrays:
        assert sorted(arrays.files) == ["arr_0", "arr_1"]
        assert arrays["arr_0"].dtype == np.uint8 and arrays["arr_0"].shape == (5, 32, 32, channels)
        assert arrays["arr_1"].dtype == np.int64 and arrays["arr_1"].tolist() == labels.tolist()
        assert np.array_equal(arrays["arr_0"], images.permute(0, 2, 3, 1).numpy())


# --- checkpoint and command line: a checkpoint built here from the spec's format -------------

NUM_CLASSES = 3


def write_checkpoint(path: Path, preset: str = "tiny", weights_preset: str = "tiny") -> Path:
    from prior import build_prior
    import unet

    torch.manual_seed(0)
    model = unet.build_unet(weights_preset, 32, 3, NUM_CLASSES)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(12) % NUM_CLASSES
    prior = build_prior("class").fit([(images, labels)], NUM_CLASSES)
    config = {"dataset": "random", "data_dir": None, "preset": preset, "image_size": 32, "channels": 3,
              "num_classes": NUM_CLASSES, "prior": "class", "prior_options": {}, "coupling": "independent",
              "seed": 0}
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 0,
                "rng": None, "config": config, "prior": prior_to_checkpoint(prior),
                "class_names": None}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt.pt")


def test_cli_writes_grid_and_npz(checkpoint):
    sample.main(["--ckpt", str(checkpoint), "--nfe", "1", "--n", "2", "--classes", "2,0", "--device", "cpu"])
    with Image.open(checkpoint.parent / "samples_euler_nfe1_n2.png") as grid:
        assert grid.size[1] == 2 * 66 + 2 and grid.size[0] > 2 * 66 + 2  # 2 rows of 2, the names on the left
    with np.load(checkpoint.parent / "samples_euler_nfe1_n2.npz") as arrays:
        assert arrays["arr_0"].shape == (4, 32, 32, 3) and arrays["arr_0"].dtype == np.uint8
        assert arrays["arr_1"].tolist() == [2, 2, 0, 0]


def test_load_checkpoint_uses_ema_and_own_prior(checkpoint):
    model, prior, config = sample.load_checkpoint(checkpoint, "cpu")
    assert not model.training and config["preset"] == "tiny" and prior.num_classes == NUM_CLASSES
    state = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(value, state["ema"][key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("argv,pattern", [
    (["--nfe", "0"], "argument --nfe: must be at least 1, got 0"),
    (["--nfe", "7", "--solver", "rk4"], "multiple of 4: try 4 or 8"),
    (["--nfe", "3", "--cfg", "2"], "guidance doubles.*try 2 or 4"),
    (["--classes", "1,3"], r"^--classes '1,3': class 3 is out of range 0\.\.2$"),
    (["--classes", "-1"], r"^--classes '-1': class -1 is out of range 0\.\.2$"),
    (["--classes", "12"], r"^--classes '12': class 12 is out of range 0\.\.2$"),
    (["--classes", "3,-2,5,5"], r"^--classes '3,-2,5,5': classes -2, 3, 5 are out of range 0\.\.2$"),
    (["--classes", "a"], "comma-separated class ids"),
])
def test_cli_bad_arguments(checkpoint, argv, pattern):
    with pytest.raises(ValueError, match=pattern):
        sample.main(["--ckpt", str(checkpoint), "--device", "cpu", *argv])


def test_cli_missing_and_mismatched_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="python train.py.*--ckpt"):
        sample.main(["--ckpt", str(tmp_path / "nothing.pt"), "--device", "cpu"])
    wrong = write_checkpoint(tmp_path / "wrong.pt", preset="small", weights_preset="tiny")
    with pytest.raises(ValueError, match="does not match preset 'small'") as info:
        sample.main(["--ckpt", str(wrong), "--device", "cpu"])
    assert "\n" not in str(info.value)


def test_script_reports_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tmp_path / "none.pt"), "--nfe", "7",
                             "--solver", "rk4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: --nfe 7 cannot be spent exactly: rk4 uses 4 evaluations per step, so --nfe must be a "
        "positive multiple of 4: try 4 or 8"]
