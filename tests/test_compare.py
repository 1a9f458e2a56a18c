"""bench/compare.py: entries, slugs, the verdict rule, and a smoke run that caches its training."""
import contextlib
import csv
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

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


# ----------------------------------------------------------------------------- issue 27: the loop a researcher lives in

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One small comparison (1 method, 1 seed, 2 checkpoints), trained with one thread set by
    OMP_NUM_THREADS: (its --out, its argv, what it printed). Tests copy the folder before changing it."""
    out = tmp_path_factory.mktemp("smoke") / "cmp"
    argv = [*SMOKE, "--priors", "gaussian", "--out", str(out)]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("OMP_NUM_THREADS", "1")
        compare.main(argv)
    return out, argv, printed.getvalue()


def copy_of(smoke, tmp_path) -> tuple[Path, list[str]]:
    out, argv, _ = smoke
    shutil.copytree(out, tmp_path / "cmp")
    return tmp_path / "cmp", [*argv[:-1], str(tmp_path / "cmp")]


def refuse(*args, **kwargs):
    raise AssertionError("trained or measured again")


def measured_points(out: Path, n: int) -> dict:
    """The points of the smoke's measurement with --n n, as results.json keeps them."""
    scope = compare.measurement_key({"n": n, "sample_seed": 0, "straight_n": 4, "dataset": "shapes",
                                     "features": "clf", "clf_steps": 3, "clf_width": 4, "ref_images": 200})
    return experiment.Results(out / "results.json", scope).points


def test_what_the_measuring_needs_is_checked_before_training(tmp_path, capsys):
    # 32-d features (--clf-width 4: 8 x 4) need 33 samples for a covariance of full rank
    with pytest.raises(ValueError, match=r"--n 32 samples per point for 32-d features .* use --n 33 or more"):
        compare.main([*SMOKE, "--n", "32", "--priors", "gaussian", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--ref-images 20 of 50000 training images are too few"):
        compare.main([*SMOKE, "--ref-images", "20", "--priors", "gaussian", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--n 10001: the held-out split has 10000 condition vectors"):
        compare.main([*SMOKE, "--n", "10001", "--cond", "attributes", "--priors", "gaussian", "--out", str(tmp_path)])
    try:  # without the Inception weights, --features inception fails now, not after the training
        experiment.inception.find_inception_weights(None)
    except FileNotFoundError:
        with pytest.raises(ValueError, match=r"--features inception: no Inception weights file"):
            compare.main([*SMOKE, "--features", "inception", "--n", "3000", "--priors", "gaussian", "--out",
                          str(tmp_path)])
    assert not (tmp_path / "train").exists()  # refused before anything is trained
    compare.setup([*SMOKE, "--ref-images", "60000", "--priors", "gaussian", "--out", str(tmp_path)])
    assert "warning: --ref-images 60000 but the shapes training split has 50000 images" in capsys.readouterr().out


def test_another_n_measures_the_cached_runs_again_and_keeps_the_old_points(smoke, tmp_path, monkeypatch):
    out, argv = copy_of(smoke, tmp_path)
    before = (out / "results.json").read_text()
    monkeypatch.setattr(experiment.train, "train", refuse)  # the training runs are cached
    names = []
    monkeypatch.setattr(experiment.samplefiles, "save_grid", lambda *args, **kwargs: names.append(args[3]))
    report = compare.main([*argv, "--n", "45"]).read_text()
    after = measured_points(out, 45)
    key = compare.point_key(compare.parse_method("gaussian"), 0, 4, "euler", 2)
    old = json.loads(before)
    assert after[key]["n"] == 45 and all(json.loads((out / "results.json").read_text())[k] == v for k, v in old.items())
    assert measured_points(out, 40)[key]["n"] == 40
    first = after[compare.point_key(compare.parse_method("gaussian"), 0, 4, "euler", 1)]
    assert "45 samples per point" in report
    assert f"| gaussian | {first['value']:.3g} | {after[key]['value']:.3g} |" in report
    # the grids' rows are named by class (shapes has names); MNIST's names are its ids: "3", not "3 3"
    assert names and names[0] == {i: f"{i} {name}" for i, name in enumerate(experiment.data.load_dataset(
        "shapes", None, "train").class_names)}
    assert experiment.row_names([str(d) for d in range(10)], [0, 3]) == {0: "0", 3: "3"}
    # back to --n 40: every point of that measurement is still there
    monkeypatch.setattr(experiment.Evaluator, "point", refuse)
    assert "40 samples per point" in compare.main(argv).read_text()


def test_results_of_an_earlier_version_are_read_as_their_measurement(smoke, tmp_path, monkeypatch):
    out, argv = copy_of(smoke, tmp_path)
    # results.json as the version before keyed it: the points unscoped, their settings in "config"
    points = measured_points(out, 40)
    key = compare.point_key(compare.parse_method("gaussian"), 0, 4, "euler", 1)
    points[key] = {**points[key], "value": 123.0}
    config = {"n": 40, "sample_seed": 0, "features": "clf", "clf_steps": 3, "clf_width": 4, "ref_images": 200,
              "straight_n": 4, "dataset": "shapes"}
    (out / "results.json").write_text(json.dumps({"config": config, **points}))
    monkeypatch.setattr(experiment.train, "train", refuse)
    monkeypatch.setattr(experiment.Evaluator, "point", refuse)
    assert "| gaussian | 123 |" in compare.main(argv).read_text()


def test_the_estimate_times_steps_after_warm_up_and_gives_a_range():
    calls = []

    def step(k):  # the first two (warm-up) steps are slow, as a cold start is
        calls.append(k)
        time.sleep(0.2 if k < 2 else 0.01 * (1 + k % 2))
    seconds = experiment.step_seconds(step, warmup=2, timed=4)
    assert calls == [0, 1, 2, 3, 4, 5] and len(seconds) == 4 and max(seconds) < 0.1
    line = experiment.time_estimate([0.5, 0.6, 1.0], batch_size=32, steps=600, threads="1 CPU thread")
    # median 0.6 s a step: 600 steps 6.0 min, 5.0 at the fastest step, 10.0 at the slowest
    assert line.startswith("about 6.0 min (5.0-10.0) at 53 img/s (32-64 over 3 timed steps") and "1 CPU thread" in line


def test_threads_are_set_as_training_sets_them_for_the_estimate_and_reported(smoke, tmp_path, monkeypatch):
    out, argv = copy_of(smoke, tmp_path)
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    try:
        # cached: the report says what the training used (one thread, by OMP_NUM_THREADS), not this process's
        report = compare.main(argv).read_text()
        assert "training used 1 CPU thread, set by OMP_NUM_THREADS." in report
        # a new run: the steps of the estimate are timed with the threads train.py will use (6 cores: 3)
        seen = []
        monkeypatch.setattr(experiment, "training_step_seconds", lambda *a: seen.append(torch.get_num_threads())
                            or [0.1, 0.1])
        monkeypatch.setattr(experiment, "train_method", refuse)
        torch.set_num_threads(1)
        with pytest.raises(AssertionError, match="trained"):
            compare.main([*argv, "--priors", "kmeans:k=2"])
        assert seen == [3]
    finally:
        torch.set_num_threads(threads)


def test_report_gives_the_numbers_a_reader_compares_with(smoke, tmp_path):
    out, argv, printed = smoke
    report = (out / "report.md").read_text()
    accuracy = torch.load(out / "clf.pt", weights_only=True)["test_accuracy"]
    assert f"held-out accuracy {100 * accuracy:.1f}%" in report
    floor = measured_points(out, 40)["floor/test_images"]
    assert floor["n"] == 40 and f"against the same reference: {floor['value']:.3g}" in report
    assert "Reference: 200 training images" in report and "the offline classifier" in report.split("## ")[0]
    # one header line per training run (1 run of 2 segments), no "done" line per segment
    assert printed.count("writing to") == 1 and "done: " not in printed
    # another process in the same --out trained kmeans for 100 minutes: not this report's time
    copy, argv = copy_of(smoke, tmp_path)
    experiment.Results(copy / "results.json").put("time/train/kmeans-k2_seed0", {"seconds": 6000.0})
    shared = json.loads((copy / "results.json").read_text())
    own = shared["time/train/gaussian_seed0"]["seconds"]
    wall = [line for line in compare.main(argv).read_text().splitlines() if line.startswith("Wall time")][0]
    assert f"training {own / 60:.1f} min" in wall and "100.0" not in wall


def test_another_classifier_is_refused_before_training_and_made_again_once_deleted(smoke, tmp_path, monkeypatch):
    out, argv = copy_of(smoke, tmp_path)
    monkeypatch.setattr(experiment.train, "train", refuse)  # the training runs are cached throughout
    with pytest.raises(ValueError, match=r"clf.pt, ref_clf.npz were made for other settings \(--clf-steps 3 there, "
                                         r"5 here\): pass the same flags, or delete clf.pt and ref_clf.npz"):
        compare.main([*argv, "--clf-steps", "5"])
    with pytest.raises(ValueError, match="holds runs of --dataset mnist: use another --out"):  # files or not
        experiment.check_reference(tmp_path, {"dataset": "mnist"}, {"dataset": "shapes", "clf_steps": 3})
    (out / "clf.pt").unlink()
    (out / "ref_clf.npz").unlink()
    report = compare.main([*argv, "--clf-steps", "5"]).read_text()
    assert torch.load(out / "clf.pt", weights_only=True)["steps"] == 5 and "(5 steps, width 4)" in report
