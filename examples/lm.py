"""A small transformer language model on Python's own standard library sources.

The corpus is text that ships with every Python: the ``.py`` files of its standard library (no
download). ``build`` writes a byte-level BPE vocabulary (the 256 byte symbols, GPT-2's byte to
unicode mapping, no merges: a byte-level model), starts loading it through TokenizerCache,
builds the model on a compute thread meanwhile, then tokenizes the files once into a flat int32
token file, served as fixed-length records through MmapDataset and AsyncLoader. Training uses a
per-iteration OneCycle schedule, gradient clipping and accumulation, all from the config:
``aiotrain train examples/lm.sdn``.
"""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from aiotrain import AsyncLoader
from aiotrain.data.mmap_dataset import MmapDataset
from aiotrain.data.tokenizer import TokenizerCache
from aiotrain.files import atomic_write
from aiotrain.job import Task
from aiotrain.metrics import Loss
from aiotrain.runtime import to_compute, to_io


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255 (byte-level BPE's alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in kept:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def write_tokenizer(root: Path) -> tuple[Path, Path]:
    """vocab.json (256 byte symbols) and merges.txt (none) under ``root``, written once."""
    vocab, merges = root / "vocab.json", root / "merges.txt"
    if not vocab.exists():
        atomic_write(vocab, json.dumps({s: i for i, s in enumerate(byte_symbols())}))
    if not merges.exists():
        atomic_write(merges, "#version: 0.2\n")
    return vocab, merges


def corpus_files(n_files: int) -> list[Path]:
    """The first ``n_files`` standard library modules by name (top level only, deterministic)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no Python sources under {stdlib}")
    return files[:n_files]


def write_tokens(tok: TokenizerCache, files: list[Path], path: Path, max_bytes: int,
                 record: int) -> Path:
    """Tokenize the files (at most ``max_bytes`` each) into one flat int32 file of whole
    ``record``-token records, once."""
    if path.exists():
        return path
    ids: list[int] = []
    for f in files:
        text = f.read_bytes()[:max_bytes].decode("utf-8", errors="replace")
        ids.extend(tok.encode(text, add_special_tokens=False))
    ids = ids[: len(ids) - len(ids) % record]
    atomic_write(path, np.asarray(ids, dtype=np.int32).tobytes())
    return path


class Windows:
    """Next-token pairs ``(x, y)`` from fixed-length records of a token MmapDataset."""

    def __init__(self, records: MmapDataset, rows: range) -> None:
        self.records, self.rows = records, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.records.__getitems__([self.rows[i] for i in batch]).long()
        return block[:, :-1], block[:, 1:]


class TinyLM(nn.Module):
    """A causal transformer: token + position embeddings, pre-norm encoder layers, a tied head."""

    def __init__(self, vocab: int, dim: int, heads: int, layers: int, context: int,
                 dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.tokens(ids) + self.positions(torch.arange(t, device=ids.device))
        h = self.body(h, mask=self.mask[:t, :t], is_causal=True)
        return self.norm(h) @ self.tokens.weight.T  # (B, T, V)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position: (B, T, V) logits flattened against (B, T) targets."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())


async def build(cfg: Any) -> Task:
    """Tokenizer load and model build overlap; then the token file, loaders and schedule."""
    if cfg.data.deterministic:
        torch.use_deterministic_algorithms(True)
    root = Path(cfg.data.root)
    await to_io(root.mkdir, parents=True, exist_ok=True)
    vocab, merges = await to_io(write_tokenizer, root)
    tok = TokenizerCache(str(vocab), str(merges))  # loading starts now, as a task on this loop
    m = cfg.model
    torch.manual_seed(cfg.seed)
    model = await to_compute(TinyLM, 256, m.dim, m.heads, m.layers, m.context, m.dropout)
    await tok.wait_ready()
    files = corpus_files(cfg.data.files)
    name = f"tokens_{cfg.data.files}_{cfg.data.max_bytes}_{m.context}.i32"
    tokens = await to_io(write_tokens, tok, files, root / name, cfg.data.max_bytes, m.context + 1)
    records = MmapDataset(tokens, record_shape=(m.context + 1,), dtype=torch.int32)
    n_val = max(1, len(records) // 10)
    train = Windows(records, range(n_val, len(records)))
    val = Windows(records, range(n_val))
    bs = cfg.data.batch_size
    train_loader = AsyncLoader(train, bs, shuffle=True, seed=cfg.seed, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr,
                                  weight_decay=cfg.optim.weight_decay)
    # stepped after every optimizer step (scheduler.per = iteration): one per accumulation group
    steps = cfg.train.max_epochs * math.ceil(len(train_loader) / cfg.train.accumulate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.optim.lr, total_steps=steps)
    return Task(model=model, optimizer=optimizer, loss_fn=lm_loss, train_loader=train_loader,
                val_loader=AsyncLoader(val, bs), scheduler=scheduler,
                metrics={"loss": Loss(lm_loss)}, score_name="loss", score_mode="min",
                resources=[records])
