"""The PTB LSTM language-model workload: its configuration (the CPU default and the AWD-LSTM
recipe of ``--full``), the model (weight-dropped LSTM layers, locked dropout, tied weights),
training by truncated BPTT, evaluation, and the resumable trial function."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hvadam import HVAdam
from hvadam_bench.data.ptb import Corpus, batchify, bptt_windows
from hvadam_bench.optimizers import DEFAULT_OPTIMIZERS, SPECS, check_names
from hvadam_bench.runner import (
    BenchError,
)
from hvadam_bench.training import (
    Checkpointer,
    Trial,
    TrialFunction,
    make_optimizer,
    rng_state,
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
        check_names(self.optimizers)
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
