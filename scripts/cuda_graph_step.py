"""Capture a whole training step (forward, backward, ``optimizer.step()``) with HVAdam in one
CUDA graph, replay it on fresh batches, and compare with the same steps run eagerly.

HVAdam's ``step()`` never reads a device value on the host and never copies a host value to
the device (tests/hvadam/test_host_sync.py), and its step counters, per-step scalars and the
scope's decision live on the device: nothing in it should stop a capture. What a capture does
fix: the learning rate and other options given as Python floats are baked into the graph
(give ``lr`` as a CUDA tensor and update it in place to schedule it), and the set of
parameters that have gradients is the one seen at capture. The state must exist before the
capture (the first step creates it; the fused path compiles there too), so the graph is
captured after warm-up steps on a side stream, as PyTorch's whole-network capture recipe does.

``torch.optim.Adam(capturable=True)`` runs the same recipe as a control: if it fails too, the
failure is the environment's, not HVAdam's.

Usage (on a CUDA machine, from the repository root):
    PYTHONPATH=src python scripts/cuda_graph_step.py --out results/speed-cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hvadam import HVAdam

WARMUP_STEPS = 3

OPTIMIZERS: dict[str, Callable] = {
    "hvadam_foreach": lambda params: HVAdam(params, lr=1e-3, foreach=True),
    "hvadam_fused": lambda params: HVAdam(params, lr=1e-3, fused=True),
    "hvadam_foreach_tensor_lr": lambda params: HVAdam(
        params, lr=torch.tensor(1e-3, device="cuda"), foreach=True
    ),
    "adam_capturable": lambda params: torch.optim.Adam(params, lr=1e-3, capturable=True),
}


class SmallNet(nn.Module):
    """An MLP with layer norm: matrix products, reductions and elementwise kernels, enough
    tensors (8) for the optimizer's per-tensor and per-scope work to show."""

    def __init__(self, width: int = 256):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, width), nn.LayerNorm(width), nn.GELU(), nn.Linear(width, width),
            nn.GELU(), nn.Linear(width, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator(device="cuda").manual_seed(0)
    batches = []
    for _ in range(steps):
        x = torch.randn(512, 64, device="cuda", generator=generator)
        batches.append((x, x[:, :1].sin() + 0.1 * x[:, 1:2]))
    return batches


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def _eager_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    _loss(model, x, y).backward()
    optimizer.step()


def compare_graph_with_eager(optimizer: str | dict, steps: int = 20) -> dict:
    """Run ``steps`` training steps eagerly and, from the same start, ``WARMUP_STEPS`` eagerly
    on a side stream then the rest as replays of one captured graph; return how far the final
    parameters lie apart and whether the capture worked (with the error if not).

    ``optimizer`` is a name of :data:`OPTIMIZERS` or a dict of HVAdam options."""
    if isinstance(optimizer, dict):
        options = dict(optimizer)

        def make(params):
            return HVAdam(params, lr=1e-3, **options)

        name = "hvadam " + (", ".join(f"{k}={v}" for k, v in options.items()) or "default")
    else:
        make, name = OPTIMIZERS[optimizer], optimizer
    # Bitwise comparisons need the same kernels in both runs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    batches = _batches(steps)
    torch.manual_seed(0)
    eager_model = SmallNet().cuda()
    graph_model = SmallNet().cuda()
    graph_model.load_state_dict(eager_model.state_dict())
    eager_optimizer = make(eager_model.parameters())
    graph_optimizer = make(graph_model.parameters())
    result: dict = {"optimizer": name, "steps": steps, "warmup_steps": WARMUP_STEPS}

    for x, y in batches:
        _eager_step(eager_model, eager_optimizer, x, y)

    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches[:WARMUP_STEPS]:
            _eager_step(graph_model, graph_optimizer, x, y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph_optimizer.zero_grad(set_to_none=True)
    try:
        with torch.cuda.graph(graph):
            _loss(graph_model, static_x, static_y).backward()
            graph_optimizer.step()
    except Exception as error:  # what blocks the capture is the result here
        result.update(captured=False, error=f"{type(error).__name__}: {error}".splitlines()[0])
        return result
    for x, y in batches[WARMUP_STEPS:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
    torch.cuda.synchronize()

    deviation = magnitude = 0.0
    bitwise = True
    for eager_param, graph_param in zip(eager_model.parameters(), graph_model.parameters()):
        deviation = max(deviation, (eager_param - graph_param).abs().max().item())
        magnitude = max(magnitude, eager_param.abs().max().item())
        bitwise = bitwise and torch.equal(eager_param, graph_param)
    result.update(
        captured=True,
        error=None,
        max_param_deviation=deviation,
        max_param_magnitude=magnitude,
        bitwise_equal=bitwise,
        **_timings(eager_model, eager_optimizer, graph, static_x, static_y, batches[0]),
    )
    return result


def _timings(model, optimizer, graph, static_x, static_y, batch, repeats: int = 50) -> dict:
    """Median ms per training step, eager against graph replay (CUDA events)."""

    def median_ms(action: Callable[[], None]) -> float:
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            action()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]

    static_x.copy_(batch[0])
    static_y.copy_(batch[1])
    eager_ms = median_ms(lambda: _eager_step(model, optimizer, *batch))
    graph_ms = median_ms(graph.replay)
    return {"eager_ms_per_step": eager_ms, "graph_ms_per_step": graph_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/speed-cuda")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to capture", file=sys.stderr)
        return 2
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "runs": [],
    }
    for name in OPTIMIZERS:
        started = time.perf_counter()
        try:
            run = compare_graph_with_eager(name, args.steps)
        except Exception as error:  # an eager failure is a result too, for the other runs
            run = {"optimizer": name, "captured": False, "error": f"eager: {error}"}
        run["seconds"] = time.perf_counter() - started
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hvadam_bench.runner import atomic_write_text

    atomic_write_text(out / "cuda-graph.json", json.dumps(results, indent=1) + "\n")
    captured = all(run.get("captured") for run in results["runs"])
    print(f"wrote {out / 'cuda-graph.json'}; every capture worked: {captured}")
    return 0 if captured else 1


if __name__ == "__main__":
    sys.exit(main())
