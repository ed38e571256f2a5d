"""Writing a file whole or not at all: through a temporary file in the target's folder,
renamed over the target, so a reader, a crash or a second process never sees half of it.
Every writer of specc's outputs (generated code, checkpoints, adapters' companions, token
caches, tokenizer.json, pictures, the parser's tables) goes through `write_atomic`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> None:
    """`write(f)` into a temporary file, then rename it to `path` (made with the mode a
    plain `open` would give). `durable`: fsync the file and its folder, so the new file
    survives a power cut. OSError goes to the caller, and the temporary file goes away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; ours are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def file_stamp(path: Path) -> tuple[int, int] | None:
    """A file's size and modification time, what a per-process cache of something read
    from it checks; None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _umask() -> int:
    """The process's umask, read each time (a caller may change it): reading it means
    setting it, so it is put straight back."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
