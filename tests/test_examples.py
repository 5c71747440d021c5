"""Every example runs as a script, on small sizes, and ends with "ok" (its own checks passed).

Run in-process with runpy (kernels compiled once for the whole session), with ``sys.argv`` as a
user would give it."""
from __future__ import annotations

import pathlib
import runpy
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

CASES = {
    "quickstart.py": ["--mib", "1"],
    "custom_policy.py": [],
    "device_reset.py": ["--mib", "2"],
    "scipy_solver.py": ["--grid", "16", "--policies", "static,access_counter"],
    "pipeline.py": ["--mib", "1", "--batches", "2", "--policies", "static,access_counter"],
}


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name, monkeypatch, capsys):
    if name == "scipy_solver.py":
        pytest.importorskip("scipy")
    monkeypatch.setattr(sys, "argv", [name] + CASES[name])
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    except SystemExit as exc:          # argparse or the example itself
        assert exc.code in (0, None), f"{name} exited {exc.code}"
    out = capsys.readouterr().out
    assert out.rstrip().endswith("ok"), out[-2000:]
