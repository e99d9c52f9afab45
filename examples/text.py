"""Text: a small bag-of-embeddings sentiment classifier whose tokenizer loads in the background.

The corpus and its WordPiece vocabulary are generated (no download): sentences from templates,
labelled by whether their adjectives are positive or negative. ``build`` is async: it starts the
TokenizerCache (the vocabulary loads as a task), builds the model on a compute thread meanwhile,
and only then waits for the tokenizer. ``aiotrain train examples/text.sdn``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aiotrain import AsyncLoader
from aiotrain import distributed as dist
from aiotrain.data.tokenizer import TokenizerCache
from aiotrain.files import atomic_write
from aiotrain.job import Task
from aiotrain.metrics import Accuracy, Loss
from aiotrain.runtime import to_compute, to_io

POSITIVE = "great fun wonderful brilliant moving clever charming superb delightful fresh".split()
NEGATIVE = "dull boring awful clumsy tedious bland weak messy tiresome flat".split()
NOUNS = "movie film story plot cast script ending score scene show".split()
FILLER = "the a this that was is and but really quite very rather somewhat truly".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_corpus(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = POSITIVE if label else NEGATIVE
        parts = [rng.choice(FILLER), rng.choice(NOUNS), rng.choice(FILLER), rng.choice(words)]
        if rng.random() < 0.5:
            parts += [rng.choice(FILLER), rng.choice(words)]
        out.append((" ".join(parts), int(label)))
    return out


def write_vocab(root: Path, extra_words: int) -> Path:
    """A WordPiece vocab.txt: specials, the corpus words, and ``extra_words`` filler entries (so
    loading it takes a moment, as a real vocabulary does)."""
    path = root / "vocab.txt"
    if path.exists():
        return path
    words = SPECIAL + sorted(set(POSITIVE + NEGATIVE + NOUNS + FILLER))
    words += [f"tok{i}" for i in range(extra_words)]
    atomic_write(path, "\n".join(words) + "\n")
    return path


class Encoded:
    """Token ids padded to a fixed length, and labels, as tensors."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(batch)
        return self.ids[idx], self.labels[idx]


class BagClassifier(nn.Module):
    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.head = nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _encode(tok: TokenizerCache, corpus: list[tuple[str, int]], length: int) -> Encoded:
    rows = []
    for text, _ in corpus:
        ids = list(tok.encode(text))[:length]
        rows.append(ids + [0] * (length - len(ids)))
    return Encoded(torch.tensor(rows), torch.tensor([y for _, y in corpus]))


async def build(cfg: Any) -> Task:
    """Start the tokenizer load, build the model meanwhile, then encode the data."""
    torch.manual_seed(cfg.seed)
    vocab = await to_io(write_vocab, Path(cfg.data.root), cfg.data.extra_vocab)
    tok = TokenizerCache(str(vocab))  # loading starts now, as a task on this loop
    vocab_size = len(SPECIAL) + len(set(POSITIVE + NEGATIVE + NOUNS + FILLER)) + cfg.data.extra_vocab
    model = await to_compute(BagClassifier, vocab_size, cfg.model.dim)
    await tok.wait_ready()
    corpus = make_corpus(cfg.data.samples, cfg.seed)
    n_val = len(corpus) // 5
    train = await to_compute(_encode, tok, corpus[n_val:], cfg.data.length)
    val = await to_compute(_encode, tok, corpus[:n_val], cfg.data.length)
    sampler = torch.utils.data.DistributedSampler(train, num_replicas=dist.world_size(),
                                                  rank=dist.rank(), shuffle=True, seed=cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    return Task(model=model, optimizer=optimizer, loss_fn=loss_fn,
                train_loader=AsyncLoader(train, cfg.data.batch_size // dist.world_size(), sampler=sampler),
                val_loader=AsyncLoader(val, 256),
                metrics={"accuracy": Accuracy(), "loss": Loss(loss_fn)}, score_name="accuracy")
