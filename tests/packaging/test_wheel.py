"""The published artefacts: `python -m build` makes an sdist and a wheel that hold only the
intended files, and the wheel, installed into a fresh virtual environment, runs the quickstart.

The build runs without isolation (setuptools from the test environment: offline and fast) on a
copy of the files that go into a distribution. The fresh environment gets the wheel with
`--no-deps` and sees the already installed torch through a `.pth` file, so nothing is
downloaded; `hvadam` is then imported from the wheel, not from the source tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTED = (
    "src",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "MANIFEST.in",
    "docs",
)
PYPROJECT = (ROOT / "pyproject.toml").read_text()
VERSION = re.search(r'^version = "(.+)"$', PYPROJECT, re.M).group(1)
# The [project] dependencies, one line (tomllib is not in Python 3.10).
DEPENDENCIES = re.findall(
    r'"([^"]+)"', re.search(r"^dependencies = (.+)$", PYPROJECT, re.M).group(1)
)
NAME = f"hvadam-{VERSION}"


def run(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def source_files() -> set[str]:
    """What the wheel must hold of src/: every module of every package, and py.typed."""
    files = set()
    for package in (ROOT / "src").iterdir():
        if not (package / "__init__.py").is_file():
            continue
        for path in package.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py" or path.name == "py.typed":
                files.add(path.relative_to(ROOT / "src").as_posix())
    return files


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("build")
    project = work / "project"
    project.mkdir()
    for name in DISTRIBUTED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, project / name)
    out = work / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, project, cwd=project)
    return out


def test_wheel_holds_the_packages_and_nothing_else(dist):
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"{NAME}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{NAME}.dist-info/METADATA").decode()
    info = f"{NAME}.dist-info/"
    expected = source_files() | {
        info + name for name in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt")
    }
    expected.add(info + "licenses/LICENSE")
    assert names == expected
    assert "hvadam/py.typed" in names and "hvadam/timm.py" in names

    assert re.search(rf"^Version: {re.escape(VERSION)}$", metadata, re.M)
    assert re.search(r"^License-Expression: MIT$", metadata, re.M)
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    # The library depends on torch alone; everything else sits behind an extra.
    assert [r for r in requires if "extra ==" not in r] == DEPENDENCIES
    assert len(DEPENDENCIES) == 1 and DEPENDENCIES[0].startswith("torch>=")


def test_sdist_holds_sources_and_documents(dist):
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"{NAME}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(NAME + "/") for name in archive.getnames()}
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "docs/algorithm.md"):
        assert name in names, name
    assert {"src/" + f for f in source_files()} <= names
    assert not {n for n in names if n.split("/")[0] in ("tests", "results", "examples", ".ci")}
    assert not {n for n in names if "__pycache__" in n or n.endswith(".pyc")}


def test_wheel_installs_into_a_fresh_venv_and_runs_the_quickstart(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel)
    # torch (and numpy) from the test environment, after the fresh site-packages on sys.path.
    fresh_site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    (fresh_site / "zz_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = run(python, "-c", "import hvadam; print(hvadam.__version__, hvadam.__file__)")
    version, location = where.stdout.split()
    assert version == VERSION
    assert Path(location).is_relative_to(fresh_site), location

    # The README's quickstart block, as written.
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S)
    assert block is not None
    output = run(python, "-c", block.group(1), cwd=tmp_path).stdout
    assert "ScopeDiagnostics" in output

    # examples/quickstart.py's code (its train/loss functions, 100 steps instead of 1000).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import quickstart as q\n"
        "train, valid, test = q.make_data()\n"
        "for name in q.OPTIMIZERS:\n"
        "    model = q.train(name, 1e-2, train, steps=100)\n"
        "    print(name, q.loss(model, valid))\n"
    )
    output = run(python, "-c", code, ROOT / "examples", cwd=tmp_path).stdout
    losses = dict(line.split() for line in output.splitlines())
    assert set(losses) == {"HVAdam", "Adam"} and all(float(v) < 1.0 for v in losses.values())
