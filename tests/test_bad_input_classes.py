"""Classes of bad input, each checked by several members (not one example): image modes, dataset
files with no images or NaN labels, prior options the data cannot serve, priors that cannot serve
the condition kind, guidance without a trained null condition, --cond-file, resume flags and steps,
a reference's classifier path, flag ranges. In-process where the message is the point; two
subprocesses prove the one-line / exit-2 behaviour end to end.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval_fid
import prior as priors
import sample
import train
from plumbing import conditions, config as run_config, data, features, readers, samplefiles
from plumbing.classifier import Classifier

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--max-images", "20", "--batch-size", "8", "--log-every", "1", "--sample-every", "0",
         "--device", "cpu", "--warmup", "2"]


# ---------------------------------------------------------------- 1. every pillow mode to 8 bits

def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 257 * 128, 65535]], np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(readers.read_image(path)).tolist() == [[0, 128, 255]]  # value >> 8
    # a folder dataset of a constant 16-bit image, and a folder of samples
    (tmp_path / "set" / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 257 * 200, np.uint16)).save(tmp_path / "set" / "a" / "0.png")
    Image.fromarray(np.full((8, 8), 200 * 256 + 255, np.uint16)).save(tmp_path / "set" / "a" / "1.png")
    images, _ = data.load_dataset("folder", tmp_path / "set", image_size=8).get(np.arange(2))
    assert (images == 200).all()
    samples, _ = samplefiles.load_samples(tmp_path / "set" / "a")
    assert samples.shape == (2, 1, 8, 8) and (samples == 200).all()


@pytest.mark.parametrize("mode, value, expected", [
    ("I", 70, 70),  # 32-bit ints within 0..255: as they are
    ("I", 257 * 90, 90),  # above 255: 16-bit, >> 8
    ("F", 0.5, 128),  # floats in 0..1: round(255 v)
    ("1", 1, 255),
    ("L", 77, 77),
    ("RGBA", (0, 0, 0, 0), (255, 255, 255)),  # transparent: white
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("LA", (40, 0), 255),
    ("LA", (40, 255), 40),
    ("PA", (0, 0), (255, 255, 255)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ("YCbCr", (128, 128, 128), (128, 128, 128)),
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("LAB", (255, 128, 128), (254, 255, 254)),
])
def test_each_mode_maps_to_its_8_bit_value(mode, value, expected):
    if mode in ("I", "F"):
        image = Image.fromarray(np.full((2, 2), value, np.int32 if mode == "I" else np.float32), mode)
    else:
        image = Image.new(mode, (2, 2), value)
    out = readers.to_8bit(image, Path("x.png"))
    assert out.mode in ("L", "RGB")
    pixel = np.asarray(out)[0, 0]
    assert pixel.tolist() == (list(expected) if isinstance(expected, tuple) else expected)


def test_a_transparent_palette_pixel_is_white():
    image = Image.new("P", (2, 2), 3)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 3
    assert np.asarray(readers.to_8bit(image, Path("p.png"))).min() == 255


@pytest.mark.parametrize("make, match", [
    (lambda: Image.fromarray(np.full((2, 2), 2.0, np.float32), "F"), "mode F.*outside 0..1"),
    (lambda: Image.fromarray(np.full((2, 2), np.nan, np.float32), "F"), "mode F"),
    (lambda: Image.fromarray(np.full((2, 2), 70000, np.int32), "I"), "mode I.*outside 0..65535"),
    (lambda: Image.new("La", (2, 2)), "odd.png: images of pillow mode La are not read"),
])
def test_modes_without_a_rule_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        readers.to_8bit(make(), Path("odd.png"))


def test_a_float_tiff_out_of_range_is_refused_naming_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 300.0, np.float32), "F").save(tmp_path / "a" / "f.tif")
    with pytest.raises(ValueError, match="f.tif: float image"):
        data.load_dataset("folder", tmp_path)


# ---------------------------------------------------------------- 2. dataset files: counts, NaN, shapes

def write_embeddings(folder: Path, images: np.ndarray, vectors: np.ndarray, labels=None) -> None:
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(folder / "train_images.npz", **arrays)
    np.save(folder / "train_cond.npy", vectors)


GOOD_IMAGES, GOOD_VECTORS = np.zeros((3, 8, 8, 3), np.uint8), np.zeros((3, 4), np.float32)


@pytest.mark.parametrize("images, vectors, labels, match", [
    (np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 4), np.float32), None, "train_images.npz: arr_0 holds no images"),
    (GOOD_IMAGES, GOOD_VECTORS, np.array([0.0, np.nan, 1.0]), r"train_images.npz \(arr_1\): class ids must be whole"),
    (GOOD_IMAGES, GOOD_VECTORS, np.array([0.0, 1.5, 1.0]), r"train_images.npz \(arr_1\): class ids must be whole"),
    (GOOD_IMAGES, GOOD_VECTORS, np.array([0, -1, 1]), r"train_images.npz \(arr_1\): class ids must be >= 0"),
    (GOOD_IMAGES, GOOD_VECTORS, np.array([0, 1]), r"train_images.npz \(arr_1\): 2 class ids for 3 images"),
    (GOOD_IMAGES, GOOD_VECTORS, np.array(["a", "b", "c"]), r"train_images.npz \(arr_1\): class ids must be whole"),
    (GOOD_IMAGES, np.zeros((3, 0), np.float32), None, "train_cond.npy: should hold finite float vectors"),
    (GOOD_IMAGES, np.zeros(3, np.float32), None, "train_cond.npy: should hold finite float vectors"),
    (GOOD_IMAGES, np.array([[0, 0, 0, 0], [0, np.nan, 0, 0], [0, 0, 0, 0]], np.float32), None,
     "train_cond.npy: row 1"),
    (np.zeros((3, 8, 8, 3), np.float32), GOOD_VECTORS, None, "train_images.npz: arr_0 should be uint8"),
])
def test_embeddings_files(tmp_path, images, vectors, labels, match):
    write_embeddings(tmp_path, images, vectors, labels)
    with pytest.raises(ValueError, match=match):
        data.load_dataset("embeddings", str(tmp_path), "train")


def test_embeddings_npz_without_arr_0_and_a_text_cond_file(tmp_path):
    np.savez(tmp_path / "train_images.npz", images=GOOD_IMAGES)
    np.save(tmp_path / "train_cond.npy", GOOD_VECTORS)
    with pytest.raises(ValueError, match="train_images.npz: .*no arr_0"):
        data.load_dataset("embeddings", str(tmp_path), "train")
    write_embeddings(tmp_path, GOOD_IMAGES, GOOD_VECTORS)
    (tmp_path / "train_cond.npy").write_text("0.1 0.2\n")
    with pytest.raises(ValueError, match="train_cond.npy: not a readable .npy"):
        data.load_dataset("embeddings", str(tmp_path), "train")


def test_other_readers_refuse_empty_files(tmp_path):
    import pickle
    (tmp_path / "cifar").mkdir()
    batch = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    (tmp_path / "cifar" / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match="test_batch: b'data' holds no images"):
        data.load_dataset("cifar10", tmp_path / "cifar", "test")
    (tmp_path / "imnet").mkdir()
    np.savez(tmp_path / "imnet" / "val_data.npz", data=np.zeros((0, 3072), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="val_data.npz: 'data' holds no images"):
        data.load_dataset("imagenet32", tmp_path / "imnet", "test")
    np.savez(tmp_path / "imnet" / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="val_data.npz: labels must be whole numbers"):
        data.load_dataset("imagenet32", tmp_path / "imnet", "test")


# ---------------------------------------------------------------- 3. priors vs. the data and the condition kind

def test_kmeans_k_is_bounded_by_the_smallest_class_before_the_fit(tmp_path, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("the fit started")
    monkeypatch.setattr(priors.KMeansPrior, "fit", no_fit)
    with pytest.raises(ValueError, match="--prior-opt k=40000: class 0 has only 2 images; k must be at most 2"):
        train.train(train.parse_args([*QUICK, "--prior", "kmeans", "--prior-opt", "k=40000", "--out", str(tmp_path)]))


@pytest.mark.parametrize("argv, match", [
    (["--prior", "kmeans", "--cond", "attributes"],
     "--prior kmeans needs class ids, but --dataset shapes --cond attributes gives condition vectors: use --prior "
     "gaussian or mapper"),
    (["--prior", "class", "--cond", "attributes"], "--prior class needs class ids"),
    (["--prior", "class", "--dataset", "embeddings"], "--prior class needs class ids.*--dataset embeddings"),
    (["--prior", "mapper"], "--prior mapper needs condition vectors, but --dataset shapes gives class ids"),
    (["--prior", "mapper", "--dataset", "mnist"], "--prior mapper needs condition vectors"),
])
def test_a_prior_that_cannot_serve_the_condition_is_refused_before_loading(argv, match, monkeypatch):
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ValueError, match=match):
        train.train(train.parse_args([*QUICK, *argv]))


def test_a_wrong_cond_is_named_before_the_prior_check():
    with pytest.raises(ValueError, match="shapes: unknown --cond 'colour'"):
        run_config.check_config(train.parse_args(["--prior", "mapper", "--cond", "colour"]))
    with pytest.raises(ValueError, match="--cond applies to shapes only, not mnist"):
        run_config.check_config(train.parse_args(["--prior", "mapper", "--dataset", "mnist", "--cond", "attributes"]))


def test_class_prior_min_count_is_checked_before_the_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(priors.ClassPrior, "fit", lambda *a, **k: pytest.fail("the fit started"))
    with pytest.raises(ValueError, match=r"class 0 has 2 image\(s\) but the class prior needs at least 3.*min_count"):
        train.train(train.parse_args([*QUICK, "--prior-opt", "min_count=3", "--out", str(tmp_path)]))


def test_condition_kinds_of_the_priors_and_a_forks_default():
    assert priors.GaussianPrior.conditions == ("classes", "vectors") == priors.Prior.conditions
    assert priors.ClassPrior.conditions == priors.KMeansPrior.conditions == ("classes",)
    assert priors.MapperPrior.conditions == ("vectors",)

    class Fork(priors.Prior):  # no attribute: the base class's (both), never refused up front
        name = "fork"
    monkey = dict(priors.PRIORS)
    try:
        priors.PRIORS["fork"] = Fork
        run_config.check_prior_serves(train.parse_args(["--prior", "fork", "--cond", "attributes"]))
        run_config.check_prior_serves(train.parse_args(["--prior", "fork"]))
    finally:
        priors.PRIORS.clear()
        priors.PRIORS.update(monkey)


def test_prior_option_errors_name_the_flag():
    with pytest.raises(ValueError, match="--prior kmeans --prior-opt k=0: kmeans needs k >= 1"):
        run_config.check_config(train.parse_args(["--prior", "kmeans", "--prior-opt", "k=0"]))


# ---------------------------------------------------------------- 4 and 6. guidance without a null; resume

@pytest.fixture(scope="module")
def no_dropout_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("no_dropout")
    train.train(train.parse_args([*QUICK, "--steps", "1", "--label-dropout", "0", "--out", str(out)]))
    return out


def test_guidance_needs_label_dropout(no_dropout_run):
    message = ("--cfg 2 needs a model trained with --label-dropout > 0; this checkpoint .* was trained with "
               "--label-dropout 0: use --cfg 1")
    with pytest.raises(ValueError, match=message):
        sample.main(["--ckpt", str(no_dropout_run / "ckpt.pt"), "--cfg", "2", "--nfe", "2", "--n", "1"])
    conditions.check_guidance(1.0, {"label_dropout": 0.0})  # no guidance: fine
    conditions.check_guidance(2.0, {"label_dropout": 0.1})
    conditions.check_guidance(2.0, {})  # an old checkpoint without the key: not refused


def test_resume_steps_must_go_beyond_the_checkpoint(no_dropout_run):
    with pytest.raises(ValueError, match=r"--steps 1 is not beyond the checkpoint's step 1.*give --steps > 1"):
        train.train(train.parse_args(["--out", str(no_dropout_run), "--resume", "--steps", "1"]))
    with pytest.raises(ValueError, match=r"the run's --steps 1 \(kept from the checkpoint\) is not beyond"):
        train.train(train.parse_args(["--out", str(no_dropout_run), "--resume"]))


def test_resume_messages_name_real_flags(no_dropout_run):
    for argv, named in ((["--image-size", "16"], "--image-size 16"), (["--prior-opt", "sigma=0.5"], "--prior-opt")):
        with pytest.raises(ValueError) as caught:
            run_config.load_resume(train.parse_args(["--out", str(no_dropout_run), "--resume", *argv]))
        assert named in str(caught.value) and "--resize-to" not in str(caught.value)
        assert "--prior-options" not in str(caught.value)


def test_every_config_field_maps_to_a_flag_the_parser_has():
    names = run_config.flag_names()
    options = {option for action in run_config.build_parser()._actions for option in action.option_strings}
    assert names["resize_to"] == "--image-size" and names["prior_options"] == "--prior-opt"
    for key in run_config.RUN_KEYS + run_config.RESUMABLE:
        assert names[key] in options, key
    with pytest.raises(ValueError, match="--image-size must be at least 8"):
        run_config.check_config(train.parse_args(["--image-size", "4"]))


# ---------------------------------------------------------------- 5. --cond-file and --conditions

def write(path: Path, array=None, text=None) -> str:
    if text is not None:
        path.write_text(text)
    elif path.suffix == ".npz":
        np.savez(path, array)
    else:
        np.save(path, array, allow_pickle=True)
    return str(path)


@pytest.mark.parametrize("name, array, text, match", [
    ("wide.npy", np.zeros((2, 5), np.float32), None, r"shape \(2, 5\), but this checkpoint takes 4-d"),
    ("nan.npy", np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]], np.float32), None, "row 1 holds NaN or inf"),
    ("flat.npy", np.zeros(4, np.float32), None, r"a 1-D array of shape \(4,\).*vector\[None\]"),
    ("other_flat.npy", np.zeros(7, np.float32), None, r"shape \(7,\), but this checkpoint takes 4-d"),
    ("archive.npz", np.zeros((2, 4), np.float32), None, "an .npz archive"),
    ("words.npy", np.array([["a"] * 4]), None, "holds strings, not numbers"),
    ("empty.npy", np.zeros((0, 4), np.float32), None, "holds no rows"),
    ("text.npy", None, "0.1 0.2 0.3 0.4\n", "not an .npy file"),
    ("objects.npy", np.array([[object()] * 4], dtype=object), None, "holds Python objects"),
])
def test_cond_file_problems_name_the_flag_and_file(tmp_path, name, array, text, match):
    path = write(tmp_path / name, array, text)
    with pytest.raises(ValueError, match=match) as caught:
        conditions.read_vectors(path, 4)
    message = str(caught.value)
    assert message.startswith(f"--cond-file {path}") and "allow_pickle" not in message


def test_cond_file_missing_or_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--cond-file .*absent.npy not found"):
        conditions.read_vectors(str(tmp_path / "absent.npy"), 4)
    with pytest.raises(ValueError, match="--cond-file .* is a folder"):
        conditions.read_vectors(str(tmp_path), 4)
    good = conditions.read_vectors(write(tmp_path / "ok.npy", np.ones((2, 4), np.float64)), 4)
    assert good.dtype == torch.float32 and good.shape == (2, 4)


def test_conditions_beyond_the_held_out_split_is_an_error():
    held_out = data.load_dataset("shapes", None, "test", length=5, cond="attributes")
    with pytest.raises(ValueError, match="--conditions 6: the held-out split of shapes has only 5 conditions"):
        conditions.first_conditions(held_out, 6)
    assert conditions.first_conditions(held_out, 5).shape[0] == 5


# ---------------------------------------------------------------- 7. the classifier a reference names

def test_reference_stores_the_classifier_absolutely_and_a_missing_one_says_clf(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    net = Classifier(3, 10, 16)
    torch.save({"model": net.state_dict(), "channels": 3, "image_size": 32, "num_classes": 10, "width": 16},
               tmp_path / "runs" / "clf.pt")
    monkeypatch.chdir(tmp_path)
    extractor = features.build_extractor("clf", "runs/clf.pt", device="cpu")
    assert extractor.clf_path == str((tmp_path / "runs" / "clf.pt").resolve())
    ref = {"feature_name": "clf", "extractor_id": extractor.id, "clf_path": extractor.clf_path}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert features.extractor_for_ref(ref, device="cpu").id == extractor.id  # found from another folder
    (tmp_path / "runs" / "clf.pt").rename(tmp_path / "moved.pt")
    message = f"the reference was made with the classifier {extractor.clf_path}, which is not there: pass --clf PATH"
    with pytest.raises(FileNotFoundError, match=message.replace("(", r"\(").replace(")", r"\)")):
        features.extractor_for_ref(ref, device="cpu")
    assert features.extractor_for_ref(ref, clf=str(tmp_path / "moved.pt"), device="cpu").id == extractor.id
    with pytest.raises(FileNotFoundError, match="--clf nothing.pt: no classifier file there"):
        features.build_extractor("clf", "nothing.pt", device="cpu")


# ---------------------------------------------------------------- 8. flag ranges that argparse can say

@pytest.mark.parametrize("main, argv, flag", [
    (sample.main, ["--nfe", "0"], "argument --nfe: must be at least 1, got 0"),
    (sample.main, ["--n", "0"], "argument --n: must be at least 1"),
    (sample.main, ["--batch-size", "-3"], "argument --batch-size: must be at least 1"),
    (sample.main, ["--conditions", "0"], "argument --conditions: must be at least 1"),
    (sample.main, ["--cfg", "inf"], "argument --cfg: must be a finite number"),
    (sample.main, ["--seed", "-1"], "argument --seed: must be at least 0"),
    (sample.main, ["--seed", str(10**12)], "argument --seed: .*at most"),
    (eval_fid.main, ["calc", "--samples", "x", "--ref", "y", "--batch-size", "0"], "argument --batch-size"),
    (eval_fid.main, ["calc", "--samples", "x", "--ref", "y", "--seed", "-1"], "argument --seed"),
    (eval_fid.main, ["ref", "--max-images", "0"], "argument --max-images"),
])
def test_flags_out_of_range_are_refused_while_parsing(main, argv, flag):
    with pytest.raises(ValueError, match=flag):
        main(argv)


def test_train_seed_beyond_what_image_seeds_hold():
    with pytest.raises(ValueError, match="--seed must be at most"):
        run_config.check_config(train.parse_args(["--seed", str(10**9)]))


# ---------------------------------------------------------------- one line, exit 2, as the user meets it

def test_one_line_and_exit_2_end_to_end(no_dropout_run):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cases = [
        (["sample.py", "--ckpt", str(no_dropout_run / "ckpt.pt"), "--cfg", "2", "--nfe", "2"], "--label-dropout 0"),
        (["train.py", *QUICK, "--prior", "kmeans", "--cond", "attributes", "--out", str(no_dropout_run / "k")],
         "--prior kmeans needs class ids"),
    ]
    running = [(subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True), named) for argv, named in cases]
    for process, named in running:
        _, stderr = process.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert process.returncode == 2 and len(lines) == 1, stderr[-2000:]
        assert lines[0].startswith("error: ") and named in lines[0], lines[0]
