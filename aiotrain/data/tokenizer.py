"""TokenizerCache: a tokenizer that loads in the background while the rest of training sets up.

Created inside a running event loop, a ``TokenizerCache`` starts a task at once (unless
``background=False``): the files are
read, parsed and built on aiotrain's I/O executor (``aiotrain.runtime.to_io``), so the loop keeps
running. ``await wait_ready()`` joins it; created outside a loop, loading starts on
the first ``wait_ready()`` (or happens synchronously on the first ``get_vocab()`` / ``encode``
when there is no loop at all, as in a plain script).

Formats, decided by the arguments:

* ``merges_path`` given: byte-level BPE, ``vocab.json`` (token -> id) + ``merges.txt``, GPT-2
  convention (no prefix space added, ``#version`` header line optional).
* a ``.json`` file that is a ``tokenizer.json`` (has a ``"model"``): the full pipeline it holds.
* anything else: WordPiece ``vocab.txt``, one token per line, id = line number. Input is
  lower-cased when the vocabulary has no upper-case token (an uncased vocabulary); ``[CLS]`` /
  ``[SEP]`` are added around each encoding when both are in the vocabulary (BERT).

With the ``tokenizers`` package (extra ``text``) ``.tokenizer`` is a ``tokenizers.Tokenizer``.
Without it the plain loader still serves ``get_vocab()`` and ``decode``; ``encode`` then says
which package it needs.

Responsiveness, honestly: reading and parsing never stall the loop, but the ``tokenizers``
constructors are Rust calls that hold the GIL for their whole run (about 0.1 s for a
200 000-token vocabulary on a 2-core machine), and the loop cannot run Python code meanwhile;
and GIL-bound parsing slows Python-bound work of the main process (model building) while it
runs. When tokenization belongs in AsyncLoader's worker processes anyway, load it there
(``background=False`` + ``worker_init=tc.load``): the main process then does none of it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import msgspec

from ..errors import where
from ..runtime import to_io

try:
    import tokenizers
except ImportError:  # the `text` extra is optional: fall back to the plain vocabulary loader
    tokenizers = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["TokenizerCache", "TokenizerError"]

PathLike = str | os.PathLike[str]
UNK_CANDIDATES = ("[UNK]", "<unk>", "<|endoftext|>")


class TokenizerError(ValueError):
    """A vocabulary, merges or tokenizer.json file is malformed (the message names file and line)."""


@dataclass
class _Loaded:
    """What a finished load produced."""

    vocab: dict[str, int]
    kind: str  # "wordpiece" | "bpe" | "tokenizer.json"
    tokenizer: Tokenizer | None  # None: the plain loader (no ``tokenizers`` package)


class TokenizerCache:
    """Loads ``vocab_path`` (and ``merges_path``) in the background; see the module docstring."""

    def __init__(self, vocab_path: PathLike, merges_path: PathLike | None = None, *,
                 background: bool = True) -> None:
        self.vocab_path = os.fspath(vocab_path)
        self.merges_path = None if merges_path is None else os.fspath(merges_path)
        self._loaded: _Loaded | None = None
        self._task: asyncio.Task[None] | None = None
        if not background:
            return  # loaded where it is first used: ``load()``, e.g. as a loader's worker_init
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the first wait_ready() starts the load
        self._start()

    def __repr__(self) -> str:
        state = "ready" if self.is_ready() else "loading" if self._task else "not started"
        return f"TokenizerCache({self.vocab_path!r}, {self.merges_path!r}, {state})"

    # loading ------------------------------------------------------------------------------
    def _start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._load(), name=f"TokenizerCache({os.path.basename(self.vocab_path)})")
        return self._task

    async def _load(self) -> None:
        vocab_raw = await to_io(_read, self.vocab_path)
        merges_raw = None if self.merges_path is None else await to_io(_read, self.merges_path)
        self._loaded = await to_io(_build, self.vocab_path, vocab_raw, self.merges_path, merges_raw)

    def is_ready(self) -> bool:
        """True once the tokenizer is loaded (never blocks)."""
        return self._loaded is not None

    async def wait_ready(self) -> TokenizerCache:
        """Wait for the load (starting it if needed); raises its error if it failed.

        Cancelling the caller does not cancel the load: another waiter may still want it.
        """
        if self._loaded is None:
            await asyncio.shield(self._start())
        return self

    def load(self) -> TokenizerCache:
        """Load now, synchronously, where no event loop runs (a data worker process, a script).

        With tokenization in AsyncLoader's worker processes, pass ``worker_init=tc.load`` and
        ``background=False``: each worker loads its own copy while the main process builds the
        model, undisturbed by the parse (which holds a GIL, but not the main process's)."""
        self._ready()
        return self

    def _ready(self) -> _Loaded:
        """The loaded state; loads synchronously when there is no running loop to wait on."""
        if self._loaded is not None:
            return self._loaded
        if self._task is not None and self._task.done():
            self._task.result()  # re-raises the load's error
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            vocab_raw = _read(self.vocab_path)
            merges_raw = None if self.merges_path is None else _read(self.merges_path)
            self._loaded = _build(self.vocab_path, vocab_raw, self.merges_path, merges_raw)
            return self._loaded
        raise RuntimeError(f"{self!r} is not loaded yet: await wait_ready() first")

    # using --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | None:
        """The ``tokenizers.Tokenizer`` (None when that package is not installed)."""
        return self._ready().tokenizer

    def get_vocab(self) -> dict[str, int]:
        """A copy of the token -> id vocabulary (added/special tokens included)."""
        return dict(self._ready().vocab)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (needs the ``tokenizers`` package)."""
        loaded = self._ready()
        if loaded.tokenizer is None:
            raise RuntimeError("TokenizerCache.encode needs the `tokenizers` package "
                               "(pip install 'aiotrain[text]')")
        return loaded.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of token ``ids``."""
        loaded = self._ready()
        ids = [int(i) for i in ids]
        if loaded.tokenizer is not None:
            return loaded.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return _plain_decode(loaded, ids, skip_special_tokens)


# reading --------------------------------------------------------------------------------------
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _read_error(path, exc) from None


def _read_error(path: str, exc: OSError) -> OSError:
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(errno.ENOENT, "tokenizer file not found", path)
    if isinstance(exc, IsADirectoryError):
        return IsADirectoryError(errno.EISDIR, "tokenizer file is a directory", path)
    return exc


def _text(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


# parsing and building (I/O executor) ----------------------------------------------------------
def _build(vocab_path: str, vocab_raw: bytes, merges_path: str | None,
           merges_raw: bytes | None) -> _Loaded:
    if merges_path is not None:
        assert merges_raw is not None
        vocab = _parse_vocab_json(vocab_path, vocab_raw)
        merges = _parse_merges(merges_path, _text(merges_path, merges_raw), vocab)
        return _Loaded(vocab, "bpe", _bpe_tokenizer(vocab, merges))
    if vocab_path.endswith(".json"):
        return _load_tokenizer_json(vocab_path, vocab_raw)
    vocab = _parse_vocab_txt(vocab_path, _text(vocab_path, vocab_raw))
    return _Loaded(vocab, "wordpiece", _wordpiece_tokenizer(vocab))


def _parse_vocab_txt(path: str, text: str) -> dict[str, int]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new token
    if not lines:
        raise TokenizerError(f"{path}: empty vocabulary")
    # a Python-level loop (not one C call) so the GIL is handed back to the loop regularly
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        token = line.rstrip("\r")
        if token in vocab:
            raise TokenizerError(f"{path}:{i + 1}: duplicate token {token!r} "
                                 f"(first on line {vocab[token] + 1})")
        vocab[token] = i
    return vocab


def _parse_vocab_json(path: str, raw: bytes) -> dict[str, int]:
    try:
        vocab = msgspec.json.decode(raw, type=dict[str, int])
    except msgspec.DecodeError as exc:
        raise TokenizerError(_json_where(path, raw, str(exc))) from None
    if not vocab:
        raise TokenizerError(f"{path}: empty vocabulary")
    seen: dict[int, str] = {}
    for token, i in vocab.items():
        if i < 0 or i in seen:
            what = "negative id" if i < 0 else f"id {i} also used by {seen[i]!r}"
            raise TokenizerError(f"{path}: token {token!r} has {what}")
        seen[i] = token
    return vocab


def _json_where(path: str, raw: bytes, message: str) -> str:
    """msgspec reports a byte offset; say ``FILE:LINE:COL: message`` instead."""
    m = re.search(r"\(byte (\d+)\)", message)
    if not m:
        return f"{path}: {message}"
    offset = int(m.group(1))
    line = raw.count(b"\n", 0, offset) + 1
    col = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f"{where(path, line, col)}: {message[:m.start()].rstrip()}"


def _parse_merges(path: str, text: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{path}:{n}: expected two tokens separated by one space, got {line!r}")
        for token in (*parts, parts[0] + parts[1]):
            if token not in vocab:
                raise TokenizerError(f"{path}:{n}: merge {line!r} needs {token!r}, "
                                     "which is not in the vocabulary")
        merges.append((parts[0], parts[1]))
    return merges


def _load_tokenizer_json(path: str, raw: bytes) -> _Loaded:
    text = _text(path, raw)
    if tokenizers is None:
        return _plain_tokenizer_json(path, raw)
    try:
        tok = tokenizers.Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises bare Exception with serde's line/column
        if _is_flat_vocab(raw):
            raise TokenizerError(f"{path}: looks like a BPE vocab.json; pass merges_path too") from None
        raise TokenizerError(f"{path}: not a valid tokenizer.json: {exc}") from None
    return _Loaded(tok.get_vocab(with_added_tokens=True), "tokenizer.json", tok)


def _is_flat_vocab(raw: bytes) -> bool:
    try:
        msgspec.json.decode(raw, type=dict[str, int])
    except msgspec.DecodeError:
        return False
    return True


def _plain_tokenizer_json(path: str, raw: bytes) -> _Loaded:
    """The vocabulary of a tokenizer.json without the tokenizers package (decode by its decoder)."""
    try:
        spec = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise TokenizerError(_json_where(path, raw, str(exc))) from None
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or "vocab" not in model:
        if isinstance(spec, dict) and all(isinstance(v, int) for v in spec.values()):
            raise TokenizerError(f"{path}: looks like a BPE vocab.json; pass merges_path too")
        raise TokenizerError(f"{path}: not a valid tokenizer.json: no model vocabulary")
    entries = model["vocab"]
    vocab = ({tok: i for i, (tok, _score) in enumerate(entries)} if isinstance(entries, list)
             else dict(entries))  # Unigram keeps [piece, score] pairs
    for added in spec.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
    decoder = (spec.get("decoder") or {}).get("type")
    return _Loaded(vocab, _DECODER_KIND.get(decoder or "", "tokenizer.json"), None)


_DECODER_KIND = {"ByteLevel": "bpe", "WordPiece": "wordpiece", "Metaspace": "metaspace"}


def _wordpiece_tokenizer(vocab: dict[str, int]) -> Tokenizer | None:
    if tokenizers is None:
        return None
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    unk = next((t for t in UNK_CANDIDATES if t in vocab), "[UNK]")
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk))
    uncased = not any(t != t.lower() for t in vocab if not _is_special(t))
    tok.normalizer = normalizers.BertNormalizer(lowercase=uncased)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = [t for t in vocab if _is_special(t)]
    if specials:
        tok.add_special_tokens(specials)
    if "[CLS]" in vocab and "[SEP]" in vocab:
        tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]),
                                                       ("[CLS]", vocab["[CLS]"]))
    return tok


def _is_special(token: str) -> bool:
    return len(token) > 2 and ((token[0] == "[" and token[-1] == "]")
                               or (token.startswith("<|") and token.endswith("|>")))


def _bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer | None:
    if tokenizers is None:
        return None
    from tokenizers import decoders, models, pre_tokenizers, processors

    unk = next((t for t in UNK_CANDIDATES if t in vocab), None)
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


# the plain loader's decode --------------------------------------------------------------------
def _plain_decode(loaded: _Loaded, ids: list[int], skip_special_tokens: bool) -> str:
    """Decode without the tokenizers package: byte-level BPE bytes, or WordPiece ``##`` joins.

    Special tokens are recognised by their ``[NAME]`` / ``<|name|>`` form only.
    """
    inverse = {i: t for t, i in loaded.vocab.items()}
    try:
        tokens = [inverse[i] for i in ids]
    except KeyError as exc:
        raise ValueError(f"token id {exc.args[0]} is not in the vocabulary") from None
    if skip_special_tokens:
        tokens = [t for t in tokens if not _is_special(t)]
    if loaded.kind == "bpe":
        table = _unicode_to_byte()
        return bytes(table[c] for c in "".join(tokens) if c in table).decode("utf-8", "replace")
    if loaded.kind == "wordpiece":
        return " ".join(tokens).replace(" ##", "")
    if loaded.kind == "metaspace":
        return "".join(tokens).replace("\u2581", " ").lstrip(" ")
    return "".join(tokens)


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table
