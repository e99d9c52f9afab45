"""TokenizerCache: background loading, each format against the tokenizers reference, bad input."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import tokenizers
from tokenizers import ByteLevelBPETokenizer, Tokenizer

from aiotrain.data import tokenizer as tokenizer_mod
from aiotrain.data.tokenizer import TokenizerCache, TokenizerError

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


async def test_loop_stays_responsive_while_a_200k_vocabulary_loads(tmp_path):
    """The heartbeat only pauses for the tokenizers constructor (a GIL-holding Rust call)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"tok{i}" for i in range(200_000)]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")

    # the unavoidable pause, measured here: building the Rust model from the parsed vocabulary
    vocab = {t: i for i, t in enumerate(tokens)}
    t0 = time.perf_counter()
    tokenizers.models.WordPiece(vocab, unk_token="[UNK]")
    rust_build = time.perf_counter() - t0
    del vocab

    gaps: list[float] = []
    tc = TokenizerCache(path)
    t0 = last = time.perf_counter()
    while not tc.is_ready():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        assert now - t0 < 60, "tokenizer load did not finish"
    load_time = time.perf_counter() - t0
    await tc.wait_ready()
    assert len(tc.get_vocab()) == 200_004
    # reading and parsing never stall the loop; the one long pause is the Rust build
    assert max(gaps) < rust_build * 1.25 + 0.04, (max(gaps), rust_build, load_time)
    assert sum(g for g in gaps if g < 0.02) > 0.3 * load_time  # the loop ran for much of the load
