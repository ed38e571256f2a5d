"""Shapes are right for every batch size: sizes that depend on the batch show as `2*B`,
`B + 1`; a size that merely equals a probe batch size is a number. The symbolic shapes of
every shipped spec's standalone models match torch's real shapes at batch 1, 3 and 8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import GOLDEN, SPECS

import specc
from specc import ir
from specc.cli import main
from specc.errors import SpecShapeError
from specc.shapes.check import standalone
from specc.shapes.meta import dim_text, fit

FLAT = """
model Flat {
    fc = Linear(8, 2)
    forward(x: [8]) {
        y = fc(x)
        return y.view(-1)
    }
}
"""

# seq-first LSTM: h_n is [num_layers, N, H] = [2, 35, 200]; batch_first puts B in the middle
LSTMS = """
model SeqFirst {
    rnn = LSTM(200, 200, num_layers=2)
    forward(x: [35, 200]) {
        out, hc = rnn(x)
        return hc
    }
}

model BatchFirst {
    rnn = LSTM(200, 200, num_layers=2, batch_first=True)
    forward(x: [35, 200]) {
        out, hc = rnn(x)
        return out, hc
    }
}
"""

ARITHMETIC = """
model Arith {
    fc = Linear(8, 2)
    forward(x: [8]) {
        y = fc(x).view(x.shape[0] * 2)
        pairs = y.view(-1, 2)
        rest = x[1:]
        more = cat([x, x[0:1]], 0)
        square = (x @ x.T).view(-1)
        return y, pairs, rest, more, square, x.view(2, -1)
    }
}
"""


def _check_text(tmp_path: Path, text: str, capsys, monkeypatch, name: str = "m.spec") -> str:
    monkeypatch.setenv("COLUMNS", "120")
    spec = tmp_path / name
    spec.write_text(text)
    assert main(["check", str(spec)]) == 0
    return capsys.readouterr().out


def _output_row(table: str) -> str:
    return next(line for line in table.splitlines() if "output " in line and "shape" not in line)


def test_flattened_batch_is_2B_in_check_table(tmp_path, capsys, monkeypatch):
    out = _check_text(tmp_path, FLAT, capsys, monkeypatch)
    assert "[2*B]" in _output_row(out)
    assert "[4]" not in out


def test_flattened_batch_is_2B_in_generated_comments():
    spec = FLAT.replace("return y.view(-1)", "z = y.view(-1)\n        return z * 2")
    source = specc.compile(spec)
    assert "y = self.fc(x)  # (B, 2)" in source
    assert "z = y.view(-1)  # (2*B,)" in source
    assert "(4,)" not in source


def test_lstm_num_layers_is_not_called_B(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    spec = tmp_path / "rnn.spec"
    spec.write_text(LSTMS)
    assert main(["check", str(spec), "--model", "SeqFirst"]) == 0
    assert "([2, 35, 200], [2, 35, 200])" in _output_row(capsys.readouterr().out)
    assert main(["check", str(spec), "--model", "BatchFirst"]) == 0
    row = _output_row(capsys.readouterr().out)
    assert "[B, 35, 200], ([2, B, 200], [2, B, 200])" in row


def test_lstm_hidden_state_keeps_batch_in_the_middle():
    inst = specc.check(LSTMS, "BatchFirst")
    (_, hc) = inst.outputs
    assert [dim_text(d) for d in hc.items[0].tensor.shape] == ["2", "B", "200"]
    assert hc.items[0].tensor.batched is False


def test_affine_sizes_in_check_table(tmp_path, capsys, monkeypatch):
    row = _output_row(_check_text(tmp_path, ARITHMETIC, capsys, monkeypatch))
    assert "[2*B], [B, 2], [B - 1, 8], [B + 1, 8], [?], [2, 4*B]" in row


def test_check_table_golden(tmp_path, golden, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _check_text(tmp_path, FLAT + ARITHMETIC, capsys, monkeypatch, "symbolic.spec")
    golden(GOLDEN / "check" / "symbolic.txt", out)


@pytest.mark.parametrize(
    ("sizes", "text"),
    [
        ((7, 7, 7), "7"),
        ((2, 3, 5), "B"),
        ((4, 6, 10), "2*B"),
        ((3, 4, 6), "B + 1"),
        ((68, 103, 173), "35*B - 2"),
        ((1, 1, 2), "?"),  # B // 2
        ((4, 9, 25), "?"),  # B * B
        ((-2, -3, -5), "-B"),
    ],
)
def test_size_text(sizes, text):
    assert dim_text(fit(sizes)) == text


def test_batch_dependent_hole_is_a_located_error():
    spec = FLAT.replace("fc = Linear(8, 2)", "fc = Linear(8, 2)\n    head = Linear(_, 4)")
    spec = spec.replace("return y.view(-1)", "return head(y.view(-1))")
    with pytest.raises(SpecShapeError, match=r"`in_features` = 2\*B, a size that depends on"):
        specc.check(spec)


def test_symbolic_values_round_trip_through_json():
    inst = specc.check(ARITHMETIC)
    again = ir.ModelInstance.model_validate_json(inst.model_dump_json())
    assert again == inst
    assert isinstance(inst.outputs[0].tensor.shape[0], ir.BatchDim)
    assert inst.outputs[4].tensor.shape == ["?"]


# ---- every shipped spec: symbolic shapes against torch's real ones ----------------------


def _standalone_models() -> list[tuple[Path, str]]:
    """(spec, model) for every model of every shipped spec that checks on its own (the zoo,
    specs/zoo/*.spec, joins by being there)."""
    cases = []
    for spec in sorted(SPECS.glob("**/*.spec")):
        program = specc.load(spec)  # a shipped spec that does not load fails loudly here
        # a model imported from another shipped spec is that spec's case
        own = [m for m in program.models if Path(m.file).resolve() == spec.resolve()]
        cases += [(spec, m.name) for m in own if standalone(m)]
    return cases


def _expected(v: ir.Value | None, batch: int) -> Any:
    """A checked value at batch size `batch`: shapes as lists ("?" sizes as None), tuples as
    lists."""
    if v is None:
        return None
    if v.kind == "tensor":
        dims = [d.at(batch) if isinstance(d, ir.BatchDim) else d for d in v.tensor.shape]
        dims = [None if d == "?" else d for d in dims]
        return [batch, *dims] if v.tensor.batched else dims
    if v.kind == "tuple":
        return [_expected(i, batch) for i in v.items]
    if v.kind == "size":
        return v.size.at(batch) if isinstance(v.size, ir.BatchDim) else None
    return v.const


def _actual(x: Any, unknown: Any = None) -> Any:
    """A real value as `_expected` writes it; where `unknown` (the expected value) has None,
    so has the result."""
    if isinstance(x, (list, tuple, torch.Size, torch.Tensor)):
        items = list(x.shape) if isinstance(x, torch.Tensor) else list(x)
        hints = unknown if isinstance(unknown, list) and len(unknown) == len(items) else None
        return [
            None if hints is not None and hints[i] is None else _actual(v, hints and hints[i])
            for i, v in enumerate(items)
        ]
    return x


def _inputs(inst: ir.ModelInstance, batch: int) -> list[torch.Tensor]:
    """Real inputs of the declared shapes; integer inputs (token ids) are zeros."""
    out = []
    for _, t in inst.inputs:
        dtype = getattr(torch, t.dtype)
        assert t.batched and t.fixed(), "a declared input is [B, sizes...]"
        shape = [batch, *t.shape]
        x = torch.randn(shape) if dtype.is_floating_point else torch.zeros(shape)
        out.append(x.to(dtype))
    return out


def _run_with_hooks(module: torch.nn.Module, inputs: list[torch.Tensor]) -> tuple[dict, Any]:
    """The output of each named child's first call, and the model's output."""
    firsts: dict[str, Any] = {}

    def record(name: str) -> Any:
        def hook(_module: Any, _inputs: Any, out: Any) -> None:
            firsts.setdefault(name, out)

        return hook

    hooks = [child.register_forward_hook(record(n)) for n, child in module.named_children()]
    try:
        with torch.no_grad():
            return firsts, module(*inputs)
    finally:
        for h in hooks:
            h.remove()


def assert_matches_torch(source: Any, model: str, *, allow_unknown: bool = False) -> None:
    """The checked shapes of `model`, evaluated at batch 1, 3 and 8, equal the real ones:
    each named child's first call (forward hooks) and the model's output."""
    inst = specc.check(source, model)
    # A model past 10M parameters runs on meta (torch's own shape functions; the checker's
    # probes and rules are not involved): GPT-2's 124M at batch 8 took 40 s on the CPU.
    device = "meta" if inst.params > 10_000_000 else "cpu"
    with torch.device(device):
        module = specc.build(source, model).eval()
    outs = inst.outputs[0] if len(inst.outputs) == 1 else ir.Value(kind="tuple", items=inst.outputs)
    for batch in (1, 3, 8):
        firsts, out = _run_with_hooks(module, [x.to(device) for x in _inputs(inst, batch)])
        checked = {layer.name: layer.out for layer in inst.layers}
        assert set(firsts) <= set(checked), "every child called has a checked shape"
        cases = [(name, checked[name], real) for name, real in firsts.items()]
        for name, value, real in [*cases, ("output", outs, out)]:
            want = _expected(value, batch)
            have = _actual(real, want if allow_unknown else None)
            assert want == have, f"{model}.{name} at batch {batch}: {want} != {have}"


@pytest.mark.parametrize(
    ("source", "model"),
    [(FLAT, "Flat"), (LSTMS, "SeqFirst"), (LSTMS, "BatchFirst"), (ARITHMETIC, "Arith")],
    ids=["flat", "lstm-seq-first", "lstm-batch-first", "arithmetic"],
)
def test_examples_match_torch(source, model):
    assert_matches_torch(source, model, allow_unknown=True)


@pytest.mark.parametrize(
    ("spec", "model"),
    _standalone_models(),
    ids=lambda c: c.stem if isinstance(c, Path) else c,
)
def test_symbolic_shapes_match_torch(spec, model):
    assert_matches_torch(spec, model)
