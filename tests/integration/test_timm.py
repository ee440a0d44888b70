"""hvadam.timm: the one-call registration with timm's optimizer factory.

The factory checks run once, in a subprocess (tests/integration/timm_checks.py), against the
installed timm. timm imports torchvision, and the torchvision that goes with a CPU-only torch
build may not import beside it; then the subprocess replaces torchvision with an empty stand-in
(nothing the checks run calls into it), and the test says so in its output."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("timm_checks.py")

needs_timm = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="timm is not installed"
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_importing_hvadam_imports_no_timm_and_register_says_what_is_missing():
    code = (
        "import sys\n"
        "import hvadam, hvadam.timm\n"
        "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules, 'eager import'\n"
        "sys.modules['timm'] = None  # as if timm were not installed\n"
        "try:\n    hvadam.timm.register()\nexcept ImportError as e:\n    print(e)\n"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "needs timm (pip install timm)" in result.stdout


@pytest.fixture(scope="module")
def checks() -> tuple[str, str]:
    """The checks' output, and where they ran (with torchvision or with the stand-in)."""
    stub = run("-c", "import torchvision").returncode != 0
    result = run(str(CHECKS), *(["--stub-torchvision"] if stub else []))
    assert result.returncode == 0, result.stdout + result.stderr
    where = "torchvision stubbed (it does not import here)" if stub else "real torchvision"
    return result.stdout, where


def outcome(output: str, check: str) -> str:
    found = re.search(rf"^CHECK {check}: (ok|FAILED)$", output, re.M)
    assert found is not None, output
    return found.group(1)


@needs_timm
def test_timm_factory_names_layer_decay_and_lookahead(checks, capsys):
    output, where = checks
    assert outcome(output, "factory") == "ok", output
    with capsys.disabled():
        version = re.search(r"^timm (\S+)$", output, re.M)
        print(f"\n[timm {version.group(1) if version else '?'} checks ran with {where}]")


@needs_timm
def test_lookahead_checkpoint_resumes_exactly(checks):
    output, _ = checks
    assert outcome(output, "lookahead_resume") == "ok", output
