"""train.py end to end on the built-in shapes, tiny preset, CPU: checkpoints, exact resume,
sampling from the result, the multi-process path, and the one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
import train
from plumbing.batches import batch_indices
from prior import ClassPrior

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--preset", "tiny", "--max-images", "64", "--batch-size", "8", "--log-every", "1",
         "--sample-every", "0", "--device", "cpu", "--warmup", "2"]


def run(out, *extra):
    return train.train(train.parse_args([*QUICK, "--out", str(out), *extra]))


def logged_losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_resume_gives_the_losses_of_the_uninterrupted_run(tmp_path):
    straight = run(tmp_path / "a", "--steps", "6", "--ckpt-every", "3")
    run(tmp_path / "b", "--steps", "3", "--ckpt-every", "3")  # "killed" after its step-3 checkpoint
    resumed = run(tmp_path / "b", "--steps", "6", "--ckpt-every", "3", "--resume")
    assert len(straight) == 6 and all(torch.isfinite(torch.tensor(straight)))
    assert resumed == straight[3:]
    assert logged_losses(tmp_path / "b") == straight
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_checkpoint_contents_and_sampling_from_it(tmp_path):
    run(tmp_path, "--steps", "3", "--ckpt-every", "2", "--coupling", "class_ot")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "step", "rng", "config", "prior"} <= set(ckpt)
    assert ckpt["config"]["coupling"] == "class_ot" and ckpt["prior"]["name"] == "class"
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away
    sample.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--nfe", "2", "--n", "2", "--classes", "0,3"])
    npz = next(tmp_path.glob("samples_*.npz"))
    import numpy as np
    with np.load(npz) as f:
        assert f["arr_0"].shape == (4, 32, 32, 3) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].tolist() == [0, 0, 3, 3]
    assert list(tmp_path.glob("samples_*.png"))


def test_checkpoint_of_another_preset_is_rejected(tmp_path):
    run(tmp_path, "--steps", "1")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["config"]["preset"] = "small"
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match preset 'small'"):
        sample.load_checkpoint(tmp_path / "other.pt", "cpu")


def test_gaussian_prior_and_ot_coupling_train(tmp_path):
    losses = run(tmp_path, "--steps", "2", "--prior", "gaussian", "--coupling", "ot")
    assert losses == logged_losses(tmp_path) and len(losses) == 2
    assert all(0 < l < 10 for l in losses)  # ||x1 - x0||^2 per pixel of images in [-1, 1] against N(0, I)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["prior"]["name"] == "gaussian"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, "--steps", "2")
    before = (tmp_path / "ckpt.pt").read_bytes()
    monkeypatch.setattr(train.flow, "flow_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ValueError, match="the loss became nan at step 3"):
        run(tmp_path, "--steps", "4", "--resume")
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_checkpoint_write_killed_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    train.save_checkpoint(path, {"step": 1})

    def dying_save(obj, file):
        file.write(b"partial")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(train.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"step": 2})
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_batches_are_a_function_of_seed_and_step():
    first = [batch_indices(s, 20, 8, seed=1) for s in range(4)]
    assert all(len(b) == 8 for b in first)
    assert sorted(first[0].tolist() + first[1].tolist()) == sorted(set(first[0].tolist() + first[1].tolist()))
    assert (first[2] == batch_indices(2, 20, 8, seed=1)).all()
    assert not (first[2] == batch_indices(2, 20, 8, seed=2)).all()


@pytest.mark.parametrize("flag,value,message", [
    ("--dataset", "celeba", "unknown dataset 'celeba'"),
    ("--prior", "flow", "unknown prior 'flow'"),
    ("--coupling", "sinkhorn", "unknown coupling 'sinkhorn'"),
    ("--preset", "huge", "unknown preset 'huge'"),
    ("--batch-size", "0", "--batch-size must be at least 1"),
])
def test_bad_options_are_named(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, flag, value)


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "train-images-idx3-ubyte" in lines[0]


def test_stored_statistics_of_other_images_are_refused(tmp_path):
    run(tmp_path / "a", "--steps", "1")
    with pytest.raises(ValueError, match="prior statistics of other data"):
        run(tmp_path / "b", "--steps", "1", "--image-size", "16", "--prior-stats", str(tmp_path / "a" / "prior_stats.npz"))


def test_two_processes_with_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "train.py", *QUICK, "--steps", "2", "--out", str(tmp_path), "--coupling", "ot",
                             "--couple-global", "--grad-accum", "2"],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["world_size"] == 2 and ckpt["step"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["config"]["couple_global"] and ckpt["config"]["grad_accum"] == 2
    assert len(logged_losses(tmp_path)) == 2


def test_cached_statistics_are_keyed_by_data_and_options(tmp_path):
    run(tmp_path / "a", "--steps", "1")
    stats = tmp_path / "a" / "prior_stats.npz"
    # another image set (the first 32 images, not 64) under the same --prior-stats: refused, not reused
    with pytest.raises(ValueError, match="holds class prior statistics of other data or options"):
        run(tmp_path / "b", "--steps", "1", "--max-images", "32", "--prior-stats", str(stats))
    # another prior option: refused too (sigma is part of the key)
    with pytest.raises(ValueError, match="other data or options"):
        run(tmp_path / "c", "--steps", "1", "--prior-opt", "sigma=0.5", "--prior-stats", str(stats))
    # the same data and options: reused, byte for byte
    before = stats.read_bytes()
    run(tmp_path / "d", "--steps", "1", "--prior-stats", str(stats))
    assert stats.read_bytes() == before


def test_folders_of_equal_size_get_their_own_statistics(tmp_path):
    import numpy as np
    from PIL import Image
    for name, level in (("one", 40), ("two", 200)):  # same class names and counts, other pixels
        for c in ("x", "y"):
            (tmp_path / name / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), level + i, np.uint8)).save(tmp_path / name / c / f"{i}.png")
    shared = tmp_path / "stats.npz"
    common = ["--dataset", "folder", "--image-size", "8", "--steps", "1", "--max-images", "8"]
    run(tmp_path / "r1", *common, "--data-dir", str(tmp_path / "one"), "--prior-stats", str(shared))
    with pytest.raises(ValueError, match="other data"):
        run(tmp_path / "r2", *common, "--data-dir", str(tmp_path / "two"), "--prior-stats", str(shared))
    # in its own --out the second folder is fitted afresh: its class means are its own pixels
    run(tmp_path / "r3", *common, "--data-dir", str(tmp_path / "two"))
    state = np.load(tmp_path / "r3" / "prior_stats.npz")
    assert np.allclose(state["means"][:2], (201.5 / 127.5) - 1)  # mean of levels 200..203


def write_idx(folder, prefix, n):
    """A tiny MNIST in the official idx layout (big-endian header, then uint8)."""
    import struct
    import numpy as np
    pixels = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes())
    labels = (np.arange(n) % 10).astype(np.uint8)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def tiny_mnist(tmp_path, n):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder, "train", n)
    write_idx(folder, "t10k", 10)
    return folder


def test_resume_a_dataset_without_a_size_option(tmp_path):
    # the checkpoint's image_size is the dataset's (32, padded); resuming must not pass it back
    # to a loader that takes no size option
    folder = tiny_mnist(tmp_path, 40)
    run(tmp_path / "run", "--dataset", "mnist", "--data-dir", str(folder), "--steps", "1")
    losses = run(tmp_path / "run", "--dataset", "mnist", "--data-dir", str(folder), "--steps", "2", "--resume")
    assert len(losses) == 1
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["config"]["image_size"] == 32


@pytest.mark.parametrize("null_source", ["global", "class"])
def test_null_source_picks_the_component_of_dropped_labels(null_source, monkeypatch):
    from plumbing import data
    import prior as priors
    args = train.parse_args([*QUICK, "--label-dropout", "0.5", "--null-source", null_source])
    dataset = data.load_dataset("shapes", None, "train")
    # class c's images are the constant 0.1 c, so mu_c = 0.1 c and mu_K = the mean over classes; a tiny sigma
    # makes every x0 sit on its component's mean
    labels = torch.arange(10).repeat(4)
    constant = (0.1 * labels.double()).view(-1, 1, 1, 1).expand(-1, 3, 32, 32)
    prior = priors.ClassPrior(sigma=1e-6).fit([(constant, labels)], 10)
    run = train.build_run(args, dataset, prior, torch.device("cpu"))
    seen = {}

    def capture(network, x0, x1, cond, null, t, sigma_min):
        seen["x0"], seen["null"] = x0, null
        return (network(x0, t, cond, null) ** 2).mean()
    monkeypatch.setattr(train.flow, "flow_loss", capture)
    train.train_step(run, torch.zeros(40, 3, 32, 32, dtype=torch.uint8), labels, 0)
    dropped = seen["null"]
    assert 0 < int(dropped.sum()) < 40  # some rows null, some not (seeded)
    x0_level = seen["x0"].mean((1, 2, 3))
    assert torch.allclose(x0_level[~dropped], 0.1 * labels[~dropped].float(), atol=1e-4)
    expected = torch.full_like(x0_level[dropped], 0.45) if null_source == "global" else 0.1 * labels[dropped].float()
    assert torch.allclose(x0_level[dropped], expected, atol=1e-4)


def test_resume_takes_the_run_from_its_checkpoint_and_the_given_flags_from_the_command_line(tmp_path):
    run(tmp_path, "--steps", "1", "--prior-opt", "sigma=0.5", "--coupling", "class_ot", "--lr", "5e-4")
    config, checkpoint = train.load_resume(train.parse_args(["--out", str(tmp_path), "--resume", "--steps", "3",
                                                             "--device", "cpu"]))
    assert checkpoint["step"] == 1 and config.steps == 3  # given now
    assert (config.prior_options, config.coupling, config.lr) == ({"sigma": 0.5}, "class_ot", 5e-4)  # kept
    assert (config.preset, config.max_images, config.batch_size) == ("tiny", 64, 8)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ckpt["config"]["null_source"]  # as written before the option existed: Config's default, its behaviour
    torch.save(ckpt, tmp_path / "ckpt.pt")
    config, _ = train.load_resume(train.parse_args([*QUICK, "--out", str(tmp_path), "--resume"]))
    assert config.null_source == "global"
    with pytest.raises(ValueError, match="--null-source class"):  # a run-defining option that differs: refused
        train.load_resume(train.parse_args([*QUICK, "--out", str(tmp_path), "--resume", "--null-source", "class"]))


def test_grad_accumulation_gives_the_update_of_one_batch():
    """N micro-batches must give one batch's update: the losses, weighted by their share of the
    batch, sum to the batch mean, so the gradients are equal up to float rounding (dropout off)."""
    from plumbing import data
    dataset = data.load_dataset("shapes", None, "train")
    images, labels = dataset.get(torch.arange(20).numpy())
    prior = ClassPrior().fit([(images, labels)], 10)
    updated = {}
    for accum in (1, 3, 7):  # 3 and 7 do not divide 20: slices of 7, 7, 6 and 3, 3, 3, 3, 3, 3, 2
        args = train.parse_args([*QUICK, "--grad-accum", str(accum), "--weight-decay", "0.01", "--batch-size", "20"])
        run = train.build_run(args, dataset, prior, torch.device("cpu"))
        for module in run.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        loss, grad_norm = train.train_step(run, images, labels, 0)
        updated[accum] = (float(loss), float(grad_norm), [p.detach().clone() for p in run.model.parameters()])
    start = train.build_run(train.parse_args(QUICK), dataset, prior, torch.device("cpu")).model
    assert sum(not torch.equal(one, before) for one, before in zip(updated[1][2], start.parameters())) > 10
    for accum in (3, 7):
        assert abs(updated[accum][0] - updated[1][0]) < 1e-6 * updated[1][0]
        assert abs(updated[accum][1] - updated[1][1]) < 1e-5 * updated[1][1]
        for one, many in zip(updated[1][2], updated[accum][2]):
            assert torch.allclose(one, many, rtol=1e-4, atol=1e-7)


def test_grad_accum_more_than_the_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--grad-accum 9 is more than the 8 images"):
        run(tmp_path, "--steps", "1", "--grad-accum", "9")


def test_resume_takes_a_new_learning_rate_and_refuses_a_new_prior(tmp_path):
    run(tmp_path, "--steps", "2", "--ckpt-every", "2", "--lr", "1e-3")
    with pytest.raises(ValueError, match=r"--prior gaussian \(checkpoint: class\).*Start a new run"):
        run(tmp_path, "--steps", "3", "--resume", "--prior", "gaussian")
    run(tmp_path, "--steps", "3", "--resume", "--lr", "2e-4")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["lr"] == 2e-4 and ckpt["config"]["warmup"] == 2  # warmup: the checkpoint's own
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4)  # step 2 is past the warm-up
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["lr"] == pytest.approx(2e-4)


def test_a_fresh_run_into_an_old_folder_is_refused(tmp_path):
    run(tmp_path, "--steps", "1")
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        run(tmp_path, "--steps", "1")


def test_log_after_a_resume_reads_as_one_run(tmp_path):
    straight = run(tmp_path / "a", "--steps", "4", "--ckpt-every", "2")
    run(tmp_path / "b", "--steps", "2", "--ckpt-every", "2")
    kept = (tmp_path / "b" / "ckpt.pt").read_bytes()
    run(tmp_path / "b", "--steps", "4", "--ckpt-every", "2", "--resume")
    # "killed" after step 4's log lines but before its checkpoint, mid-way through a line
    (tmp_path / "b" / "ckpt.pt").write_bytes(kept)
    with open(tmp_path / "b" / "log.jsonl", "a") as log:
        log.write('{"step": 5, "lo')
    run(tmp_path / "b", "--steps", "4", "--ckpt-every", "2", "--resume")
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and logged_losses(tmp_path / "b") == straight


def test_an_exploding_loss_stops_before_the_checkpoint_and_a_lower_lr_resumes(tmp_path, monkeypatch):
    run(tmp_path, "--steps", "2", "--ckpt-every", "2")
    before = (tmp_path / "ckpt.pt").read_bytes()
    real_loss = train.flow.flow_loss
    monkeypatch.setattr(train.flow, "flow_loss", lambda *a, **k: real_loss(*a, **k) * 1e6)  # finite, but exploded
    with pytest.raises(ValueError, match=r"the loss became .* at step 3 .*untouched.*--resume --lr 0\.00025"):
        run(tmp_path, "--steps", "4", "--ckpt-every", "1", "--resume")
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    monkeypatch.setattr(train.flow, "flow_loss", real_loss)
    assert len(run(tmp_path, "--steps", "4", "--resume", "--lr", "0.00025")) == 2


def test_resume_on_other_images_is_refused(tmp_path):
    folder = tiny_mnist(tmp_path, 40)
    run(tmp_path / "run", "--dataset", "mnist", "--data-dir", str(folder), "--steps", "1")
    images = folder / "train-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[16:16 + 784] = bytes(784)  # image 0 (in the fingerprint's probe) goes black
    images.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not the ones this run was trained on"):
        run(tmp_path / "run", "--dataset", "mnist", "--data-dir", str(folder), "--steps", "2", "--resume")


def test_short_runs_always_exit_zero(tmp_path):
    # the prefetch thread used to be inside the data path at interpreter exit: abort, exit 134
    folder = tiny_mnist(tmp_path, 64)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(4):
        result = subprocess.run([sys.executable, "train.py", *QUICK, "--dataset", "mnist", "--data-dir", str(folder),
                                 "--steps", "3", "--out", str(tmp_path / f"run{attempt}")],
                                cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr[-1000:]
        assert "done:" in result.stdout


def test_a_run_that_diverged_before_its_first_checkpoint_can_start_again(tmp_path, monkeypatch):
    real_loss = train.flow.flow_loss
    monkeypatch.setattr(train.flow, "flow_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(ValueError, match="before the first checkpoint: start again with a lower --lr"):
        run(tmp_path, "--steps", "4", "--ckpt-every", "4")
    assert not (tmp_path / "ckpt.pt").exists()
    monkeypatch.setattr(train.flow, "flow_loss", real_loss)
    losses = run(tmp_path, "--steps", "2", "--lr", "2.5e-4")  # the advice, taken: no refusal
    assert losses == logged_losses(tmp_path) and len(losses) == 2  # the failed run's lines are gone


def test_vector_conditions_train_and_sample_from_the_held_out_split_or_a_file(tmp_path):
    import numpy as np
    run(tmp_path, "--cond", "attributes", "--prior", "mapper", "--prior-opt", "epochs=1", "--steps", "2")
    config = torch.load(tmp_path / "ckpt.pt", weights_only=True)["config"]
    assert config["cond_dim"] == 8 and config["prior_options"] == {"epochs": 1}
    sample.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--nfe", "2", "--n", "2", "--conditions", "3",
                 "--out-npz", str(tmp_path / "held_out.npz")])
    with np.load(tmp_path / "held_out.npz") as f:
        held_out_images, held_out_cond = f["arr_0"], f["cond"]
        assert held_out_images.shape == (6, 32, 32, 3) and f["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]
    np.save(tmp_path / "wanted.npy", held_out_cond[::2][:2])  # the first two held-out conditions, by file
    sample.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--nfe", "2", "--n", "2", "--cond-file",
                 str(tmp_path / "wanted.npy"), "--out-npz", str(tmp_path / "from_file.npz")])
    with np.load(tmp_path / "from_file.npz") as f:  # the same condition, row and seed: the same image
        assert np.array_equal(f["arr_0"], held_out_images[:4])
    with pytest.raises(ValueError, match="--classes is for class-conditional checkpoints"):
        sample.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--classes", "1"])
    with pytest.raises(ValueError, match="needs condition vectors"):
        run(tmp_path / "wrong", "--prior", "mapper", "--steps", "1")  # shapes' class ids


def test_kmeans_prior_trains_with_its_own_options(tmp_path):
    losses = run(tmp_path, "--prior", "kmeans", "--prior-opt", "k=2", "--prior-opt", "passes=1",
                 "--coupling", "class_ot", "--steps", "2")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["prior"]["state"]
    assert len(losses) == 2 and int(state["k"]) == 2 and state["weights"].shape == (10, 2)


def test_global_coupling_pairs_over_the_whole_batch(monkeypatch):
    """Two processes simulated in one: all_gather hands back (rank 0's rows, rank 1's rows)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)  # [rank] -> rows
    groups = torch.zeros(2, 6, dtype=torch.int64)
    kept = []
    for rank in (0, 1):
        tensors = iter([x0, x1, groups])

        def all_gather(parts, part):
            whole = next(tensors)
            assert torch.equal(part, whole[rank])  # each process sends its own rows
            parts[0].copy_(whole[0])
            parts[1].copy_(whole[1])
        monkeypatch.setattr(train.dist, "all_gather", all_gather)
        kept.append(train.couple_global(x0[rank], x1[rank], groups[rank], "ot", rank, 2))
    paired = torch.cat(kept)
    # a permutation of all 12 sources, each used once
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, x0.flatten(0, 1).tolist()))
    cost = lambda a, b: float((a - b).pow(2).sum())  # noqa: E731
    per_process = sum(cost(train.flow.couple(x0[r], x1[r], groups[r], "ot"), x1[r]) for r in (0, 1))
    # OT over the whole batch can only be cheaper than OT within each half (a larger set of permutations)
    assert cost(paired, x1.flatten(0, 1)) <= per_process + 1e-5
    assert cost(paired, x1.flatten(0, 1)) < per_process - 1e-3  # and here it is strictly cheaper
