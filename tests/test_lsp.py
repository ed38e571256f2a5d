"""`specc lsp` end to end over stdio (pytest-lsp): diagnostics as `specc check` gives
them, on open and on change, rechecks of importing files, hover, symbols, formatting, and a
server that outlives half-typed and hostile input."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from conftest import CASES, SPECS

pytest.importorskip("pygls")
pytest_lsp = pytest.importorskip("pytest_lsp")
from lsprotocol import types  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient  # noqa: E402
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD_LINEAR = CASES / "errors" / "linear_in_features.spec"


PUBLISH = types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS


def _client() -> LanguageClient:
    """pytest-lsp's client, keeping every publication with its version: waiting for the
    next notification could miss one that arrives in the same read as another."""
    from pytest_lsp.client import default_converter

    client = LanguageClient(converter_factory=default_converter)
    register_lsp_features(client, {k: f for k, f in DEFAULT_CLIENT_FEATURES.items()
                                   if k != PUBLISH})  # fmt: skip
    client.published = {}  # uri -> [(version, diagnostics), ...]

    @client.feature(PUBLISH)
    def published(ls: LanguageClient, params: types.PublishDiagnosticsParams) -> None:
        ls.published.setdefault(params.uri, []).append((params.version, params.diagnostics))

    return client


SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "specc", "lsp"],
                            client_factory=_client)  # fmt: skip


@pytest_lsp.fixture(scope="module", config=SERVER)
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities()))  # fmt: skip
    yield
    await lsp_client.shutdown_session()


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


async def _diagnostics(client: LanguageClient, uri: str, version: int, seen: int = 0) -> list:
    """The first diagnostics published for `uri` at `version` after the first `seen`
    publications for it (every open spec is rechecked on any change)."""
    async with asyncio.timeout(120):
        while True:
            found = [d for v, d in client.published.get(uri, [])[seen:] if v == version]
            if found:
                return list(found[0])
            await asyncio.sleep(0.05)


def _open(client: LanguageClient, path: Path, text: str | None = None, version: int = 1) -> str:
    uri = _uri(path)
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=uri, language_id="specc", version=version,
        text=path.read_text("utf-8") if text is None else text)))  # fmt: skip
    return uri


def _change(client: LanguageClient, uri: str, text: str, version: int) -> None:
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))  # fmt: skip


async def test_the_mnist_bug_is_underlined_where_check_puts_it(client: LanguageClient):
    uri = _open(client, BAD_LINEAR)
    (diag,) = await _diagnostics(client, uri, 1)
    assert diag.severity == types.DiagnosticSeverity.Error
    assert "expects 9216 input features but receives 1600" in diag.message
    assert "hint: write `_` to infer it: Linear(_, 128)" in diag.message
    # linear_in_features.spec:4:16, the whole `Linear(9216, 128)`
    assert (diag.range.start.line, diag.range.start.character) == (3, 15)
    assert (diag.range.end.line, diag.range.end.character) == (3, 32)


async def test_a_fix_clears_it_and_a_half_typed_file_is_a_syntax_error(client, tmp_path):
    spec = tmp_path / "net.spec"
    spec.write_text(BAD_LINEAR.read_text())
    uri = _open(client, spec)
    assert len(await _diagnostics(client, uri, 1)) == 1
    fixed = BAD_LINEAR.read_text().replace("Linear(9216, 128)", "Linear(_, 128)")
    _change(client, uri, fixed, 2)
    assert await _diagnostics(client, uri, 2) == []
    _change(client, uri, fixed[: fixed.index("fc2")] + "fc2 = Linear(128,", 3)
    (diag,) = await _diagnostics(client, uri, 3)
    assert diag.message.startswith("unexpected end of file")


async def test_an_importing_spec_is_rechecked_when_its_import_changes(client, tmp_path):
    (tmp_path / "parts.spec").write_text(
        "model Head(n: int = 8) {\n    fc = Linear(n, 2)\n"
        "    forward(x: [n]) {\n        return fc(x)\n    }\n}\n")  # fmt: skip
    main = tmp_path / "main.spec"
    main.write_text('import "parts.spec"\n\nmodel Net {\n    head = Head(8)\n'
                    "    forward(x: [8]) {\n        return head(x)\n    }\n}\n")  # fmt: skip
    main_uri = _open(client, main)
    assert await _diagnostics(client, main_uri, 1) == []
    parts_uri = _open(client, tmp_path / "parts.spec")
    await _diagnostics(client, parts_uri, 1)
    broken = (tmp_path / "parts.spec").read_text().replace("Linear(n, 2)", "Linaer(n, 2)")
    (tmp_path / "parts.spec").write_text(broken)  # as an editor saves it
    _change(client, parts_uri, broken, 2)
    (diag,) = await _diagnostics(client, main_uri, 1, seen=len(client.published[main_uri]))
    assert "unknown layer type `Linaer`" in diag.message and "parts.spec:2:" in diag.message


async def test_hover_shows_a_layer_and_a_model(client: LanguageClient):
    spec = SPECS / "cifar_net.spec"
    uri = _open(client, spec)
    await _diagnostics(client, uri, 1)
    lines = spec.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if "fc1" in line and "Linear" in line)
    column = lines[row].index("Linear")
    hover = await client.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(uri), types.Position(row, column)))  # fmt: skip
    assert "fc1 = Linear(400, 120)" in hover.contents.value
    assert "output `[B, 120]`, 48,120 parameters" in hover.contents.value
    header = next(i for i, line in enumerate(lines) if line.startswith("model Net"))
    hover = await client.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(uri), types.Position(header, 7)))  # fmt: skip
    assert "total" in hover.contents.value and "62,006" in hover.contents.value
    # in the forward: a variable where it is assigned and read, a call, a layer's call
    flat = next(i for i, line in enumerate(lines) if "flatten(x, 1)" in line)
    for row, column, shown in (
        (flat, lines[flat].index("x ="), "`x`: `[B, 400]`"),
        (flat, lines[flat].index("flatten"), "`flatten(...)`: `[B, 400]`"),
        (flat, lines[flat].index("x, 1"), "`x`: `[B, 16, 5, 5]`"),
        (flat + 1, lines[flat + 1].index("fc1("), "fc1 = Linear(400, 120)"),
    ):
        hover = await client.text_document_hover_async(types.HoverParams(
            types.TextDocumentIdentifier(uri), types.Position(row, column)))  # fmt: skip
        assert hover is not None and shown in hover.contents.value, (row, column, shown)


EMOJI_SPEC = """model M {
    act = Identity("\U0001f600"); fc = Linear(4, 2); bad = Lineer(2, 2)
    forward(x: [4]) {
        return fc(act(x))
    }
}
"""


async def test_columns_are_counted_in_utf16_units_as_lsp_clients_count(client, tmp_path):
    """An emoji is one character to specc and two UTF-16 units to the client: the
    diagnostic, a hover and the symbols after it on its line are where the client counts."""
    spec = tmp_path / "emoji.spec"
    spec.write_text(EMOJI_SPEC, "utf-8")
    uri = _open(client, spec)
    (diag,) = await _diagnostics(client, uri, 1)
    line = EMOJI_SPEC.splitlines()[1]
    start = line.index("Lineer") + 1  # the emoji's second unit
    assert "unknown layer type `Lineer`" in diag.message
    assert (diag.range.start.line, diag.range.start.character) == (1, start)
    assert diag.range.end.character == start + len("Lineer")
    _change(client, uri, EMOJI_SPEC.replace("; bad = Lineer(2, 2)", ""), 2)
    assert await _diagnostics(client, uri, 2) == []
    end = line.index("2); bad") + 1 + 1  # the `)` closing Linear(4, 2), the next is `;`
    hover = await client.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(uri), types.Position(1, end)))  # fmt: skip
    assert hover is not None and "fc = Linear(4, 2)" in hover.contents.value
    (model,) = await client.text_document_document_symbol_async(
        types.DocumentSymbolParams(types.TextDocumentIdentifier(uri))
    )
    fc = next(c for c in model.children if c.name == "fc")
    assert fc.range.start.character == line.index("fc") + 1


UNSAVED = """\
model Net {
    fc = Linear(4, 2)
    forward(x: [4]) {
        return fc(x)
    }
}
"""


async def test_lines_end_where_lsp_clients_end_them_and_unsaved_buffers_navigate(client, tmp_path):
    """A form feed does not end a line for the client (it does for str.splitlines); the
    empty line after a final newline is a line of its own; a definition in an unsaved
    buffer points into that buffer, which has no file."""
    spec = tmp_path / "ff.spec"
    text = "# page\x0cbreak\n" + UNSAVED.replace("return fc(x)", "y = x\n        return fc(y)")
    uri = _open(client, spec, text)
    assert await _diagnostics(client, uri, 1) == []
    hover = await client.text_document_hover_async(types.HoverParams(  # `fc` in `return fc(y)`
        types.TextDocumentIdentifier(uri), types.Position(5, 16)))  # fmt: skip
    assert hover is not None and "fc = Linear(4, 2)" in hover.contents.value

    text = "train t {\n    epochs = 3\n"
    _change(client, uri, text, 2)
    await _diagnostics(client, uri, 2)
    listed = await client.text_document_completion_async(types.CompletionParams(
        types.TextDocumentIdentifier(uri), types.Position(2, 0)))  # fmt: skip
    assert listed is not None and "optimizer" in [item.label for item in listed.items]

    untitled = "untitled:Untitled-1"
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=untitled, language_id="specc", version=1, text=UNSAVED)))  # fmt: skip
    assert await _diagnostics(client, untitled, 1) == []
    found = await client.text_document_definition_async(types.DefinitionParams(
        types.TextDocumentIdentifier(untitled), types.Position(3, 16)))  # fmt: skip
    assert found is not None and found.uri == untitled
    assert (found.range.start.line, found.range.start.character) == (1, 4)


async def test_symbols_and_formatting(client: LanguageClient, tmp_path):
    spec = SPECS / "digits.spec"
    uri = _open(client, spec)
    await _diagnostics(client, uri, 1)
    symbols = await client.text_document_document_symbol_async(
        types.DocumentSymbolParams(types.TextDocumentIdentifier(uri)))  # fmt: skip
    names = [s.name for s in symbols]
    assert names[0] == "DigitsNet" and "data digits" in names and "train" in names
    messy = tmp_path / "messy.spec"
    text = spec.read_text().replace("Conv2d(1, 32, 3", "Conv2d(1,32,3").replace("\n\n", "\n\n\n")
    uri = _open(client, messy, text)
    edits = await client.text_document_formatting_async(types.DocumentFormattingParams(
        types.TextDocumentIdentifier(uri), types.FormattingOptions(4, True)))  # fmt: skip
    assert len(edits) == 1 and edits[0].new_text == spec.read_text()


async def test_hostile_text_never_stops_the_server(client: LanguageClient, tmp_path):
    spec = tmp_path / "hostile.spec"
    uri = _open(client, spec, "model M {")
    await _diagnostics(client, uri, 1)
    for version, text in enumerate(
        [
            "(" * 5000,
            "\x00\x01",
            "model M { x = Linear(1e999, 2) }",
            "model 𝔐 {}",
            "train { model = M(); data = d }",
        ],
        start=2,
    ):
        _change(client, uri, text, version)
        diags = await _diagnostics(client, uri, version)
        assert diags and all(d.severity == types.DiagnosticSeverity.Error for d in diags)
        assert not any("internal error" in d.message for d in diags), diags


async def test_each_independent_mistake_is_underlined(client: LanguageClient):
    uri = _open(client, CASES / "errors" / "independent_mistakes.spec")
    diags = await _diagnostics(client, uri, 1)
    # An unknown layer (Encoder), a shape mistake (Wide), a bad setting (the train block).
    assert [d.range.start.line + 1 for d in diags] == [2, 10, 32]
    assert all(d.severity == types.DiagnosticSeverity.Error for d in diags)


def _fuzz_corpus(generated: int, mutations: int) -> list[str]:
    """The fuzz suite's cases (tests/fuzz_grammar.py), drawn with a fixed seed: programs
    from the grammar-aware generator and byte-level mutations of the shipped specs."""
    from fuzz_grammar import mutated, specs
    from hypothesis import HealthCheck, Phase, given, settings
    from test_fuzz import SOURCES

    cases: list[str] = []

    def once(n: int) -> settings:
        return settings(max_examples=n, derandomize=True, database=None, deadline=None,
                        phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck))  # fmt: skip

    @once(generated)
    @given(specs())
    def programs(text):
        cases.append(text)

    @once(mutations)
    @given(mutated(SOURCES))
    def mutants(case):
        cases.append(case[1].decode("utf-8", errors="replace"))

    programs()
    mutants()
    return cases


async def test_the_fuzz_corpus_never_stops_the_server(client: LanguageClient, tmp_path):
    """Every case is checked and published without an internal error, and the server still
    answers a hover afterwards."""
    spec = tmp_path / "fuzzed.spec"
    uri = _open(client, spec, "")
    await _diagnostics(client, uri, 1)
    cases = _fuzz_corpus(30, 30)
    for version, text in enumerate(cases, start=2):
        _change(client, uri, text, version)
        diags = await _diagnostics(client, uri, version)
        assert not any("internal error" in d.message for d in diags), (text, diags)
    fixed = BAD_LINEAR.read_text().replace("Linear(9216, 128)", "Linear(_, 128)")
    _change(client, uri, fixed, len(cases) + 2)
    assert await _diagnostics(client, uri, len(cases) + 2) == []
    row = next(i for i, line in enumerate(fixed.splitlines()) if "Linear(_, 128)" in line)
    hover = await client.text_document_hover_async(types.HoverParams(
        types.TextDocumentIdentifier(uri), types.Position(row, 16)))  # fmt: skip
    assert hover is not None and "fc1 = Linear(1600, 128)" in hover.contents.value


PLUGIN = """from torch import nn


class Widen(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(4, n)

    def forward(self, x):
        return self.fc(x)
"""
USES_PLUGIN = """plugin "parts.py"

model Net {
    widen = Widen(8)
    head  = Linear(8, 2)
    forward(x: [4]) {
        return head(widen(x))
    }
}
"""


async def test_an_edited_plugin_file_is_checked_again(client: LanguageClient, tmp_path):
    """A plugin's class changed on disk (the editor says so with didChangeWatchedFiles):
    the spec that uses it is checked against the new class, not a cached import or a
    cached check."""
    (tmp_path / "parts.py").write_text(PLUGIN)
    spec = tmp_path / "net.spec"
    uri = _open(client, spec, USES_PLUGIN)
    assert await _diagnostics(client, uri, 1) == []
    seen = len(client.published[uri])
    (tmp_path / "parts.py").write_text(PLUGIN.replace("nn.Linear(4, n)", "nn.Linear(4, n + 1)"))
    client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams([
        types.FileEvent(uri=(tmp_path / "parts.py").as_uri(),
                        type=types.FileChangeType.Changed)]))  # fmt: skip
    diags = await _diagnostics(client, uri, 1, seen)
    assert any("expects 8 input features but receives 9" in d.message for d in diags), diags
