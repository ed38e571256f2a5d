"""The IR: frozen Pydantic models, the single source of truth for every later stage.

Two layers live here:

* the *program* (``Program``): models, data and train blocks as written, with forward
  bodies lowered to SSA-like ``FNode`` lists. Names are still unresolved strings.
* the *checked instance* (``ModelInstance``): one concrete use of a model after name
  resolution and shape inference, with every ``_`` filled in, every constructor argument a
  literal, and every forward value's shape known. The builder runs its folded ``nodes``.

The code generator writes the ``ModelDef`` as the user wrote it (names, parameters and
statements kept) and takes from the instances only what the definition lacks: the
values of ``_`` and the shapes for comments. Nothing in the IR forces the two back-ends to
agree; ``test_same_module_as_builder`` (tests/test_codegen.py) builds every spec both ways
and compares state_dict keys, initial weights and outputs.

Every node carries a ``Span``. ``Program.model_dump_json()`` round-trips losslessly.
``Node.children``/``walk``/``find_all``/``map`` are the one generic walk over the tree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

_N = TypeVar("_N", bound="Node")


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def children(self) -> Iterator[Node]:
        """The nodes directly below this one, in field order (spans are not children)."""
        return iter(self._children())

    def _children(self) -> list[Node]:
        # A list, not a chain of generators: walks visit every node of a spec several
        # times, and resuming nested generators cost more than the visit itself.
        out: list[Node] = []
        for field in _node_fields(type(self)):
            _collect_nodes(getattr(self, field), out)
        return out

    def walk(self) -> Iterator[Node]:
        """This node and every node below it, depth first, parents before children."""
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            yield node
            kids = node._children()
            kids.reverse()
            stack += kids

    def find_all(self, *types: type[_N]) -> Iterator[_N]:
        """Every node of one of `types`, in `walk()` order."""
        return (n for n in self.walk() if isinstance(n, types))  # type: ignore[misc]

    def find(self, *types: type[_N]) -> _N | None:
        """The first node of one of `types` in `walk()` order, or None."""
        for n in self.walk():
            if isinstance(n, types):
                return n  # type: ignore[return-value]
        return None

    def map(self, fn: Callable[[Node], Any]) -> Any:
        """Rebuild bottom-up: each child is mapped first, then `fn` gets this node with its
        mapped children in place (sqlglot's `Expression.transform`, children first)."""
        update = {}
        for field in _node_fields(type(self)):
            value = getattr(self, field)
            # A node field maps directly: one stack frame per level of a deep expression.
            direct = isinstance(value, Node) and not isinstance(value, Span)
            mapped = value.map(fn) if direct else _map_in(value, fn)
            if mapped is not value:
                update[field] = mapped
        return fn(self.model_copy(update=update) if update else self)


@functools.cache
def _node_fields(cls: type[Node]) -> tuple[str, ...]:
    """The fields of `cls` whose type admits a node other than a span, in field order: the
    only ones `children` and `map` need to look into (a name, an operator or a span never
    holds a child)."""
    return tuple(name for name, f in cls.model_fields.items() if _admits_nodes(f.annotation))


def _admits_nodes(tp: Any) -> bool:
    origin = get_origin(tp)
    if origin is Literal:
        return False
    if origin is Annotated:
        return _admits_nodes(get_args(tp)[0])
    if origin is not None:  # a union, list[...], dict[...], tuple[...]
        return any(_admits_nodes(arg) for arg in get_args(tp))
    if tp is Any or not isinstance(tp, type):
        return True  # anything may be there
    return issubclass(tp, Node) and not issubclass(tp, Span)


def _collect_nodes(value: Any, out: list[Node]) -> None:
    """Append the nodes in `value` (a node, or lists, tuples and dicts of them) to `out`."""
    if isinstance(value, Node):
        if not isinstance(value, Span):
            out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, Node) and not isinstance(item, Span):
                out.append(item)
            else:
                _collect_nodes(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_nodes(item, out)


def _map_in(value: Any, fn: Callable[[Node], Any]) -> Any:
    """`value` with the nodes in it mapped; `value` itself when it holds none. Plain loops,
    not comprehensions: fewer stack frames per level of a deep expression."""
    if isinstance(value, Node):
        return value if isinstance(value, Span) else value.map(fn)
    if isinstance(value, (list, tuple)):
        items = []
        for v in value:
            items.append(
                v.map(fn) if isinstance(v, Node) and not isinstance(v, Span) else _map_in(v, fn)
            )
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    if isinstance(value, dict):
        mapped = {}
        for k, v in value.items():
            mapped[k] = _map_in(v, fn)
        return mapped if any(mapped[k] is not v for k, v in value.items()) else value
    return value


class Span(Node):
    file: str
    line: int
    column: int
    end_line: int
    end_column: int


# ---- expressions ----------------------------------------------------------------------
# A small expression language shared by layer arguments, data/train fields and forward.


class Const(Node):
    kind: Literal["const"] = "const"
    value: int | float | str | bool | None
    span: Span | None = None


class Name(Node):
    kind: Literal["name"] = "name"
    id: str
    span: Span | None = None


class Hole(Node):
    """`_`: an argument the incoming shape determines; `id` is unique within its model."""

    kind: Literal["hole"] = "hole"
    id: int
    span: Span | None = None


class Ellipsis_(Node):
    kind: Literal["ellipsis"] = "ellipsis"
    span: Span | None = None


class ListExpr(Node):
    kind: Literal["list"] = "list"
    items: list[Expr]
    span: Span | None = None


class TupleExpr(Node):
    kind: Literal["tuple"] = "tuple"
    items: list[Expr]
    span: Span | None = None


class SliceExpr(Node):
    kind: Literal["slice"] = "slice"
    start: Expr | None = None
    stop: Expr | None = None
    step: Expr | None = None
    span: Span | None = None


BinOpName = Literal[
    "add", "sub", "mul", "div", "floordiv", "mod", "matmul", "pow",
    # comparisons: one per expression (no chains), Python's meaning
    "eq", "ne", "lt", "le", "gt", "ge", "is", "is_not", "in", "not_in",
]  # fmt: skip


class BinOp(Node):
    kind: Literal["binop"] = "binop"
    op: BinOpName
    left: Expr
    right: Expr
    span: Span | None = None


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: Expr
    span: Span | None = None


class BoolOp(Node):
    """`left and right`, `left or right`: Python's short-circuit, on constants."""

    kind: Literal["boolop"] = "boolop"
    op: Literal["and", "or"]
    left: Expr
    right: Expr
    span: Span | None = None


class Not(Node):
    kind: Literal["not"] = "not"
    operand: Expr
    span: Span | None = None


class IfExp(Node):
    """`body if test else orelse`; `test` is decided when the model is built."""

    kind: Literal["ifexp"] = "ifexp"
    test: Expr
    body: Expr
    orelse: Expr
    span: Span | None = None


class Lambda(Node):
    """`i -> expr`: the layer of `repeat(n, i -> ...)` as a function of its index."""

    kind: Literal["lambda"] = "lambda"
    param: str
    body: Expr
    span: Span | None = None


class Starred(Node):
    """`*repeat(...)` among `Sequential`'s layers: its instances spliced in place."""

    kind: Literal["starred"] = "starred"
    value: Expr
    span: Span | None = None


class Call(Node):
    kind: Literal["call"] = "call"
    func: str
    args: list[Expr] = Field(default_factory=list)
    kwargs: dict[str, Expr] = Field(default_factory=dict)
    span: Span | None = None
    # Span of the callee name alone, for "unknown name" carets.
    func_span: Span | None = None


class MethodCall(Node):
    """`receiver.method(args)`."""

    kind: Literal["method_call"] = "method_call"
    receiver: Expr
    method: str
    args: list[Expr] = Field(default_factory=list)
    kwargs: dict[str, Expr] = Field(default_factory=dict)
    span: Span | None = None
    method_span: Span | None = None


class Attribute(Node):
    """`value.attr`, e.g. `x.shape`."""

    kind: Literal["attribute"] = "attribute"
    value: Expr
    attr: str
    span: Span | None = None
    attr_span: Span | None = None


class Index(Node):
    """`value[index]`; several subscripts (`x[:, 0]`) are one TupleExpr index."""

    kind: Literal["index"] = "index"
    value: Expr
    index: Expr
    span: Span | None = None


# Everything that is written with call or subscript syntax: not a constant.
CALL_LIKE = (Call, MethodCall, Attribute, Index)


class Ref(Node):
    """A forward value: the output of SSA node `node` (element `index` if it is unpacked)."""

    kind: Literal["ref"] = "ref"
    node: str
    index: int | None = None
    span: Span | None = None


Expr = Annotated[
    Const
    | Name
    | Hole
    | Ellipsis_
    | ListExpr
    | TupleExpr
    | SliceExpr
    | BinOp
    | Neg
    | BoolOp
    | Not
    | IfExp
    | Lambda
    | Starred
    | Call
    | MethodCall
    | Attribute
    | Index
    | Ref,
    Field(discriminator="kind"),
]

# The expression classes that refer to `Expr` could not be completed where they were defined.
# Completing them here, before any later class uses `Expr`, lets those classes reuse their
# schemas; left to the loop at the end, each later class rebuilt the whole expression family
# again (importing this module took 0.45-0.65 s instead of 0.2 s).
for _cls in get_args(get_args(Expr)[0]):
    _cls.model_rebuild()


# ---- forward graph --------------------------------------------------------------------

FOp = Literal[
    "input",  # a forward argument
    "call",  # before resolution: a call of a name (layer or function)
    "layer",  # a declared layer: target is its attribute name
    "function",  # a torch function: target is its qualified name, e.g. torch.nn.functional.relu
    "method",  # a tensor method: args[0] is the receiver
    "operator",  # + - * / // % @ ** and unary -; target is the operator name
    "getitem",  # indexing/slicing; args = [value, index]
    "attribute",  # x.shape, x.T, ...
    "alias",  # `y = x`: a new name for an existing value
    # A static `if`: "if" (args = [condition]) opens the block, "else" and "endif" (target =
    # the if node's name) mark its parts; "phi" after "endif" (target = the if node) is the
    # value of a variable the block may rebind: args = [its value if taken, if not].
    "if",
    "else",
    "endif",
    "phi",
    "get_attr",  # a tensor the model holds (`Parameter`/`Buffer`): target is its name
    "output",  # the return statement; args are the returned values
]


class FNode(Node):
    name: str  # unique SSA name
    op: FOp
    target: str = ""
    args: list[Expr] = Field(default_factory=list)
    kwargs: dict[str, Expr] = Field(default_factory=dict)
    # The spec variables this node's value is assigned to (several: tuple unpacking).
    vars: list[str] = Field(default_factory=list)
    span: Span


class Dim(Node):
    """A dimension of a declared input shape: a size, or a name bound at each use."""

    value: int | str
    span: Span


class Input(Node):
    name: str
    shape: list[Dim]
    dtype: str | None = None
    span: Span


class Forward(Node):
    inputs: list[Input]
    nodes: list[FNode]
    span: Span


# ---- models ---------------------------------------------------------------------------


class Param(Node):
    name: str
    type: str | None = None
    default: Expr | None = None
    span: Span


class Layer(Node):
    name: str
    ctor: Expr  # usually a Call; `repeat(n, X)` and `Sequential(...)` included
    span: Span
    anonymous: bool = False  # unnamed entry of a `sequential` model


class Tie(Node):
    """`lm_head.weight = wte.weight`: the parameter at `target` becomes the one at `source`
    (paths into this model's layers). The checker fills in the shared tensor's `shape` and
    `params` (its element count, counted once)."""

    target: str
    source: str
    span: Span
    target_span: Span
    source_span: Span
    shape: list[int] = Field(default_factory=list)
    params: int = 0


class InitRule(Node):
    """`init Linear.weight = normal_(0.0, 0.02)` (`module_type` and `attr`) or
    `init "*.c_proj.weight" = ...` (`glob` over parameter names): a `torch.nn.init` function
    applied after construction and ties. In a checked instance `module_type` and `func` are
    qualified (torch.nn.Linear, torch.nn.init.normal_) and the arguments are literals."""

    func: str
    args: list[Expr] = Field(default_factory=list)
    kwargs: dict[str, Expr] = Field(default_factory=dict)
    module_type: str | None = None
    attr: str | None = None
    glob: str | None = None
    span: Span
    func_span: Span | None = None


class ModelDef(Node):
    name: str
    kind: Literal["model", "sequential"] = "model"
    params: list[Param] = Field(default_factory=list)
    layers: list[Layer] = Field(default_factory=list)
    ties: list[Tie] = Field(default_factory=list)
    inits: list[InitRule] = Field(default_factory=list)
    forward: Forward | None = None
    span: Span
    file: str


# ---- data and training ----------------------------------------------------------------


class FieldDef(Node):
    key: str
    value: Expr
    span: Span


class DataDef(Node):
    name: str
    fields: list[FieldDef]
    span: Span


class InitStmt(Node):
    target: str | None  # sub-module path, or None for the whole model
    path: str
    options: dict[str, Expr] = Field(default_factory=dict)
    span: Span


class FreezeStmt(Node):
    patterns: list[str]
    span: Span


class GroupStmt(Node):
    """`group "backbone.*" (lr=1e-4)`: optimizer options for matching parameters."""

    patterns: list[str]
    options: dict[str, Expr] = Field(default_factory=dict)
    span: Span


class LoraStmt(Node):
    """`lora "attn.c_attn", "re:h\\.0\\..*" (r=8, alpha=16)`: low-rank adapters on the
    matching Linear layers; only they (and `modules_to_save`) train."""

    patterns: list[str]
    options: dict[str, Expr] = Field(default_factory=dict)
    span: Span


class TrainDef(Node):
    name: str | None = None
    fields: list[FieldDef] = Field(default_factory=list)
    inits: list[InitStmt] = Field(default_factory=list)
    freezes: list[FreezeStmt] = Field(default_factory=list)
    groups: list[GroupStmt] = Field(default_factory=list)
    loras: list[LoraStmt] = Field(default_factory=list)
    span: Span


class ImportStmt(Node):
    path: str
    span: Span


class PluginStmt(Node):
    target: str
    span: Span


class SourceFile(Node):
    path: str
    text: str
    sha256: str


class Program(Node):
    """A whole spec, with the files it imported."""

    sources: list[SourceFile]
    imports: list[ImportStmt] = Field(default_factory=list)
    plugins: list[PluginStmt] = Field(default_factory=list)
    models: list[ModelDef] = Field(default_factory=list)
    data: list[DataDef] = Field(default_factory=list)
    trains: list[TrainDef] = Field(default_factory=list)

    def model(self, name: str) -> ModelDef | None:
        return next((m for m in self.models if m.name == name), None)


# ---- checked instances (output of the shape pass) -------------------------------------


class BatchDim(Node):
    """A size that depends on the batch size B: `scale * B + offset` for every B."""

    scale: int
    offset: int = 0

    def at(self, batch: int) -> int:
        return self.scale * batch + self.offset


# A size as the checker knows it: fixed, a function of the batch size, or "?" (it changes
# with the batch size, but not as `a * B + c`).
Size = int | BatchDim | Literal["?"]


class TensorType(Node):
    """A tensor type as the checker saw it, right for every batch size. `batched`: the
    leading dimension is exactly B and `shape` holds the dimensions after it (per sample);
    otherwise `shape` is the whole shape. Any dimension of `shape` may depend on B."""

    shape: list[Size]
    dtype: str
    batched: bool = True

    def fixed(self) -> bool:
        """Is every dimension of `shape` the same for every batch size?"""
        return all(isinstance(d, int) for d in self.shape)

    def at(self, batch: int) -> list[int] | None:
        """The whole shape at batch size `batch` (None: a dimension is `?`)."""
        dims = [d.at(batch) if isinstance(d, BatchDim) else d for d in self.shape]
        if any(not isinstance(d, int) for d in dims):
            return None
        return [batch, *dims] if self.batched else dims  # type: ignore[list-item]


class Value(Node):
    """What a forward value is at check time: a tensor, or a nested tuple/list of them, a
    size that depends on the batch size (e.g. `x.shape[0]`), or a plain Python constant
    (e.g. from `x.shape[1]`)."""

    kind: Literal["tensor", "tuple", "const", "size"]
    tensor: TensorType | None = None
    items: list[Value] = Field(default_factory=list)
    const: Any = None
    size: BatchDim | Literal["?"] | None = None


class TorchCtor(Node):
    """A torch.nn (or plugin) class called with literal arguments."""

    kind: Literal["torch"] = "torch"
    cls: str  # qualified, e.g. torch.nn.Conv2d or plugin:custom.CustomConv2d
    args: list[Expr] = Field(default_factory=list)
    kwargs: dict[str, Expr] = Field(default_factory=dict)
    span: Span | None = None


class SequentialCtor(Node):
    kind: Literal["sequential"] = "sequential"
    items: list[Ctor]
    names: list[str] | None = None  # named entries (an OrderedDict) or positional
    cls_name: str | None = None  # set for a `sequential` model definition
    span: Span | None = None


class RepeatCtor(Node):
    """`repeat(n, X)`: n independent instances of X applied in order. `items` are the
    distinct leading instances; the rest equal the last one (shapes reached a fixed point).
    An indexed repeat (`i -> X`) keeps one item per index. `prefix` names the children
    (`prefix + str(i)`, else `str(i)`); `splat`: spliced into the enclosing Sequential."""

    kind: Literal["repeat"] = "repeat"
    count: int
    items: list[Ctor]
    prefix: str = ""
    splat: bool = False
    span: Span | None = None


class CondCtor(Node):
    """A conditional layer `A if test else B`, as decided for this instance: `taken` is
    True when `test` held; `ctor` is the branch built (a NoneCtor when that is `None`)."""

    kind: Literal["cond"] = "cond"
    taken: bool
    ctor: Ctor
    span: Span | None = None


class NoneCtor(Node):
    """An absent layer: `None` (`self.downsample = None`, as torchvision writes it)."""

    kind: Literal["none"] = "none"
    span: Span | None = None


class ModelCtor(Node):
    kind: Literal["model"] = "model"
    instance: ModelInstance
    span: Span | None = None


class TensorCtor(Node):
    """`Parameter(expr)` / `Buffer(expr)`: a tensor the model holds. `value` is the
    expression with model parameters folded to literals and functions qualified
    (`torch.zeros`); `shape` and `dtype` are what it evaluated to on meta."""

    kind: Literal["tensor"] = "tensor"
    role: Literal["parameter", "buffer"]
    value: Expr
    requires_grad: bool = True  # a parameter's
    persistent: bool = True  # a buffer's: kept in the state_dict
    shape: list[int]
    dtype: str
    span: Span | None = None


Ctor = Annotated[
    TorchCtor | SequentialCtor | RepeatCtor | ModelCtor | CondCtor | NoneCtor | TensorCtor,
    Field(discriminator="kind"),
]


class CheckWarning(Node):
    """Something `check` found suspicious but not wrong (printed, never fatal)."""

    message: str
    span: Span | None = None
    hint: str | None = None


class LayerInstance(Node):
    name: str
    ctor: Ctor
    type_name: str  # what `check` shows: Conv2d, Sequential, Residual x3, ...
    out: Value | None = None  # output at its first call; None if never called
    params: int
    trainable: int
    span: Span


class ModelInstance(Node):
    model: str
    kind: Literal["model", "sequential"] = "model"
    file: str
    args: dict[str, Expr]  # bound model parameters, as literals
    inputs: list[tuple[str, TensorType]]
    layers: list[LayerInstance]
    nodes: list[FNode]  # forward with names folded to literals (what the builder runs)
    values: dict[str, Value]  # SSA node name -> value
    outputs: list[Value]
    holes: dict[int, Expr]  # hole id -> literal it resolved to
    params: int
    trainable: int
    ties: list[Tie] = Field(default_factory=list)
    inits: list[InitRule] = Field(default_factory=list)
    # this instance's and every sub-model instance's warnings, each once
    warnings: list[CheckWarning] = Field(default_factory=list)


for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, BaseModel) and _cls is not BaseModel:
        _cls.model_rebuild()
