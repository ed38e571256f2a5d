"""Tensors a model holds (`Parameter`, `Buffer`), weight ties and `init` rules, as a user
meets them: the check table, shared storage in both back ends, rule order, and the warning
for a rule that matches nothing. Golden sources and builder equality for
tests/cases/compile/case_tensors.spec are in test_codegen.py; error renderings in
tests/cases/errors/ (tie_shapes, tie_unknown_path, init_unknown_function)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import CASES

import specc
from specc import ir
from specc.cli import main
from specc.errors import SpecError

CASE = CASES / "compile" / "case_tensors.spec"


def _generated(spec: Path, tmp_path: Path, name: str):
    """The class `name` from `specc compile spec`, imported from a file."""
    file = tmp_path / f"gen_{spec.stem}.py"
    file.write_text(specc.compile(spec), "utf-8")
    module_spec = importlib.util.spec_from_file_location(f"gen_{spec.stem}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def _both(spec: Path, tmp_path: Path, name: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    built = specc.build(spec)
    torch.manual_seed(0)
    return {"builder": built, "codegen": _generated(spec, tmp_path, name)()}


def _table_rows(out: str) -> dict[str, list[str]]:
    """The check table's rows by first cell: the other cells, stripped."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    return rows


def test_check_table_shows_tensors_and_counts_a_tie_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["check", str(CASE)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows["pos"] == ["Parameter", "[1, 8, 16]", "128"]
    assert rows["cls_token"] == ["Parameter", "[1, 1, 16]", "16"]
    assert rows["freqs"] == ["Buffer (not saved)", "[8]", "0"]
    assert rows["scale"] == ["Parameter (no grad)", "[1]", "1"]
    assert rows["lm_head"] == ["Linear(16, 64, bias=False)", "[B, 8, 64]", "1,024"]
    assert rows["lm_head.weight = wte.weight"] == ["tied", "[64, 16]", "-1,024"]
    assert rows["blocks.1.ls.gamma = blocks.0.ls.gamma"] == ["tied", "[16]", "-16"]
    assert rows["total"][-1] == "5,537"


def test_counts_match_the_built_module():
    inst = specc.check(CASE)
    module = specc.build(CASE)
    params = list(module.parameters())  # each shared parameter once
    assert inst.params == sum(p.numel() for p in params)
    assert inst.trainable == sum(p.numel() for p in params if p.requires_grad)


@pytest.mark.parametrize("backend", ["builder", "codegen"])
def test_tied_parameters_share_storage(backend, tmp_path):
    module = _both(CASE, tmp_path, "TinyGPT")[backend]
    state = module.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["wte.weight"].data_ptr()
    assert state["blocks.1.ls.gamma"].data_ptr() == state["blocks.0.ls.gamma"].data_ptr()
    assert module.lm_head.weight is module.wte.weight
    # a buffer with persistent=False is held but not saved; requires_grad=False holds
    assert "freqs" not in state and "freqs" in dict(module.named_buffers())
    assert not module.scale.requires_grad


RULES = """
model Inner {
    norm = LayerNorm(4)
    init LayerNorm.weight = constant_(0.5)
    init LayerNorm.bias = constant_(0.25)
    forward(x: [4]) { return norm(x) }
}
model Outer(scale: float = 3.0) {
    fc = Linear(4, 4)
    inner = Inner()
    head = Linear(4, 2)
    init Linear.weight = zeros_()
    init "head.*" = constant_(scale * 2)
    init LayerNorm.weight = ones_()
    forward(x: [4]) { return head(inner(fc(x))) }
}
"""


@pytest.mark.parametrize("backend", ["builder", "codegen"])
def test_init_rules_run_in_order_children_first(backend, tmp_path):
    spec = tmp_path / "rules.spec"
    spec.write_text(RULES, "utf-8")
    m = _both(spec, tmp_path, "Outer")[backend]
    assert torch.all(m.fc.weight == 0)  # `Linear.weight = zeros_()`
    assert torch.all(m.head.weight == 6.0) and torch.all(m.head.bias == 6.0)  # later rule wins
    assert torch.all(m.inner.norm.weight == 1.0)  # the parent's rule runs after the child's
    assert torch.all(m.inner.norm.bias == 0.25)  # the child's rule, untouched by the parent


NOTHING = """model Net {
    fc = Linear(8, 4, bias=False)
    init Linear.bias = zeros_()
    init "*.weight_g" = ones_()
    forward(x: [8]) { return fc(x) }
}
"""

NOTHING_WARNINGS = """\
nothing.spec:3:5: warning: init rule matches nothing: `Net` has no `Linear` layer with a `bias`
 3 |     init Linear.bias = zeros_()
   |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^

nothing.spec:4:5: warning: init rule matches nothing: no parameter of `Net` matches "*.weight_g"
 4 |     init "*.weight_g" = ones_()
   |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = hint: did you mean `fc.weight`?

"""


def test_init_rule_matching_nothing_is_a_warning(tmp_path, capsys, monkeypatch):
    (tmp_path / "nothing.spec").write_text(NOTHING, "utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nothing.spec"]) == 0  # a warning leaves the exit code alone
    out, err = capsys.readouterr()
    assert err == NOTHING_WARNINGS
    assert out.rstrip().endswith("ok")
    assert main(["compile", "nothing.spec", "-o", "net.py"]) == 0
    assert capsys.readouterr().err.startswith(NOTHING_WARNINGS)
    warnings = specc.check(tmp_path / "nothing.spec").warnings
    assert [w.span.line for w in warnings if w.span] == [3, 4]


def test_program_and_checked_instance_round_trip_through_json():
    program = specc.load(CASE)
    assert ir.Program.model_validate_json(program.model_dump_json()) == program
    model = program.model("TinyGPT")
    assert model is not None and [t.target for t in model.ties] == [
        "lm_head.weight",
        "blocks.1.ls.gamma",
    ]
    assert [r.glob or f"{r.module_type}.{r.attr}" for r in model.inits][-1] == "*.c_proj.weight"
    inst = specc.check(CASE)
    assert ir.ModelInstance.model_validate_json(inst.model_dump_json()) == inst
    kinds = {layer.name: layer.ctor.kind for layer in inst.layers}
    assert kinds["cls_token"] == "tensor" and kinds["wte"] == "torch"
    assert [n.op for n in inst.nodes].count("get_attr") == 4


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("p = Parameter(zeros(4))\n y = p(x)", "`p` is a tensor the model holds, not a layer"),
        ("p = Parameter(zeros(4, dimm))", "unknown name `dimm`"),
        ("p = Parameter(zeros(4) + ones(3))", "`zeros(4) + ones(3)` fails"),
        ("p = Parameter(arange(4))", "must be floating point"),
        ("p = Buffer(zeros(4), persist=False)", "Buffer has no option `persist`"),
        ("init Linear.bias = xavier_uniform_()", "`xavier_uniform_` cannot initialize `fc.bias`"),
        ("init Conv9d.weight = zeros_()", "unknown layer type `Conv9d`"),
        ("init Linear.wieght = zeros_()", "`Linear` layers have no `wieght`"),
        ("fc.weight = fc.bias", "cannot tie `fc.weight` [4, 4] to `fc.bias` [4]"),
    ],
)
def test_mistakes_are_located_errors(body, message, tmp_path):
    layers, _, stmt = body.partition("\n")
    spec = tmp_path / "bad.spec"
    spec.write_text(
        f"model M(dim: int = 4) {{\n fc = Linear(4, 4)\n {layers}\n"
        f" forward(x: [4]) {{ {stmt} return fc(x) }}\n}}\n",
        "utf-8",
    )
    with pytest.raises(SpecError) as info:
        specc.check(spec)
    assert message in info.value.message
    where = info.value.location
    assert where is not None and where.line == (4 if stmt else 3)  # the forward, or the item


def test_a_sequential_model_holds_no_tensors(tmp_path):
    spec = tmp_path / "seq.spec"
    spec.write_text("sequential S { input(x: [4]) Linear(4, 4) Parameter(zeros(4)) }", "utf-8")
    with pytest.raises(SpecError, match="holds only layers"):
        specc.check(spec)


def test_factory_without_device_is_a_warning_with_the_fix(tmp_path, capsys, monkeypatch):
    """`arange(t)` type-checks on meta but makes a CPU tensor on a GPU run."""
    (tmp_path / "pos.spec").write_text(
        "model Pos {\n"
        "    wpe = Embedding(16, 8)\n"
        "    forward(idx: [8] long) {\n"
        "        return wpe(arange(idx.shape[1])) + wpe(arange(8, device=idx.device))\n"
        "    }\n"
        "}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", "pos.spec"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pos.spec:4:20: warning: `arange(idx.shape[1])` creates its tensor")
    assert "hint: pass the device of an input: `device=idx.device`" in err
    assert err.count("warning:") == 1  # the call with a device is fine
