"""``hvadam-bench gan``: its metrics on known answers, the digits-feature cache, the CIFAR-10
reader, end to end on a tiny budget, resuming, divergence, and the --full path."""

from __future__ import annotations

import json
import math
import pickle
import sys
import types
from dataclasses import replace

import pytest
import torch

from hvadam_bench.cli import main
from hvadam_bench.runner import BenchError
from hvadam_bench.studies import gan
from hvadam_bench.training import Interrupted
from hvadam_bench.workloads import gan_metrics, gan_networks, gan_problems, gan_training

from .conftest import is_png, write_cifar10


@pytest.fixture
def tiny_budgets(monkeypatch):
    """Few generated samples per score: the metrics, not their precision, are under test."""
    for dataset, budget in gan.BUDGETS["quick"].items():
        small = replace(budget, curve_samples=64, eval_samples=128, evaluations=2)
        if dataset == "cifar10":
            small = replace(small, batch=4, width=4, curve_samples=8, eval_samples=16)
        monkeypatch.setitem(gan.BUDGETS["quick"], dataset, small)


# ---- metrics on known answers ----------------------------------------------------------------


def test_w2_of_identical_samples_is_zero():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    assert gan_metrics.wasserstein2(x, x) == pytest.approx(0.0, abs=1e-9)
    assert gan_metrics.wasserstein2(x, x.flip(0)) == pytest.approx(0.0, abs=1e-9)


def test_w2_between_point_masses_is_their_distance():
    p, q = torch.tensor([1.0, 2.0]), torch.tensor([4.0, -2.0])
    assert gan_metrics.wasserstein2(p.repeat(7, 1), q.repeat(5, 1)) == pytest.approx(5.0)


def test_w2_of_a_translated_sample_is_the_shift():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([0.3, -0.4])
    assert gan_metrics.wasserstein2(x, x + shift) == pytest.approx(0.5, rel=1e-6)  # float32 samples


def test_frechet_distance_known_answers():
    dim = 5
    eye = torch.eye(dim, dtype=torch.float64)
    mu = torch.arange(dim, dtype=torch.float64)
    cov = torch.randn(dim, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cov = cov @ cov.T + 0.1 * eye
    assert gan_metrics.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    zero = torch.zeros(dim, dtype=torch.float64)
    assert gan_metrics.frechet_distance(zero, eye, mu, eye) == pytest.approx(float(mu @ mu))
    # 1-D: N(0, a²) vs N(0, b²) is (a - b)²
    a, b = torch.tensor([[4.0]]), torch.tensor([[1.0]])
    assert gan_metrics.frechet_distance(zero[:1], a, zero[:1], b) == pytest.approx(1.0)


def test_gaussian_statistics_of_samples():
    x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    mean, cov = gan_metrics.gaussian_statistics(x)
    assert mean.tolist() == [2.0, 1.0]
    assert cov.tolist() == [[4.0, 0.0], [0.0, 0.0]]


def test_mode_coverage_and_quality_on_hand_made_samples():
    modes = gan_metrics.ring_modes(8, 2.0)
    assert torch.allclose(modes.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    sigma = 0.1
    collapsed = gan_metrics.mode_report(modes[0].repeat(40, 1), modes, sigma)
    assert (collapsed.covered, collapsed.quality) == (1, 1.0)
    # half the samples on the modes (two each), half at the centre, far from every mode
    half = torch.cat([modes.repeat(2, 1), torch.zeros(16, 2, dtype=torch.float64)])
    report = gan_metrics.mode_report(half, modes, sigma)
    assert report.covered == 8 and report.quality == pytest.approx(0.5)
    assert report.counts == (2,) * 8
    # just inside and just outside 3σ
    near = modes[:1] + torch.tensor([[0.29, 0.0]], dtype=torch.float64)
    far = modes[:1] + torch.tensor([[0.31, 0.0]], dtype=torch.float64)
    assert gan_metrics.mode_report(near, modes, sigma).quality == 1.0
    assert gan_metrics.mode_report(far, modes, sigma).quality == 0.0
    # a mode with fewer than a quarter of its fair share of samples is not covered
    lopsided = torch.cat([modes[0].repeat(95, 1), modes[1].repeat(5, 1)])
    assert gan_metrics.mode_report(lopsided, modes[:2], sigma).covered == 1


# ---- the digits-feature cache ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train():
    images, labels = gan_problems.digits_splits()["train"]
    return images[:300], labels[:300]


def test_digits_classifier_is_cached_reused_and_rebuilt_when_corrupt(
    tmp_path, digits_train, capsys
):
    path = tmp_path / "classifier.pt"
    first, trained = gan_metrics.load_or_train_digits_classifier(path, *digits_train)
    assert trained and path.exists()
    again, trained = gan_metrics.load_or_train_digits_classifier(path, *digits_train)
    assert not trained
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert gan_metrics.classifier_accuracy(again, *digits_train) > 0.9
    path.write_bytes(b"definitely not a torch file")
    rebuilt, trained = gan_metrics.load_or_train_digits_classifier(path, *digits_train)
    assert trained and "unusable" in capsys.readouterr().err
    for key, value in first.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key])  # deterministic training
    # a cache made from other data is not trusted either
    _, trained = gan_metrics.load_or_train_digits_classifier(path, *(t[:200] for t in digits_train))
    assert trained


def test_classifier_training_leaves_the_global_rng_alone(digits_train):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    gan_metrics.train_digits_classifier(digits_train[0][:50], digits_train[1][:50])
    assert torch.equal(torch.rand(3), expected)


# ---- the CIFAR-10 reader ---------------------------------------------------------------------


@pytest.mark.parametrize("archive", [False, True])
def test_cifar_reader_reads_folder_and_archive(tmp_path, archive):
    train, test = gan_problems.read_cifar10(write_cifar10(tmp_path / "data", archive=archive))
    assert train.shape == (30, 3, 32, 32) and test.shape == (6, 3, 32, 32)
    assert train.dtype == torch.uint8
    # row-major channel planes, as CIFAR stores them: the first image's red plane comes first
    assert train[0, 0, 0, :3].tolist() == [0, 1, 2]
    assert test[0, 0, 0, 0].item() == 5  # test_batch was written with offset 5


def test_cifar_reader_names_what_is_missing_or_malformed(tmp_path):
    with pytest.raises(BenchError, match="needs --data-dir"):
        gan_problems.read_cifar10(None)
    with pytest.raises(BenchError, match="cifar10 not found"):
        gan_problems.read_cifar10(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="cifar-10-batches-py"):
        gan_problems.read_cifar10(tmp_path / "empty")
    root = write_cifar10(tmp_path / "bad")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(BenchError, match="malformed cifar10 file .*data_batch_3"):
        gan_problems.read_cifar10(root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        pickle.dumps({b"data": torch.zeros(2, 100, dtype=torch.uint8).numpy(), b"labels": [0, 1]})
    )
    with pytest.raises(BenchError, match=r"data of shape \(2, 100\)"):
        gan_problems.read_cifar10(root)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cifar-10-python.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(BenchError, match="not a readable tar.gz"):
        gan_problems.read_cifar10(tmp_path / "broken")


def test_cli_reports_a_missing_data_dir_in_one_line(tmp_path, capsys):
    status = main(["gan", "--datasets", "cifar10", "--data-dir", str(tmp_path / "x"),
                   "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "cifar-10-python.tar.gz" in err


def test_cli_asks_for_the_inception_weights_then_torch_fidelity(tmp_path, capsys, monkeypatch):
    data = write_cifar10(tmp_path / "data")
    args = ["gan", "--datasets", "cifar10", "--data-dir", str(data), "--out", str(tmp_path / "o")]
    assert main([*args, "--no-progress"]) == 2
    assert "--inception-weights" in capsys.readouterr().err
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"fake")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    assert main([*args, "--inception-weights", str(weights), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install torch-fidelity" in err and "\n" not in err


# ---- networks ----------------------------------------------------------------------------------


def test_cifar_networks_have_the_right_shapes():
    noise = torch.randn(3, 128)
    for generator, critic in (
        (gan_networks.DcganGenerator(128, 4), gan_networks.DcganCritic(4)),
        (
            gan_networks.ResNetGenerator(128, 4),
            gan_networks._spectral(gan_networks.ResNetCritic(4)),
        ),
    ):
        images = generator(noise)
        assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1
        assert critic(images).shape == (3, 1)
    spectral = gan_networks._spectral(gan_networks.ResNetCritic(4))
    assert all(
        torch.nn.utils.parametrize.is_parametrized(m)
        for m in spectral.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    )


def test_gan_optimizer_sets_the_first_moment_coefficient():
    for name in ("hvadam", "adam", "adabelief", "lookahead", "sgd", "rmsprop"):
        optimizer = gan_training.gan_optimizer(name, [torch.zeros(2, requires_grad=True)], 1e-3)
        group = optimizer.param_groups[0]
        if name == "sgd":
            assert group["momentum"] == gan.GAN_BETA1
        elif name == "rmsprop":
            assert group["momentum"] == 0 and "betas" not in group
        else:
            assert group["betas"] == (gan.GAN_BETA1, 0.999)


# ---- end to end --------------------------------------------------------------------------------

TINY = [
    "gan", "--datasets", "ring,digits", "--optimizers", "hvadam,adam",
    "--iterations", "4", "--lrs", "1e-3,1e-2", "--seeds", "2", "--jobs", "1", "--no-progress",
]  # fmt: skip


def test_end_to_end_then_a_rerun_that_reuses_every_stored_trial(
    tmp_path, tiny_budgets, monkeypatch
):
    out = tmp_path / "gan"
    assert main([*TINY, "--out", str(out)]) == 0
    results = json.loads((out / "gan.json").read_text())
    assert set(results["datasets"]) == {"ring", "digits"}
    for dataset, entry in results["datasets"].items():
        assert set(entry["gans"]) == set(gan.GANS)
        assert len(entry["curve_iterations"]) == 2
        for task in entry["gans"].values():
            for r in task["optimizers"].values():
                assert r["lr"] in (1e-3, 1e-2) and r["runs"] == 2
                assert len(r["grid"]) == 2 and len(r["tests"]) == 2
                assert isinstance(r["failed"], bool)
                assert r["test_mean"] is None or math.isfinite(r["test_mean"])
                assert "samples" not in r  # drawn, not stored
                if dataset == "ring":
                    assert r["modes_covered"] is not None and 0 <= r["high_quality"] <= 1
        for figure in ("curves", "figure6", "samples"):
            assert is_png(out / f"{figure}_{dataset}.png")
    assert (out / "digits_classifier.pt").exists()
    report = (out / "report.md").read_text()
    for text in ("## Compared with the paper", "Table 4", "## ring", "## digits", "SN-GAN"):
        assert text in report
    assert not list(out.rglob(".*.tmp"))

    def must_not_train(*args, **kwargs):
        raise AssertionError("a stored trial was recomputed")

    monkeypatch.setattr(gan, "train_gan", must_not_train)
    assert main([*TINY, "--out", str(out)]) == 0
    again = json.loads((out / "gan.json").read_text())
    assert _comparable(again) == _comparable(results)


def _comparable(results: dict) -> dict:
    """The results less the wall and CPU times, which vary from run to run."""
    datasets = json.loads(json.dumps(results["datasets"]))
    for entry in datasets.values():
        entry.pop("cpu_seconds_per_run")
    return datasets


def _config(**changes) -> gan.GanConfig:
    config = gan.GanConfig.preset_named("quick")
    config.datasets, config.gans, config.optimizers = ["ring"], ["wgan-gp"], ["hvadam", "lookahead"]
    config.lrs, config.seeds, config.iterations, config.jobs = (1e-3,), (1,), 6, 1
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch, tiny_budgets):
    monkeypatch.setitem(
        gan.BUDGETS["quick"], "ring", replace(gan.BUDGETS["quick"]["ring"], evaluations=3)
    )
    whole = gan.run(_config(), tmp_path / "a", show_progress=False)
    with pytest.raises(Interrupted):
        gan.run(_config(), tmp_path / "b", show_progress=False, interrupt_after_checkpoints=5)
    assert list((tmp_path / "b" / "trials").rglob("*.pt"))  # a run was cut mid-way
    resumed = gan.run(_config(), tmp_path / "b", show_progress=False)
    assert _comparable(resumed) == _comparable(whole)


def test_workers_give_the_single_process_result(tmp_path):
    config = _config(optimizers=["adam", "sgd"], lrs=(1e-3, 1e-2), iterations=3)
    single = gan.run(config, tmp_path / "single", show_progress=False)
    parallel = gan.run(replace(config, jobs=2), tmp_path / "parallel", show_progress=False)
    assert _comparable(parallel) == _comparable(single)


def test_diverging_runs_are_reported_not_raised(tmp_path, monkeypatch, tiny_budgets):
    real = gan_training.gan_optimizer

    def exploding(name, params, lr):  # lr 10 stands for an lr at which training blows up
        return torch.optim.SGD(params, lr=1e30) if lr == 10 else real(name, params, lr)

    monkeypatch.setattr(gan_training, "gan_optimizer", exploding)
    config = _config(lrs=(1e-3, 10.0), gans=["wgan", "sngan"], optimizers=["adam"])
    results = gan.run(config, tmp_path / "mixed", show_progress=False)
    for task in results["datasets"]["ring"]["gans"].values():
        adam = task["optimizers"]["adam"]
        assert adam["lr"] == 1e-3 and {g["lr"]: g["diverged"] for g in adam["grid"]}[10.0]
    results = gan.run(_config(lrs=(10.0,), optimizers=["adam"]), tmp_path / "all", False)
    adam = results["datasets"]["ring"]["gans"]["wgan-gp"]["optimizers"]["adam"]
    assert adam["diverged_runs"] == 1 and adam["failed"] and adam["test_mean"] is None
    assert "(1/1 diverged)" in (tmp_path / "all" / "report.md").read_text()


def test_bad_options_end_in_one_line(tmp_path, capsys):
    for extra, message in (
        (["--datasets", "mnist"], "unknown dataset 'mnist'"),
        (["--gans", "dcgan"], "unknown GAN 'dcgan'"),
        (["--optimizers", "nope"], "unknown optimizer"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--jobs", "0"], "--jobs"),
    ):
        assert main(["gan", *extra, "--out", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


# ---- the --full path with a stand-in torch-fidelity ------------------------------------------


def test_cifar10_path_runs_with_torch_fidelity(tmp_path, monkeypatch, tiny_budgets):
    calls = []

    def calculate_metrics(**kwargs):
        calls.append(kwargs)
        fake, real = kwargs["input1"], kwargs["input2"]
        assert fake[0].dtype == torch.uint8 and fake[0].shape == (3, 32, 32)
        gap = fake.images.float().mean() - real.images.float().mean()
        return {"frechet_inception_distance": float(gap.abs())}

    stand_in = types.ModuleType("torch_fidelity")
    stand_in.calculate_metrics = calculate_metrics
    monkeypatch.setitem(sys.modules, "torch_fidelity", stand_in)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"weights")
    out = tmp_path / "out"
    status = main([
        "gan", "--datasets", "cifar10", "--data-dir", str(write_cifar10(tmp_path / "data")),
        "--inception-weights", str(weights), "--optimizers", "adam", "--iterations", "2",
        "--lrs", "1e-3", "--seeds", "1", "--jobs", "1", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert status == 0
    assert calls and all(
        c["fid"] and c["feature_extractor_weights_path"] == str(weights) for c in calls
    )
    assert {c["input2_cache_name"].rsplit("-", 1)[1] for c in calls} == {"valid", "test"}
    results = json.loads((out / "gan.json").read_text())
    assert results["datasets"]["cifar10"]["metric"] == "FID"
    assert "## cifar10" in (out / "report.md").read_text()
