"""The code generator: golden sources, standalone import, equality with the builder, ruff,
hostile specs, idempotence.

Every shipped `specs/*.spec` and every case in `tests/cases/compile/` is a row; adding a
case is adding a file. Regenerate the goldens with `pytest --update-goldens` and review the
diff.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import CASES, GOLDEN, ROOT, SPECS

import specc
from specc import codegen
from specc.codegen import layout
from specc.codegen import train as codegen_train
from specc.errors import DataError, SpecError, SpecNameError, SpecTypeError, UsageError
from specc.lang.plugins import plugin_path
from specc.shapes.check import check_model, default_model, standalone
from specc.training import checkpoint, sample
from specc.training.build import build_model
from specc.training.data import text_tokens

GOLDEN_DIR = GOLDEN / "compile"
RUFF = Path(sys.executable).parent / "ruff"
SHIPPED = sorted(SPECS.glob("*.spec"))

# Paths the shipped specs do not reach, one `tests/cases/compile/<name>.spec` each: adding a
# case is adding a file. A case with a `train` block is a `compile --train` case (golden
# `<name>.train.py`); the others are `compile` cases (golden `<name>.py`).
CASE_PATHS = {p.stem: p for p in sorted((CASES / "compile").glob("*.spec"))}
assert not set(CASE_PATHS) & {p.stem for p in SHIPPED}, "a case shadows a shipped spec"
SPEC_PATHS = {p.stem: p for p in SHIPPED} | CASE_PATHS
# Loaded from their paths: imports and plugins are relative to the spec.
PROGRAMS = {stem: specc.load(path) for stem, path in SPEC_PATHS.items()}
TRAIN_CASES = sorted(stem for stem in CASE_PATHS if PROGRAMS[stem].trains)


def _targets() -> list:
    """(spec, model) rows: each spec's default model (model=None) and its other
    standalone-checkable models."""
    rows = []
    for stem, program in PROGRAMS.items():
        if stem in TRAIN_CASES:
            continue
        default = default_model(program)
        if not standalone(default):  # e.g. a library of blocks with free dimensions
            try:
                check_model(program)
            except SpecError:
                default = None
        for m in program.models:
            if Path(m.file).resolve() != SPEC_PATHS[stem].resolve():
                continue  # imported from another spec: that spec's row
            if m is default or standalone(m):
                model = None if m is default else m.name
                rows.append(pytest.param(stem, model, id=f"{stem}:{m.name}"))
    return rows


TARGETS = _targets()
STEMS = sorted({row.values[0] for row in TARGETS if row.values[1] is None})

# `compile --train` rows: the shipped specs that train, and the train cases (train-block
# features the shipped specs do not use; case_train also runs, on tensor files the test writes).
TRAIN_STEMS = sorted(s for s, p in PROGRAMS.items() if p.trains)


@pytest.fixture(scope="session")
def generated():
    """The generated source for (spec, model), generated once per session."""
    cache: dict[tuple[str, str | None], str] = {}

    def get(stem: str, model: str | None = None) -> str:
        if (stem, model) not in cache:
            cache[stem, model] = specc.compile(SPEC_PATHS[stem], model)
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
def test_golden(stem, generated, golden):
    golden(GOLDEN_DIR / f"{stem}.py", generated(stem))


def test_no_stale_goldens():
    names = {p.name for p in GOLDEN_DIR.glob("*.py")}
    train = {n.removesuffix(".train.py") for n in names if n.endswith(".train.py")}
    models = {n.removesuffix(".py") for n in names if not n.endswith(".train.py")}
    stale = sorted((models - set(STEMS)) | {f"{n}.train" for n in train - set(TRAIN_STEMS)})
    assert not stale, f"goldens without a spec: {stale}"


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

# The start of every script run by `_without_specc`: a finder placed before all others fails
# every import of specc, however specc is installed (editable, or in site-packages), and
# `result["specc"]` records that the block holds.
_NO_SPECC = """\
import sys


class NoSpecc:
    def find_spec(self, name, path=None, target=None):
        if name == "specc" or name.startswith("specc."):
            raise ModuleNotFoundError(f"{name} is blocked: generated code must not need it")
        return None


for name in [m for m in sys.modules if m == "specc" or m.startswith("specc.")]:
    del sys.modules[name]
sys.meta_path.insert(0, NoSpecc())
result = {}
try:
    import specc  # noqa: F401
    result["specc"] = "importable"
except ImportError:
    result["specc"] = "missing"
"""


def _without_specc(script: str, cfg: dict, cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run `script` (after `_NO_SPECC`) in an isolated interpreter that cannot import specc;
    `cfg` is its `sys.argv[1]` (JSON). Returns its `result`, printed as JSON on the last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | (env or {})
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _NO_SPECC + script, json.dumps(cfg)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# GPT-2's 124M config at its full 1024 tokens costs seconds a forward (twice per row);
# any length up to block_size runs, so the forward tests check and feed it 16 tokens.
FORWARD_INPUTS = {("gpt2", None): {"idx": [16]}}  # the row of its default model, GPT


_STANDALONE = """\
import importlib, json
cfg = json.loads(sys.argv[1])
sys.path[:0] = [cfg["dir"]]
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
def standalone_results(tmp_path_factory, generated) -> dict:
    """Import every generated file in one isolated interpreter (one torch import)."""
    folder = tmp_path_factory.mktemp("standalone")
    jobs = []
    for i, row in enumerate(TARGETS):
        stem, model = row.values
        (folder / f"gen_{i}.py").write_text(generated(stem, model), "utf-8")
        for plugin in _plugin_files(stem):  # plain PyTorch files the output imports
            shutil.copy(plugin, folder / plugin.name)
        inst = specc.check(SPEC_PATHS[stem], model, FORWARD_INPUTS.get((stem, model)))
        jobs.append({"id": row.id, "module": f"gen_{i}", "cls": inst.model,
                     "inputs": [(t.shape, t.dtype) for _, t in inst.inputs]})  # fmt: skip
    return _without_specc(_STANDALONE, {"dir": str(folder), "jobs": jobs}, cwd=folder)


def test_standalone_has_no_specc(standalone_results):
    assert standalone_results["specc"] == "missing"


@pytest.mark.parametrize(("stem", "model"), TARGETS)
def test_standalone_import_and_forward(stem, model, standalone_results, request):
    got = standalone_results[request.node.callspec.id]
    assert isinstance(got, list), got
    inst = specc.check(SPEC_PATHS[stem], model, FORWARD_INPUTS.get((stem, model)))
    want = [[2, *o.tensor.shape] if o.tensor.batched else o.tensor.shape for o in inst.outputs]
    assert got == want


# ---- 3. the same module as the builder ---------------------------------------------------


@pytest.mark.parametrize(("stem", "model"), TARGETS)
def test_same_module_as_builder(stem, model, generated, tmp_path, monkeypatch):
    path = SPEC_PATHS[stem]
    for plugin in _plugin_files(stem):
        monkeypatch.syspath_prepend(str(plugin.parent))
    file = tmp_path / f"gen_{stem}.py"
    file.write_text(generated(stem, model), "utf-8")
    inputs = FORWARD_INPUTS.get((stem, model))
    inst = specc.check(path, model, inputs)
    module = _import_file(file, f"specc_generated_{stem}_{model}")

    torch.manual_seed(0)
    built = specc.build(path, model, inputs)
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
    xs = _inputs(inst, batch=2)  # more than one sample
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
def test_idempotent(stem, model, generated):
    first = generated(stem, model)
    program = specc.load(SPEC_PATHS[stem])
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


# ---- 7. compile --train -------------------------------------------------------------------


# Shipped specs that read what an earlier run wrote (specs/gpt_lora.spec reads the
# tokenizer.json of `specc run specs/gpt.spec`): compiled in a folder holding it.
AFTER_A_RUN = {"gpt_lora"}


@pytest.fixture(scope="session")
def base_runs(tmp_path_factory) -> Path:
    """A folder with runs/gpt/tokenizer.json, as `specc run specs/gpt.spec` leaves it."""
    from specc.training import text

    folder = tmp_path_factory.mktemp("base_runs")
    (folder / "runs" / "gpt").mkdir(parents=True)
    text.write_tokenizer(text.char_tokens(text.python_docs_text()), "char",
                         folder / "runs" / "gpt")  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def compile_train(base_runs):
    """`specc.compile(spec, train=True)`, from `base_runs` for the specs that need it."""

    def run(stem: str) -> str:
        if stem not in AFTER_A_RUN:
            return specc.compile(SPEC_PATHS[stem], train=True)
        here = Path.cwd()
        os.chdir(base_runs)
        try:
            return specc.compile(SPEC_PATHS[stem], train=True)
        finally:
            os.chdir(here)

    return run


@pytest.fixture(scope="session")
def train_generated(compile_train):
    """The `compile --train` source of a spec, generated once per session."""
    cache: dict[str, str] = {}

    def get(stem: str) -> str:
        if stem not in cache:
            cache[stem] = compile_train(stem)
        return cache[stem]

    return get


@pytest.mark.parametrize("stem", TRAIN_STEMS)
def test_train_golden(stem, train_generated, golden):
    golden(GOLDEN_DIR / f"{stem}.train.py", train_generated(stem))


@pytest.mark.parametrize("stem", TRAIN_STEMS)
def test_train_script_is_clean(stem, train_generated, generated, compile_train, tmp_path):
    """ruff-clean with default settings, formatted, idempotent, no specc import, the model
    classes exactly as `compile` writes them, and nothing defined that is not used."""
    source = train_generated(stem)
    file = tmp_path / f"{stem}.py"
    file.write_text(source, "utf-8")
    check = _ruff("check", "--isolated", "--no-cache", str(file))
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _ruff("format", "--isolated", "--no-cache", "--check", "--diff", str(file))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    assert compile_train(stem) == source

    tree = ast.parse(source)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert "specc" not in imported
    if stem in STEMS:  # the model classes come first, as `compile` writes them
        model_tree = ast.parse(generated(stem))
        classes = [ast.unparse(n) for n in model_tree.body if isinstance(n, ast.ClassDef)]
        train_classes = [ast.unparse(n) for n in tree.body if isinstance(n, ast.ClassDef)]
        assert train_classes[: len(classes)] == classes
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert node.name in names, f"{node.name} is defined but never used"


def test_train_scripts_contain_only_what_the_spec_uses(train_generated):
    digits = train_generated("digits")
    for absent in ("torchvision", "fnmatch", "DataLoader(", "scaler", "autocast", "Subset",
                   "load_tensor_file", "TransformedDataset", "requires_grad", "compile()",
                   "num_workers", "drop_last"):  # fmt: skip
        assert absent not in digits, absent
    assert "scheduler.step()" in digits  # OneCycleLR: per step
    assert "    steps_per_epoch = math.ceil(len(train_y) / 32)" in digits  # OneCycleLR's length
    cifar = train_generated("cifar10")
    for absent in ("digits_dataset", "sklearn", "scheduler", "Unverified", "TensorDataset"):
        assert absent not in cifar, absent
    for line in [
        "import torchvision",
        '        model.parameters(), lr=0.001, momentum=0.9, fused=device.type == "cpu"',
        "            v2.ToImage(),",
        "            v2.ToDtype(torch.float32, scale=True),",
        "    train_x, train_y = as_tensors(",
        "        batches = order.to(device).split(4)",
        # the runner's kernel choices for the tutorial net at batch 4, on CPU only
        '    if device.type == "cpu":',
        "        torch.set_num_threads(1)",
        "        torch.backends.mkldnn.enabled = False",
        '    torch.save(model.state_dict(), "cifar10.pt")',
        'if __name__ == "__main__":',
    ]:
        assert line in cifar.splitlines(), line
    mnist = train_generated("case_train_mnist")
    assert "verify" not in mnist and "Unverified" not in mnist
    assert "        scheduler.step()\n" in mnist  # StepLR: per epoch


# Runs generated scripts as `python script.py` would (`__main__`), each in its own folder,
# in one interpreter that cannot import specc (`_without_specc`).
_RUN_SCRIPTS = """\
import contextlib, io, json, os, runpy, traceback
import torch
cfg = json.loads(sys.argv[1])
for job in cfg["jobs"]:
    os.chdir(job["dir"])
    sys.path.insert(0, job["dir"])
    out = io.StringIO()
    error = None
    # what a script may set for its whole process (its kernel choices): as a fresh one
    settings = torch.backends.mkldnn.enabled, torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(job["script"], run_name="__main__")
    except BaseException:
        error = traceback.format_exc()
    torch.backends.mkldnn.enabled = settings[0]
    torch.set_num_threads(settings[1])
    sys.path.remove(job["dir"])
    result[job["id"]] = {"stdout": out.getvalue(), "error": error}
print(json.dumps(result))
"""


def _train_copy(folder: Path, stem: str, edits: dict[str, str], text: str | None = None) -> Path:
    """`specs/<stem>.spec` (or `text`) with text edits, compiled by
    `specc compile <stem>.spec --train -o <stem>.py` in `folder`."""
    from specc.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    text = text if text is not None else (ROOT / "specs" / f"{stem}.spec").read_text("utf-8")
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    spec = folder / f"{stem}.spec"
    spec.write_text(text, "utf-8")
    assert main(["compile", str(spec), "--train", "-o", str(folder / f"{stem}.py")]) == 0
    return spec


@pytest.fixture(scope="session")
def train_runs(tmp_path_factory) -> Iterator[dict]:
    """Compile several specs with --train and run each script (1-2 epochs, small data).
    `specc run` of the SAME_AS_RUN copies (see `specc_runs`) starts first and runs beside
    the scripts: both processes use one thread, so a 2-core machine runs them at once."""
    from datafiles import write_cifar10, write_tensor_files, write_token_windows
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("train_runs")
    specs: dict[str, Path] = {}

    # the acceptance case: CIFAR-format files written here, checked for existence only
    write_cifar10(root / "cifar10" / "data", n_train=200, n_test=100)
    specs["cifar10"] = _train_copy(root / "cifar10", "cifar10", {
        "download=False)": "download=False, verify=False)",
        "epochs    = 2": "epochs    = 1",
        "log_every = 2000": "log_every = 10"})  # fmt: skip
    # the specs whose scripts must train exactly as `specc run` does: a few hundred steps
    specs["digits"] = _train_copy(root / "digits", "digits", {"epochs    = 12": "epochs    = 5"})
    (root / "two_tower").mkdir()
    shutil.copy(ROOT / "specs" / "backbones.spec", root / "two_tower" / "backbones.spec")
    specs["two_tower"] = _train_copy(root / "two_tower", "two_tower", {})
    (root / "digits_pretrain").mkdir()
    shutil.copy(ROOT / "specs" / "backbones.spec", root / "digits_pretrain" / "backbones.spec")
    specs["digits_pretrain"] = _train_copy(root / "digits_pretrain", "digits_pretrain", {})

    # fine-tuning: the pretrained file digits_finetune.spec expects, from the builder
    folder = root / "digits_finetune"
    folder.mkdir()
    shutil.copy(ROOT / "specs" / "backbones.spec", folder / "backbones.spec")
    torch.manual_seed(0)
    pretrained = specc.build(ROOT / "specs" / "digits_pretrain.spec").state_dict()
    (folder / "runs" / "digits_pretrain").mkdir(parents=True)
    torch.save(pretrained, folder / "runs" / "digits_pretrain" / "best.pt")
    specs["digits_finetune"] = _train_copy(folder, "digits_finetune", {})
    specs["smooth_loss"] = _train_copy(root / "smooth_loss", "smooth_loss", {})
    (root / "custom_parts").mkdir()
    shutil.copy(ROOT / "specs" / "custom.py", root / "custom_parts" / "custom.py")
    specs["custom_parts"] = _train_copy(root / "custom_parts", "custom_parts", {})

    specs["chars"] = _train_copy(root / "chars", "chars", {})
    specs["text_bpe"] = _text_bpe_copy(root / "text_bpe")

    folder = root / "case_train"
    write_tensor_files(folder, n=40)
    specs["case_train"] = _train_copy(folder, "case_train", {}, CASE_TRAIN_SPEC)
    torch.manual_seed(1)
    init = specc.build(specs["case_train"]).state_dict()  # hidden=16: only fc2.bias fits
    save_file({k: v.contiguous() for k, v in init.items()}, str(folder / "init.safetensors"))

    specs["gpt_lora"] = _gpt_lora_copy(root / "gpt_lora")

    folder = root / "case_lm"  # a token model: [B, T, V] scores per token
    write_token_windows(folder)
    specs["case_lm"] = _train_copy(folder, "case_lm", {}, CASE_PATHS["case_lm"].read_text("utf-8"))

    jobs = [{"id": stem, "dir": str(spec.parent), "script": f"{stem}.py"}
            for stem, spec in specs.items()]  # fmt: skip
    specc_run = _start_specc_runs(root, specs)
    try:
        # tiny models: threads only wait for each other on 2 cores
        threads = {"OMP_NUM_THREADS": "1"}
        result = _without_specc(_RUN_SCRIPTS, {"jobs": jobs}, cwd=root, env=threads)
        yield {"result": result, "specs": specs, "pretrained": pretrained,
               "specc_run": (specc_run, root / "specc_runs.log")}  # fmt: skip
    finally:
        if specc_run.poll() is None:  # a failure before `specc_runs` waited for it
            specc_run.kill()
            specc_run.wait()


def _text_bpe_copy(folder: Path) -> Path:
    """specs/chars.spec on a TextFile of Python's docs tokenised by a small BPE
    tokenizer.json trained here (absolute paths: compiling reads the text for its
    vocabulary size)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from specc.training.text import python_docs_text

    folder.mkdir(parents=True)
    docs = folder / "docs.txt"
    docs.write_text(python_docs_text()[:80_000], "utf-8")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(docs)], trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"]))
    tok.save(str(folder / "bpe.json"))
    dataset = f'TextFile("{docs}", block_size=32, tokenizer="{folder / "bpe.json"}"'
    return _train_copy(folder, "text_bpe", {
        'PythonDocs(block_size=64, split="train")': dataset + ")",
        'PythonDocs(block_size=64, split="val")': dataset + ', split="val")',
        "batch_size = 32": "batch_size = 4"},
        (ROOT / "specs" / "chars.spec").read_text("utf-8"))  # fmt: skip


def _gpt_lora_copy(folder: Path) -> Path:
    """specs/gpt_lora.spec made small (dropout kept), on a base checkpoint and char
    tokenizer.json made here as `specc run specs/gpt.spec` makes them (absolute paths:
    compiling reads the tokenizer for the vocabulary size)."""
    from specc.training import text
    from specc.training.build import build_model
    from specc.training.plan import resolve

    base = folder / "runs" / "gpt"
    base.mkdir(parents=True)
    shutil.copy(ROOT / "specs" / "gpt2.spec", folder / "gpt2.spec")
    text.write_tokenizer(text.char_tokens(text.python_docs_text()), "char", base)
    spec = _train_copy(folder, "gpt_lora", {
        '"runs/gpt/': f'"{folder}/runs/gpt/',
        "n_layer = 4, n_head = 4, n_embd = 128": "n_layer = 1, n_head = 2, n_embd = 32",
        "block_size=128": "block_size=16",
        "epochs         = 2": "epochs         = 1\n    max_steps      = 140"})  # fmt: skip
    program = specc.load(spec)
    torch.manual_seed(1)
    torch.save(build_model(program, resolve(program)).state_dict(), base / "best.pt")
    return spec


def _ran(train_runs: dict, stem: str) -> tuple[str, Path]:
    """The script's output and folder, after checking that it ran to the end."""
    assert train_runs["result"]["specc"] == "missing"
    run = train_runs["result"][stem]
    assert run["error"] is None, run["error"]
    spec = train_runs["specs"][stem]
    assert f"saved the weights to {stem}.pt" in run["stdout"]
    return run["stdout"], spec.parent


def _accuracies(stdout: str) -> list[float]:
    return [float(a) for a in re.findall(r"\baccuracy (\d\.\d+)", stdout)]


def test_train_cifar10_acceptance(train_runs):
    """`specc compile specs/cifar10.spec --train -o t.py && python t.py` trains on
    CIFAR-format data without specc, and the weights load into specc.build."""
    stdout, folder = _ran(train_runs, "cifar10")
    assert re.search(r"^\[1, +10\] loss: \d+\.\d{3}$", stdout, re.M), stdout
    assert len(re.findall(r"\] loss: ", stdout)) == 5  # 50 batches, one line per 10
    assert len(_accuracies(stdout)) == 1
    model = specc.build(train_runs["specs"]["cifar10"])
    model.load_state_dict(torch.load(folder / "cifar10.pt", weights_only=True), strict=True)


def test_train_digits_learns(train_runs):
    stdout, folder = _ran(train_runs, "digits")
    accuracies = _accuracies(stdout)
    assert len(accuracies) == 5 and accuracies[-1] > 0.9, stdout
    model = specc.build(train_runs["specs"]["digits"])
    model.load_state_dict(torch.load(folder / "digits.pt", weights_only=True), strict=True)


def test_train_finetune_keeps_frozen_weights(train_runs):
    stdout, folder = _ran(train_runs, "digits_finetune")
    assert "<All keys matched successfully>" in stdout  # the backbone.* keys, mapped
    state = torch.load(folder / "digits_finetune.pt", weights_only=True)
    pretrained = train_runs["pretrained"]
    backbone = [k for k in pretrained if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)  # frozen BatchNorm kept its statistics
    for key in backbone:
        assert torch.equal(state[key], pretrained[key]), key
    torch.manual_seed(0)
    fresh = specc.build(train_runs["specs"]["digits_finetune"]).state_dict()
    assert not torch.equal(state["head.0.weight"], fresh["head.0.weight"])  # the head trained


@pytest.mark.parametrize("stem", ["smooth_loss", "custom_parts", "case_train"])
def test_train_other_scripts_run(train_runs, stem):
    stdout, _ = _ran(train_runs, stem)
    assert _accuracies(stdout)


# The guarantee: `python <stem>.py` and `specc run <stem>.spec` end with the same weights.
SAME_AS_RUN = ["case_lm", "chars", "custom_parts", "digits", "digits_finetune",
               "digits_pretrain", "gpt_lora", "smooth_loss", "text_bpe", "two_tower"]  # fmt: skip

_RUN_SPECS = """\
import json, os, sys
import specc
cfg = json.loads(sys.argv[1])
for job in cfg["jobs"]:
    os.chdir(job["dir"])
    specc.train(job["spec"], runs_dir="runs_specc", quiet=True)
print("done")
"""


def _start_specc_runs(root: Path, specs: dict[str, Path]) -> subprocess.Popen:
    """Start `specc run` of the SAME_AS_RUN spec copies, in one process with the scripts'
    settings (its output in `root/specc_runs.log`)."""
    jobs = [{"dir": str(specs[s].parent), "spec": f"{s}.spec"} for s in SAME_AS_RUN]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    with (root / "specc_runs.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-c", _RUN_SPECS, json.dumps({"jobs": jobs})], cwd=root,
            env=env | {"OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip


@pytest.fixture(scope="session")
def specc_runs(train_runs) -> dict[str, Path]:
    """`specc run` of the same spec copies (started by `train_runs`), finished."""
    proc, log = train_runs["specc_run"]
    proc.wait(timeout=900)
    assert proc.returncode == 0, log.read_text()
    return {s: train_runs["specs"][s].parent / "runs_specc" / s / "last.pt" for s in SAME_AS_RUN}


@pytest.mark.parametrize("stem", SAME_AS_RUN)
def test_train_script_ends_with_specc_runs_weights(train_runs, specc_runs, stem):
    """Same seed, sample order, batches, optimizer options and kernels: on CPU the
    generated script and the runner end bit for bit with the same weights."""
    _, folder = _ran(train_runs, stem)
    script = torch.load(folder / f"{stem}.pt", weights_only=True)
    run = torch.load(specc_runs[stem], weights_only=True)
    assert run["state"]["step"] >= 135  # a few hundred steps (135 for the short finetune)
    assert script.keys() == run["model"].keys()
    differ = [k for k, v in run["model"].items() if not torch.equal(v, script[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def test_train_case_features_ran(train_runs):
    stdout, folder = _ran(train_runs, "case_train")
    # the last weights are saved, then the best epoch's are tested (as `specc run` does)
    assert "top5 " in stdout and stdout.splitlines()[-1].startswith("test loss ")
    assert "_IncompatibleKeys" in stdout  # init with skip_mismatched: fc2 kept its weights
    state = torch.load(folder / "case_train.pt", weights_only=True)
    assert state["fc1.weight"].shape == (32, 4)


def test_text_scripts_import_only_their_tokenizer(train_runs, train_generated):
    """A tokenizer.json script reads its file with `tokenizers`; the char script needs
    neither `tokenizers` nor a file. Both ruff-clean."""
    bpe = train_runs["specs"]["text_bpe"].with_suffix(".py")
    source = bpe.read_text("utf-8")
    assert "from tokenizers import Tokenizer" in source and "def file_tokens(" in source
    assert "python_docs_text" not in source and "char_tokens" not in source
    assert _ruff("check", "--isolated", "--no-cache", str(bpe)).returncode == 0
    chars = train_generated("chars")
    assert "tokenizers" not in chars and "read_text" not in chars
    assert "    # read from the training data: data.vocab_size = " in chars


def test_train_needs_the_train_block_model():
    with pytest.raises(UsageError, match="train block's model `DigitsNet`, not `Other`"):
        specc.compile(ROOT / "specs" / "digits.spec", "Other", train=True)
    with pytest.raises(UsageError, match="no `train` block"):
        specc.compile(ROOT / "specs" / "cifar_net.spec", train=True)


DIGITS_SPEC = (ROOT / "specs" / "digits.spec").read_text("utf-8")
CASE_TRAIN_SPEC = CASE_PATHS["case_train"].read_text("utf-8")

# (edit of specs/digits.spec, error class, message fragment): each a located error.
TRAIN_ERRORS = {
    "unknown_transform": ({"shuffle    = True": "transform = [ToTensr()]"}, DataError,
                          "unknown transform `ToTensr`"),
    "transform_args": ({"shuffle    = True": "transform = [Normalize(mean=[0.5], bad=1)]"},
                       DataError, "bad arguments for transform `Normalize`"),
    "unknown_dataset": ({"Digits(train=False)": "Digitz(train=False)"}, DataError,
                        "unknown dataset `Digitz`"),
    "digits_train_flag": ({"Digits(train=False)": 'Digits(train="no")'}, DataError,
                          "`train` must be true or false"),
    "unverifiable": ({"Digits(train=False)": 'SVHN(root="d", verify=False)'}, DataError,
                     "verify=False is not supported"),
    "tensor_file_type": ({"Digits(train=False)": 'TensorFile("data.csv")'}, DataError,
                         "unsupported file type"),
    "optimizer_args": ({"weight_decay=0.0001": "weight_dekay=0.0001"}, SpecTypeError,
                       "bad arguments for optimizer `AdamW`"),
    "unknown_loss": ({"CrossEntropyLoss()": "CrossEntropy()"}, SpecTypeError,
                     "unknown loss `CrossEntropy`"),
    "loss_args": ({"CrossEntropyLoss()": "CrossEntropyLoss(weight=[1.0, 2.0])"},
                  SpecTypeError, "CrossEntropyLoss(...) is invalid"),
    "unknown_scheduler": ({"OneCycleLR(max_lr=0.003)": "OneCycle(max_lr=0.003)"},
                          SpecTypeError, "unknown scheduler `OneCycle`"),
    "warmup_per_epoch": ({"OneCycleLR(max_lr=0.003)": "StepLR(step_size=2)\n    warmup = 10"},
                         SpecTypeError, "warmup counts optimizer steps"),
    "model_named_main": ({"DigitsNet": "main"}, SpecNameError, "model name `main` clashes"),
    "frozen_nothing": ({"seed      = 0": "seed = 0\n    freeze nope"}, SpecTypeError,
                       "matches no parameter"),
    "group_nothing": ({"seed      = 0": 'seed = 0\n    group "nope*" (lr=0.1)'},
                      SpecTypeError, "matches no trainable parameter"),
    "init_target": ({"seed      = 0": 'seed = 0\n    init nope from "w.pt"'},
                    SpecTypeError, "has no sub-module `nope`"),
    "everything_frozen": ({"seed      = 0": 'seed = 0\n    freeze "*"'}, SpecTypeError,
                          "nothing to optimize"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRAIN_ERRORS))
def test_train_mistakes_are_located_errors(name):
    edits, kind, message = TRAIN_ERRORS[name]
    text = DIGITS_SPEC
    for old, new in edits.items():
        text = text.replace(old, new)
    with pytest.raises(kind) as info:
        specc.compile(text, train=True)
    assert message in info.value.message
    assert info.value.location is not None and info.value.location.file == "<spec>"


def test_train_unknown_metric_is_a_located_error():
    text = DIGITS_SPEC.replace("metrics   = [accuracy]", "metrics   = [acuracy]")
    with pytest.raises(SpecNameError, match="unknown metric `acuracy`") as err:
        specc.compile(text, train=True)
    assert err.value.location.line == text.splitlines().index("    metrics   = [acuracy]") + 1
    assert "did you mean `accuracy`" in err.value.render()


# (edit of case_train, a line the script must then contain): paths the goldens do not show.
TRAIN_VARIANTS = {
    "warmup_alone": ({'    scheduler  = CosineAnnealingLR(T_max=20)\n': ""},
                     "    scheduler = torch.optim.lr_scheduler.LinearLR("),
    "one_cycle_epochs_given": ({"CosineAnnealingLR(T_max=20)": "OneCycleLR(max_lr=0.1, epochs=4)"},
                               "total_steps=steps_per_epoch * 4"),
    "param_and_globs": ({'group "fc1" (lr=0.01)': 'group "fc2.weight", "fc1*", "x*" (lr=0.01)'},
                        '        if (\n            name == "fc2.weight"'),
    "add_prefix_on_target": ({'init from "init.safetensors" (skip_mismatched=True)':
                              'init fc1 from "w.pt" (add_prefix="layer.", strip_prefix="a.")'},
                             '    state = {"layer." + k: v for k, v in state.items()}'),
    "all_metrics_off": ({"metrics    = [accuracy, top5]": "metrics = [loss]"},
                        "    return total_loss / total"),
    "fp16_without_clip": ({'precision  = "bf16"': 'precision = "fp16"',
                           "clip_grad_norm = 1.0": ""},
                          "            scaler.scale(loss / 2).backward()"),
    "three_file_kinds": ({"    val_split       = 0.25": '    val = TensorFile("val.safetensors")'},
                         '    elif path.endswith(".safetensors"):'),
    "no_eval_data": ({'    test            = TensorFile("data.npz", x="x", y="y")\n': "",
                      "    val_split       = 0.25\n": ""}, "    torch.save("),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRAIN_VARIANTS))
def test_train_variants_are_clean(name, tmp_path):
    edits, line = TRAIN_VARIANTS[name]
    text = CASE_TRAIN_SPEC
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    source = specc.compile(text, train=True)
    assert line in source
    if name == "no_eval_data":
        assert "def evaluate" not in source
    file = tmp_path / "variant.py"
    file.write_text(source, "utf-8")
    check = _ruff("check", "--isolated", "--no-cache", str(file))
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _ruff("format", "--isolated", "--no-cache", "--check", "--diff", str(file))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_train_moves_long_constructors_in_a_statement_of_their_own():
    short = layout.Brackets("Net", (layout.Text("num_classes=10"),))
    assert codegen_train._on_device("model", short) == ["model = Net(num_classes=10).to(device)"]
    long = layout.Brackets("Net", (layout.Text("x" * 80),))
    assert codegen_train._on_device("model", long) == [
        f"model = Net(\n    {'x' * 80}\n)",
        "model.to(device)",
    ]


def test_hostile_train_strings_stay_literals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the payload would `touch MARKER` here
    evil = json.dumps('"); ' + PAYLOAD + " #\n" + PAYLOAD + "\n")[1:-1]
    text = (ROOT / "specs" / "digits_finetune.spec").read_text("utf-8")
    text = text.replace("Digits(train=True)", f'CIFAR10(root="{evil}", verify=False)')
    text = text.replace("Digits(train=False)", f'TensorFile("{evil}.pt", x="{evil}")')
    text = text.replace('"runs/digits_pretrain/best.pt"', f'"{evil}.pt"')
    text = text.replace("freeze backbone", f'group "backbone.*", "*{evil}" (lr=0.1)')
    shutil.copy(ROOT / "specs" / "backbones.spec", tmp_path / "backbones.spec")
    path = tmp_path / f"evil\n{PAYLOAD}\n.spec"
    path.write_text(text, "utf-8")
    source = specc.compile(path, train=True)
    literal = (tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in literal:
            assert tok.string not in {"os", "system"}, tok
    assert '"model.pt"' in source  # a file name that is no plain word is not used
    file = tmp_path / "generated.py"
    file.write_text(source, "utf-8")
    check = _ruff("check", "--isolated", "--no-cache", str(file))
    assert check.returncode == 0, check.stdout + check.stderr
    _import_file(file, "specc_hostile_train")  # defines, does not run main()
    assert not (tmp_path / "MARKER").exists()


# ---- 8. generate: the class of a model trained on text ---------------------------------

# GPT from specs/gpt2.spec, tiny, trained on PythonDocs' characters with a context of 8.
TINY_GPT = """
import "gpt2.spec"
data docs {
    train      = PythonDocs(block_size=8)
    batch_size = 4
}
train {
    model     = GPT(vocab_size=data.vocab_size, block_size=data.block_size, n_layer=1,
                    n_head=2, n_embd=16, dropout=0.1)
    data      = docs
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.1)
}
"""


CROPS = "  # generate() crops the context to this"


@pytest.fixture
def tiny_gpt(tmp_path):
    """The spec, a checkpoint of its (untrained) interpreted model, and its train plan."""
    shutil.copy(SPECS / "gpt2.spec", tmp_path / "gpt2.spec")
    spec = tmp_path / "tiny_gpt.spec"
    spec.write_text(TINY_GPT, "utf-8")
    program = specc.load(spec)
    plan = specc.train_plan(program)
    torch.manual_seed(0)
    checkpoint.save({"model": build_model(program, plan).state_dict()}, tmp_path / "ckpt.pt")
    return spec, tmp_path / "ckpt.pt", plan


def test_generate_is_written_for_a_model_trained_on_text(train_generated, tmp_path):
    """`compile` and `compile --train` give GPT (specs/gpt.spec) nanoGPT's generate, its
    block size kept on the module; the output parses and is ruff-clean."""
    for source in (specc.compile(SPECS / "gpt.spec"), train_generated("gpt")):
        ast.parse(source)
        lines = source.splitlines()
        assert f"        self.block_size = block_size{CROPS}" in lines
        assert "    @torch.inference_mode()" in lines and "    def generate(" in lines
        assert "            context = idx[:, -self.block_size :]" in lines
        # the head at the last position only, as `specc sample` runs it
        assert any(line.startswith("    def last_logits(self, idx):") for line in lines)
        assert "        return self.lm_head(self.transformer(idx)[:, -1:])" in lines
        assert "            logits = self.last_logits(context)[:, -1, :] / temperature" in lines
    file = tmp_path / "gpt.py"
    file.write_text(specc.compile(SPECS / "gpt.spec"), "utf-8")
    check = _ruff("check", "--isolated", "--no-cache", str(file))
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _ruff("format", "--isolated", "--no-cache", "--check", "--diff", str(file))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_no_generate_without_a_text_dataset(generated, train_generated):
    """Image classifiers, a token model trained on a tensor file (no tokenizer to read its
    output with) and a model no train block trains get no generate."""
    sources = [generated("digits"), train_generated("digits"), generated("cifar_net"),
               train_generated("case_lm"), generated("gpt2")]  # fmt: skip
    for source in sources:
        assert "def generate(" not in source and "self.block_size" not in source


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.8, 5)])
def test_generate_draws_what_specc_sample_draws(tiny_gpt, tmp_path, temperature, top_k):
    """One checkpoint, prompt and seed: the generated class's generate gives the tokens of
    `specc.sample` and of the sampler itself, with a prompt longer than the context."""
    spec, ckpt, plan = tiny_gpt
    file = tmp_path / "tiny_gpt.py"
    file.write_text(specc.compile(spec), "utf-8")
    module = _import_file(file, f"specc_generated_tiny_gpt_{top_k}")
    state = checkpoint.load(ckpt)["model"]
    model = module.GPT(**plan.model.args)
    model.load_state_dict(state)
    model.eval()
    prompt = "The return statement"  # 20 characters, the context 8: cropped
    tokens = text_tokens(plan.data.train)
    idx = torch.tensor([tokens.encode(prompt)])
    seed = torch.Generator().manual_seed(7)
    out = model.generate(idx, 30, temperature=temperature, top_k=top_k, generator=seed)

    built = build_model(specc.load(spec), plan)
    built.load_state_dict(state)
    built.eval()
    settings = sample.SampleSettings(30, temperature, top_k, seed=7)
    assert torch.equal(out, sample.generate(sample.sampling_model(built, plan), idx, 8, settings))
    text = specc.sample(spec, ckpt, prompt, max_new_tokens=30, temperature=temperature,
                        top_k=top_k, seed=7)  # fmt: skip
    assert tokens.decode(out[0].tolist()) == text


BIGRAM_ON_TEXT = """
{model}
data docs {{
    train      = PythonDocs(block_size=8)
    batch_size = 4
}}
train {{
    model     = Bigram(vocab_size=data.vocab_size)
    data      = docs
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.1)
}}
"""
# How the block size is kept: the input's size as the definition writes it, a parameter of
# another name, a literal, or a parameter forward already stores (not set twice).
BLOCK_SIZES = {
    "sequential_parameter": ("""
sequential Bigram(vocab_size: int = 5, context: int = 8) {
    input(idx: [context] long)
    Embedding(vocab_size, vocab_size)
}""", f"        self.block_size = context{CROPS}"),
    "literal_size": ("""
model Bigram(vocab_size: int = 5) {
    table = Embedding(vocab_size, vocab_size)
    forward(idx: [8] long) { return table(idx) }
}""", f"        self.block_size = 8{CROPS}"),
    "stored_parameter": ("""
model Bigram(vocab_size: int = 5, block_size: int = 8) {
    table = Embedding(vocab_size, vocab_size)
    forward(idx: [block_size] long) { return table(idx)[:, :block_size] }
}""", "        self.block_size = block_size"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BLOCK_SIZES))
def test_generate_keeps_the_block_size_the_spec_writes(name, tmp_path):
    model, line = BLOCK_SIZES[name]
    source = specc.compile(BIGRAM_ON_TEXT.format(model=model))
    assert source.count("self.block_size = ") == 1 and line in source.splitlines()
    file = tmp_path / f"{name}.py"
    file.write_text(source, "utf-8")
    check = _ruff("check", "--isolated", "--no-cache", str(file))
    assert check.returncode == 0, check.stdout + check.stderr
    bigram = _import_file(file, f"specc_generated_bigram_{name}").Bigram(vocab_size=5)
    out = bigram.generate(torch.zeros(1, 10, dtype=torch.long), 4)
    assert out.shape == (1, 14)


def test_a_layer_named_generate_is_a_located_error():
    model = """
model Bigram(vocab_size: int = 5) {
    generate = Embedding(vocab_size, vocab_size)
    forward(idx: [8] long) { return generate(idx) }
}"""
    text = BIGRAM_ON_TEXT.format(model=model)
    with pytest.raises(SpecNameError, match="layer `generate` clashes with `generate`") as info:
        specc.compile(text)
    line = text.splitlines().index("    generate = Embedding(vocab_size, vocab_size)") + 1
    assert info.value.location is not None and info.value.location.line == line


# ---- the pieces -----------------------------------------------------------------------

TRICKY_STRINGS = ["", "abc", "it's", 'say "hi"', "it's \"x\"", "'\"'\"", "a\\b", "\n\t\r",
                  "\x00\x0b\x0c\x1c\x85\u2028\u2029", "é😀", "{x}", "\\'", '\\"']  # fmt: skip


def test_string_literals_round_trip_in_ruffs_quotes():
    lines = []
    for value in TRICKY_STRINGS:
        text = layout.string_literal(value)
        assert ast.literal_eval(text) == value
        assert len(list(tokenize.generate_tokens(io.StringIO(text).readline))) <= 3
        lines.append(f"x = {text}\n")
    source = "".join(lines)
    formatted = _ruff("format", "--isolated", "--no-cache", "-", stdin=source)
    assert formatted.stdout == source


def test_non_finite_floats():
    assert [layout.flat(layout.literal_doc(v)) for v in (float("inf"), -float("inf"))] == [
        'float("inf")', '-float("inf")']  # fmt: skip
    assert layout.flat(layout.literal_doc(float("nan"))) == 'float("nan")'


def _random_doc(rng: random.Random, depth: int, star: bool = False) -> layout.Doc:
    """A random expression; `star`: it is a call argument, so `*[...]` is allowed."""

    def name() -> layout.Text:
        return layout.Text("v" * rng.randint(1, 30), simple="name")

    if depth == 0 or rng.random() < 0.25:
        return name()
    kind = rng.random()
    if 0.7 <= kind < 0.8 and not star:
        kind = 0.5
    if kind < 0.55:
        n = rng.randint(1, 4)
        items = [_random_doc(rng, depth - 1, star=True) for _ in range(n)]
        if rng.random() < 0.4:
            items.append(layout.with_prefix("kw=", _random_doc(rng, depth - 1)))
        head = rng.choice(["self.layer", "F.relu", "nn.Sequential", "torch.cat", "x.view"])
        return layout.Brackets(head, tuple(items))
    if kind < 0.7:
        items = tuple(_random_doc(rng, depth - 1) for _ in range(rng.randint(1, 3)))
        return layout.Brackets("", items, "[", "]", layout.PREC_ATOM, display=True)
    if kind < 0.8:
        if rng.random() < 0.3:  # a dict comprehension with a condition
            elt = layout.Text(f"k: {layout.flat(name())}")
            return layout.Comp("", elt, "for k, v in x.items()", more=(f"if {name().text}",),
                                open="{", close="}")  # fmt: skip
        return layout.Comp("*", _random_doc(rng, depth - 1), "for _ in range(3)")
    left = _random_doc(rng, depth - 1)
    for _ in range(rng.randint(1, 3)):
        left = layout.binop(rng.choice(["add", "mul", "sub"]), left, _random_doc(rng, depth - 1))
    return left


def test_layout_matches_ruff_format():
    """Random nested calls, lists, comprehensions and operators: laid out exactly as
    ruff format lays them out."""
    rng = random.Random(1234)
    lines = ["class C:", "    def f(self):"]
    for _ in range(150):
        doc = _random_doc(rng, 4)
        prefix = rng.choice(["y = ", "self.block = ", "return ", "a, b = "])
        lines.append(" " * 8 + layout.statement(doc, prefix, 8).replace("\n", "\n" + " " * 8))
    source = "\n".join(lines) + "\n"
    formatted = _ruff("format", "--isolated", "--no-cache", "-", stdin=source)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == source


STOPPED_EARLY = """
model Net {
    fc = Linear(64, 10)
    forward(x: [1, 8, 8]) {
        return fc(flatten(x, 1))
    }
}
data digits {
    train      = Digits(train=True)
    val        = Digits(train=False)
    test       = Digits(train=False)
    batch_size = 32
}
train {
    model     = Net()
    data      = digits
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.1)
    epochs    = 2
    max_steps = 3
    metrics   = [accuracy]
}
"""


def _stopped_at(tmp_path: Path, max_steps: int) -> tuple[str, dict]:
    """STOPPED_EARLY at `max_steps`: the generated script's output, `specc run`'s summary."""
    spec = tmp_path / "steps.spec"
    spec.write_text(STOPPED_EARLY.replace("max_steps = 3", f"max_steps = {max_steps}"), "utf-8")
    script = tmp_path / "steps.py"
    script.write_text(specc.compile(spec, train=True), "utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done, specc.train(spec, quiet=True, runs_dir=tmp_path / "runs")


def test_a_script_that_max_steps_stops_at_an_epochs_end_ends_that_epoch_as_specc_run(tmp_path):
    """max_steps on the first epoch's last batch (45 of 45): that epoch ended, so both
    score it as an epoch (no partial record) and test its weights."""
    done, summary = _stopped_at(tmp_path, 45)
    assert summary["steps"] == 45 and summary["epochs"] == 1 and summary["best_epoch"] == 1
    log = [json.loads(line) for line in (tmp_path / "runs" / "steps" / "metrics.jsonl").open()]
    assert not [r for r in log if r.get("partial")]
    assert "max_steps" not in done.stdout and "epoch 1: val loss" in done.stdout
    assert _accuracies(done.stdout)[-1] == pytest.approx(summary["test_accuracy"], abs=1e-4)


def test_a_script_that_max_steps_stops_before_any_epoch_ends_tests_as_specc_run(tmp_path):
    """Stopped in its first epoch, the script scores the val set, as `specc run` does, and
    tests the last weights: no epoch's val score chose others (it loaded best weights it
    never had: an UnboundLocalError)."""
    done, summary = _stopped_at(tmp_path, 3)
    assert summary["steps"] == 3 and summary["epochs"] == 0
    assert _accuracies(done.stdout)[-1] == pytest.approx(summary["test_accuracy"], abs=1e-4)
    log = [json.loads(line) for line in (tmp_path / "runs" / "steps" / "metrics.jsonl").open()]
    (partial,) = [r for r in log if r.get("partial")]
    shown = re.search(r"step 3 \(max_steps, in epoch 1\): val loss (\d\.\d+)", done.stdout)
    assert shown and float(shown[1]) == pytest.approx(partial["val_loss"], abs=1e-4)
