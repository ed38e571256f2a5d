"""`specc plot` and `specc graph`: the pictures users open, the run logs they read, and
the clear refusals (missing runs, half-written logs, missing extras or Graphviz)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import SPECS
from PIL import Image

import specc
import specc.pictures.output
from specc.cli import main
from specc.pictures.curves import draw, last_x
from specc.pictures.runs import collect, named, read_run
from specc.training.logs import RunLog

HAS_DOT = shutil.which("dot") is not None


# ---- run logs, written as the runner writes them ------------------------------------------
def write_run(folder: Path, epochs: int = 3, steps_per_epoch: int = 40, lr: float = 0.01,
              split: str = "val", metrics: tuple = ("loss", "accuracy")) -> Path:  # fmt: skip
    """A finished run's metrics.jsonl through `RunLog` itself: a training window every 10
    steps, an evaluation per epoch, the final test."""
    folder.mkdir(parents=True)
    log = RunLog(folder, enabled=True)
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch // 10):
            step += 10
            log.write({"step": step, "epoch": epoch, "loss": 2.0 / step, "lr": lr,
                       "samples_per_s": 900.0})  # fmt: skip
        scores = {"loss": 1.0 / epoch, "accuracy": 1 - 0.1 / epoch, "perplexity": 3.0 / epoch}
        log.write({"epoch": epoch, "step": step,
                   **{f"{split}_{m}": scores[m] for m in metrics}})  # fmt: skip
    log.write({"final": True, **{f"test_{m}": 0.5 for m in metrics}})
    log.close()
    return folder


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_each_record_names_its_split(tmp_path):
    rs = records(write_run(tmp_path / "a"))
    assert [r["split"] for r in rs[:5]] == ["train"] * 4 + ["val"]
    assert list(rs[0]) == ["step", "epoch", "split", "loss", "lr", "samples_per_s"]
    assert list(rs[4]) == ["step", "epoch", "split", "val_loss", "val_accuracy"]
    assert rs[-1] == {"split": "test", "final": True, "test_loss": 0.5, "test_accuracy": 0.5}


def test_tensorboard_events_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_run(tmp_path / "a", epochs=2)
    events = EventAccumulator(str(tmp_path / "a" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "samples_per_s", "val_loss", "val_accuracy", "test_loss"} <= tags
    assert "final" not in tags  # a marker, not a number to plot
    assert [e.step for e in events.Scalars("loss")] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert events.Scalars("loss")[1].value == pytest.approx(2.0 / 20)
    assert [e.step for e in events.Scalars("val_loss")] == [40, 80]
    assert [e.step for e in events.Scalars("test_loss")] == [80]  # at the last step, not 0


# ---- specc plot ---------------------------------------------------------------------------
def test_plot_overlays_two_runs(tmp_path, capsys):
    a = write_run(tmp_path / "runs" / "base")
    b = write_run(tmp_path / "runs" / "fast", epochs=2, lr=0.1, metrics=("loss", "perplexity"))
    out = tmp_path / "curves.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {out}"
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (3 * 460, 2 * 330)  # 4 panels, 3 a row

    fig = draw(named([read_run(a), read_run(b)]), "step")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "perplexity", "learning rate"]
    loss = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(loss) == {"base train", "base val", "base test (final)", "fast train",
                         "fast val", "fast test (final)"}  # fmt: skip
    assert list(loss["base val"].get_xdata()) == [40, 80, 120]
    assert list(loss["fast test (final)"].get_xdata()) == [80]
    assert fig.axes[0].get_yscale() == "log"  # train loss falls from 0.2 to 0.017


def test_plot_by_epoch_places_windows_between_epoch_ends(tmp_path):
    run = read_run(write_run(tmp_path / "a", epochs=2))
    fig = draw([run], "epoch")
    train = next(line for line in fig.axes[0].get_lines() if line.get_label() == "train")
    assert list(train.get_xdata()) == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert fig.axes[0].get_xlabel() == "epoch"


def test_a_run_still_going_plots_what_it_has(tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    lines = [json.dumps({"step": s, "epoch": 1, "split": "train", "loss": 1 / s, "lr": 0.1})
             for s in (10, 20, 30)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 40, "epoch": 1, "lo')
    out = tmp_path / "live.png"
    assert main(["plot", str(folder), "-o", str(out), "--x", "epoch"]) == 0
    fig = draw([read_run(folder)], "epoch")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "learning rate"]
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 3  # the half line is left out
    assert Image.open(out).size == (2 * 460, 330)


def test_a_resumed_run_keeps_the_latest_record_of_a_step(tmp_path):
    folder = write_run(tmp_path / "r", epochs=1)
    with (folder / "metrics.jsonl").open("a") as f:  # crashed mid-line, then resumed
        f.write('{"step": 4\n' + json.dumps({"step": 20, "epoch": 1, "loss": 9.0, "lr": 1.0}))
    run = read_run(folder)
    assert [t["step"] for t in run.train] == [10, 20, 30, 40]
    assert run.train[1]["loss"] == 9.0


def _refused(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "run folder not found"),
        (lambda d: d.mkdir(), "has no metrics.jsonl"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"note": "hi"}\n{"step": 1')),
         "has no step or epoch records with numbers yet"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")),
         "has no step or epoch records with numbers yet"),
    ],
    ids=["missing", "no-metrics", "no-numbers", "empty"],
)  # fmt: skip
def test_plot_refuses_what_is_not_a_run(make, message, tmp_path, capsys):
    make(tmp_path / "run")
    err = _refused(capsys, ["plot", str(tmp_path / "run"), "-o", str(tmp_path / "c.png")])
    assert message in err and "= hint:" in err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-o", "curves.jpg"], "cannot tell the format from the suffix `.jpg`"),
        (["-o", "curves.png", "--x", "epochs"], "did you mean `epoch`?"),
    ],
)
def test_plot_bad_flags(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "a")
    assert message in _refused(capsys, ["plot", "a", *flags])


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "a")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    err = _refused(capsys, ["plot", str(tmp_path / "a"), "-o", str(tmp_path / "c.png")])
    assert "`specc plot` needs matplotlib, which is not installed" in err
    assert "pip install 'specc[plot]'" in err


@pytest.mark.slow
def test_a_real_run_plots_and_logs_tensorboard(tmp_path):
    """One short digits run: its own metrics.jsonl plots, and its events hold the scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = SPECS / "digits.spec"
    specc.train(spec, ["epochs=2", "log_every=15"], runs_dir=tmp_path, name="d", quiet=True)
    folder = tmp_path / "d"
    splits = [r.get("split") for r in records(folder)]
    assert splits == ["train"] * 3 + ["test"] + ["train"] * 3 + ["test", "test"]
    out = specc.plot(folder, tmp_path / "d.png")
    assert Image.open(out).size == (3 * 460, 330)  # loss, accuracy, learning rate
    events = EventAccumulator(str(folder / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [15, 30, 45, 60, 75, 90]
    assert [e.step for e in events.Scalars("test_accuracy")] == [45, 90, 90]


# ---- specc graph --------------------------------------------------------------------------
def dot_of(spec: Path, tmp_path: Path, *flags: str) -> str:
    out = tmp_path / f"{spec.stem}.dot"
    assert main(["graph", str(spec), "-o", str(out), *flags]) == 0
    return out.read_text()


def test_graph_shows_resolved_layers_and_shapes(tmp_path):
    dot = dot_of(SPECS / "two_tower.spec", tmp_path)
    assert 'label="head\\nLinear(768, 10)"' in dot  # head = Linear(_, num_classes)
    assert 'label="conv1\\nConv2d(1, 8, 3, padding=1)"' in dot  # Conv2d(_, ch, ...) in narrow
    assert "subgraph cluster_narrow" in dot and "subgraph cluster_wide" in dot
    assert '"narrow.flatten" -> cat [label="[B, 256]"]' in dot
    assert '"wide.flatten" -> cat [label="[B, 512]"]' in dot
    assert 'x -> "narrow.conv1" [label="[B, 1, 8, 8]"]' in dot  # the cluster is wired in
    assert 'label="cat([·, ·], 1)"' in dot
    assert 'head -> return [label="[B, 10]"]' in dot


def test_graph_collapses_repeats_with_their_count(tmp_path):
    # The train block's model, with vocab_size and block_size read from the data.
    dot = dot_of(SPECS / "gpt.spec", tmp_path)
    assert 'label="h\\nBlock ×4\\nn_embd=128, n_head=4, dropout=0.1"' in dot
    assert "ln_1" not in dot  # the block's insides are the one box
    assert 'label="lm_head\\nLinear(128, 103, bias=False)"' in dot
    assert '"transformer.drop" -> "transformer.h" [label="[B, 128, 128]"]' in dot
    assert 'label="arange(128, device=idx.device)"' in dot  # sizes shown, not drawn
    assert 'lm_head -> return [label="[B, 128, 103]"]' in dot
    assert "Block ×12" in dot_of(SPECS / "gpt2.spec", tmp_path)  # GPT's defaults
    assert "Residual ×3" in dot_of(SPECS / "tower.spec", tmp_path)


def test_graph_depth_zero_draws_submodels_as_boxes(tmp_path):
    dot = dot_of(SPECS / "gpt2.spec", tmp_path, "--depth", "0")
    assert "cluster" not in dot
    assert 'transformer [label="transformer\\nGPT2Model(vocab_size=50257' in dot


OPS = """
model Attn(n_embd: int = 32, n_head: int = 4, gated: bool = True) {
    c_attn = Linear(n_embd, 3 * n_embd)
    gate   = Linear(n_embd, n_embd) if gated else None
    proj   = Linear(_, n_embd)
    scale  = Parameter(ones(n_embd))
    forward(x: [8, n_embd]) {
        b, t, c = x.shape
        q, k, v = c_attn(x).split(n_embd, 2)
        q = q.view(b, t, n_head, c // n_head).transpose(1, 2)
        y = scaled_dot_product_attention(q, q, q, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, c)
        if gated { y = y * sigmoid(gate(x)) }
        return proj(y[:, -1] * scale), v
    }
}
"""


def test_graph_of_ops_methods_branches_and_held_tensors(tmp_path):
    (tmp_path / "ops.spec").write_text(OPS)
    dot = dot_of(tmp_path / "ops.spec", tmp_path)
    assert 'label=".view(B, 8, 4, 8)"' in dot  # b and c // n_head, resolved
    assert 'label="scaled_dot_product_attention(·, ·, ·,\\nis_causal=True)"' in dot
    assert 'label="[:, -1]"' in dot and 'label="*"' in dot
    assert 'scale [label="scale\\nParameter"' in dot and 'scale -> mul_1 [label="[32]"]' in dot
    assert 'split -> return [label="[B, 8, 32]"]' in dot  # v: one part of the split
    assert "sigmoid" in dot  # the branch taken
    (tmp_path / "off.spec").write_text(OPS.replace("gated: bool = True", "gated: bool = False"))
    assert "sigmoid" not in dot_of(tmp_path / "off.spec", tmp_path)


@pytest.mark.skipif(not HAS_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_graph_renders_with_dot(suffix, tmp_path, capsys):
    out = tmp_path / f"net{suffix}"
    assert main(["graph", str(SPECS / "two_tower.spec"), "-o", str(out)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {out}"
    if suffix == ".svg":
        svg = out.read_text()
        assert svg.lstrip().startswith("<?xml") and "Linear(768, 10)" in svg
    else:
        with Image.open(out) as png:
            assert png.format == "PNG" and png.size[1] > png.size[0] > 300  # tall: top-down
    assert not out.with_suffix(".dot").exists()


def test_graph_without_dot_writes_the_dot_and_says_how_to_render(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(specc.pictures.output.shutil, "which", lambda name: None)
    out = tmp_path / "net.svg"
    assert main(["graph", str(SPECS / "two_tower.spec"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    dot = tmp_path / "net.dot"
    assert f"wrote {dot}" in err and f"dot -Tsvg {dot} -o {out}" in err
    assert "Graphviz's `dot` program is not installed" in err
    assert not out.exists() and "Linear(768, 10)" in dot.read_text()


def test_graph_when_dot_vanishes_mid_call(tmp_path, capsys, monkeypatch):
    import graphviz

    def missing(*args, **kwargs):
        raise graphviz.ExecutableNotFound(("dot",))

    monkeypatch.setattr(specc.pictures.output.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(graphviz.Source, "pipe", missing)
    out = tmp_path / "net.png"
    assert main(["graph", str(SPECS / "tower.spec"), "-o", str(out)]) == 0
    assert "dot -Tpng" in capsys.readouterr().err and (tmp_path / "net.dot").is_file()


def test_graph_without_the_graphviz_package_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    err = _refused(capsys, ["graph", str(SPECS / "tower.spec"), "-o", str(tmp_path / "t.svg")])
    assert "`specc graph` needs graphviz" in err and "pip install 'specc[graph]'" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-o", "t.jpg"], "cannot tell the format from the suffix `.jpg`"),
        (["-o", "t.svg", "--depth", "-1"], "--depth -1: give 0 or more levels"),
        (["-o", "t.svg", "--model", "Towr"], "did you mean `Tower`?"),
    ],
)
def test_graph_bad_flags(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in _refused(capsys, ["graph", str(SPECS / "tower.spec"), *flags])
    assert not list(tmp_path.iterdir())


def test_a_run_that_max_steps_stopped_mid_epoch_ends_where_it_stopped():
    """The partial epoch's evaluation is logged at the fraction of epochs done; the final
    test's star goes there too, not at the epoch the training windows were in."""
    records = (
        {"step": 20, "epoch": 1, "split": "train", "loss": 2.1, "lr": 0.1},
        {"step": 20, "epoch": 0.4444, "split": "val", "partial": True, "val_loss": 2.0},
        {"split": "test", "final": True, "test_loss": 2.0},
    )
    run = collect("r", Path("metrics.jsonl"), [json.dumps(r) for r in records])
    assert last_x(run, "epoch") == pytest.approx(0.4444)
    assert last_x(run, "step") == 20
