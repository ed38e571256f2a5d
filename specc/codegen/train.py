"""The training script (`compile --train`): a resolved train plan printed as plain PyTorch.

The plan (specc.training.plan) has looked up and checked everything; this module only
writes it. The script trains the way `specc run` does: the same seeded sample order, the
same batches from tensors kept on the device, the same optimizer options (torch's fused
step on CPU) and kernel choices, so on CPU both end with the same weights bit for bit.
Fixed control flow lives in templates/train.py.j2; statements holding spec values are
laid out here.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from pathlib import Path
from typing import Any

from specc import ir
from specc.codegen.layout import (
    PREC_ATOM,
    PREC_COMPARE,
    PREC_OR,
    PREC_PRIMARY,
    Brackets,
    Chain,
    Comp,
    Doc,
    Text,
    block,
    fits,
    flat,
    layout,
    literal_doc,
    statement,
    string_literal,
    with_prefix,
)
from specc.codegen.models import ModuleWriter, environment
from specc.codegen.naming import check_attribute, check_identifier
from specc.codegen.train_data import MAIN, DataWriter, call_doc, paragraphs, value_doc
from specc.lang.plugins import load_plugins
from specc.training.plan import (
    METRICS,
    ClassTargets,
    Ctor,
    GroupPlan,
    InitPlan,
    LoraPlan,
    TrainPlan,
    is_glob,
    spec_loss_instance,
)

# Names the training script binds or calls at module level or in `main()`: a model or plugin
# class of the same name would shadow them.
TRAIN_NAMES = frozenset(
    {
        # imports and helpers
        "torchvision", "v2", "DataLoader", "Dataset", "TensorDataset", "Subset", "fnmatch",
        "math", "np", "load_file", "evaluate", "main", "digits_dataset", "load_tensor_file",
        "TransformedDataset", "UnverifiedCIFAR10", "UnverifiedCIFAR100", "as_tensors",
        "default_collate", "Tokenizer", "read_text", "python_docs_text", "char_tokens",
        "byte_tokens", "file_tokens", "text_windows",
        # builtins the script calls
        "print", "len", "round", "max", "sorted", "isinstance", "dict", "tuple", "list",
        "enumerate", "any", "zip", "range", "float", "int",
        # locals of main()
        "device", "transform", "train_transform", "train_augment", "train_set", "val_set",
        "test_set", "train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "n_val",
        "generator", "perm", "val_idx", "train_idx", "order", "batch", "batches", "model",
        "state", "own", "name", "param", "loss_fn", "optimizer", "scheduler", "warmup",
        "steps_per_epoch", "scaler", "step", "epoch", "running_loss", "i", "inputs", "labels",
        "outputs", "loss", "bad_epochs", "best_state", "k", "v", "p", "x", "other_params",
        "ignored", "transposed", "alias", "source", "counted", "tokens", "top5",
        "LoRALinear", "lora_layers", "path", "trained", "adapter",
        *(f"{pre}_{m}" for pre in ("best", "val", "test") for m in METRICS),
    }
)  # fmt: skip
# The script's count of each counted metric, and how it writes each derived one.
COUNTERS = {"accuracy": "correct", "top5": "correct_top5"}
METRIC_RESULTS = {
    "perplexity": "math.exp(total_loss / total)",
    "bits_per_token": "total_loss / total / math.log(2)",
}
# Why the script sets each kernel choice of the plan (specc.training.kernels).
KERNEL_REASONS = {
    "threads": "every op of this model is small: a second thread's wake-up costs more than "
    "it saves",
    "conv": "small convolutions: torch's native kernels beat oneDNN's fixed cost per call",
}


def block_of(macro: str, *args: Any) -> str:
    """A macro of templates/train_blocks.j2 (the fixed control flow of statements) called
    with already-formatted expressions: one statement for a list at `main()`'s indent."""
    module = environment().get_template("train_blocks.j2").module
    return str(getattr(module, macro)(*args)).rstrip("\n")


def _module_path(root: str, path: str, getter: str = "get_submodule") -> str:
    """`model.backbone.bn1`, `model.head[0]`: a sub-module or parameter by its dotted name."""
    out = root
    for part in path.split("."):
        if part.isascii() and part.isdigit():
            out += f"[{part}]"
        elif part.isascii() and part.isidentifier() and not keyword.iskeyword(part):
            out += f".{part}"
        else:  # a name Python cannot write after a dot: look it up by its string
            return f"{root}.{getter}({string_literal(path)})"
    return out


def _wrap(text: str, width: int = 80) -> list[str]:
    """A docstring's lines at `main()`'s indent, "(inputs, labels)" kept on one line."""
    lines = textwrap.wrap(text.replace("(inputs, labels)", "(inputs,\0labels)"), width)
    return [line.replace("\0", " ") for line in lines]


def _on_device(name: str, ctor: Doc) -> list[str]:
    """`name = Ctor(...).to(device)`; split in two when that is too long for one line
    (ruff would break the short `.to(` call first)."""
    line = " " * MAIN + f"{name} = {flat(ctor)}.to(device)"
    if fits(line):
        return [line[MAIN:]]
    return [statement(ctor, f"{name} = ", MAIN), f"{name}.to(device)"]


def _from_data_comment(plan: TrainPlan) -> list[str]:
    """`# read from the training data: data.vocab_size = 103`, when the spec wrote that."""
    if not plan.model.from_data:
        return []
    given = ", ".join(f"{ref} = {plan.model.args[name]!r}" for name, ref in plan.model.from_data)
    return [f"# read from the training data: {given}"]


class TrainScript:
    """`compile --train`: the model module, then the data helpers the plan needs,
    `evaluate`, and a `main()` that trains as `specc run` does."""

    def __init__(self, program: ir.Program, plan: TrainPlan) -> None:
        self.program, self.plan = program, plan
        self.plugins = load_plugins(program) if program.plugins else {}
        loss = plan.loss
        self.loss_inst = spec_loss_instance(program, plan, []) if loss.definition else None
        tops = [plan.model.instance] + ([self.loss_inst] if self.loss_inst else [])
        reserved = {n: f"`{n}`, which the generated training script uses" for n in TRAIN_NAMES}
        self.gen = ModuleWriter(program, tops, reserved, plan.language_model)
        self.imports = {"import torch"}
        self.data = DataWriter(plan.data, plan.seed)
        self.parameters = set(plan.parameters)

    def ctor_call(self, ctor: Ctor, head: str, lead: tuple[Doc, ...] = (), **extra: Any) -> Doc:
        return call_doc(head, ctor.args, ctor.kwargs | extra, ctor.span, lead)

    def class_head(self, ctor: Ctor, module: str) -> str:
        """How the script names the class: `module.Name`, or a plugin class's import."""
        if ctor.origin == "plugin":
            return self.gen.plugin_class(ctor.name, ctor.span)
        return f"{module}.{check_attribute(ctor.name, ctor.span, module)}"

    # ---- model and fine-tuning ----------------------------------------------------------
    def model_section(self) -> list[list[str]]:
        """Model, init and freeze statements (a group each)."""
        plan = self.plan
        call = plan.model.call
        check_identifier(call.name, call.span, "model name")
        model = call_doc(call.name, call.args, call.kwargs, call.span)
        groups = [_from_data_comment(plan) + _on_device("model", model)]
        groups += [self.init_statements(init) for init in plan.inits]
        if plan.lora is not None:
            groups.append(self.lora_statements(plan.lora))
        if plan.freeze_patterns:
            groups.append(self.freeze_statements(plan.freeze_patterns))
        if plan.compile:
            groups[-1] = [*groups[-1], "model.compile()"]
        return groups

    def init_statements(self, init: InitPlan) -> list[str]:
        """`init [target] from "file" (options)`: the checkpoint's weights, mapped onto the
        target's keys as the runner maps them, loaded with `load_state_dict`."""
        target = _module_path("model", init.target) if init.target else "model"
        path = literal_doc(init.file)
        out = [f"# init {init.target or 'the model'}"]
        if init.file.lower().endswith(".safetensors"):
            self.imports.add("from safetensors.torch import load_file")
            out.append(statement(Brackets("load_file", (path,)), "state = ", MAIN))
        else:
            load = Brackets(
                "torch.load", (path, Text("map_location=device"), Text("weights_only=True"))
            )
            out += [
                statement(load, "state = ", MAIN),
                'state = state.get("model", state)  # the weights of a specc checkpoint',
            ]
        if init.strip_prefix:
            out.append(self.strip_prefix(init.strip_prefix))
        if init.add_prefix:
            add = flat(literal_doc(init.add_prefix))
            out.append(statement(self.dict_comp(f"{add} + k: v"), "state = ", MAIN))
        if init.target and not (init.strip_prefix or init.add_prefix):
            strip = self.strip_prefix(init.target + ".", MAIN + 4)
            out.append(block_of("take_submodule_weights", target, init.target, strip))
        if init.ignore:
            out += self.ignore_statements(init.ignore, target)
        if init.transpose:
            out += self.transpose_statements(init.transpose)
        if init.ties:
            pairs = tuple(Brackets("", (literal_doc(a), literal_doc(b))) for a, b in init.ties)
            ties = Brackets("", pairs, "[", "]", display=True)
            out.append(block_of("fill_ties", self.condition(ties, "for alias, source in", MAIN)))
        if init.skip_mismatched:
            keep = "k not in own or v.shape == own[k].shape"
            out += [
                "# skip_mismatched: where a shape differs, keep the model's own tensor",
                f"own = {target}.state_dict()",
                statement(self.dict_comp("k: v", keep), "state = ", MAIN),
            ]
        if init.strict:
            out.append(f"{target}.load_state_dict(state)")
        else:
            out.append(f"print({target}.load_state_dict(state, strict=False))")
        return out

    def lora_statements(self, lora: LoraPlan) -> list[str]:
        """`lora "..." (r=, alpha=)`: each listed Linear wrapped in the script's LoRALinear
        (the adapter file loaded when the plan starts from one), then every base parameter
        frozen except those of `modules_to_save`, as the runner does."""
        self.gen.uses["F"] = self.gen.uses["math"] = True  # LoRALinear's
        layers = Brackets("", tuple(literal_doc(m) for m in lora.modules), "[", "]", display=True)
        wrap = Brackets("LoRALinear", (Text("model.get_submodule(path)"), Text(f"r={lora.r}"),
                                       Text(f"scale={lora.scale!r}"),
                                       Text(f"dropout={lora.dropout!r}")))  # fmt: skip
        out = [
            f"# LoRA: a rank-{lora.r} update on {len(lora.modules)} Linear layers; only the "
            "adapters train",
            statement(layers, "lora_layers = ", MAIN),
            "for path in lora_layers:\n    "
            + statement(
                Brackets("model.set_submodule", (Text("path"), wrap)), "", MAIN + 4
            ).replace("\n", "\n    "),
        ]
        if lora.load:
            out += self.adapter_load_statements(lora.load, lora.load_is_peft_folder)
        saved = lora.modules_to_save
        test = self.condition(self.name_test(saved)) if saved else ""
        out.append(block_of("freeze_base", ", ".join(saved), test))
        return out

    def adapter_load_statements(self, source: str, folder: bool) -> list[str]:
        """`load=`: the adapter's tensors, by the model's keys (specc's adapter file, or a
        PEFT `folder` whose keys carry `base_model.model.`)."""
        self.imports.add("from safetensors.torch import load_file")
        path = f"{source.rstrip('/')}/adapter_model.safetensors" if folder else source
        load = Brackets("load_file", (literal_doc(path),))
        out = [f"# start from the adapter {source}", statement(load, "adapter = ", MAIN)]
        if folder:
            strip = Comp("", Text('k.removeprefix("base_model.model."): v'),
                         "for k, v in adapter.items()", open="{", close="}")  # fmt: skip
            out.append(statement(strip, "adapter = ", MAIN))
        out.append("model.load_state_dict(adapter, strict=False)  # the lora_A/lora_B keys")
        return out

    def patterns_statement(self, name: str, patterns: tuple[str, ...]) -> str:
        """`name = ["*.c_attn.weight", ...]`: the fnmatch patterns of an init option."""
        self.imports.add("import fnmatch")
        items = tuple(literal_doc(p) for p in patterns)
        return statement(Brackets("", items, "[", "]", display=True), f"{name} = ", MAIN)

    def ignore_statements(self, patterns: tuple[str, ...], target: str) -> list[str]:
        """`ignore=`: the file's matching keys are dropped, the model's keep their tensors."""
        hit = "any(fnmatch.fnmatchcase(k, p) for p in ignored)"
        own = Comp("", Text("k: v"), "for k, v in own.items()", more=(f"if {hit}",),
                   open="{", close="}")  # fmt: skip
        return [
            "# ignore=: these keys are left out of the file; the model keeps its own",
            self.patterns_statement("ignored", patterns),
            f"own = {target}.state_dict()",
            statement(self.dict_comp("k: v", f"not {hit}"), "state = ", MAIN),
            statement(own, "state |= ", MAIN),
        ]

    def transpose_statements(self, patterns: tuple[str, ...]) -> list[str]:
        """`transpose=`: tensors stored as [in, out] (HF's Conv1D), Linear's are [out, in]."""
        hit = "any(fnmatch.fnmatchcase(k, p) for p in transposed)"
        return [
            "# transpose=: stored as [in, out] (HF's Conv1D); Linear's weight is [out, in]",
            self.patterns_statement("transposed", patterns),
            statement(self.dict_comp(f"k: v.t() if {hit} else v"), "state = ", MAIN),
        ]

    @staticmethod
    def dict_comp(elt: str, condition: str | None = None) -> Doc:
        more = (f"if {condition}",) if condition else ()
        return Comp("", Text(elt), "for k, v in state.items()", more=more, open="{", close="}")

    def strip_prefix(self, prefix: str, base: int = MAIN) -> str:
        text = flat(literal_doc(prefix))
        doc = self.dict_comp(f"k.removeprefix({text}): v", f"k.startswith({text})")
        return statement(doc, "state = ", base)

    def name_test(self, patterns: tuple[str, ...]) -> Doc:
        """A condition on `name` (a parameter's name) that is true where one of the
        patterns matches it, as `plan.matches` decides."""
        tests: list[Doc] = []
        for pattern in patterns:
            if is_glob(pattern):
                self.imports.add("import fnmatch")
                test = Brackets("fnmatch.fnmatchcase", (Text("name"), literal_doc(pattern)))
            elif pattern in self.parameters:
                test = Chain((Text("name"), literal_doc(pattern)), ("==",), PREC_COMPARE)
            else:
                test = Brackets("name.startswith", (literal_doc(pattern + "."),))
            tests.append(test)
        if len(tests) == 1:
            return tests[0]
        return Chain(tuple(tests), ("or",) * (len(tests) - 1), PREC_OR)

    def freeze_statements(self, patterns: tuple[str, ...]) -> list[str]:
        """Each named module or parameter by name; glob patterns in one loop."""
        out = [f"{_module_path('model', p, self.getter(p))}.requires_grad_(False)"
               for p in patterns if not is_glob(p)]  # fmt: skip
        globs = tuple(p for p in patterns if is_glob(p))
        if globs:
            out.append(block_of("freeze_matching", self.condition(self.name_test(globs))))
        return out

    def getter(self, pattern: str) -> str:
        return "get_parameter" if pattern in self.parameters else "get_submodule"

    @staticmethod
    def condition(test: Doc, keyword: str = "if", base: int = MAIN + 4) -> str:
        """`test` laid out as the condition of an `if` (or `elif`) in a loop in `main()`
        (or of a `for` at `base`): what goes between the keyword and `:`, continuation
        lines relative to the keyword."""
        lines = layout(test, " " * base, f"{keyword} ", ":")
        text = block(lines, base).removeprefix(f"{keyword} ").removesuffix(":")
        return text.replace("\n" + " " * base, "\n")

    # ---- loss, optimizer, scheduler -----------------------------------------------------
    def loss_statements(self) -> list[str]:
        """`loss_fn = ...`, moved to the device only when it holds tensors."""
        loss = self.plan.loss
        if loss.ctor.origin == "spec":  # a class of the generated module
            doc = self.ctor_call(loss.ctor, check_identifier(loss.ctor.name, loss.ctor.span,
                                                             "loss model"))  # fmt: skip
            stateful = bool(self.loss_inst and self.loss_inst.layers)
        else:
            doc = self.ctor_call(loss.ctor, self.class_head(loss.ctor, "nn"))
            stateful = loss.stateful
        why = []
        if self.sequence_targets() is not None:
            why = ["# one class per token: the [B, T, V] scores and [B, T] targets are scored "
                   "as [B*T, V] and [B*T]"]  # fmt: skip
        if stateful:
            return why + _on_device("loss_fn", doc)
        return [*why, statement(doc, "loss_fn = ", MAIN)]

    def optimizer_statements(self) -> list[str]:
        """Parameter groups (`group` statements, first match wins; frozen parameters left
        out), then the optimizer."""
        opt = self.plan.optimizer
        out: list[str] = []
        if opt.groups:
            params: Doc = self.group_statements(opt.groups, bool(opt.rest), out)
        elif self.plan.frozen:
            params = Text("[p for p in model.parameters() if p.requires_grad]")
        else:
            params = Text("model.parameters()")
        extra = {"fused": Text('device.type == "cpu"', PREC_COMPARE)} if opt.fused_on_cpu else {}
        if extra:
            out.append("# torch's fused step on CPU: one kernel for every tensor, as `specc run`")
        doc = self.ctor_call(opt.ctor, self.class_head(opt.ctor, "torch.optim"), (params,), **extra)
        out.append(statement(doc, "optimizer = ", MAIN))
        return out

    def group_statements(self, groups: tuple[GroupPlan, ...], rest: bool, out: list[str]) -> Doc:
        """Fill one list per `group` (and one for the rest) in a loop over the named
        parameters; returns the optimizer's param-group dicts."""
        names: list[str] = []
        for i, g in enumerate(groups, start=1):
            base = re.sub(r"\W+", "_", g.patterns[0].split("*")[0], flags=re.ASCII).strip("_")
            if not base or not base.isidentifier() or base[0].isdigit():
                base = f"group{i}"
            names.append(self.gen.modules.fresh(f"{base}_params", "parameter group"))
        if rest:
            names.append("other_params")
        conditions = [self.condition(self.name_test(g.patterns), "elif" if i else "if")
                      for i, g in enumerate(groups)]  # fmt: skip
        out.append(block_of("fill_groups", names, conditions, bool(self.plan.frozen)))
        dicts = []
        for g, var in zip(groups, names, strict=False):
            items = [Text(f'"params": {var}')]
            items += [with_prefix(f"{literal_doc(k).text}: ", value_doc(v, g.span))
                      for k, v in g.options.items()]  # fmt: skip
            dicts.append(Brackets("", tuple(items), "{", "}", PREC_ATOM, display=True))
        if rest:
            dicts.append(Text('{"params": other_params}'))
        return Brackets("", tuple(dicts), "[", "]", PREC_ATOM, display=True)

    def scheduler_statements(self, n_train: str) -> list[str]:
        """The scheduler (OneCycleLR gets its length) and linear warmup."""
        plan, sched = self.plan, self.plan.scheduler
        out: list[str] = []
        if sched.fill_total_steps:
            self.imports.add("import math")
            data = plan.data
            per_epoch = (f"{n_train} // {data.batch_size}" if data.drop_last
                         else f"math.ceil({n_train} / {data.batch_size})")  # fmt: skip
            if plan.accumulate > 1:
                per_epoch = f"math.ceil({per_epoch} / {plan.accumulate})"
            out.append(statement(Text(per_epoch), "steps_per_epoch = ", MAIN))
        if sched.ctor is not None:
            extra = {"total_steps": Text(f"steps_per_epoch * {plan.epochs}", PREC_PRIMARY)} \
                if sched.fill_total_steps else {}  # fmt: skip
            head = self.class_head(sched.ctor, "torch.optim.lr_scheduler")
            doc = self.ctor_call(sched.ctor, head, (Text("optimizer"),), **extra)
            out.append(statement(doc, "scheduler = ", MAIN))
        if not sched.warmup:
            return out
        warmup = Brackets(
            "torch.optim.lr_scheduler.LinearLR",
            (Text("optimizer"), Text("start_factor=0.001"), Text(f"total_iters={sched.warmup}")),
        )
        if sched.ctor is None:
            out.append(f"# linear warmup over the first {sched.warmup} optimizer steps")
            out.append(statement(warmup, "scheduler = ", MAIN))
            return out
        sequential = Brackets(
            "torch.optim.lr_scheduler.SequentialLR",
            (Text("optimizer"), Text("[warmup, scheduler]"), Text(f"milestones=[{sched.warmup}]")),
        )
        out += [
            f"# linear warmup over the first {sched.warmup} optimizer steps, then the scheduler",
            statement(warmup, "warmup = ", MAIN),
            statement(sequential, "scheduler = ", MAIN),
        ]
        return out

    # ---- evaluation and the loop --------------------------------------------------------
    def kernel_statements(self) -> tuple[list[str], list[str]]:
        """What `specc run` sets for a single-process run: (always, on CPU only)."""
        k = self.plan.kernels
        always, cpu = [], []
        if k.threads is not None:
            line = f"torch.set_num_threads({k.threads})"
            if k.threads_by_rule:
                cpu += [f"# {KERNEL_REASONS['threads']}", line]
            else:
                always.append(f"{line}  # threads = {k.threads}")
        if k.conv is not None:
            cpu += [f"# {KERNEL_REASONS['conv']}", "torch.backends.mkldnn.enabled = False"]
        return always, cpu

    def evaluate_context(self) -> dict[str, Any]:
        metrics = self.plan.metrics
        out = self.plan.model.instance.outputs
        tensor = out[0].tensor if len(out) == 1 else None
        shape = list(tensor.shape) if tensor is not None else []
        sequence = self.sequence_targets()
        dim = "1" if len(shape) == 1 else "-1"
        names = [COUNTERS[m] for m in metrics if m in COUNTERS]
        counts = self.weigh_statements(sequence)
        # for a sequence, hits of the tokens the loss counts (`counted`); else of samples
        hits = "[counted].sum()" if sequence else ".sum()"
        if "accuracy" in metrics:
            counts.append(f"correct += (outputs.argmax({dim}) == labels){hits}.item()")
        if "top5" in metrics:
            k = min(5, shape[-1]) if shape and isinstance(shape[-1], int) else 5
            counts += [
                f"top5 = outputs.topk({k}, dim={dim}).indices",
                f"correct_top5 += (top5 == labels.unsqueeze({dim})).any({dim}){hits}.item()",
            ]
        counts.append(f"total += {'tokens' if sequence else 'len(labels)'}")
        if any(m in METRIC_RESULTS for m in metrics):
            self.imports.add("import math")
        what = {"accuracy": "accuracy", "top5": "top-5 accuracy", "perplexity": "perplexity",
                "bits_per_token": "bits per token"}  # fmt: skip
        described = ["loss", *(what[m] for m in metrics)]
        listed = ", ".join(described[:-1]) + " and " + described[-1] if metrics else "loss"
        per = " per token" if sequence else ""
        results = ["total_loss / total"]
        results += [METRIC_RESULTS.get(m, f"{COUNTERS.get(m)} / total") for m in metrics]
        values: Doc = Text(results[0])
        if len(results) > 1:
            values = Brackets("", tuple(Text(r) for r in results), bare=True, display=True)
        doc = f"The mean {listed}{per} of `model` over `batches` of (inputs, labels)."
        return {
            "doc": '"""' + "\n    ".join(_wrap(doc)) + '"""',
            "init": ", ".join(["total_loss", *names, "total"])
            + " = "
            + ", ".join(["0.0", *("0" for _ in names), "0"]),
            "counts": counts,
            "result": statement(values, "return ", 4),
        }

    def sequence_targets(self) -> ClassTargets | None:
        """The plan's class targets when the loss scores every token of a sequence."""
        targets = self.plan.loss.targets
        return targets if targets is not None and targets.flatten_sequence else None

    def weigh_statements(self, sequence: ClassTargets | None) -> list[str]:
        """The batch's loss into the sum: weighted by samples, or for a sequence by the
        tokens the loss counts (not `ignore_index`), as `specc run` weighs it."""
        if sequence is None:
            return ["total_loss += loss.item() * len(labels)"]
        ignore = sequence.ignore_index
        return [
            f"counted = labels != {ignore}  # the tokens the loss counts (ignore_index={ignore})",
            "tokens = counted.sum().item()",
            "if not tokens:  # every target ignored: the batch counts for nothing\n    continue",
            "total_loss += loss.item() * tokens",
        ]

    def loss_call(self) -> str:
        """The loss of a batch: for a sequence, every position's scores against its target."""
        if self.sequence_targets() is not None:
            return "loss_fn(outputs.flatten(0, -2), labels.flatten())"
        return "loss_fn(outputs, labels)"

    def evaluation(self, split: str, held: str, base: int, prefix: str = "") -> dict[str, str]:
        """`val_loss, val_accuracy = evaluate(...)` and the line printing the results."""
        metrics = self.plan.metrics
        size = self.plan.data.eval_batch_size
        if held.endswith("_x"):
            y = held[:-2] + "_y"
            batches = Text(f"zip({held}.split({size}), {y}.split({size}))", PREC_PRIMARY)
        else:
            # a new generator: the loader's seed is not drawn from torch's global one
            batches = Text(f"DataLoader({held}, batch_size={size}, generator=torch.Generator())",
                           PREC_PRIMARY)  # fmt: skip
        names = [f"{split}_{m}" for m in ["loss", *metrics]]
        args = (Text("model"), batches, Text("loss_fn"), Text("device"))
        call = statement(Brackets("evaluate", args), ", ".join(names) + " = ", base)
        parts = [f"{split} loss {{{names[0]}:.4f}}"]
        parts += [f"{m} {{{n}:.4f}}" for m, n in zip(metrics, names[1:], strict=True)]
        text = prefix + ", ".join(parts)
        report = statement(Brackets("print", (Text(f'f"{text}"'),)), "", base)
        return {"call": call, "report": report}

    def step_statements(self) -> list[str]:
        """One optimizer step, its scheduler step and the log line."""
        plan = self.plan
        fp16 = plan.precision == "fp16"
        step = []
        if plan.clip_grad_norm:
            if fp16:
                step.append("scaler.unscale_(optimizer)")
            clip = flat(literal_doc(plan.clip_grad_norm))
            step.append(f"nn.utils.clip_grad_norm_(model.parameters(), {clip})")
        step += ["scaler.step(optimizer)", "scaler.update()"] if fp16 else ["optimizer.step()"]
        step.append("optimizer.zero_grad()")
        if plan.scheduler.interval == "step" and (plan.scheduler.ctor or plan.scheduler.warmup):
            step.append("scheduler.step()")
        if plan.max_steps:
            step.append("step += 1")
        if plan.max_steps:
            step.append(f"if step == {plan.max_steps}:\n    break")
        return step

    def best_context(self, eval_split: str | None, final_eval: bool) -> dict[str, Any] | None:
        """Tracking the best epoch: for early stopping, and to test the best weights when
        a val set picks them (as `specc run` does with best.pt)."""
        plan = self.plan
        keep = eval_split == "val" and final_eval
        if eval_split is None or not (plan.early_stop or keep):
            return None
        best = plan.best_metric
        return {
            "init": f'best_{best} = float("{"-inf" if plan.higher_is_better else "inf"}")',
            "better": f"{eval_split}_{best} {'>' if plan.higher_is_better else '<'} best_{best}",
            "best": f"best_{best}",
            "metric": f"{eval_split}_{best}",
            "patience": plan.early_stop,
            "keep": keep,
        }

    def device_statement(self) -> str:
        if self.plan.device == "auto":
            return 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")'
        return statement(
            Brackets("torch.device", (literal_doc(self.plan.device),)), "device = ", MAIN
        )

    def setup_section(self, n_train: str) -> list[str]:
        """Loss, optimizer, scheduler and the fp16 gradient scaler."""
        setup = [*self.loss_statements(), *self.optimizer_statements(),
                 *self.scheduler_statements(n_train)]  # fmt: skip
        if self.plan.precision == "fp16":
            setup.append("scaler = torch.amp.GradScaler(device.type)")
        return setup

    def step_context(self) -> dict[str, Any]:
        """Forward, backward and optimizer step of one batch."""
        plan = self.plan
        autocast = ""
        if plan.precision != "fp32":
            dtype = "bfloat16" if plan.precision == "bf16" else "float16"
            autocast = f"torch.autocast(device.type, dtype=torch.{dtype})"
        scaled = "loss" if plan.accumulate == 1 else f"loss / {plan.accumulate}"
        if plan.precision == "fp16":
            backward = f"scaler.scale({scaled}).backward()"
        else:
            backward = "loss.backward()" if plan.accumulate == 1 else f"({scaled}).backward()"
        return {
            "autocast": autocast,
            "skip_nan": plan.on_nan == "skip",
            "accumulate": plan.accumulate,
            "backward": backward,
            "step": self.step_statements(),
            "log_every": plan.log_every * plan.accumulate,
            "max_steps": plan.max_steps,
            "epoch_scheduler": plan.scheduler.interval == "epoch" and plan.scheduler.ctor,
        }

    def epochs_context(self, n_train: str) -> dict[str, Any]:
        """The epoch loop: its length and each epoch's sample order and batches."""
        plan, data = self.plan, self.plan.data
        return {
            "epochs": plan.epochs,
            # `specc run`'s seed of each epoch's order: seed * 1000003 + epoch
            "epoch_seed": f"{plan.seed * 1000003} + epoch" if plan.seed else "epoch",
            "n_train": n_train,
            "batch_size": data.batch_size,
            "shuffle": data.shuffle,
            "drop_last": data.drop_last,
            "workers": data.workers,
            "in_memory": data.in_memory,
            "augment": any(t.random for t in data.train_transform) and data.in_memory,
            "frozen_norms": [_module_path("model", p) for p in plan.frozen_norms],
        }

    def evaluation_context(self, held: dict[str, str]) -> dict[str, Any]:
        """The val (else test) set after each epoch, the test set at the end."""
        eval_split = "val" if "val" in held else "test" if "test" in held else None
        epoch_eval = final_eval = None
        if eval_split is not None:
            epoch_eval = self.evaluation(eval_split, held[eval_split], 8, "epoch {epoch}: ")
        if "test" in held and (eval_split == "val" or self.plan.max_steps):
            final_eval = self.evaluation("test", held["test"], MAIN)
        stop_eval = None  # max_steps ending an epoch part way: val scores what it trained
        if eval_split == "val" and self.plan.max_steps:  # (a test set is scored at the end)
            stop_eval = self.evaluation(
                eval_split, held[eval_split], 12, "step {step} (max_steps, in epoch {epoch}): "
            )
        return {
            "evaluate": self.evaluate_context() if eval_split else None,
            "epoch_eval": epoch_eval,
            "stop_eval": stop_eval,
            "best": self.best_context(eval_split, final_eval is not None),
            "final_eval": final_eval,
        }

    def source(self) -> str:
        """The script: `train.py.j2` filled with the plan's sections."""
        plan = self.plan
        always_kernels, cpu_kernels = self.kernel_statements()
        model_groups = self.model_section()
        data_stmts, held = self.data.section()
        n_train = "len(train_y)" if plan.data.in_memory else "len(train_set)"
        stem = Path(self.program.sources[0].path).stem
        weights = f"{stem}.pt" if re.fullmatch(r"[A-Za-z0-9_.-]+", stem) else "model.pt"
        context = {
            "seed": repr(plan.seed),
            "device": self.device_statement(),
            "always_kernels": always_kernels,
            "cpu_kernels": cpu_kernels,
            # blank lines around init and freeze statements only
            "model": paragraphs(*model_groups) if len(model_groups) > 1 else model_groups[0],
            "data": data_stmts,
            "setup": self.setup_section(n_train),
            **self.epochs_context(n_train),
            **self.step_context(),
            "loss_call": self.loss_call(),
            **self.evaluation_context(held),
            "weights": string_literal(weights),
            "saved": string_literal(f"saved the weights to {weights}"),
            "lora": plan.lora is not None,
            **self.data.helpers(),  # last: the sections above decide which are needed
        }
        self.gen.uses["torch"] = True
        return self.gen.module("train.py.j2", context, sorted(self.imports | self.data.imports))
