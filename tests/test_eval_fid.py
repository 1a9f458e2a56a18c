"""eval_fid: closed-form Frechet distances, KID against a double loop, the Inception layout of
the published weights file, pytorch-fid's preprocessing, and ref/calc/sweep end to end with the
classifier features (CPU, no weights file, no network)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import eval_fid
from eval_fid import frechet_distance, kid
from inception import InceptionV3, inception_preprocess

REPO = Path(__file__).resolve().parents[1]


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------- Frechet distance

def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fd_commuting_covariances():
    # same eigenbasis Q: Tr sqrt(S1 S2) = sum sqrt(a_i b_i)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.ones(6), np.zeros(6)
    expected = 6 + np.sum(a) + np.sum(b) - 2 * np.sum(np.sqrt(a * b))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fd_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 20), random_spd(rng, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def test_fd_singular_product_uses_the_epsilon_safeguard():
    # S1 = v v^T (rank 1): S1 S2 = v (S2 v)^T has the single non-zero eigenvalue v.S2 v = 10,
    # so Tr sqrt(S1 S2) = sqrt(10). scipy's Schur method returns NaNs on this product.
    v = np.array([1.0, 1, -1, -1])
    s1 = np.outer(v, v)
    s2 = np.array([[2.0, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.isfinite(scipy.linalg.sqrtm(s1 @ s2)).all()
    with pytest.warns(UserWarning, match="adding 1e-06"):
        value = frechet_distance(np.zeros(4), s1, np.zeros(4), s2)
    assert value == pytest.approx(4 + 4 - 2 * np.sqrt(10), abs=1e-2)  # eps costs O(sqrt(eps)) per null direction


def test_fd_rank_deficient_sample_covariances():
    # fewer samples than dimensions: sqrtm goes complex; dropping the tiny imaginary part is right
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(12, 32)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.iscomplexobj(scipy.linalg.sqrtm(s1 @ s2))
    # independent reference: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix
    w, v = np.linalg.eigh(s1)
    half = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)))
    diff = x.mean(0) - y.mean(0)
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert frechet_distance(x.mean(0), s1, y.mean(0), s2) == pytest.approx(expected, rel=1e-6)


def test_fd_errors():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), -np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_running_stats_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(301, 7)) * 3 + 1000  # a large offset: the shift keeps float64 exact
    stats = eval_fid.RunningStats()
    for start in range(0, len(x), 64):
        stats.update(x[start:start + 64])
    mu, sigma = stats.result()
    assert np.allclose(mu, x.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- KID

def test_mmd_matches_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)) + 0.3
    d, m = 4, 7

    def k(a, b):
        return (sum(a[i] * b[i] for i in range(d)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert eval_fid.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    mean, std = kid(x, y)  # every subset is the whole set: one subset, no spread
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == 0


def test_kid_near_zero_for_one_distribution_positive_for_two():
    rng = np.random.default_rng(6)
    a, b, c = rng.normal(size=(600, 16)), rng.normal(size=(600, 16)), rng.normal(size=(600, 16)) + 0.5
    same, same_std = kid(a, b, num_subsets=20, subset_size=300)
    other, _ = kid(a, c, num_subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert other > 20 * max(abs(same), same_std)
    assert kid(a, c, num_subsets=5, subset_size=100, seed=1) == kid(a, c, num_subsets=5, subset_size=100, seed=1)


# ---------------------------------------------------------------- Inception

def conv(name: str, cin: int, cout: int, kh: int, kw: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.conv.weight": (cout, cin, kh, kw), f"{name}.bn.weight": (cout,),
            f"{name}.bn.bias": (cout,), f"{name}.bn.running_mean": (cout,),
            f"{name}.bn.running_var": (cout,), f"{name}.bn.num_batches_tracked": ()}


def published_layout() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of pt_inception-2015-12-05-6726825d.pth: torchvision's Inception3 names,
    1008 classes, no AuxLogits; every BN saved with num_batches_tracked (see pytorch-fid issue #34)."""
    layers = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
              ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    for block, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        layers += [(f"{block}.branch1x1", cin, 64, 1, 1), (f"{block}.branch5x5_1", cin, 48, 1, 1),
                   (f"{block}.branch5x5_2", 48, 64, 5, 5), (f"{block}.branch3x3dbl_1", cin, 64, 1, 1),
                   (f"{block}.branch3x3dbl_2", 64, 96, 3, 3), (f"{block}.branch3x3dbl_3", 96, 96, 3, 3),
                   (f"{block}.branch_pool", cin, pool, 1, 1)]
    layers += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
               ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        layers += [(f"{block}.branch1x1", 768, 192, 1, 1), (f"{block}.branch7x7_1", 768, c7, 1, 1),
                   (f"{block}.branch7x7_2", c7, c7, 1, 7), (f"{block}.branch7x7_3", c7, 192, 7, 1),
                   (f"{block}.branch7x7dbl_1", 768, c7, 1, 1), (f"{block}.branch7x7dbl_2", c7, c7, 7, 1),
                   (f"{block}.branch7x7dbl_3", c7, c7, 1, 7), (f"{block}.branch7x7dbl_4", c7, c7, 7, 1),
                   (f"{block}.branch7x7dbl_5", c7, 192, 1, 7), (f"{block}.branch_pool", 768, 192, 1, 1)]
    layers += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
               ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
               ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    for block, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        layers += [(f"{block}.branch1x1", cin, 320, 1, 1), (f"{block}.branch3x3_1", cin, 384, 1, 1),
                   (f"{block}.branch3x3_2a", 384, 384, 1, 3), (f"{block}.branch3x3_2b", 384, 384, 3, 1),
                   (f"{block}.branch3x3dbl_1", cin, 448, 1, 1), (f"{block}.branch3x3dbl_2", 448, 384, 3, 3),
                   (f"{block}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{block}.branch3x3dbl_3b", 384, 384, 3, 1),
                   (f"{block}.branch_pool", cin, 192, 1, 1)]
    expected = {}
    for layer in layers:
        expected |= conv(*layer)
    return expected | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


@pytest.fixture(scope="module")
def inception() -> InceptionV3:
    return InceptionV3()


def test_inception_matches_published_weights_layout(inception):
    layout = {key: tuple(value.shape) for key, value in inception.state_dict().items()}
    assert layout == published_layout()
    # torchvision's Inception3 has 27,161,264 parameters with its 1000-class aux head; without
    # AuxLogits (3,326,696) and with 1008 classes (+16,392): 23,850,960
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960


def test_inception_forward_shape(inception):
    features = inception(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_preprocess_constant_and_bilinear():
    out = inception_preprocess(torch.full((1, 1, 7, 5), 0.25))
    assert out.shape == (1, 3, 299, 299) and torch.allclose(out, torch.full_like(out, -0.5))
    image = torch.tensor([[[[0.0, 1.0], [0.5, 0.2]]]]).expand(1, 3, 2, 2)
    out = inception_preprocess(image)

    def hand(i: int) -> tuple[int, int, float]:  # align_corners=False: src = (i + 0.5) * 2/299 - 0.5
        src = max((i + 0.5) * 2 / 299 - 0.5, 0.0)
        low = int(np.floor(src))
        return low, min(low + 1, 1), src - low

    for row, col in [(0, 0), (298, 298), (149, 149), (100, 40), (200, 260), (0, 149)]:
        r0, r1, a = hand(row)
        c0, c1, b = hand(col)
        img = image[0, 0].double()
        value = ((1 - a) * ((1 - b) * img[r0, c0] + b * img[r0, c1])
                 + a * ((1 - b) * img[r1, c0] + b * img[r1, c1]))
        assert out[0, :, row, col].double() == pytest.approx([2 * float(value) - 1] * 3, abs=1e-6)


def test_weights_file_loads_strictly(tmp_path, inception):
    path = tmp_path / eval_fid.INCEPTION_FILE
    state = {key: torch.randn_like(value.float()).to(value.dtype) for key, value in inception.state_dict().items()}
    torch.save(state, path)
    with pytest.warns(UserWarning, match="sha256"):  # not the real file
        loaded = InceptionV3(path)
    assert all(torch.equal(loaded.state_dict()[key], state[key]) for key in state)
    torch.save({"fc.weight": state["fc.weight"]}, path)  # keys missing: refused, not half-loaded
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="not the pytorch-fid Inception"):
        InceptionV3(path)


def test_missing_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="releases/download/fid_weights/pt_inception-2015-12-05"):
        InceptionV3("auto")
    with pytest.raises(FileNotFoundError, match="no Inception weights file at .*--features clf"):
        eval_fid.main(["ref", "--images", str(tmp_path), "--out", str(tmp_path / "r.npz"),
                       "--inception-weights", str(tmp_path / "nothing.pth")])


# ---------------------------------------------------------------- files and errors

def test_load_images_folder_and_npz(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    arrays = rng.integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{i}.png")
    images, labels = eval_fid.load_images(folder)
    assert labels is None and torch.equal(images, torch.from_numpy(arrays).permute(0, 3, 1, 2))
    np.savez(tmp_path / "s.npz", arr_0=arrays, arr_1=np.array([2, 0, 1]))
    images, labels = eval_fid.load_images(tmp_path / "s.npz")
    assert images.shape == (3, 3, 6, 5) and labels.tolist() == [2, 0, 1]
    Image.fromarray(arrays[0][:4]).save(folder / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        eval_fid.load_images(folder)


def test_reference_without_mu_sigma(tmp_path):
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="no 'mu'/'sigma'"):
        eval_fid.load_ref(tmp_path / "bad.npz")


def test_too_few_samples_for_the_dimension():
    with pytest.raises(ValueError, match="2048-d features.*at least 2049"):
        eval_fid.check_enough(100, 2048)


def test_script_reports_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "eval_fid.py", "calc", "--samples", str(tmp_path / "s.npz"),
                             "--ref", str(tmp_path / "r.npz")], cwd=REPO, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: no reference statistics")


# ---------------------------------------------------------------- end to end (classifier features)

def write_checkpoint(path: Path, prior_name: str, coupling: str) -> Path:
    """A tiny untrained checkpoint in the format of the team spec (shapes at 16x16). Its network
    outputs v = 0 (zero-initialised last layer), so its samples are prior draws."""
    import data
    import prior as prior_module
    import unet

    torch.manual_seed(0)
    dataset = data.load_dataset("shapes", image_size=16)
    model = unet.build_unet("tiny", dataset.image_size, dataset.channels, dataset.num_classes)
    prior = prior_module.build_prior(prior_name).fit([dataset.get(np.arange(200))], dataset.num_classes)
    config = {"dataset": "shapes", "data_dir": None, "dataset_options": {"image_size": 16}, "preset": "tiny",
              "image_size": dataset.image_size,
              "channels": dataset.channels, "num_classes": dataset.num_classes, "prior": prior_name,
              "prior_options": {}, "coupling": coupling, "seed": 0, "batch_size": 32}
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "optimizer": {}, "step": 0, "rng": None,
                "config": config, "prior": {"name": prior_name, "state": prior.state_dict()},
                "class_names": dataset.class_names}, path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny classifier (16-d features) and reference statistics of 300 shapes images at 16x16."""
    folder = tmp_path_factory.mktemp("eval")
    clf, shapes = str(folder / "clf.pt"), ["--dataset", "shapes", "--image-size", "16"]
    eval_fid.main(["classifier", *shapes, "--out", clf, "--steps", "10", "--batch-size", "32", "--width", "2",
                   "--eval-images", "100", "--device", "cpu"])
    eval_fid.main(["ref", *shapes, "--features", "clf", "--clf", clf, "--max-images", "300",
                   "--out", str(folder / "ref.npz"), "--device", "cpu"])
    return folder


def test_classifier_and_reference_files(workdir, capsys):
    saved = torch.load(workdir / "clf.pt", weights_only=True)
    assert saved["width"] == 2 and saved["num_classes"] == 10 and 0 <= saved["test_accuracy"] <= 1
    ref = eval_fid.load_ref(workdir / "ref.npz")
    assert ref["mu"].shape == (16,) and ref["sigma"].shape == (16, 16) and ref["features"].shape == (300, 16)
    assert ref["feature_name"] == "clf" and int(ref["n"]) == 300 and tuple(ref["image_shape"]) == (3, 16, 16)


def test_calc_on_real_images_gives_a_small_distance(workdir, capsys):
    import data
    images, labels = data.load_dataset("shapes", split="test", image_size=16).get(np.arange(100))
    np.savez(workdir / "real.npz", arr_0=images.permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy())
    np.savez(workdir / "noise.npz", arr_0=np.random.default_rng(0).integers(0, 256, (100, 16, 16, 3), np.uint8),
             arr_1=labels.numpy())
    results = []
    for name in ("real", "noise"):
        capsys.readouterr()
        eval_fid.main(["calc", "--samples", str(workdir / f"{name}.npz"), "--ref", str(workdir / "ref.npz"),
                       "--device", "cpu"])
        line, readable = capsys.readouterr().out.strip().splitlines()[-2:]
        results.append(json.loads(line))
        assert readable.startswith("FD-clf ") and "KID-clf" in readable
    real, noise = results
    assert real["metric"] == "FD-clf" and real["n"] == 100 and 0 <= real["accuracy"] <= 1
    assert noise["value"] > 3 * real["value"] and noise["kid"] > real["kid"]


def test_calc_refuses_mismatches(workdir):
    ref = str(workdir / "ref.npz")
    np.savez(workdir / "large.npz", arr_0=np.zeros((50, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"samples are \(3, 32, 32\).*\(3, 16, 16\)"):
        eval_fid.main(["calc", "--samples", str(workdir / "large.npz"), "--ref", ref, "--device", "cpu"])
    np.savez(workdir / "few.npz", arr_0=np.zeros((10, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="10 samples for 16-d features.*at least 17"):
        eval_fid.main(["calc", "--samples", str(workdir / "few.npz"), "--ref", ref, "--device", "cpu"])
    with pytest.raises(ValueError, match="--features inception, but the reference was made with clf"):
        eval_fid.main(["calc", "--samples", str(workdir / "few.npz"), "--ref", ref, "--features", "inception"])
    other = workdir / "other_clf.pt"
    saved = torch.load(workdir / "clf.pt", weights_only=True)
    torch.save(saved | {"seed": 1}, other)
    with pytest.raises(ValueError, match="same --clf file"):
        eval_fid.main(["calc", "--samples", str(workdir / "few.npz"), "--ref", ref, "--clf", str(other)])


def test_sweep_writes_table_csv_and_plot(workdir, capsys):
    ckpts = [write_checkpoint(workdir / "gauss.pt", "gaussian", "independent"),
             write_checkpoint(workdir / "class.pt", "class", "ot")]
    out = workdir / "sweep"
    eval_fid.main(["sweep", "--ckpt", *map(str, ckpts), "--ref", str(workdir / "ref.npz"), "--nfe", "1,2",
                   "--n", "20", "--out", str(out), "--device", "cpu"])
    rows = list(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    assert [(r["label"], r["nfe"]) for r in rows] == [("gaussian+independent", "1"), ("gaussian+independent", "2"),
                                                     ("class+ot", "1"), ("class+ot", "2")]
    assert all(float(r["value"]) > 0 and 0 <= float(r["accuracy"]) <= 1 for r in rows)
    # the class prior starts near the data: its coupling is far cheaper than N(0, I)'s
    assert float(rows[2]["transport_cost"]) < float(rows[0]["transport_cost"])
    assert out.with_suffix(".md").read_text().startswith("| checkpoint | NFE | FD-clf |")
    assert Image.open(out.with_suffix(".png")).size == (720, 460)


@pytest.mark.parametrize("log_y", [False, True])
def test_plot_places_points_on_linear_or_log_axes(tmp_path, log_y):
    # y = 1, 10, 100 at x = 1, 2, 4: on a log-y axis the three dots are equally spaced vertically,
    # on a linear one the second is 10 times closer to the first than the third is to the second
    path = tmp_path / "plot.png"
    eval_fid.plot_curves({"a": [(1, 1.0), (2, 10.0), (4, 100.0)]}, path, "FD", log_y=log_y)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = np.abs(pixels - [0x1F, 0x77, 0xB4]).sum(-1) == 0
    blue[:80] = False  # the legend swatch sits in the top rows
    # the plot spans x pixels 80..700 (log x: NFE 1, 2, 4 at 80, 390, 700); a dot's row is the mean
    # row of the blue pixels within 3 columns of its x
    rows = [np.flatnonzero(blue[:, max(x - 3, 0):x + 4].any(1)).mean() for x in (80, 390, 700)]
    upper, lower = rows[0] - rows[1], rows[1] - rows[2]  # image rows grow downwards
    assert upper > 0 and lower > 0
    if log_y:
        assert abs(upper - lower) < 3
    else:
        assert lower > 5 * upper
