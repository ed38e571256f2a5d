"""Stage 3b: shape checking. The IR run on meta tensors -> checked ``ModelInstance``s.

The modules, in the order a check runs:

* ``check``: the entry points (`check_model`, `default_model`, `standalone`) and the
  `Checker`, the state one program's check shares (registry, caches, checked sub-models);
* ``inputs``: model arguments bound like a call, input tensors from declared shapes;
* ``instance``: one use of a model: runs its forward, builds its layers, assembles the
  checked ``ir.ModelInstance``;
* ``interpreter``: the forward on meta tensors, one method per op kind;
* ``probes``: every forward runs in lockstep at a few batch sizes, so that each size can
  be written as a function of the batch size B (`[B, 10]`, `[2*B]`);
* ``layers``: layer expressions built on meta, `_` filled from the incoming shape;
* ``rules``: fast shape rules for common layers and functions (torch's meta kernels are
  slow the first time);
* ``memo``: call signatures and rebuildable results for the shape caches;
* ``meta``: size limits, sizes solved for B, and how shapes are written;
* ``report``: the table `specc check` prints.
"""
