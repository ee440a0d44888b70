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

Runs on its own (``python -m hvadam_bench.training_step --out results/speed``) and writes
``training-step.md`` and ``training-step.json`` there; :func:`run` and :func:`render_section`
are what ``hvadam-bench speed`` calls.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hvadam import HVAdam

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

WORKLOADS = ("transformer", "lstm", "cnn", "many_small")


# --- the models ----------------------------------------------------------------------------


class CausalSelfAttentionBlock(nn.Module):
    """A pre-norm transformer block: causal multi-head attention, then a GELU MLP, each
    added to the residual stream (12 parameter tensors)."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.query_key_value = nn.Linear(width, 3 * width)
        self.projection = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, hidden)
        self.contract = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        heads = self.query_key_value(self.attention_norm(x))
        heads = heads.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
        x = x + self.projection(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.contract(F.gelu(self.expand(self.mlp_norm(x))))


class CausalTransformerLM(nn.Module):
    """Token and learned position embeddings, pre-norm blocks, a final norm, and a decoder tied
    to the token embedding."""

    def __init__(
        self, vocabulary: int, width: int, layers: int, heads: int, hidden: int, context: int
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocabulary, width)
        self.position_embedding = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(width, heads, hidden) for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.final_norm(x), self.token_embedding.weight)


class SmallCNN(nn.Sequential):
    """Four 3x3 conv layers with batch norm (32 to 256 channels), three poolings to 4x4, a
    global average and a linear head: about 0.4M parameters for 32x32 colour images."""

    def __init__(self, classes: int = 10, width: int = 32):
        layers: list[nn.Module] = []
        channels = 3
        for index, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            if index < 3:
                layers.append(nn.MaxPool2d(2))
            channels = out_channels
        super().__init__(
            *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)
        )


class ResidualMLP(nn.Module):
    """``depth`` residual layers ``x + tanh(W x + b)`` of one width: 2·depth small tensors."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return x


def _first_module(*names: str):
    """The first of ``names`` that imports: the bench package is being re-laid out (modules
    moving into data/, workloads/, studies/), and this module should run before and after."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or not (name + ".").startswith(error.name + "."):
                raise  # a module that does exist failed to import
    raise ModuleNotFoundError(f"none of {', '.join(names)} could be imported")


# --- the workloads -------------------------------------------------------------------------


@dataclass
class Workload:
    """A model and the loss of one training batch; ``loss(model)`` runs the forward pass."""

    description: str
    batch: str
    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    clip: float | None = None  # gradient norm clipping after backward, as the suite trains


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def transformer_workload(tiny: bool, device: str) -> Workload:
    if tiny:
        vocabulary, width, layers, heads, hidden, context, batch = 64, 16, 1, 2, 32, 8, 2
    else:
        vocabulary, width, layers, heads, hidden, context, batch = 16384, 256, 4, 4, 1024, 128, 16
    torch.manual_seed(0)
    model = CausalTransformerLM(vocabulary, width, layers, heads, hidden, context).to(device)
    tokens = torch.randint(vocabulary, (batch, context + 1), generator=_seeded(1)).to(device)

    def loss(net: nn.Module) -> torch.Tensor:
        logits = net(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    return Workload(
        f"causal transformer LM: {layers} blocks of width {width}, {heads} heads, MLP {hidden}, "
        f"vocabulary {vocabulary} (tied), synthetic tokens",
        f"{batch} x {context} tokens",
        model,
        loss,
    )


def lstm_workload(tiny: bool, device: str) -> Workload:
    lm = _first_module("hvadam_bench.workloads.lm", "hvadam_bench.studies.lm")
    ptb = _first_module("hvadam_bench.data.ptb", "hvadam_bench.ptb")
    train_text = ptb.read_texts()["train"]
    if tiny:
        train_text, vocabulary_size, embedding, hidden, streams, bptt = (
            train_text[:20_000], 50, 8, 12, 2, 5
        )  # fmt: skip
    else:
        vocabulary_size, embedding, hidden, streams, bptt = None, 256, 384, 20, 35
    tokens = ptb.tokenize(train_text)
    vocabulary = ptb.build_vocabulary(tokens, vocabulary_size)
    data = ptb.batchify(vocabulary.encode(tokens), streams)[: bptt + 1].to(device)
    config = lm.LMConfig.preset_named("quick")
    config.embedding, config.hidden, config.vocabulary = embedding, hidden, vocabulary_size
    torch.manual_seed(0)
    model = lm.LSTMLanguageModel(len(vocabulary), config, depth=2).to(device)

    def loss(net: nn.Module) -> torch.Tensor:
        # Every step starts from a zero state: the suite carries the state over, which costs
        # the same.
        logits, _, _, _ = net(data[:-1], net.initial_state(streams))
        return F.cross_entropy(logits.flatten(0, 1), data[1:].flatten())

    return Workload(
        f"the lm suite's LSTM LM: 2 layers, embedding {embedding} (tied), hidden {hidden}, "
        f"PTB vocabulary {len(vocabulary)}, PTB training text",
        f"{streams} streams x {bptt} words",
        model,
        loss,
        clip=config.clip,
    )


def cnn_workload(tiny: bool, device: str) -> Workload:
    width, batch, size = (4, 2, 8) if tiny else (32, 32, 32)
    torch.manual_seed(0)
    model = SmallCNN(width=width).to(device)
    images = torch.randn(batch, 3, size, size, generator=_seeded(1)).to(device)
    labels = torch.randint(10, (batch,), generator=_seeded(2)).to(device)
    return Workload(
        f"small CNN: 4 conv layers ({width} to {8 * width} channels) with batch norm, "
        f"linear head; synthetic {size}x{size} images",
        f"{batch} images",
        model,
        lambda net: F.cross_entropy(net(images), labels),
    )


def many_small_workload(tiny: bool, device: str) -> Workload:
    width, depth, batch = (4, 20, 2) if tiny else (81, 150, 32)
    torch.manual_seed(0)
    model = ResidualMLP(width, depth).to(device)
    inputs = torch.randn(batch, width, generator=_seeded(1)).to(device)
    return Workload(
        f"{depth} residual layers x + tanh(Wx + b) of width {width}: many small tensors",
        f"{batch} vectors",
        model,
        lambda net: net(inputs).pow(2).mean(),
    )


BUILDERS: dict[str, Callable[[bool, str], Workload]] = {
    "transformer": transformer_workload,
    "lstm": lstm_workload,
    "cnn": cnn_workload,
    "many_small": many_small_workload,
}


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


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half: the text goes to a temporary file
    with a unique name (concurrent writers never collide) that then replaces ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the results from other users
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
            f"Generated by `python -m hvadam_bench.training_step` (preset `{meta['preset']}`) "
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
        prog="python -m hvadam_bench.training_step",
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
