"""What compiling a whole training step costs: ``torch.compile`` of forward, backward and
``opt.step()`` together, from a cold cache, with HVAdam against Adam on the same model.

Each measurement runs in its own process with an empty Inductor cache (and the FX graph cache
off), so nothing one optimizer compiled serves the next. "Cold" is the time of the first three
calls: the first traces and compiles with empty optimizer state, the second recompiles once the
state exists (every lazily initialised torch optimizer does), the third confirms no further
recompile; "warm" is the median of the steps after.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

# Name -> how to build the optimizer; HVAdam without flags takes its default path, which is
# the foreach path when the step is traced.
OPTIMIZERS = {
    "Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "HVAdam": lambda params: __import__("hvadam").HVAdam(params, lr=1e-3),
    "HVAdam (single-tensor)": lambda params: __import__("hvadam").HVAdam(
        params, lr=1e-3, foreach=False
    ),
}
COLD_CALLS = 3
WARM_CALLS = 20


def _model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 5-layer MLP (6 tensors of weights and biases): small, so the compile dominates."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    return model, torch.randn(16, 32), torch.randint(0, 10, (16,))


def measure_here(optimizer_name: str) -> dict:
    """Compile and time the step in this process (call it in a fresh one: see :func:`measure`)."""
    model, inputs, targets = _model()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())

    @torch.compile
    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss

    start = time.perf_counter()
    for _ in range(COLD_CALLS):
        step()
    cold = time.perf_counter() - start
    warm = []
    for _ in range(WARM_CALLS):
        start = time.perf_counter()
        step()
        warm.append(time.perf_counter() - start)
    return {"cold_s": cold, "warm_ms": statistics.median(warm) * 1e3}


def measure(optimizer_name: str, timeout_s: float = 1800) -> dict:
    """:func:`measure_here` in a fresh process with an empty Inductor cache."""
    with tempfile.TemporaryDirectory(prefix="hvadam-compile-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0")
        result = subprocess.run(
            [sys.executable, "-m", "hvadam_bench.studies.speed_compile_cost", optimizer_name],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"compiling a step with {optimizer_name} failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def with_ratios(results: dict) -> dict:
    """``results`` with each entry's cold and warm ratio to Adam's (when Adam was measured)."""
    adam = results.get("Adam")
    if adam is not None:
        for entry in results.values():
            entry["cold_ratio"] = entry["cold_s"] / adam["cold_s"]
            entry["warm_ratio"] = entry["warm_ms"] / adam["warm_ms"]
    return results


def measure_all(names: list[str] | None = None) -> dict:
    """Every optimizer's cold compile and warm step, one after the other, with ratios to Adam."""
    return with_ratios({name: measure(name) for name in names or list(OPTIMIZERS)})


def render(results: dict, heading: str = "##") -> str:
    """The markdown section of the speed report."""
    lines = [
        f"{heading} Compiling a whole training step",
        "",
        "`torch.compile` of forward, backward and `opt.step()` together (a 5-layer MLP), each "
        "optimizer in a fresh process with an empty Inductor cache. Cold: the first "
        f"{COLD_CALLS} calls (compile, recompile once the optimizer state exists); warm: the "
        f"median of the next {WARM_CALLS} steps. Measured one after the other, so machine "
        "load moves the ratios by tens of percent.",
        "",
        "| optimizer | cold compile (s) | vs Adam | warm step (ms) | vs Adam |",
        "|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        cold_ratio = f"{entry['cold_ratio']:.2f}x" if "cold_ratio" in entry else "-"
        warm_ratio = f"{entry['warm_ratio']:.2f}x" if "warm_ratio" in entry else "-"
        lines.append(
            f"| {name} | {entry['cold_s']:.0f} | {cold_ratio} | {entry['warm_ms']:.2f} | "
            f"{warm_ratio} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(measure_here(sys.argv[1])))
