"""bench/compare.py: entries, slugs, the verdict rule, and a smoke run that caches its training."""
import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare  # noqa: E402
import compare_report  # noqa: E402
import experiment  # noqa: E402

SMOKE = ["--dataset", "shapes", "--image-size", "16", "--steps", "4", "--batch-size", "8", "--warmup", "2",
         "--ema", "0.9", "--checkpoints", "2", "--n", "40", "--nfe", "1,2", "--features", "clf", "--clf-steps", "3",
         "--clf-width", "4", "--ref-images", "200", "--max-images", "300", "--straight-n", "4"]


# entry on the command line -> (its training folder's slug, its name in the tables), written by hand
SLUGS = {
    "gaussian": ("gaussian", "gaussian"),
    "kmeans:k=16": ("kmeans-k16", "kmeans:k=16"),
    "class:sigma=0.5": ("class-sigma0.5", "class:sigma=0.5"),
    "class:sigma=0.5,cov=diag": ("class-covdiag-sigma0.5", "class:cov=diag,sigma=0.5"),
    "gaussian:coupling=ot": ("gaussian-coupling_ot", "gaussian:coupling=ot"),
    "gaussian:coupling=class_ot": ("gaussian-coupling_class_ot", "gaussian:coupling=class_ot"),
    "gaussian:coupling=independent": ("gaussian", "gaussian"),
    "class:cfg=2": ("class", "class:cfg=2"),
    "class:null_source=class": ("class-null_source_class", "class:null_source=class"),
}


@pytest.mark.parametrize("entry", SLUGS)
def test_slug_and_label(entry):
    method = compare.parse_method(entry)
    assert (method.slug, method.label) == SLUGS[entry]


@pytest.mark.parametrize("entry, message", [
    ("nosuch", "unknown prior 'nosuch'"),
    ("kmeans:k=abc", "expected a finite int"),
    ("kmeans:rank=8", "takes key=value with key one of"),
    ("kmeans:k", "is not key=value"),
    ("gaussian:coupling=sinkhorn", "coupling='sinkhorn': choose one of independent, ot, class_ot"),
    ("gaussian:cfg=abc", "cfg='abc'"),
    ("gaussian:null_source=nowhere", "null_source='nowhere'"),
    ("kmeans:k=4,k=8", "k is given twice"),
])
def test_bad_entries_are_one_line_errors(entry, message):
    with pytest.raises(ValueError, match="--priors") as err:
        compare.parse_method(entry)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_duplicates_and_unknown_baseline_are_refused(tmp_path):
    with pytest.raises(ValueError, match="names kmeans:k=4 twice"):
        compare.main(["--priors", "kmeans:k=4", "gaussian", "kmeans:k=4", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--baseline class is not one of"):
        compare.main(["--priors", "gaussian", "kmeans", "--baseline", "class", "--out", str(tmp_path)])
    assert not (tmp_path / "train").exists()  # refused before anything is trained


def test_verdict_rule():
    below = compare_report.verdict("mine", "gaussian", [3.0, 3.2], [5.8, 6.0])
    assert below.startswith("mine below gaussian by more than the seed spread (3.1 vs 5.9")
    assert "within the seed spread" in compare_report.verdict("mine", "gaussian", [3.0, 5.0], [4.5, 5.5])
    assert "above gaussian by more than" in compare_report.verdict("mine", "gaussian", [8.0, 8.2], [5.8, 6.0])
    one = compare_report.verdict("mine", "gaussian", [3.0], [5.0, 6.0])
    assert "one seed: no spread to compare" in one and "difference -2.5" in one
    # the sum of the spreads, not the larger one: 1.0 apart, spreads 0.71 and 0.71 -> within
    assert "within" in compare_report.verdict("a", "b", [0.5, 1.5], [1.5, 2.5])
    assert "below" in compare_report.verdict("a", "b", [0.5, 1.5], [2.0, 3.0, 2.5])
    assert "the lead shrank since step 1 and shrank since step 1" in compare_report.step_verdict("mine", "gaussian",
                                                                                         {1: 0.5, 2: 0.8})
    assert "the lead grew since step 1" in compare_report.step_verdict("mine", "gaussian", {1: 0.9, 2: 0.6})
    assert "the lead held since step 1" in compare_report.step_verdict("mine", "gaussian", {1: 0.8, 2: 0.86})
    # shrinks early, then holds: the MNIST kmeans run's shape (middle of 8 steps: the 4th)
    early = dict(zip(range(500, 4001, 500), (0.28, 0.38, 0.44, 0.46, 0.43, 0.45, 0.45, 0.43)))
    assert "the lead shrank since step 500 and held since step 2000" in compare_report.step_verdict("k", "g", early)
    assert "not ahead" in compare_report.step_verdict("mine", "gaussian", {1: 0.8, 2: 1.1})


def test_smoke_run_caches_training_and_refuses_another_budget(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = [*SMOKE, "--priors", "gaussian", "class:cfg=2", "class", "--seeds", "0,1", "--out", str(out)]
    report = compare.main(argv).read_text()
    assert sorted(p.name for p in (out / "train").iterdir()) == ["class_seed0", "class_seed1", "gaussian_seed0",
                                                                  "gaussian_seed1"]
    record = json.loads((out / "train" / "class_seed1" / "method.json").read_text())
    assert record == {"prior": "class", "prior_options": {}, "coupling": "independent", "seed": 1,
                      "budget": {"preset": "tiny", "steps": 4, "batch_size": 8, "lr": 0.001, "warmup": 2, "ema": 0.9,
                                 "label_dropout": 0.1, "checkpoints": 2, "image_size": 16, "max_images": 300}}
    assert sorted(p.name for p in (out / "train" / "class_seed1").glob("ckpt_*.pt")) == ["ckpt_0000002.pt",
                                                                                        "ckpt_0000004.pt"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    # 3 methods x 2 seeds at the final step (cfg 2 cannot spend NFE 1) + NFE 2 at the first step
    assert len(rows) == 2 * (2 + 1 + 2) + 3 * 2 and {r["metric"] for r in rows} == {"FD-clf"}
    assert "NFE 2: class below gaussian" in report or "NFE 2: class within the seed spread" in report \
        or "NFE 2: class above gaussian" in report
    assert not list((out / "grids").glob("*seed1*"))  # grids of the first training seed only
    for name in ("fd_vs_nfe.png", "fd_vs_step.png", "grids/class-cfg2_seed0_nfe2.png",
                 "grids/gaussian_seed0_nfe1.png", "grids/class_seed0.png"):
        assert (out / name).is_file(), name

    def refuse(*args, **kwargs):
        raise AssertionError("trained or measured again")
    monkeypatch.setattr(experiment.train, "train", refuse)
    monkeypatch.setattr(experiment.Evaluator, "point", refuse)
    compare.main(argv)  # everything cached: nothing trained, nothing measured
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"gaussian_seed0 was trained for another configuration \(budget.lr 0.001 "
                                         r"there, 0.002 here\): use another --out"):
        compare.main([*argv, "--lr", "0.002"])


def test_two_drivers_in_one_out_keep_each_others_points(tmp_path):
    # Two compare.py runs in one --out (other --priors each, one per core): each loaded results.json
    # before the other measured anything; the points of both must be in the file afterwards.
    path = tmp_path / "results.json"
    first, second = experiment.Results(path), experiment.Results(path)
    first.put("point/gaussian_seed0/step4/euler/1", {"fd": 3.0})
    second.put("point/class_seed0/step4/euler/1", {"fd": 2.0})
    first.put("point/gaussian_seed0/step4/euler/2", {"fd": 1.0})
    assert json.loads(path.read_text()) == {"point/gaussian_seed0/step4/euler/1": {"fd": 3.0},
                                            "point/class_seed0/step4/euler/1": {"fd": 2.0},
                                            "point/gaussian_seed0/step4/euler/2": {"fd": 1.0}}
    assert (first.added, second.added) == (2, 1)
    assert experiment.Results(path).get("point/class_seed0/step4/euler/1", lambda: {"fd": -1.0}) == {"fd": 2.0}


def test_reflow_entries_make_pairs_fine_tune_and_report_their_compute(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = [*SMOKE, "--priors", "gaussian", "gaussian:reflow=8", "gaussian:longer=8", "--out", str(out),
            "--reflow-nfe", "2", "--reflow-steps", "4", "--reflow-checkpoints", "2", "--nfe", "1", "--step-nfe", "1"]
    report = compare.main(argv).read_text()
    assert sorted(p.name for p in (out / "train").iterdir()) == ["gaussian-longer8_seed0", "gaussian-reflow8_seed0",
                                                                  "gaussian_seed0"]
    spec = json.loads((out / "pairs" / "gaussian_seed0_midpoint2_n8" / "pairs.json").read_text())
    assert spec["count"] == 8 and spec["nfe"] == 2 and spec["teacher"]["step"] == 4  # the trained run's final step
    assert spec["teacher"]["checkpoint"].endswith("gaussian_seed0/ckpt_0000004.pt")
    # the reflowed run counts its fine-tuning after its teacher's 4 steps; the control trains on for the same
    # compute: 4 steps, and 8 pairs x 2 evaluations at 3 per training image of batch 8: ceil(16 / 24) = 1 step
    assert sorted(p.name for p in (out / "train" / "gaussian-reflow8_seed0").glob("ckpt_*.pt")) == \
        ["ckpt_0000002.pt", "ckpt_0000004.pt"]
    assert sorted(p.name for p in (out / "train" / "gaussian-longer8_seed0").glob("ckpt_*.pt")) == \
        ["ckpt_0000006.pt", "ckpt_0000009.pt"]
    record = json.loads((out / "train" / "gaussian-reflow8_seed0" / "method.json").read_text())
    assert record["reflow"] == {"pairs": 8, "nfe": 2, "solver": "midpoint", "steps": 4, "lr": 2e-4,
                                "t_dist": "uniform", "checkpoints": 2}
    rows = {(r["method"], int(r["step"])) for r in csv.DictReader((out / "results.csv").open())}
    assert {("gaussian:reflow=8", 8), ("gaussian:reflow=8", 6), ("gaussian:longer=8", 9)} <= rows
    # compute: 4 x 8 training images, + 4 x 8 of fine-tuning and 16 pair evaluations; the control 9 x 8
    assert "| gaussian:reflow=8 | 64 | 16 | 208 |" in report and "| gaussian:longer=8 | 72 | 0 | 216 |" in report

    def refuse(*args, **kwargs):
        raise AssertionError("trained or measured again")
    monkeypatch.setattr(experiment.train, "train", refuse)
    monkeypatch.setattr(experiment.Evaluator, "point", refuse)
    monkeypatch.setattr(experiment.sample, "make_pairs", refuse)
    compare.main(argv)  # cached: no pairs, training or measuring again
