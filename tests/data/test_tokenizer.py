"""TokenizerCache: background loading, each format against the tokenizers reference, bad input,
and loading in AsyncLoader's worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest
import tokenizers
import torch
from tokenizers import ByteLevelBPETokenizer, Tokenizer

from aiotrain.data import tokenizer as tokenizer_mod
from aiotrain.data.loader import AsyncLoader
from aiotrain.data.tokenizer import TokenizerCache, TokenizerError
from aiotrain.runtime import WorkerInitError
from tests.data.leftovers import no_children_left, shm_names

CORPUS = ["the quick brown fox jumps over the lazy dog", "héllo wörld, naïve café",
          "tokenizers learn merges from text", "the dog sleeps; the fox runs!"] * 20
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "un",
             "##aff", "##able", ",", "!", "the"]


@pytest.fixture
def vocab_txt(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDPIECE) + "\n")
    return path


@pytest.fixture
def bpe_files(tmp_path):
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                                special_tokens=["<|endoftext|>"], show_progress=False)
    vocab, merges = trained.save_model(str(tmp_path))
    with open(vocab) as f:
        return vocab, merges, json.load(f)


@pytest.fixture
def tokenizer_json(tmp_path):
    from tokenizers import models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, show_progress=False,
                                                        special_tokens=["[UNK]", "[PAD]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


async def loaded(*args) -> TokenizerCache:
    return await asyncio.wait_for(TokenizerCache(*args).wait_ready(), 30)


async def test_wordpiece_vocab_txt(vocab_txt):
    tc = await loaded(vocab_txt)
    assert tc.get_vocab() == {t: i for i, t in enumerate(WORDPIECE)}
    reference = tokenizers.BertWordPieceTokenizer(str(vocab_txt), lowercase=True)
    for text in ["Hello worlds!", "unaffable, hello", "the zebra"]:
        assert tc.encode(text) == reference.encode(text).ids
    ids = tc.encode("Hello worlds!")
    assert [WORDPIECE[i] for i in ids] == ["[CLS]", "hello", "world", "##s", "!", "[SEP]"]
    assert tc.decode(ids) == "hello worlds!"
    assert isinstance(tc.tokenizer, Tokenizer)


async def test_byte_level_bpe_vocab_and_merges(bpe_files):
    vocab, merges, expected = bpe_files
    tc = await loaded(vocab, merges)
    reference = ByteLevelBPETokenizer.from_file(vocab, merges)  # GPT-2: no prefix space
    assert tc.get_vocab() == expected
    for text in ["the lazy fox", " leading space", "héllo wörld, naïve café", "unseen ✓ text"]:
        ids = tc.encode(text)
        assert ids == reference.encode(text).ids
        assert tc.decode(ids) == text


async def test_tokenizer_json(tokenizer_json):
    tc = await loaded(tokenizer_json)
    reference = Tokenizer.from_file(str(tokenizer_json))
    assert tc.get_vocab() == reference.get_vocab(with_added_tokens=True)
    text = "the quick dog jumps"
    assert tc.encode(text) == reference.encode(text).ids
    assert tc.decode(tc.encode(text)) == reference.decode(reference.encode(text).ids)


async def test_plain_loader_without_tokenizers(monkeypatch, bpe_files, vocab_txt, tokenizer_json):
    vocab, merges, expected = bpe_files
    text = "héllo wörld, naïve café"
    ids = ByteLevelBPETokenizer.from_file(vocab, merges).encode(text).ids
    json_ids = Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    monkeypatch.setattr(tokenizer_mod, "tokenizers", None)

    bpe = await loaded(vocab, merges)
    assert bpe.tokenizer is None and bpe.get_vocab() == expected
    assert bpe.decode(ids) == text
    with pytest.raises(RuntimeError, match="encode needs the `tokenizers` package"):
        bpe.encode(text)
    wp = await loaded(vocab_txt)
    assert wp.decode([2, 5, 6, 7, 12, 3]) == "hello worlds !"
    assert (await loaded(tokenizer_json)).get_vocab() == json_ids


async def test_starts_loading_when_created_in_a_loop(vocab_txt):
    tc = TokenizerCache(vocab_txt)
    assert not tc.is_ready()
    for _ in range(1000):  # nobody awaits it: the background task alone finishes the load
        if tc.is_ready():
            break
        await asyncio.sleep(0.005)
    assert tc.is_ready() and tc.get_vocab()["hello"] == 5


def test_created_outside_a_loop_starts_on_wait_ready(vocab_txt):
    tc = TokenizerCache(vocab_txt)
    assert tc._task is None and not tc.is_ready()

    async def main():
        await tc.wait_ready()
        return tc.encode("hello")

    assert asyncio.run(main()) == [2, 5, 3]


def test_plain_script_loads_synchronously_on_first_use(vocab_txt):
    tc = TokenizerCache(vocab_txt)
    assert tc.get_vocab()["world"] == 6 and tc.is_ready()


async def test_use_before_ready_inside_a_loop_is_a_clear_error(vocab_txt):
    tc = TokenizerCache(vocab_txt)
    with pytest.raises(RuntimeError, match="not loaded yet: await wait_ready"):
        tc.get_vocab()
    await tc.wait_ready()


async def test_cancelling_a_waiter_does_not_cancel_the_load(vocab_txt):
    tc = TokenizerCache(vocab_txt)
    waiter = asyncio.create_task(tc.wait_ready())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(tc.wait_ready(), 30)
    assert tc.is_ready()


def _write(tmp_path, name, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


BAD_INPUTS = [
    ("missing vocab", lambda d: (d / "nope.txt",), FileNotFoundError, "tokenizer file not found: .*nope.txt"),
    ("directory", lambda d: (d,), IsADirectoryError, "tokenizer file is a directory"),
    ("empty vocab.txt", lambda d: (_write(d, "v.txt", ""),), TokenizerError, "v.txt: empty vocabulary"),
    ("duplicate token", lambda d: (_write(d, "v.txt", "a\nb\na\n"),), TokenizerError,
     r"v.txt:3: duplicate token 'a' \(first on line 1\)"),
    ("not utf-8", lambda d: (_write(d, "v.txt", b"ok\n\xff\xfe\n"),), TokenizerError,
     "v.txt: not UTF-8 text"),
    ("malformed vocab.json", lambda d: (_write(d, "v.json", '{"a": 0,\n "b" 1}'),
                                        _write(d, "m.txt", "")), TokenizerError,
     "v.json:2:6: JSON is malformed"),
    ("vocab.json of strings", lambda d: (_write(d, "v.json", '{"a": "x"}'), _write(d, "m.txt", "")),
     TokenizerError, "v.json: Expected `int`, got `str`"),
    ("vocab.json reused id", lambda d: (_write(d, "v.json", '{"a": 0, "b": 0}'), _write(d, "m.txt", "")),
     TokenizerError, "token 'b' has id 0 also used by 'a'"),
    ("missing merges", lambda d: (_write(d, "v.json", '{"a": 0}'), d / "m.txt"), FileNotFoundError,
     "tokenizer file not found: .*m.txt"),
    ("bad merges line", lambda d: (_write(d, "v.json", '{"a": 0, "b": 1, "ab": 2}'),
                                   _write(d, "m.txt", "#version: 0.2\na b\nab\n")), TokenizerError,
     "m.txt:3: expected two tokens separated by one space, got 'ab'"),
    ("merge out of vocab", lambda d: (_write(d, "v.json", '{"a": 0, "b": 1}'),
                                      _write(d, "m.txt", "a b\n")), TokenizerError,
     "m.txt:1: merge 'a b' needs 'ab', which is not in the vocabulary"),
    ("vocab.json without merges", lambda d: (_write(d, "v.json", '{"a": 0, "b": 1}'),),
     TokenizerError, "looks like a BPE vocab.json; pass merges_path too"),
    ("malformed tokenizer.json", lambda d: (_write(d, "tokenizer.json", '{"model": }'),),
     TokenizerError, "tokenizer.json: not a valid tokenizer.json"),
]


@pytest.mark.parametrize("make, exc, message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("with_tokenizers", [True, False], ids=["tokenizers", "plain"])
async def test_bad_input_raises_clearly_from_wait_ready(tmp_path, monkeypatch, make, exc, message,
                                                        with_tokenizers):
    if not with_tokenizers:
        monkeypatch.setattr(tokenizer_mod, "tokenizers", None)
    if not with_tokenizers and "tokenizer.json" in message:
        message = "tokenizer.json:1:11: JSON is malformed"
    tc = TokenizerCache(*make(tmp_path))
    with pytest.raises(exc, match=message):
        await asyncio.wait_for(tc.wait_ready(), 30)
    assert not tc.is_ready()
    with pytest.raises(exc, match=message):  # later use reports the same error
        tc.get_vocab()


async def test_a_200k_vocabulary_is_read_and_built_off_the_loop(tmp_path, monkeypatch):
    """Reading, parsing and the tokenizers constructor run on an I/O thread; the loop keeps
    running meanwhile (how long the GIL-holding constructor stalls it is bench_tokenizer.py's)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"tok{i}" for i in range(200_000)]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    built_on: list[int] = []
    build = tokenizer_mod._build

    def recording_build(*args):
        built_on.append(threading.get_ident())
        return build(*args)

    monkeypatch.setattr(tokenizer_mod, "_build", recording_build)
    ticks = 0
    tc = TokenizerCache(path)
    while not tc.is_ready():
        await asyncio.sleep(0.001)
        ticks += 1
        assert ticks < 60_000, "tokenizer load did not finish"
    await tc.wait_ready()
    assert len(tc.get_vocab()) == 200_004
    assert built_on and threading.get_ident() not in built_on
    assert ticks > 1  # the loop ran while the vocabulary loaded


# loaded in AsyncLoader's worker processes ----------------------------------------------------
class Texts:
    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i]


def encoder(tc, width=48):
    def encode(text, gen):  # runs in a worker process, on the worker's own copy of the tokenizer
        ids = tc.encode(text)
        return torch.tensor(ids + [-1] * (width - len(ids)))
    return encode


async def test_tokenizer_loaded_in_workers_gives_the_ids_of_the_in_process_one(bpe_files):
    vocab, merges, _ = bpe_files
    texts = ["the lazy fox", " leading space", "héllo wörld, naïve café", "unseen ✓ text"] * 3
    tc = TokenizerCache(vocab, merges, background=False)
    loader = AsyncLoader(Texts(texts), 2, transform=encoder(tc), workers=2, worker_init=tc.load)
    async with loader:
        batches = await asyncio.wait_for(_collect(loader), 30)
        pids = loader.worker_pids
    assert len(pids) == 2 and not tc.is_ready()  # both workers loaded it; this process did not
    reference = await loaded(vocab, merges)
    got = [[i for i in row if i >= 0] for b in batches for row in b.tolist()]
    assert got == [reference.encode(t) for t in texts]
    assert no_children_left()


async def _collect(loader):
    return [b async for b in loader]


@pytest.mark.parametrize("bad", ["missing", "malformed"])
async def test_a_tokenizer_that_fails_to_load_in_a_worker_is_a_one_line_error_naming_the_file(
        tmp_path, bad):
    vocab = tmp_path / "vocab.json"
    if bad == "malformed":
        vocab.write_text('{"a": 0,\n "b" 1}')
    (tmp_path / "merges.txt").write_text("")
    tc = TokenizerCache(vocab, tmp_path / "merges.txt", background=False)
    loader = AsyncLoader(Texts(["a b"] * 8), 2, transform=encoder(tc), workers=2,
                         worker_init=tc.load)
    with pytest.raises(WorkerInitError) as info:
        async with loader:
            await asyncio.wait_for(_collect(loader), 30)  # an error, not a hang
    message = str(info.value)
    assert "\n" not in message and str(vocab) in message, message
    assert message.startswith("data worker initialisation failed: ")
    assert isinstance(info.value.__cause__, FileNotFoundError if bad == "missing" else TokenizerError)
    assert no_children_left()


async def test_opening_starts_the_load_and_cancelling_it_leaves_no_process_or_segment(tmp_path):
    """The workers start loading when the loader is opened, before any batch is asked for; a
    run cancelled while they load (here: a vocabulary on a pipe nobody writes) cleans up."""
    fifo, started = tmp_path / "vocab.txt", tmp_path / "started"
    os.mkfifo(fifo)
    tc = TokenizerCache(fifo, background=False)

    def init():  # in the worker
        started.touch()
        tc.load()  # blocks: opening a FIFO waits for a writer

    shm_before = shm_names()
    loader = AsyncLoader(Texts(["a"] * 8), 2, transform=encoder(tc), workers=2, worker_init=init)
    pids: list[int] = []

    async def run():
        async with loader:
            while not started.exists():  # noqa: ASYNC110 - the worker's progress is a file
                await asyncio.sleep(0.01)
            pids.extend(loader.worker_pids)
            await _collect(loader)  # waits for the load that never ends

    task = asyncio.create_task(run())
    await asyncio.wait_for(asyncio.shield(_until(lambda: pids)), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pids) == 2 and loader.worker_pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert no_children_left()
    assert shm_names() == shm_before


async def _until(condition):
    while not condition():  # noqa: ASYNC110 - polling another task's progress
        await asyncio.sleep(0.01)
