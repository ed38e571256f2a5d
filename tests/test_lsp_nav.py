"""`specc lsp` completion and go to definition, end to end over stdio (pytest-lsp): names
offered on half-typed text that does not parse, taken from the registry, constructor
signatures, the training config and the last good analysis (imports included); definitions
of models, data blocks, layers and plugin classes, across files; and the short debounce
still taking a burst of edits as one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from conftest import SPECS

pytest.importorskip("pygls")
pytest_lsp = pytest.importorskip("pytest_lsp")
from lsprotocol import types  # noqa: E402
from pytest_lsp import LanguageClient  # noqa: E402
from test_lsp import SERVER, _change, _diagnostics, _open  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARTS = """\
model Head(n: int = 8, classes: int = 2) {
    fc = Linear(n, classes)
    forward(x: [n]) {
        return fc(x)
    }
}
"""
MAIN = """\
import "parts.spec"

model Net {
    body = Linear(4, 8)
    head = Head(8)
    forward(x: [4]) {
        return head(relu(body(x)))
    }
}

data digits {
    train      = Digits(train=True)
    batch_size = 32
}

train {
    model     = Net()
    data      = digits
    loss      = CrossEntropyLoss()
    optimizer = AdamW(lr=0.001)
}
"""


@pytest_lsp.fixture(scope="module", config=SERVER)
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities()))  # fmt: skip
    yield
    await lsp_client.shutdown_session()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """main.spec importing parts.spec, new for each test (a document of its own)."""
    (tmp_path / "parts.spec").write_text(PARTS)
    (tmp_path / "main.spec").write_text(MAIN)
    return tmp_path / "main.spec"


async def _typed(client: LanguageClient, spec: Path, text: str, version: int) -> str:
    """`spec` opened as it is (checked: the server knows its names), then edited to `text`."""
    uri = _open(client, spec, version=1)
    await _diagnostics(client, uri, 1)
    _change(client, uri, text, version)
    await _diagnostics(client, uri, version)
    return uri


async def _labels(client: LanguageClient, uri: str, text: str) -> list[str]:
    """The labels offered at the end of `text`, the buffer of `uri`."""
    lines = text.split("\n")
    result = await client.text_document_completion_async(types.CompletionParams(
        types.TextDocumentIdentifier(uri),
        types.Position(len(lines) - 1, len(lines[-1]))))  # fmt: skip
    return [] if result is None else [item.label for item in result.items]


def _half_typed(marker: str, typed: str) -> str:
    """MAIN cut just after `marker`, then `typed`: the file no longer parses."""
    return MAIN[: MAIN.index(marker) + len(marker)] + typed


async def test_layer_constructors_and_keywords_on_text_that_does_not_parse(client, project):
    from specc.registry import nn_classes

    text = _half_typed("body = Linear(4, 8)\n", "    conv = ")
    uri = await _typed(client, project, text, 2)
    (syntax,) = await _diagnostics(client, uri, 2)
    assert syntax.message.startswith("unexpected end of file")
    labels = await _labels(client, uri, text)
    assert set(nn_classes()) <= set(labels)
    assert {"Net", "Head", "Sequential", "repeat", "Parameter"} <= set(labels)  # Head: imported
    assert "relu" not in labels  # a function is not a layer

    text += "Conv2d(3, 8, kernel_size=3, "
    _change(client, uri, text, 3)
    labels = await _labels(client, uri, text)
    assert {"stride=", "padding=", "bias="} <= set(labels)
    assert "kernel_size=" not in labels  # written already
    assert not {"in_channels=", "out_channels="} & set(labels)  # passed by position
    assert labels.index("stride=") < labels.index("Conv2d")  # keywords first

    text = _half_typed("body = Linear(4, 8)\n", "    head2 = Head(")
    _change(client, uri, text, 4)
    assert {"n=", "classes="} <= set(await _labels(client, uri, text))
    text = _half_typed("body = Linear(4, 8)\n", "    head2 = Head(Linear(2, 3), ")
    _change(client, uri, text, 5)
    labels = await _labels(client, uri, text)
    assert "classes=" in labels and "n=" not in labels  # a nested call's arguments are its own


async def test_forward_offers_the_registry_functions_and_the_layers(client, project):
    from specc.registry import functions

    text = _half_typed("forward(x: [4]) {\n", "        y = ")
    uri = await _typed(client, project, text, 2)
    labels = await _labels(client, uri, text)
    assert set(functions()) <= set(labels)
    assert {"body", "head"} <= set(labels) and "save" not in labels
    text += "x."
    _change(client, uri, text, 3)
    assert {"view", "transpose", "shape"} <= set(await _labels(client, uri, text))


async def test_data_and_train_settings_come_from_the_training_config(client, project):
    from specc.training.config import DataConfig, TrainConfig

    text = _half_typed("batch_size = 32\n", "    ")
    uri = await _typed(client, project, text, 2)
    assert set(await _labels(client, uri, text)) == set(DataConfig.model_fields) - {
        "train",
        "batch_size",
    }
    text = _half_typed("model     = Net()\n", "    ")
    _change(client, uri, text, 3)
    labels = set(await _labels(client, uri, text))
    assert labels == set(TrainConfig.model_fields) - {"model"}
    for typed, expected in [("    data = ", {"digits"}), ("    model = ", {"Net", "Head"})]:
        text = _half_typed("model     = Net()\n", typed)
        _change(client, uri, text, 4)
        assert set(await _labels(client, uri, text)) == expected
    text = _half_typed("loss      = CrossEntropyLoss()\n", "    optimizer = AdamW(lr=0.1, ")
    _change(client, uri, text, 5)
    labels = await _labels(client, uri, text)
    assert "weight_decay=" in labels and "lr=" not in labels
    assert "params=" not in labels  # specc passes the model's parameters itself


async def test_dataset_and_transform_keywords_are_the_data_stages(client, project):
    """Inside a dataset's or a transform's parentheses: its keyword arguments as the data
    stage binds them (a built-in's own, a torchvision dataset's without `transform=`,
    which the transform list gives)."""
    cases = [
        ('    val = TextFile("a.txt", ', {"block_size=", "tokenizer=", "split=", "val_fraction="},
         set()),
        ('    val = MNIST("data", train=False, ', {"download="}, {"transform=", "train="}),
        ("    train_transform = [RandomCrop(32, ", {"padding=", "pad_if_needed="}, set()),
    ]  # fmt: skip
    uri = None
    for version, (typed, offered, absent) in enumerate(cases, start=2):
        text = _half_typed("train      = Digits(train=True)\n", typed)
        if uri is None:
            uri = await _typed(client, project, text, version)
        else:
            _change(client, uri, text, version)
        labels = set(await _labels(client, uri, text))
        assert offered <= labels and not absent & labels, (typed, sorted(labels))


async def test_nothing_is_offered_in_a_comment(client, project):
    text = _half_typed("body = Linear(4, 8)\n", "    # a note on Conv")
    uri = await _typed(client, project, text, 2)
    assert await _labels(client, uri, text) == []


async def _definition(client: LanguageClient, uri: str, text: str, word: str, nth: int = 0):
    """The definition of the `nth` occurrence of `word` in `text`, the buffer of `uri`."""
    lines = text.split("\n")
    row = [i for i, line in enumerate(lines) if word in line][nth]
    found = await client.text_document_definition_async(types.DefinitionParams(
        types.TextDocumentIdentifier(uri),
        types.Position(row, lines[row].index(word) + 1)))  # fmt: skip
    return (found.uri.rsplit("/", 1)[-1], found.range.start.line, found.range.start.character,
            found.range.end.character)  # fmt: skip


async def test_definitions_across_imports(client, project):
    uri = _open(client, project)
    await _diagnostics(client, uri, 1)
    assert await _definition(client, uri, MAIN, "Head(") == ("parts.spec", 0, 6, 10)
    assert await _definition(client, uri, MAIN, "Net()") == ("main.spec", 2, 6, 9)
    assert await _definition(client, uri, MAIN, "digits", nth=1) == ("main.spec", 10, 5, 11)
    assert await _definition(client, uri, MAIN, "body(x)") == ("main.spec", 3, 4, 8)


async def test_definition_of_a_plugin_class_is_in_its_python_file(client):
    spec = SPECS / "custom_parts.spec"
    uri = _open(client, spec)
    await _diagnostics(client, uri, 1)
    text = spec.read_text()
    row = next(i for i, line in enumerate((SPECS / "custom.py").read_text().split("\n"))
               if line.startswith("class CustomConv2d"))  # fmt: skip
    assert await _definition(client, uri, text, "CustomConv2d(") == ("custom.py", row, 6, 18)
    assert (await _definition(client, uri, text, "CustomSGD"))[0] == "custom.py"  # an optimizer


async def _publications(client, uri: str, texts: list[str], first: int, gap_s: float):
    """The versions published for `uri` while `texts` were sent `gap_s` apart as versions
    `first`, `first + 1`, ..., and the seconds from the last edit to its diagnostics."""
    seen = len(client.published[uri])
    for version, text in enumerate(texts, start=first):
        _change(client, uri, text, version)
        await asyncio.sleep(gap_s)
    sent = time.perf_counter() - gap_s
    await _diagnostics(client, uri, first + len(texts) - 1, seen)
    return [v for v, _ in client.published[uri][seen:]], time.perf_counter() - sent


async def test_edits_are_coalesced_and_checks_never_queue_up(client, tmp_path):
    """Edits faster than the debounce: one check. Edits slower than the debounce but faster
    than a check (a 190-line spec of shipped models): each cancels the check before it, so
    the last edit's diagnostics come within about two checks of it, not after a queue of
    checks of every version, and no older version is published after a newer one."""
    spec = tmp_path / "models.spec"
    shipped = ("gpt2.spec", "zoo/resnet50.spec", "zoo/mobilenet_v2.spec")
    spec.write_text("\n".join((SPECS / name).read_text() for name in shipped))
    uri = _open(client, spec)
    await _diagnostics(client, uri, 1)
    text = spec.read_text()
    edits = [text.replace("Linear(2048, num_classes)", f"Linear(2048, {n})") for n in range(20)]
    one_edit = sorted([(await _publications(client, uri, [edits[v]], v, 0))[1]
                       for v in (2, 3, 4)])[1]  # fmt: skip
    assert (await _publications(client, uri, edits[:10], 5, gap_s=0))[0] == [14]
    published, last = await _publications(client, uri, edits, 15, gap_s=0.06)
    assert published == sorted(published) and published[-1] == 34
    assert last < 5 * one_edit, (last, one_edit)
