"""The README's JAX quickstart runs as written, and hvadam_jax imports neither torch nor hvadam."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Any import of torch or hvadam in the child fails: their modules are set to None.
NO_TORCH = "import sys; sys.modules.update(torch=None, hvadam=None)\n"


def run_without_torch(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_readme_jax_quickstart_runs_without_torch():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## JAX\n") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    output = run_without_torch(block)
    loss = float(re.search(r"loss (\S+)", output).group(1))
    assert loss < 0.02, output  # the noise floor is 0.01; the initial loss is about 3
    assert "'restart_count'" in output and "'nonfinite_steps': 0" in output


def test_import_pulls_in_neither_torch_nor_hvadam():
    code = (
        "import hvadam_jax\n"
        "print(sorted(name for name, module in sys.modules.items()\n"
        "             if module is not None and name.startswith(('torch', 'hvadam'))))"
    )
    imported = run_without_torch(code).strip()
    assert imported == "['hvadam_jax', 'hvadam_jax.scope', 'hvadam_jax.transform']"


def test_jax_quickstart_example_trains():
    """examples/jax_quickstart.py's own code, 100 steps instead of 1000."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jax_quickstart", ROOT / "examples/jax_quickstart.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.STEPS = 100
    train_data, valid_data, _ = example.make_data()
    start = float(example.loss(example.init_model(example.jax.random.PRNGKey(0)), *valid_data))
    params, state = example.train("hvadam", 0.1, train_data)
    assert float(example.loss(params, *valid_data)) < 0.5 * start
    assert example.hvadam_jax.diagnostics(state)[0]["steps"] == 100
