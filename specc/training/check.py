"""Everything in a spec that can be checked, checked: what `specc check` prints and the
language server underlines, decided once for both. It lives with training because train
blocks are resolved as `specc run` resolves them; models alone go through specc.shapes.

Each independent mistake is reported, up to `errors.MAX_ERRORS`, in source order: the name
mistakes of each model (specc.lang.passes), the shape mistakes of each model of the root
file that can be checked on its own, and the mistakes of each train block of the root file
(all of its bad settings, then the block resolved as `specc run` resolves it, its output
checked through the loss against the labels). A shape mistake ends its model's check: the
shapes after it are unknown. A model or train block that uses a model with mistakes is not
checked, as it would only report them again; it is listed in `skipped` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from specc import ir
from specc.errors import MAX_ERRORS, Location, SpecError, each_error
from specc.lang.loader import load_with_mistakes, source_texts
from specc.lang.plugins import plugin_stamps
from specc.shapes.check import check_model, standalone

if TYPE_CHECKING:
    from specc.training.plan import TrainPlan


@dataclass
class TrainCheck:
    """One train block, checked. `plan`: None when its settings are bad, it uses a model
    with mistakes or it cannot be resolved; `fit` also None when the model's output does
    not fit the loss or the labels."""

    title: str  # `train` or `train <name>`
    plan: TrainPlan | None = None
    fit: str | None = None  # `output [B, 10] -> CrossEntropyLoss <- labels [B] int64`
    labels_unchecked: str | None = None  # why: a data file that cannot be opened here


@dataclass
class ProgramCheck:
    """A spec checked: what passed, what was not checked and why, and every mistake."""

    program: ir.Program
    # The root file's models checked on their own, in source order.
    models: dict[str, ir.ModelInstance] = field(default_factory=dict)
    trains: list[TrainCheck] = field(default_factory=list)
    # The root file's models with parameters or sizes bound at each use.
    generic: list[str] = field(default_factory=list)
    # A model or train block (its title) not checked -> the model with mistakes it uses.
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)  # in source order
    # Each model check's outcome by the text it depends on: give it to the next
    # check_program of the same spec (`memo=`) and unchanged models are not checked again.
    memo: dict[tuple, ir.ModelInstance | tuple[SpecError, ...]] = field(default_factory=dict)


def check_program(
    source: Any, *, text: str | None = None, plugins: bool = True, open_data: bool = True,
    memo: dict[tuple, ir.ModelInstance | tuple[SpecError, ...]] | None = None,
) -> ProgramCheck:  # fmt: skip
    """Load the spec `source` (a path, with `text` its unsaved text if given) and check
    everything in it that can be checked. A mistake that leaves nothing to check (syntax,
    imports) raises; the others are collected. `open_data`: read sample 0 of a dataset
    when only its file can tell the labels' shape (the editor does not). `memo`: the
    previous result's, for an editor checking the same spec after each change."""
    program, mistakes = load_with_mistakes(source, plugins=plugins, text=text)
    checker = _ProgramChecker(program, memo or {})
    for name, errors in mistakes.items():
        for err in errors:
            checker.add(err, name)
    checker.check_models()
    checker.check_trains(open_data)
    result = checker.result
    result.generic = checker.generic()
    result.errors = sorted(checker.errors, key=checker.source_order)[:MAX_ERRORS]
    for err in result.errors:
        err.with_source(checker.texts)
    return result


class _ProgramChecker:
    """One `check_program`: its result so far, its mistakes (each once), and the models
    that have mistakes, found or met on the way."""

    def __init__(self, program: ir.Program, memo: dict) -> None:
        self.program = program
        self.result = ProgramCheck(program)
        self.old_memo = memo
        self.texts = source_texts(program)
        self.plugins = plugin_stamps(program)  # a model's check may use their classes
        self.root = program.sources[0].path
        self.errors: list[SpecError] = []
        self.seen: set[tuple[Location | None, str]] = set()
        self.broken: set[str] = set()
        names = {m.name for m in program.models}
        self.uses = {
            m.name: _models_called([layer.ctor for layer in m.layers], names)
            for m in program.models
        }

    def add(self, err: SpecError, model: str | None = None) -> None:
        """Record `err` and the errors collected with it, found checking `model`: each
        once, and `model` and the models they lie in as having mistakes."""
        for one in each_error(err):
            one.more = []  # kept one by one here
            for name in (model, self.model_at(one.location)):
                if name is not None:
                    self.broken.add(name)
            key = (one.location, one.message)
            if key not in self.seen:
                self.seen.add(key)
                self.errors.append(one)

    def model_at(self, where: Location | None) -> str | None:
        """The model whose definition holds `where`, if any."""
        if where is None:
            return None
        for m in self.program.models:
            span = m.span
            if span.file == where.file and span.line <= where.line <= span.end_line:
                return m.name
        return None

    def broken_use(self, names: Iterable[str]) -> str | None:
        """The first model with mistakes among `names` and the models they use."""
        todo, seen = list(names), set()
        while todo:
            name = todo.pop(0)
            if name in self.broken:
                return name
            if name not in seen:
                seen.add(name)
                todo.extend(sorted(self.uses.get(name, ())))
        return None

    def generic(self) -> list[str]:
        """The root file's models bound at each use, but those with mistakes."""
        return [m.name for m in self.program.models if m.file == self.root
                and m.name not in self.broken and not standalone(m)]  # fmt: skip

    def source_order(self, err: SpecError) -> tuple[int, int, int]:
        files = [s.path for s in self.program.sources]
        where = err.location
        if where is None or where.file not in files:
            return (len(files), 0, 0)
        return (files.index(where.file), where.line, where.column)

    def check_models(self) -> None:
        """Each model of the root file that can be checked on its own, after the models
        it uses (so that a mistake is reported where it lies, not through a user)."""
        own = [m for m in self.program.models if m.file == self.root]
        checked: dict[str, ir.ModelInstance] = {}
        for m in _used_first(own, self.uses):
            if m.name in self.broken or not standalone(m):
                continue
            if (other := self.broken_use(self.uses[m.name])) is not None:
                self.result.skipped[m.name] = other
                continue
            outcome = self.checked(m.name)
            if isinstance(outcome, ir.ModelInstance):
                checked[m.name] = outcome
            else:
                for err in outcome:
                    self.add(err, m.name)
        self.result.models = {m.name: checked[m.name] for m in own if m.name in checked}

    def checked(self, name: str) -> ir.ModelInstance | tuple[SpecError, ...]:
        """`check_model` of model `name`, or its outcome from the memo when the text of the
        model and of every model it uses is as it was, at the same lines."""
        key = self.memo_key(name)
        outcome = self.old_memo.get(key)
        if outcome is None:
            try:
                outcome = check_model(self.program, name)
            except SpecError as err:
                outcome = tuple(each_error(err))  # before `add` takes them apart
        self.result.memo[key] = outcome
        return outcome

    def memo_key(self, name: str) -> tuple:
        """What a model's check depends on: the source of it and of the models it uses,
        where each lies (the instance's spans and the errors' locations say where), and
        the plugin files as they are now."""
        by_name = {m.name: m for m in self.program.models}
        todo, seen, parts = [name], set(), []
        while todo:
            current = todo.pop()
            if current in seen or current not in by_name:
                continue
            seen.add(current)
            span = by_name[current].span
            lines = self.texts.get(span.file, "").split("\n")[span.line - 1 : span.end_line]
            parts.append((current, span.file, span.line, span.column, "\n".join(lines)))
            todo.extend(self.uses.get(current, ()))
        return (self.plugins, *sorted(parts))

    def check_trains(self, open_data: bool) -> None:
        """Each train block of the root file: all of its bad settings, and the rest of it
        resolved as `specc run` resolves it, unless it uses a model with mistakes."""
        trains = [t for t in self.program.trains if t.span.file == self.root]
        if not trains:
            return  # no training import for a spec of models only
        from specc.training.config import settings_errors
        from specc.training.plan import model_free_errors

        names = {m.name for m in self.program.models}
        for train in trains:
            check = TrainCheck(f"train {train.name}" if train.name else "train")
            self.result.trains.append(check)
            bad, checkable = settings_errors(self.program, train.name)
            for err in bad:
                self.add(err)
            used = _models_called([f.value for f in train.fields], names)
            if (other := self.broken_use(sorted(used))) is not None:
                self.result.skipped[check.title] = other
                for err in model_free_errors(checkable or self.program, train.name):
                    self.add(err)
            elif checkable is not None:
                self.resolve_train(check, checkable, train.name, open_data, keep=not bad)

    def resolve_train(self, check: TrainCheck, program: ir.Program, name: str | None,
                      open_data: bool, keep: bool) -> None:  # fmt: skip
        """Train block `name` resolved in `program` (its bad settings left out, if any), and
        its output checked against the labels; kept in `check` (`keep`) when all is well."""
        from specc.training.plan import resolve

        try:
            plan = resolve(program, name)
            if keep:
                check.plan = plan
            fit, why = _fit(plan, open_data)
        except SpecError as err:
            self.add(err)
            return
        if keep:
            check.fit, check.labels_unchecked = fit, why


def _fit(plan: TrainPlan, open_data: bool) -> tuple[str | None, str | None]:
    """The train line (output -> loss <- labels), or why the labels were not checked."""
    from specc.errors import DataError
    from specc.training.data import known_label
    from specc.training.sequence import LabelType, check_data_fit, spec_labels

    if open_data:
        try:
            labels = spec_labels(plan)
        except DataError as err:
            return None, f"labels not checked: {err.message}"
    else:
        known = {ds.split: known_label(ds) for ds in plan.data.splits()}
        labels = {split: LabelType(*k) for split, k in known.items() if k is not None}
    return check_data_fit(plan, labels), None


def _models_called(exprs: list[ir.Expr], models: set[str]) -> set[str]:
    """The models among `models` that the expressions call."""
    return {c.func for e in exprs for c in e.find_all(ir.Call) if c.func in models}


def _used_first(models: list[ir.ModelDef], uses: dict[str, set[str]]) -> list[ir.ModelDef]:
    """`models` in source order, but each after those of them it uses."""
    by_name = {m.name: m for m in models}
    order: list[ir.ModelDef] = []
    placed: set[str] = set()
    for m in models:
        # Depth first with a stack of (name, its uses placed?): a model goes in once the
        # models it uses have. Marked placed on the way down, so a cycle (an error found
        # elsewhere) ends.
        stack = [(m.name, False)]
        while stack:
            name, ready = stack.pop()
            if ready:
                order.append(by_name[name])
            elif name in by_name and name not in placed:
                placed.add(name)
                stack.append((name, True))
                stack.extend((u, False) for u in sorted(uses.get(name, ()), reverse=True))
    return order
