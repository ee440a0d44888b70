"""``hvadam-bench classify``: end to end on a tiny budget, resume, the CIFAR reader on pickle
fixtures in the archive's real layout, the models' shapes, augmentation and accuracy."""

from __future__ import annotations

import json
import math
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from hvadam_bench.cli import main
from hvadam_bench.data import images
from hvadam_bench.data.cifar import read_cifar
from hvadam_bench.data.images import random_crop_flip
from hvadam_bench.runner import BenchError
from hvadam_bench.studies import classify
from hvadam_bench.studies.classify import ClassifyConfig, Setup
from hvadam_bench.training import Interrupted, TrialStore
from hvadam_bench.workloads import vision

from .conftest import is_png

TINY = [
    "classify",
    "--tasks", "digits",
    "--optimizers", "hvadam,sgd",
    "--lrs", "0.01,1e30",  # 1e30 overflows the weights: those tuning runs diverge
    "--epochs", "2",
    "--seeds", "2",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions on a shared machine run far faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- CIFAR fixtures in the archive's layout: Python-2-style pickles with bytes keys -----------


def _write_pickle(path, content: dict) -> None:
    with path.open("wb") as stream:
        pickle.dump(content, stream, protocol=2)


def _images(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)


def write_cifar10(root, per_batch: int = 4, test: int = 6):
    """``root/cifar-10-batches-py`` with five training batches, a test batch and the meta."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for index in range(1, 6):
        batch = {
            b"batch_label": f"training batch {index} of 5".encode(),
            b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
            b"data": _images(per_batch, rng),
            b"filenames": [f"img_{index}_{i}.png".encode() for i in range(per_batch)],
        }
        _write_pickle(folder / f"data_batch_{index}", batch)
        batches.append(batch)
    test_batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(x) for x in rng.integers(0, 10, test)],
        b"data": _images(test, rng),
        b"filenames": [f"test_{i}.png".encode() for i in range(test)],
    }
    _write_pickle(folder / "test_batch", test_batch)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write_pickle(
        folder / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
    )
    return folder, batches, test_batch


def write_cifar100(root, train: int = 8, test: int = 4):
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    parts = {}
    for name, count in (("train", train), ("test", test)):
        parts[name] = {
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": [int(x) for x in rng.integers(0, 100, count)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, count)],
            b"data": _images(count, rng),
        }
        _write_pickle(folder / name, parts[name])
    _write_pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return folder, parts


def test_reads_cifar10_in_the_archive_layout(tmp_path):
    folder, batches, test_batch = write_cifar10(tmp_path)
    train_x, train_y, test_x, test_y, names = read_cifar(tmp_path, "cifar10")
    assert train_x.shape == (20, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (6, 3, 32, 32) and names[0] == "airplane" and len(names) == 10
    assert train_y.tolist() == [label for b in batches for label in b[b"labels"]]
    assert test_y.tolist() == test_batch[b"labels"]
    # A row is the red plane, then green, then blue, each row-major (32 x 32).
    row = batches[1][b"data"][2]
    image = train_x[4 + 2]
    assert image[1, 3, 5] == row[1024 + 3 * 32 + 5] and image[2, 31, 0] == row[2048 + 31 * 32]
    # The archive's own folder is accepted as --data-dir too.
    assert torch.equal(read_cifar(folder, "cifar10")[0], train_x)


def test_reads_cifar100_fine_labels(tmp_path):
    _, parts = write_cifar100(tmp_path)
    train_x, train_y, test_x, test_y, names = read_cifar(tmp_path, "cifar100")
    assert train_x.shape == (8, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    assert train_y.tolist() == parts["train"][b"fine_labels"] and len(names) == 100
    assert test_y.tolist() == parts["test"][b"fine_labels"]


def test_missing_cifar_file_is_named_in_one_line(tmp_path):
    folder, _, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(BenchError) as error:
        read_cifar(tmp_path, "cifar10")
    message = str(error.value)
    assert "\n" not in message
    assert "data_batch_3" in message and str(tmp_path) in message
    assert "cifar-10-batches-py/{data_batch_1" in message  # what was expected
    with pytest.raises(BenchError, match="cifar-100-python/.*missing train, test, meta"):
        read_cifar(tmp_path / "nowhere", "cifar100")


@pytest.mark.parametrize(
    "content",
    [
        b"\x80\x02}q\x00(U\x04data",  # truncated
        b"not a pickle",
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
        pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2),
        pickle.dumps([1, 2, 3], protocol=2),
    ],
    ids=["truncated", "garbage", "wrong-shape", "label-count", "label-range", "not-a-dict"],
)
def test_malformed_cifar_file_is_named_in_one_line(tmp_path, content):
    folder, _, _ = write_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(content)
    with pytest.raises(BenchError) as error:
        read_cifar(tmp_path, "cifar10")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"malformed cifar10 file {folder / 'data_batch_2'}")


class _Payload:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_cifar_pickle_cannot_run_code(tmp_path, capsys):
    folder, _, _ = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Payload()}, protocol=2))
    with pytest.raises(BenchError, match="refusing to load .*print"):
        read_cifar(tmp_path, "cifar10")
    assert "must not run" not in capsys.readouterr().out


def test_command_line_data_dir_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    assert main(["classify", "--full", *out]) == 2
    assert main(["classify", "--full", "--data-dir", str(tmp_path / "none"), *out]) == 2
    assert (
        main(["classify", "--full", "--dataset", "cifar100", "--data-dir", "/dev/null", *out]) == 2
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("hvadam-bench: error: ") for e in errors)
    assert "--data-dir" in errors[0] and "cifar-10-batches-py/" in errors[0]
    assert "missing data_batch_1, data_batch_2" in errors[1]
    assert "cifar-100-python/{train,test,meta}" in errors[2]
    assert not (tmp_path / "o").exists()  # nothing ran, nothing was written


# --- offline data -------------------------------------------------------------------------


def test_hold_out_is_a_fixed_partition():
    x, y = torch.arange(50.0)[:, None], torch.arange(50)
    (train_x, train_y), (held_x, held_y) = images.hold_out(x, y, 0.2)
    assert len(held_y) == 10 and sorted((*train_y.tolist(), *held_y.tolist())) == list(range(50))
    assert torch.equal(images.hold_out(x, y, 0.2)[1][1], held_y)  # the same every time


def test_offline_datasets_are_generated_locally(monkeypatch):
    import mnist1d.data

    def no_download(*args, **kwargs):
        raise AssertionError("get_dataset downloads")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    images.mnist1d_splits.cache_clear()
    random.seed(7)
    np.random.seed(7)
    python_state, numpy_draw = random.getstate(), np.random.get_state()[1].copy()
    splits = images.mnist1d_splits()
    assert random.getstate() == python_state  # make_dataset reseeds them: restored
    assert np.array_equal(np.random.get_state()[1], numpy_draw)
    sizes = [len(part[1]) for part in (splits.train, splits.valid, splits.test)]
    assert sizes == [3200, 800, 1000] and splits.train[0].shape[1:] == (1, 40)
    digits = images.digits_splits()
    assert [len(p[1]) for p in (digits.train, digits.valid, digits.test)] == [1150, 288, 359]
    assert digits.train[0].shape[1:] == (1, 8, 8) and float(digits.train[0].max()) == 1.0


# --- models, augmentation, accuracy -------------------------------------------------------


@pytest.mark.parametrize(
    "build, low, high",
    [(vision.vgg11, 8e6, 1.1e7), (vision.resnet34, 2e7, 2.3e7), (vision.densenet121, 6e6, 8e6)],
)
def test_cifar_models_have_their_size_and_output_shape(build, low, high):
    torch.manual_seed(0)
    model = build(10)
    assert low < vision.parameter_count(model) < high
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_small_cnns_and_class_counts():
    with torch.no_grad():
        assert vision.DigitsCNN()(torch.randn(3, 1, 8, 8)).shape == (3, 10)
        assert vision.Mnist1dCNN()(torch.randn(3, 1, 40)).shape == (3, 10)
        assert vision.vgg11(100).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert vision.parameter_count(vision.DigitsCNN()) < 50_000


def test_random_crop_flip_matches_slicing():
    images = torch.randn(6, 3, 8, 8)
    torch.manual_seed(3)
    augmented = random_crop_flip(images, padding=2)
    torch.manual_seed(3)  # the same draws, in the same order
    rows, cols = torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    flips = torch.rand(6) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(6):
        expected = padded[i, :, rows[i] : rows[i] + 8, cols[i] : cols[i] + 8]
        expected = expected.flip(2) if flips[i] else expected
        assert torch.equal(augmented[i], expected)
    assert flips.any() and not flips.all()  # both cases were checked


def test_accuracy_known_answer(monkeypatch):
    monkeypatch.setattr(classify, "EVAL_BATCH", 5)  # batches of 5, 5 and 2
    logits = torch.eye(4).repeat(3, 1)  # predicts 0, 1, 2, 3, 0, 1, ...
    labels = torch.tensor([0, 1, 2, 3, 1, 1, 1, 1, 0, 0, 1, 1])  # 4 + 1 + 1 right
    setup = Setup(
        images.Splits((logits, labels), (logits, labels), (logits, labels), 4),
        nn.Identity, lambda x: x, False, 1, 4, 0.0, torch.device("cpu"),
    )  # fmt: skip
    assert classify.accuracy(nn.Identity(), setup, logits, labels) == pytest.approx(50.0)


# --- the suite end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("classify")
    assert main([*TINY, "--out", str(out)]) == 0
    return out, json.loads((out / "classify.json").read_text())


def test_writes_json_report_and_curves(tiny_run):
    out, results = tiny_run
    assert set(results) == {"meta", "tasks"} and list(results["tasks"]) == ["digits"]
    assert is_png(out / "curves.png")
    report = (out / "report.md").read_text()
    for heading in ("## Verdict", "## Against the paper", "### `digits`", "cannot be compared"):
        assert heading in report
    assert "| 0.01 | " in report and "/ —" in report  # the diverged lr shows as —
    assert not list(out.glob(".*.tmp"))


def test_selection_on_validation_and_divergence(tiny_run):
    _, results = tiny_run
    entry = results["tasks"]["digits"]
    assert sorted(entry["ranking"]) == ["hvadam", "sgd"]
    for name, r in entry["optimizers"].items():
        grid = {g["lr"]: g for g in r["grid"]}
        assert grid[1e30]["diverged"] and grid[1e30]["valid"] is None, name
        assert not grid[0.01]["diverged"] and r["lr"] == 0.01
        assert r["runs"] == 2 and r["diverged_runs"] == 0
        assert len(r["curve"]) == 2 and 50 < r["test_mean"] <= 100
        assert len(r["extra"]["metric_train_acc"]) == 2


def test_rerun_reuses_trials_and_refuses_another_budget(tiny_run, capsys):
    out, results = tiny_run
    assert main([*TINY, "--out", str(out)]) == 0  # every trial is stored: nothing reruns
    assert json.loads((out / "classify.json").read_text()) == results
    assert main([*TINY, "--out", str(out), "--epochs", "3"]) == 2
    assert "another budget" in capsys.readouterr().err


def test_cifar_task_end_to_end_on_fixture(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=6, test=4)
    out = tmp_path / "out"
    argv = ["classify", "--tasks", "vgg11", "--data-dir", str(tmp_path / "data")]
    argv += ["--optimizers", "hvadam", "--lrs", "0.001", "--seeds", "1", "--epochs", "1"]
    assert main([*argv, "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    entry = json.loads((out / "classify.json").read_text())["tasks"]["cifar10-vgg11"]
    assert entry["budget"]["augment"] and len(entry["optimizers"]["hvadam"]["curve"]) == 1
    assert "CIFAR-10, VGG-11" in entry["description"]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    config = ClassifyConfig(
        tasks=["digits"], optimizers=["hvadam", "lookahead"], lrs=(0.01,), seeds=1, epochs=2,
        batch_size=128, threads=1,
    )  # fmt: skip
    reference = classify.run(config, tmp_path / "a", show_progress=False)
    # 2 trials x 2 epochs per optimizer: killed in HVAdam's final run, then in Lookahead's
    # tuning run (its slow weights are optimizer state that must come back too).
    for interrupt_after in (3, 2):
        killed = TrialStore(tmp_path / "b" / "trials", interrupt_after_checkpoints=interrupt_after)
        with pytest.raises(Interrupted):
            classify.run(config, tmp_path / "b", show_progress=False, store=killed)
        assert len(list((tmp_path / "b" / "trials" / "checkpoints").glob("*.pt"))) == 1
    assert not (tmp_path / "b" / "classify.json").exists()
    resumed = classify.run(config, tmp_path / "b", show_progress=False)
    assert resumed == reference
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()


def test_nan_loss_marks_the_trial_diverged(tmp_path):
    digits = images.digits_splits()
    poisoned = (digits.train[0].clone(), digits.train[1])
    poisoned[0][5] = math.nan
    setup = Setup(
        images.Splits(poisoned, digits.valid, digits.test, 10), vision.DigitsCNN, lambda x: x,
        False, 2, 64, 5e-4, torch.device("cpu"),
    )  # fmt: skip
    trial = classify.Trial("classify", "digits", "adam", 0.01, 0, "tune")
    result = classify.train(trial, TrialStore(tmp_path).checkpointer(trial), setup)
    assert result["diverged"] and math.isnan(result["valid"]) and result["test"] is None


def test_bad_options_are_one_line_errors(capsys):
    assert main(["classify", "--tasks", "imagenet"]) == 2
    assert main(["classify", "--optimizers", "adamax"]) == 2
    assert main(["classify", "--lrs", "0.1,-1"]) == 2
    assert main(["classify", "--seeds", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and "unknown task 'imagenet'" in errors[0]
