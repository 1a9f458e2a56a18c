"""bench/reproduce.py: its measures against closed forms, and the whole pipeline at smoke size."""
import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare  # noqa: E402
import experiment  # noqa: E402
import reproduce  # noqa: E402
import train  # noqa: E402


def test_straightness_of_straight_and_curved_fields():
    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    second_moment = float(x0.double().pow(2).mean())
    # a field constant in time moves every point on a straight line: both measures are 0
    shift = torch.randn(3, 4, 4)
    straight = experiment.path_straightness(lambda x, t: shift.expand_as(x), x0, 8)
    assert straight["endpoint_gap"] == pytest.approx(0, abs=1e-10)
    assert straight["straightness"] == pytest.approx(0, abs=1e-10)
    assert straight["chord"] == pytest.approx(float(shift.double().pow(2).mean()), rel=1e-6)
    # v = t: x(t) = x0 + t^2/2, the one-step endpoint is x0; gap (1/2)^2, S = int_0^1 (1/2 - t)^2 dt = 1/12
    ramp = experiment.path_straightness(lambda x, t: t.view(-1, 1, 1, 1).expand_as(x), x0, 64)
    assert ramp["endpoint_gap"] == pytest.approx(0.25, rel=1e-6)
    assert ramp["straightness"] == pytest.approx(1 / 12, rel=1e-3)
    # v = x: x(t) = e^t x0. One midpoint step multiplies by g = 1 + h + h^2/2 exactly, and its stage
    # sits at (1 + h/2) x_k, so the discrete values are known in closed form; both tend to
    # gap (e - 2)^2 E x0^2 and S = E x0^2 int_0^1 (e - 1 - e^t)^2 dt as h -> 0
    steps, e = 32, math.e
    h = 1 / steps
    g = 1 + h + h * h / 2
    grow = experiment.path_straightness(lambda x, t: x, x0, 2 * steps)
    discrete_s = sum(((g ** steps - 1) - (1 + h / 2) * g ** k) ** 2 for k in range(steps)) / steps
    assert grow["endpoint_gap"] == pytest.approx((g ** steps - 2) ** 2 * second_moment, rel=1e-6)
    assert grow["straightness"] == pytest.approx(discrete_s * second_moment, rel=1e-6)
    assert grow["chord"] == pytest.approx((g ** steps - 1) ** 2 * second_moment, rel=1e-6)
    assert grow["endpoint_gap"] == pytest.approx((e - 2) ** 2 * second_moment, rel=1e-2)
    assert grow["straightness"] == pytest.approx(((e * e - 1) / 2 - (e - 1) ** 2) * second_moment, rel=1e-2)


def test_headline_finds_the_fewest_matching_nfe():
    curves = {"class": {1: 50.0, 2: 20.0, 4: 10.0}, "condot": {1: 60.0, 2: 30.0, 4: 15.0, 8: 9.0}}
    lines = reproduce.headline(curves, "FD")
    assert "class prior at 1 NFE (FD 50.00): CondOT first gets as low at 2 NFE" in lines[0]
    assert "class prior at 2 NFE (FD 20.00): CondOT first gets as low at 4 NFE" in lines[1]
    assert "class prior at 4 NFE (FD 10.00): CondOT first gets as low at 8 NFE" in lines[2]
    curves["class"][8] = 5.0
    assert "does not reach it" in reproduce.headline(curves, "FD")[3]


def test_bad_config_and_parts_are_refused():
    with pytest.raises(ValueError, match="unknown --config 'laptop'"):
        reproduce.main(["--config", "laptop"])
    with pytest.raises(ValueError, match="unknown --parts speed"):
        reproduce.main(["--config", "smoke", "--parts", "speed"])


def test_smoke_run_end_to_end_resumes_and_trains_in_exact_segments(tmp_path, monkeypatch):
    out = tmp_path / "smoke"
    # one part alone reports only itself, though it shares the main methods' runs and points
    reproduce.main(["--config", "smoke", "--out", str(out), "--parts", "cov"])
    alone = (out / "report.md").read_text()
    assert "Covariance of the class prior" in alone and "against NFE, midpoint" not in alone
    reproduce.main(["--config", "smoke", "--out", str(out)])
    report = (out / "report.md").read_text()
    for heading in ("FD-clf against NFE at the final step", "FD-clf against NFE, midpoint", "against training steps",
                    "Paths at the final step", "Guidance", "Covariance of the class prior", "Overlapping classes",
                    "Verdicts"):
        assert heading in report
    config = experiment.CONFIGS["smoke"]
    points = compare.measured_points(out, config)
    methods = {entry: compare.parse_method(entry) for entry in reproduce.METHODS}
    for method in methods.values():
        for nfe in config.euler_nfes:
            point = points[compare.point_key(method, 0, config.steps, "euler", nfe)]
            assert point["n"] == config.n and point["metric"] == "FD-clf" and point["value"] >= 0
        assert points[f"straight/{method.slug}_seed0"]["chord"] > 0
        assert compare.point_key(method, 0, config.steps, "midpoint", config.midpoint_nfes[0]) in points
    # the class prior's paths are shorter than N(0, I)'s, even untrained: its means are the data's
    cost = {slug: points[f"cost/{slug}_seed0"]["transport_cost"] for slug in ("gaussian", "class", "class-sigma0.25")}
    assert cost["class-sigma0.25"] < cost["class"] < cost["gaussian"]
    assert (out / "fd_vs_nfe.png").is_file() and (out / "figures" / "toy2d_interleaved.png").is_file()
    assert points["yardstick/test_images"]["n"] == config.n and "Sampling noise" in report
    assert f"cfg/class-null_source_class/{config.cfg_scales[-1]:g}" in points

    # a second run measures nothing again: every point comes from results.json
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a point that was already measured")
    monkeypatch.setattr(experiment.Evaluator, "point", refuse)
    monkeypatch.setattr(experiment.train, "train", refuse)
    reproduce.main(["--config", "smoke", "--out", str(out)])
    assert (out / "report.md").read_text().split("\n", 5)[5] == report.split("\n", 5)[5]  # same, bar the timings
    monkeypatch.undo()

    # trained in two segments (2 + 2 steps, resumed) == trained in one go
    args = argparse.Namespace(dataset="shapes", data_dir=None, seed=0, device=None, compile=False)
    one_go = tmp_path / "one_go"
    train.train(experiment.train_config(config, args, one_go, config.steps, methods["gaussian"].training()))
    segmented = torch.load(out / "train" / "gaussian_seed0" / f"ckpt_{config.steps:07d}.pt", weights_only=True)
    whole = torch.load(one_go / "ckpt.pt", weights_only=True)
    for key, value in whole["ema"].items():
        assert torch.equal(value, segmented["ema"][key]), key
