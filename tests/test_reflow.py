"""Reflow: pairs made by a teacher (sample.py --pairs, plumbing/pairs.py) and a run trained on them
(train.py --pairs), checked against facts that do not come from the code under test: the seeds
the pairs record, an uninterrupted run, a straight map with a known answer, a closed-form CDF."""
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import flow
import sample
import train
from plumbing import checks, pairs
from plumbing.conditions import MAX_PAIR_SEED, image_seed, pair_seed

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--max-images", "64", "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
         "--device", "cpu", "--warmup", "2", "--image-size", "16"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 3-step shapes run: any trained checkpoint is a teacher (its quality is not the point)."""
    out = tmp_path_factory.mktemp("teacher")
    train.train(train.parse_args([*QUICK, "--out", str(out), "--steps", "3", "--prior", "kmeans",
                                  "--prior-opt", "k=2"]))
    return out / "ckpt.pt"


def make(teacher, folder, *extra):
    sample.main(["--ckpt", str(teacher), "--pairs", str(folder), "--count", "10", "--chunk", "4", "--nfe", "4",
                 "--device", "cpu", *extra])
    return folder


def chunk_arrays(folder):
    return [dict(np.load(path)) for path in sorted(Path(folder).glob("chunk_*.npz"))]


def test_pairs_are_the_teachers_solutions_from_their_recorded_seeds(teacher, tmp_path):
    folder = make(teacher, tmp_path / "p", "--batch-size", "3")
    spec, arrays = pairs.load(folder)
    assert spec["count"] == 10 and len(spec["chunks"]) == 3 and spec["solver"] == "midpoint" and spec["nfe"] == 4
    assert arrays["seed"].tolist() == [pair_seed(0, j) for j in range(10)]
    assert arrays["cond"].tolist() == [j % 10 for j in range(10)]  # class-balanced
    # again, independently of the pairs code: the prior's draw from each recorded seed, solved by the teacher
    model, prior, _ = sample.load_checkpoint(teacher, "cpu")
    cond = torch.from_numpy(arrays["cond"])
    x0 = sample.prior_noise(prior, cond, [int(s) for s in arrays["seed"]])
    x1 = sample.integrate(sample.guided_field(model, cond, 1.0), x0, 4, "midpoint")
    assert torch.equal(x0, torch.from_numpy(arrays["x0"]))
    assert torch.allclose(x1, torch.from_numpy(arrays["x1"]), atol=1e-5)
    # the batch size does not change a pair (x1 up to the float rounding of a batched convolution)
    other = make(teacher, tmp_path / "q", "--batch-size", "10")
    for a, b in zip(chunk_arrays(folder), chunk_arrays(other)):
        assert all(np.array_equal(a[key], b[key]) for key in ("x0", "cond", "seed"))
        assert np.allclose(a["x1"], b["x1"], atol=1e-5)


def test_pair_seeds_are_disjoint_from_every_sample_and_metric_seed():
    # image_seed is one-to-one on (run seed <= MAX_SEED, class < 1000003, index < 1000033); its largest value
    # is below the smallest pair seed, and the largest pair seed fits torch's 64-bit seeds
    assert pair_seed(0, 0) > image_seed(checks.MAX_SEED, 1_000_002, 1_000_032)
    assert pair_seed(MAX_PAIR_SEED, 1_000_003 * 1_000_033 - 1) < 2**64
    assert pair_seed(3, 1_000_033) == pair_seed(3, 1_000_032) + 1  # consecutive across image_seed's rows
    torch.Generator().manual_seed(pair_seed(MAX_PAIR_SEED, 10**9))


def test_a_killed_pair_run_continues_to_the_same_files(teacher, tmp_path, monkeypatch):
    whole = make(teacher, tmp_path / "whole")
    real_write, written = pairs.write_chunk, []

    def killed_after_one(folder, index, *rest):
        if written:
            raise KeyboardInterrupt  # the kill, before the second chunk lands
        real_write(folder, index, *rest)
        written.append(index)

    monkeypatch.setattr(pairs, "write_chunk", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        make(teacher, tmp_path / "killed")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not made yet"):
        pairs.load(tmp_path / "killed")
    make(teacher, tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "pairs.json").read_text())["chunks"] == \
        json.loads((whole / "pairs.json").read_text())["chunks"]  # the same bytes, chunk by chunk
    assert not list((tmp_path / "killed").glob("*.tmp"))


def test_pairs_made_otherwise_in_the_same_folder_are_refused(teacher, tmp_path):
    make(teacher, tmp_path / "p")
    with pytest.raises(ValueError, match="holds pairs made otherwise .*nfe 4 there, 8 here"):
        make(teacher, tmp_path / "p", "--nfe", "8")


def test_damaged_pairs_are_refused_in_one_line(teacher, tmp_path):
    folder = make(teacher, tmp_path / "p")
    chunk = folder / "chunk_00001.npz"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="chunk_00001.npz: damaged or replaced"):
        pairs.load(folder)
    (folder / "pairs.json").write_text('{"kind": "condprior reflow pairs", "vers')
    with pytest.raises(ValueError, match="damaged pairs description"):
        pairs.load(folder)


class Marker:
    def __reduce__(self):  # what a hostile file would run on a full unpickler
        return (Path.touch, (Path(MARKER),))


MARKER = ""


def test_a_pairs_chunk_is_read_without_running_code(teacher, tmp_path):
    global MARKER
    MARKER = str(tmp_path / "ran")
    folder = make(teacher, tmp_path / "p")
    chunk = folder / "chunk_00000.npz"
    arrays = dict(np.load(chunk))
    arrays["cond"] = np.array([Marker()] * 4, dtype=object)
    with open(chunk, "wb") as file:
        np.savez(file, **arrays)
    spec = json.loads((folder / "pairs.json").read_text())
    spec["chunks"][0] = checks.file_sha256(chunk)  # a forger who also rewrote the checksum
    (folder / "pairs.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="not a readable pairs chunk"):
        pairs.load(folder)
    assert not Path(MARKER).exists()
    pickle.dumps(Marker())  # the payload is a real one


def straight_pairs(teacher, folder, count=64):
    """Pairs of a known map: x1 = x0 + shift_c, a constant per class (the field that carries them
    in one Euler step is v(x, t, c) = shift_c), in the format of sample.py's pairs."""
    model, prior, config = sample.load_checkpoint(teacher, "cpu")
    spec = {"kind": pairs.KIND, "version": pairs.VERSION, "count": count, "chunk": count, "seed": 0,
            "teacher": {"checkpoint": str(teacher.resolve()), "sha256": checks.file_sha256(teacher), "step": 3},
            "solver": "exact", "nfe": 1, "cfg": 1.0, "run": {key: config.get(key) for key in pairs.RUN_FIELDS},
            **{key: config[key] for key in ("dataset", "image_size", "channels", "num_classes", "cond_dim", "prior",
                                            "prior_options")}}
    pairs.begin(folder, spec)
    cond = torch.arange(count) % 2
    seeds = [pair_seed(0, j) for j in range(count)]
    x0 = sample.prior_noise(prior, cond, seeds)
    shift = torch.tensor([0.5, -0.5]).view(2, 1, 1, 1) * torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    pairs.write_chunk(folder, 0, x0, x0 + shift[cond], cond, seeds)
    return x0, x0 + shift[cond], cond


def test_training_on_the_pairs_of_a_straight_map_learns_it(teacher, tmp_path):
    x0, x1, cond = straight_pairs(teacher, tmp_path / "p")
    out = tmp_path / "student"
    losses = train.train(train.parse_args([*QUICK, "--pairs", str(tmp_path / "p"), "--out", str(out), "--steps", "120",
                                           "--lr", "3e-3", "--ema", "0.9", "--label-dropout", "0", "--init", "scratch",
                                           "--log-every", "20", "--warmup", "10"]))
    assert losses[-1] < 0.05 * losses[0]
    model, _, config = sample.load_checkpoint(out, "cpu")
    assert config["prior"] == "kmeans" and config["pairs"] == str(tmp_path / "p")  # the teacher's prior, taken over
    with torch.no_grad():
        one_step = sample.integrate(sample.guided_field(model, cond, 1.0), x0, 1, "euler")
    error = (one_step - x1).pow(2).mean().sqrt()
    print(f"one-step error {error:.4f} of a shift {(x1 - x0).pow(2).mean().sqrt():.4f}; losses {losses}")
    assert error < 0.1 * (x1 - x0).pow(2).mean().sqrt()  # one Euler step reproduces the pairs


def test_a_reflow_run_starts_from_the_teachers_ema_and_resumes_exactly(teacher, tmp_path):
    folder = make(teacher, tmp_path / "p")
    # from new weights: a 3-step teacher reproduces its own pairs so well (loss 1e-7) that any update
    # looks like train.py's divergence check's 100-fold jump
    run = ["--pairs", str(folder), "--batch-size", "4", "--ckpt-every", "2", "--init", "scratch"]
    straight = train.train(train.parse_args([*QUICK, *run, "--out", str(tmp_path / "a"), "--steps", "4"]))
    train.train(train.parse_args([*QUICK, *run, "--out", str(tmp_path / "b"), "--steps", "2"]))
    resumed = train.train(train.parse_args([*QUICK, *run, "--out", str(tmp_path / "b"), "--steps", "4", "--resume"]))
    assert resumed == straight[2:]
    first = train.train(train.parse_args([*QUICK, *run[:-2], "--out", str(tmp_path / "c"), "--steps", "1",
                                          "--lr", "1e-9"]))
    assert first and math.isfinite(first[0])
    taught, student = torch.load(teacher, weights_only=True), torch.load(tmp_path / "c" / "ckpt.pt", weights_only=True)
    for key, value in taught["ema"].items():  # lr 1e-9: the student is still the teacher
        assert torch.allclose(student["model"][key], value, atol=1e-6), key
    assert student["prior"]["name"] == taught["prior"]["name"] == "kmeans"


@pytest.mark.parametrize("flags,message", [
    (["--prior", "gaussian"], "--prior gaussian .the pairs' teacher: kmeans."),
    (["--dataset", "mnist"], "--dataset mnist .the pairs' teacher: shapes."),
    (["--image-size", "8"], "--image-size 8 .the pairs' teacher: 16."),
    (["--cond", "attributes"], "--cond attributes .the pairs' teacher: None."),
    (["--coupling", "ot"], "--coupling ot: a reflow run's source"),
])
def test_pairs_of_another_kind_of_run_are_refused(teacher, tmp_path, flags, message):
    folder = make(teacher, tmp_path / "p")
    argv = [*[a for a in QUICK if a not in ("--image-size", "16")], "--pairs", str(folder), "--out", str(tmp_path / "s"),
            "--steps", "1", *flags]
    with pytest.raises(ValueError, match=message):
        train.train(train.parse_args(argv))
    assert not (tmp_path / "s" / "ckpt.pt").exists()


def test_a_changed_teacher_and_cli_errors_are_one_line(teacher, tmp_path):
    folder = make(teacher, tmp_path / "p")
    spec = json.loads((folder / "pairs.json").read_text())
    spec["teacher"]["sha256"] = "0" * 64
    (folder / "pairs.json").write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *QUICK, "--pairs", str(folder), "--out",
                             str(tmp_path / "s"), "--steps", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is not the checkpoint that made the pairs" in result.stderr
    with pytest.raises(FileNotFoundError, match="no reflow pairs at .*none .no pairs.json.: make them with"):
        train.train(train.parse_args(["--pairs", str(tmp_path / "none")]))


def test_the_u_shaped_t_has_lee_et_als_cdf_and_uniform_is_unchanged():
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(flow.sample_t(1000, generator=torch.Generator().manual_seed(0)),
                       torch.rand(1000, generator=torch.Generator().manual_seed(0)))
    t = flow.sample_t(200_000, generator=generator, distribution="u_shaped").double()
    assert 0 <= t.min() and t.max() <= 1
    # the mixture of exp(a t) and exp(a (1 - t)) on [0, 1], a = 4: its CDF in closed form
    a, grid = 4.0, torch.linspace(0, 1, 101, dtype=torch.float64)
    cdf = 0.5 * ((torch.exp(a * grid) - 1) + (math.exp(a) - torch.exp(a * (1 - grid)))) / (math.exp(a) - 1)
    empirical = (t.view(-1, 1) <= grid.view(1, -1)).double().mean(0)
    assert (empirical - cdf).abs().max() < 0.005  # Kolmogorov-Smirnov at n = 200k: 1.36 / sqrt(n) = 0.003
    assert (t < 0.1).double().mean() > 2.5 * ((t > 0.45) & (t < 0.55)).double().mean()  # U-shaped
