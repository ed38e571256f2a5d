"""`plugin` statements: import user Python code and expose its public classes by name.

Plugins execute code, so they are loaded only through an explicit `plugin` statement and
refused when the loader runs with plugins disabled.
"""

from __future__ import annotations

from specc import ir


def load_plugins(program: ir.Program) -> dict[str, type]:
    """Public nn.Module / Optimizer subclasses of each plugin, by class name."""
    if not program.plugins:
        return {}
    from specc.errors import SpecError
    from specc.values import loc

    # The composition issue adds real plugin loading; refuse clearly until then.
    p = program.plugins[0]
    raise SpecError(f"plugin {p.target!r}: plugins are not supported yet", loc(p.span))
