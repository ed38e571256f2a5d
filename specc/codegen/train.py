"""The training script (`compile --train`): the train block as a tutorial-style `main()`."""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import re
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
from specc.codegen.models import (
    ModuleWriter,
)
from specc.codegen.naming import check_attribute, check_identifier
from specc.errors import (
    DataError,
    SpecTypeError,
    UsageError,
    did_you_mean,
)
from specc.lang.plugins import load_plugins
from specc.training.config import CallSpec
from specc.values import literal, loc

# ---- the training script (compile --train) ------------------------------------------------

# Names the training script binds or calls at module level or in `main()`: a model or plugin
# class of the same name would shadow them.
TRAIN_NAMES = frozenset(
    {
        # imports and helpers
        "torchvision", "v2", "DataLoader", "Dataset", "Subset", "TensorDataset", "fnmatch",
        "math", "np", "load_file", "evaluate", "main", "digits_dataset", "load_tensor_file",
        "TransformedDataset", "UnverifiedCIFAR10", "UnverifiedCIFAR100",
        # builtins the script calls
        "print", "len", "round", "max", "sorted", "isinstance", "dict", "tuple", "list",
        "enumerate", "any",
        # locals of main()
        "device", "transform", "train_transform", "train_set", "val_set", "test_set",
        "train_loader", "val_loader", "test_loader", "n_val", "generator", "perm", "model",
        "state", "own", "name", "param", "loss_fn", "optimizer", "scheduler", "warmup",
        "scaler", "step", "epoch", "running_loss", "i", "inputs", "labels", "outputs", "loss",
        "bad_epochs", "k", "v", "p", "other_params",
        *(f"{pre}_{m}" for pre in ("best", "val", "test") for m in ("loss", "accuracy", "top5")),
    }
)  # fmt: skip
METRICS = ("accuracy", "top5", "loss")
STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")  # stepped per optimizer step by default
MAIN = 4  # indent of main()'s statements
TENSOR_FILE_KINDS = {".pt": "pt", ".pth": "pt", ".npz": "npz", ".safetensors": "safetensors"}
TENSOR_FILE_IMPORTS = {
    "npz": {"import numpy as np"},
    "safetensors": {"from safetensors.torch import load_file"},
}
# How load_tensor_file reads each kind of file (the `data` dict it fills), in branch order.
TENSOR_FILE_LOADS = {
    "npz": ('path.endswith(".npz")', "data = dict(np.load(path))"),
    "safetensors": ('path.endswith(".safetensors")', "data = load_file(path)"),
    "pt": (
        'path.endswith((".pt", ".pth"))',
        "data = torch.load(path, weights_only=True)\n"
        "if isinstance(data, (tuple, list)):  # saved as a pair (inputs, labels)\n"
        "    data = {x: data[0], y: data[1]}",
    ),
}


def _plain_signature(sig: inspect.Signature) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _check_call(
    target: Any, args: list, kwargs: dict, what: str, span: ir.Span | None, error=SpecTypeError
) -> inspect.BoundArguments | None:
    """Bind a spec's arguments to `target`'s signature: a mistake is a located error here,
    not a TypeError when the script runs. None when the signature cannot be read."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise error(
            f"bad arguments for {what}: {exc}",
            loc(span),
            hint=f"the signature is {_plain_signature(sig)}",
        ) from None


def _paragraphs(*groups: list[str]) -> list[str]:
    """Statement groups with a blank line between them (the template indents each line;
    `indent` leaves the empty one empty)."""
    out: list[str] = []
    for group in groups:
        if group and out:
            out[-1] += "\n"
        out += group
    return out


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


def _on_device(name: str, ctor: Doc) -> list[str]:
    """`name = Ctor(...).to(device)`; split in two when that is too long for one line
    (ruff would break the short `.to(` call first)."""
    line = " " * MAIN + f"{name} = {flat(ctor)}.to(device)"
    if fits(line):
        return [line[MAIN:]]
    return [statement(ctor, f"{name} = ", MAIN), f"{name}.to(device)"]


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class TrainScript:
    """`compile --train`: the model module, then the data pipeline, loss, optimizer,
    scheduler and a tutorial-style loop in `main()`. The settings are the runner's
    (`config.train_config`); each constructor is bound to its class's signature here, so
    a mistake is a located error at compile time, not a traceback when the script runs."""

    def __init__(self, program: ir.Program, model: str | None) -> None:
        from specc.shapes.check import check_model
        from specc.training.config import train_config

        self.program = program
        self.cfg, self.data = train_config(program)
        spec = self.cfg.model
        if model is not None and model != spec.name:
            raise UsageError(
                f"--train writes the training of the train block's model `{spec.name}`, "
                f"not `{model}`",
                hint="leave out --model, or change `model = ...` in the train block",
            )
        mdef = program.model(spec.name)
        if mdef is None:
            raise SpecTypeError(
                f"no model named `{spec.name}`",
                loc(spec.span),
                hint=did_you_mean(spec.name, [m.name for m in program.models]),
            )
        if len(spec.args) > len(mdef.params):
            raise SpecTypeError(
                f"`{spec.name}` takes {len(mdef.params)} arguments, not {len(spec.args)}",
                loc(spec.span),
            )
        names = [p.name for p in mdef.params]
        args = dict(zip(names, spec.args, strict=False)) | spec.kwargs
        self.top = check_model(program, spec.name, args=args)
        self.plugins = load_plugins(program) if program.plugins else {}
        self.loss_inst = self.spec_loss()
        tops = [self.top] if self.loss_inst is None else [self.top, self.loss_inst]
        reserved = {n: f"`{n}`, which the generated training script uses" for n in TRAIN_NAMES}
        self.gen = ModuleWriter(program, tops, reserved)
        self.imports = {"import torch"}
        self.dataset_names: set[str] = set()  # torch.utils.data classes besides DataLoader
        # the helpers the data needs
        self.unverified: dict[str, str] = {}  # class name -> the torchvision class it extends
        self.digits = False  # digits_dataset()
        self.tensor_kinds: set[str] = set()  # load_tensor_file() for these kinds of file
        self.transformed = False  # TransformedDataset
        self.meta: Any = None

    # ---- values -------------------------------------------------------------------------
    def value(self, v: Any, span: ir.Span | None) -> Doc:
        """A constant from the spec as code (literals through `repr`)."""
        if isinstance(v, (Text, Brackets)):  # already code (a coerced argument)
            return v
        if isinstance(v, CallSpec):
            raise SpecTypeError("a call is not allowed here", loc(v.span or span))
        if isinstance(v, list):
            items = tuple(self.value(i, span) for i in v)
            return Brackets("", items, "[", "]", PREC_ATOM, display=True)
        if isinstance(v, tuple):
            if not v:
                return Text("()")
            items = tuple(self.value(i, span) for i in v)
            return Brackets("", items, prec=PREC_ATOM, one_tuple=len(items) == 1, display=True)
        if v is None or isinstance(v, (bool, int, float, str)):
            return literal_doc(v)
        raise SpecTypeError(f"cannot write {v!r} as Python source", loc(span))

    def call(
        self,
        head: str,
        spec: CallSpec,
        lead: tuple[Doc, ...] = (),
        args: list | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Doc:
        """`head(*lead, *args, **kwargs)` with the spec's arguments (or the given ones)."""
        args = spec.args if args is None else args
        kwargs = spec.kwargs if kwargs is None else kwargs
        items = [*lead, *(self.value(a, spec.span) for a in args)]
        for k, v in kwargs.items():
            items.append(
                with_prefix(
                    f"{check_attribute(k, spec.span, 'keyword')}=", self.value(v, spec.span)
                )
            )
        return Brackets(head, tuple(items))

    # ---- data ---------------------------------------------------------------------------
    def transform_doc(self, items: list[CallSpec]) -> Doc | None:
        """`v2.Compose([...])` for a transform list; None when it is empty. ToTensor is
        the classic one: `ToImage()` then `ToDtype(torch.float32, scale=True)`."""
        import torch
        from torchvision.transforms import v2

        steps: list[Doc] = []
        for c in items:
            if c.name == "ToTensor":
                if c.args or c.kwargs:
                    raise DataError(
                        "transform `ToTensor` takes no arguments",
                        loc(c.span),
                        hint="write `ToTensor()`; use `ToDtype` to choose another dtype",
                    )
                steps += [Text("v2.ToImage()"), Text("v2.ToDtype(torch.float32, scale=True)")]
                continue
            cls = getattr(v2, c.name, None) if not c.name.startswith("_") else None
            if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
                names = [n for n in dir(v2) if isinstance(getattr(v2, n), type)]
                raise DataError(
                    f"unknown transform `{c.name}`: torchvision.transforms.v2 has no transform "
                    "of that name",
                    loc(c.span),
                    hint=did_you_mean(c.name, [*names, "ToTensor"]),
                )
            kwargs, values = dict(c.kwargs), dict(c.kwargs)
            dtype = kwargs.get("dtype")
            if isinstance(dtype, str):  # spec strings for the dtypes torchvision wants
                name = dtype.removeprefix("torch.")
                if isinstance(getattr(torch, name, None), torch.dtype):
                    kwargs["dtype"] = Text(f"torch.{check_attribute(name, c.span, 'dtype')}")
                    values["dtype"] = getattr(torch, name)
            _check_call(cls, c.args, values, f"transform `{c.name}`", c.span, DataError)
            steps.append(self.call(f"v2.{c.name}", c, kwargs=kwargs))
        if not steps:
            return None
        self.imports.add("from torchvision.transforms import v2")
        return Brackets(
            "v2.Compose", (Brackets("", tuple(steps), "[", "]", PREC_ATOM, display=True),)
        )

    def dataset_doc(self, spec: CallSpec, transform: str | None) -> Doc:
        """One dataset: a torchvision class, or a helper for Digits / TensorFile."""
        if "transform" in spec.kwargs:
            raise DataError(
                f"dataset `{spec.name}`: give transforms in the transform list, "
                "not as `transform=`",
                loc(spec.span),
            )
        if spec.name in ("Digits", "TensorFile"):
            doc = self.builtin_dataset(spec)
            if transform is None:
                return doc
            self.transformed = True
            self.dataset_names.add("Dataset")
            return Brackets("TransformedDataset", (doc, Text(transform)))
        import torchvision

        name = spec.name
        cls = getattr(torchvision.datasets, name, None)
        if (
            name not in torchvision.datasets.__all__
            or not isinstance(cls, type)
            or name == "VisionDataset"
        ):
            raise DataError(
                f"unknown dataset `{name}`: it is neither a built-in (Digits, TensorFile) "
                "nor a dataset class in torchvision.datasets",
                loc(spec.span),
                hint=did_you_mean(name, ["Digits", "TensorFile", *torchvision.datasets.__all__]),
            )
        kwargs = dict(spec.kwargs)
        verify = kwargs.pop("verify", True)
        if not isinstance(verify, bool):
            raise DataError(
                f"dataset `{name}`: `verify` must be true or false, got {verify!r}", loc(spec.span)
            )
        head = f"torchvision.datasets.{name}"
        if not verify and cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
            # torchvision checks these files' MD5 sums; a small subclass checks only that
            # they exist. (MNIST, FashionMNIST and KMNIST files are never checksummed, so
            # for them verify=False changes nothing and is left out.)
            head = f"Unverified{name}"
            self.unverified[head] = name
        elif not verify and hasattr(cls, "_check_integrity") and not self.plain_mnist(cls):
            raise DataError(
                f"dataset `{name}`: verify=False is not supported for this dataset",
                loc(spec.span),
                hint="verify=False works for CIFAR10 and CIFAR100; MNIST, FashionMNIST and "
                "KMNIST never checksum their files; remove verify=False",
            )
        values = dict(kwargs) | ({"transform": None} if transform else {})
        _check_call(cls, spec.args, values, f"dataset `{name}`", spec.span, DataError)
        self.imports.add("import torchvision")
        doc = self.call(head, spec, kwargs=kwargs)
        assert isinstance(doc, Brackets)
        if transform is not None:
            doc = dataclasses.replace(doc, items=(*doc.items, Text(f"transform={transform}")))
        return doc

    @staticmethod
    def plain_mnist(cls: type) -> bool:
        """MNIST, FashionMNIST, KMNIST: raw idx files checked only for existence."""
        import torchvision

        mnist = torchvision.datasets.MNIST
        return (
            issubclass(cls, mnist)
            and cls._check_exists is mnist._check_exists  # type: ignore[attr-defined]
            and cls._load_data is mnist._load_data  # type: ignore[attr-defined]
        )

    def builtin_dataset(self, spec: CallSpec) -> Doc:
        self.dataset_names.add("TensorDataset")
        if spec.name == "Digits":

            def digits(train: bool = True) -> None: ...

            bound = _check_call(
                digits, spec.args, spec.kwargs, "dataset `Digits`", spec.span, DataError
            )
            train = bound.arguments.get("train", True) if bound else True
            if not isinstance(train, bool):
                raise DataError(
                    f"dataset `Digits`: `train` must be true or false, got {train!r}",
                    loc(spec.span),
                )
            self.digits = True
            return self.call("digits_dataset", spec)

        def tensor_file(path: str, x: str = "x", y: str = "y") -> None: ...

        bound = _check_call(
            tensor_file, spec.args, spec.kwargs, "dataset `TensorFile`", spec.span, DataError
        )
        assert bound is not None
        bound.apply_defaults()
        path = bound.arguments["path"]
        for key in ("path", "x", "y"):
            if not isinstance(bound.arguments[key], str):
                raise DataError(f"TensorFile: `{key}` must be a string", loc(spec.span))
        suffix = Path(path).suffix.lower()
        if suffix not in TENSOR_FILE_KINDS:
            raise DataError(
                f"TensorFile: cannot read {path!r}: unsupported file type '{suffix or '(none)'}'",
                loc(spec.span),
                hint="save the inputs and labels as .pt (torch.save), .npz (numpy.savez) "
                "or .safetensors (safetensors.torch.save_file)",
            )
        kind = TENSOR_FILE_KINDS[suffix]
        self.tensor_kinds.add(kind)
        self.imports |= TENSOR_FILE_IMPORTS.get(kind, set())
        return self.call("load_tensor_file", spec)

    def data_section(self) -> tuple[list[str], dict[str, str]]:
        """Transforms, datasets, val_split and loaders; returns the statements and the
        loader of each split ("train", "val", "test") that exists."""
        data = self.data
        transforms: list[str] = []
        common = self.transform_doc(data.transform)
        if common is not None:
            transforms.append(statement(common, "transform = ", MAIN))
        eval_tf = train_tf = "transform" if common is not None else None
        if data.train_transform is not None:
            doc = self.transform_doc(data.train_transform)
            if doc is None:
                train_tf = None
            elif common is None or flat(doc) != flat(common):
                transforms.append(statement(doc, "train_transform = ", MAIN))
                train_tf = "train_transform"
        sets = [statement(self.dataset_doc(data.train, train_tf), "train_set = ", MAIN)]
        splits = {"train": "train_set"}
        if data.val is not None:
            sets.append(statement(self.dataset_doc(data.val, eval_tf), "val_set = ", MAIN))
            splits["val"] = "val_set"
        elif data.val_split:
            splits["val"] = "val_set"
            self.dataset_names.add("Subset")
            held_out = (
                Text("train_set") if eval_tf == train_tf else self.dataset_doc(data.train, eval_tf)
            )
            percent = f"{data.val_split * 100:g}%"
            sets += [
                f"# hold out a seeded random {percent} of the training set for validation",
                statement(
                    Text(f"max(1, round(len(train_set) * {data.val_split!r}))"), "n_val = ", MAIN
                ),
                f"generator = torch.Generator().manual_seed({self.cfg.seed!r})",
                "perm = torch.randperm(len(train_set), generator=generator).tolist()",
                statement(
                    Brackets("Subset", (held_out, Text("sorted(perm[:n_val])"))), "val_set = ", MAIN
                ),
                "train_set = Subset(train_set, sorted(perm[n_val:]))",
            ]
        if data.test is not None:
            sets.append(statement(self.dataset_doc(data.test, eval_tf), "test_set = ", MAIN))
            splits["test"] = "test_set"
        loaders = []
        workers = [Text(f"num_workers={data.workers}")] if data.workers else []
        train_opts = [Text(f"batch_size={data.batch_size}")]
        if data.shuffle:
            train_opts.append(Text("shuffle=True"))
        train_opts += workers
        if data.drop_last:
            train_opts.append(Text("drop_last=True"))
        eval_batch = data.eval_batch_size or max(data.batch_size, 256)
        for split, var in splits.items():
            opts = train_opts if split == "train" else [Text(f"batch_size={eval_batch}"), *workers]
            doc = Brackets("DataLoader", (Text(var), *opts))
            loaders.append(statement(doc, f"{split}_loader = ", MAIN))
        return _paragraphs(transforms, sets, loaders), {s: f"{s}_loader" for s in splits}

    # ---- model, fine-tuning, loss, optimizer ------------------------------------------------
    def meta_model(self) -> Any:
        """The model on the meta device: its parameter and module names, for init, freeze
        and group statements."""
        if self.meta is None:
            import torch

            from specc.builder import build_module

            with torch.device("meta"):
                self.meta = build_module(self.top, self.plugins)
        return self.meta

    def model_section(self) -> tuple[list[list[str]], list[str], bool]:
        """Model, init and freeze statements (a group each); the frozen BatchNorm layers
        (kept in eval mode); whether any parameter is frozen."""
        spec = self.cfg.model
        check_identifier(spec.name, spec.span, "model name")
        train = self.program.trains[0]
        groups = [_on_device("model", self.call(spec.name, spec))]
        for stmt in train.inits:
            groups.append(self.init_statements(stmt))
        frozen: set[str] = set()
        norms: list[str] = []
        if train.freezes:
            from specc.training.finetune import frozen_names

            meta = self.meta_model()
            frozen = frozen_names(self.program, meta)
            for name, p in meta.named_parameters():
                p.requires_grad_(name not in frozen)
            groups.append(self.freeze_statements(train.freezes))
            from torch import nn

            for path, module in meta.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    names = [f"{path}.{n}" for n, _ in module.named_parameters()]
                    if names and all(n in frozen for n in names):
                        norms.append(_module_path("model", path))
        if self.cfg.compile:
            groups[-1] = [*groups[-1], "model.compile()"]
        return groups, norms, bool(frozen)

    def init_statements(self, stmt: ir.InitStmt) -> list[str]:
        """`init [target] from "file" (options)`: the checkpoint's weights, mapped onto the
        target's keys as the runner maps them, loaded with `load_state_dict`."""
        from specc.training.finetune import INIT_OPTIONS

        opts: dict[str, Any] = {}
        for key, expr in stmt.options.items():
            if key not in INIT_OPTIONS:
                raise SpecTypeError(
                    f"init has no option `{key}`",
                    loc(expr.span) or loc(stmt.span),
                    hint=did_you_mean(key, INIT_OPTIONS) or f"options: {', '.join(INIT_OPTIONS)}",
                )
            opts[key] = literal(expr)
        target = "model"
        if stmt.target:
            meta = self.meta_model()
            try:
                meta.get_submodule(stmt.target)
            except AttributeError:
                raise SpecTypeError(
                    f"init: the model has no sub-module `{stmt.target}`",
                    loc(stmt.span),
                    hint=did_you_mean(stmt.target, [n for n, _ in meta.named_modules() if n]),
                ) from None
            target = _module_path("model", stmt.target)
        path = literal_doc(stmt.path)
        out = [f"# init {stmt.target or 'the model'}"]
        if stmt.path.lower().endswith(".safetensors"):
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
        strip, add = opts.get("strip_prefix"), opts.get("add_prefix")
        for option in (strip, add):
            if option is not None and not isinstance(option, str):
                raise SpecTypeError("init: prefixes must be strings", loc(stmt.span))
        if strip:
            out.append(self.strip_prefix(strip))
        if add:
            out.append(
                statement(self.dict_comp(f"{flat(literal_doc(add))} + k: v"), "state = ", MAIN)
            )
        if stmt.target and not (strip or add):
            prefix = stmt.target + "."
            out += [
                f"if not state.keys() & {target}.state_dict().keys():",
                f"    # a whole model's checkpoint: take its {stmt.target}.* weights",
                "    " + self.strip_prefix(prefix, MAIN + 4).replace("\n", "\n    "),
            ]
        if opts.get("skip_mismatched"):
            keep = "k not in own or v.shape == own[k].shape"
            out += [
                "# skip_mismatched: where a shape differs, keep the model's own tensor",
                f"own = {target}.state_dict()",
                statement(self.dict_comp("k: v", keep), "state = ", MAIN),
            ]
        if opts.get("strict"):
            out.append(f"{target}.load_state_dict(state)")
        else:
            out.append(f"print({target}.load_state_dict(state, strict=False))")
        return out

    @staticmethod
    def dict_comp(elt: str, condition: str | None = None) -> Doc:
        more = (f"if {condition}",) if condition else ()
        return Comp("", Text(elt), "for k, v in state.items()", more=more, open="{", close="}")

    def strip_prefix(self, prefix: str, base: int = MAIN) -> str:
        text = flat(literal_doc(prefix))
        doc = self.dict_comp(f"k.removeprefix({text}): v", f"k.startswith({text})")
        return statement(doc, "state = ", base)

    def name_test(self, patterns: list[str]) -> Doc:
        """A condition on `name` (a parameter's name) that is true where one of the
        patterns matches it, as `finetune.matches` decides."""
        meta = self.meta_model()
        params = {n for n, _ in meta.named_parameters()}
        tests: list[Doc] = []
        for pattern in patterns:
            if _is_glob(pattern):
                self.imports.add("import fnmatch")
                test = Brackets("fnmatch.fnmatchcase", (Text("name"), literal_doc(pattern)))
            elif pattern in params:
                test = Chain((Text("name"), literal_doc(pattern)), ("==",), PREC_COMPARE)
            else:
                test = Brackets("name.startswith", (literal_doc(pattern + "."),))
            tests.append(test)
        if len(tests) == 1:
            return tests[0]
        return Chain(tuple(tests), ("or",) * (len(tests) - 1), PREC_OR)

    def freeze_statements(self, freezes: list[ir.FreezeStmt]) -> list[str]:
        """Each named module or parameter by name; glob patterns in one loop."""
        meta = self.meta_model()
        modules = {n for n, _ in meta.named_modules() if n}
        out: list[str] = []
        globs: list[str] = []
        for stmt in freezes:
            for pattern in stmt.patterns:
                if _is_glob(pattern):
                    globs.append(pattern)
                else:
                    getter = "get_submodule" if pattern in modules else "get_parameter"
                    out.append(f"{_module_path('model', pattern, getter)}.requires_grad_(False)")
        if globs:
            test = self.name_test(globs)
            out += [
                "for name, param in model.named_parameters():",
                "    " + self.condition(test, MAIN + 4),
                "        param.requires_grad_(False)",
            ]
        return out

    @staticmethod
    def condition(test: Doc, base: int) -> str:
        """`if test:` at indent `base`, as one string for a statement list at `base - 4`."""
        lines = layout(test, " " * base, "if ", ":")
        return block(lines, base).replace("\n", "\n    ")

    def spec_loss(self) -> ir.ModelInstance | None:
        """The checked instance of a loss written as a spec model (two inputs: the model's
        output and the labels; one scalar out), else None."""
        from torch import nn

        from specc.shapes.check import check_model

        spec = self.cfg.loss
        plugin = self.plugins.get(spec.name)
        mdef = self.program.model(spec.name)
        if (plugin is not None and issubclass(plugin, nn.Module)) or mdef is None:
            return None
        fwd = mdef.forward
        if fwd is None or len(fwd.inputs) != 2:
            raise SpecTypeError(
                f"a loss model takes two inputs (output, target); `{mdef.name}` takes "
                f"{len(fwd.inputs) if fwd else 0}",
                loc(spec.span),
            )
        names = [p.name for p in mdef.params]
        args = dict(zip(names, spec.args, strict=False)) | spec.kwargs
        inputs: dict[str, list[int]] = {fwd.inputs[1].name: []}  # class labels
        outputs = self.top.outputs
        if outputs and outputs[0].tensor is not None:
            inputs[fwd.inputs[0].name] = [int(d) for d in outputs[0].tensor.shape]
        inst = check_model(self.program, mdef.name, args=args, inputs=inputs)
        out = inst.outputs[0] if len(inst.outputs) == 1 else None
        if out is None or out.tensor is None or out.tensor.batched or out.tensor.shape:
            raise SpecTypeError(
                f"loss model `{mdef.name}` must return one scalar (e.g. `.mean()`)",
                loc(spec.span),
            )
        return inst

    def loss_statements(self) -> list[str]:
        """`loss_fn = ...`: a torch.nn loss, a plugin loss or a spec model; moved to the
        device only when it holds tensors."""
        import torch
        from torch import nn

        spec = self.cfg.loss
        plugin = self.plugins.get(spec.name)
        if self.loss_inst is not None:
            head = spec.name  # a class of the generated module
            stateful = bool(self.loss_inst.layers)
        else:
            if plugin is not None and issubclass(plugin, nn.Module):
                cls, head = plugin, self.gen.plugin_class(spec.name, spec.span)
            else:
                cls = getattr(nn, spec.name, None) if not spec.name.startswith("_") else None
                if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                    losses = [n for n in dir(nn) if n.endswith("Loss")] + list(self.plugins)
                    raise SpecTypeError(
                        f"unknown loss `{spec.name}`",
                        loc(spec.span),
                        hint=did_you_mean(spec.name, losses),
                    )
                head = f"nn.{check_attribute(spec.name, spec.span, 'loss')}"
            _check_call(cls, spec.args, spec.kwargs, f"loss `{spec.name}`", spec.span)
            try:
                with torch.device("meta"):
                    loss = cls(*spec.args, **spec.kwargs)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise SpecTypeError(
                    f"{spec.name}(...) is invalid: {str(exc).splitlines()[0]}", loc(spec.span)
                ) from None
            stateful = any(True for _ in loss.state_dict())
        if stateful:
            return _on_device("loss_fn", self.call(head, spec))
        return [statement(self.call(head, spec), "loss_fn = ", MAIN)]

    def optimizer_statements(self, any_frozen: bool) -> list[str]:
        """Parameter groups (`group` statements, first match wins; frozen parameters left
        out), then the optimizer."""
        import torch

        spec = self.cfg.optimizer
        plugin = self.plugins.get(spec.name)
        if plugin is not None and issubclass(plugin, torch.optim.Optimizer):
            cls, head = plugin, self.gen.plugin_class(spec.name, spec.span)
        else:
            cls = getattr(torch.optim, spec.name, None) if not spec.name.startswith("_") else None
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
                names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)]
                raise SpecTypeError(
                    f"unknown optimizer `{spec.name}`",
                    loc(spec.span),
                    hint=did_you_mean(spec.name, [*names, *self.plugins]),
                )
            head = f"torch.optim.{check_attribute(spec.name, spec.span, 'optimizer')}"
        _check_call(cls, [[], *spec.args], spec.kwargs, f"optimizer `{spec.name}`", spec.span)
        groups = self.program.trains[0].groups
        out: list[str] = []
        if groups:
            params: Doc = self.group_statements(groups, any_frozen, out)
        elif any_frozen:
            meta = self.meta_model()
            if not any(p.requires_grad for p in meta.parameters()):
                raise SpecTypeError(
                    "every parameter is frozen: nothing to optimize", loc(spec.span)
                )
            params = Text("[p for p in model.parameters() if p.requires_grad]")
        else:
            params = Text("model.parameters()")
        out.append(statement(self.call(head, spec, (params,)), "optimizer = ", MAIN))
        return out

    def group_statements(self, groups: list[ir.GroupStmt], any_frozen: bool, out: list[str]) -> Doc:
        """Fill one list per `group` (and one for the rest) in a loop over the named
        parameters; returns the optimizer's param-group dicts."""
        from specc.training.finetune import matches

        meta = self.meta_model()
        trainable = [n for n, p in meta.named_parameters() if p.requires_grad]
        taken: set[str] = set()
        names: list[str] = []
        for i, g in enumerate(groups, start=1):
            hit = {
                n for n in trainable if n not in taken and any(matches(n, p) for p in g.patterns)
            }
            if not hit:
                raise SpecTypeError(
                    f"group {g.patterns} matches no trainable parameter", loc(g.span)
                )
            taken |= hit
            base = re.sub(r"\W+", "_", g.patterns[0].split("*")[0], flags=re.ASCII).strip("_")
            if not base or not base.isidentifier() or base[0].isdigit():
                base = f"group{i}"
            names.append(self.gen.modules.fresh(f"{base}_params", "parameter group"))
        rest = [n for n in trainable if n not in taken]
        if rest:
            names.append("other_params")
        if not taken and not rest:  # pragma: no cover - every group matched something
            raise SpecTypeError("every parameter is frozen: nothing to optimize")
        out.append(", ".join(names) + " = " + ", ".join("[]" for _ in names))
        out.append("for name, param in model.named_parameters():")
        if any_frozen:
            out += ["    if not param.requires_grad:", "        continue"]
        for i, (g, var) in enumerate(zip(groups, names, strict=False)):
            test = self.condition(self.name_test(g.patterns), MAIN + 4)
            out += ["    " + (test if i == 0 else "el" + test), f"        {var}.append(param)"]
        if rest:
            out += ["    else:", "        other_params.append(param)"]
        dicts = []
        for g, var in zip(groups, names, strict=False):
            items = [Text(f'"params": {var}')]
            for k, v in g.options.items():
                items.append(
                    with_prefix(f"{literal_doc(k).text}: ", self.value(literal(v), g.span))
                )
            dicts.append(Brackets("", tuple(items), "{", "}", PREC_ATOM, display=True))
        if rest:
            dicts.append(Text('{"params": other_params}'))
        return Brackets("", tuple(dicts), "[", "]", PREC_ATOM, display=True)

    def scheduler_statements(self) -> tuple[list[str], str | None]:
        """The scheduler (OneCycleLR gets its length) and linear warmup; returns the
        statements and when `scheduler.step()` runs: "step", "epoch" or None."""
        import torch

        cfg = self.cfg
        lr = torch.optim.lr_scheduler
        out: list[str] = []
        interval = cfg.scheduler_interval
        spec = cfg.scheduler
        steps = (
            Text("len(train_loader)")
            if cfg.accumulate == 1
            else Text(f"math.ceil(len(train_loader) / {cfg.accumulate})", PREC_PRIMARY)
        )
        if spec is not None:
            cls = getattr(lr, spec.name, None) if not spec.name.startswith("_") else None
            if not isinstance(cls, type) or spec.name == "LRScheduler":
                names = [n for n in dir(lr) if isinstance(getattr(lr, n), type)]
                raise SpecTypeError(
                    f"unknown scheduler `{spec.name}`",
                    loc(spec.span),
                    hint=did_you_mean(spec.name, names),
                )
            head = f"torch.optim.lr_scheduler.{check_attribute(spec.name, spec.span, 'scheduler')}"
            bound = _check_call(
                cls, [None, *spec.args], spec.kwargs, f"scheduler `{spec.name}`", spec.span
            )
            kwargs: dict[str, Any] = dict(spec.kwargs)
            given = set(bound.arguments) if bound else set(kwargs)
            if spec.name == "OneCycleLR" and "total_steps" not in given:
                if cfg.accumulate > 1:
                    self.imports.add("import math")
                if given & {"epochs", "steps_per_epoch"}:  # the runner's total_steps wins
                    kwargs["total_steps"] = Text(f"{flat(steps)} * {cfg.epochs}")
                else:
                    kwargs["epochs"] = Text(str(cfg.epochs))
                    kwargs["steps_per_epoch"] = steps
            out.append(
                statement(
                    self.call(head, spec, (Text("optimizer"),), kwargs=kwargs), "scheduler = ", MAIN
                )
            )
            if interval is None:
                interval = "step" if spec.name in STEP_SCHEDULERS else "epoch"
        if cfg.warmup:
            warmup = Brackets(
                "torch.optim.lr_scheduler.LinearLR",
                (Text("optimizer"), Text("start_factor=0.001"), Text(f"total_iters={cfg.warmup}")),
            )
            if spec is None:
                out.append(f"# linear warmup over the first {cfg.warmup} optimizer steps")
                out.append(statement(warmup, "scheduler = ", MAIN))
                return out, "step"
            if interval != "step":
                raise SpecTypeError(
                    "warmup counts optimizer steps; set scheduler_interval = "
                    '"step" to combine it with a scheduler',
                    loc(spec.span),
                )
            sequential = Brackets(
                "torch.optim.lr_scheduler.SequentialLR",
                (
                    Text("optimizer"),
                    Text("[warmup, scheduler]"),
                    Text(f"milestones=[{cfg.warmup}]"),
                ),
            )
            out += [
                f"# linear warmup over the first {cfg.warmup} optimizer steps, then the scheduler",
                statement(warmup, "warmup = ", MAIN),
                statement(sequential, "scheduler = ", MAIN),
            ]
        return out, interval

    # ---- evaluation and the loop -----------------------------------------------------------
    def metrics(self) -> list[str]:
        for m in self.cfg.metrics:
            if m not in METRICS:
                raise UsageError(
                    f"unknown metric `{m}`",
                    hint=did_you_mean(m, METRICS) or f"available: {', '.join(METRICS)}",
                )
        return [m for m in dict.fromkeys(self.cfg.metrics) if m != "loss"]

    def evaluate_context(self, metrics: list[str], autocast: str) -> dict[str, Any]:
        out = self.top.outputs[0].tensor if len(self.top.outputs) == 1 else None
        shape = list(out.shape) if out is not None else []
        dim = "1" if len(shape) == 1 else "-1"
        counts, names = [], []
        if "accuracy" in metrics:
            names.append("correct")
            counts.append(f"correct += (outputs.argmax({dim}) == labels).sum().item()")
        if "top5" in metrics:
            k = min(5, shape[-1]) if shape and isinstance(shape[-1], int) else 5
            names.append("correct_top5")
            counts += [
                f"top5 = outputs.topk({k}, dim={dim}).indices",
                f"correct_top5 += (top5 == labels.unsqueeze({dim})).any({dim}).sum().item()",
            ]
        what = {"accuracy": "accuracy", "top5": "top-5 accuracy"}
        described = ["loss", *(what[m] for m in metrics)]
        listed = ", ".join(described[:-1]) + " and " + described[-1] if metrics else "loss"
        return {
            "doc": f"The mean {listed} of `model` on `loader`.",
            "init": ", ".join(["total_loss", *names, "total"])
            + " = "
            + ", ".join(["0.0", *("0" for _ in names), "0"]),
            "counts": counts,
            "result": ", ".join(f"{n} / total" for n in ["total_loss", *names]),
        }

    def evaluation(
        self, split: str, loader: str, metrics: list[str], base: int, epoch: bool
    ) -> dict[str, str]:
        """`val_loss, val_accuracy = evaluate(...)` and the line printing the results."""
        names = [f"{split}_{m}" for m in ["loss", *metrics]]
        call = statement(
            Brackets("evaluate", tuple(Text(a) for a in ("model", loader, "loss_fn", "device"))),
            ", ".join(names) + " = ",
            base,
        )
        parts = [f"{split} loss {{{names[0]}:.4f}}"]
        parts += [f"{m} {{{n}:.4f}}" for m, n in zip(metrics, names[1:], strict=True)]
        text = ("epoch {epoch + 1}: " if epoch else "") + ", ".join(parts)
        report = statement(Brackets("print", (Text(f'f"{text}"'),)), "", base)
        return {"call": call, "report": report}

    def source(self) -> str:
        cfg = self.cfg
        if cfg.device == "auto":
            device = 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")'
        else:
            import torch

            try:
                torch.device(cfg.device)
            except RuntimeError:
                raise UsageError(
                    f"unknown device {cfg.device!r}", hint="use auto, cpu, cuda or mps"
                ) from None
            device = statement(
                Brackets("torch.device", (literal_doc(cfg.device),)), "device = ", MAIN
            )
        metrics = self.metrics()
        data_stmts, loaders = self.data_section()
        model_groups, norms, any_frozen = self.model_section()
        setup = [*self.loss_statements(), *self.optimizer_statements(any_frozen)]
        sched_stmts, interval = self.scheduler_statements()
        setup += sched_stmts
        autocast = ""
        if cfg.precision != "fp32":
            dtype = "bfloat16" if cfg.precision == "bf16" else "float16"
            autocast = f"torch.autocast(device.type, dtype=torch.{dtype})"
        if cfg.precision == "fp16":
            setup.append("scaler = torch.amp.GradScaler(device.type)")

        # one optimizer step
        scaled = "loss" if cfg.accumulate == 1 else f"loss / {cfg.accumulate}"
        if cfg.precision == "fp16":
            backward = f"scaler.scale({scaled}).backward()"
        else:
            backward = "loss.backward()" if cfg.accumulate == 1 else f"({scaled}).backward()"
        step = []
        if cfg.clip_grad_norm:
            if cfg.precision == "fp16":
                step.append("scaler.unscale_(optimizer)")
            clip = flat(literal_doc(cfg.clip_grad_norm))
            step.append(f"nn.utils.clip_grad_norm_(model.parameters(), {clip})")
        step += ["scaler.step(optimizer)", "scaler.update()"] if cfg.precision == "fp16" else [
            "optimizer.step()"]  # fmt: skip
        step.append("optimizer.zero_grad()")
        if interval == "step":
            step.append("scheduler.step()")
        loop_init = []
        if cfg.max_steps:
            loop_init.append("step = 0")
            step += ["step += 1", f"if step == {cfg.max_steps}:\n    break"]

        # evaluation: the val (else test) set after each epoch, the test set at the end
        eval_split = "val" if "val" in loaders else "test" if "test" in loaders else None
        epoch_eval = final_eval = early_stop = None
        if eval_split is not None:
            epoch_eval = self.evaluation(eval_split, loaders[eval_split], metrics, 8, True)
        if "test" in loaders and (eval_split == "val" or cfg.max_steps):
            final_eval = self.evaluation("test", loaders["test"], metrics, MAIN, False)
        if cfg.early_stop and eval_split is not None:
            best = cfg.best_metric or next(iter(metrics), "loss")
            if best not in ("loss", *metrics):
                best = "loss"
            higher = best != "loss"
            early_stop = {
                "better": f"{eval_split}_{best} {'>' if higher else '<'} best_{best}",
                "best": f"best_{best}",
                "metric": f"{eval_split}_{best}",
                "patience": cfg.early_stop,
            }
            loop_init += [f'best_{best} = float("{"-inf" if higher else "inf"}")', "bad_epochs = 0"]

        stem = Path(self.program.sources[0].path).stem
        weights = f"{stem}.pt" if re.fullmatch(r"[A-Za-z0-9_.-]+", stem) else "model.pt"
        names = ", ".join(["DataLoader", *sorted(self.dataset_names)])
        self.imports.add(f"from torch.utils.data import {names}")
        # load_tensor_file: one way of reading per kind of file the spec names
        kinds = sorted(self.tensor_kinds, key=list(TENSOR_FILE_LOADS).index)
        branches = [
            {
                "branch": "else" if k == len(kinds) - 1 else f"{'el' if k else ''}if {test}",
                "load": load,
            }
            for k, (test, load) in enumerate(TENSOR_FILE_LOADS[kind] for kind in kinds)
        ]
        context = {
            "unverified": [{"name": n, "base": b} for n, b in sorted(self.unverified.items())],
            "digits": self.digits,
            "tensor_file": branches,
            "transformed": self.transformed,
            "evaluate": self.evaluate_context(metrics, autocast) if eval_split else None,
            "autocast": autocast,
            "seed": repr(cfg.seed),
            "device": device,
            "data": data_stmts,
            # blank lines around init and freeze statements only
            "setup": _paragraphs(*model_groups, setup)
            if len(model_groups) > 1
            else [*model_groups[0], *setup],
            "loop_init": loop_init,
            "epochs": cfg.epochs,
            "frozen_norms": norms,
            "skip_nan": cfg.on_nan == "skip",
            "accumulate": cfg.accumulate,
            "backward": backward,
            "step": step,
            "log_every": cfg.log_every * cfg.accumulate,
            "max_steps": cfg.max_steps,
            "epoch_scheduler": interval == "epoch",
            "epoch_eval": epoch_eval,
            "early_stop": early_stop,
            "final_eval": final_eval,
            "weights": string_literal(weights),
            "saved": string_literal(f"saved the weights to {weights}"),
        }
        self.gen.uses["torch"] = True
        return self.gen.module("train.py.j2", context, sorted(self.imports))
