"""Hypothesis strategies for the fuzz suite (tests/test_fuzz.py).

Two sources of spec text:

- `specs()`: grammar-aware generation. Random but mostly valid programs: models whose layers
  are real `torch.nn` constructors with small ints and `_` holes (plus `Sequential`,
  `repeat` and uses of earlier models), forward bodies that call them and torch functions,
  with arithmetic, indexing, methods and tuple returns; `sequential` blocks; concrete or
  named input shapes; `Parameter`/`Buffer` declarations read by forward, weight ties and
  `init` rules; sometimes `data` and `train` blocks. Each part is occasionally
  perturbed (a wrong size, an unknown name) so the error paths get exercised too.
- `mutated(sources)`: byte-level mutations of existing spec files: deleted, inserted,
  replaced and duplicated byte ranges, tokens of the grammar's vocabulary, swapped lines,
  unusual unicode and control characters, bit flips and truncation.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
GRAMMAR = ROOT / "grammars" / "specc.lark"


def grammar_literals() -> list[str]:
    """Every quoted literal of the grammar's rules: keywords and punctuation."""
    found: set[str] = set()
    for line in GRAMMAR.read_text("utf-8").splitlines():
        line = line.split("//", 1)[0] if not line.lstrip().startswith("|") else line
        if re.match(r"\s*[A-Z_]+\s*:", line):  # a terminal's regex, not a rule
            continue
        found.update(re.findall(r'"([^"\s]+)"', line))
    return sorted(found)


LAYER_NAMES = [
    "Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "BatchNorm1d", "BatchNorm2d",
    "LayerNorm", "GroupNorm", "Embedding", "LSTM", "GRU", "MultiheadAttention",
    "TransformerEncoderLayer", "ReLU", "GELU", "Tanh", "Sigmoid", "Identity", "Flatten",
    "Dropout", "Softmax", "LeakyReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "MaxPool1d", "Sequential", "repeat",
]  # fmt: skip
FUNCTION_NAMES = [
    "relu", "gelu", "sigmoid", "tanh", "flatten", "cat", "softmax", "log_softmax",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "dropout", "stack",
]  # fmt: skip
METHOD_NAMES = ["view", "mean", "sum", "reshape", "transpose", "unsqueeze", "permute", "size"]
VAR_NAMES = ["x", "h", "y", "z", "a", "b", "out", "feat", "q", "k"]
UNUSUAL_CHARS = [
    "\x00", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1e", "\x7f", "\x85", "\xa0",
    "\u2028", "\u2029", "\u200b", "\u202e", "\ufeff", "\ufffd", "é", "ß", "λ", "𝑥", "😀",
    "\\", "'", '"', "#", "\n", "{", "}", "(", ")", "[", "]", "_", "$", "`",
]  # fmt: skip
VOCABULARY = [
    *grammar_literals(),
    *LAYER_NAMES,
    *FUNCTION_NAMES,
    *VAR_NAMES,
    *METHOD_NAMES,
    "_", "0", "1", "-1", "2", "3", "16", "10**12", "1e-3", "0x10", "1_000", "1.5", "1e400",
    '"x"', "'y'", '"backbones.spec"', '"custom.py"', '"nope.py"', '""', '"\\n"', '"[/]"',
    "int", "float", "str", "long", "bool", "Net", "Block", "ConvNet", "Digits",
    "CrossEntropyLoss", "SGD", "#", "# comment\n", "\n", " ", "\t",
]  # fmt: skip


# ---- grammar-aware generation ---------------------------------------------------------


def _weighted(draw, *pairs):
    """Pick one of several values by integer weight."""
    total = sum(w for w, _ in pairs)
    k = draw(st.integers(0, total - 1))
    for w, v in pairs:
        if k < w:
            return v
        k -= w
    raise AssertionError("unreachable")  # pragma: no cover


@st.composite
def size(draw, params: tuple[str, ...] = (), lo: int = 1, hi: int = 16) -> str:
    """A size argument: mostly a small int, sometimes a parameter, arithmetic or nonsense."""
    kind = _weighted(
        draw, (12, "int"), (2, "param"), (2, "arith"), (1, "odd"), (1, "hole"), (1, "cond")
    )
    if kind == "param" and params:
        return draw(st.sampled_from(params))
    if kind == "cond":  # a static conditional over parameters (or an index `i`)
        subject = draw(st.sampled_from([*params, "i", "1", "True", "x"]))
        op = draw(st.sampled_from(["==", "!=", "<", ">=", "in", "is not", "and", "or"]))
        other = draw(st.sampled_from(["0", "2", "[1, 2]", "None", "not False"]))
        a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
        return f"{a} if {subject} {op} {other} else {b}"
    if kind == "arith":
        a, b = draw(st.integers(1, 8)), draw(st.integers(1, 4))
        op = draw(st.sampled_from(["*", "+", "-", "//", "**"]))
        return f"{a} {op} {b}"
    if kind == "odd":
        return draw(st.sampled_from(["0", "-1", "2.5", "True", "None", '"8"', "[2, 2]", "(4,)"]))
    if kind == "hole":
        return "_"
    return str(draw(st.integers(lo, hi)))


@st.composite
def in_size(draw, params: tuple[str, ...] = ()) -> str:
    """An input-size argument: usually `_`."""
    return "_" if draw(st.integers(0, 3)) else draw(size(params))


@st.composite
def layer_ctor(draw, params: tuple[str, ...] = (), models: tuple[str, ...] = (), depth=0) -> str:
    """A layer constructor expression: a torch.nn class, Sequential, repeat or a model."""
    s = size(params)
    i = in_size(params)
    choices = [
        (6, lambda: f"Linear({draw(i)}, {draw(s)})"),
        (
            1,
            lambda: (
                f"Linear({draw(i)}, {draw(s)}, bias={draw(st.sampled_from(['True', 'False']))})"
            ),
        ),
        (4, lambda: f"Conv2d({draw(i)}, {draw(s)}, {draw(size(params, 1, 5))})"),
        (2, lambda: f"Conv2d({draw(i)}, {draw(s)}, 3, padding={draw(size(params, 0, 2))})"),
        (1, lambda: f"Conv2d({draw(i)}, {draw(s)}, 3, stride=2, padding=1)"),
        (1, lambda: f"Conv1d({draw(i)}, {draw(s)}, {draw(size(params, 1, 3))})"),
        (1, lambda: f"ConvTranspose2d({draw(i)}, {draw(s)}, 2, stride=2)"),
        (2, lambda: f"BatchNorm2d({draw(i)})"),
        (1, lambda: f"BatchNorm1d({draw(i)})"),
        (2, lambda: f"LayerNorm({draw(i)})"),
        (1, lambda: f"GroupNorm({draw(size(params, 1, 4))}, {draw(i)})"),
        (1, lambda: f"Embedding({draw(size(params, 1, 64))}, {draw(s)})"),
        (1, lambda: f"LSTM({draw(i)}, {draw(s)}, batch_first=True)"),
        (1, lambda: f"GRU({draw(i)}, {draw(s)}, batch_first=True)"),
        (1, lambda: f"MultiheadAttention({draw(i)}, {draw(size(params, 1, 4))}, batch_first=1)"),
        (1, lambda: f"TransformerEncoderLayer({draw(i)}, 2, 32, batch_first=True)"),
        (3, lambda: draw(st.sampled_from(["ReLU()", "GELU()", "Tanh()", "Sigmoid()"]))),
        (1, lambda: draw(st.sampled_from(["Identity()", "Flatten()", "Flatten(1, -1)"]))),
        (1, lambda: f"Dropout({draw(st.sampled_from(['0.1', '0.5', '0', '1', '2', '-0.5']))})"),
        (1, lambda: f"Softmax(dim={draw(st.sampled_from(['1', '-1', '0', '5']))})"),
        (1, lambda: f"LeakyReLU({draw(st.sampled_from(['0.1', '0.01']))})"),
        (2, lambda: f"MaxPool2d({draw(size(params, 1, 3))})"),
        (1, lambda: f"MaxPool2d({draw(size(params, 1, 3))}, {draw(size(params, 1, 3))})"),
        (1, lambda: f"AvgPool2d({draw(size(params, 1, 3))})"),
        (1, lambda: f"AdaptiveAvgPool2d({draw(size(params, 1, 4))})"),
        (1, lambda: f"MaxPool1d({draw(size(params, 1, 3))})"),
        (1, lambda: f"{draw(st.sampled_from(['Lineer', 'conv2d', 'Foo', 'relu']))}(4)"),
    ]
    if depth < 2:
        choices.append((2, lambda: _sequential_ctor(draw, params, models, depth)))
        choices.append((2, lambda: _repeat_ctor(draw, params, models, depth)))
        choices.append((2, lambda: _conditional_ctor(draw, params, models, depth)))
    if models:
        choices.append((4, lambda: _model_use(draw, models, params)))
    make = _weighted(draw, *choices)
    return make()


def _sequential_ctor(draw, params, models, depth) -> str:
    n = draw(st.integers(0, 4))
    items = [draw(layer_ctor(params, models, depth + 1)) for _ in range(n)]
    if items and draw(st.integers(0, 4)) == 0:  # named entries
        items = [f"{draw(st.sampled_from(['head', 'fc', '0', 'x']))}={i}" for i in items]
    elif draw(st.integers(0, 4)) == 0:  # a splatted repeat, numbered on
        items.insert(
            draw(st.integers(0, len(items))), "*" + _repeat_ctor(draw, params, models, depth)
        )
    return f"Sequential({', '.join(items)})"


def _repeat_ctor(draw, params, models, depth) -> str:
    count = _weighted(
        draw,
        (8, lambda: str(draw(st.integers(1, 4)))),
        (1, lambda: draw(st.sampled_from(["0", "-2", "2.0", "100", "10**6", "True"]))),
        (1, lambda: draw(st.sampled_from(params)) if params else "2"),
    )()
    layer = draw(layer_ctor(params, models, depth + 1))
    if draw(st.integers(0, 2)) == 0:  # indexed: the layer may read `i`
        layer = f"{draw(st.sampled_from(['i', 'k', 'ch', '_']))} -> {layer}"
    prefix = draw(st.sampled_from(["", "", "", ', prefix="block_"', ', prefix="0"', ", prefix=1"]))
    return f"repeat({count}, {layer}{prefix})"


def _conditional_ctor(draw, params, models, depth) -> str:
    """`A if cond else B`, where B is often `None` (the layer is then absent)."""
    cond = draw(size(params)).replace(" if ", " == ").split(" else ")[0]
    other = draw(st.sampled_from(["None", "None", "Identity()", "fc"]))
    return f"{draw(layer_ctor(params, models, depth + 1))} if {cond} else {other}"


def _model_use(draw, models, params) -> str:
    name = draw(st.sampled_from(models))
    args = [draw(size(params)) for _ in range(draw(st.integers(0, 2)))]
    return f"{name}({', '.join(args)})"


@st.composite
def shape(draw, params: tuple[str, ...] = ()) -> str:
    """An input shape: [F], [C, H, W], [T, F], [T] long, named dims, or an odd one."""
    kind = _weighted(draw, (4, "vec"), (4, "img"), (2, "seq"), (1, "tok"), (1, "named"), (1, "odd"))
    d = st.integers(1, 16)
    if kind == "vec":
        return f"[{draw(d)}]"
    if kind == "img":
        c = draw(st.sampled_from(["1", "3", "8", *params]))
        hw = draw(st.sampled_from(["4", "8", "16", "32", "5"]))
        return f"[{c}, {hw}, {hw}]"
    if kind == "seq":
        return f"[{draw(d)}, {draw(d)}]"
    if kind == "tok":
        return f"[{draw(d)}] {draw(st.sampled_from(['long', 'int64', 'float', 'bool', 'cplx']))}"
    if kind == "named":
        dims = draw(st.lists(st.sampled_from(["C", "H", "W", "T", "N", "1", "8", *params]),
                             min_size=1, max_size=3))  # fmt: skip
        return f"[{', '.join(dims)}]"
    return draw(st.sampled_from(["[]", "[0]", "[1, 0, 3]", "[1,]", "[4, 4, 4, 4, 4]"]))


@st.composite
def expr(draw, names: tuple[str, ...], layers: tuple[str, ...], depth: int = 0) -> str:
    """A forward expression over defined variables, layers and torch functions."""
    var = st.sampled_from(names)
    if depth >= 3:
        return draw(var)
    sub = expr(names, layers, depth + 1)
    num = st.sampled_from(["1", "2", "0.5", "-1", "1e-3", "3"])
    choices = [
        (4, lambda: draw(var)),
        (1, lambda: f"({draw(sub)})"),
        (2, lambda: f"{draw(st.sampled_from(['relu', 'gelu', 'sigmoid', 'tanh']))}({draw(sub)})"),
        (2, lambda: f"flatten({draw(sub)}{draw(st.sampled_from(['', ', 1', ', 0', ', 1, -1']))})"),
        (1, lambda: f"softmax({draw(sub)}, dim={draw(st.sampled_from(['-1', '1', '0']))})"),
        (1, lambda: f"log_softmax({draw(sub)}, {draw(st.sampled_from(['-1', '1']))})"),
        (1, lambda: f"max_pool2d({draw(sub)}, {draw(st.sampled_from(['2', '1', '3']))})"),
        (1, lambda: f"adaptive_avg_pool2d({draw(sub)}, {draw(st.sampled_from(['1', '2']))})"),
        (1, lambda: f"cat([{draw(sub)}, {draw(sub)}], {draw(st.sampled_from(['1', '-1', '0']))})"),
        (1, lambda: f"stack(({draw(sub)}, {draw(sub)}), 1)"),
        (2, lambda: f"{draw(sub)} {draw(st.sampled_from(['+', '-', '*', '/', '@']))} {draw(sub)}"),
        (
            2,
            lambda: (
                f"{draw(sub)} {draw(st.sampled_from(['+', '*', '-', '//', '%', '**']))} {draw(num)}"
            ),
        ),  # fmt: skip
        (1, lambda: f"-{draw(sub)}"),
        (1, lambda: f"{draw(sub)}[{draw(st.sampled_from(_SUBSCRIPTS))}]"),
        (1, lambda: f"{draw(sub)}.{_method(draw)}"),
        (1, lambda: f"{draw(sub)}.shape"),
    ]
    if layers:
        layer = st.sampled_from(layers)
        choices.append((6, lambda: f"{draw(layer)}({draw(sub)})"))
        choices.append((1, lambda: f"{draw(layer)}({draw(sub)}, {draw(sub)}, {draw(sub)})"))
        choices.append((1, lambda: f"{draw(layer)}({draw(sub)})[0]"))
    return _weighted(draw, *choices)()


_SUBSCRIPTS = [":, 0", "..., :2", "0", ":, ::2", ":, -1", ":, 1:", "None", ":, :, 0", "...", "5"]


def _method(draw) -> str:
    return draw(
        st.sampled_from(
            [
                "view(-1)", "view(2, -1)", "mean(1)", "mean(-1)", "sum(-1)", "reshape(2, -1)",
                "transpose(1, 2)", "unsqueeze(1)", "squeeze()", "permute(0, 2, 1)",
                "contiguous()", "size(1)", "float()", "relu()", "flatten(1)", "softmax(-1)",
            ]
        )
    )  # fmt: skip


@st.composite
def forward_body(draw, inputs: tuple[str, ...], layers: tuple[str, ...]) -> list[str]:
    """Forward statements: a chain through the layers (mostly) or random dataflow."""
    names = list(inputs)
    stmts: list[str] = []
    x = names[0]
    if draw(st.integers(0, 2)) and layers:
        # The common shape of a model: each layer applied in order, with activations.
        order = list(layers)
        if draw(st.integers(0, 4)) == 0:
            order = draw(st.permutations(order))
        for i, layer in enumerate(order):
            inner = f"{layer}({x})"
            wrap = _weighted(draw, (5, "{}"), (2, "relu({})"), (1, "flatten({}, 1)"),
                             (1, "{}[0]"), (1, "dropout({}, 0.1)"))  # fmt: skip
            target = x if draw(st.integers(0, 3)) else f"t{i}"
            stmts.append(f"{target} = {wrap.format(inner)}")
            names.append(target)
            x = target
    if layers and draw(st.integers(0, 4)) == 0:
        stmts.append(_if_block(draw, tuple(dict.fromkeys(names)), layers))
    for _ in range(draw(st.integers(0, 4))):
        pool = tuple(dict.fromkeys(names))
        target = draw(st.sampled_from(VAR_NAMES))
        if draw(st.integers(0, 6)) == 0:
            second = draw(st.sampled_from(VAR_NAMES))
            value = draw(expr(pool, layers))
            if draw(st.booleans()):
                value += f", {draw(expr(pool, layers))}"
            stmts.append(f"{target}, {second} = {value}")
            names += [target, second]
        else:
            stmts.append(f"{target} = {draw(expr(pool, layers))}")
            names.append(target)
    pool = tuple(dict.fromkeys(names))
    last = names[-1]
    ret = _weighted(
        draw,
        (6, lambda: last),
        (2, lambda: draw(expr(pool, layers))),
        (1, lambda: f"{last}, {draw(st.sampled_from(pool))}"),
        (1, lambda: draw(st.sampled_from(["undefined_name", "_", "fc", "1"]))),
    )()
    if draw(st.integers(0, 19)) != 0:
        stmts.append(f"return {ret}")
    return stmts


def _if_block(draw, names: tuple[str, ...], layers: tuple[str, ...]) -> str:
    """A static `if` (with `else` or `else if`), or a parenthesised `a if c else b`."""
    x = names[-1]
    layer = st.sampled_from(layers)
    cond = draw(st.sampled_from([*layers, "True", "1 > 2", f"{x}.shape[1] == 4", f"{x}.sum() > 0"]))
    if draw(st.booleans()):
        return f"{x} = ({draw(layer)}({x}) if {cond} else {x})"
    then = f"{x} = {draw(layer)}({x})"
    orelse = draw(st.sampled_from(["", f" else {{ {x} = relu({x}) }}",
                                   f" else if not {cond} {{ return {x} }}",
                                   " else { fresh = 1 }"]))  # fmt: skip
    return f"if {cond} {{ {then} }}{orelse}"


INIT_FUNCTIONS = ["normal_(0.0, 0.02)", "zeros_()", "ones_()", "constant_(0.5)",
                  "uniform_(-0.1, 0.1)", "trunc_normal_(std=0.02)", "xavier_uniform_()",
                  "kaiming_normal_()", "normal(0.0, 0.02)", "orthogonal_()"]  # fmt: skip
INIT_MATCHES = ["Linear.weight", "Linear.bias", "Conv2d.weight", "Embedding.weight",
                "LayerNorm.weight", "Linaer.weight", "Linear.in_features", '"*.weight"',
                '"*.bias"', '"fc.*"', '"nothing.*"']  # fmt: skip


@st.composite
def held_tensor(draw, params: tuple[str, ...] = ()) -> str:
    """A `Parameter(...)`/`Buffer(...)` declaration's value: a tensor expression."""
    dims = ", ".join(draw(size(params, 1, 8)) for _ in range(draw(st.integers(1, 3))))
    value = _weighted(
        draw,
        (3, lambda: f"zeros({dims})"),
        (3, lambda: f"randn({dims}) * 0.02"),
        (2, lambda: f"1e-5 * ones({dims})"),
        (1, lambda: f"1.0 / 10000 ** (arange(0, {draw(size(params))}, 2).float() / 8)"),
        (1, lambda: f"{draw(st.sampled_from(['zeros', 'rand', 'bogus', 'save']))}({dims})"),
        (1, lambda: draw(st.sampled_from(["5", "x", "_", "arange(4)", "zeros(2) + ones(3)"]))),
    )()
    return _weighted(
        draw,
        (4, lambda: f"Parameter({value})"),
        (2, lambda: f"Buffer({value})"),
        (1, lambda: f"Buffer({value}, persistent=False)"),
        (1, lambda: f"Parameter({value}, requires_grad={draw(st.sampled_from(['False', '1']))})"),
    )()


@st.composite
def model_extras(draw, layers: tuple[str, ...]) -> list[str]:
    """Ties and init rules, mostly over the model's own layer names."""
    out = []
    pool = [*layers, "missing"] if layers else ["fc", "missing"]
    for _ in range(_weighted(draw, (4, 0), (2, 1), (1, 2))):
        a, b = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
        attr = draw(st.sampled_from(["weight", "weight", "bias", "weights", "0.weight"]))
        out.append(f"{a}.{attr} = {b}.weight")
    for _ in range(_weighted(draw, (3, 0), (2, 1), (1, 3))):
        match, fn = draw(st.sampled_from(INIT_MATCHES)), draw(st.sampled_from(INIT_FUNCTIONS))
        out.append(f"init {match} = {fn}")
    return out


@st.composite
def model_params(draw) -> list[tuple[str, str]]:
    """Model parameters as (name, text) pairs: `ch: int = 8`, `p: float = 0.5`, `n`."""
    out: list[tuple[str, str]] = []
    for name in draw(st.lists(st.sampled_from(["ch", "n", "hidden", "C", "p", "k"]),
                              max_size=3, unique=True)):  # fmt: skip
        typ = draw(st.sampled_from(["", ": int", ": float", ": str", ": any", ": integer"]))
        default = _weighted(
            draw,
            (6, lambda: f" = {draw(st.integers(1, 16))}"),
            (1, lambda: ""),
            (1, lambda: draw(st.sampled_from([' = "x"', " = 0.5", " = True", " = [1, 2]"]))),
        )()
        out.append((name, f"{name}{typ}{default}"))
    return out


@st.composite
def model_block(draw, name: str, models: tuple[str, ...]) -> str:
    """A `model Name(params) { layers; forward(...) { ... } }` block."""
    params = draw(model_params())
    pnames = tuple(p for p, _ in params)
    int_params = tuple(p for p, text in params if "= " in text and text.split("= ")[1].isdigit())
    n_layers = draw(st.integers(0, 5))
    lnames = draw(st.lists(st.sampled_from(["fc", "conv", "bn", "l1", "l2", "l3", "head",
                                            "body", "act", "pool", "emb", "rnn"]),
                           min_size=n_layers, max_size=n_layers, unique=True))  # fmt: skip
    layers = [f"{ln} = {draw(layer_ctor(int_params or pnames, models))}" for ln in lnames]
    held = draw(st.lists(st.sampled_from(["gamma", "pos", "cls_token", "freqs", "fc"]),
                         max_size=2, unique=True))  # fmt: skip
    layers += [f"{h} = {draw(held_tensor(int_params or pnames))}" for h in held]
    layers += draw(model_extras(tuple(lnames)))
    n_inputs = _weighted(draw, (8, 1), (2, 2), (1, 0))
    in_names = draw(st.lists(st.sampled_from(["x", "y", "tokens", "img"]), min_size=n_inputs,
                             max_size=n_inputs, unique=True))  # fmt: skip
    inputs = ", ".join(f"{n}: {draw(shape(int_params))}" for n in in_names)
    body = draw(forward_body(tuple(in_names) or ("x",), tuple(lnames)))
    if held and draw(st.booleans()):  # read a held tensor by name (or call it: an error)
        h = held[0]
        read = draw(st.sampled_from([f"* {h}", f"+ {h}.mean()", f"* {h}.sum()", f"+ {h}(1)"]))
        body.insert(
            0, f"{in_names[0] if in_names else 'x'} = {in_names[0] if in_names else 'x'} {read}"
        )
    sep = draw(st.sampled_from(["\n        ", "; ", " ", "\n\n        "]))
    ptext = f"({', '.join(t for _, t in params)})" if params or draw(st.booleans()) else ""
    lines = [f"model {name}{ptext} {{"]
    lines += [f"    {layer}" + _comment(draw) for layer in layers]
    if draw(st.integers(0, 15)):
        lines.append(f"    forward({inputs}) {{")
        lines.append("        " + sep.join(body))
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines)


@st.composite
def sequential_block(draw, name: str, models: tuple[str, ...]) -> str:
    """A compact `sequential Name { input(x: [...]) Layer() ... }` block."""
    params = draw(model_params())
    int_params = tuple(p for p, text in params if "= " in text and text.split("= ")[1].isdigit())
    lines = [f"sequential {name}({', '.join(t for _, t in params)}) {{"]
    if draw(st.integers(0, 3)):
        lines.append(f"    input(x: {draw(shape(int_params))})")
    for _ in range(draw(st.integers(0, 5))):
        ctor = draw(layer_ctor(int_params, models))
        named = draw(st.sampled_from(["", "", "", "fc = ", "out = ", "h = "]))
        lines.append(f"    {named}{ctor}" + _comment(draw))
    lines.append("}")
    return "\n".join(lines)


def _comment(draw) -> str:
    return draw(st.sampled_from(["", "", "", "  # a comment", ";", "  #", "  # ünïcödé"]))


@st.composite
def coherent_model(draw, name: str) -> str:
    """A model that should check: a chain of layers that fit the input, sometimes with a
    generic block used inside it, then occasionally one perturbed argument."""
    kind = draw(st.sampled_from(["vec", "img", "seq", "tok"]))
    width = draw(st.sampled_from([4, 8, 16]))
    pre: list[str] = []
    layers: list[tuple[str, str]] = []  # (name, ctor)
    stmts: list[str] = []

    def add(ctor: str, call: str = "x = {}(x)") -> None:
        lname = f"l{len(layers)}"
        layers.append((lname, ctor))
        stmts.append(call.format(lname))

    if kind == "img":
        hw = draw(st.sampled_from([8, 16, 32]))
        shape_text = f"[{draw(st.sampled_from([1, 3]))}, {hw}, {hw}]"
        for _ in range(draw(st.integers(1, 3))):
            c = draw(st.sampled_from([4, 8, 16]))
            add(f"Conv2d(_, {c}, 3, padding=1)", draw(st.sampled_from(
                ["x = {}(x)", "x = relu({}(x))"])))  # fmt: skip
            if draw(st.booleans()):
                add("BatchNorm2d(_)")
            if hw >= 4 and draw(st.booleans()):
                hw //= 2
                if draw(st.booleans()):
                    add("MaxPool2d(2)")
                else:
                    stmts.append("x = max_pool2d(x, 2)")
        if draw(st.integers(0, 2)) == 0:
            add(f"repeat({draw(st.integers(1, 3))}, Sequential(Conv2d(_, {c}, 3, padding=1), "
                "ReLU()))")  # fmt: skip
        if draw(st.booleans()):
            stmts.append("x = adaptive_avg_pool2d(x, 1)")
        stmts.append(draw(st.sampled_from(["x = flatten(x, 1)", "x = x.flatten(1)",
                                           "x = x.view(x.size(0), -1)"])))  # fmt: skip
    elif kind == "vec":
        shape_text = f"[{draw(st.integers(1, 32))}]"
    elif kind == "seq":
        t = draw(st.integers(1, 8))
        shape_text = f"[{t}, {width}]"
        choice = draw(st.integers(0, 2))
        if choice == 0:
            add(f"LSTM({width}, {width}, batch_first=True)", "x, state = {}(x)")
        elif choice == 1:
            add(f"TransformerEncoderLayer({width}, 2, 32, batch_first=True)")
        else:
            add(f"MultiheadAttention({width}, 2, batch_first=True)", "x, w = {}(x, x, x)")
        stmts.append(draw(st.sampled_from(["x = x[:, -1]", "x = x.mean(1)", "x = x[:, 0, :]"])))
    else:
        shape_text = f"[{draw(st.integers(1, 16))}] long"
        add(f"Embedding({draw(st.integers(2, 100))}, {width})")
        stmts.append("x = x.mean(1)")
    for _ in range(draw(st.integers(0, 3))):
        act = draw(st.sampled_from(["relu", "gelu", "tanh", "sigmoid"]))
        add(f"Linear(_, {width})", f"x = {act}({{}}(x))")
        if draw(st.integers(0, 3)) == 0:
            add(draw(st.sampled_from(["LayerNorm(_)", "Dropout(0.1)", "BatchNorm1d(_)"])))
    if draw(st.integers(0, 3)) == 0:
        pre.append(
            f"model {name}Res(ch: int) {{\n    fc = Linear(ch, ch)\n    forward(x: [ch]) {{\n"
            "        return x + relu(fc(x))\n    }\n}\n\n"
        )
        add(f"Linear(_, {width})")
        add(f"repeat({draw(st.integers(1, 3))}, {name}Res({width}))")
    if draw(st.integers(0, 2)) == 0:  # a tensor the model holds, read by forward
        role = draw(st.sampled_from(["Parameter", "Buffer"]))
        layers.append(("gain", f"{role}(1e-5 * ones(1) + 1.0)"))
        stmts.append("x = x * gain")
    out = draw(st.integers(1, 10))
    add(f"Linear(_, {out})", draw(st.sampled_from(
        ["return {}(x)", "return softmax({}(x), dim=-1)", "y = {}(x)\n        return y, x",
         "return log_softmax({}(x), 1)"])))  # fmt: skip
    if draw(st.integers(0, 4)) == 0:  # perturb one argument
        i = draw(st.integers(0, len(layers) - 1))
        lname, ctor = layers[i]
        hole = re.compile(r"(?<!\w)_(?!\w)")
        layers[i] = (lname, hole.sub(str(draw(st.integers(1, 64))), ctor, count=1))
    lines = [f"model {name} {{"]
    lines += [f"    {n} = {c}" for n, c in layers]
    if draw(st.integers(0, 2)) == 0:  # init rules, nanoGPT-like (a rule may match nothing)
        lines += ["    init Linear.weight = normal_(0.0, 0.02)", "    init Linear.bias = zeros_()"]
        lines.append(f'    init "{layers[-1][0]}.*" = {draw(st.sampled_from(INIT_FUNCTIONS[:5]))}')
    lines.append(f"    forward(x: {shape_text}) {{")
    lines += [f"        {s}" for s in stmts]
    lines += ["    }", "}"]
    return "".join(pre) + "\n".join(lines)


DATA_BLOCK = """data digits {
    train      = Digits(train=True)
    test       = Digits(train=False)
    batch_size = %s
}"""
TRAIN_BLOCK = """train {
    model     = %s
    data      = %s
    loss      = %s
    optimizer = %s
    epochs    = %s
}"""


@st.composite
def specs(draw) -> str:
    """A whole spec: one to three models or sequential blocks, maybe data and train."""
    n = _weighted(draw, (6, 1), (3, 2), (1, 3), (1, 0))
    names: list[str] = []
    blocks: list[str] = []
    for i in range(n):
        name = draw(st.sampled_from(["Net", "Block", "Head", "Tower", "MLP", "Enc"]))
        if name in names:
            name = f"{name}{i}"
        style = draw(st.integers(0, 9))
        if style < 7:
            blocks.append(draw(coherent_model(name)))
        elif style < 9:
            blocks.append(draw(model_block(name, tuple(names))))
        else:
            blocks.append(draw(sequential_block(name, tuple(names))))
        names.append(name)
    if draw(st.integers(0, 3)) == 0:
        blocks.append(DATA_BLOCK % draw(st.sampled_from(["32", "0", '"x"', "1.5"])))
        model = f"{names[-1]}()" if names else "Net()"
        blocks.append(
            TRAIN_BLOCK
            % (
                draw(st.sampled_from([model, model, "Nope()", "3"])),
                draw(st.sampled_from(["digits", "digits", "cifar"])),
                draw(st.sampled_from(["CrossEntropyLoss()", "MSELoss()", "NoLoss()"])),
                draw(st.sampled_from(["SGD(lr=0.1)", "AdamW(lr=1e-3)", "Nope()"])),
                draw(st.sampled_from(["1", "0", "-1"])),
            )
        )
    if draw(st.integers(0, 9)) == 0:
        blocks.insert(0, draw(st.sampled_from(['import "backbones.spec"', 'import "nope.spec"'])))
    head = draw(st.sampled_from(["", "", "# generated spec\n", "\n\n"]))
    return head + "\n\n".join(blocks) + draw(st.sampled_from(["\n", "", "\n\n"]))


# ---- byte-level mutation --------------------------------------------------------------

MUTATION_KINDS = (
    "delete", "insert", "replace", "duplicate", "token", "swap_lines", "unicode", "flip",
    "truncate",
)  # fmt: skip


@st.composite
def mutation(draw) -> tuple[str, int, int, bytes]:
    """One edit: (kind, position, length or second position, payload)."""
    kind = draw(st.sampled_from(MUTATION_KINDS))
    pos = draw(st.integers(0, 1 << 16))
    arg = (
        draw(st.integers(0, 1 << 16))
        if kind in ("swap_lines", "duplicate")
        else draw(st.integers(1, 24))
    )
    payload = b""
    if kind in ("insert", "replace"):
        payload = draw(st.binary(min_size=1, max_size=8))
    elif kind == "token":
        payload = (" " + draw(st.sampled_from(VOCABULARY)) + " ").encode()
    elif kind == "unicode":
        text = draw(
            st.lists(
                st.one_of(
                    st.sampled_from(UNUSUAL_CHARS),
                    st.characters(exclude_categories=("Cs",)),
                ),
                min_size=1,
                max_size=4,
            )
        )
        payload = "".join(text).encode("utf-8")
    return kind, pos, arg, payload


def apply_mutation(data: bytes, m: tuple[str, int, int, bytes]) -> bytes:
    """Apply one edit; positions wrap around the current length."""
    kind, pos, arg, payload = m
    n = len(data)
    i = pos % (n + 1)
    if kind == "delete":
        return data[:i] + data[i + arg :]
    if kind in ("insert", "token", "unicode"):
        return data[:i] + payload + data[i:]
    if kind == "replace":
        return data[:i] + payload + data[i + len(payload) :]
    if kind == "duplicate":
        j = arg % (n + 1)
        chunk = data[i : i + 1 + (arg % 64)]
        return data[:j] + chunk + data[j:]
    if kind == "flip":
        if not n:
            return data
        i %= n
        return data[:i] + bytes([data[i] ^ (1 << (arg % 8))]) + data[i + 1 :]
    if kind == "swap_lines":
        lines = data.split(b"\n")
        a, b = i % len(lines), arg % len(lines)
        lines[a], lines[b] = lines[b], lines[a]
        return b"\n".join(lines)
    if kind == "truncate":
        return data[:i]
    raise ValueError(kind)  # pragma: no cover


@st.composite
def mutated(draw, sources: dict[str, bytes]) -> tuple[str, bytes]:
    """(source name, mutated bytes): one to five edits of one of `sources`."""
    name = draw(st.sampled_from(sorted(sources)))
    data = sources[name]
    for m in draw(st.lists(mutation(), min_size=1, max_size=5)):
        data = apply_mutation(data, m)
    return name, data
