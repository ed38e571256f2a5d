"""Text datasets: tokenising (char, bytes, tokenizer.json), the token cache, next-token
windows, the train/val split, `data.vocab_size` in a train block, and located errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPECS

from specc.cli import main
from specc.errors import DataError, Location
from specc.training import text
from specc.training.data import make_dataset, materialize

LOC = Location("spec.spec", 7, 13)
SAMPLE = "Ünïcode: naïve café — 東京\nThe quick brown fox jumps over the lazy dog.\n" * 3


def write_tokenizer(path: Path, lines: list[str]) -> Path:
    """A small word-level Hugging Face tokenizer trained in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(path))
    return path


def text_file(tmp_path: Path, content: str = SAMPLE, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


# ---- tokenisers -----------------------------------------------------------------------


def test_char_tokens_round_trip_with_the_sorted_characters_as_vocabulary():
    tokens = text.char_tokens(SAMPLE)
    assert tokens.vocab_size == len(set(SAMPLE))
    assert tokens.ids.dtype == np.uint16 and len(tokens.ids) == len(SAMPLE)
    chars = sorted(set(SAMPLE))
    assert [chars[i] for i in tokens.ids[:5]] == list(SAMPLE[:5])  # nanoGPT's stoi
    assert tokens.decode(tokens.ids.tolist()) == SAMPLE


def test_byte_tokens_round_trip_over_256_values():
    tokens = text.byte_tokens(SAMPLE)
    assert tokens.vocab_size == 256
    assert len(tokens.ids) == len(SAMPLE.encode("utf-8"))
    assert tokens.decode(tokens.ids.tolist()) == SAMPLE


def test_tokenizer_json_round_trips_words(tmp_path):
    path = write_tokenizer(tmp_path / "tokenizer.json", ["the cat sat", "the dog sat down"])
    tokens = text.tokenize("the dog sat", str(path), LOC)
    assert tokens.vocab_size == 6  # [UNK] and five words
    assert len(tokens.ids) == 3
    assert tokens.decode(tokens.ids.tolist()) == "the dog sat"


# ---- the cache ------------------------------------------------------------------------


def test_cache_is_written_beside_the_text_then_hit(tmp_path):
    path = text_file(tmp_path)
    first, hit = text.file_token_ids(path, "char", "TextFile", LOC)
    assert not hit
    npy, sidecar = text.cache_paths(path, "char")
    assert npy.name == "corpus.txt.char.tokens.npy" and npy.is_file()
    assert np.load(npy).dtype == np.uint16
    assert json.loads(sidecar.read_text())["vocab_size"] == first.vocab_size
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corpus.txt",
        "corpus.txt.char.tokens.json",
        "corpus.txt.char.tokens.npy",
    ]  # fmt: skip  (no temporary file left behind)
    again, hit = text.file_token_ids(path, "char", "TextFile", LOC)
    assert hit and np.array_equal(again.ids, first.ids)
    assert again.decode(again.ids.tolist()) == SAMPLE


def test_cache_is_invalidated_when_the_text_changes(tmp_path):
    path = text_file(tmp_path)
    text.file_token_ids(path, "char", "TextFile", LOC)
    path.write_text("zzz and more", encoding="utf-8")
    tokens, hit = text.file_token_ids(path, "char", "TextFile", LOC)
    assert not hit and tokens.decode(tokens.ids.tolist()) == "zzz and more"
    assert text.file_token_ids(path, "char", "TextFile", LOC)[1]


def test_cache_is_invalidated_when_the_tokenizer_changes(tmp_path):
    path = text_file(tmp_path, "the cat sat on the mat")
    tok = write_tokenizer(tmp_path / "words.json", ["the cat sat on the mat"])
    first, hit = text.file_token_ids(path, str(tok), "TextFile", LOC)
    assert not hit and text.file_token_ids(path, str(tok), "TextFile", LOC)[1]
    write_tokenizer(tok, ["mat mat mat on on sat cat the"])  # same words, other ids
    second, hit = text.file_token_ids(path, str(tok), "TextFile", LOC)
    assert not hit and not np.array_equal(first.ids, second.ids)
    assert second.decode(second.ids.tolist()) == "the cat sat on the mat"


def test_a_corrupt_cache_is_rebuilt(tmp_path):
    path = text_file(tmp_path)
    text.file_token_ids(path, "bytes", "TextFile", LOC)
    npy, _ = text.cache_paths(path, "bytes")
    npy.write_bytes(b"not numpy")
    tokens, hit = text.file_token_ids(path, "bytes", "TextFile", LOC)
    assert not hit and tokens.decode(tokens.ids.tolist()) == SAMPLE


# ---- windows and splits ---------------------------------------------------------------


def test_windows_are_non_overlapping_with_next_token_targets(tmp_path):
    path = text_file(tmp_path, "abcdefghijklmnopqrstuvwxyz")
    ds = make_dataset("TextFile", [str(path)], {"block_size": 4, "val_fraction": 0.0})
    assert len(ds) == 6 and ds.vocab_size == 26  # (26 - 1) // 4 windows
    x, y = ds[1]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4,)
    assert ds.decode(x.tolist()) == "efgh" and ds.decode(y.tolist()) == "fghi"
    inputs, targets = materialize(ds)
    assert inputs.shape == targets.shape == (6, 4)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_split_takes_the_first_and_last_part_of_the_tokens(tmp_path):
    path = text_file(tmp_path, "0123456789" * 10)  # 100 tokens
    train = make_dataset("TextFile", [str(path)], {"block_size": 8, "split": "train"})
    val = make_dataset("TextFile", [str(path)], {"block_size": 8, "split": "val"})
    assert (len(train), len(val)) == ((90 - 1) // 8, (10 - 1) // 8)
    assert train.vocab_size == val.vocab_size == 10  # one vocabulary for both
    half = make_dataset("TextFile", [str(path)], {"block_size": 8, "split": "val",
                                                  "val_fraction": 0.5})  # fmt: skip
    assert len(half) == (50 - 1) // 8


def test_python_docs_is_a_real_corpus_without_files():
    train = make_dataset("PythonDocs", [], {"block_size": 256})
    val = make_dataset("PythonDocs", [], {"block_size": 256, "split": "val"})
    n = len(text.python_docs_text())
    assert n > 100_000
    assert len(train) == (int(n * 0.9) - 1) // 256 and len(val) == (n - int(n * 0.9) - 1) // 256
    assert 50 < train.vocab_size < 500
    assert train.decode(train[0][0].tolist()) == text.python_docs_text()[:256]


# ---- errors ---------------------------------------------------------------------------


def _data_error(name: str, args: list, kwargs: dict) -> DataError:
    with pytest.raises(DataError) as info:
        make_dataset(name, args, kwargs, location=LOC)
    assert info.value.location == LOC
    return info.value


def test_bad_text_inputs_are_located_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    assert "does not exist" in str(_data_error("TextFile", [str(missing)], {}))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("line one\ncaf\u00e9\n".encode("latin-1"))
    err = _data_error("TextFile", [str(latin)], {})
    assert "is not UTF-8 text" in str(err) and "line 2" in str(err)
    small = text_file(tmp_path, "tiny text")
    err = _data_error("TextFile", [str(small)], {"block_size": 64})
    assert "too few for one window of block_size 64" in str(err)
    err = _data_error("TextFile", [str(small)], {"tokenizer": "words"})
    assert "unknown tokenizer 'words'" in str(err) and '"char"' in (err.hint or "")
    err = _data_error("TextFile", [str(small)], {"tokenizer": str(tmp_path / "none.json")})
    assert "does not exist" in str(err)
    assert "`split` must be" in str(_data_error("PythonDocs", [], {"split": "test"}))
    assert "block_size" in str(_data_error("PythonDocs", [], {"block_size": 0}))
    assert "bad arguments" in str(_data_error("PythonDocs", [], {"blocksize": 8}))


def test_missing_tokenizers_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import fails
    err = _data_error("TextFile", [str(text_file(tmp_path))], {"tokenizer": "t.json"})
    assert "`tokenizers` package" in str(err) and "specc[text]" in (err.hint or "")


# ---- the spec -------------------------------------------------------------------------


def test_check_shows_the_vocab_size_the_data_gives(capsys):
    vocab = text.char_tokens(text.python_docs_text()).vocab_size
    assert main(["check", str(SPECS / "chars.spec")]) == 0
    out = capsys.readouterr().out
    assert f"train: CharConv(vocab_size={vocab} (data.vocab_size), block_size=64 " \
        "(data.block_size))" in out  # fmt: skip
    assert f"[B, {vocab}, 64]" in out


def _spec_with(tmp_path: Path, model_call: str, dataset: str = "PythonDocs(block_size=64)") -> Path:
    spec = (SPECS / "chars.spec").read_text("utf-8")
    spec = spec.replace(
        "CharConv(vocab_size = data.vocab_size, block_size = data.block_size)", model_call
    ).replace('PythonDocs(block_size=64, split="train")', dataset)
    path = tmp_path / "s.spec"
    path.write_text(spec, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("call", "dataset", "message"),
    [
        ("CharConv(vocab_size = data.vocab_sise)", None, "no attribute `vocab_sise`"),
        ("CharConv(vocab_size = data.vocab_size)", "Digits()", "is not a text dataset"),
        ("CharConv(data.vocab_size)", 'TextFile("absent.txt", block_size=64)', "does not exist"),
    ],
)
def test_data_references_are_located_errors(tmp_path, capsys, call, dataset, message):
    spec = _spec_with(tmp_path, call, dataset or "PythonDocs(block_size=64)")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err and "s.spec:" in err and "Traceback" not in err


# ---- a run's tokenizer, and PythonSource ----------------------------------------------


def test_a_char_run_saves_a_tokenizer_json_that_gives_the_same_ids(tmp_path):
    """`tokenizer.json` of a char run is Hugging Face's format: `tokenizers` reads it and
    gives the run's ids; specc reads it as that char vocabulary (same ids, faster)."""
    from tokenizers import Tokenizer

    docs = text.python_docs_text()
    tokens = text.char_tokens(docs)
    saved = text.write_tokenizer(tokens, "char", tmp_path)
    assert saved == tmp_path / "tokenizer.json"
    hf = Tokenizer.from_file(str(saved))
    head = docs[:20_000]
    assert hf.encode(head, add_special_tokens=False).ids == tokens.ids[:20_000].tolist()
    assert hf.decode(tokens.ids[:300].tolist()) == docs[:300]
    source = text.python_source_text()
    fast = text.tokenize(source, str(saved), LOC)
    assert fast.vocab_size == tokens.vocab_size == 103
    assert fast.ids[:20_000].tolist() == hf.encode(source[:20_000], add_special_tokens=False).ids
    assert fast.decode(fast.ids.tolist()) == source
    # another tokenizer.json is read by `tokenizers` itself
    bpe = write_tokenizer(tmp_path / "bpe.json", [SAMPLE])
    assert text.char_vocabulary(bpe) is None


def test_a_character_outside_a_saved_vocabulary_is_a_located_error(tmp_path):
    saved = text.write_tokenizer(text.char_tokens("abc\n"), "char", tmp_path)
    for read in (
        lambda t: text.tokenize(t, str(saved), LOC),
        lambda t: text.file_tokens(t, text.load_tokenizer(saved, LOC), "it", LOC),
    ):
        with pytest.raises(DataError) as err:
            read("abc\ncab\nabd\n")
        message = str(err.value)
        assert "cannot encode the text: the character 'd' (line 3) is not in its vocabulary" \
            in message, message  # fmt: skip
        assert err.value.location == LOC


def test_specc_run_saves_the_tokenizer_beside_the_checkpoints(tmp_path, monkeypatch):
    import specc

    monkeypatch.chdir(tmp_path)
    corpus = text_file(tmp_path, "hello world, hello specc\n" * 200)
    spec = tmp_path / "tiny.spec"
    spec.write_text(TINY_LM.format(dataset=f'TextFile("{corpus.name}", block_size=8)'))
    specc.train(spec, runs_dir=tmp_path / "runs", quiet=True)
    saved = tmp_path / "runs" / "tiny" / "tokenizer.json"
    assert text.char_vocabulary(saved) == sorted(set(corpus.read_text()))
    # a second spec reads another text with it: the same ids for the same characters
    again = text.tokenize("hello", str(saved), LOC)
    assert again.ids.tolist() == text.char_tokens(corpus.read_text()).encode("hello")


TINY_LM = """
model Bigram(vocab: int, context: int) {{
    tok = Embedding(vocab, vocab)
    forward(idx: [context] long) {{
        return tok(idx)
    }}
}}
data words {{
    train      = {dataset}
    batch_size = 4
}}
train tiny {{
    model     = Bigram(vocab = data.vocab_size, context = data.block_size)
    data      = words
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.1)
    epochs    = 1
    max_steps = 2
}}
"""


def test_python_source_is_standard_library_code():
    source = text.python_source_text()
    assert 300_000 < len(source) < 800_000
    assert "class Bdb:" in source and "def mkstemp(" in source
    windows = make_dataset("PythonSource", [], {"block_size": 32, "split": "val"})
    x, y = windows[0]
    assert x.shape == y.shape == (32,) and torch.equal(x[1:], y[:-1])
