"""Text for language models: reading, tokenising (with a cache on disk) and cutting the
token stream into next-token windows.

Three tokenizers: ``"char"`` (the sorted set of the text's characters is the vocabulary,
as nanoGPT's shakespeare_char), ``"bytes"`` (the 256 UTF-8 byte values) and a path to a
Hugging Face ``tokenizer.json`` (read with ``tokenizers.Tokenizer.from_file``). The token
ids of a file are cached beside it as ``<file>.<kind>.tokens.npy`` (uint16, or int32 past
65,536 tokens) with a JSON sidecar holding the hashes of the text and of the tokenizer;
either changing makes the cache stale. Every problem is a DataError at the dataset's place
in the spec.

An epoch is every non-overlapping window once: window k is ``ids[k*T : k*T + T]`` and its
targets ``ids[k*T + 1 : k*T + T + 1]``, so ``(len(ids) - 1) // T`` windows; the runner
shuffles them with each epoch's seeded generator like any other dataset's samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specc.errors import DataError, Location
from specc.files import write_atomic

TOKENIZER_KINDS = ("char", "bytes")  # besides a path to a tokenizer.json
SPLITS = ("train", "val")
CACHE_VERSION = 1  # bump when the cache layout changes


@dataclass(frozen=True)
class Tokens:
    """A text's token ids and its vocabulary."""

    ids: np.ndarray  # uint16 or int32, one id per token
    vocab_size: int
    decode: Callable[[list[int]], str]
    # a string's ids (sampling prompts); a character outside a char vocabulary: KeyError
    encode: Callable[[str], list[int]]


# ---- reading --------------------------------------------------------------------------


def read_text_file(file: Path, what: str, location: Location | None) -> tuple[str, bytes]:
    """The text of a UTF-8 file, and its bytes (for the cache's hash)."""
    if not file.is_file():
        state = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise DataError(
            f"{what}: '{file}' {state}",
            location,
            hint=f"check the path; relative paths are resolved against the current "
            f"directory ({Path.cwd()})",
        )
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DataError(f"{what}: cannot read '{file}': {exc.strerror}", location) from None
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{what}: '{file}' is not UTF-8 text (byte {exc.start}, line {line}: "
            f"{raw[exc.start : exc.start + 1]!r})",
            location,
            hint="convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        ) from None


def python_docs_text() -> str:
    """CPython's reference topics (``pydoc_data.topics``, about 465 kB of English), joined
    in sorted key order with blank lines: a real corpus that needs no download."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


# Pure-Python standard-library modules (present from 3.10 to 3.13) whose characters all
# occur in PythonDocs' text: a model trained there with the char tokenizer reads them as is.
PYTHON_SOURCE_MODULES = ("bdb", "calendar", "codecs", "locale", "mailbox", "modulefinder",
                         "plistlib", "pprint", "profile", "socketserver", "tempfile",
                         "warnings", "wave")  # fmt: skip


def python_source_text() -> str:
    """The source code of PYTHON_SOURCE_MODULES from this Python's standard library (about
    450 kB), in that order with blank lines: a second real corpus, of code."""
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join((lib / f"{m}.py").read_text("utf-8") for m in PYTHON_SOURCE_MODULES)


# ---- tokenisers -----------------------------------------------------------------------


def _id_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def char_tokens(text: str) -> Tokens:
    """One id per character; the vocabulary is the sorted set of the text's characters."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    points, ids = np.unique(codes, return_inverse=True)  # sorted code points = sorted(set)
    chars = [chr(p) for p in points]
    ids = ids.astype(_id_dtype(len(chars)))
    return Tokens(ids, len(chars), _char_decoder(chars), _char_encoder(chars))


def _char_decoder(chars: list[str]) -> Callable[[list[int]], str]:
    return lambda ids: "".join(chars[i] for i in ids)


def _char_encoder(chars: list[str]) -> Callable[[str], list[int]]:
    index = {c: i for i, c in enumerate(chars)}
    return lambda s: [index[c] for c in s]


def _byte_encode(s: str) -> list[int]:
    return list(s.encode("utf-8"))


def byte_tokens(text: str) -> Tokens:
    """One id per UTF-8 byte; the vocabulary is the 256 byte values."""
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    return Tokens(ids, 256, _byte_decode, _byte_encode)


def _byte_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def load_tokenizer(path: Path, location: Location | None):
    """A Hugging Face ``tokenizers.Tokenizer`` from a tokenizer.json file."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(
            "a tokenizer.json needs the `tokenizers` package, which is not installed",
            location,
            hint="pip install 'specc[text]' (or pip install tokenizers)",
        ) from None
    if not path.is_file():
        hint = (f'use tokenizer="char", "bytes" or the path of a tokenizer.json; relative '
                f"paths are resolved against the current directory ({Path.cwd()})")  # fmt: skip
        if path.name == TOKENIZER_FILE and path.parent.parent.name == "runs":
            run = path.parent.name
            hint = (f"`specc run` writes {run}'s {TOKENIZER_FILE} when it trains on text: run "
                    f"the spec of `{run}` first (from {Path.cwd()})")  # fmt: skip
        raise DataError(f"tokenizer '{path}' does not exist", location, hint=hint)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception for a bad file
        raise DataError(
            f"cannot read tokenizer '{path}': {exc}",
            location,
            hint="give a tokenizer.json saved by Hugging Face tokenizers (Tokenizer.save)",
        ) from None


def file_tokens(text: str, tokenizer, what: str = "the tokenizer",
                location: Location | None = None) -> Tokens:  # fmt: skip
    """The ids a Hugging Face tokenizer gives the whole text, without special tokens."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    try:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
    except Exception as exc:  # tokenizers raises a plain Exception (an unknown character)
        at = _first_unknown(text, tokenizer)
        if at is not None:
            raise not_in_vocabulary(text, at, what, location) from None
        raise DataError(f"{what} cannot encode the text: {exc}", location,
                        hint=UNKNOWN_HINT) from None  # fmt: skip
    return Tokens(
        np.asarray(ids, dtype=_id_dtype(vocab_size)), vocab_size, tokenizer.decode,
        _tokenizer_encoder(tokenizer),
    )  # fmt: skip


def _tokenizer_encoder(tokenizer) -> Callable[[str], list[int]]:
    """Encode a string; a character the vocabulary lacks is a KeyError naming it."""

    def encode(s: str) -> list[int]:
        try:
            return tokenizer.encode(s, add_special_tokens=False).ids
        except Exception as exc:  # tokenizers raises a plain Exception
            at = _first_unknown(s, tokenizer)
            raise KeyError(str(exc) if at is None else s[at]) from None

    return encode


UNKNOWN_HINT = ("a character-level tokenizer.json (as a text run saves) knows only the "
                "characters of the text it was made from")  # fmt: skip


def _first_unknown(text: str, tokenizer) -> int | None:
    """Where the first character of `text` missing from a vocabulary of single characters
    is; None for another kind of vocabulary, or when every character is in it."""
    vocab = tokenizer.get_vocab()
    if not all(len(token) == 1 for token in vocab):
        return None
    return next((i for i, c in enumerate(text) if c not in vocab), None)


def not_in_vocabulary(text: str, at: int, what: str, location: Location | None) -> DataError:
    """The located error for `text[at]`, a character the tokenizer's vocabulary lacks."""
    line = text.count("\n", 0, at) + 1
    return DataError(f"{what} cannot encode the text: the character {text[at]!r} (line {line}) "
                     "is not in its vocabulary", location, hint=UNKNOWN_HINT)  # fmt: skip


# ---- a run's tokenizer ----------------------------------------------------------------

TOKENIZER_FILE = "tokenizer.json"


def write_tokenizer(tokens: Tokens | None, tokenizer: str, folder: Path) -> Path | None:
    """The tokenizer as `folder/tokenizer.json`, Hugging Face's format, so another spec
    reads its text with the same ids (a fine-tune: `tokenizer="runs/gpt/tokenizer.json"`).
    A char vocabulary becomes a WordLevel model over single characters; a tokenizer.json is
    copied. None for "bytes" (nothing to save) and without the `tokenizers` package."""
    target = folder / TOKENIZER_FILE
    if tokenizer == "bytes":
        return None
    if tokenizer != "char":
        write_atomic(target, lambda f: f.write(resolve_path(tokenizer).read_bytes()))
        return target
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        import sys

        note = (
            f"note: {target} not written: it needs the `tokenizers` package "
            "(pip install 'specc[text]'); a fine-tune reading this run's ids needs it"
        )
        print(note, file=sys.stderr)
        return None
    assert tokens is not None  # the char vocabulary is the text's
    chars = tokens.decode(list(range(tokens.vocab_size)))
    vocab = {c: i for i, c in enumerate(chars)}
    made = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))  # no [UNK]: unknown fails
    made.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    made.decoder = decoders.Fuse()  # characters join without spaces
    write_atomic(target, lambda f: f.write(made.to_str().encode("utf-8")))
    return target


def check_tokenizer(tokenizer: object, what: str, location: Location | None) -> None:
    """`tokenizer` is "char", "bytes" or a path ending in .json."""
    if isinstance(tokenizer, str) and (tokenizer in TOKENIZER_KINDS or tokenizer.endswith(".json")):
        return
    raise DataError(
        f"{what}: unknown tokenizer {tokenizer!r}",
        location,
        hint='use "char" (one token per character), "bytes" (one per UTF-8 byte) or the '
        "path of a Hugging Face tokenizer.json",
    )


def tokenize(text: str, tokenizer: str, location: Location | None) -> Tokens:
    """`text` tokenised as `tokenizer` says (no cache)."""
    if tokenizer == "char":
        return char_tokens(text)
    if tokenizer == "bytes":
        return byte_tokens(text)
    what = f"the tokenizer '{tokenizer}'"
    path = resolve_path(tokenizer)
    chars = char_vocabulary(path)
    if chars is not None:
        return char_tokens_in(text, chars, what, location)
    return file_tokens(text, load_tokenizer(path, location), what, location)


# The pre-tokenizer of a char-level tokenizer.json (write_tokenizer's): one piece per character.
CHAR_SPLIT = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated",
              "invert": False}  # fmt: skip


def char_vocabulary(path: Path) -> list[str] | None:
    """The characters, in id order, of a tokenizer.json such as `write_tokenizer` makes (a
    WordLevel model over single characters after a per-character split, nothing else);
    None for any other file. Such a tokenizer gives each character its id, so it is read
    as the char tokenizer with that vocabulary: the ids `tokenizers` would give, without
    one pre-token object per character (about 50x faster on PythonDocs)."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None  # `load_tokenizer` says what is wrong with it
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordLevel":
        return None
    if data.get("pre_tokenizer") != CHAR_SPLIT or any(
        data.get(k) for k in ("normalizer", "post_processor", "added_tokens")
    ):
        return None
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(len(c) == 1 for c in vocab):
        return None
    chars = sorted(vocab, key=vocab.__getitem__)
    return chars if [vocab[c] for c in chars] == list(range(len(chars))) else None


def char_tokens_in(text: str, chars: list[str], what: str, location: Location | None) -> Tokens:
    """One id per character, from a given vocabulary (`chars[i]` has id i); a character
    outside it is a DataError naming it and its line."""
    points = np.array([ord(c) for c in chars], dtype=np.uint32)
    order = np.argsort(points)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    at = np.minimum(np.searchsorted(points[order], codes), len(chars) - 1)
    unknown = points[order][at] != codes
    if unknown.any():
        raise not_in_vocabulary(text, int(np.argmax(unknown)), what, location)
    ids = order[at].astype(_id_dtype(len(chars)))
    return Tokens(ids, len(chars), _char_decoder(chars), _char_encoder(chars))


def resolve_path(path: str | os.PathLike) -> Path:
    """Relative paths mean the current directory, as the other datasets' paths do."""
    return Path(os.path.expanduser(os.fspath(path))).absolute()


# ---- the cache ------------------------------------------------------------------------


def cache_paths(file: Path, tokenizer: str) -> tuple[Path, Path]:
    """``<file>.<kind>.tokens.npy`` and its JSON sidecar; kind is char, bytes, or the
    tokenizer file's name without .json."""
    kind = tokenizer if tokenizer in TOKENIZER_KINDS else Path(tokenizer).stem
    stem = f"{file.name}.{kind}.tokens"
    return file.with_name(stem + ".npy"), file.with_name(stem + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(raw: bytes, tokenizer: str, location: Location | None) -> dict:
    """What the cached ids depend on: the text and the tokenizer (its file's bytes)."""
    tok = tokenizer
    if tokenizer not in TOKENIZER_KINDS:
        path = resolve_path(tokenizer)
        load_tokenizer(path, location)  # a clear error for a missing or bad file
        tok = _sha256(path.read_bytes())
    return {"version": CACHE_VERSION, "text_sha256": _sha256(raw), "tokenizer": tok}


def _read_cache(npy: Path, sidecar: Path, fingerprint: dict) -> tuple[np.ndarray, dict] | None:
    """The cached ids and sidecar when they match `fingerprint`, else None (stale, absent
    or unreadable: the caller tokenises again)."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if {k: meta.get(k) for k in fingerprint} != fingerprint:
            return None
        ids = np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if ids.ndim != 1 or len(ids) != meta.get("count") or ids.dtype.name != meta.get("dtype"):
        return None
    return ids, meta


def _write_cache(npy: Path, sidecar: Path, tokens: Tokens, fingerprint: dict,
                 vocab: list[str] | None) -> None:  # fmt: skip
    meta = {**fingerprint, "count": len(tokens.ids), "dtype": tokens.ids.dtype.name,
            "vocab_size": tokens.vocab_size, "chars": vocab}  # fmt: skip
    try:
        write_atomic(npy, lambda f: np.save(f, tokens.ids, allow_pickle=False))
        # The sidecar last: it vouches for a complete array.
        write_atomic(sidecar, lambda f: f.write(json.dumps(meta).encode("utf-8")))
    except OSError:
        pass  # a read-only data folder: train without the cache


def file_token_ids(path: str | os.PathLike, tokenizer: str, what: str,
                   location: Location | None) -> tuple[Tokens, bool]:  # fmt: skip
    """The tokens of a UTF-8 text file, from the cache when it is fresh; True when it was."""
    file = resolve_path(path)
    text, raw = read_text_file(file, what, location)
    fingerprint = _fingerprint(raw, tokenizer, location)
    npy, sidecar = cache_paths(file, tokenizer)
    cached = _read_cache(npy, sidecar, fingerprint)
    if cached is not None:
        ids, meta = cached
        decode, encode = _cached_codec(meta, tokenizer)
        return Tokens(ids, int(meta["vocab_size"]), decode, encode), True
    tokens = tokenize(text, tokenizer, location)
    # the char vocabulary, in id order: what char_tokens found (not the text scanned again)
    vocab = list(tokens.decode(list(range(tokens.vocab_size)))) if tokenizer == "char" else None
    _write_cache(npy, sidecar, tokens, fingerprint, vocab)
    return tokens, False


def _cached_codec(meta: dict, tokenizer: str) -> tuple[Callable, Callable]:
    """Decode and encode for cached ids: the char vocabulary is in the sidecar."""
    if tokenizer == "char":
        return _char_decoder(meta["chars"]), _char_encoder(meta["chars"])
    if tokenizer == "bytes":
        return _byte_decode, _byte_encode
    loaded = load_tokenizer(resolve_path(tokenizer), None)
    return loaded.decode, _tokenizer_encoder(loaded)


# ---- windows --------------------------------------------------------------------------


def split_ids(ids: np.ndarray, split: str, val_fraction: float) -> np.ndarray:
    """The first ``1 - val_fraction`` of the tokens for "train", the rest for "val"
    (nanoGPT's split: the validation text follows the training text)."""
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train] if split == "train" else ids[n_train:]


def windows(ids: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping ``[block_size]`` windows of int64 ids and their next-token targets,
    as two views of one tensor (8 bytes per token, whatever the number of windows)."""
    count = (len(ids) - 1) // block_size
    flat = torch.from_numpy(ids.astype(np.int64))
    inputs = flat[: count * block_size].view(count, block_size)
    targets = flat[1 : count * block_size + 1].view(count, block_size)
    return inputs, targets


def check_window_args(block_size: object, split: object, val_fraction: object, what: str,
                      location: Location | None) -> None:  # fmt: skip
    """block_size a positive int, split "train" or "val", val_fraction in [0, 1)."""
    if type(block_size) is not int or block_size < 1:
        raise DataError(
            f"{what}: `block_size` must be a positive integer, got {block_size!r}", location
        )
    if split not in SPLITS:
        raise DataError(
            f'{what}: `split` must be "train" or "val", got {split!r}',
            location,
            hint=f"the last {val_fraction!r} of the tokens is the val split, the rest train",
        )
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) \
            or not 0 <= val_fraction < 1:  # fmt: skip
        raise DataError(
            f"{what}: `val_fraction` must be a number in [0, 1), got {val_fraction!r}", location
        )
    if split == "val" and val_fraction == 0:
        raise DataError(f'{what}: split="val" with val_fraction=0 holds no tokens', location)


def check_enough_tokens(count: int, block_size: int, what: str, location: Location | None) -> None:
    """A window needs block_size + 1 tokens (its targets are shifted by one)."""
    if count < block_size + 1:
        raise DataError(
            f"{what}: the split has {count} tokens, too few for one window of block_size "
            f"{block_size} (a window needs block_size + 1 tokens)",
            location,
            hint="use a smaller block_size, more text, or a larger val_fraction for the val split",
        )
