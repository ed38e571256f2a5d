"""What the language server knows about one spec: `specc check`'s findings as located
diagnostics, and the checked models for hover and symbols. No LSP types here: the server
(specc.lsp.server) turns these into protocol messages, and tests call `analyze` directly.

The checks are `specc check`'s, in its order: load (parse, names, imports), each model of
the file that can be checked on its own, then each train block resolved as `specc run`
resolves it with the output checked through the loss against the labels. A failing model
does not hide the others or the train blocks: each independent error is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc import ir
from specc.errors import Location, SpecError

MAX_DIAGNOSTICS = 20


@dataclass(frozen=True)
class Finding:
    """One diagnostic: an error or a warning, where it is and what to do."""

    severity: str  # "error" | "warning"
    message: str
    location: Location | None
    hint: str | None = None


@dataclass
class Analysis:
    """A spec as the editor holds it, checked."""

    path: Path
    findings: list[Finding] = field(default_factory=list)
    program: ir.Program | None = None
    instances: dict[str, ir.ModelInstance] = field(default_factory=dict)

    def error(self, err: SpecError) -> None:
        for one in [err, *err.more]:
            self.findings.append(Finding("error", one.message, one.location, one.hint))

    def warn(self, warnings: list[ir.CheckWarning] | tuple[ir.CheckWarning, ...]) -> None:
        for w in warnings:
            where = _span_location(w.span) if w.span is not None else None
            self.findings.append(Finding("warning", w.message, where, w.hint))


def analyze(text: str, path: Path) -> Analysis:
    """`text` (the editor's buffer of the file at `path`) checked as `specc check` would;
    never raises for anything a spec can contain."""
    from specc.lang.loader import load

    result = Analysis(path)
    try:
        result.program = load(path, text=text)
    except SpecError as err:
        result.error(err)
        return _capped(result)
    except RecursionError:
        result.findings.append(Finding("error", "the spec nests too deeply", None))
        return result
    _check_models(result)
    _check_trains(result)
    return _capped(result)


def _check_models(result: Analysis) -> None:
    from specc.shapes.check import check_model, standalone

    program = result.program
    assert program is not None
    root = program.sources[0].path
    for model in program.models:
        if model.file != root or not standalone(model):
            continue
        try:
            inst = check_model(program, model.name)
        except SpecError as err:
            result.error(err)
            continue
        result.instances[model.name] = inst
        result.warn(inst.warnings)


def _check_trains(result: Analysis) -> None:
    """Each train block of the file, as `specc check` checks it; its data's labels only
    when they are known without opening a file (the editor checks as the user types)."""
    program = result.program
    assert program is not None
    root = program.sources[0].path
    trains = [t for t in program.trains if t.span.file == root]
    if not trains:
        return
    from specc.training import data
    from specc.training.plan import resolve
    from specc.training.sequence import LabelType, check_data_fit

    for train in trains:
        try:
            plan = resolve(program, train.name)
            result.instances.setdefault(plan.model.call.name, plan.model.instance)
            if plan.lora is not None:
                result.warn(plan.lora.warnings)
            labels = {ds.split: data.known_label(ds) for ds in plan.data.splits()}
            check_data_fit(plan, {k: LabelType(*v) for k, v in labels.items() if v})
        except SpecError as err:
            result.error(err)


def _capped(result: Analysis) -> Analysis:
    result.findings = result.findings[:MAX_DIAGNOSTICS]
    return result


def _span_location(span: ir.Span) -> Location:
    return Location(span.file, span.line, span.column, span.end_line, span.end_column)
