"""The one error family users see: located, rendered like a compiler, never a traceback.

Every stage raises a ``SpecError`` (or a subclass naming the kind of mistake). The CLI
prints ``err.render()`` and exits with code 2. Library errors (Lark, Pydantic, torch) are
translated at the stage boundary that calls them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

EXIT_USER_ERROR = 2
# The most errors one run reports: enough to fix a file in one go, few enough to read.
MAX_ERRORS = 20


@dataclass(frozen=True)
class Location:
    """Where a mistake is: a file and a 1-based line/column range (end column exclusive)."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


@dataclass
class Diagnostic:
    message: str
    location: Location | None = None
    hint: str | None = None
    notes: list[tuple[str, Location | None]] = field(default_factory=list)


class SpecError(Exception):
    """A user mistake with a location. Subclasses name the kind (syntax, name, shape...)."""

    kind = "error"

    def __init__(
        self,
        message: str,
        location: Location | None = None,
        *,
        hint: str | None = None,
        notes: Iterable[tuple[str, Location | None]] = (),
        source: str | None = None,
        more: Iterable[SpecError] = (),
    ) -> None:
        super().__init__(message)
        self.diagnostic = Diagnostic(message, location, hint, list(notes))
        # The text the location points into; filled in by whoever knows it (the loader).
        self.source = source
        # Further errors collected in the same run (rendered after this one).
        self.more: list[SpecError] = list(more)

    @property
    def message(self) -> str:
        return self.diagnostic.message

    @property
    def location(self) -> Location | None:
        return self.diagnostic.location

    @property
    def hint(self) -> str | None:
        return self.diagnostic.hint

    def with_source(self, files: dict[str, str]) -> SpecError:
        """Attach source text (by file name) to this error and the ones collected with it."""
        for err in [self, *self.more]:
            if err.source is None and err.location is not None:
                err.source = files.get(err.location.file)
        return self

    def render(self) -> str:
        return "\n\n".join(_render_one(err) for err in [self, *self.more])

    def __str__(self) -> str:
        return self.render()


class SpecSyntaxError(SpecError):
    kind = "syntax"


class SpecNameError(SpecError):
    kind = "name"


class SpecTypeError(SpecError):
    kind = "type"


class SpecShapeError(SpecError):
    kind = "shape"


class DataError(SpecError):
    kind = "data"


class CheckpointError(SpecError):
    kind = "checkpoint"


class ExportError(SpecError):
    """A model torch.export or the ONNX converter cannot take, or an export that does not
    give back the model's outputs."""

    kind = "export"


class UsageError(SpecError):
    """A bad command-line flag or API argument (no source location)."""

    kind = "usage"


def each_error(err: SpecError) -> list[SpecError]:
    """`err` and the errors collected with it, in order."""
    return [err, *err.more]


def together(errors: Iterable[SpecError]) -> SpecError:
    """Errors found in one run as one to raise: the first, carrying the others (up to
    MAX_ERRORS in all) as `.more`. Errors that carry their own `.more` are flattened."""
    # dict.fromkeys: each once, though one may be in the list and in another's `.more`.
    flat = list(dict.fromkeys(e for err in errors for e in each_error(err)))[:MAX_ERRORS]
    if not flat:
        raise ValueError("together() needs at least one error")
    for e in flat:
        e.more = []
    flat[0].more = flat[1:]
    return flat[0]


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """'did you mean X?' for the closest candidate, or None when nothing is close. A
    candidate that differs only in case comes first (`Adamw`: `AdamW`, not `Adam`), then
    the closest spelling, then the closest spelling ignoring case."""
    pool = list(dict.fromkeys(candidates))
    same = [c for c in pool if c.lower() == name.lower()]
    match = difflib.get_close_matches(name, same, n=1, cutoff=0.0)
    if not match:
        match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in pool}
        match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return f"did you mean `{match[0]}`?" if match else None


def _source_line(source: str | None, line: int) -> str | None:
    if source is None:
        return None
    # Split at \n only: Lark counts lines that way, and str.splitlines() would also break at
    # form feeds and other separators, so the echoed line would not be the one named.
    lines = source.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else None


def _caret(loc: Location, text: str) -> str:
    start = max(loc.column - 1, 0)
    if loc.end_line == loc.line and loc.end_column and loc.end_column > loc.column:
        width = loc.end_column - loc.column
    elif loc.end_line and loc.end_line > loc.line:
        width = max(len(text.rstrip()) - start, 1)
    else:
        width = 1
    # Tabs in the prefix keep their width so the caret lines up under the text.
    prefix = "".join(ch if ch == "\t" else " " for ch in text[:start])
    return prefix + "^" * width


def _render_one(err: SpecError) -> str:
    return render_diagnostic(err.diagnostic, err.source)


def render_diagnostic(d: Diagnostic, source: str | None, severity: str = "error") -> str:
    """`path:line:col: <severity>: message`, the source line with a caret, notes, a hint:
    errors and check-time warnings look alike."""
    loc = d.location
    head = f"{loc.file}:{loc.line}:{loc.column}: " if loc else ""
    out = [f"{head}{severity}: {d.message}"]
    text = _source_line(source, loc.line) if loc else None
    if loc and text is not None:
        gutter = str(loc.line)
        out.append(f" {gutter} | {text}")
        out.append(f" {' ' * len(gutter)} | {_caret(loc, text)}")
    for note, where in d.notes:
        at = f" ({where.file}:{where.line}:{where.column})" if where else ""
        out.append(f"  = note: {note}{at}")
    if d.hint:
        out.append(f"  = hint: {d.hint}")
    return "\n".join(out)
