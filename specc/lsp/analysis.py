"""What the language server knows about one spec: `specc check`'s findings as located
diagnostics, and the checked models for hover and symbols. No LSP types here: the server
(specc.lsp.server) turns these into protocol messages, and tests call `analyze` directly.

The checks are `specc check`'s, made by the same function (specc.training.check): every
model and train block of the file that can be checked, each independent mistake reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from specc import ir
from specc.errors import MAX_ERRORS, Location, SpecError, each_error


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
    # the model checks by what they depend on, for the next analysis of this spec
    memo: dict = field(default_factory=dict)

    def error(self, err: SpecError) -> None:
        for one in each_error(err):
            self.findings.append(Finding("error", one.message, one.location, one.hint))

    def warn(self, warnings: list[ir.CheckWarning] | tuple[ir.CheckWarning, ...]) -> None:
        for w in warnings:
            where = _span_location(w.span) if w.span is not None else None
            self.findings.append(Finding("warning", w.message, where, w.hint))


def analyze(text: str, path: Path, memo: dict | None = None) -> Analysis:
    """`text` (the editor's buffer of the file at `path`) checked as `specc check` would;
    never raises for anything a spec can contain. Labels known only from a data file are
    left unchecked: the editor checks as the user types. `memo`: the last analysis's, so
    the models an edit left as they were are not checked again."""
    from specc.training.check import check_program

    result = Analysis(path)
    try:
        checked = check_program(path, text=text, open_data=False, memo=memo)
    except SpecError as err:
        result.error(err)
        return _capped(result)
    except RecursionError:
        result.findings.append(Finding("error", "the spec nests too deeply", None))
        return result
    result.program, result.memo = checked.program, checked.memo
    result.instances = dict(checked.models)
    for err in checked.errors:
        result.error(err)
    for inst in checked.models.values():
        result.warn(inst.warnings)
    for train in checked.trains:
        if train.plan is not None:
            result.instances.setdefault(train.plan.model.call.name, train.plan.model.instance)
            if train.plan.lora is not None:
                result.warn(train.plan.lora.warnings)
    return _capped(result)


def _capped(result: Analysis) -> Analysis:
    result.findings = result.findings[:MAX_ERRORS]
    return result


def _span_location(span: ir.Span) -> Location:
    return Location(span.file, span.line, span.column, span.end_line, span.end_column)
