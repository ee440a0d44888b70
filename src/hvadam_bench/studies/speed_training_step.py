"""The training-step section of the speed study: what HVAdam costs in a whole step of a model
people train, against torch's Adam and AdamW, default and fused.

Four workloads, each trained by six optimizers (HVAdam, Adam and AdamW, each on its default
path and with ``fused=True``), every optimizer on its own copy of the same initial model:

- ``transformer``: a small causal transformer LM (7.4M parameters in 52 tensors, 4 pre-norm
  blocks of width 256, tied embedding, batch 16 x 128 tokens of synthetic text);
- ``lstm``: the ``lm`` suite's PTB LSTM LM (2 layers, embedding 256, hidden 384, PTB's 10k
  vocabulary: 4.2M parameters in 10 tensors), on the PTB training text, 20 streams x 35 words,
  gradient clipped at 0.25 as the suite trains it;
- ``cnn``: a small CNN for 32x32 colour images (0.4M parameters, batch 32);
- ``many_small``: 150 residual layers of width 81 (1M parameters in 300 tensors), where the
  optimizer's per-tensor and per-call overhead, not its arithmetic, decides its time.

Timing: every optimizer first takes warm-up steps (the fused paths compile there; the first
step's time is reported), then rounds run every optimizer for a few steps in turn, the order
rotating from round to round, so that the drifts of a shared machine hit all of them alike.
Each step is timed whole (zero_grad, forward, backward, ``step()``) and ``step()`` on its
own; medians are reported, and the optimizer's share is its median over the step's median.

Runs on its own (``python -m hvadam_bench.studies.speed_training_step --out results/speed``)
and writes ``training-step.md`` and ``training-step.json`` there; :func:`run` and
:func:`render_section` are what ``hvadam-bench speed`` calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from hvadam import HVAdam
from hvadam_bench.runner import atomic_write_text
from hvadam_bench.workloads.step_models import BUILDERS, WORKLOADS, Workload

# Small enough that no model drifts far over a few hundred timed steps: the times measure the
# work of a step, which does not depend on the learning rate.
LEARNING_RATE = 1e-4

OPTIMIZERS: dict[str, Callable] = {
    "hvadam": lambda params: HVAdam(params, lr=LEARNING_RATE),
    "hvadam_fused": lambda params: HVAdam(params, lr=LEARNING_RATE, fused=True),
    "adam": lambda params: torch.optim.Adam(params, lr=LEARNING_RATE),
    "adam_fused": lambda params: torch.optim.Adam(params, lr=LEARNING_RATE, fused=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=LEARNING_RATE),
    "adamw_fused": lambda params: torch.optim.AdamW(params, lr=LEARNING_RATE, fused=True),
}
# Each optimizer is compared with Adam on the same kind of path.
BASELINE = {name: "adam_fused" if name.endswith("_fused") else "adam" for name in OPTIMIZERS}

# --- timing --------------------------------------------------------------------------------


@dataclass
class TrainingStepConfig:
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    rounds: int = 10
    steps_per_round: int = 2
    warmup_steps: int = 3
    device: str = "cpu"
    tiny: bool = False  # toy sizes of every model, for tests
    preset: str = "quick"

    @classmethod
    def preset_named(cls, name: str, device: str = "cpu") -> TrainingStepConfig:
        """``quick``: 20 timed steps per optimizer; ``full``: 40 (a GPU steps these models in
        milliseconds)."""
        rounds = 20 if name == "full" else 10
        return cls(rounds=rounds, device=device, preset=name)

    def validate(self) -> None:
        for label, chosen, known in (
            ("workload", self.workloads, BUILDERS),
            ("optimizer", self.optimizers, OPTIMIZERS),
        ):
            unknown = [name for name in chosen if name not in known]
            if unknown or not chosen:
                raise ValueError(f"unknown or no {label} {unknown[:1]}; known: {', '.join(known)}")
        if self.rounds < 1 or self.steps_per_round < 1 or self.warmup_steps < 1:
            raise ValueError("rounds, steps per round and warm-up steps must be at least 1")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: no CUDA device is available")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed_step(workload: Workload, model: nn.Module, optimizer, device: str) -> tuple:
    """One training step; returns (whole step, ``optimizer.step()``) in seconds."""
    _sync(device)
    start = time.perf_counter()
    optimizer.zero_grad()
    workload.loss(model).backward()
    if workload.clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), workload.clip)
    _sync(device)
    before_step = time.perf_counter()
    optimizer.step()
    _sync(device)
    end = time.perf_counter()
    return end - start, end - before_step


def measure_workload(name: str, config: TrainingStepConfig, log: Callable[[str], None]) -> dict:
    """Warm every optimizer up on its own copy of the model, then time them in rotating
    rounds; returns the workload's entry of the results."""
    workload = BUILDERS[name](config.tiny, config.device)
    params = list(workload.model.parameters())
    runs = {}
    entries: dict = {}
    for optimizer_name in config.optimizers:
        model = copy.deepcopy(workload.model)
        optimizer = OPTIMIZERS[optimizer_name](model.parameters())
        first_s, _ = _timed_step(workload, model, optimizer, config.device)
        for _ in range(config.warmup_steps - 1):
            _timed_step(workload, model, optimizer, config.device)
        log(f"  {name}: {optimizer_name} warmed up (first step {first_s:.1f} s)")
        runs[optimizer_name] = (model, optimizer)
        entries[optimizer_name] = {"first_step_s": first_s, "step_ms": [], "optimizer_ms": []}
    order = list(config.optimizers)
    for round_index in range(config.rounds):
        shift = round_index % len(order)
        for optimizer_name in order[shift:] + order[:shift]:
            model, optimizer = runs[optimizer_name]
            for _ in range(config.steps_per_round):
                step_s, optimizer_s = _timed_step(workload, model, optimizer, config.device)
                entries[optimizer_name]["step_ms"].append(step_s * 1e3)
                entries[optimizer_name]["optimizer_ms"].append(optimizer_s * 1e3)
    for entry in entries.values():
        entry["median_step_ms"] = statistics.median(entry["step_ms"])
        entry["median_optimizer_ms"] = statistics.median(entry["optimizer_ms"])
        entry["optimizer_share"] = entry["median_optimizer_ms"] / entry["median_step_ms"]
    for optimizer_name, entry in entries.items():
        baseline = entries.get(BASELINE[optimizer_name])
        if baseline is not None:
            entry["baseline"] = BASELINE[optimizer_name]
            entry["step_ratio"] = entry["median_step_ms"] / baseline["median_step_ms"]
            entry["optimizer_ratio"] = (
                entry["median_optimizer_ms"] / baseline["median_optimizer_ms"]
            )
    return {
        "description": workload.description,
        "batch": workload.batch,
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "optimizers": entries,
    }


def run(config: TrainingStepConfig, out: Path, show_progress: bool = True) -> dict:
    """Measure every workload, write ``training-step.json`` and ``training-step.md`` into
    ``out``, and return the results."""
    config.validate()

    def log(message: str) -> None:
        if show_progress:
            print(message, file=sys.stderr, flush=True)

    results: dict = {
        "meta": {
            **asdict(config),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "learning_rate": LEARNING_RATE,
        },
        "workloads": {},
    }
    for name in config.workloads:
        log(f"training step: {name}")
        results["workloads"][name] = measure_workload(name, config, log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "training-step.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "training-step.md", render_report(results))
    return results


# --- the report ----------------------------------------------------------------------------


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _ratio_cell(entries: dict, optimizer: str) -> str:
    return _number(entries.get(optimizer, {}).get("step_ratio"))


def _shares_cell(entries: dict, first: str, second: str) -> str:
    if first not in entries or second not in entries:
        return "–"
    return (
        f"{_percent(entries[first]['optimizer_share'])} / "
        f"{_percent(entries[second]['optimizer_share'])}"
    )


def summary_table(results: dict) -> str:
    """One row per workload: HVAdam's step against Adam's on the same path, and the
    optimizer's share of the step for both."""
    lines = [
        "| model | parameters (tensors) | HVAdam ÷ Adam, step | fused HVAdam ÷ fused Adam, "
        "step | share: HVAdam / Adam | share: fused HVAdam / fused Adam |",
        "|---|---|---|---|---|---|",
    ]
    for name, workload in results["workloads"].items():
        entries = workload["optimizers"]
        lines.append(
            f"| {name} | {workload['parameters'] / 1e6:.2f}M ({workload['tensors']}) "
            f"| {_ratio_cell(entries, 'hvadam')} | {_ratio_cell(entries, 'hvadam_fused')} "
            f"| {_shares_cell(entries, 'hvadam', 'adam')} "
            f"| {_shares_cell(entries, 'hvadam_fused', 'adam_fused')} |"
        )
    return "\n".join(lines)


def render_section(results: dict, heading: str = "##") -> str:
    """The section ``hvadam-bench speed`` puts in its report: the summary, then one table per
    workload."""
    meta = results["meta"]
    steps = meta["rounds"] * meta["steps_per_round"]
    lines = [
        f"{heading} Training step",
        "",
        f"A whole step (zero_grad, forward, backward, `step()`) of four models on "
        f"{meta['device']}, every optimizer on its own copy of each model, timed in "
        f"{meta['rounds']} interleaved rounds of {meta['steps_per_round']} steps (the order "
        f"rotating), after {meta['warmup_steps']} warm-up steps: medians of {steps} steps. "
        "HVAdam and AdamW are compared with Adam on the same path (default with default, fused "
        "with fused); the share is the median `step()` over the median whole step.",
        "",
        summary_table(results),
        "",
    ]
    for name, workload in results["workloads"].items():
        lines += [
            f"{heading}# {name}: {workload['parameters'] / 1e6:.2f}M parameters in "
            f"{workload['tensors']} tensors, batch {workload['batch']}",
            "",
            workload["description"] + ".",
            "",
            "| optimizer | step ms | `step()` ms | share | step ÷ Adam, same path "
            "| `step()` ÷ Adam, same path | first step s |",
            "|---|---|---|---|---|---|---|",
        ]
        for optimizer, entry in workload["optimizers"].items():
            lines.append(
                f"| {optimizer} | {_number(entry['median_step_ms'])} "
                f"| {_number(entry['median_optimizer_ms'])} "
                f"| {_percent(entry['optimizer_share'])} "
                f"| {_number(entry.get('step_ratio'))} "
                f"| {_number(entry.get('optimizer_ratio'))} "
                f"| {_number(entry['first_step_s'], 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


def render_report(results: dict) -> str:
    meta = results["meta"]
    return "\n".join(
        [
            "# The speed study: training steps",
            "",
            "Generated by `python -m hvadam_bench.studies.speed_training_step` "
            f"(preset `{meta['preset']}`) "
            f"on {meta['device']} ({meta['machine']}, {meta['threads']} threads), torch "
            f"{meta['torch']}. Do not edit by hand: rerun the command.",
            "",
            render_section(results),
        ]
    )


# --- the command line ----------------------------------------------------------------------


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hvadam_bench.studies.speed_training_step",
        description="Whole training steps of four models with HVAdam against Adam and AdamW.",
    )
    parser.add_argument("--out", default="results/speed", help="folder for training-step.*")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--preset", choices=("quick", "full"), default="quick")
    parser.add_argument("--workloads", type=_names, help=f"of {', '.join(WORKLOADS)}")
    parser.add_argument("--optimizers", type=_names, help=f"of {', '.join(OPTIMIZERS)}")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds")
    parser.add_argument("--steps-per-round", type=int, help="steps per optimizer per round")
    parser.add_argument("--tiny", action="store_true", help="toy model sizes (for tests)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = TrainingStepConfig.preset_named(args.preset, args.device)
    config.tiny = args.tiny
    for name in ("workloads", "optimizers", "rounds", "steps_per_round"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    try:
        config.validate()
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out)
    results = run(config, out, show_progress=not args.no_progress)
    print(f"wrote {out / 'training-step.json'} and {out / 'training-step.md'}")
    print(summary_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
