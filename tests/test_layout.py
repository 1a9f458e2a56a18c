"""The layout the brief asks for, read from the source: six scripts at the top, the plumbing in one
package below them, and imports that point down.

    flow.py, unet.py   import nothing of ours: the method's pieces stand alone
    prior.py           only the statistics and condition helpers (a fork edits this one file)
    eval_fid.py        none of the model side (prior, flow, unet, train, sample) nor the run's
                       configuration: a metric that cannot be tuned by the model it measures
    train.py           the only script that imports the run configuration, its resume and its
                       prior cache
    plumbing/          imports no script, except config.py and priorcache.py, which offer and
                       build the priors, couplings and presets that train.py's command line names
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("prior", "flow", "unet", "sample", "train", "eval_fid")
RUN_CONFIGURATION = {"plumbing.config", "plumbing.priorcache"}


def package_modules() -> set[str]:
    return {f"plumbing.{path.stem}" for path in (ROOT / "plumbing").glob("*.py") if path.stem != "__init__"}


def imports_of_ours(path: Path) -> set[str]:
    """The modules of this repository that `path` imports, at any depth of its code, by their
    dotted names (`from plumbing import data` is plumbing.data; `from . import data` inside the
    package too)."""
    ours, found = set(SCRIPTS) | package_modules(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "plumbing" if node.level == 1 else node.module or ""
            if node.level == 1 and node.module:
                base = f"plumbing.{node.module}"
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in ours}


def test_the_top_level_is_the_six_scripts():
    assert sorted(path.stem for path in ROOT.glob("*.py")) == sorted(SCRIPTS)
    assert (ROOT / "plumbing" / "__init__.py").is_file()


@pytest.mark.parametrize("script", ["flow", "unet"])
def test_the_method_pieces_import_nothing_of_ours(script):
    assert imports_of_ours(ROOT / f"{script}.py") == set()


def test_prior_imports_only_the_statistics_and_condition_helpers():
    assert imports_of_ours(ROOT / "prior.py") <= {"plumbing.stats", "plumbing.conditions"}


def test_the_metric_imports_nothing_of_the_model_or_the_run():
    forbidden = {"prior", "flow", "unet", "train", "sample"} | RUN_CONFIGURATION | {"plumbing.checkpoint"}
    assert imports_of_ours(ROOT / "eval_fid.py") & forbidden == set()


def test_only_train_imports_the_run_configuration_and_resume():
    takers = {script for script in SCRIPTS if imports_of_ours(ROOT / f"{script}.py") & RUN_CONFIGURATION}
    assert takers == {"train"}


def test_the_plumbing_imports_no_script_but_the_run_configuration():
    for path in sorted((ROOT / "plumbing").glob("*.py")):
        scripts = imports_of_ours(path) & set(SCRIPTS)
        allowed = {"prior", "flow", "unet"} if f"plumbing.{path.stem}" in RUN_CONFIGURATION else set()
        assert scripts <= allowed, f"{path.name} imports {sorted(scripts - allowed)}"


def test_the_rule_reader_sees_every_import_form(tmp_path):
    """The checks above are only as good as imports_of_ours: a hand-written file with each form."""
    probe = tmp_path / "probe.py"
    probe.write_text("import flow\nimport prior as priors\nfrom plumbing import data, checks\n"
                     "from plumbing.config import Config\nimport numpy\n\ndef f():\n    import unet\n")
    assert imports_of_ours(probe) == {"flow", "prior", "plumbing", "plumbing.data", "plumbing.checks",
                                      "plumbing.config", "unet"} - {"plumbing"}
