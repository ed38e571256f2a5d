"""The `specc` command: a thin layer over the Python API.

Every user mistake ends as a rendered SpecError on stderr and exit code 2, never a
traceback. torch is imported only inside the commands that need it, so `specc --help` and
`specc --version` stay fast.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from specc import __version__, gc_paused
from specc.errors import EXIT_USER_ERROR, SpecError, UsageError

app = typer.Typer(
    name="specc",
    help=(
        "Compile and run declarative PyTorch model specs.\n\n"
        "Write a model (layers and a forward dataflow), its data, loss, optimizer and "
        "training in a .spec file; specc shape-checks it before anything runs, builds it "
        "as an nn.Module, trains it, or writes it out as plain PyTorch source.\n\n"
        "Start with: specc check specs/cifar_net.spec"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SpecPath = Annotated[Path, typer.Argument(help="The .spec file.", show_default=False)]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.10
    typer.Option(
        "--model",
        "-m",
        help="Model to use (default: the train block's, else the last one defined).",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"specc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    pass


def _parse_inputs(values: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for v in values:
        name, sep, dims = v.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise UsageError(
                f"--input expects NAME=D1,D2,..., e.g. x=3,224,224; got {v!r}"
            ) from None
    return out


@app.command()
def check(
    spec: SpecPath,
    model: ModelOpt = None,
    input: Annotated[
        list[str],
        typer.Option(
            "--input",
            "-i",
            help="Concrete input shape, e.g. x=3,224,224 (per "
            "sample, no batch dimension). Repeat for several inputs.",
        ),
    ] = [],  # noqa: B006 - typer reads defaults, never mutates them
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Validate a spec and print each model's layers, output shapes and parameter counts."""
    with gc_paused():
        _check(spec, model, input, no_plugins)


def _check(spec: Path, model: str | None, shapes: list[str], no_plugins: bool) -> None:
    from rich.console import Console

    inputs = _parse_inputs(shapes)
    console = Console(width=max(Console().width, 100))
    if model or inputs:
        _check_one(spec, model, inputs, no_plugins, console)
    else:
        _check_all(spec, no_plugins, console)
    console.print("ok")


def _check_one(spec: Path, model: str | None, inputs: dict[str, list[int]], no_plugins: bool,
               console) -> None:  # fmt: skip
    """`--model`/`--input`: that one model (the default one when only inputs are given)."""
    from specc.lang.loader import load
    from specc.shapes.check import check_model

    program = load(spec, plugins=not no_plugins)
    _print_model(check_model(program, model, inputs=inputs), program, console)


def _check_all(spec: Path, no_plugins: bool, console) -> None:
    """Every model and train block of the spec that can be checked (specc.training.check):
    the table or line of each that passes, then every mistake found, raised together."""
    from rich.markup import escape

    from specc.errors import together
    from specc.shapes.check import check_model
    from specc.training.check import check_program

    checked = check_program(spec, plugins=not no_plugins)
    program = checked.program
    if not (checked.models or checked.skipped or checked.trains or checked.errors):
        # Nothing checks on its own: the default model, whose mistake says what is missing.
        _print_model(check_model(program), program, console)
        return
    for inst in checked.models.values():
        _print_model(inst, program, console)
    for name, broken in checked.skipped.items():
        console.print(escape(f"{name}: not checked: it uses `{broken}`, which has errors"))
    for train in checked.trains:
        _print_train(train, program, console)
    for g in checked.generic:
        console.print(
            f"{g}: generic (parameters or sizes bound at each use); checked "
            "through the models that use it"
        )
    if checked.errors:
        raise together(checked.errors)


def _print_model(inst, program, console) -> None:
    from specc.shapes.report import model_table, print_warnings

    print_warnings(inst, program)
    console.print(model_table(inst, _frozen_counts(program, inst)))


def _print_train(train, program, console) -> None:
    """A train block that checks: its model first when it reads the data (`vocab_size =
    data.vocab_size`), after a line with the values the training dataset gives; then the
    output checked through the loss against the labels, or why the labels were not."""
    from rich.markup import escape

    from specc.shapes.report import model_table

    plan = train.plan
    if plan is None:
        return
    if plan.model.from_data:
        shown = ", ".join(f"{name}={plan.model.args[name]} ({ref})"
                          for name, ref in plan.model.from_data)  # fmt: skip
        console.print(escape(f"train: {plan.model.call.name}({shown})"))
        instance = plan.model.instance
        console.print(model_table(instance, _frozen_counts(program, instance)))
    if train.labels_unchecked:
        console.print(escape(f"{train.title}: {train.labels_unchecked}"))
    elif train.fit:
        console.print(escape(f"{train.title}: {train.fit}"))
        _check_lora(plan, program, console)


def _check_lora(plan, program, console) -> None:
    """The `lora` line of a train block: its warnings (stderr), the matched layers, the
    adapters' size and the trainable fraction."""
    from rich.markup import escape

    from specc.training.runner import print_lora

    if plan.lora is not None:
        print_lora(plan, program, summary=False)
        console.print(escape(plan.lora.summary()))


def _frozen_counts(program, inst) -> dict[str, int] | None:
    try:
        from specc.training.finetune import frozen_counts
    except ImportError:
        return None
    return frozen_counts(program, inst)


@app.command("ir")
def ir_cmd(
    spec: SpecPath,
    checked: Annotated[
        bool,
        typer.Option(
            "--checked", help="Print the shape-checked instance of a model instead of the program."
        ),
    ] = False,
    model: ModelOpt = None,
) -> None:
    """Print the spec's IR as JSON (it round-trips: the JSON loads back unchanged)."""
    from specc.lang.loader import load

    with gc_paused():
        program = load(spec)
        if checked:
            from specc.shapes.check import check_model

            typer.echo(check_model(program, model).model_dump_json(indent=2))
        else:
            typer.echo(program.model_dump_json(indent=2))


@app.command("compile")
def compile_cmd(
    spec: SpecPath,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write here instead of stdout.",
        ),
    ] = None,
    model: ModelOpt = None,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="Also emit the data pipeline and a "
            'training loop under `if __name__ == "__main__":`.',
        ),
    ] = False,
) -> None:
    """Write the spec as readable standalone PyTorch source."""
    from specc import compile as compile_source

    source = compile_source(spec, model, train=train, warn=True)
    if output is None:
        typer.echo(source, nl=False)
    else:
        _write_text(output, source)
        typer.echo(f"wrote {output}", err=True)


def _write_text(path: Path, text: str) -> None:
    from specc.files import write_atomic

    try:
        write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


@app.command()
def run(
    spec: SpecPath,
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            "-s",
            help="Override a spec value, e.g. --set epochs=5 --set optimizer.lr=0.01 (repeatable).",
        ),
    ] = [],  # noqa: B006
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from runs/<name>/last.pt.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Run name (default: the spec file's stem); outputs go to runs/<name>/.",
        ),
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders go.")] = Path(
        "runs"
    ),
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            help="Train on N worker processes through torchrun (DDP by default; set "
            'strategy = "fsdp" in the spec to shard).',
        ),
    ] = None,
    nnodes: Annotated[
        str, typer.Option("--nnodes", help="Number of machines (torchrun's --nnodes).")
    ] = "1",
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="This machine's rank (torchrun's --node-rank).")
    ] = 0,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option("--rdzv-endpoint", help="host:port all machines meet at (multi-node)."),
    ] = None,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help="Rank-0 host (static rendezvous).")
    ] = None,
    master_port: Annotated[
        int | None, typer.Option("--master-port", help="Rank-0 port (static rendezvous).")
    ] = None,
) -> None:
    """Train and evaluate the spec's `train` block."""
    import os

    with gc_paused():  # as `check` and `compile` do; this block also imports torch
        from specc.lang.loader import load
        from specc.training.runner import run as run_training

        program = load(spec, plugins=not no_plugins)  # fail fast, before starting workers
    with _frozen():
        if nproc_per_node is not None and "WORLD_SIZE" not in os.environ:
            from specc.training.distributed import launch

            args = [str(spec), *(a for s in set_ for a in ("--set", s)),
                    "--runs-dir", str(runs_dir), "--name", name or spec.stem]  # fmt: skip
            args += ["--resume"] if resume else []
            args += ["--no-plugins"] if no_plugins else []
            code = launch(args, nproc_per_node=nproc_per_node, nnodes=nnodes,
                          node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                          master_addr=master_addr, master_port=master_port)  # fmt: skip
            if code:
                raise typer.Exit(code)
            return
        summary = run_training(
            program, overrides=set_, resume=resume, name=name or spec.stem, runs_dir=runs_dir
        )
    if summary.get("interrupted"):
        raise typer.Exit(130)  # stopped by Ctrl-C after saving; the message says how to resume


@contextlib.contextmanager
def _frozen() -> Iterator[None]:
    """Run the block with every object that exists as it starts (torch, specc, the spec's
    IR: alive until the command ends) left out of the collector's passes, and put them back
    after. Up to the first training step of specs/cifar10.spec, three full passes otherwise
    rescanned all of them (0.3-0.5 s each on a busy 2-core host); frozen, two passes over
    the new objects took 0.05-0.2 s in all. A caller's own freeze is left alone."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@app.command("eval")
def eval_cmd(
    spec: SpecPath,
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint to evaluate.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a spec value.")] = [],  # noqa: B006
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Evaluate a checkpoint on the spec's test data."""
    from specc.lang.loader import load
    from specc.training.runner import evaluate_checkpoint

    program = load(spec, plugins=not no_plugins)
    evaluate_checkpoint(program, ckpt, overrides=set_)


@app.command("sample")
def sample_cmd(
    spec: SpecPath,
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint of the trained model.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")] = "\n",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="How many tokens to draw.")
    ] = 200,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Below 1: safer; above 1: wilder.")
    ] = 1.0,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Draw only from the k likeliest tokens.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws.")] = 0,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a spec value.")] = [],  # noqa: B006
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Continue a prompt with a language model trained on a text dataset, streaming it."""
    from specc.lang.loader import load
    from specc.training.sample import SampleSettings, sample_checkpoint

    program = load(spec, plugins=not no_plugins)
    settings = SampleSettings(max_new_tokens, temperature, top_k, seed)
    sample_checkpoint(program, ckpt, prompt, settings, overrides=set_, stream=sys.stdout)


@app.command("export")
def export_cmd(
    spec: SpecPath,
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint of the trained model.")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The file to write (its folder must exist)."),
    ],
    format_: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(
            "--format",
            "-f",
            help="onnx, pt2 or safetensors (default: from the output's suffix).",
        ),
    ] = None,
    model: ModelOpt = None,
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a spec value.")] = [],  # noqa: B006
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Write a checkpoint's model as ONNX, a torch.export program (pt2) or safetensors
    weights, checked against the model before it is written."""
    from specc.exporting.settings import ExportSettings

    settings = ExportSettings(ckpt, output, format_, model, list(set_))
    settings.check()  # a wrong flag or a missing extra, before torch is imported
    from specc.exporting.export import export_checkpoint
    from specc.lang.loader import load

    with gc_paused():
        program = load(spec, plugins=not no_plugins)
        typer.echo(export_checkpoint(program, settings).describe())


@app.command("export-adapter")
def export_adapter_cmd(
    spec: SpecPath,
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint of the LoRA run.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The PEFT folder to write.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a spec value.")] = [],  # noqa: B006
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Write a LoRA run's adapter in PEFT's format (adapter_model.safetensors and
    adapter_config.json), for PeftModel.from_pretrained."""
    from specc.exporting.adapter import export_adapter
    from specc.lang.loader import load

    with gc_paused():
        program = load(spec, plugins=not no_plugins)
        typer.echo(export_adapter(program, ckpt, output, list(set_)).describe())


@app.command("merge")
def merge_cmd(
    spec: SpecPath,
    ckpt: Annotated[
        Path,
        typer.Option("--ckpt", help="A LoRA run's checkpoint, adapter.safetensors or PEFT folder."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors to write.")],
    set_: Annotated[list[str], typer.Option("--set", "-s", help="Override a spec value.")] = [],  # noqa: B006
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Fold LoRA adapters into the base weights (W += scale·B@A): the file loads into the
    spec without its `lora` line."""
    from specc.exporting.adapter import merge
    from specc.lang.loader import load

    with gc_paused():
        program = load(spec, plugins=not no_plugins)
        typer.echo(merge(program, ckpt, output, list(set_)).describe())


@app.command("graph")
def graph_cmd(
    spec: SpecPath,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The picture: .svg, .png, .pdf, or .dot for the text."),
    ],
    model: ModelOpt = None,
    depth: Annotated[
        Optional[int],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(
            "--depth",
            help="Levels of submodels drawn as clusters of their layers (default: all; "
            "0: each submodel one box).",
        ),
    ] = None,
    no_plugins: Annotated[bool, typer.Option("--no-plugins", help="Refuse plugin code.")] = False,
) -> None:
    """Draw a model's dataflow: its layers with every `_` resolved, its ops, the shape on
    each edge, repeated blocks as one box with their count (Graphviz)."""
    from specc import draw_graph

    written = draw_graph(spec, output, model=model, depth=depth, plugins=not no_plugins)
    for path in written.paths:
        typer.echo(f"wrote {path}", err=True)
    if written.note:
        typer.echo(written.note, err=True)


@app.command("fmt")
def fmt_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(help="The .spec files ('-': stdin to stdout).", show_default=False),
    ],
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; list the files that would change, exit 1."),
    ] = False,
) -> None:
    """Rewrite specs in the canonical layout (aligned `=`, four-space blocks, comments kept
    where they were). A file that does not parse is reported as `specc check` does and left
    untouched."""
    from specc.lang.fmt import format_files

    code = format_files(files, check=check)
    if code:
        raise typer.Exit(code)


@app.command("lsp")
def lsp_cmd() -> None:
    """Run the language server over stdio (for editors): `specc check`'s diagnostics as you
    type, hover, symbols and formatting. Needs `pip install 'specc[lsp]'`."""
    try:
        from specc.lsp.server import main
    except ImportError as exc:
        raise UsageError(f"specc lsp needs pygls, which is not installed ({exc.name})",
                         hint="pip install 'specc[lsp]'") from None  # fmt: skip
    main()


@app.command("plot")
def plot_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders (runs/<name>), drawn over each other.", show_default=False
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The picture: .png, .svg or .pdf.")
    ] = Path("curves.png"),
    x: Annotated[str, typer.Option("--x", help="The horizontal axis: step or epoch.")] = "step",
) -> None:
    """Draw the loss, each metric and the learning rate of one or more runs against steps
    or epochs; a run still going draws what it has logged so far."""
    from specc import plot

    typer.echo(f"wrote {plot(runs, output, x=x)}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app, turning user errors into exit code 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            return rc  # typer returns (not raises) the code of an Exit in non-standalone mode
    except SpecError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Abort:
        return 130
    except typer.TyperException as e:  # bad flags, missing arguments
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # a specc bug: say so briefly; SPECC_DEBUG=1 shows the traceback
        import os
        import traceback

        if os.environ.get("SPECC_DEBUG"):
            traceback.print_exc()
        else:
            print(
                f"internal error: {type(e).__name__}: {e}\n(this is a bug in specc; "
                "rerun with SPECC_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
