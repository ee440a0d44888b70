"""The models the speed study's training-step section trains: a small causal transformer LM,
the ``lm`` suite's PTB LSTM LM, a small CNN and a deep residual MLP of many small tensors, each
with one fixed training batch (:data:`BUILDERS`; ``tiny`` gives toy sizes for tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hvadam_bench.data import ptb
from hvadam_bench.workloads import lm

WORKLOADS = ("transformer", "lstm", "cnn", "many_small")


# --- the models ----------------------------------------------------------------------------


class CausalSelfAttentionBlock(nn.Module):
    """A pre-norm transformer block: causal multi-head attention, then a GELU MLP, each
    added to the residual stream (12 parameter tensors)."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.query_key_value = nn.Linear(width, 3 * width)
        self.projection = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, hidden)
        self.contract = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        heads = self.query_key_value(self.attention_norm(x))
        heads = heads.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
        x = x + self.projection(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.contract(F.gelu(self.expand(self.mlp_norm(x))))


class CausalTransformerLM(nn.Module):
    """Token and learned position embeddings, pre-norm blocks, a final norm, and a decoder tied
    to the token embedding."""

    def __init__(
        self, vocabulary: int, width: int, layers: int, heads: int, hidden: int, context: int
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocabulary, width)
        self.position_embedding = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(width, heads, hidden) for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.final_norm(x), self.token_embedding.weight)


class SmallCNN(nn.Sequential):
    """Four 3x3 conv layers with batch norm (32 to 256 channels), three poolings to 4x4, a
    global average and a linear head: about 0.4M parameters for 32x32 colour images."""

    def __init__(self, classes: int = 10, width: int = 32):
        layers: list[nn.Module] = []
        channels = 3
        for index, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            if index < 3:
                layers.append(nn.MaxPool2d(2))
            channels = out_channels
        super().__init__(
            *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)
        )


class ResidualMLP(nn.Module):
    """``depth`` residual layers ``x + tanh(W x + b)`` of one width: 2·depth small tensors."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return x


# --- the workloads -------------------------------------------------------------------------


@dataclass
class Workload:
    """A model and the loss of one training batch; ``loss(model)`` runs the forward pass."""

    description: str
    batch: str
    model: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]
    clip: float | None = None  # gradient norm clipping after backward, as the suite trains


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def transformer_workload(tiny: bool, device: str) -> Workload:
    if tiny:
        vocabulary, width, layers, heads, hidden, context, batch = 64, 16, 1, 2, 32, 8, 2
    else:
        vocabulary, width, layers, heads, hidden, context, batch = 16384, 256, 4, 4, 1024, 128, 16
    torch.manual_seed(0)
    model = CausalTransformerLM(vocabulary, width, layers, heads, hidden, context).to(device)
    tokens = torch.randint(vocabulary, (batch, context + 1), generator=_seeded(1)).to(device)

    def loss(net: nn.Module) -> torch.Tensor:
        logits = net(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    return Workload(
        f"causal transformer LM: {layers} blocks of width {width}, {heads} heads, MLP {hidden}, "
        f"vocabulary {vocabulary} (tied), synthetic tokens",
        f"{batch} x {context} tokens",
        model,
        loss,
    )


def lstm_workload(tiny: bool, device: str) -> Workload:
    train_text = ptb.read_texts()["train"]
    if tiny:
        train_text, vocabulary_size, embedding, hidden, streams, bptt = (
            train_text[:20_000], 50, 8, 12, 2, 5
        )  # fmt: skip
    else:
        vocabulary_size, embedding, hidden, streams, bptt = None, 256, 384, 20, 35
    tokens = ptb.tokenize(train_text)
    vocabulary = ptb.build_vocabulary(tokens, vocabulary_size)
    data = ptb.batchify(vocabulary.encode(tokens), streams)[: bptt + 1].to(device)
    config = lm.LMConfig.preset_named("quick")
    config.embedding, config.hidden, config.vocabulary = embedding, hidden, vocabulary_size
    torch.manual_seed(0)
    model = lm.LSTMLanguageModel(len(vocabulary), config, depth=2).to(device)

    def loss(net: nn.Module) -> torch.Tensor:
        # Every step starts from a zero state: the suite carries the state over, which costs
        # the same.
        logits, _, _, _ = net(data[:-1], net.initial_state(streams))
        return F.cross_entropy(logits.flatten(0, 1), data[1:].flatten())

    return Workload(
        f"the lm suite's LSTM LM: 2 layers, embedding {embedding} (tied), hidden {hidden}, "
        f"PTB vocabulary {len(vocabulary)}, PTB training text",
        f"{streams} streams x {bptt} words",
        model,
        loss,
        clip=config.clip,
    )


def cnn_workload(tiny: bool, device: str) -> Workload:
    width, batch, size = (4, 2, 8) if tiny else (32, 32, 32)
    torch.manual_seed(0)
    model = SmallCNN(width=width).to(device)
    images = torch.randn(batch, 3, size, size, generator=_seeded(1)).to(device)
    labels = torch.randint(10, (batch,), generator=_seeded(2)).to(device)
    return Workload(
        f"small CNN: 4 conv layers ({width} to {8 * width} channels) with batch norm, "
        f"linear head; synthetic {size}x{size} images",
        f"{batch} images",
        model,
        lambda net: F.cross_entropy(net(images), labels),
    )


def many_small_workload(tiny: bool, device: str) -> Workload:
    width, depth, batch = (4, 20, 2) if tiny else (81, 150, 32)
    torch.manual_seed(0)
    model = ResidualMLP(width, depth).to(device)
    inputs = torch.randn(batch, width, generator=_seeded(1)).to(device)
    return Workload(
        f"{depth} residual layers x + tanh(Wx + b) of width {width}: many small tensors",
        f"{batch} vectors",
        model,
        lambda net: net(inputs).pow(2).mean(),
    )


BUILDERS: dict[str, Callable[[bool, str], Workload]] = {
    "transformer": transformer_workload,
    "lstm": lstm_workload,
    "cnn": cnn_workload,
    "many_small": many_small_workload,
}
