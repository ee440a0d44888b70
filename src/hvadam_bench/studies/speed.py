"""The speed study: ms per step and memory of every HVAdam path against torch's Adam and AdamW
(loop, foreach, fused) and adabelief-pytorch, interleaved in one run.

Timing: for each model size, every optimizer is warmed up (the fused paths compile here; the
cold compile time is reported), then rounds of timed steps run optimizer after optimizer, so
that drifts of a shared machine hit all of them alike; medians are reported. Each round also
times a large copy (one read and one write stream) and a large sum (one read stream).

The bandwidth floor of a step is the bytes it must move over the bandwidth those measured in the
same rounds: Adam's one pass, 7 floats per parameter, streams like the copy; HVAdam's update
pass, 9 floats, does too, while its reduction pass only reads (3 floats) and so streams like the
sum. Read-only streams can run slower or faster than copies, so the floor is measured rather
than taken as 12/7 of Adam's.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hvadam import HVAdam
from hvadam_bench.reporting import figures as plots
from hvadam_bench.reporting.markdown import fmt, table
from hvadam_bench.runner import (
    BenchError,
    Counter,
    atomic_write_json,
    atomic_write_text,
    common_arguments,
    names,
    numbers,
    prepare_output,
    versions,
)
from hvadam_bench.studies import speed_compile_cost as compile_cost
from hvadam_bench.studies import speed_training_step as training_step

# Floats per parameter a step must move: (in read-only passes, in read-and-write passes).
FLOATS_PER_PARAM = {"hvadam": (3, 9), "adam": (0, 7)}


def _adabelief(params):
    from adabelief_pytorch import AdaBelief

    return AdaBelief(params, lr=1e-3, eps=1e-16, print_change_log=False)


OPTIMIZERS: dict[str, tuple[str, Callable]] = {
    "hvadam_single": ("hvadam", lambda p: HVAdam(p, foreach=False)),
    "hvadam_foreach": ("hvadam", lambda p: HVAdam(p, foreach=True)),
    "hvadam_fused": ("hvadam", lambda p: HVAdam(p, fused=True)),
    "hvadam_fused_bf16_state": (
        "hvadam",
        lambda p: HVAdam(p, fused=True, state_dtype=torch.bfloat16),
    ),
    "adam_loop": ("adam", lambda p: torch.optim.Adam(p, foreach=False)),
    "adam_foreach": ("adam", lambda p: torch.optim.Adam(p, foreach=True)),
    "adam_fused": ("adam", lambda p: torch.optim.Adam(p, fused=True)),
    "adamw_loop": ("adam", lambda p: torch.optim.AdamW(p, foreach=False)),
    "adamw_foreach": ("adam", lambda p: torch.optim.AdamW(p, foreach=True)),
    "adamw_fused": ("adam", lambda p: torch.optim.AdamW(p, fused=True)),
    "adabelief_pytorch": ("adam", _adabelief),
}


@dataclass
class SpeedConfig:
    sizes: list[int]
    optimizers: list[str]
    tensors: int = 100
    rounds: int = 5
    steps_per_round: int = 3
    device: str = "cpu"
    preset: str = "custom"

    @classmethod
    def preset_named(cls, name: str, device: str = "cpu") -> SpeedConfig:
        sizes = [1_000_000, 10_000_000] if name == "quick" else [1_000_000, 10_000_000, 50_000_000]
        if name == "full" and device.startswith("cuda"):
            sizes.append(200_000_000)  # the 100M+ point; ~4 GB per optimizer
        return cls(sizes=sizes, optimizers=list(OPTIMIZERS), device=device, preset=name)

    def validate(self) -> None:
        unknown = [name for name in self.optimizers if name not in OPTIMIZERS]
        if unknown:
            raise BenchError(f"unknown optimizer {unknown[0]!r}; known: {', '.join(OPTIMIZERS)}")
        if self.tensors < 1 or self.rounds < 1:
            raise BenchError("--tensors and --rounds must be at least 1")
        if not self.sizes or min(self.sizes) < self.tensors:
            raise BenchError(f"sizes must be at least the number of tensors ({self.tensors})")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError("--device cuda: no CUDA device is available")


def _model(size: int, tensors: int, device: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    per = size // tensors
    params = []
    for _ in range(tensors):
        param = torch.randn(per, generator=generator).to(device).requires_grad_()
        param.grad = torch.randn(per, generator=generator).to(device)
        params.append(param)
    return params


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_rss_reset() -> bool:
    """Hand the C allocator's free blocks back to the OS (else a step whose temporaries fit in
    memory an earlier step freed shows no growth) and reset the VmHWM high-water mark."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except (OSError, AttributeError):
        return False


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _peak_step_bytes(optimizer, device: str) -> int | None:
    """Memory a step needs beyond what is already allocated (temporaries)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        optimizer.step()
        _sync(device)
        return torch.cuda.max_memory_allocated() - before
    gc.collect()
    if not _peak_rss_reset():
        return None
    before = _rss_kib("VmRSS")
    optimizer.step()
    return max(0, _rss_kib("VmHWM") - before) * 1024


SYNC_CHECK_STEPS = 10


def _host_sync(optimizer, device: str) -> str | None:
    """On CUDA: the first host-device sync among :data:`SYNC_CHECK_STEPS` steps run under
    ``torch.cuda.set_sync_debug_mode("error")``, or ``""`` if there is none; None elsewhere."""
    if not device.startswith("cuda"):
        return None
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(SYNC_CHECK_STEPS):
            optimizer.step()
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return ""


def _state_bytes(optimizer) -> int:
    state = getattr(optimizer, "state", {})
    return sum(
        value.numel() * value.element_size()
        for per_param in state.values()
        for value in per_param.values()
        if torch.is_tensor(value)
    )


class _Streams:
    """Times a copy (one read and one write stream) and a sum (one read stream) of large
    tensors once per round, so that the floor follows the machine's bandwidth through the run.

    The sum, not a BLAS dot: BLAS threads keep spinning after a call and would slow whatever
    runs next (on 2 cores, the next optimizer's step and the copy)."""

    def __init__(self, device: str, numel: int = 25_000_000) -> None:
        self.source = torch.randn(numel, device=device)
        self.target = torch.empty_like(self.source)
        self.device = device
        self.copy_s: list[float] = []
        self.read_s: list[float] = []

    def _time(self, action: Callable[[], object]) -> float:
        _sync(self.device)
        start = time.perf_counter()
        action()
        _sync(self.device)
        return time.perf_counter() - start

    def sample(self) -> None:
        # Best of three, as STREAM reports: on a shared VM the first pass after any pause can
        # run at a third of the rate.
        self.copy_s.append(min(self._time(lambda: self.target.copy_(self.source)) for _ in "abc"))
        self.read_s.append(min(self._time(self.source.sum) for _ in "abc"))

    @property
    def tensor_bytes(self) -> int:
        return self.source.numel() * self.source.element_size()

    def copy_samples(self) -> list[float]:
        """Bytes per second, read and written, of each copy."""
        return [2 * self.tensor_bytes / seconds for seconds in self.copy_s]

    def read_samples(self) -> list[float]:
        """Bytes per second read by each sum."""
        return [self.tensor_bytes / seconds for seconds in self.read_s]


def floor_ms(family: str, size: int, copy_bw: float, read_bw: float) -> float:
    """The time a step of ``family`` needs to move its bytes at the measured bandwidths."""
    read_only, read_write = FLOATS_PER_PARAM[family]
    return (read_only * 4 * size / read_bw + read_write * 4 * size / copy_bw) * 1e3


def run(config: SpeedConfig, out: Path, show_progress: bool = True) -> dict:
    config.validate()
    streams = _Streams(config.device)
    results = {
        "meta": {
            **asdict(config),
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "machine": platform.processor() or platform.machine(),
        },
        "sizes": {},
    }  # fmt: skip
    tasks = [(size, name) for size in config.sizes for name in config.optimizers]
    counter = Counter(len(tasks), "speed warm-up", show_progress)
    for size in config.sizes:
        entries: dict = {}
        optimizers = {}
        for name in config.optimizers:
            counter.tick()
            params = _model(size, config.tensors, config.device)
            optimizer = OPTIMIZERS[name][1](params)
            start = time.perf_counter()
            optimizer.step()  # state creation, and compilation for the fused paths
            _sync(config.device)
            first = time.perf_counter() - start
            optimizer.step()
            entries[name] = {
                "first_step_s": first,
                "state_bytes_per_param": _state_bytes(optimizer) / size,
                "peak_step_extra_bytes": _peak_step_bytes(optimizer, config.device),
                "host_sync": _host_sync(optimizer, config.device),
                "times_ms": [],
            }
            optimizers[name] = optimizer
        for _ in range(config.rounds):
            for name, optimizer in optimizers.items():
                for _ in range(config.steps_per_round):
                    _sync(config.device)
                    start = time.perf_counter()
                    optimizer.step()
                    _sync(config.device)
                    entries[name]["times_ms"].append((time.perf_counter() - start) * 1e3)
            streams.sample()
        for entry in entries.values():
            entry["median_ms"] = statistics.median(entry["times_ms"])
        for entry in entries.values():
            for base in ("adam_fused", "adam_loop"):
                if base in entries:
                    entry[f"ratio_to_{base}"] = entry["median_ms"] / entries[base]["median_ms"]
        results["sizes"][str(size)] = entries
        del optimizers
        gc.collect()
    counter.close()
    copy_bw = statistics.median(streams.copy_samples())
    read_bw = statistics.median(streams.read_samples())
    for size, entries in results["sizes"].items():
        for name, entry in entries.items():
            entry["floor_ms"] = floor_ms(OPTIMIZERS[name][0], int(size), copy_bw, read_bw)
            entry["ratio_to_floor"] = entry["median_ms"] / entry["floor_ms"]
    results["meta"]["copy_bandwidth_GBps"] = copy_bw / 1e9
    results["meta"]["read_bandwidth_GBps"] = read_bw / 1e9
    results["meta"]["bandwidth_samples_GBps"] = {
        "copy": [rate / 1e9 for rate in streams.copy_samples()],
        "read": [rate / 1e9 for rate in streams.read_samples()],
    }
    results["meta"]["floor_ratio_hvadam_to_adam"] = floor_ms(
        "hvadam", 1, copy_bw, read_bw
    ) / floor_ms("adam", 1, copy_bw, read_bw)
    atomic_write_json(out / "speed.json", results)
    plots.speed_curves(results, out / "speed.png")
    atomic_write_text(out / "report.md", render_report(results))
    return results


def render_report(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# The speed study",
        "",
        f"Generated by `hvadam-bench speed` (preset `{meta['preset']}`) on {meta['device']} "
        f"({meta['machine']}, {meta['threads']} threads), torch {meta['versions']['torch']}: "
        f"{meta['tensors']} fp32 tensors per model, median of {meta['rounds']} interleaved "
        f"rounds of {meta['steps_per_round']} steps. Do not edit by hand: rerun the command.",
        "",
        f"Bandwidth measured in the same rounds (medians): copy {meta['copy_bandwidth_GBps']:.1f} "
        f"GB/s (read + write), sum {meta['read_bandwidth_GBps']:.1f} GB/s (read only).",
        "Floor: the bytes a step must move at those rates. Adam's one pass moves 7 floats per "
        "parameter at the copy's rate; HVAdam's update pass moves 9 at the copy's rate and its "
        "reduction pass reads 3 at the sum's rate. HVAdam's floor is therefore "
        f"{meta['floor_ratio_hvadam_to_adam']:.2f}× Adam's on this machine "
        "(12/7 = 1.71× if reads streamed as fast as copies).",
        "",
    ]
    if meta["device"].startswith("cuda"):
        lines += [
            f"Host-device syncs: every optimizer also ran {SYNC_CHECK_STEPS} steps under "
            '`torch.cuda.set_sync_debug_mode("error")`; the last column gives the first sync '
            "it raised, or none.",
            "",
        ]
    for size, entries in results["sizes"].items():
        lines += [f"## {int(size) / 1e6:g}M parameters", ""]
        rows = []
        for name, e in entries.items():
            peak = e["peak_step_extra_bytes"]
            rows.append(
                [
                    name, fmt(e["median_ms"]), fmt(e.get("ratio_to_adam_fused")),
                    fmt(e.get("ratio_to_adam_loop")), fmt(e["ratio_to_floor"]),
                    fmt(e["state_bytes_per_param"]),
                    fmt(None if peak is None else peak / int(size)),
                    fmt(e["first_step_s"]),
                    *_sync_cell(e),
                ]
            )  # fmt: skip
        lines.append(
            table(
                [
                    "optimizer",
                    "ms/step",
                    "× Adam fused",
                    "× Adam loop",
                    "× floor",
                    "state bytes/param",
                    "peak extra bytes/param",
                    "first step s",
                    *(["host syncs"] if meta["device"].startswith("cuda") else []),
                ],
                rows,
            )  # fmt: skip
        )
        lines.append("")
    if "training_step" in results:
        lines += [training_step.render_section(results["training_step"]), ""]
    if "compile_cost" in results:
        lines += [compile_cost.render(results["compile_cost"]), ""]
    lines += ["![ms per step](speed.png)", ""]
    return "\n".join(lines)


def _sync_cell(entry: dict) -> list[str]:
    """The host-sync column's cell: empty list on CPU (no column), else "none" or the error."""
    sync = entry.get("host_sync")
    if sync is None:
        return []
    return ["none" if sync == "" else sync.replace("|", "/")]


HELP = "ms per step and memory against Adam, AdamW and AdaBelief"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "speed", "1M and 10M parameters")
    parser.add_argument("--sizes", type=numbers, help="parameter counts, comma-separated")
    parser.add_argument("--optimizers", type=names, help="comma-separated optimizer names")
    parser.add_argument("--tensors", type=int, help="tensors per model (default 100)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-training-step",
        action="store_true",
        help="skip the whole-training-step section (transformer LM, PTB LSTM, CNN, 300 tensors)",
    )
    parser.add_argument(
        "--compile-cost",
        action="store_true",
        help="also time a cold torch.compile of a whole training step, HVAdam vs Adam "
        "(several minutes per optimizer on 2 cores)",
    )


def main(args: argparse.Namespace) -> int:
    config = SpeedConfig.preset_named(args.preset, args.device)
    if args.sizes is not None:
        config.sizes = [int(size) for size in args.sizes]
    for name in ("optimizers", "tensors", "rounds"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.validate()
    out = prepare_output(args.out)
    results = run(config, out, show_progress=not args.no_progress)
    if not args.no_training_step:
        step_config = training_step.TrainingStepConfig.preset_named(args.preset, args.device)
        results["training_step"] = training_step.run(step_config, out, not args.no_progress)
    if args.compile_cost:
        results["compile_cost"] = compile_cost.measure_all()
    # run() has written the per-size results already, so that a long or interrupted
    # training-step section loses none of them; this write adds the later sections.
    atomic_write_json(out / "speed.json", results)
    atomic_write_text(out / "report.md", render_report(results))
    print(f"wrote {out / 'speed.json'}, {out / 'report.md'} and {out / 'speed.png'}")
    for size, entries in results["sizes"].items():
        cells = ", ".join(f"{name} {e['median_ms']:.1f}" for name, e in entries.items())
        print(f"  {int(size):>11,d} params (ms/step): {cells}")
    return 0
