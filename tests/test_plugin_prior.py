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

from plumbing import conditions
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
    assert "gaussian, class, kmeans, mapper, shift" in " ".join(capsys.readouterr().out.split())
