"""bench/priors.py: the smoke configuration end to end, and a second run that recomputes nothing."""
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import priors  # noqa: E402


def rows(report: str, label: str) -> list[list[str]]:
    """The cells of the table rows whose first cell is `label`."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines()
            if line.startswith(f"| {label} |")]


def test_bad_config_and_parts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown --config 'laptop'"):
        priors.main(["--config", "laptop", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown --parts speed"):
        priors.main(["--config", "smoke", "--parts", "speed", "--out", str(tmp_path)])


def test_smoke_run_reports_every_method_and_nfe_and_resumes(tmp_path):
    out = tmp_path / "smoke"
    report = priors.main(["--config", "smoke", "--out", str(out)]).read_text()
    first = json.loads((out / "results.json").read_text())
    for part in priors.PARTS:
        config, _ = priors.CONFIGS["smoke"][part]
        for label, (slug, _) in priors.METHODS[part].items():
            # the long tables: one row per method and NFE, with a finite FD-clf in the third cell
            found = [r for r in rows(report, label) if len(r) > 2 and re.fullmatch(r"\d+", r[1])]
            found = [r for r in found if (part == "mnist") == (len(r) == 6)]  # mnist's table has 6 columns
            assert [int(r[1]) for r in found] == list(config.euler_nfes), (part, label)
            assert all(float(r[2]) >= 0 for r in found)
            for nfe in config.euler_nfes:
                point = first[f"{part}/{slug}/{nfe}"]
                assert point["n"] == config.n and point["metric"] == "FD-clf"
            assert first[f"{part}/cost/{slug}"]["transport_cost"] > 0
            assert (out / part / "figures" / f"grids_{slug}.png").is_file()
        if part == "mnist":  # straightness and the earlier checkpoint of every method
            for slug, _ in priors.METHODS[part].values():
                assert first[f"mnist/straight/{slug}"]["chord"] > 0
                assert f"mnist/step/{slug}/{config.steps // 2}" in first
                assert first[f"mnist/copy/{slug}"]["median"] >= first[f"mnist/copy/{slug}"]["p5"] >= 0
            assert first["mnist/copy/real"]["n"] == config.n
        else:  # attribute errors for every point, and the real images as the yardstick
            assert {"colour_error", "position_error_px", "size_rank_correlation"} <= set(first[f"{part}/mapper/1"])
            assert rows(report, "real held-out images")
    for name in ("mnist/figures/fd-clf_vs_nfe.png", "mnist/figures/fd-clf_vs_step.png",
                 "shapes_attributes/figures/fd-clf_vs_nfe.png", "shapes_attributes/figures/grid_real.png"):
        assert (out / name).is_file(), name
    # a second run finds every point in results.json and every checkpoint on disk: nothing is recomputed
    checkpoints = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    second = priors.main(["--config", "smoke", "--out", str(out)]).read_text()
    again = json.loads((out / "results.json").read_text())
    measured = {k: v for k, v in first.items() if not k.startswith("time/")}
    assert {k: v for k, v in again.items() if not k.startswith("time/")} == measured
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == checkpoints
    assert [line for line in second.splitlines()[3:]] == [line for line in report.splitlines()[3:]]
    # results of another configuration are not mixed in
    results = json.loads((out / "results.json").read_text())
    results["config/mnist"]["steps"] += 1
    (out / "results.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match="another configuration"):
        priors.main(["--config", "smoke", "--out", str(out), "--parts", "mnist"])
