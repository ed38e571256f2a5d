"""Fuzzing `specc check` and `specc compile` (issue "Reliability and security").

Every case writes a spec to a fixed file name (`fuzz.spec`) in a scratch folder and runs
`specc.cli.main([command, "fuzz.spec"])` in-process. The only acceptable outcomes are exit
code 0, or exit code 2 with a located error on stderr (`fuzz.spec:LINE:COL: error: ...`)
whose line and column exist in the file and whose echoed source line is that line. Exit
code 70 (internal error), any exception escaping `main`, a traceback, an unlocated error
and any case that takes more than 2 s of this process's CPU time (re-measured once to rule
out one-time import costs) are failures. CPU time, not wall time: on a shared machine a
busy neighbour made fast cases read 3-7 s on the wall clock.

Sources of cases (strategies in tests/fuzz_grammar.py): grammar-aware generation, and
byte-level mutation of every shipped spec (specs/*.spec, tests/cases/errors/*.spec), both
as text and as raw bytes. Plus hand-written hostile cases (absurd sizes, deep nesting,
huge files, empty and binary files).

CI runs a few hundred cases (derandomized, no example database). `pytest -m fuzz` runs
10,000 with a fresh random seed each time.

Known specc bugs are listed in `KNOWN_BUGS`. Each has a plain test below marked
`xfail(strict=True)` with a minimal reproducer, and the fuzz tests count (rather than fail
on) outcomes with that bug's signature, so they keep looking for new ones. When a bug is
fixed its xfail turns into a failure: remove the mark and its `KNOWN_BUGS` entry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CASES, SPECS
from fuzz_grammar import mutated, specs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specc.cli import main

SPEC_NAME = "fuzz.spec"
# Per-case CPU-time limit; a case over it is run again and fails if it is slow twice.
TIME_LIMIT = float(os.environ.get("SPECC_FUZZ_TIME_LIMIT", "2.0"))
# A case still running after this long is interrupted (a hang must not stall the suite).
HARD_LIMIT = max(30.0, 15 * TIME_LIMIT)  # wall clock: generous, a loaded machine is slow
SHIPPED = sorted(SPECS.rglob("*.spec")) + sorted((CASES / "errors").glob("*.spec"))
SOURCES = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in SHIPPED}
# Files next to the spec, so mutated specs that import or load them get past that point.
COMPANIONS = [SPECS / "backbones.spec", SPECS / "custom.py"]
HAS_CODEGEN = importlib.util.find_spec("specc.codegen") is not None

LOCATED = re.compile(r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?P<col>\d+): error: ")
WARNING = re.compile(r"^[^\s:][^:\n]*:\d+:\d+: warning: ")
# Characters str.splitlines() breaks at besides \n (\r is gone after universal newlines).
EXTRA_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

# ---- example budgets ------------------------------------------------------------------
# CI: ~370 cases. `pytest -m fuzz`: 10,000 cases in total.
CI_GENERATED, CI_PER_FILE, CI_RAW = 150, 6, 60
FUZZ_TOTAL, FUZZ_GENERATED, FUZZ_PER_FILE = 10_000, 4_000, 150
FUZZ_RAW = max(1_000, FUZZ_TOTAL - FUZZ_GENERATED - FUZZ_PER_FILE * len(SHIPPED))

_HEALTH = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


def ci_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=_HEALTH,
    )


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=False,
        database=None,
        suppress_health_check=_HEALTH,
        print_blob=True,
    )


# ---- known bugs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    command: str
    code: int | None  # None: an exception escaped main()
    out: str
    err: str
    seconds: float  # CPU time of this process
    wall: float
    raised: str = ""


# name -> does this bad outcome (with the problem found, for this file text) show the bug?
KNOWN_BUGS: dict[str, Callable[[Outcome, str, str | None], bool]] = {}
STATS: Counter[str] = Counter()


# ---- running one case -----------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past HARD_LIMIT (not an Exception, so specc's
    own handlers let it through)."""


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after `seconds`, and every 0.1 s after that
    until the block ends (a raise can land where it is swallowed, like a gc callback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = [True]

    def fire(signum, frame):
        if armed[0]:
            raise CaseTimeout(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    finally:
        while armed[0]:  # a late alarm may interrupt this very statement: retry
            with contextlib.suppress(CaseTimeout):
                armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def spec_text(data: bytes) -> str | None:
    """The text specc reads from these bytes (UTF-8, universal newlines), or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


class Runner:
    """Writes cases to `fuzz.spec` in a scratch folder and judges specc's outcomes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / SPEC_NAME
        self.commands = ["check"]

    def run(self, command: str, hard_limit: float = HARD_LIMIT) -> Outcome:
        out, err = io.StringIO(), io.StringIO()
        raised = ""
        code: int | None = None
        start, cpu = time.perf_counter(), time.process_time()
        try:
            with (
                alarm(hard_limit),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                code = main([command, SPEC_NAME])
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # anything escaping main() is a finding
            raised = f"{type(exc).__name__}: {exc}"
        seconds, wall = time.process_time() - cpu, time.perf_counter() - start
        return Outcome(command, code, out.getvalue(), err.getvalue(), seconds, wall, raised)

    def problem(self, o: Outcome, text: str | None) -> str | None:
        """What is wrong with this outcome, or None when it is acceptable."""
        if o.raised:
            return f"main() raised {o.raised}"
        if "Traceback" in o.err:
            return "a traceback on stderr"
        if o.code == 0:
            return None
        if o.code == 70:
            return "an internal error (exit 70)"
        if o.code != 2:
            return f"exit code {o.code}"
        lines = o.err.split("\n")
        # Check-time warnings may come first: the error is the first line saying `error:`.
        first = next((i for i, line in enumerate(lines) if "error:" in line), 0)
        if any(WARNING.match(line) for line in lines[:first]):
            lines = lines[first:]
        m = LOCATED.match(lines[0] if lines else "")
        if m is None:
            return "an unlocated error"
        if m["file"] != SPEC_NAME:
            if not (self.root / m["file"]).is_file():
                return f"an error located in {m['file']!r}, which is not a spec file here"
            return None
        if text is None:
            return None
        src = text.split("\n")
        line, col = int(m["line"]), int(m["col"])
        if not 1 <= line <= len(src):
            return f"a location past the end of the file (line {line} of {len(src)})"
        if not 1 <= col <= len(src[line - 1]) + 1:
            return f"a column past the end of line {line} ({col} > {len(src[line - 1]) + 1})"
        echoed = f" {line} | {src[line - 1]}"
        if len(lines) > 1 and lines[1] != echoed:
            return f"echoes {lines[1]!r} as line {line}, which is {src[line - 1]!r}"
        return None

    def case(self, data: bytes, *, tolerate_known: bool = True, hard_limit: float = HARD_LIMIT):
        """Run every command on these bytes; fail unless each outcome is acceptable."""
        self.path.write_bytes(data)
        text = spec_text(data)
        STATS["cases"] += 1
        for command in self.commands:
            o = self.run(command, hard_limit)
            problem = self.problem(o, text)
            if problem is None and o.seconds > TIME_LIMIT:
                again = self.run(command, hard_limit)  # one-time costs (imports) don't repeat
                if again.seconds > TIME_LIMIT:
                    problem = (f"took {o.seconds:.2f} s of CPU ({o.wall:.2f} s wall), then "
                               f"{again.seconds:.2f} s ({again.wall:.2f} s)")  # fmt: skip
            if problem is None:
                STATS[f"{command}: {'ok' if o.code == 0 else 'located error'}"] += 1
                continue
            known = [k for k, sign in KNOWN_BUGS.items() if sign(o, problem, text)]
            if known and tolerate_known:
                STATS[f"{command}: known bug {known[0]}"] += 1
                continue
            shown = data[:2000].decode("utf-8", "backslashreplace")
            pytest.fail(
                f"`specc {command}` gave {problem} in {o.seconds:.2f} s"
                + (f" (known bug: {', '.join(known)})" if known else "")
                + f"\n--- stderr:\n{o.err[:2000]}\n--- {SPEC_NAME} ({len(data)} bytes):\n{shown}",
                pytrace=False,
            )


WARM_UP = """
model WarmUp {
    conv = Conv2d(_, 4, 3, padding=1)
    bn   = BatchNorm2d(_)
    gn   = GroupNorm(2, 4)
    pool = MaxPool2d(2)
    seq  = Sequential(Flatten(), Linear(_, 8), LayerNorm(_), Dropout(0.1), GELU())
    rnn  = LSTM(8, 8, batch_first=True)
    gru  = GRU(8, 8, batch_first=True)
    att  = MultiheadAttention(8, 2, batch_first=True)
    enc  = TransformerEncoderLayer(8, 2, 16, batch_first=True)
    emb  = Embedding(10, 8)
    forward(x: [3, 8, 8]) {
        x = pool(relu(bn(conv(x))))
        x = max_pool2d(adaptive_avg_pool2d(gn(x), 2), 1)
        h = seq(x).unsqueeze(1)
        h, s = rnn(h)
        h, s = gru(h)
        h, w = att(h, h, h)
        h = enc(cat([h, stack((h[:, 0], h[:, -1]), 1)], 1)).mean(1)
        return softmax(h @ h.transpose(0, 1), dim=-1), log_softmax(h ** 2 / 2 - 1, -1).view(-1)
    }
}
"""


def _torch_state() -> tuple:
    import torch

    return torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()


def _restore_torch_state(state: tuple) -> None:
    import torch

    threads, dtype, grad = state
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)


def _forget_modules_from(root: Path, before: dict) -> None:
    """Undo sys.modules entries for plugins imported from the scratch folder (custom.py
    registers as `specc_plugin_custom`, which must go on naming the shipped one)."""
    for name, module in list(sys.modules.items()):
        if before.get(name) is module:
            continue
        origin = getattr(module, "__file__", None) or ""
        if origin.startswith(str(root)):
            if name in before:
                sys.modules[name] = before[name]
            else:
                del sys.modules[name]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """One scratch folder per module, warmed up: the parser is built and torch's lazily
    imported parts are loaded before any case is timed."""
    root = tmp_path_factory.mktemp("fuzz")
    for f in COMPANIONS:
        shutil.copy(f, root / f.name)
    r = Runner(root)
    modules = dict(sys.modules)
    state = _torch_state()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("COLUMNS", "100")
        mp.delenv("SPECC_DEBUG", raising=False)
        try:
            if HAS_CODEGEN:
                r.path.write_bytes((SPECS / "cifar_net.spec").read_bytes())
                if r.run("compile").code == 0:
                    r.commands.append("compile")
            for data in [*SOURCES.values(), WARM_UP.encode()]:
                r.path.write_bytes(data)
                for command in r.commands:
                    r.run(command)
            yield r
        finally:
            _restore_torch_state(state)
            _forget_modules_from(root, modules)
            if os.environ.get("SPECC_FUZZ_STATS"):
                with open(os.environ["SPECC_FUZZ_STATS"], "a") as f:
                    f.write(json.dumps(dict(STATS)) + "\n")


# ---- fuzz tests -----------------------------------------------------------------------


@ci_settings(CI_GENERATED)
@given(text=specs())
def test_generated_specs(runner: Runner, text: str) -> None:
    runner.case(text.encode("utf-8"))


@pytest.mark.parametrize("name", sorted(SOURCES))
@ci_settings(CI_PER_FILE)
@given(data=st.data())
def test_mutated_specs(runner: Runner, name: str, data: st.DataObject) -> None:
    _, raw = data.draw(mutated({name: SOURCES[name]}))
    runner.case(raw.decode("utf-8", "replace").encode("utf-8"))


@ci_settings(CI_RAW)
@given(case=mutated(SOURCES))
def test_mutated_bytes(runner: Runner, case: tuple[str, bytes]) -> None:
    runner.case(case[1])


@pytest.mark.fuzz
@fuzz_settings(FUZZ_GENERATED)
@given(text=specs())
def test_generated_specs_long(runner: Runner, text: str) -> None:
    runner.case(text.encode("utf-8"))


@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(SOURCES))
@fuzz_settings(FUZZ_PER_FILE)
@given(data=st.data())
def test_mutated_specs_long(runner: Runner, name: str, data: st.DataObject) -> None:
    _, raw = data.draw(mutated({name: SOURCES[name]}))
    runner.case(raw.decode("utf-8", "replace").encode("utf-8"))


@pytest.mark.fuzz
@fuzz_settings(FUZZ_RAW)
@given(case=mutated(SOURCES))
def test_mutated_bytes_long(runner: Runner, case: tuple[str, bytes]) -> None:
    runner.case(case[1])


# ---- hostile cases --------------------------------------------------------------------


def xfail_bug(name: str, reproducer: str) -> pytest.MarkDecorator:
    assert name in KNOWN_BUGS, name
    return pytest.mark.xfail(
        strict=True,
        reason=f"specc bug `{name}`: {reproducer} (once fixed, remove this mark and "
        f"KNOWN_BUGS[{name!r}])",
    )


def located_error(runner: Runner, text: str, command: str = "check") -> Outcome:
    runner.path.write_text(text)
    o = runner.run(command)
    assert o.code == 2, o.err or o.raised
    assert runner.problem(o, text) is None, o.err
    assert o.seconds < TIME_LIMIT, f"{o.seconds:.2f} s"
    return o


@pytest.mark.parametrize(
    "text",
    [
        "model M { fc = Linear(10**12, 10) forward(x: [8]) { return x } }",
        "model M { fc = Linear(10**12, 10) forward(x: [1000000000000]) { return fc(x) } }",
        "model M { b = repeat(10**9, Linear(8, 8)) forward(x: [8]) { return b(x) } }",
        "model M { b = repeat(10**9, Sequential(Linear(_, 8), ReLU())) forward(x: [8]) "
        "{ return b(x) } }",
    ],
    ids=["linear-unused", "linear-called", "repeat", "repeat-sequential"],
)
def test_absurd_sizes_are_located_errors_with_an_estimate(runner: Runner, text: str) -> None:
    for command in runner.commands:
        o = located_error(runner, text, command)
        assert re.search(r"about [\d.,]+ [KMGTP]?B", o.err), o.err


NESTING = 5_000
DEEP = {
    "parentheses": "model M { forward(x: [4]) { return "
    + "(" * NESTING
    + "x"
    + ")" * NESTING
    + " } }",
    "parenthesised-argument": "model M { fc = Linear("
    + "(" * NESTING
    + "4"
    + ")" * NESTING
    + ", 2) forward(x: [4]) { return fc(x) } }",
    "brackets": "model M { forward(x: [4]) { return "
    + "[" * NESTING
    + "x"
    + "]" * NESTING
    + " } }",
    "unary-minus": "model M { forward(x: [4]) { return " + "-" * NESTING + "x } }",
    "calls": "model M { forward(x: [4]) { return "
    + "relu(" * NESTING
    + "x"
    + ")" * NESTING
    + " } }",
    "sum-chain": "model M { forward(x: [4]) { return x" + " + x" * NESTING + " } }",
    "method-chain": "model M { forward(x: [4]) { return x" + ".relu()" * NESTING + " } }",
    "sequential": "model M { s = "
    + "Sequential(" * NESTING
    + "ReLU()"
    + ")" * NESTING
    + " forward(x: [4]) { return s(x) } }",
    "argument-sum": "model M { fc = Linear(4" + " + 0" * NESTING + ", 2) forward(x: [4]) "
    "{ return fc(x) } }",
}


@pytest.mark.parametrize("kind", list(DEEP))
def test_deep_nesting_is_not_a_crash(runner: Runner, kind: str) -> None:
    runner.case(DEEP[kind].encode(), tolerate_known=False)


@pytest.mark.parametrize(
    "text",
    [
        "model M { forward(x: [4]) { return " + "relu(" * 95 + "x" + ")" * 95 + " } }",
        "model M { forward(x: [4]) { return x" + " + x" * 190 + " } }",
        "model M { s = "
        + "Sequential(" * 95
        + "ReLU()"
        + ")" * 95
        + " forward(x: [4]) { return s(x) } }",
    ],
    ids=["calls", "sum", "sequential"],
)
def test_nesting_within_the_limit_checks_and_compiles(runner: Runner, text: str) -> None:
    runner.path.write_text(text)
    for command in runner.commands:
        o = runner.run(command)
        assert o.code == 0, o.err or o.raised


def test_a_megabyte_of_comments_is_fast(runner: Runner) -> None:
    comments = "# " + "x" * 98 + "\n"
    text = comments * 10_486 + "model M { fc = Linear(4, 2) forward(x: [4]) { return fc(x) } }\n"
    assert len(text) > 1 << 20
    runner.case(text.encode(), tolerate_known=False)


def test_nul_bytes_are_a_located_error(runner: Runner) -> None:
    for command in runner.commands:
        located_error(runner, "\0" * 4096, command)


@pytest.mark.parametrize(
    "text",
    ["", "\n\n  \t\n", "# " + "x" * (1 << 20) + "\n", "data d { batch_size = 4 }"],
    ids=["empty", "whitespace", "megabyte-comment", "data-only"],
)
def test_a_spec_without_models_is_a_located_error(runner: Runner, text: str) -> None:
    runner.case(text.encode(), tolerate_known=False)


def test_non_utf8_is_a_located_error(runner: Runner) -> None:
    runner.case(b"model \xff", tolerate_known=False)


INT_LITERALS = {
    "leading-zero": "model M { fc = Linear(012, 2) forward(x: [4]) { return fc(x) } }",
    "hex-underscore": "model M { fc = Linear(0x_, 2) forward(x: [4]) { return fc(x) } }",
    "5000-digits": f"model M {{ fc = Linear({'9' * 5000}, 2) forward(x: [4]) {{ return fc(x) }} }}",
    "dim-leading-zero": "model M { forward(x: [010]) { return x } }",
    "dim-underscores": "model M { forward(x: [1__0]) { return x } }",
    "dim-5000-digits": f"model M {{ forward(x: [{'9' * 5000}]) {{ return x }} }}",
}


@pytest.mark.parametrize("kind", sorted(INT_LITERALS))
def test_odd_integer_literals_are_located_errors(runner: Runner, kind: str) -> None:
    runner.case(INT_LITERALS[kind].encode(), tolerate_known=False)


@pytest.mark.parametrize(
    "dims", ["100000000000, 100000000000", "99999999999999999999", "0, 99999999999999999999"]
)
def test_huge_input_dims_are_a_located_error(runner: Runner, dims: str) -> None:
    text = f"model M {{ forward(x: [{dims}]) {{ return x }} }}"
    for command in runner.commands:
        o = located_error(runner, text, command)
        assert re.search(r"about [\d.,]+ [KMGTP]?B", o.err), o.err


def test_strings_are_not_rich_markup(runner: Runner) -> None:
    text = 'model M { l = Identity("[/]") forward(x: [4]) { return l(x) } }'
    runner.case(text.encode(), tolerate_known=False)


def test_error_echoes_the_line_it_names(runner: Runner) -> None:
    text = "# \x0c\nmodel M {\n forward(x: [4]) {\n return yy } }\n"
    runner.case(text.encode(), tolerate_known=False)


def test_end_of_file_is_located_in_the_file(runner: Runner) -> None:
    runner.case(b"# \x0c\nmodel", tolerate_known=False)


# Forward calls used to run torch functions for real while checking (files written, the
# process's settings changed, gigabytes allocated); now they resolve to tensor operations
# only and run on meta.


@pytest.mark.parametrize(
    "call", ["zeros(4)", 'zeros(20000, 20000, device="cpu")[0, :4]'], ids=["small", "1.6GB"]
)
def test_factory_functions_run_on_meta(runner: Runner, call: str) -> None:
    runner.path.write_text(f"model M {{ forward(x: [4]) {{ return x + {call} }} }}")
    for command in runner.commands:
        o = runner.run(command)
        assert o.code == 0, o.err or o.raised
        assert o.seconds < TIME_LIMIT, f"{o.seconds:.2f} s"


def test_check_writes_no_files(runner: Runner) -> None:
    target = runner.root / "side_effect.pt"
    target.unlink(missing_ok=True)
    text = 'model M { forward(x: [4]) { y = save(x, "side_effect.pt")\n return x } }'
    runner.case(text.encode(), tolerate_known=False)
    assert not target.exists(), "`specc check` wrote side_effect.pt"


def test_check_leaves_the_process_alone(runner: Runner) -> None:
    import torch

    before = torch.get_num_threads()
    text = f"model M {{ forward(x: [4]) {{ y = set_num_threads({before + 1})\n return x }} }}"
    try:
        runner.case(text.encode(), tolerate_known=False)
        assert torch.get_num_threads() == before, "`specc check` changed torch's thread count"
    finally:
        torch.set_num_threads(before)


def _doubling_models(levels: int) -> str:
    lines = ["model M0 { fc = Linear(4, 4) forward(x: [4]) { return fc(x) } }"]
    for i in range(1, levels + 1):
        lines.append(
            f"model M{i} {{ a = M{i - 1}() b = M{i - 1}() forward(x: [4]) {{ return b(a(x)) }} }}"
        )
    return "\n".join(lines)


def test_nested_model_uses_are_not_exponential(runner: Runner) -> None:
    runner.case(_doubling_models(20).encode(), tolerate_known=False, hard_limit=TIME_LIMIT + 1)


def test_a_warning_before_the_error_is_a_located_error(runner: Runner) -> None:
    text = (
        "model Net {\n    init Linear.weight = normal_(0.0, 0.02)\n"
        "    forward(x: [1]) { return x }\n}\n"
        "data d { train = Digits(train=True)\n batch_size = 32 }\n"
        "train { model = Net()\n data = d\n loss = CrossEntropyLoss()\n"
        " optimizer = SGD(lr=0.1)\n epochs = 1 }\n"
    )
    o = located_error(runner, text)
    assert o.err.startswith("fuzz.spec:2:5: warning: init rule matches nothing")
    assert "fuzz.spec:10:14: error: the model has no parameters: nothing to optimize" in o.err
