"""Python names for spec identifiers, checked before they reach generated code.

The code generator writes spec names as they are (`self.conv1`, `x`, `num_classes`), so
every one passes through here first: a name that is not a plain ASCII identifier, is a
keyword, starts with `__`, or would shadow a name the generated module relies on is a
located ``SpecNameError``. Nothing from a spec reaches the output except through these
checks or through ``repr``.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable

from specc import ir
from specc.errors import SpecNameError
from specc.values import loc

# Names the generated module binds or calls itself; a spec name must never shadow them.
MODULE_NAMES = frozenset({"torch", "nn", "F", "OrderedDict", "self", "super", "range", "float"})

# Names that read like digits (ruff's E741/E742 reject them as variables and classes).
AMBIGUOUS = frozenset({"l", "O", "I"})


def check_identifier(name: str, span: ir.Span | None, what: str, *, local: bool = True) -> str:
    """`name` if it is safe as a Python name for a `what` (e.g. "layer"), else a SpecError.

    `local` names (variables, parameters, classes) must also not be ambiguous (`l`, `O`,
    `I`); attribute-only names (layers) may be.
    """
    _check_word(name, span, what)
    if name in MODULE_NAMES:
        raise SpecNameError(
            f"{what} `{name}` would shadow `{name}` in the generated code",
            loc(span),
            hint=f"rename it; the generated module uses {', '.join(sorted(MODULE_NAMES))}",
        )
    if local and name in AMBIGUOUS:
        raise SpecNameError(
            f"{what} `{name}` reads like a digit in Python code",
            loc(span),
            hint="rename it (generated code must pass ruff, which rejects `l`, `O` and `I`)",
        )
    return name


def check_attribute(name: str, span: ir.Span | None, what: str) -> str:
    """`name` if it is safe after a dot or before `=` in a call (methods, keywords)."""
    _check_word(name, span, what)
    return name


def _check_word(name: str, span: ir.Span | None, what: str) -> None:
    if not isinstance(name, str) or not name.isascii() or not name.isidentifier():
        raise SpecNameError(f"{what} {name!r} is not a valid Python name", loc(span))
    if keyword.iskeyword(name):
        raise SpecNameError(f"{what} `{name}` is a Python keyword", loc(span), hint="rename it")
    if name.startswith("__"):
        raise SpecNameError(
            f"{what} `{name}`: names starting with `__` are reserved", loc(span), hint="rename it"
        )


class Namespace:
    """One Python scope of generated code: each name is claimed once.

    `reserved` maps names the scope already uses to a description for the error message.
    """

    def __init__(self, reserved: dict[str, str] | Iterable[str] = ()) -> None:
        if isinstance(reserved, dict):
            self.taken: dict[str, str] = dict(reserved)
        else:
            self.taken = {n: f"`{n}`, which the generated code uses" for n in reserved}

    def __contains__(self, name: str) -> bool:
        return name in self.taken

    def claim(self, name: str, span: ir.Span | None, what: str, *, attribute: bool = False) -> str:
        """Check `name` and reserve it; a second claim of the same name is a SpecError.
        `attribute` names are only ever written after `self.`, so they may be anything
        `check_attribute` allows."""
        if attribute:
            check_attribute(name, span, what)
        else:
            check_identifier(name, span, what)
        if name in self.taken:
            raise SpecNameError(
                f"{what} `{name}` clashes with {self.taken[name]}",
                loc(span),
                hint="rename one of them",
            )
        self.taken[name] = f"the {what} `{name}`"
        return name

    def fresh(self, base: str, what: str) -> str:
        """A new name for something the generator introduces: `base`, else `base_2`, ..."""
        name, k = base, 1
        while name in self.taken or name in MODULE_NAMES or keyword.iskeyword(name):
            k += 1
            name = f"{base}_{k}"
        if not name.isidentifier():  # pragma: no cover - bases are built from checked names
            raise ValueError(f"bad generated name {name!r}")
        self.taken[name] = f"the {what} `{name}`"
        return name
