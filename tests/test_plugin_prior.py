"""A fork's new prior is one class and one registry entry: nothing else changes.

The prior below is defined here, in the test, registered in prior.PRIORS, and then trained and
sampled through train.py and sample.py as they are, with an option of its own (--prior-opt).
It reads the data twice in fit (the interface promises a re-iterable), keeps a per-class
offset, and uses the training image when it draws x0 (a data-dependent coupling); every one
of those must reach it without an edit anywhere else.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from plumbing import conditions, data, stats
from plumbing.config import Config
from plumbing.priorcache import data_fingerprint, fit_prior, load_prior, prior_code
import prior
import sample
import train

QUICK = ["--preset", "tiny", "--max-images", "40", "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
         "--device", "cpu", "--warmup", "2"]


class ShiftPrior(prior.Prior):
    """x0 = offset_c + noise, offset_c = `shift` times the class id; at training time the noise is
    pulled half-way towards the image (x1 given). Fitted in two passes: counts, then a check."""

    name = "shift"

    def __init__(self, shift: float = 0.1, pull: bool = True):
        self.shift, self.pull = float(shift), bool(pull)
        self.counts: np.ndarray | None = None
        self.passes, self.shape, self.num_classes = 0, (), 0

    def fit(self, batches, num_classes: int, dataset: str = "") -> ShiftPrior:
        self.counts, self.num_classes = np.zeros(num_classes, np.int64), num_classes
        for _ in range(2):  # a second pass: the batches must be re-iterable
            self.passes += 1
            seen = 0
            for images, cond in batches:
                self.shape = tuple(images.shape[1:])
                if self.passes == 1:
                    self.counts += np.bincount(cond.cpu().numpy(), minlength=num_classes)
                seen += len(images)
            assert seen == self.counts.sum()
        return self

    def sample(self, cond, generator=None, null=None, x1=None):
        conditions.check_cond(cond, self.num_classes, vectors=False)
        x0 = torch.randn((len(cond), *self.shape), generator=generator, device=cond.device)
        x0 = x0 + self.shift * cond.view(-1, *[1] * len(self.shape)).float()
        return x0 if x1 is None or not self.pull else 0.5 * (x0 + x1)

    def state_dict(self) -> dict:
        return {"name": self.name, "shift": self.shift, "pull": self.pull, "counts": self.counts,
                "passes": self.passes, "shape": np.array(self.shape)}

    @classmethod
    def from_state_dict(cls, state: dict) -> ShiftPrior:
        fitted = cls(float(state["shift"]), bool(state["pull"]))
        fitted.counts, fitted.passes = np.asarray(state["counts"]), int(state["passes"])
        fitted.shape, fitted.num_classes = tuple(int(s) for s in state["shape"]), len(fitted.counts)
        return fitted


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(prior.PRIORS, "shift", ShiftPrior)


def test_a_prior_defined_here_trains_and_samples_through_the_scripts(registered, tmp_path, monkeypatch):
    seen = {}
    real_loss = train.flow.flow_loss

    def spy(network, x0, x1, cond, null, t, sigma_min):  # what the training step drew
        seen.setdefault("x0", x0.detach().clone())
        seen.setdefault("x1", x1.detach().clone())
        seen.setdefault("cond", cond.clone())
        return real_loss(network, x0, x1, cond, null, t, sigma_min)

    monkeypatch.setattr(train.flow, "flow_loss", spy)
    out = tmp_path / "run"
    train.train(train.parse_args([*QUICK, "--steps", "2", "--out", str(out), "--prior", "shift",
                                  "--prior-opt", "shift=3.0", "--label-dropout", "0"]))
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    state = checkpoint["prior"]["state"]
    assert checkpoint["config"]["prior_options"] == {"shift": 3.0}  # the option reached the constructor
    assert float(state["shift"]) == 3.0 and int(state["passes"]) == 2 and int(state["counts"].sum()) == 40
    # training drew x0 with the image: x0 = (noise + 3 c + x1) / 2, so 2 x0 - x1 - 3 c is N(0, 1)
    residual = 2 * seen["x0"] - seen["x1"] - 3.0 * seen["cond"].view(-1, 1, 1, 1).float()
    assert abs(float(residual.mean())) < 0.05 and abs(float(residual.std()) - 1) < 0.05
    # the statistics cache holds its state, keyed by its options
    cached = np.load(out / "prior_stats.npz")
    assert str(cached["name"]) == "shift" and float(cached["shift"]) == 3.0

    sample.main(["--ckpt", str(out / "ckpt.pt"), "--nfe", "2", "--n", "2", "--classes", "0,4"])
    with np.load(next(out.glob("samples_*.npz"))) as arrays:
        assert arrays["arr_0"].shape == (4, 32, 32, 3) and arrays["arr_1"].tolist() == [0, 0, 4, 4]
    # sampling draws without the image: the offset alone
    model, loaded, _ = sample.load_checkpoint(out / "ckpt.pt", "cpu")
    x0 = sample.prior_noise(loaded, torch.tensor([4] * 200), list(range(200)))
    assert isinstance(loaded, ShiftPrior) and abs(float(x0.mean()) - 12.0) < 0.05


def test_an_unknown_option_of_the_new_prior_is_named(registered, tmp_path):
    with pytest.raises(ValueError, match="prior 'shift' takes key=value with key one of: shift=0.1, pull=True"):
        train.parse_args([*QUICK, "--out", str(tmp_path), "--prior", "shift", "--prior-opt", "scale=2"])


def test_the_new_prior_is_listed_in_the_help(registered, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "shift" in prior.PRIORS  # the expected list is the registry's, whatever a fork adds to it
    assert f"one of: {', '.join(prior.PRIORS)} (default: class)" in shown


# ----------------------------------------------------------------------------- a fork's first prior
# A per-class PCA prior as a fork would write it, touching nothing but its class and PRIORS:
#     x0 = mu_c + sum_i s_ci z_i u_ci + r_c * noise
# (the class mean, its top `rank` principal directions u_ci scaled by their std s_ci, and the
# residual std r_c). Then the mistakes a first draft makes, each named in one line by train.py.

class PCAPrior(prior.Prior):
    name = "pca"
    fitted = ("means", "directions", "scales", "residual", "explained")  # explained: a plain float

    def __init__(self, rank: int = 8, keep: int = 64):
        self.rank, self.keep = int(rank), int(keep)
        self.means = self.directions = self.scales = self.residual = self.explained = None

    @property
    def shape(self):
        return tuple(self.means.shape[1:])

    @property
    def num_classes(self):
        return len(self.means)

    def fit(self, batches, num_classes, dataset=""):
        kept = [[] for _ in range(num_classes)]  # the first `keep` images of each class
        for images, labels in batches:  # uint8 (N, C, H, W) on the training device
            x = stats.model_space(images).flatten(1)
            for c in range(num_classes):
                kept[c].append(x[labels == c][:self.keep - sum(map(len, kept[c]))])
        size = x.shape[1]
        means, directions = np.zeros((num_classes, size)), np.zeros((num_classes, self.rank, size))
        scales, residual, shares = np.zeros((num_classes, self.rank)), np.zeros(num_classes), []
        for c, rows in enumerate(kept):
            rows = torch.cat(rows).cpu().numpy()
            means[c] = rows.mean(0)
            _, singular, vt = np.linalg.svd(rows - means[c], full_matrices=False)
            r = min(self.rank, len(singular))
            variances = singular ** 2 / len(rows)
            directions[c, :r], scales[c, :r] = vt[:r], np.sqrt(variances[:r])
            residual[c] = np.sqrt(max(variances[r:].sum(), 1e-6) / (size - r))
            shares.append(variances[:r].sum() / max(variances.sum(), 1e-12))
        self.means, self.directions = means.reshape(num_classes, *images.shape[1:]), directions
        self.scales, self.residual, self.explained = scales, residual, float(np.mean(shares))
        self.dataset = dataset
        return self

    def sample(self, cond, generator=None, null=None, x1=None):
        conditions.check_cond(cond, self.num_classes, vectors=False)
        device = cond.device
        means, directions, scales, residual = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in
                                               (self.means, self.directions, self.scales, self.residual))
        z = torch.randn((len(cond), self.rank), generator=generator, device=device)
        noise = torch.randn((len(cond), *self.shape), generator=generator, device=device)
        low = torch.einsum("nr,nrd->nd", z * scales[cond], directions[cond]).view(len(cond), *self.shape)
        return means[cond] + low + residual[cond].view(-1, *[1] * len(self.shape)) * noise


def test_a_pca_prior_written_by_a_fork_trains_and_samples(tmp_path, monkeypatch):
    monkeypatch.setitem(prior.PRIORS, "pca", PCAPrior)
    out = tmp_path / "run"
    train.train(train.parse_args([*QUICK, "--steps", "2", "--out", str(out), "--prior", "pca",
                                  "--prior-opt", "rank=2"]))
    state = torch.load(out / "ckpt.pt", weights_only=True)["prior"]["state"]
    assert state["directions"].shape == (10, 2, 3 * 32 * 32) and isinstance(state["explained"], float)
    loaded = load_prior(out / "prior_stats.npz", PCAPrior)
    assert type(loaded.explained) is float and 0 < loaded.explained <= 1  # a number comes back a number
    sample.main(["--ckpt", str(out / "ckpt.pt"), "--nfe", "2", "--n", "2", "--classes", "0,4"])
    with np.load(next(out.glob("samples_*.npz"))) as arrays:
        assert arrays["arr_0"].shape == (4, 32, 32, 3)


class ForgetsDirections(PCAPrior):  # sets self.directions in fit, but leaves it out of fitted
    fitted = ("means", "scales", "residual", "explained")


class ShapeSetInFit(PCAPrior):  # the first draft: shape kept as set in fit (Prior's default is ())
    shape = prior.Prior.shape

    def fit(self, batches, num_classes, dataset=""):
        super().fit(batches, num_classes, dataset)
        self.shape = tuple(self.means.shape[1:])
        return self


class ShapeInFitted(ShapeSetInFit):  # ... and its fix: a tuple of numbers in fitted
    fitted = PCAPrior.fitted + ("shape",)


class TensorFitted(PCAPrior):
    def fit(self, batches, num_classes, dataset=""):
        super().fit(batches, num_classes, dataset)
        self.residual = torch.from_numpy(self.residual)
        return self


class NamesFitted(PCAPrior):
    fitted = PCAPrior.fitted + ("kind",)

    def fit(self, batches, num_classes, dataset=""):
        self.kind = "pca"
        return super().fit(batches, num_classes, dataset)


class ListsUnset(PCAPrior):
    fitted = PCAPrior.fitted + ("basis",)


@pytest.mark.parametrize("kind,message", [
    (ForgetsDirections, r"prior 'pca' set self.directions in fit\(\) but 'directions' is not in fitted: add it to "
                        r"fitted = \(\.\.\.\), or it is lost when the prior is reloaded from prior_stats.npz"),
    (ShapeSetInFit, r"prior 'pca' set self.shape in fit\(\) but 'shape' is not in fitted"),
    (TensorFitted, r"prior 'pca': self.residual is a tensor; fitted holds numpy arrays"),
    (NamesFitted, r"prior 'pca': fitted 'kind' is a str, not numbers"),
    (ListsUnset, r"prior 'pca' lists 'basis' in fitted, but its fit\(\) did not set self.basis"),
])
def test_a_first_drafts_mistakes_are_named_after_the_first_fit(tmp_path, monkeypatch, kind, message):
    monkeypatch.setitem(prior.PRIORS, "pca", kind)
    with pytest.raises(ValueError, match=message):
        train.train(train.parse_args([*QUICK, "--steps", "1", "--out", str(tmp_path), "--prior", "pca"]))
    assert not (tmp_path / "prior_stats.npz").exists()  # nothing cached: the next run checks again


def test_a_tuple_in_fitted_comes_back(tmp_path, monkeypatch):
    monkeypatch.setitem(prior.PRIORS, "pca", ShapeInFitted)
    train.train(train.parse_args([*QUICK, "--steps", "1", "--out", str(tmp_path), "--prior", "pca",
                                  "--prior-opt", "rank=1"]))
    assert tuple(load_prior(tmp_path / "prior_stats.npz", ShapeInFitted).shape) == (3, 32, 32)


class EditedPCA(PCAPrior):  # the same prior after an edit of its code
    def fit(self, batches, num_classes, dataset=""):
        super().fit(batches, num_classes, dataset)
        self.residual = self.residual * 0.5  # a changed estimate
        return self


def test_editing_the_priors_code_refits_its_statistics(tmp_path, monkeypatch, capsys):
    def fit(prior_class, **flags):
        monkeypatch.setitem(prior.PRIORS, "pca", prior_class)
        config = Config(prior="pca", out=str(tmp_path), max_images=40, **flags)
        fitted = fit_prior(config, dataset, 40, data_fingerprint(dataset, 40), torch.device("cpu"), 0, 1)
        return capsys.readouterr().out, fitted

    dataset = data.load_dataset("shapes", None, "train")
    printed, first = fit(PCAPrior)
    assert "fitting the pca prior" in printed
    printed, again = fit(PCAPrior)  # the same code: the cached statistics
    assert printed == "" and np.array_equal(again.residual, first.residual)
    printed, edited = fit(EditedPCA)
    assert "was fitted by another version of the pca prior's code: fitting again" in printed
    np.testing.assert_allclose(edited.residual, 0.5 * first.residual)
    assert str(np.load(tmp_path / "prior_stats.npz")["prior_code"]) == prior_code(EditedPCA) != prior_code(PCAPrior)
    with pytest.raises(ValueError, match="--prior-stats .* holds pca prior statistics of another version of the pca prior's code"):
        fit(PCAPrior, prior_stats=str(tmp_path / "prior_stats.npz"))  # a file given by the user is not replaced
    # a class without source (made at run time) is keyed by its name
    assert prior_code(type("Made", (PCAPrior,), {})) != prior_code(PCAPrior)

