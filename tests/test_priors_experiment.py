"""bench/priors.py: its named lists of compare.py entries at smoke size, and a second run that
recomputes nothing."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare  # noqa: E402
import priors  # noqa: E402


def test_bad_config_and_parts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown --config 'laptop'"):
        priors.main(["--config", "laptop", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown --parts speed"):
        priors.main(["--config", "smoke", "--parts", "speed", "--out", str(tmp_path)])


def test_smoke_run_reports_every_method_and_nfe_and_resumes(tmp_path):
    out = tmp_path / "smoke"
    report = priors.main(["--config", "smoke", "--out", str(out)]).read_text()
    for part, (_, entries) in priors.PARTS.items():
        config, _ = priors.CONFIGS["smoke"][part]
        points = compare.measured_points(out / part, config)
        for entry in entries:
            method = compare.parse_method(entry)
            assert (out / part / "train" / f"{method.slug}_seed0" / "method.json").is_file()
            for nfe in config.euler_nfes:
                point = points[compare.point_key(method, 0, config.steps, "euler", nfe)]
                assert point["n"] == config.n and point["metric"] == "FD-clf" and point["value"] >= 0
                if part == "shapes_attributes":  # attribute errors instead of the accuracy
                    assert {"colour_error", "position_error_px", "size_rank_correlation"} <= set(point)
            assert points[f"cost/{method.slug}_seed0"]["transport_cost"] > 0
            assert f"| {method.label} |" in report
        assert (out / part / "fd_vs_nfe.png").is_file() and (out / part / "fd_vs_step.png").is_file()
    copies = compare.measured_points(out / "mnist", priors.CONFIGS["smoke"]["mnist"][0])
    assert copies["copy/kmeans-k16"]["median"] >= copies["copy/kmeans-k16"]["p5"] >= 0
    assert "Copy check" in report and "](mnist/fd_vs_nfe.png)" in report
    # a second run finds every point in results.json and every checkpoint on disk: nothing is recomputed
    checkpoints = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    measured = {part: json.loads((out / part / "results.json").read_text()) for part in priors.PARTS}
    priors.main(["--config", "smoke", "--out", str(out)])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == checkpoints
    assert {part: json.loads((out / part / "results.json").read_text()) for part in priors.PARTS} == measured
