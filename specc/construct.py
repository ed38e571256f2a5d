"""Checked constructors (``ir.Ctor``) as ``nn.Module`` trees: the one walk that both the
builder (real modules) and the checker's module tree (on meta, for ties and init rules)
make, so a path or a glob means the same at check time as at build time.

A subclass says how a torch (or plugin) class is constructed (`torch_module`), how a spec
model used as a layer becomes a module (`model`) and how a held tensor is registered
(`add_tensor`); containers, conditionals, repeats and splats are written once here. Like
``specc.graph``, this module imports only the IR, so every stage may use it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from specc import ir


class Constructor:
    """Builds modules from checked constructors, in declaration order (= RNG order)."""

    def torch_module(self, c: ir.TorchCtor) -> nn.Module:
        raise NotImplementedError

    def model(self, inst: ir.ModelInstance) -> nn.Module:
        raise NotImplementedError

    def add_tensor(self, root: nn.Module, name: str, c: ir.TensorCtor) -> None:
        raise NotImplementedError

    def add(self, root: nn.Module, name: str, c: Any) -> None:
        """Layer `name` of a model: a module, a held tensor, or `None` (absent)."""
        if isinstance(c, ir.TensorCtor):
            self.add_tensor(root, name, c)
        else:
            root.add_module(name, self.ctor(c))

    def ctor(self, c: Any) -> nn.Module | None:
        if isinstance(c, ir.TorchCtor):
            return self.torch_module(c)
        if isinstance(c, ir.SequentialCtor):
            return self.sequential(c)
        if isinstance(c, ir.RepeatCtor):
            return nn.Sequential(OrderedDict(self.repeated(c)))
        if isinstance(c, ir.ModelCtor):
            return self.model(c.instance)
        if isinstance(c, ir.CondCtor):
            return self.ctor(c.ctor)
        if isinstance(c, ir.NoneCtor):
            return None
        raise TypeError(f"unknown constructor {c!r}")  # pragma: no cover

    def sequential(self, c: ir.SequentialCtor) -> nn.Sequential:
        """Entries in order; a `None` entry is left out and a splatted repeat spliced in,
        numbered on (torchvision's `nn.Sequential(*layers)`)."""
        if c.names:
            named = ((k, self.ctor(i)) for k, i in zip(c.names, c.items, strict=True))
            return nn.Sequential(OrderedDict((k, m) for k, m in named if m is not None))
        mods: list[nn.Module] = []
        for item in c.items:
            if isinstance(item, ir.RepeatCtor) and item.splat:
                mods += [m for _, m in self.repeated(item)]
            elif (m := self.ctor(item)) is not None:
                mods.append(m)
        return nn.Sequential(*mods)

    def repeated(self, c: ir.RepeatCtor) -> list[tuple[str, nn.Module]]:
        """`repeat(n, X)`'s children, named `prefix + str(i)`; past the distinct leading
        items, each further one is built like the last."""
        last = len(c.items) - 1
        return [(f"{c.prefix}{i}", self.ctor(c.items[min(i, last)])) for i in range(c.count)]

    def sequential_model(self, inst: ir.ModelInstance) -> nn.Sequential:
        """A `sequential` spec: an nn.Sequential subclass, as one would write it by hand;
        unnamed entries numbered on past an absent one, as torch numbers them."""
        cls = type(inst.model, (nn.Sequential,), {"__module__": "specc.models"})
        mods = [(layer.name, self.ctor(layer.ctor)) for layer in inst.layers]
        if all(name.isdigit() for name, _ in mods):
            return cls(*(m for _, m in mods if m is not None))
        return cls(OrderedDict((k, m) for k, m in mods if m is not None))
