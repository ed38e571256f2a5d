"""Stage 4b: checked IR -> readable standalone PyTorch source (the code-generator back-end).

The generator writes each model's *definition* (``ModelDef``), taking from the checked
``ModelInstance`` tree only the values of ``_`` and the shapes for comments; the builder runs
the instances. Only a test keeps the two in step:
``test_same_module_as_builder`` (tests/test_codegen.py) builds every spec both ways and
compares the modules. The output has one ``nn.Module`` class per model (the
models the chosen one uses first), layers constructed in declaration order (same seed, same
weights), and a ``forward`` that mirrors the spec's statements with the spec's own variable
names. The class of the model a train block trains on a text dataset (a ``LanguageModel`` of
``specc.training.plan``) also gets nanoGPT's ``generate``, the steps of ``specc sample``.

Layer arguments are written from the model *definition*, so parameters keep their names
(``nn.Linear(84, num_classes)``); every ``_`` is replaced by the literal it resolved to. A
model used several times whose ``_`` resolves to different values gets a keyword-only
``__init__`` parameter for it (``<layer>_<argument>``), and each use passes its value.

``generate(..., plan=...)`` (``compile --train``) prints a resolved train plan as a script
that trains as ``specc run`` does (``codegen.train``): only the data helpers, fine-tuning steps
and loop features the spec uses, under ``if __name__ == "__main__":``, needing only torch and
torchvision (plus scikit-learn for ``Digits``, safetensors/numpy for such files).

Text is laid out by Jinja2 templates in ``templates/``; expressions are laid out here, as
small documents (``Text``, ``Brackets``, ``Comp``, ``Chain``) broken the way ``ruff format``
breaks them, so the output is already formatted. Every spec name goes through
``specc.codegen.naming``; every literal through ``repr``.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from specc import ir
from specc.errors import SpecError, UsageError
from specc.lang.loader import source_texts

if TYPE_CHECKING:
    from specc.training.plan import TrainPlan


def generate(
    program: ir.Program,
    model: str | None = None,
    plan: TrainPlan | None = None,
    *,
    warn: bool = False,
) -> str:
    """Standalone PyTorch source for `model` (default: the spec's default model) and the
    models it uses; with a train plan, the training script of the plan's model. Raises a
    located SpecError for specs that cannot be written safely."""
    from specc.shapes.report import print_warnings

    texts = source_texts(program)
    try:
        if plan is not None:
            if model is not None and model != plan.model.call.name:
                raise UsageError(
                    f"--train writes the training of the train block's model "
                    f"`{plan.model.call.name}`, not `{model}`",
                    hint="leave out --model, or change `model = ...` in the train block",
                )
            from specc.codegen.train import TrainScript

            if warn:
                print_warnings(plan.model.instance, program)
            source = TrainScript(program, plan).source()
        else:
            from specc.codegen.models import ModuleWriter
            from specc.shapes.check import check_model
            from specc.training.plan import trained_language_model

            instance = check_model(program, model)
            if warn:
                print_warnings(instance, program)
            language_model = trained_language_model(program, instance)
            source = ModuleWriter(program, [instance], language_model=language_model).module()
    except SpecError as err:
        raise err.with_source(texts) from None
    try:
        ast.parse(source)
    except SyntaxError as exc:  # pragma: no cover - a generator bug, never a user mistake
        raise RuntimeError(
            f"specc generated invalid Python (line {exc.lineno}): {exc.msg}"
        ) from exc
    return source
