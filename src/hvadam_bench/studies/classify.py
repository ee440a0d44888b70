"""The image-classification suite (paper Figure 4).

Every optimizer trains each task's network for the same number of epochs, with the
same batch size, L2 weight decay and step schedule (the lr drops tenfold after three quarters
of the epochs, as in the AdaBelief CIFAR recipe: 200 epochs, decay at 150). Each optimizer's
lr is chosen from a shared grid by the final accuracy on a validation split held out of the
training data (one tuning seed); the chosen lr then runs with several fresh seeds, whose final
test accuracy is reported as mean ± std, with the test accuracy after every epoch as curves.
The test split is never used for a choice. A run whose loss becomes NaN or inf counts as
diverged.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvadam_bench.data import images
from hvadam_bench.data.cifar import CIFAR, locate_cifar
from hvadam_bench.optimizers import DEFAULT_OPTIMIZERS, check_names
from hvadam_bench.parallel import torch_threads
from hvadam_bench.reporting.markdown import mean_std
from hvadam_bench.runner import (
    BenchError,
    atomic_write_json,
    atomic_write_text,
    common_arguments,
    default_jobs,
    job_count,
    names,
    numbers,
    prepare_output,
    seed_list,
    versions,
)
from hvadam_bench.studies.classify_report import (
    _best_first,
    plot_curves,
    render_report,
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
from hvadam_bench.workloads import vision

SUITE = "classify"
DECAY_AT = 0.75  # fraction of the epochs after which the lr drops tenfold (150 of 200)
DECAY_FACTOR = 0.1
EVAL_BATCH = 1000


@dataclass(frozen=True)
class TaskSpec:
    """One network on one dataset, with its default budget."""

    description: str
    epochs: int
    batch_size: int
    augment: bool  # random crop + flip (CIFAR)
    cifar_model: str | None = None  # a key of vision.CIFAR_MODELS, or None (offline data)


TASKS = {
    "digits": TaskSpec("sklearn digits (8x8), 2-D CNN, 26k parameters", 10, 32, False),
    "mnist1d": TaskSpec("MNIST-1D (length 40), 1-D CNN, 10k parameters", 20, 64, False),
    **{
        model: TaskSpec(label, 200, 128, True, model)
        for model, label in (
            ("vgg11", "VGG-11 (batch norm), 9.2M parameters"),
            ("resnet34", "ResNet-34, 21.3M parameters"),
            ("densenet121", "DenseNet-121, 7.0M parameters"),
        )
    },
}
OFFLINE_TASKS = ("digits", "mnist1d")


@dataclass
class ClassifyConfig:
    tasks: list[str]
    optimizers: list[str]
    lrs: tuple[float, ...]
    seeds: int  # final seeds 1..seeds; the tuning runs use seed 0
    epochs: int | None = None  # None: each task's own default
    batch_size: int | None = None
    weight_decay: float = 5e-4
    dataset: str = "cifar10"
    data_dir: str | None = None
    device: str = "cpu"
    # torch's CPU threads while the suite runs (None: unchanged). The quick preset uses one:
    # its networks are too small to gain from more, and the thread count changes the rounding.
    threads: int | None = None
    # Worker processes (one thread each) sharing the (task, optimizer) pairs; results do not
    # depend on it.
    jobs: int = 1
    preset: str = "custom"

    @classmethod
    def preset_named(cls, name: str) -> ClassifyConfig:
        if name == "quick":
            return cls(
                tasks=list(OFFLINE_TASKS), optimizers=list(DEFAULT_OPTIMIZERS),
                lrs=(1e-3, 1e-2, 1e-1), seeds=3, threads=1, jobs=default_jobs("quick"),
                preset="quick",
            )  # fmt: skip
        return cls(
            tasks=["vgg11", "resnet34", "densenet121"], optimizers=list(DEFAULT_OPTIMIZERS),
            lrs=(1e-3, 1e-2, 1e-1), seeds=3, preset="full",
        )  # fmt: skip

    def validate(self) -> None:
        check_names(self.optimizers)
        for name in self.tasks:
            if name not in TASKS:
                raise BenchError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
        if not self.tasks or not self.optimizers:
            raise BenchError("nothing to run: give at least one task and one optimizer")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise BenchError(f"learning rates must be positive and finite, got {self.lrs}")
        if self.seeds < 1:
            raise BenchError("--seeds must be at least 1")
        if (self.epochs is not None and self.epochs < 1) or (
            self.batch_size is not None and self.batch_size < 1
        ):
            raise BenchError("--epochs and --batch-size must be at least 1")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise BenchError("--weight-decay must be finite and non-negative")
        if self.dataset not in CIFAR:
            raise BenchError(f"unknown --dataset {self.dataset!r}; known: cifar10, cifar100")
        if self.threads is not None and self.threads < 1:
            raise BenchError("--threads must be at least 1")
        if self.jobs < 1:
            raise BenchError("--jobs must be at least 1")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise BenchError(f"unknown --device {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda, but this torch build sees no CUDA GPU")
        if any(TASKS[name].cifar_model for name in self.tasks):
            if self.data_dir is None:
                layout = CIFAR[self.dataset]
                raise BenchError(
                    f"the CIFAR tasks need --data-dir DIR holding {layout.expected()} "
                    "(the python version of the archive; nothing is downloaded)"
                )
            locate_cifar(self.data_dir, self.dataset)

    def task_id(self, name: str) -> str:
        """The task's name in trials and results: CIFAR tasks carry their dataset."""
        model = TASKS[name].cifar_model
        return f"{self.dataset}-{model}" if model else name

    def budget(self, name: str) -> dict:
        """What a trial's result depends on besides optimizer, lr and seed."""
        task = TASKS[name]
        return {
            "epochs": self.epochs or task.epochs,
            "batch_size": self.batch_size or task.batch_size,
            "weight_decay": self.weight_decay,
            "augment": task.augment,
            "decay_at": DECAY_AT,
        }


# --- training -------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything a trial of one task needs: data on the device and how to build the model."""

    splits: images.Splits
    model: Callable[[], nn.Module]
    prepare: Callable[[Tensor], Tensor]  # raw stored inputs -> network inputs
    augment: bool
    epochs: int
    batch_size: int
    weight_decay: float
    device: torch.device


def _setup(config: ClassifyConfig, name: str) -> Setup:
    task, budget = TASKS[name], config.budget(name)
    device = torch.device(config.device)
    if task.cifar_model:
        splits = images.cifar_splits(config.data_dir, config.dataset)
        mean, std = images.channel_statistics(splits.train[0])
        mean, std = mean.to(device)[:, None, None], std.to(device)[:, None, None]

        def prepare(batch: Tensor) -> Tensor:
            return (batch.to(torch.float32) / 255.0 - mean) / std

        build = vision.CIFAR_MODELS[task.cifar_model]
        classes = splits.classes

        def model() -> nn.Module:
            return build(classes)
    else:
        splits = images.digits_splits() if name == "digits" else images.mnist1d_splits()
        model = vision.DigitsCNN if name == "digits" else vision.Mnist1dCNN

        def prepare(inputs: Tensor) -> Tensor:
            return inputs

    on_device = images.Splits(
        *(tuple(t.to(device) for t in part) for part in (splits.train, splits.valid, splits.test)),
        classes=splits.classes,
    )
    return Setup(
        on_device, model, prepare, task.augment, budget["epochs"], budget["batch_size"],
        budget["weight_decay"], device,
    )  # fmt: skip


@torch.no_grad()
def accuracy(model: nn.Module, setup: Setup, inputs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent, in evaluation mode (batch-norm running statistics)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=setup.device)
    for start in range(0, len(labels), EVAL_BATCH):
        logits = model(setup.prepare(inputs[start : start + EVAL_BATCH]))
        correct += (logits.argmax(dim=1) == labels[start : start + EVAL_BATCH]).sum()
    return 100.0 * correct.item() / len(labels)


def train(trial: Trial, checkpointer: Checkpointer, setup: Setup) -> dict:
    """One training run; checkpoints model, optimizer, RNG and history after every epoch."""
    seed_everything(trial.seed)
    model = setup.model().to(setup.device)
    optimizer = make_optimizer(trial.optimizer, model.parameters(), trial.lr)
    parameters = [p for p in model.parameters() if p.requires_grad]
    history: dict[str, list[float]] = {
        "test_acc": [], "valid_acc": [], "train_acc": [], "train_loss": []
    }  # fmt: skip
    start = 0
    saved = checkpointer.load(required=("model", "optimizer", "rng", "epoch", "history"))
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        start, history = saved["epoch"], saved["history"]
    train_x, train_y = setup.splits.train
    batch_size = min(setup.batch_size, len(train_y))
    batches = len(train_y) // batch_size  # the last partial batch is dropped (batch norm)
    decay_epoch = round(DECAY_AT * setup.epochs)
    for epoch in range(start, setup.epochs):
        for group in optimizer.param_groups:
            group["lr"] = trial.lr * (DECAY_FACTOR if epoch >= decay_epoch else 1.0)
        model.train()
        order = torch.randperm(len(train_y)).to(setup.device)
        loss_sum = torch.zeros((), device=setup.device)
        correct = torch.zeros((), dtype=torch.long, device=setup.device)
        for index in range(batches):
            chosen = order[index * batch_size : (index + 1) * batch_size]
            inputs = train_x[chosen]
            if setup.augment:
                inputs = images.random_crop_flip(inputs)
            logits = model(setup.prepare(inputs))
            loss = F.cross_entropy(logits, train_y[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if setup.weight_decay:  # L2, the same for every optimizer (AdaBelief recipe)
                with_grad = [p for p in parameters if p.grad is not None]
                grads = [p.grad for p in with_grad]
                torch._foreach_add_(grads, with_grad, alpha=setup.weight_decay)
            optimizer.step()
            # Summed on the device and read once per epoch: no sync inside the loop.
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(dim=1) == train_y[chosen]).sum()
        mean_loss = loss_sum.item() / batches
        if not math.isfinite(mean_loss):  # NaN weights stay NaN: the run is over
            return _result(history, diverged=True)
        history["train_loss"].append(mean_loss)
        history["train_acc"].append(100.0 * correct.item() / (batches * batch_size))
        history["valid_acc"].append(accuracy(model, setup, *setup.splits.valid))
        history["test_acc"].append(accuracy(model, setup, *setup.splits.test))
        checkpointer.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "epoch": epoch + 1,
                "history": history,
            }
        )
    return _result(history, diverged=False)


def _result(history: dict, diverged: bool) -> dict:
    last = {k: (v[-1] if v else math.nan) for k, v in history.items()}
    return {
        "valid": math.nan if diverged else last["valid_acc"],
        "test": None if diverged else last["test_acc"],
        "diverged": diverged,
        "curve": history["test_acc"],
        "valid_curve": history["valid_acc"],
        "train_loss_curve": history["train_loss"],
        "metric_train_acc": last["train_acc"],
        "metric_train_loss": last["train_loss"],
        "epochs_done": len(history["test_acc"]),
    }


# --- the study ------------------------------------------------------------------------------


def trial_function(config: ClassifyConfig) -> TrialFunction:
    """One training run per trial; each task's data is loaded once, when a trial first
    needs it."""
    setups: dict[str, Setup] = {}

    def trial_fn(trial: Trial, checkpointer: Checkpointer) -> dict:
        if trial.task not in setups:
            name = next(n for n in config.tasks if config.task_id(n) == trial.task)
            setups[trial.task] = _setup(config, name)
        return train(trial, checkpointer, setups[trial.task])

    return trial_fn


def _check_budget(config: ClassifyConfig, store: TrialStore) -> None:
    """Trials are keyed by task, optimizer, lr and seed only: refuse to mix results of
    different budgets in one ``--out`` (a changed --epochs would silently reuse old runs)."""
    path = store.root / "classify-budgets.json"
    try:
        recorded = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        raise BenchError(f"cannot read {path}: delete it, or use another --out") from None
    for name in config.tasks:
        task_id, budget = config.task_id(name), config.budget(name)
        if recorded.get(task_id, budget) != budget:
            raise BenchError(
                f"{store.root} holds {task_id} trials of another budget ({recorded[task_id]}); "
                "use another --out or delete that folder"
            )
        recorded[task_id] = budget
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, recorded)


def run(
    config: ClassifyConfig, out: Path, show_progress: bool = True, store: TrialStore | None = None
) -> dict:
    """Run the suite (resuming what ``out/trials`` holds); write ``classify.json``,
    ``report.md`` and ``curves.png`` into ``out``."""
    config.validate()
    store = store or TrialStore(out / "trials")
    _check_budget(config, store)
    with torch_threads(config.threads):
        summary = run_protocol(
            SUITE, [config.task_id(n) for n in config.tasks], config.optimizers,
            list(config.lrs), list(range(1, config.seeds + 1)), trial_function(config), store,
            higher_is_better=True, tune_seed=0, show_progress=show_progress,
            workers=Workers(config.jobs, trial_function, (config,)),
        )  # fmt: skip
    results = {"meta": _meta(config), "tasks": {}}
    for name in config.tasks:
        task_id = config.task_id(name)
        by_optimizer = summary[task_id]
        # Higher is better; equal to SIGNIFICANT_DIGITS digits is a tie, in the optimizers' order.
        order = sorted(by_optimizer, key=lambda k: _best_first(by_optimizer[k]["test_mean"]))
        results["tasks"][task_id] = {
            "description": _describe(config, name),
            "budget": config.budget(name),
            "optimizers": by_optimizer,
            "ranking": order,
        }
    atomic_write_json(out / "classify.json", results)
    plot_curves(results, out / "curves.png")
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _describe(config: ClassifyConfig, name: str) -> str:
    if TASKS[name].cifar_model:
        return f"{config.dataset.upper().replace('CIFAR', 'CIFAR-')}, {TASKS[name].description}"
    return TASKS[name].description


def _meta(config: ClassifyConfig) -> dict:
    meta = asdict(config)
    meta.update(
        lrs=list(config.lrs),
        protocol=" ".join(__doc__.split("\n\n")[1].split()),
        versions=versions(),
    )
    return meta


# --- command line ---------------------------------------------------------------------------

HELP = "image classification: CNNs on digits / MNIST-1D, or CIFAR (paper Figure 4)"
# The report sections that `hvadam-bench all` lifts into its combined report.
SUMMARY_SECTIONS = ("Verdict", "Against the paper")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(
        parser, SUITE, "small CNNs on digits and MNIST-1D (offline data), ~15 min on 2 cores"
    )
    parser.add_argument(
        "--tasks",
        type=names,
        help=f"comma-separated tasks: {', '.join(TASKS)} (the last three are CIFAR networks)",
    )
    parser.add_argument("--dataset", choices=sorted(CIFAR), help="CIFAR-10 or -100")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (or -100)")
    parser.add_argument("--optimizers", type=names, help="comma-separated optimizer names")
    parser.add_argument("--lrs", type=numbers, help="learning-rate grid, comma-separated")
    parser.add_argument("--seeds", type=seed_list, help="number of final seeds (1..N)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: per task)")
    parser.add_argument("--batch-size", type=int, help="batch size (default: per task)")
    parser.add_argument("--weight-decay", type=float, help="L2 weight decay (default 5e-4)")
    parser.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (quick default: 1)")
    parser.add_argument(
        "--jobs", type=job_count,
        help="worker processes, one thread each (quick default: 2, full: 1); results do not "
        "depend on it",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    config = ClassifyConfig.preset_named(args.preset)
    for name in (
        "tasks", "optimizers", "lrs", "epochs", "batch_size", "weight_decay",
        "dataset", "data_dir", "device", "threads", "jobs",
    ):  # fmt: skip
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if getattr(args, "seeds", None) is not None:
        config.seeds = len(args.seeds)  # seeds 1..N, as --seeds means in every study
    config.validate()
    if config.data_dir is not None and not any(TASKS[n].cifar_model for n in config.tasks):
        print(
            "hvadam-bench: note: --data-dir is read by the CIFAR tasks only "
            "(--full, or --tasks vgg11,resnet34,densenet121)",
            file=sys.stderr,
        )
    out = prepare_output(args.out)
    started = time.perf_counter()
    results = run(config, out, show_progress=not args.no_progress)
    print(
        f"wrote {out / 'classify.json'}, {out / 'report.md'} and curves.png "
        f"in {time.perf_counter() - started:.0f} s"
    )
    for task_id, entry in results["tasks"].items():
        best = entry["optimizers"][entry["ranking"][0]]
        accuracy_text = mean_std(best["test_mean"], best["test_std"])
        print(f"  {task_id:<22} best test accuracy: {best['label']} {accuracy_text} %")
    return 0
