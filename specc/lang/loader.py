"""Reads a spec (and the specs it imports) into one validated ``Program``.

This is the front half of the pipeline: text -> parse -> transform -> passes. It never
imports torch unless a pass needs the registry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from specc import ir
from specc.errors import (
    Location,
    SpecError,
    SpecNameError,
    SpecSyntaxError,
    UsageError,
    together,
)
from specc.lang.parse import parse
from specc.lang.transform import transform
from specc.values import loc


def _is_path(source: Any) -> bool:
    if isinstance(source, Path):
        return True
    return isinstance(source, str) and "\n" not in source and source.strip().endswith(".spec")


def _read(path: Path, display: str) -> str:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise UsageError(f"spec file not found: {display}") from None
    except IsADirectoryError:
        raise UsageError(f"{display} is a directory, not a spec file") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path.read_bytes(), display, exc) from None
    except OSError as exc:
        raise UsageError(f"cannot read {display}: {exc.strerror}") from None


def _not_utf8(raw: bytes, display: str, exc: UnicodeDecodeError) -> SpecSyntaxError:
    """Locate the first byte that is not UTF-8 at its line and column, like any other
    syntax error; the echoed line shows it as U+FFFD."""
    before = raw[: exc.start]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return SpecSyntaxError(
        f"the file is not UTF-8 text ({exc.reason}: byte 0x{raw[exc.start]:02x})",
        Location(display, line, column, line, column + 1),
        hint="save the spec as UTF-8",
        source=text,
    )


def load(source: Any, *, plugins: bool = True, text: str | None = None) -> ir.Program:
    """Load a spec path or text into a Program, following `import` statements. `text`
    with a path is that file's text as an editor holds it (unsaved)."""
    program, mistakes = load_with_mistakes(source, plugins=plugins, text=text)
    if mistakes:
        raise together(err for errs in mistakes.values() for err in errs)
    return program


def load_with_mistakes(
    source: Any, *, plugins: bool = True, text: str | None = None
) -> tuple[ir.Program, dict[str, list[SpecError]]]:
    """`load`, with the mistakes the name passes find in a model kept apart, by model name,
    rather than raised: the program holds the other models ready to check
    (specc.training.check). A mistake that leaves nothing to check (syntax, imports) still
    raises."""
    if isinstance(source, ir.Program):
        return source, {}
    if _is_path(source):
        path = Path(source)
        display = str(source)
        text = _read(path, display) if text is None else text
        base = path.resolve().parent
    elif isinstance(source, str):
        text, display, base, path = source, "<spec>", Path.cwd(), None
    else:
        raise UsageError(f"expected a spec path or spec text, got {type(source).__name__}")

    reader = _Reader()
    try:
        root = str(path.resolve()) if path is not None else "<spec>"
        reader.visit(text, display, base, path, [root])
        parts = reader.parts
        # The spec's own train blocks first: an unnamed `train` means the first one, and an
        # import's (read before the spec's own parts) must not take its place.
        parts["trains"].sort(key=lambda t: t.span.file != display)
        if not plugins and parts["plugins"]:
            p = parts["plugins"][0]
            raise SpecError(
                f"plugin {p.target!r} refused: plugins are disabled (--no-plugins)",
                loc(p.span),
                hint="plugins run Python code; drop --no-plugins to allow it",
            )
        from specc.lang.passes import passes_by_model

        program, mistakes = passes_by_model(ir.Program(sources=reader.sources, **parts))
    except SpecError as err:
        raise err.with_source(reader.files) from None
    for errs in mistakes.values():
        for err in errs:
            err.with_source(reader.files)
    return program, mistakes


class _Reader:
    """The files of one `load`, read depth first through their imports, and their parts.
    An object rather than a nested function that calls itself: such a function refers to
    itself through its closure, so each load left its parts to the garbage collector."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        kinds = ("models", "data", "trains", "imports", "plugins")
        self.parts: dict[str, list] = {kind: [] for kind in kinds}
        self.sources: list[ir.SourceFile] = []
        self.origin: dict[str, str] = {}  # model name -> file that defined it

    def visit(
        self, text: str, display: str, base: Path, real: Path | None, stack: list[str]
    ) -> None:
        self.files[display] = text
        tree = parse(text, display)
        got = transform(tree, display, text)
        self.sources.append(
            ir.SourceFile(path=display, text=text, sha256=hashlib.sha256(text.encode()).hexdigest())
        )
        for imp in got["imports"]:
            target = (base / imp.path).resolve()
            shown = _display_path(target)
            key = str(target)
            if key in stack:
                chain = " -> ".join([*map(_display_path, map(Path, stack)), shown])
                raise SpecNameError(
                    f"import cycle: {chain}",
                    loc(imp.span),
                    hint="remove one of the imports in the cycle",
                )
            if any(s.path == shown for s in self.sources):
                continue  # imported twice (diamond): once is enough
            if not target.is_file():
                raise SpecNameError(
                    f"imported spec not found: {imp.path} (looked at {shown})", loc(imp.span)
                )
            self.visit(_read(target, shown), shown, target.parent, target, [*stack, key])
        for m in got["models"]:
            if m.name in self.origin:
                first = self.origin[m.name]
                raise SpecNameError(
                    f"model `{m.name}` is defined in both {first} and {m.file}",
                    loc(m.span),
                    hint="rename one of them",
                )
            self.origin[m.name] = m.file
        for key, items in got.items():
            self.parts[key].extend(items)


def _display_path(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def source_texts(program: ir.Program) -> dict[str, str]:
    """Each source file's text by path, for rendering errors with their source line."""
    return {s.path: s.text for s in program.sources}
