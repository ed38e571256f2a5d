"""Section: `specc lsp`, how soon a diagnostic follows an edit (issue 18: < 300 ms for a
200-line spec once the server is warm).

A real server over stdio (pygls' client): a spec of shipped models (GPT-2's blocks, ResNet-50,
MobileNetV2 and the digits CNN with its data and train blocks) is opened, and once its first
diagnostics arrive, edits alternately introduce and remove a shape error. Each edit is timed
from sending `didChange` to receiving the diagnostics published for its version, so the
server's debounce counts. The same check timed in this process says how much of it is
`analyze`, with the last check's memo as the server keeps it and from scratch.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

from benchmarks.report import INFO, Context, Row, verdict
from benchmarks.timing import Spread

SECTION = "lsp"
PARTS = ("specs/gpt2.spec", "specs/zoo/resnet50.spec", "specs/zoo/mobilenet_v2.spec",
         "specs/digits.spec")  # fmt: skip
GOOD, BAD = "fc2   = Linear(128, num_classes)", "fc2   = Linear(129, num_classes)"
PAUSE_S = 0.5  # between edits: each one is checked on its own, as when a user pauses
TARGET_S = 0.3


def spec_text(repo: Path) -> str:
    return "\n".join((repo / part).read_text("utf-8") for part in PARTS)


def _edit(text: str, version: int) -> str:
    """Even versions carry the shape error, odd ones are the spec as shipped."""
    return text.replace(GOOD, BAD) if version % 2 == 0 else text


async def _latencies(path: Path, text: str, edits: int) -> tuple[float, list[float]]:
    """Seconds to the first diagnostics, and from each edit to its diagnostics."""
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("specc-bench", "0")
    arrived: dict[int, tuple[float, int]] = {}  # version -> (time, diagnostics)
    news = asyncio.Event()  # waited on, not polled: a polling client would slow the server

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def published(ls: LanguageClient, params: types.PublishDiagnosticsParams) -> None:
        arrived.setdefault(params.version, (time.perf_counter(), len(params.diagnostics)))
        news.set()

    async def diagnostics(version: int) -> tuple[float, int]:
        async with asyncio.timeout(120):
            while version not in arrived:
                news.clear()
                await news.wait()
        return arrived[version]

    await client.start_io(sys.executable, "-m", "specc", "lsp")
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities()))
    client.initialized(types.InitializedParams())
    uri, start = path.resolve().as_uri(), time.perf_counter()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="specc", version=1, text=text)))  # fmt: skip
    first = (await diagnostics(1))[0] - start
    latencies = []
    for version in range(2, edits + 2):
        await asyncio.sleep(PAUSE_S)
        sent = time.perf_counter()
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(
                text=_edit(text, version))]))  # fmt: skip
        got, count = await diagnostics(version)
        if (count > 0) != (version % 2 == 0):
            raise RuntimeError(f"version {version}: {count} diagnostics, expected the shape error")
        latencies.append(got - sent)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return first, latencies


def _analyze_s(path: Path, text: str, rounds: int) -> tuple[Spread, Spread]:
    """The server's check of the spec with the shape error, in this process, warm: from
    scratch, and after the edit that makes it, with the previous check's memo as the server
    has it (only the edited model is checked again)."""
    from specc.lsp.server import safe_analyze

    broken = _edit(text, 2)
    memo = safe_analyze(text, path).memo
    scratch, edited = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        safe_analyze(broken, path)
        scratch.append(time.perf_counter() - start)
        start = time.perf_counter()
        memo = safe_analyze(broken, path, memo).memo
        edited.append(time.perf_counter() - start)
        memo = safe_analyze(text, path, memo).memo  # back, for the next round's edit
    return Spread(tuple(scratch)), Spread(tuple(edited))


def run(ctx: Context) -> list[Row]:
    from specc.lsp.server import DEBOUNCE_S

    text = spec_text(ctx.repo)
    path = Path(ctx.tmp) / "lsp_latency.spec"
    path.write_text(text, "utf-8")
    lines = len(text.splitlines())
    edits = 4 if ctx.quick else 20
    first, latencies = asyncio.run(_latencies(path, text, edits))
    spread = Spread(tuple(latencies))
    scratch, edited = _analyze_s(path, text, 3 if ctx.quick else 10)
    return [
        Row(
            SECTION,
            f"`specc lsp`: diagnostics after an edit that adds or removes a shape "
            f"error, {lines}-line spec, warm server ({edits} edits)",
            f"< {TARGET_S * 1000:.0f} ms",
            spread.fmt(0, 1000, " ms"),
            result=verdict(statistics.median(latencies), "<", TARGET_S),
        ),
        Row(
            SECTION,
            "`specc lsp`: where an edit's time goes",
            "reported",
            f"debounce {DEBOUNCE_S * 1000:.0f} ms, `analyze` after the edit "
            f"{edited.fmt(0, 1000, ' ms')} (from scratch {scratch.fmt(0, 1000, ' ms')}; in "
            f"process); first diagnostics after opening {first:.2f} s (cold server)",
            result=INFO,
        ),
    ]
