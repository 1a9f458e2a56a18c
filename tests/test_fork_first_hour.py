"""A fork's first hour: the README's prior template runs as printed, and the base class forgives
the usual first-draft details (a `shape` kept as a numpy array).

The template is read out of README.md itself (the indented block under "## Adding a prior" that
defines a Prior subclass), executed as if pasted into prior.py (in a copy of prior.py's
namespace), registered in PRIORS, fitted on a small hand-made set whose class means are known
by construction, sampled, and then trained and sampled through train.py and sample.py.
"""
from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prior
import sample
import train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--max-images", "40", "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
         "--device", "cpu", "--warmup", "2"]


def readme_prior_block() -> str:
    """The first indented code block of README's "Adding a prior" section that defines a class."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Adding a prior", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in section.splitlines():
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    blocks.append("\n".join(current))
    code = [textwrap.dedent(block) for block in blocks if re.search(r"^\s*class \w+\(Prior\)", block, re.M)]
    assert code, "README's 'Adding a prior' has no template class"
    return code[0]


@pytest.fixture
def template(monkeypatch):
    """The README's class, defined as if pasted into prior.py, and registered under its name."""
    namespace = dict(vars(prior))
    before = set(namespace)
    exec(compile(readme_prior_block(), "README.md", "exec"), namespace)
    classes = [namespace[name] for name in set(namespace) - before if isinstance(namespace[name], type)]
    assert len(classes) == 1 and issubclass(classes[0], prior.Prior)
    cls = classes[0]
    readme = (ROOT / "README.md").read_text()
    assert f'"{cls.name}": {cls.__name__}' in readme  # the README says how to register it
    monkeypatch.setitem(prior.PRIORS, cls.name, cls)
    return cls


def class_data(n: int = 60, num_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c's pixels are all 40 + 80 c (+-10 noise): its mean in model space is known."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = (40 + 80 * labels[:, None, None, None] + rng.integers(-10, 11, (n, 3, 4, 4))).astype(np.uint8)
    return images, labels


def test_the_readme_template_fits_and_samples(template):
    images, labels = class_data()
    batches = [(torch.from_numpy(images[i:i + 7]), torch.from_numpy(labels[i:i + 7])) for i in range(0, 60, 7)]
    fitted = template().fit(batches, 3)
    means = np.stack([images[labels == c].astype(np.float64).mean(0) for c in range(3)]) / 127.5 - 1  # brute force
    np.testing.assert_allclose(fitted.means, means, atol=1e-12)
    assert fitted.num_classes == 3 and fitted.shape == (3, 4, 4)
    # reloaded from its saved state, as train.py and sample.py use it
    reloaded = prior.prior_from_state({key: np.asarray(value) for key, value in fitted.state_dict().items()})
    assert type(reloaded) is template and reloaded.shape == (3, 4, 4) and reloaded.num_classes == 3
    x0 = reloaded.sample(torch.tensor([2] * 4000), torch.Generator().manual_seed(0))
    scale = reloaded.scale
    assert x0.dtype == torch.float32 and x0.shape == (4000, 3, 4, 4)
    assert abs(float(x0.mean(0).sub(torch.tensor(scale * means[2])).abs().max())) < 5 / np.sqrt(4000)
    null = reloaded.sample(torch.tensor([2] * 4000), torch.Generator().manual_seed(0), null=torch.ones(4000, dtype=torch.bool))
    assert abs(float(null.mean())) < 0.05 and abs(float(null.std()) - 1) < 0.05


def test_the_readme_template_trains_and_samples_through_the_scripts(template, tmp_path):
    out = tmp_path / "run"
    train.train(train.parse_args([*QUICK, "--steps", "2", "--out", str(out), "--prior", template.name,
                                  "--prior-opt", "scale=0.8"]))
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    assert checkpoint["config"]["prior_options"] == {"scale": 0.8}
    sample.main(["--ckpt", str(out / "ckpt.pt"), "--nfe", "1", "--n", "2", "--classes", "0,7", "--device", "cpu"])
    with np.load(next(out.glob("samples_*.npz"))) as arrays:
        assert arrays["arr_0"].shape == (4, 32, 32, 3) and arrays["arr_1"].tolist() == [0, 0, 7, 7]


class ArrayShapePrior(prior.Prior):
    """A first draft: keeps `shape` as the numpy array it computed, and lists it in fitted."""

    name = "arrayshape"
    fitted = ("num_classes", "shape")

    def fit(self, batches, num_classes, dataset=""):
        images, _ = next(iter(batches))
        self.num_classes, self.shape = num_classes, np.array(images.shape[1:])
        return self

    def sample(self, cond, generator=None, null=None, x1=None):
        return torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)


def test_shape_is_a_tuple_of_ints_however_it_was_set_or_saved():
    images, labels = class_data()
    fitted = ArrayShapePrior().fit([(torch.from_numpy(images), torch.from_numpy(labels))], 3)
    state = {key: np.asarray(value) for key, value in fitted.state_dict().items()}  # as prior_stats.npz holds it
    reloaded = ArrayShapePrior.from_state_dict(state)
    for shape in (fitted.shape, reloaded.shape):
        assert type(shape) is tuple and shape == (3, 4, 4) and all(type(size) is int for size in shape)
        json.dumps(shape)  # a plain value: reports and configs can write it


# ----------------------------------------------------------------------------- the scripts' messages

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A one-step run of the demo's setup: ckpt.pt and prior_stats.npz in one folder."""
    out = tmp_path_factory.mktemp("first_hour") / "run"
    train.train(train.parse_args([*QUICK, "--steps", "1", "--out", str(out)]))
    return out


def test_a_checkpoint_flag_given_another_file_says_what_the_file_is(run, tmp_path):
    np.savez(tmp_path / "samples.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("lr 1e-3, 2500 steps\n")
    cases = {run / "prior_stats.npz": f"prior statistics file .*, not a checkpoint.* \\({run / 'ckpt.pt'} is this "
                                      f"run's checkpoint\\)",
             tmp_path / "samples.npz": "is a sample file .*, not a checkpoint",
             tmp_path / "notes.txt": "is a text file, not a checkpoint"}
    for path, said in cases.items():
        with pytest.raises(ValueError, match=said) as caught:
            sample.main(["--ckpt", str(path), "--nfe", "1", "--device", "cpu"])
        message = str(caught.value)
        assert message.startswith(f"{path} is ") and "\n" not in message, message
        assert "RuntimeError" not in message and "train one first" not in message, message
    cut = tmp_path / "cut.pt"  # a damaged checkpoint is still called that
    cut.write_bytes((run / "ckpt.pt").read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.pt: not a readable checkpoint"):
        sample.main(["--ckpt", str(cut), "--nfe", "1", "--device", "cpu"])


def test_train_without_the_dataset_leaves_no_empty_out_folder(tmp_path):
    missing = tmp_path / "no_mnist_here"
    fresh = tmp_path / "runs" / "mnist"  # neither folder exists yet
    with pytest.raises(FileNotFoundError, match="mnist: data dir .* not found"):
        train.train(train.parse_args(["--dataset", "mnist", "--data-dir", str(missing), "--out", str(fresh),
                                      "--device", "cpu"]))
    assert sorted(os.listdir(tmp_path)) == []  # nor runs/, which it created for --out
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(FileNotFoundError):
        train.train(train.parse_args(["--dataset", "mnist", "--data-dir", str(missing), "--out", str(existing),
                                      "--device", "cpu"]))
    assert existing.is_dir() and not os.listdir(existing)  # the user's own folder stays


@pytest.mark.parametrize("argv,grid", [
    (["--n", "3"], "a grid of 10 rows x 3 images)"),
    (["--n", "20", "--classes", "1,4"], "a grid of 2 rows x 16 images, the first 16 of each)"),
])
def test_sample_states_the_grid_it_wrote(run, tmp_path, capsys, argv, grid):
    png, npz = tmp_path / "grid.png", tmp_path / "samples.npz"
    sample.main(["--ckpt", str(run / "ckpt.pt"), "--nfe", "1", "--device", "cpu", "--out-png", str(png),
                 "--out-npz", str(npz), *argv])
    said = capsys.readouterr().out
    assert grid in said, said
    rows, columns = (int(v) for v in re.search(r"grid of (\d+) rows x (\d+) images", said).groups())
    with np.load(npz) as arrays:  # the count the grid shows, from the .npz itself
        labels = arrays["arr_1"]
    assert rows == len(np.unique(labels)) and columns == min(16, np.bincount(labels).max())
    with Image.open(png) as picture:  # 32 px tiles are drawn at 64 px, 2 px apart
        assert picture.size[1] == rows * (64 + 2) + 2


def test_the_cpu_torch_line_comes_before_the_install_a_user_pastes():
    """The advice to install the CPU build of torch first is useless after the block that pulls in
    the CUDA wheel: it must be in or before the first block that installs the requirements."""
    text = (ROOT / "README.md").read_text()
    cpu = text.find("--index-url https://download.pytorch.org/whl/cpu")
    requirements = text.find("pip install -r requirements.txt")
    assert 0 <= cpu < requirements, "the CPU build's line comes after the requirements' install"


def test_eval_fid_ref_removes_what_a_killed_ref_of_the_same_file_left(tmp_path, capsys):
    """`eval_fid.py ref --out ref.npz` killed while writing leaves .ref.npz.XXXXXXXX.tmp; the next
    ref to the same file removes it (its writer is dead: nobody holds its flock) and only it."""
    import eval_fid
    from plumbing import classifier
    clf, shapes = str(tmp_path / "clf.pt"), ["--dataset", "shapes", "--image-size", "16"]
    classifier.main([*shapes, "--out", clf, "--steps", "2", "--batch-size", "8", "--width", "2",
                     "--eval-images", "20", "--device", "cpu"])
    killed = tmp_path / ".ref.npz.k1ll3d00.tmp"  # what the killed writer left, a minute ago or more
    other = tmp_path / ".clf.pt.k1ll3d00.tmp"  # another file's: not ref's to judge
    for path in (killed, other):
        path.write_bytes(b"half a reference")
        os.utime(path, (0, 0))
    eval_fid.main(["ref", *shapes, "--features", "clf", "--clf", clf, "--max-images", "40",
                   "--out", str(tmp_path / "ref.npz"), "--device", "cpu"])
    assert not killed.exists() and other.exists() and (tmp_path / "ref.npz").is_file()
    assert "removed 1 temporary file(s) a killed writer of it left" in capsys.readouterr().out
