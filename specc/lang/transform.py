"""Stage 2: Lark parse tree -> IR. Expressions become ``Expr`` nodes; forward bodies are
lowered to SSA ``FNode`` lists. Names are not resolved here (that is `passes.resolve`)."""

from __future__ import annotations

import ast
from typing import Any

import lark
from lark import Token, Tree

from specc import ir
from specc.errors import SpecSyntaxError, SpecTypeError
from specc.values import loc


def int_literal(tok: Token, file: str, text: str) -> int:
    """An INT token's value by Python's rules (the grammar's INT is looser, so that `012` is
    reported here with a reason instead of as two tokens)."""
    s = str(tok)
    try:
        return int(s, 0)
    except ValueError as exc:
        if "digits" in str(exc):  # sys.int_info.str_digits_check_threshold
            why = f"it has {len(s):,} digits, too many to be a size"
        elif s[0] == "0" and s.replace("_", "").isdigit():
            why = "leading zeros are not allowed (write `0o...` for octal)"
        else:
            why = "`_` may only stand between digits, and a prefix needs digits after it"
        where = loc(span_of(tok, file))
        raise SpecSyntaxError(f"invalid integer `{s[:20]}`: {why}", where, source=text) from None


_BINOPS = {"add", "sub", "mul", "div", "floordiv", "mod", "matmul", "pow"}
# grammar alias -> comparison operator (`is`, `in` are keywords, so their aliases differ)
_COMPARISONS = {
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
    "is_": "is", "is_not": "is_not", "in_": "in", "not_in": "not_in",
}  # fmt: skip


def span_of(node: Tree | Token, file: str) -> ir.Span:
    if isinstance(node, Token):
        return ir.Span(
            file=file,
            line=node.line,
            column=node.column,
            end_line=node.end_line or node.line,
            end_column=node.end_column or node.column + len(node),
        )
    m = node.meta
    if getattr(m, "empty", True):
        return ir.Span(file=file, line=1, column=1, end_line=1, end_column=1)
    return ir.Span(
        file=file, line=m.line, column=m.column, end_line=m.end_line, end_column=m.end_column
    )


class _Exprs:
    """Converts expression subtrees to ``Expr`` (no forward lowering)."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.hole_ids = 0

    def sp(self, node: Tree | Token) -> ir.Span:
        return span_of(node, self.file)

    def error(self, msg: str, node: Tree | Token, cls=SpecSyntaxError) -> Exception:
        return cls(msg, loc(self.sp(node)), source=self.text)

    def expr(self, t: Tree | Token | None) -> ir.Expr:
        if isinstance(t, Token):
            # Inlined `?rule` alternatives that reduce to a bare token never occur here,
            # but a lone NAME in `dim`/`targets` contexts may reach us.
            return ir.Name(id=str(t), span=self.sp(t))
        data = t.data
        kids = t.children
        if data == "int":
            return ir.Const(value=int_literal(kids[0], self.file, self.text), span=self.sp(t))
        if data == "float":
            return ir.Const(value=float(str(kids[0]).replace("_", "")), span=self.sp(t))
        if data == "string":
            return ir.Const(value=self._string(kids[0]), span=self.sp(t))
        if data in ("true", "false", "none"):
            value = {"true": True, "false": False, "none": None}[data]
            return ir.Const(value=value, span=self.sp(t))
        if data == "name":
            if str(kids[0]) == "_":
                self.hole_ids += 1
                return ir.Hole(id=self.hole_ids, span=self.sp(t))
            return ir.Name(id=str(kids[0]), span=self.sp(t))
        if data == "ellipsis":
            return ir.Ellipsis_(span=self.sp(t))
        if data == "list":
            return ir.ListExpr(items=[self.expr(k) for k in kids if k is not None], span=self.sp(t))
        if data == "tuple":
            return ir.TupleExpr(
                items=[self.expr(k) for k in kids if k is not None], span=self.sp(t)
            )
        if data == "empty_tuple":
            return ir.TupleExpr(items=[], span=self.sp(t))
        if data in _BINOPS:
            return ir.BinOp(
                op=data, left=self.expr(kids[0]), right=self.expr(kids[1]), span=self.sp(t)
            )
        if data in _COMPARISONS:
            return ir.BinOp(
                op=_COMPARISONS[data],
                left=self.expr(kids[0]),
                right=self.expr(kids[1]),
                span=self.sp(t),
            )
        if data in ("and_", "or_"):
            return ir.BoolOp(
                op=data[:-1], left=self.expr(kids[0]), right=self.expr(kids[1]), span=self.sp(t)
            )
        if data == "not_":
            return ir.Not(operand=self.expr(kids[0]), span=self.sp(t))
        if data == "if_expr":
            body, test, orelse = kids
            return ir.IfExp(
                test=self.expr(test),
                body=self.expr(body),
                orelse=self.expr(orelse),
                span=self.sp(t),
            )
        if data == "lambda_":
            param, body = kids
            return ir.Lambda(param=str(param), body=self.expr(body), span=self.sp(t))
        if data == "starred":
            return ir.Starred(value=self.expr(kids[0]), span=self.sp(t))
        if data == "neg":
            inner = self.expr(kids[0])
            if isinstance(inner, ir.Const) and isinstance(inner.value, (int, float)):
                if not isinstance(inner.value, bool):
                    return ir.Const(value=-inner.value, span=self.sp(t))
            return ir.Neg(operand=inner, span=self.sp(t))
        if data == "unary":  # unary plus
            return self.expr(kids[0])
        if data == "call":
            name, arguments = kids
            args, kwargs = self.arguments(arguments)
            return ir.Call(
                func=str(name), args=args, kwargs=kwargs, span=self.sp(t), func_span=self.sp(name)
            )
        if data == "method_call":
            recv, name, arguments = kids
            args, kwargs = self.arguments(arguments)
            return ir.MethodCall(
                receiver=self.expr(recv),
                method=str(name),
                args=args,
                kwargs=kwargs,
                span=self.sp(t),
                method_span=self.sp(name),
            )
        if data == "attribute":
            recv, name = kids
            return ir.Attribute(
                value=self.expr(recv), attr=str(name), span=self.sp(t), attr_span=self.sp(name)
            )
        if data == "index":
            value, *subs = kids
            items = [self.expr(s) for s in subs]
            index = items[0] if len(items) == 1 else ir.TupleExpr(items=items, span=self.sp(t))
            return ir.Index(value=self.expr(value), index=index, span=self.sp(t))
        if data == "slice":
            parts = [None if k is None else self.expr(k) for k in kids]
            parts += [None] * (3 - len(parts))
            return ir.SliceExpr(start=parts[0], stop=parts[1], step=parts[2], span=self.sp(t))
        if data == "kwarg":
            raise self.error("keyword argument outside a call", t)
        raise self.error(f"unsupported expression `{data}`", t)

    def arguments(self, node: Tree | None) -> tuple[list[ir.Expr], dict[str, ir.Expr]]:
        args: list[ir.Expr] = []
        kwargs: dict[str, ir.Expr] = {}
        if node is None:
            return args, kwargs
        for child in node.children:
            if isinstance(child, Tree) and child.data == "kwarg":
                key, value = child.children
                if str(key) in kwargs:
                    raise self.error(f"keyword argument `{key}` given twice", key, SpecTypeError)
                kwargs[str(key)] = self.expr(value)
            else:
                if kwargs:
                    raise self.error("positional argument after a keyword argument", child)
                args.append(self.expr(child))
        return args, kwargs

    def _string(self, tok: Token) -> str:
        try:
            value = ast.literal_eval(str(tok))
        except (ValueError, SyntaxError):
            raise self.error("invalid string literal", tok) from None
        if not isinstance(value, str):
            raise self.error("invalid string literal", tok)
        return value


class _ForwardLowering:
    """Lowers forward statements to SSA nodes, keeping spec variable names on the nodes
    they are assigned from (the code generator writes them back as statements)."""

    def __init__(self, exprs: _Exprs, inputs: list[ir.Input]) -> None:
        self.x = exprs
        self.nodes: list[dict[str, Any]] = []
        self.used: set[str] = set()
        self.counters: dict[str, int] = {}  # next suffix per base name (keeps fresh() O(1))
        self.env: dict[str, ir.Ref] = {}
        for inp in inputs:
            name = self.fresh(inp.name)
            self.nodes.append(
                {
                    "name": name,
                    "op": "input",
                    "target": inp.name,
                    "vars": [inp.name],
                    "span": inp.span,
                }
            )
            self.env[inp.name] = ir.Ref(node=name, span=inp.span)

    def fresh(self, base: str) -> str:
        base = base or "t"
        k = self.counters.get(base, 0)
        name = base if k == 0 else f"{base}_{k}"
        while name in self.used:  # e.g. base "x_1" after "x" was used twice
            k += 1
            name = f"{base}_{k}"
        self.counters[base] = k + 1
        self.used.add(name)
        return name

    def add(self, op: str, target: str, args, kwargs, span: ir.Span | None, base: str) -> ir.Ref:
        name = self.fresh(base)
        self.nodes.append(
            {
                "name": name,
                "op": op,
                "target": target,
                "args": args,
                "kwargs": kwargs,
                "vars": [],
                "span": span,
            }
        )
        return ir.Ref(node=name, span=span)

    def lower(self, e: ir.Expr) -> ir.Expr:
        """Lower an expression; tensor-valued parts become nodes, constants stay Exprs.
        Children are lowered first, left to right, so nodes are numbered in source order."""
        if e.find(ir.IfExp) is None:
            return self._lower_plain(e)
        return self._lower_tree(e)

    def _lower_plain(self, e: ir.Expr) -> ir.Expr:
        """`e.map(self._lower_one)`, with its most common nodes taken directly: a call's
        arguments are lowered in the same order, but the call itself is not copied with
        them first, since it becomes a node (`_lower_one`) and only its parts are kept."""
        if isinstance(e, ir.Call):
            args = [self._lower_plain(a) for a in e.args]
            kwargs = {k: self._lower_plain(v) for k, v in e.kwargs.items()}
            return self.add("call", e.func, args, kwargs, e.span, e.func)
        if isinstance(e, (ir.Name, ir.Const, ir.Ref, ir.Hole)):  # no children to map
            return self._lower_one(e)
        return e.map(self._lower_one)

    def _lower_tree(self, e: Any) -> Any:
        """`lower` for an expression holding `a if c else b`: only the branch the condition
        picks may run, so each branch is lowered inside an if block of its own."""
        if isinstance(e, ir.IfExp):
            test = self._lower_tree(e.test)
            block = self.open_if(test, e.span)
            body = self._lower_tree(e.body)
            self.mark("else", block, e.span)
            orelse = self._lower_tree(e.orelse)
            self.mark("endif", block, e.span)
            return self.add("phi", block, [body, orelse], {}, e.span, "phi")
        if isinstance(e, (list, tuple)):
            return type(e)(self._lower_tree(i) for i in e)
        if isinstance(e, dict):
            return {k: self._lower_tree(v) for k, v in e.items()}
        if not isinstance(e, ir.Node) or isinstance(e, ir.Span):
            return e
        fields = {f: self._lower_tree(getattr(e, f)) for f in type(e).model_fields}
        return self._lower_one(e.model_copy(update=fields))

    # ---- static if blocks ---------------------------------------------------------------
    def open_if(self, test: ir.Expr, span: ir.Span | None) -> str:
        """Open an if block on `test`; its name marks the block's else/endif/phi nodes."""
        return self.add("if", "", [test], {}, span, "if").node

    def mark(self, op: str, block: str, span: ir.Span | None) -> None:
        self.add(op, block, [], {}, span, op)

    def merge(
        self, block: str, before: dict[str, Any], taken: dict[str, Any], not_taken: dict[str, Any]
    ) -> None:
        """Variables after the block: one the branches bind differently becomes a `phi`;
        one only a branch binds, with no value before, is unusable after (`Unbound`)."""
        env: dict[str, Any] = {}
        for var in dict.fromkeys([*taken, *not_taken]):
            a, b = taken.get(var), not_taken.get(var)
            if a is not None and a == b:
                env[var] = a
            elif a is None or b is None or isinstance(a, Unbound) or isinstance(b, Unbound):
                env[var] = Unbound(var, (a or b).span if var not in before else None)
            else:
                ref = self.add("phi", block, [a, b], {}, a.span, var)
                self._node(ref.node)["vars"] = [var]
                env[var] = ref
        self.env = env

    def _lower_one(self, e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.Name):
            bound = self.env.get(e.id, e)
            if isinstance(bound, Unbound):
                raise bound.error(e, self.x)
            return bound
        if isinstance(e, ir.Call):
            return self.add("call", e.func, e.args, e.kwargs, e.span, e.func)
        if isinstance(e, ir.MethodCall):
            args = [e.receiver, *e.args]
            return self.add("method", e.method, args, e.kwargs, e.span, e.method)
        if isinstance(e, ir.Attribute):
            return self.add("attribute", e.attr, [e.value], {}, e.span, e.attr)
        if isinstance(e, ir.Index):
            return self.add("getitem", "getitem", [e.value, e.index], {}, e.span, "getitem")
        if isinstance(e, ir.BinOp) and _has_ref(e):
            return self.add("operator", e.op, [e.left, e.right], {}, e.span, e.op)
        if isinstance(e, ir.Neg) and _has_ref(e):
            return self.add("operator", "neg", [e.operand], {}, e.span, "neg")
        return e

    def assign(self, targets: list[Token], values: list[ir.Expr], span: ir.Span) -> None:
        names = [str(t) for t in targets]
        if len(values) == 1 and len(names) > 1:
            ref = self._materialize(self.lower(values[0]), span, names[0])
            node = self._node(ref.node)
            if node["vars"] or ref.index is not None:
                ref = self.add("alias", "", [ref], {}, span, names[0])
                node = self._node(ref.node)
            node["vars"] = names
            for i, n in enumerate(names):
                self.env[n] = ir.Ref(node=ref.node, index=i, span=span)
            return
        if len(values) != len(names):
            raise self.x.error(
                f"{len(names)} names on the left but {len(values)} values on the right",
                targets[0],
                SpecTypeError,
            )
        lowered = [self.lower(v) for v in values]  # right side sees the old bindings
        for name, value in zip(names, lowered, strict=False):
            ref = self._materialize(value, span, name)
            node = self._node(ref.node)
            if node["vars"] or ref.index is not None or node["op"] == "input":
                ref = self.add("alias", "", [ref], {}, span, name)
                node = self._node(ref.node)
            node["vars"] = [name]
            self.env[name] = ir.Ref(node=ref.node, span=span)

    def _materialize(self, value: ir.Expr, span: ir.Span, base: str) -> ir.Ref:
        if isinstance(value, ir.Ref):
            return value
        return self.add("alias", "", [value], {}, span, base)

    def _node(self, name: str) -> dict[str, Any]:
        return next(n for n in reversed(self.nodes) if n["name"] == name)  # recent: near the end

    def finish(self, returns: list[ir.Expr] | None, span: ir.Span) -> list[ir.FNode]:
        if returns is not None:
            outs = [self.lower(r) for r in returns]
            self.nodes.append(
                {
                    "name": self.fresh("output"),
                    "op": "output",
                    "args": outs,
                    "vars": [],
                    "span": span,
                }
            )
        return [ir.FNode(**n) for n in self.nodes]


class Unbound:
    """A variable only one branch of an `if` binds (`span`: where), or that a branch
    rebinds when nothing bound it before (`span` None is never the case for those)."""

    def __init__(self, var: str, span: ir.Span | None) -> None:
        self.var = var
        self.span = span

    def error(self, use: ir.Name, x: _Exprs) -> SpecTypeError:
        where = f" (line {self.span.line})" if self.span is not None else ""
        return SpecTypeError(
            f"`{self.var}` is assigned in only one branch of an `if`{where}, so it has no "
            "value after the block when the other branch is taken",
            loc(use.span),
            hint=f"assign `{self.var}` before the `if` or in both branches",
            source=x.text,
        )


def _has_ref(e: ir.Expr) -> bool:
    """Does `e` read a forward value (so that it must become a node)?"""
    return e.find(ir.Ref) is not None


class Transformer:
    """Walks a `start` tree and produces the parts of a ``Program`` for one file."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text

    def program_parts(self, tree: Tree) -> dict[str, list]:
        parts: dict[str, list] = {
            "models": [],
            "data": [],
            "trains": [],
            "imports": [],
            "plugins": [],
        }
        for item in tree.children:
            kind = item.data
            if kind == "model":
                parts["models"].append(self.model(item))
            elif kind == "sequential":
                parts["models"].append(self.sequential(item))
            elif kind == "data_block":
                parts["data"].append(self.data_block(item))
            elif kind == "train_block":
                parts["trains"].append(self.train_block(item))
            elif kind == "import_stmt":
                path = _Exprs(self.file, self.text)._string(item.children[0])
                parts["imports"].append(ir.ImportStmt(path=path, span=span_of(item, self.file)))
            elif kind == "plugin_stmt":
                target = _Exprs(self.file, self.text)._string(item.children[0])
                parts["plugins"].append(ir.PluginStmt(target=target, span=span_of(item, self.file)))
        return parts

    def params(self, x: _Exprs, node: Tree | None) -> list[ir.Param]:
        if node is None:
            return []
        out = []
        seen: set[str] = set()
        for p in node.children:
            if p is None:
                continue
            name, typ, default = p.children
            if str(name) in seen:
                raise x.error(f"parameter `{name}` declared twice", name, SpecTypeError)
            seen.add(str(name))
            out.append(
                ir.Param(
                    name=str(name),
                    type=None if typ is None else str(typ),
                    default=None if default is None else x.expr(default),
                    span=span_of(p, self.file),
                )
            )
        return out

    def model(self, t: Tree) -> ir.ModelDef:
        x = _Exprs(self.file, self.text)
        name, params, *items = t.children
        layers: list[ir.Layer] = []
        ties: list[ir.Tie] = []
        inits: list[ir.InitRule] = []
        forward = None
        seen: dict[str, Token] = {}
        for item in items:
            if item.data == "tie_decl":
                ties.append(self.tie(item))
            elif item.data == "init_rule":
                inits.append(self.init_rule(x, item))
            elif item.data == "layer_decl":
                lname, value = item.children
                if str(lname) in seen:
                    raise x.error(f"layer `{lname}` is declared twice", lname, SpecTypeError)
                seen[str(lname)] = lname
                layers.append(
                    ir.Layer(name=str(lname), ctor=x.expr(value), span=span_of(item, self.file))
                )
            else:
                if forward is not None:
                    raise x.error(f"model `{name}` has two forward blocks", item, SpecTypeError)
                forward = self.forward(x, item)
        return ir.ModelDef(
            name=str(name),
            params=self.params(x, params),
            layers=layers,
            ties=ties,
            inits=inits,
            forward=forward,
            span=span_of(t, self.file),
            file=self.file,
        )

    def tie(self, t: Tree) -> ir.Tie:
        """`lm_head.weight = wte.weight`."""
        target, source = t.children
        return ir.Tie(
            target=".".join(map(str, target.children)),
            source=".".join(map(str, source.children)),
            span=span_of(t, self.file),
            target_span=span_of(target, self.file),
            source_span=span_of(source, self.file),
        )

    def init_rule(self, x: _Exprs, t: Tree) -> ir.InitRule:
        """`init Linear.weight = normal_(0.0, 0.02)` or `init "*.bias" = zeros_()`."""
        match, func, arguments = t.children
        args, kwargs = x.arguments(arguments)
        where: dict[str, str] = {}
        if match.data == "init_glob":
            where["glob"] = x._string(match.children[0])
        else:
            where["module_type"], where["attr"] = map(str, match.children)
        return ir.InitRule(
            func=str(func),
            args=args,
            kwargs=kwargs,
            span=span_of(t, self.file),
            func_span=span_of(func, self.file),
            **where,
        )

    def inputs_of(self, x: _Exprs, t: Tree) -> ir.Input:
        name, shape, dtype = t.children
        return ir.Input(
            name=str(name),
            shape=self.shape(shape),
            dtype=None if dtype is None else str(dtype),
            span=span_of(t, self.file),
        )

    def shape(self, t: Tree) -> list[ir.Dim]:
        dims = []
        for d in t.children:
            if d is None:
                continue
            tok = d.children[0]
            value: int | str = (
                int_literal(tok, self.file, self.text) if d.data == "dim_int" else str(tok)
            )
            dims.append(ir.Dim(value=value, span=span_of(d, self.file)))
        return dims

    def forward(self, x: _Exprs, t: Tree) -> ir.Forward:
        inputs: list[ir.Input] = []
        stmts: list[Tree] = []
        for c in t.children:
            if c is None:
                continue
            if c.data == "input":
                inputs.append(self.inputs_of(x, c))
            else:
                stmts.append(c)
        names = [i.name for i in inputs]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise x.error(f"forward input `{n}` declared twice", t, SpecTypeError)
        low = _ForwardLowering(x, inputs)
        returns = None
        ret_span = span_of(t, self.file)
        for s in stmts:
            if returns is not None:
                raise x.error("statement after `return`", s)
            if s.data == "return_stmt":
                returns = [x.expr(v) for v in s.children]
                ret_span = span_of(s, self.file)
            else:
                self.statement(x, low, s)
        if returns is None:
            raise x.error("forward has no `return` statement", t, SpecTypeError)
        return ir.Forward(
            inputs=inputs, nodes=low.finish(returns, ret_span), span=span_of(t, self.file)
        )

    def statement(self, x: _Exprs, low: _ForwardLowering, s: Tree) -> None:
        """An assignment or an `if` block (a `return` is only allowed last, at the top)."""
        if s.data == "assign":
            targets_tree, *values = s.children
            targets = (
                list(targets_tree.children) if isinstance(targets_tree, Tree) else [targets_tree]
            )
            low.assign(targets, [x.expr(v) for v in values], span_of(s, self.file))
        elif s.data == "if_stmt":
            self.if_stmt(x, low, s)
        else:
            raise SpecTypeError(
                "`return` inside an `if` block",
                loc(span_of(s, self.file)),
                hint="assign the value to a variable and return it after the block",
                source=self.text,
            )

    def if_stmt(self, x: _Exprs, low: _ForwardLowering, t: Tree) -> None:
        cond, *body, else_part = t.children
        span = span_of(t, self.file)
        block = low.open_if(low.lower(x.expr(cond)), span)
        before = dict(low.env)
        for s in body:
            self.statement(x, low, s)
        taken, low.env = low.env, dict(before)
        low.mark("else", block, span)
        if else_part is not None and else_part.data == "if_stmt":  # else if
            self.if_stmt(x, low, else_part)
        elif else_part is not None:
            for s in else_part.children:
                self.statement(x, low, s)
        low.mark("endif", block, span)
        low.merge(block, before, taken, low.env)

    def sequential(self, t: Tree) -> ir.ModelDef:
        x = _Exprs(self.file, self.text)
        name, params, seq_input, *items = t.children
        layers: list[ir.Layer] = []
        for i, item in enumerate(items):
            if item.data == "seq_named":
                lname, value = item.children
                if any(layer.name == str(lname) for layer in layers):
                    raise x.error(f"layer `{lname}` is declared twice", lname, SpecTypeError)
                layers.append(
                    ir.Layer(name=str(lname), ctor=x.expr(value), span=span_of(item, self.file))
                )
            else:
                layers.append(
                    ir.Layer(
                        name=str(i),
                        ctor=x.expr(item.children[0]),
                        span=span_of(item, self.file),
                        anonymous=True,
                    )
                )
        if not layers:
            raise x.error(f"sequential `{name}` has no layers", t, SpecTypeError)
        span = span_of(t, self.file)
        if seq_input is not None:
            inputs = [self.inputs_of(x, seq_input.children[0])]
        else:
            inputs = []
        # The forward of a sequential model is the chain of its layers.
        in_name = inputs[0].name if inputs else "x"
        nodes = [ir.FNode(name=in_name, op="input", target=in_name, vars=[in_name], span=span)]
        prev = in_name
        for i, layer in enumerate(layers):
            nname = f"h{i}"
            nodes.append(
                ir.FNode(
                    name=nname,
                    op="layer",
                    target=layer.name,
                    args=[ir.Ref(node=prev)],
                    span=layer.span,
                )
            )
            prev = nname
        nodes.append(ir.FNode(name="output", op="output", args=[ir.Ref(node=prev)], span=span))
        fwd = ir.Forward(inputs=inputs, nodes=nodes, span=span)
        return ir.ModelDef(
            name=str(name),
            kind="sequential",
            params=self.params(x, params),
            layers=layers,
            forward=fwd,
            span=span,
            file=self.file,
        )

    def data_block(self, t: Tree) -> ir.DataDef:
        x = _Exprs(self.file, self.text)
        name, *fields = t.children
        return ir.DataDef(name=str(name), fields=self.fields(x, fields), span=span_of(t, self.file))

    def fields(self, x: _Exprs, fields: list[Tree]) -> list[ir.FieldDef]:
        out: list[ir.FieldDef] = []
        for f in fields:
            key, value = f.children
            if any(o.key == str(key) for o in out):
                raise x.error(f"`{key}` is set twice", key, SpecTypeError)
            out.append(ir.FieldDef(key=str(key), value=x.expr(value), span=span_of(f, self.file)))
        return out

    def train_block(self, t: Tree) -> ir.TrainDef:
        x = _Exprs(self.file, self.text)
        name, *items = t.children
        fields = [i for i in items if i.data == "field"]
        inits, freezes, groups, loras = [], [], [], []
        for i in items:
            if i.data == "init_stmt":
                target, path, options = i.children
                inits.append(
                    ir.InitStmt(
                        target=None if target is None else ".".join(map(str, target.children)),
                        path=x._string(path),
                        options=self.options(x, options),
                        span=span_of(i, self.file),
                    )
                )
            elif i.data == "freeze_stmt":
                pats = [self.pattern(x, p) for p in i.children]
                freezes.append(ir.FreezeStmt(patterns=pats, span=span_of(i, self.file)))
            elif i.data == "group_stmt":
                *pats, options = i.children
                groups.append(
                    ir.GroupStmt(
                        patterns=[self.pattern(x, p) for p in pats],
                        options=self.options(x, options),
                        span=span_of(i, self.file),
                    )
                )
            elif i.data == "lora_stmt":
                *pats, options = i.children
                loras.append(
                    ir.LoraStmt(
                        patterns=[self.pattern(x, p) for p in pats],
                        options=self.options(x, options),
                        span=span_of(i, self.file),
                    )
                )
        return ir.TrainDef(
            name=None if name is None else str(name),
            fields=self.fields(x, fields),
            inits=inits,
            freezes=freezes,
            groups=groups,
            loras=loras,
            span=span_of(t, self.file),
        )

    def options(self, x: _Exprs, node: Tree | None) -> dict[str, ir.Expr]:
        opts: dict[str, ir.Expr] = {}
        if node is not None:
            for kw in node.children:
                if kw is not None:
                    opts[str(kw.children[0])] = x.expr(kw.children[1])
        return opts

    def pattern(self, x: _Exprs, p: Tree) -> str:
        if p.data == "pattern_glob":
            return x._string(p.children[0])
        return ".".join(str(c) for c in p.children)


def transform(tree: lark.Tree, file: str, text: str) -> dict[str, list]:
    """The parts of a Program (models, data, trains, imports, plugins) for one file."""
    return Transformer(file, text).program_parts(tree)
