"""`specc lsp`: a language server over stdio (pygls) with `specc check`'s diagnostics as the
user types, hover, document symbols, formatting, completion and go to definition.

Checking runs off the event loop, one spec at a time, a short debounce after the last
change; every open spec is checked again when any spec changes, so a file that imports the
changed one is up to date. Nothing a spec contains can stop the server: `analyze` turns
every spec mistake into a diagnostic, and anything else is logged and reported as one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
from pathlib import Path

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from specc.errors import SpecError
from specc.lsp.analysis import Analysis, Finding, analyze
from specc.lsp.navigation import to_range

# Long enough to take a burst of changes (a paste, a key held down, an editor's several
# didChange for one action) as one; a check under way is cancelled by the next change anyway.
DEBOUNCE_S = 0.05
# A line as LSP counts lines: it ends at \n, \r\n or \r only (str.splitlines, and so
# pygls's `Document.lines`, also ends one at a form feed or U+2028, which shifts the rest).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
SEVERITY = {"error": lsp.DiagnosticSeverity.Error, "warning": lsp.DiagnosticSeverity.Warning}
log = logging.getLogger("specc.lsp")


class SpecServer(LanguageServer):
    """The server and what it knows: the last analysis of each open spec."""

    def __init__(self) -> None:
        from specc import __version__

        super().__init__("specc", __version__)
        self.analyses: dict[str, Analysis] = {}
        # the last analysis that loaded the spec: its names while the text does not parse
        self.loaded: dict[str, Analysis] = {}
        self.pending: dict[str, asyncio.Task] = {}
        # one check at a time: torch and the checker are not made for concurrent checks
        self.checker = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def schedule_all(self, first: str | None = None) -> None:
        """Check every open spec again, `first` (the one edited) before the others."""
        for uri in sorted(self.workspace.text_documents, key=lambda uri: uri != first):
            self.schedule(uri)

    def schedule(self, uri: str) -> None:
        """Check `uri` a debounce after its last change. A change cancels the check it
        follows: one not begun never runs, and the result of one running is dropped."""
        if (task := self.pending.get(uri)) is not None:
            task.cancel()
        self.pending[uri] = asyncio.ensure_future(self.check_later(uri))

    # specc counts columns in characters; LSP clients count UTF-16 units unless they
    # agree on another encoding (pygls's codec knows which): a character beyond the
    # Basic Multilingual Plane (an emoji) is one column to specc and two to the client.
    def server_position(self, uri: str, position: lsp.Position) -> lsp.Position:
        """A client's position in `uri` as a line and a character index."""
        lines = lsp_lines(self.workspace.get_text_document(uri).source)
        if position.line >= len(lines):  # the empty line after a final newline: no text
            return position  # (the codec would move it to the end of the line before)
        return self.workspace.position_codec.position_from_client_units(lines, position)

    def client_range(self, lines: list[str], rng: lsp.Range) -> lsp.Range:
        """A range in characters of the text `lines` as the client counts it."""
        return self.workspace.position_codec.range_to_client_units(lines, rng)

    def client_location(self, location: lsp.Location, uri: str, path: Path) -> lsp.Location:
        """A location in any file (the spec, an import, a plugin's Python source), its
        range as the client counts it. One in `path`, the file of the open document `uri`,
        is given `uri`: an unsaved (`untitled:`) buffer has no file to point to."""
        if location.uri == path.resolve().as_uri():
            location = lsp.Location(uri, location.range)
        try:
            text = self.workspace.get_text_document(location.uri).source  # read if not open
        except (OSError, UnicodeDecodeError):  # gone since it was loaded: columns as they are
            return location
        return lsp.Location(location.uri, self.client_range(lsp_lines(text), location.range))

    async def check_later(self, uri: str) -> None:
        await asyncio.sleep(DEBOUNCE_S)
        doc = self.workspace.get_text_document(uri)
        version, text = doc.version, doc.source
        path = Path(to_fs_path(uri) or uri)
        loop = asyncio.get_running_loop()
        memo = (self.loaded.get(uri) or Analysis(path)).memo
        result = await loop.run_in_executor(self.checker, safe_analyze, text, path, memo)
        self.analyses[uri] = result
        if result.program is not None:
            self.loaded[uri] = result
        lines = lsp_lines(text)
        diagnostics = []
        for finding in result.findings:
            diagnostic = to_diagnostic(finding, path)
            diagnostic.range = self.client_range(lines, diagnostic.range)
            diagnostics.append(diagnostic)
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version)
        )


def lsp_lines(text: str) -> list[str]:
    """`text`'s lines as the client numbers them, each with its line break."""
    return _LINE.findall(text)


def safe_analyze(text: str, path: Path, memo: dict | None = None) -> Analysis:
    """`analyze`, and a bug in specc reported as a diagnostic rather than a dead server.
    The garbage collector waits, as in `specc check`: its passes over the check's many new
    objects took 10-20% of the time of a 200-line spec's check."""
    from specc import gc_paused

    try:
        with gc_paused():
            return analyze(text, path, memo)
    except Exception as exc:
        log.exception("checking %s failed", path)
        message = f"internal error while checking: {type(exc).__name__}: {exc}"
        return Analysis(path, [Finding("error", message, None)])


def to_diagnostic(finding: Finding, path: Path) -> lsp.Diagnostic:
    """A finding at its range; one in another file (an import) at the top of this one."""
    where, message = finding.location, finding.message
    if where is not None and Path(where.file).resolve() != path.resolve():
        message = f"{where.file}:{where.line}:{where.column}: {message}"
        where = None
    if finding.hint:
        message += f"\nhint: {finding.hint}"
    return lsp.Diagnostic(range=to_range(where), message=message, source="specc",
                          severity=SEVERITY[finding.severity])  # fmt: skip


server = SpecServer()


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: SpecServer, params: lsp.DidOpenTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: SpecServer, params: lsp.DidChangeTextDocumentParams) -> None:
    ls.schedule_all(first=params.text_document.uri)  # a spec importing this one changes too


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: SpecServer, params: lsp.DidSaveTextDocumentParams) -> None:
    ls.schedule_all()


@server.feature(lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def watched_files_changed(ls: SpecServer, params: lsp.DidChangeWatchedFilesParams) -> None:
    ls.schedule_all()  # a plugin file or an imported spec changed on disk


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: SpecServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.analyses.pop(uri, None)
    ls.loaded.pop(uri, None)
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: SpecServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    """`specc fmt` of the buffer as one edit; nothing for a spec that does not parse."""
    from specc import format_text

    doc = ls.workspace.get_text_document(params.text_document.uri)
    try:
        formatted = format_text(doc.source, doc.path)
    except SpecError:
        return None
    if formatted == doc.source:
        return []
    end = lsp.Position(len(lsp_lines(doc.source)), 0)
    return [lsp.TextEdit(range=lsp.Range(lsp.Position(0, 0), end), new_text=formatted)]


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def symbols(ls: SpecServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
    from specc.lsp.navigation import document_symbols

    uri = params.text_document.uri
    result = ls.analyses.get(uri)
    if result is None:
        return []
    lines = lsp_lines(ls.workspace.get_text_document(uri).source)
    symbols = document_symbols(result)
    todo = list(symbols)
    while todo:
        symbol = todo.pop()
        symbol.range = ls.client_range(lines, symbol.range)
        symbol.selection_range = ls.client_range(lines, symbol.selection_range)
        todo += symbol.children or []
    return symbols


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: SpecServer, params: lsp.HoverParams) -> lsp.Hover | None:
    from specc.lsp.navigation import hover_text

    result = ls.analyses.get(params.text_document.uri)
    if result is None:
        return None
    pos = ls.server_position(params.text_document.uri, params.position)
    text = hover_text(result, pos.line + 1, pos.character + 1)
    if text is None:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION,
                lsp.CompletionOptions(trigger_characters=["(", ",", "."]))  # fmt: skip
def completion(ls: SpecServer, params: lsp.CompletionParams) -> lsp.CompletionList | None:
    """What may be typed at the cursor, read from the text before it (which need not parse)
    and the last analysis that loaded the spec."""
    from specc.lsp.completion import completions
    from specc.lsp.cursor import cursor_at

    uri = params.text_document.uri
    pos = ls.server_position(uri, params.position)
    text = ls.workspace.get_text_document(uri).source
    cursor = cursor_at(text, pos.line, pos.character)
    if cursor is None:
        return None
    loaded = ls.loaded.get(uri)
    items = completions(cursor, loaded.program if loaded is not None else None, text)
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def go_to_definition(ls: SpecServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    from specc.lsp.navigation import definition

    uri = params.text_document.uri
    loaded = ls.loaded.get(uri)
    if loaded is None:
        return None
    pos = ls.server_position(uri, params.position)
    text = ls.workspace.get_text_document(uri).source
    found = definition(loaded, text, pos.line, pos.character)
    return ls.client_location(found, uri, loaded.path) if found is not None else None


def main() -> None:
    server.start_io()
