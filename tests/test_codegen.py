"""The code generator: golden sources, standalone import, equality with the builder, ruff,
hostile specs, idempotence.

Every shipped `specs/*.spec` and every case in `CASES` is a row; adding a case is adding a
spec. Regenerate the goldens with `SPECC_UPDATE_GOLDENS=1 pytest tests/test_codegen.py`
and review the diff.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tokenize
from pathlib import Path

import pytest
import torch

import specc
from specc import codegen
from specc.errors import SpecError, SpecTypeError, UsageError
from specc.plugins import plugin_path
from specc.shapes import check_model, default_model, standalone

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "golden" / "compile"
UPDATE_GOLDENS = os.environ.get("SPECC_UPDATE_GOLDENS") == "1"
RUFF = Path(sys.executable).parent / "ruff"
SHIPPED = sorted((ROOT / "specs").glob("*.spec"))

# Paths the shipped specs do not reach. Each is written to `<name>.spec` and has a golden.
CASES = {
    "case_blocks": """\
# One block used three times: its `_` differs by use (a keyword-only parameter), and a
# repeat whose `_` changes along the chain (written out, then repeated).
model Block(out: int) {
    fc = Linear(_, out)
    forward(x: [D]) {
        return relu(fc(x))
    }
}

model Mlp {
    a = Block(32)
    b = Block(32)
    c = Block(10)
    chain = repeat(3, Linear(_, 16))
    forward(x: [20]) {
        return chain(c(b(a(x))))
    }
}
""",
    "case_seq": """\
# sequential models: positional layers, mixed named and unnamed ones, used from a model;
# Features is standalone, so it is also compiled alone (--model Features).
sequential Features(ch: int = 8) {
    input(x: [1, 28, 28])
    Conv2d(1, ch, 3)
    ReLU()
    MaxPool2d(2)
}

sequential Head {
    Flatten()
    fc = Linear(_, 10)
}

model Classifier {
    features = Features(8)
    head = Head()
    forward(x: [1, 28, 28]) {
        return head(features(x))
    }
}
""",
    "case_ops": """\
# Forward expressions: unpacking, a swap, operators, slices, methods, named dimensions,
# string arguments, a parameter default computed from another, two outputs.
model Attn(heads: int, dim: int) {
    qkv = Linear(dim, dim * 3)
    forward(x: [T, C]) {
        q, k, v = qkv(x).chunk(3, dim=-1)
        q = q.view(-1, T, heads, C // heads).transpose(1, 2)
        k = k.view(-1, T, heads, C // heads).transpose(1, 2)
        v = v.view(-1, T, heads, C // heads).transpose(1, 2)
        att = softmax(q @ k.transpose(-2, -1) * (1.0 / (C // heads) ** 0.5), dim=-1)
        return (att @ v).transpose(1, 2).reshape(-1, T, C)
    }
}

model Ops(scale: float = 0.5, heads: int = 4, width: int = heads * 8) {
    inp = Linear(_, width)
    attn = Attn(heads, width)
    norm = LayerNorm(width)
    head = Linear(width, 3)
    forward(x: [6, 12]) {
        h = inp(x)
        a, b = h, -h * scale
        a, b = b, a
        h = norm(h + attn(a) - b ** 2 / 2 + (a - b) * 3)
        first = h[:, 0]
        last = h[:, -1, ...]
        mid = h[:, 1:-1:2].mean(dim=1)
        n = h.shape[1]
        unused = relu(h)
        padded = pad(h[..., :2], (0, 1), mode="constant", value=-1.5)
        return head(first + last + mid / n), padded
    }
}
""",
    "case_embed": """\
# Integer inputs (token ids), a torch function with no tensor argument, `bias=False`.
model TinyLM(vocab: int = 50, dim: int = 16, context: int = 8) {
    tok = Embedding(vocab, dim)
    pos = Embedding(context, dim)
    ln  = LayerNorm(dim)
    out = Linear(dim, vocab, bias=False)
    forward(idx: [context] long) {
        x = tok(idx) + pos(arange(context))
        return out(ln(x))
    }
}
""",
    "case_wide": """\
# Long lines: the generator lays them out the way ruff format would.
model Wide(channels_for_the_stem_convolution: int = 16, dropout_probability: float = 0.125) {
    a_really_long_layer_name_for_testing = Sequential(Conv2d(3, channels_for_the_stem_convolution, 3, padding=1, bias=False), BatchNorm2d(channels_for_the_stem_convolution), ReLU(inplace=True))
    another_quite_long_layer_name = Conv2d(channels_for_the_stem_convolution, channels_for_the_stem_convolution, kernel_size=3, padding=1)
    drop = Dropout(dropout_probability)
    stack = repeat(2, Sequential(Linear(_, 16), LayerNorm(16, eps=0.00001, elementwise_affine=True), GELU(approximate="tanh")))
    classifier = Linear(_, 10)
    forward(x: [3, 8, 8]) {
        some_long_variable_name = a_really_long_layer_name_for_testing(x) + another_quite_long_layer_name(a_really_long_layer_name_for_testing(x)) * 2
        y = relu(another_quite_long_layer_name(some_long_variable_name) + another_quite_long_layer_name(some_long_variable_name))
        z = flatten(adaptive_avg_pool2d(drop(y + some_long_variable_name - some_long_variable_name * 0.5 + y / 3.0), 1), 1)
        return classifier(stack(z))
    }
}
""",  # noqa: E501 - long spec lines are the point of this case
}


def _programs() -> dict:
    """Every shipped spec (loaded from its path: imports and plugins are relative to it)
    and every case (from its text)."""
    programs = {p.stem: specc.load(p) for p in SHIPPED}
    assert not set(programs) & set(CASES), "a case shadows a shipped spec"
    return programs | {name: specc.load(text) for name, text in CASES.items()}


PROGRAMS = _programs()


def _targets() -> list:
    """(spec, model) rows: each spec's default model (model=None) and its other
    standalone-checkable models."""
    rows = []
    for stem, program in PROGRAMS.items():
        default = default_model(program)
        if not standalone(default):  # e.g. a library of blocks with free dimensions
            try:
                check_model(program)
            except SpecError:
                default = None
        for m in program.models:
            if m is default or standalone(m):
                model = None if m is default else m.name
                rows.append(pytest.param(stem, model, id=f"{stem}:{m.name}"))
    return rows


TARGETS = _targets()
STEMS = sorted({row.values[0] for row in TARGETS if row.values[1] is None})


@pytest.fixture(scope="session")
def spec_paths(tmp_path_factory) -> dict[str, Path]:
    case_dir = tmp_path_factory.mktemp("cases")
    paths = {p.stem: p for p in SHIPPED}
    for name, text in CASES.items():
        paths[name] = case_dir / f"{name}.spec"
        paths[name].write_text(text, "utf-8")
    return paths


@pytest.fixture(scope="session")
def generated(spec_paths):
    """The generated source for (spec, model), generated once per session."""
    cache: dict[tuple[str, str | None], str] = {}

    def get(stem: str, model: str | None = None) -> str:
        if (stem, model) not in cache:
            cache[stem, model] = specc.compile(spec_paths[stem], model)
        return cache[stem, model]

    return get


def _plugin_files(stem: str) -> list[Path]:
    return [p for stmt in PROGRAMS[stem].plugins if (p := plugin_path(stmt)) is not None]


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(instance, batch: int = 3) -> list[torch.Tensor]:
    xs = []
    for _, t in instance.inputs:
        dtype = getattr(torch, t.dtype)
        shape = (batch, *t.shape) if t.batched else tuple(t.shape)
        if dtype.is_floating_point:
            xs.append(torch.randn(shape, dtype=dtype))
        else:
            xs.append(torch.randint(0, 2, shape, dtype=dtype))
    return xs


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


# ---- 1. golden files ------------------------------------------------------------------


@pytest.mark.parametrize("stem", STEMS)
def test_golden(stem, generated):
    source = generated(stem)
    golden = GOLDEN_DIR / f"{stem}.py"
    if UPDATE_GOLDENS:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(source, "utf-8")
    assert golden.is_file(), f"no golden {golden}; run with SPECC_UPDATE_GOLDENS=1"
    assert source == golden.read_text("utf-8")


def test_no_stale_goldens():
    stale = {p.stem for p in GOLDEN_DIR.glob("*.py")} - set(STEMS)
    assert not stale, f"goldens without a spec: {sorted(stale)}"


def test_cifar_golden_reads_like_the_tutorial(generated):
    source = generated("cifar_net")
    for line in [
        "import torch.nn.functional as F",
        "class Net(nn.Module):",
        "    def __init__(self, num_classes=10):",
        "        self.fc1 = nn.Linear(400, 120)",
        "        self.fc3 = nn.Linear(84, num_classes)",
        "    def forward(self, x):  # x: (B, 3, 32, 32)",
        "        x = self.pool(F.relu(self.conv1(x)))  # (B, 6, 14, 14)",
        "        x = torch.flatten(x, 1)  # (B, 400)",
        "        return self.fc3(x)",
    ]:
        assert line in source.splitlines()
    assert source.startswith("# Generated by specc from cifar_net.spec (sha256 ")


# ---- 2. standalone: the file runs without specc -----------------------------------------

_STANDALONE = """\
import importlib, json, sys
cfg = json.loads(sys.argv[1])
sys.path[:0] = [cfg["dir"]]
sys.path += cfg["site"]  # plain paths: no .pth files, so no editable specc finder
result = {}
try:
    import specc  # noqa: F401
    result["specc"] = "importable"
except ImportError:
    result["specc"] = "missing"
import torch
for job in cfg["jobs"]:
    try:
        model = getattr(importlib.import_module(job["module"]), job["cls"])()
        model.eval()
        xs = [torch.randn(2, *shape) if dtype.startswith("float")
              else torch.randint(0, 2, (2, *shape), dtype=getattr(torch, dtype))
              for shape, dtype in job["inputs"]]
        with torch.no_grad():
            out = model(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        result[job["id"]] = [list(o.shape) for o in outs]
    except Exception as exc:
        result[job["id"]] = f"{type(exc).__name__}: {exc}"
print(json.dumps(result))
"""


@pytest.fixture(scope="session")
def standalone_results(tmp_path_factory, spec_paths, generated) -> dict:
    """Import every generated file in one isolated interpreter (one torch import)."""
    folder = tmp_path_factory.mktemp("standalone")
    jobs = []
    for i, row in enumerate(TARGETS):
        stem, model = row.values
        (folder / f"gen_{i}.py").write_text(generated(stem, model), "utf-8")
        for plugin in _plugin_files(stem):  # plain PyTorch files the output imports
            shutil.copy(plugin, folder / plugin.name)
        inst = specc.check(spec_paths[stem], model)
        jobs.append({"id": row.id, "module": f"gen_{i}", "cls": inst.model,
                     "inputs": [(t.shape, t.dtype) for _, t in inst.inputs]})  # fmt: skip
    paths = sysconfig.get_paths()
    cfg = {"dir": str(folder), "site": sorted({paths["purelib"], paths["platlib"]}), "jobs": jobs}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _STANDALONE, json.dumps(cfg)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_standalone_has_no_specc(standalone_results):
    assert standalone_results["specc"] == "missing"


@pytest.mark.parametrize(("stem", "model"), TARGETS)
def test_standalone_import_and_forward(stem, model, spec_paths, standalone_results, request):
    got = standalone_results[request.node.callspec.id]
    assert isinstance(got, list), got
    inst = specc.check(spec_paths[stem], model)
    want = [[2, *o.tensor.shape] if o.tensor.batched else o.tensor.shape for o in inst.outputs]
    assert got == want


# ---- 3. the same module as the builder ---------------------------------------------------


@pytest.mark.parametrize(("stem", "model"), TARGETS)
def test_same_module_as_builder(stem, model, spec_paths, generated, tmp_path, monkeypatch):
    path = spec_paths[stem]
    for plugin in _plugin_files(stem):
        monkeypatch.syspath_prepend(str(plugin.parent))
    file = tmp_path / f"gen_{stem}.py"
    file.write_text(generated(stem, model), "utf-8")
    inst = specc.check(path, model)
    module = _import_file(file, f"specc_generated_{stem}_{model}")

    torch.manual_seed(0)
    built = specc.build(path, model)
    torch.manual_seed(0)
    gen = getattr(module, inst.model)()

    want, got = built.state_dict(), gen.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert torch.equal(got[key], want[key]), key
    gen.load_state_dict(built.state_dict(), strict=True)

    built.eval()
    gen.eval()
    torch.manual_seed(1)
    xs = _inputs(inst)
    with torch.no_grad():
        a, b = _as_tuple(built(*xs)), _as_tuple(gen(*xs))
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# ---- 4. ruff --------------------------------------------------------------------------


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if not RUFF.is_file():
        pytest.skip("ruff is not installed in this environment")
    return subprocess.run([str(RUFF), *args], input=stdin, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(("stem", "model"), TARGETS)
def test_ruff_clean(stem, model, generated, tmp_path):
    file = tmp_path / f"{stem}.py"
    file.write_text(generated(stem, model), "utf-8")
    check = _ruff("check", "--isolated", "--no-cache", str(file))
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _ruff("format", "--isolated", "--no-cache", "--check", "--diff", str(file))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


# ---- 6. idempotence -------------------------------------------------------------------


@pytest.mark.parametrize(("stem", "model"), TARGETS)
def test_idempotent(stem, model, spec_paths, generated):
    first = generated(stem, model)
    program = specc.load(spec_paths[stem])
    assert codegen.generate(program, model) == first
    assert codegen.generate(program, model) == first
    formatted = _ruff("format", "--isolated", "--no-cache", "-", stdin=first)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == first


# ---- 5. hostile specs -----------------------------------------------------------------

PAYLOAD = "import os; os.system('touch MARKER')"


def _hostile() -> dict[str, str]:
    """Specs that try to get code into the output. `MARKER` is replaced by a file path."""
    string_break = json.dumps('"); ' + PAYLOAD + " #")  # a spec string literal
    newline = json.dumps("x\n" + PAYLOAD + "\n")
    separators = json.dumps("x\u2028" + PAYLOAD + "\r" + PAYLOAD + "\x0c")
    quotes = json.dumps("it's \"" + PAYLOAD + '" \'\'\'""" \\')
    body = "forward(x: [2]) { return a(x) }"
    return {
        "identity_string_arg": f"model M {{ a = Identity({string_break}) {body} }}",
        "identity_newline_kwarg": f"model M {{ a = Identity(note={newline}) {body} }}",
        "identity_separators": f"model M {{ a = Identity({separators}, {quotes}) {body} }}",
        "param_default_string": f"model M(tag: str = {string_break}) {{ a = Identity(tag) "
        f"{body} }}",
        "layer_named_class": f"model M {{ class = Identity() {body.replace('a(x)', 'class(x)')} }}",
        "layer_named_dunder_import": "model M { __import__ = Identity() forward(x: [2]) { "
        "return __import__(x) } }",
        "param_named_lambda": f"model M(lambda: int = 1) {{ a = Identity() {body} }}",
        "param_named_dunder": f"model M(__import__: int = 1) {{ a = Identity() {body} }}",
        "param_named_torch": f"model M(torch: int = 1) {{ a = Linear(2, torch) {body} }}",
        "keyword_kwarg": f"model M {{ a = Identity(lambda=1) {body} }}",
        "var_named_def": "model M { a = Identity() forward(x: [2]) { def = a(x) return def } }",
        "var_named_self": "model M { a = Identity() forward(x: [2]) { self = a(x) return self } }",
        "var_named_F": "model M { a = Identity() forward(x: [2]) { F = a(x) return F } }",
        "input_named_nn": "model M { a = Identity() forward(nn: [2]) { return a(nn) } }",
        "dunder_attribute": "model M { a = Identity() forward(x: [2]) { return a(x).__class__ } }",
        "model_named_super": f"model super {{ a = Identity() {body} }}",
        "model_named_class": f"model class {{ a = Identity() {body} }}",
    }


HOSTILE = _hostile()


def _assert_only_in_literals(source: str) -> None:
    """The payload's names appear only inside string literals and comments."""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.STRING, tokenize.COMMENT):
            assert tok.string not in {"os", "system", "__import__", "exec", "eval"}, tok
    tree = ast.parse(source)
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert set(imports) <= {
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn",
        "from collections import OrderedDict",
    }


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_spec_cannot_inject(name, tmp_path):
    marker = tmp_path / "MARKER"
    text = HOSTILE[name].replace("MARKER", str(marker))
    try:
        source = specc.compile(text)
    except SpecError as err:
        assert err.location is not None, err.render()
        assert "error" in err.render()
        return
    _assert_only_in_literals(source)
    file = tmp_path / "hostile.py"
    file.write_text(source, "utf-8")
    module = _import_file(file, f"specc_hostile_{name}")
    inst = specc.check(text)
    gen = getattr(module, inst.model)()
    gen(*_inputs(inst))
    assert not marker.exists(), "generated code ran the payload"


def test_hostile_strings_are_kept_verbatim(tmp_path):
    text = HOSTILE["identity_separators"].replace("MARKER", str(tmp_path / "MARKER"))
    source = specc.compile(text)
    call = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.Call) and ast.unparse(n.func) == "nn.Identity")  # fmt: skip
    program = specc.load(text)
    want = [a.value for a in program.models[0].layers[0].ctor.args]
    assert [ast.literal_eval(a) for a in call.args] == want


@pytest.mark.parametrize("name", ["layer_named_class", "layer_named_dunder_import",
                                  "param_named_lambda", "keyword_kwarg", "var_named_self",
                                  "model_named_super"])  # fmt: skip
def test_unsafe_names_are_located_errors(name):
    with pytest.raises(SpecError) as info:
        specc.compile(HOSTILE[name])
    err = info.value
    assert err.location is not None and err.location.file == "<spec>"
    assert err.render().splitlines()[0].startswith("<spec>:1:")


def test_file_name_cannot_break_the_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the payload would `touch MARKER` here
    path = tmp_path / f"evil\n{PAYLOAD}\n.spec"
    path.write_text((ROOT / "specs" / "cifar_net.spec").read_text("utf-8"), "utf-8")
    source = specc.compile(path)
    header, second = source.splitlines()[:2]
    assert header.startswith("# Generated by specc from ") and "evil\\nimport os" in header
    assert second == "import torch"
    _assert_only_in_literals(source)
    file = tmp_path / "generated.py"
    file.write_text(source, "utf-8")
    _import_file(file, "specc_hostile_file_name").Net()
    assert not (tmp_path / "MARKER").exists()


# ---- errors and options ---------------------------------------------------------------


def test_train_is_not_supported_yet():
    with pytest.raises(UsageError, match="--train is not supported yet"):
        specc.compile(ROOT / "specs" / "cifar_net.spec", train=True)


def test_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="no model named `Nett`"):
        specc.compile(ROOT / "specs" / "cifar_net.spec", "Nett")


def test_hole_changing_along_a_repeat_and_between_uses_is_a_located_error():
    # In `b` the chain is Linear(4, 8), Linear(8, 8); in `c` it is Linear(6, 8), Linear(8, 8).
    text = """\
model Block {
    chain = repeat(2, Linear(_, 8))
    forward(x: [D]) { return chain(x) }
}
model Top {
    a = Linear(4, 6)
    b = Block()
    c = Block()
    forward(x: [4]) { return b(x) + c(a(x)) }
}
"""
    with pytest.raises(SpecTypeError) as info:
        specc.compile(text)
    assert "built differently in different uses" in info.value.message
    assert info.value.location is not None and info.value.location.line == 2


def test_required_parameter_after_default_is_a_located_error():
    text = """\
model Block(a: int = 2, b: int) {
    fc = Linear(a, b)
    forward(x: [2]) { return fc(x) }
}
model Top {
    blk = Block(2, 3)
    forward(x: [2]) { return blk(x) }
}
"""
    with pytest.raises(SpecTypeError, match="has no default but follows `a`") as info:
        specc.compile(text)
    assert info.value.location is not None and info.value.location.line == 1


# ---- the pieces -----------------------------------------------------------------------

TRICKY_STRINGS = ["", "abc", "it's", 'say "hi"', "it's \"x\"", "'\"'\"", "a\\b", "\n\t\r",
                  "\x00\x0b\x0c\x1c\x85\u2028\u2029", "é😀", "{x}", "\\'", '\\"']  # fmt: skip


def test_string_literals_round_trip_in_ruffs_quotes():
    lines = []
    for value in TRICKY_STRINGS:
        text = codegen.string_literal(value)
        assert ast.literal_eval(text) == value
        assert len(list(tokenize.generate_tokens(io.StringIO(text).readline))) <= 3
        lines.append(f"x = {text}\n")
    source = "".join(lines)
    formatted = _ruff("format", "--isolated", "--no-cache", "-", stdin=source)
    assert formatted.stdout == source


def test_non_finite_floats():
    assert [codegen.flat(codegen.literal_doc(v)) for v in (float("inf"), -float("inf"))] == [
        'float("inf")', '-float("inf")']  # fmt: skip
    assert codegen.flat(codegen.literal_doc(float("nan"))) == 'float("nan")'


def _random_doc(rng: random.Random, depth: int, star: bool = False) -> codegen.Doc:
    """A random expression; `star`: it is a call argument, so `*[...]` is allowed."""

    def name() -> codegen.Text:
        return codegen.Text("v" * rng.randint(1, 30), simple="name")

    if depth == 0 or rng.random() < 0.25:
        return name()
    kind = rng.random()
    if 0.7 <= kind < 0.8 and not star:
        kind = 0.5
    if kind < 0.55:
        n = rng.randint(1, 4)
        items = [_random_doc(rng, depth - 1, star=True) for _ in range(n)]
        if rng.random() < 0.4:
            items.append(codegen.with_prefix("kw=", _random_doc(rng, depth - 1)))
        head = rng.choice(["self.layer", "F.relu", "nn.Sequential", "torch.cat", "x.view"])
        return codegen.Brackets(head, tuple(items))
    if kind < 0.7:
        items = tuple(_random_doc(rng, depth - 1) for _ in range(rng.randint(1, 3)))
        return codegen.Brackets("", items, "[", "]", codegen.PREC_ATOM, display=True)
    if kind < 0.8:
        return codegen.Comp("*", _random_doc(rng, depth - 1), "for _ in range(3)")
    left = _random_doc(rng, depth - 1)
    for _ in range(rng.randint(1, 3)):
        left = codegen.binop(rng.choice(["add", "mul", "sub"]), left, _random_doc(rng, depth - 1))
    return left


def test_layout_matches_ruff_format():
    """Random nested calls, lists, comprehensions and operators: laid out exactly as
    ruff format lays them out."""
    rng = random.Random(1234)
    lines = ["class C:", "    def f(self):"]
    for _ in range(150):
        doc = _random_doc(rng, 4)
        prefix = rng.choice(["y = ", "self.block = ", "return ", "a, b = "])
        lines.append(" " * 8 + codegen.statement(doc, prefix, 8).replace("\n", "\n" + " " * 8))
    source = "\n".join(lines) + "\n"
    formatted = _ruff("format", "--isolated", "--no-cache", "-", stdin=source)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == source
