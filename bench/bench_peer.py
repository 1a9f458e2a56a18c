"""Our network and our minibatch OT coupling against a peer implementation, side by side in one run:
the ADM `UNetModel` that torchcfm ships, configured as our preset, and torchcfm's exact OT coupling.

    python bench/bench_peer.py                        # CPU: tiny,small at batch 32; OT at 64,128,256
    python bench/bench_peer.py --smoke                # seconds: tiny at batch 4, one round, OT at 32
    python bench/bench_peer.py --presets imagenet64,small --batch-size 128 [--compile]   # the CUDA defaults

The peer is torchcfm 1.0.7 (pure Python) and, for the OT part only, POT. Install them WITHOUT their
dependencies into a folder of their own, so that torch and numpy stay as they are:

    python -m pip install --no-deps --target /tmp/peer_site torchcfm-1.0.7-py3-none-any.whl pot-*.whl

--peer-path (default $CONDPRIOR_PEER_PATH, else /tmp/peer_site; the torchcfm wheel itself works too)
goes first on sys.path. torchcfm's package __init__ imports POT, so its UNet module is imported under
an empty stand-in for the package: the network part needs no POT (a binary wheel for one Python).

1. Network: our `unet.build_unet(preset)` and torchcfm's `UNetModelWrapper` built with the preset's
   settings (what still differs is printed); forward + backward of mean(v^2), bf16 + channels_last
   on CUDA, float32 on CPU; alternating rounds, every call timed alone; medians, FLOPs, memory.
2. OT coupling: `flow.couple(x0, x1, groups, "ot")` against `OTPlanSampler("exact").sample_plan`
   (POT's network simplex, then n pairs drawn from the plan WITH replacement, as torchcfm trains),
   alternating, medians; both pairings checked against the float64 optimum on every pair.

Markdown tables on stdout, and in --out if given; nothing here is a test.
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402 (bench/bench_train.py: timed)
from plumbing import checks, outputs  # noqa: E402
import experiment  # noqa: E402 (bench/experiment.py: table)
import flow  # noqa: E402
import unet  # noqa: E402

DEFAULTS = {  # what to run, by device; --smoke: seconds, to check the script
    "cpu": dict(presets="tiny,small", batch_size=32, rounds=10, warmup=1),
    "cuda": dict(presets="imagenet64,small", batch_size=128, rounds=5, warmup=3),
    "smoke": dict(presets="tiny", batch_size=4, rounds=1, repeats=1, warmup=1, ot_shapes="3x32x32", ot_batches="32",
                  ot_rounds=1, ot_repeats=1),
}
PEER_ENV = "CONDPRIOR_PEER_PATH"
DEFAULT_PEER_PATH = "/tmp/peer_site"
INSTALL_HINT = ("install it without its dependencies into a folder of its own: python -m pip install --no-deps "
                "--target /tmp/peer_site torchcfm-1.0.7-py3-none-any.whl pot-*.whl (or give the torchcfm wheel "
                "itself as --peer-path)")


# ----------------------------------------------------------------------------- the peer

def import_peer(peer_path: str) -> types.ModuleType:
    """torchcfm.models.unet.unet, found on peer_path, without running torchcfm's __init__ (POT)."""
    entries = [entry for entry in peer_path.split(os.pathsep) if entry]
    for entry in reversed(entries):
        sys.path.insert(0, entry)
    if "torchcfm" not in sys.modules:
        spec = importlib.util.find_spec("torchcfm")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"torchcfm is not importable from --peer-path {peer_path!r}: {INSTALL_HINT}")
        stand_in = types.ModuleType("torchcfm")  # an empty package over torchcfm's folder: no __init__
        stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules["torchcfm"] = stand_in
    try:
        importlib.import_module("torchcfm.version")  # for the header
        return importlib.import_module("torchcfm.models.unet.unet")
    except ImportError as err:
        raise ValueError(f"torchcfm's UNet did not import from --peer-path {peer_path!r} "
                         f"({checks.first_line(err)}): {INSTALL_HINT}") from None


def import_peer_ot() -> tuple[types.ModuleType | None, str]:
    """torchcfm.optimal_transport (which imports POT), or None and why not."""
    try:
        module = importlib.import_module("torchcfm.optimal_transport")
        return module, f"POT {importlib.import_module('ot').__version__}"
    except Exception as err:  # noqa: BLE001 - POT's binary wheel may not fit this Python or numpy
        return None, f"POT not importable ({checks.first_line(err)})"


# ----------------------------------------------------------------------------- timing

def timed_call(fn, device: torch.device) -> float:
    """Seconds of one call of fn, the device's queue drained before and after."""
    return bench_train.timed(fn, 1, device, warmup=0)


def spread(seconds: list[float]) -> str:
    """The fastest and slowest single call against their median: how noisy the machine was."""
    median = statistics.median(seconds)
    return f"{100 * (min(seconds) / median - 1):+.0f}% / {100 * (max(seconds) / median - 1):+.0f}%"


# ----------------------------------------------------------------------------- 1. the network

def preset_shape(preset: str) -> tuple[int, int]:
    """(image size, classes) the preset is meant for: ImageNet-64's, or 32x32 shapes' 10 classes."""
    return (64, 1000) if preset == "imagenet64" else (32, 10)


def build_peer(peer_unet: types.ModuleType, preset: str, image_size: int, num_classes: int,
               resblock_updown: bool = False) -> torch.nn.Module:
    """torchcfm's UNetModel (the wrapper torchcfm exports) with our preset's settings."""
    p = unet.PRESETS[preset]
    original = peer_unet.normalization
    # ADM's GroupNorm has 32 groups, which must divide the channels: where they do not (tiny's
    # 16 and 48 channels) take ours, min(32, channels / 4); everywhere else ADM's own 32.
    group_norm32 = importlib.import_module(peer_unet.__package__ + ".nn").GroupNorm32
    peer_unet.normalization = lambda c: group_norm32(32 if c % 32 == 0 else min(32, c // 4), c)
    try:
        return peer_unet.UNetModelWrapper(
            dim=(3, image_size, image_size), num_channels=p["base_channels"], num_res_blocks=p["num_res_blocks"],
            channel_mult=p["channel_mult"], class_cond=True, num_classes=num_classes,
            attention_resolutions=",".join(str(image_size // d) for d in p["attention_downsample"]),
            num_head_channels=p["num_head_channels"], use_scale_shift_norm=True, dropout=p["dropout"],
            resblock_updown=resblock_updown, use_new_attention_order=True)
    finally:
        peer_unet.normalization = original


def differences(preset: str, ours: torch.nn.Module, peer: torch.nn.Module, resblock_updown: bool) -> list[str]:
    """What differs between the two networks, in words."""
    p = unet.PRESETS[preset]
    emb_dim = 4 * p["base_channels"]
    n_ours, n_peer = unet.count_parameters(ours), unet.count_parameters(peer)
    gap = n_ours - n_peer
    notes = [f"parameters: ours {n_ours:,}, torchcfm {n_peer:,} (ours - torchcfm = {gap:+,}"
             + (f": our learned null-condition embedding, {emb_dim} values)" if gap == emb_dim else ")")]
    notes.append("up/downsampling: " + ("torchcfm ADM's residual blocks (its ImageNet-64 setting), ours one conv"
                                        if resblock_updown else "both one conv each (ADM's ImageNet-64 model uses "
                                        "residual blocks, 19M parameters more: --peer-resblock-updown)"))
    ours_gn, peer_gn = ({(m.num_channels, m.num_groups) for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
                        for net in (ours, peer))
    only_ours, only_peer = sorted(ours_gn - peer_gn), sorted(peer_gn - ours_gn)
    notes.append(f"group norm (channels, groups) in one only: ours {only_ours}, torchcfm {only_peer} (ours: min(32, "
                 f"channels/4) groups; torchcfm: ADM's 32 where it divides the channels)")
    notes.append(f"attention: both {p['num_head_channels']} channels per head, q/k/v split before the heads; ours "
                 "F.scaled_dot_product_attention (fused kernels on CUDA), torchcfm einsums and a float32 softmax "
                 "over the full HW x HW matrix")
    notes.append("the same cost: the embedding's SiLU (ours once, torchcfm in every block), time (ours embeds 1000 t)")
    return notes


def flops_per_image(forward, batch: int = 2) -> float:
    """FLOPs of forward + backward per image, with the math attention kernel so that attention
    counts (the flop counter knows no fused CPU attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        forward(batch).float().pow(2).mean().backward()
    return counter.get_total_flops() / batch


def bench_network(preset: str, peer_unet: types.ModuleType, batch: int, rounds: int, repeats: int, warmup: int,
                  compile_: bool, resblock_updown: bool, device: torch.device, seed: int = 0) -> tuple[dict, list[str]]:
    image_size, num_classes = preset_shape(preset)
    if device.type == "cuda":  # the previous preset's networks (or its out-of-memory failure) gone first
        gc.collect()
        torch.cuda.empty_cache()
    torch.manual_seed(seed)
    ours = unet.build_unet(preset, image_size, 3, num_classes).to(device).train()
    peer = build_peer(peer_unet, preset, image_size, num_classes, resblock_updown).to(device).train()
    notes = differences(preset, ours, peer, resblock_updown)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    t = torch.rand(batch, generator=generator).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    calls = {"ours": lambda net, x_, t_, y_: net(x_, t_, y_),     # forward(x, t, cond)
             "peer": lambda net, x_, t_, y_: net(t_, x_, y_)}     # forward(t, x, y)
    networks = {"ours": ours, "peer": peer}
    flops = {name: flops_per_image(lambda n, name=name: calls[name](networks[name], x[:n], t[:n], y[:n]))
             for name in networks}
    cuda = device.type == "cuda"
    if cuda:  # train.py's policy
        networks = {name: net.to(memory_format=torch.channels_last) for name, net in networks.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    runnable = {name: torch.compile(net) if compile_ else net for name, net in networks.items()}

    def step(name: str):
        def run() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = calls[name](runnable[name], x, t, y)
            out.float().pow(2).mean().backward()
        return run

    peak, warm_s = {}, {}
    for name in networks:  # warm-up (compilation, allocator, cuDNN's choices), one network at a time
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(warmup):
            networks[name].zero_grad(set_to_none=True)
            timed_call(step(name), device)
        warm_s[name] = time.perf_counter() - start
        peak[name] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    seconds = {"ours": [], "peer": []}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for name in networks:
            for _ in range(repeats):
                networks[name].zero_grad(set_to_none=True)  # outside the timed call, for both
                seconds[name].append(timed_call(step(name), device))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    row = {"preset": preset, "image": f"3x{image_size}x{image_size}", "precision": "bf16" if cuda else "fp32",
           "compile": "yes" if compile_ else "no", "calls": f"{rounds} x {repeats}",
           "params ours": unet.count_parameters(ours), "params torchcfm": unet.count_parameters(peer),
           "GFLOP/img ours": flops["ours"] / 1e9, "GFLOP/img torchcfm": flops["peer"] / 1e9,
           "img/s ours": batch / median["ours"], "img/s torchcfm": batch / median["peer"],
           "ours / torchcfm": median["peer"] / median["ours"],
           "spread ours": spread(seconds["ours"]), "spread torchcfm": spread(seconds["peer"]),
           "warm-up s ours / torchcfm": f"{warm_s['ours']:.1f} / {warm_s['peer']:.1f}",
           "load": f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"}
    if cuda:
        row["peak GiB ours / torchcfm"] = f"{peak['ours']:.1f} / {peak['peer']:.1f}"
    return row, notes


# ----------------------------------------------------------------------------- 2. OT coupling

def pairwise_cost64(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """(n0, n1) squared distances in float64."""
    return torch.cdist(x0.flatten(1).double().cpu(), x1.flatten(1).double().cpu()).square().numpy()


def bench_ot(peer_ot: types.ModuleType, shape: tuple[int, ...], n: int, rounds: int, repeats: int,
             device: torch.device, seed: int = 0) -> dict:
    sampler = peer_ot.OTPlanSampler(method="exact")
    generator = torch.Generator().manual_seed(seed)
    groups = torch.zeros(n, dtype=torch.long, device=device)  # "ot" does not look at them
    np.random.seed(seed)  # sample_plan draws its pairs with numpy's global generator
    seconds = {"ours": [], "peer": []}
    worst = {"ours": 0.0, "peer": 0.0}
    pot_warnings = not_permutation = identical = 0
    for round_ in range(rounds + 1):  # round 0: warm-up, not timed
        x0 = torch.randn(n, *shape, generator=generator).to(device)
        x1 = torch.randn(n, *shape, generator=generator).to(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(repeats):
                s_ours = timed_call(lambda: flow.couple(x0, x1, groups, "ot"), device)
                s_peer = timed_call(lambda: sampler.sample_plan(x0, x1), device)
                if round_:
                    seconds["ours"].append(s_ours)
                    seconds["peer"].append(s_peer)
            plan = sampler.get_map(x0, x1)  # the plan sample_plan draws from, (n0, n1); untimed
        pot_warnings += len(caught)
        cost = pairwise_cost64(x0, x1)
        rows, cols = linear_sum_assignment(cost)
        best = float(cost[rows, cols].sum())  # the float64 optimum
        perm = flow.ot_permutation(x0, x1).cpu().numpy()  # x0[perm[i]] pairs with x1[i]
        cost_ours = float(cost[perm, np.arange(n)].sum())
        cost_peer = n * float((plan * cost).sum())
        support = np.argwhere(plan > 0.5 / n)
        not_permutation += int(len(support) != n or len(set(support[:, 0])) != n or len(set(support[:, 1])) != n)
        peer_perm = np.full(n, -1)
        peer_perm[support[:, 1]] = support[:, 0]  # x0[peer_perm[i]] pairs with x1[i]
        identical += int(np.array_equal(perm, peer_perm))
        worst["ours"] = max(worst["ours"], abs(cost_ours - best) / best)
        worst["peer"] = max(worst["peer"], abs(cost_peer - best) / best)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    same = worst["ours"] <= 1e-6 and worst["peer"] <= 1e-6
    return {"x": "x".join(map(str, shape)), "batch": n, "calls": len(seconds["ours"]),
            "ours ms": 1000 * median["ours"], "torchcfm ms": 1000 * median["peer"],
            "ours / torchcfm": median["peer"] / median["ours"],
            "spread ours": spread(seconds["ours"]), "spread torchcfm": spread(seconds["peer"]),
            "worst rel. gap ours": f"{worst['ours']:.1e}", "worst rel. gap torchcfm": f"{worst['peer']:.1e}",
            "same pairing": f"{'yes' if same else 'NO'} ({rounds + 1} pairs)", "identical permutations": identical,
            "POT warnings": pot_warnings, "plans not a permutation": not_permutation}


# ----------------------------------------------------------------------------- output

def cell(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(rows: list[dict]) -> str:
    return "\n".join(experiment.table(list(rows[0]), [[cell(v) for v in row.values()] for row in rows]))


def print_row(rows: list[dict]) -> None:
    """The table so far: its header with the first row, then one line per row as it comes."""
    text = table(rows)
    print(text if len(rows) == 1 else text.split("\n")[-1], flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = checks.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="net,ot", help="net, ot or net,ot")
    parser.add_argument("--presets", default=None, help="comma-separated presets (default: DEFAULTS[device])")
    parser.add_argument("--batch-size", type=int, default=None, help="default: DEFAULTS[device]")
    parser.add_argument("--rounds", type=int, default=None, help="alternating network rounds (default: DEFAULTS)")
    parser.add_argument("--repeats", type=int, default=None, help="calls per network per round (default: 5 "
                        "for tiny, else 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per network first (default: DEFAULTS)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--peer-resblock-updown", action="store_true",
                        help="torchcfm with ADM's residual up/downsampling blocks (ADM's own ImageNet-64 setting) "
                             "instead of one conv each, as ours")
    parser.add_argument("--ot-shapes", default="3x32x32,3x64x64", help="image shapes of the OT batches")
    parser.add_argument("--ot-batches", default="64,128,256", help="OT batch sizes")
    parser.add_argument("--ot-rounds", type=int, default=5, help="OT rounds, a new random pair each")
    parser.add_argument("--ot-repeats", type=int, default=3, help="calls of each per round, alternating")
    parser.add_argument("--peer-path", default=os.environ.get(PEER_ENV, DEFAULT_PEER_PATH),
                        help=f"where torchcfm (and POT) are: a pip --target folder or the torchcfm wheel; "
                             f"os.pathsep-separated (default: ${PEER_ENV}, else {DEFAULT_PEER_PATH})")
    parser.add_argument("--smoke", action="store_true", help="seconds: DEFAULTS['smoke']")
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"net", "ot"}:
        raise ValueError(f"--parts {args.parts!r}: choose net, ot or net,ot")
    device = checks.resolve_device(args.device)
    for key, value in DEFAULTS["smoke" if args.smoke else "cuda" if device.type == "cuda" else "cpu"].items():
        if args.smoke or getattr(args, key) is None:
            setattr(args, key, value)
    for flag in ("batch_size", "rounds", "repeats", "ot_rounds", "ot_repeats"):
        checks.check_at_least(getattr(args, flag), 1, "--" + flag.replace("_", "-"))
    checks.check_at_least(args.warmup, 0, "--warmup")
    if args.out:
        outputs.check_out_file(args.out, "--out")
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in unet.PRESETS]
    if unknown:
        raise ValueError(f"--presets: unknown {', '.join(unknown)}; choose among {', '.join(unet.PRESETS)}")
    batch, rounds, repeats, warmup = args.batch_size, args.rounds, args.repeats, args.warmup
    try:
        ot_shapes = [tuple(int(d) for d in s.split("x")) for s in args.ot_shapes.split(",") if s]
        ot_batches = [int(b) for b in args.ot_batches.split(",") if b]
        assert all(n >= 2 for n in ot_batches) and all(d >= 1 for s in ot_shapes for d in s)
    except (ValueError, AssertionError):
        raise ValueError("--ot-shapes like 3x32x32,3x64x64 and --ot-batches (at least 2) like 64,128,256") from None

    peer_unet = import_peer(args.peer_path)
    peer_ot, ot_status = import_peer_ot() if "ot" in parts else (None, "OT part not run")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    version = getattr(sys.modules.get("torchcfm.version"), "__version__", "?")
    lines = [f"{checks.describe_device(device)}; torch {torch.__version__}; torchcfm {version}; {ot_status}; "
             f"Python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d %H:%M')}; load {load}", ""]
    print("\n".join(lines), flush=True)

    if "net" in parts:
        title = (f"Network forward + backward, batch {batch}, medians of single calls in {rounds} alternating rounds "
                 f"(calls: rounds x calls per round) after {warmup} warm-up call(s) each; ours / torchcfm > 1: ours "
                 f"faster; spread: fastest / slowest call against the median")
        print(title + "\n", flush=True)
        rows, notes = [], []
        for preset in presets:
            try:
                row, preset_notes = bench_network(preset, peer_unet, batch, rounds, repeats or (5 if preset == "tiny"
                                                  else 1), warmup, args.compile, args.peer_resblock_updown, device)
            except torch.OutOfMemoryError as err:  # one GPU session: keep the other presets' numbers
                notes.append(f"- {preset}: out of memory at batch {batch} ({checks.first_line(err, 120)}); "
                             f"try a smaller --batch-size")
                print(notes[-1], flush=True)
                continue
            rows.append(row)
            notes += [f"- {preset}: {note}" for note in preset_notes]
            print_row(rows)
        text = ["Architecture, ours (condprior unet.py) vs torchcfm's UNetModel configured as the preset:", *notes]
        print("\n" + "\n".join(text) + "\n", flush=True)
        lines += [title, "", table(rows) if rows else "(no preset ran)", "", *text, ""]
    if "ot" in parts:
        if peer_ot is None:
            note = f"OT coupling: skipped, {ot_status}; install POT's wheel for this Python into --peer-path"
            print(note, flush=True)
            lines += [note, ""]
        else:
            title = (f"OT coupling: flow.couple(x0, x1, groups, 'ot') vs torchcfm OTPlanSampler('exact')"
                     f".sample_plan, medians of {args.ot_rounds} alternating rounds x {args.ot_repeats} calls (a new "
                     f"random pair each round, after one warm-up pair); rel. gap: total squared cost over the float64 "
                     f"optimum (torchcfm: its plan before the draw); same pairing: both within 1e-6")
            print(title + "\n", flush=True)
            rows = []
            for shape in ot_shapes:
                for n in ot_batches:
                    rows.append(bench_ot(peer_ot, shape, n, args.ot_rounds, args.ot_repeats, device))
                    print_row(rows)
            lines += [title, "", table(rows), ""]
    if args.out:
        outputs.write_text(args.out, "\n".join(lines) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    checks.run_main(main)
