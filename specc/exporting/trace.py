"""The model as torch.export traces it: its inputs with a dynamic batch dimension (and a
dynamic sequence length for a language model's token ids, up to its block size), and
torch's refusals turned into located errors.

torch.export runs the model's Python code (non-strict mode) on symbolic tensors, so when it
gives up, the frames of the exception are the model's own: the deepest one that belongs to
a layer names the layer, and the checked instance gives that layer's line in the spec.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from specc import ir
from specc.errors import ExportError, Location
from specc.training.plan import token_context
from specc.values import loc


@dataclass(frozen=True)
class Input:
    """One input of the forward. `shape` is per sample when `batched`; a `seq` input holds
    token ids whose length (shape[0]) may be anything from 1 to `seq`."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    batched: bool
    seq: int | None = None

    def dims(self) -> list[str]:
        """The dimensions as the summary shows them: `batch`, `seq`, or a size."""
        sizes = [str(d) for d in self.shape]
        if self.seq is not None:
            sizes[0] = "seq"
        return ["batch", *sizes] if self.batched else sizes


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Input, ...]
    vocab: int | None  # a language model's output size: token ids below it are valid

    @property
    def seq(self) -> int | None:
        """The longest token sequence, when an input's length is dynamic."""
        return next((i.seq for i in self.inputs if i.seq is not None), None)

    def trace_sizes(self) -> tuple[int, int | None]:
        """The (batch, seq) traced at: not 0 or 1, which torch.export would take as fixed."""
        return 2, self.seq

    def sizes(self) -> list[tuple[int, int | None]]:
        """The (batch, seq) pairs the exported file is checked at: two of each dynamic size,
        so a size fixed by mistake shows."""
        if self.seq is None:
            return [(1, None), (3, None)]
        return [(1, max(self.seq // 2, 1)), (3, self.seq)]

    def example(self, batch: int, seq: int | None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs of the given sizes: normal floats, and token ids below the vocabulary."""
        gen = torch.Generator().manual_seed(seed)
        return tuple(self._tensor(i, batch, seq, gen) for i in self.inputs)

    def _tensor(self, i: Input, batch: int, seq: int | None, gen: torch.Generator):
        shape = list(i.shape)
        if i.seq is not None and seq is not None:
            shape[0] = seq
        shape = [batch, *shape] if i.batched else shape
        if i.dtype.is_floating_point:
            return torch.randn(shape, generator=gen).to(i.dtype)
        if i.dtype == torch.bool:
            return torch.zeros(shape, dtype=torch.bool)
        high = self.vocab if i.seq is not None and self.vocab else 1  # else all zeros
        return torch.randint(0, high, shape, generator=gen, dtype=i.dtype)

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """torch.export's `dynamic_shapes`, one dict per input: the batch dimension any size
        from 1, a token input's length from 1 to its block size."""
        batch = Dim("batch", min=1)
        out = []
        for i in self.inputs:
            dims: dict[int, Any] = {0: batch} if i.batched else {}
            if i.seq is not None:
                dims[int(i.batched)] = Dim("seq", min=1, max=i.seq)
            out.append(dims)
        return tuple(out)


def signature(instance: ir.ModelInstance) -> Signature:
    """The checked instance's inputs; a language model's token input gets a dynamic length
    (a block size of 1 leaves nothing to vary)."""
    block = token_context(instance)
    seq = block if block is not None and block > 1 else None
    inputs = []
    for name, t in instance.inputs:
        if not t.fixed():
            raise ExportError(f"input `{name}` has a size only known at run time: {t.shape}")
        dims = tuple(int(d) for d in t.shape)  # type: ignore[arg-type]  # fixed: all ints
        inputs.append(Input(name, getattr(torch, t.dtype), dims, t.batched, seq))
    out = instance.outputs[0].tensor if block is not None else None
    vocab = out.shape[-1] if out is not None and isinstance(out.shape[-1], int) else None
    return Signature(tuple(inputs), vocab)


class Subject:
    """The model being exported: the module (eval mode, weights loaded), its checked
    instance, and the program it comes from; traced once, when a format asks."""

    def __init__(self, module: nn.Module, instance: ir.ModelInstance, program: ir.Program):
        self.module, self.instance, self.program = module, instance, program

    @cached_property
    def signature(self) -> Signature:
        return signature(self.instance)

    @cached_property
    def traced(self) -> ExportedProgram:
        """torch.export of the module with the signature's dynamic dimensions; a failure is
        an ExportError at the layer it happened in, or at the model."""
        sig = self.signature
        try:
            with quiet():
                return torch.export.export(
                    self.module,
                    sig.example(*sig.trace_sizes()),
                    dynamic_shapes=sig.dynamic_shapes(),
                )
        except Exception as exc:  # torch raises many types here; each ends as one ExportError
            raise _refusal(exc, self.module, self.instance, self.program) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Drop what torch.export and torch.onnx print as they go (progress, warnings, logs, a
    failed trace's partial graph on stderr): the summary, or the located error, says what
    matters to the user."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


# ---- torch's refusal, located ---------------------------------------------------------

_REASONS = (
    # (what torch's message says, what it means for the model, what to do)
    (
        "data-dependent",
        "its forward branches on the values of a tensor",
        "torch.export records shapes, not values: compute both branches and pick with "
        "torch.where(...), or use torch.cond(...)",
    ),
    (
        "Constraints violated",
        "it does not run for every batch size (or sequence length)",
        "a forward that fixes a dimension to the traced size cannot take other sizes",
    ),
)


def _refusal(
    exc: BaseException, module: nn.Module, instance: ir.ModelInstance, program: ir.Program
) -> ExportError:
    text = first_line(exc)
    why, hint = next(
        ((why, hint) for key, why, hint in _REASONS if key in str(exc)),
        ("torch.export cannot trace it", None),
    )
    notes: list[tuple[str, Location | None]] = [(f"torch.export: {text}", None)]
    path, frame = _culprit(exc, module)
    if path is None:
        mdef = program.model(instance.model)
        return ExportError(
            f"model `{instance.model}` cannot be exported: {why}",
            loc(mdef.span) if mdef is not None else None,
            notes=notes,
            hint=hint,
        )
    kind = type(module.get_submodule(path)).__name__
    if frame is not None:
        notes.insert(0, (f"in {frame}", None))
    return ExportError(
        f"layer `{path}` ({kind}) cannot be exported: {why}",
        loc(_layer_span(instance, path)),
        notes=notes,
        hint=hint,
    )


def first_line(exc: BaseException) -> str:
    """The first line of the innermost cause's message (torch wraps its reasons), cut at
    300 characters."""
    inner = list(_chain(exc))[-1]
    line = next((ln.strip() for ln in str(inner).splitlines() if ln.strip()), "")
    return (line or type(inner).__name__)[:300]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from, as Python prints them."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)


def _culprit(exc: BaseException, module: nn.Module) -> tuple[str | None, str | None]:
    """The path of the deepest layer of `module` whose code was running when torch gave up,
    and the line of its forward that was running (`file:line: text`) when that is a file;
    (None, None) when no layer was (the failure is in the model's own forward)."""
    names = {id(m): n for n, m in module.named_modules() if n}
    path = line = None
    for err in _chain(exc):
        tb = err.__traceback__
        while tb is not None:  # outermost frame first: the last layer seen is the deepest
            frame = tb.tb_frame
            name = names.get(id(frame.f_locals.get("self")))
            if name is not None:
                if name != path:
                    path, line = name, None
                if frame.f_code.co_name == "forward" and _users(frame.f_code.co_filename):
                    line = _frame_text(frame.f_code.co_filename, tb.tb_lineno)
            tb = tb.tb_next
    return path, line


def _users(filename: str) -> bool:
    """Is this a file of the user's (a plugin), not torch's nor fx's generated code?"""
    path = Path(filename)
    return path.is_file() and not path.resolve().is_relative_to(_TORCH)


_TORCH = Path(torch.__file__).resolve().parent


def _frame_text(filename: str, line: int) -> str:
    try:
        shown = str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        shown = filename
    code = linecache.getline(filename, line).strip()
    return f"{shown}:{line}: {code}" if code else f"{shown}:{line}"


def _layer_span(instance: ir.ModelInstance, path: str) -> ir.Span | None:
    """The spec line of the layer at `path` (`transformer.h.0.attn`), as deep as the
    checked constructors lead; the line of the outermost layer at least."""
    first, *rest = path.split(".")
    layer = next((la for la in instance.layers if la.name == first), None)
    if layer is None:
        return None
    span, ctor = layer.span, layer.ctor
    for part in rest:
        found = _child(ctor, part)
        if found is None:
            break
        ctor, span = found[0], found[1] or span
    return span


# Entries that are never absent nor spliced: an unnamed Sequential of only these numbers its
# children as its entries are numbered.
_ALWAYS_BUILT = (ir.TorchCtor, ir.ModelCtor, ir.SequentialCtor)


def _child(ctor: Any, part: str) -> tuple[Any, ir.Span | None] | None:
    """The constructor of child `part` of `ctor`, with its span; None when it cannot tell
    (a torch or plugin class, or a container whose numbering skipped absent entries)."""
    if isinstance(ctor, ir.CondCtor):
        return _child(ctor.ctor, part)
    if isinstance(ctor, ir.ModelCtor):
        layer = next((la for la in ctor.instance.layers if la.name == part), None)
        return (layer.ctor, layer.span) if layer is not None else None
    if isinstance(ctor, ir.RepeatCtor):
        index = part.removeprefix(ctor.prefix)
        if not index.isdigit() or int(index) >= ctor.count or not ctor.items:
            return None
        item = ctor.items[min(int(index), len(ctor.items) - 1)]
        return item, getattr(item, "span", None)
    if isinstance(ctor, ir.SequentialCtor):
        if ctor.names:
            items = dict(zip(ctor.names, ctor.items, strict=True))
        elif all(isinstance(i, _ALWAYS_BUILT) for i in ctor.items):
            items = {str(n): i for n, i in enumerate(ctor.items)}
        else:
            return None
        item = items.get(part)
        return (item, getattr(item, "span", None)) if item is not None else None
    return None
