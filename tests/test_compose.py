"""Composition, fine-tuning and custom components, as users write them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import SPECS

import specc
from specc.cli import main
from specc.errors import CheckpointError, SpecError
from specc.training import checkpoint


def _train(spec, *overrides, **kw):
    return specc.train(spec, list(overrides), quiet=True, **kw)


@pytest.fixture
def spec_dir(in_tmp):
    """A copy of specs/ as the working directory (runs/ and relative paths land there)."""
    shutil.copytree(SPECS, in_tmp, dirs_exist_ok=True)
    return in_tmp


def test_import_cycle_names_both_files(in_tmp, capsys):
    (in_tmp / "a.spec").write_text('import "b.spec"\nmodel A { f = Linear(2, 2) '
                                   "forward(x: [2]) { return f(x) } }\n")  # fmt: skip
    (in_tmp / "b.spec").write_text('import "a.spec"\n')
    assert main(["check", "a.spec"]) == 2
    err = capsys.readouterr().err
    assert "import cycle" in err and "a.spec" in err and "b.spec" in err
    assert err.startswith("b.spec:1:1:")


def test_model_name_clash_names_both_files(in_tmp, capsys):
    body = "model M { f = Linear(2, 2) forward(x: [2]) { return f(x) } }\n"
    (in_tmp / "lib.spec").write_text(body)
    (in_tmp / "main.spec").write_text('import "lib.spec"\n' + body)
    assert main(["check", "main.spec"]) == 2
    err = capsys.readouterr().err
    assert "defined in both lib.spec and main.spec" in err


def test_the_specs_own_train_block_runs_not_an_imports(in_tmp, capsys):
    """An imported spec's unnamed `train` block is read before the spec's own parts; the
    spec's own block is still the one `check` and `run` use."""
    (in_tmp / "lib.spec").write_text(
        "model B { fc = Linear(64, 10) forward(x: [1, 8, 8]) { return fc(flatten(x, 1)) } }\n"
        "data db { train = Digits(train=True); test = Digits(train=False); batch_size = 64 }\n"
        "train { model = B(); data = db; loss = CrossEntropyLoss(); optimizer = SGD(lr=0.1) }\n"
    )
    (in_tmp / "main.spec").write_text(
        'import "lib.spec"\n'
        "model A { fc = Linear(64, 10) forward(x: [1, 8, 8]) { return fc(flatten(x, 1)) } }\n"
        "train { model = A(); data = db; loss = CrossEntropyLoss(); optimizer = Adam(lr=0.01)\n"
        "        epochs = 1; max_steps = 2 }\n"
    )
    summary = specc.train(in_tmp / "main.spec", runs_dir=in_tmp / "runs", quiet=True)
    saved = checkpoint.load(Path(summary["run_dir"]) / "last.pt")
    assert "amsgrad" in saved["optimizer"]["param_groups"][0]  # Adam's settings, not SGD's


def test_two_tower_checks_builds_and_trains(spec_dir):
    inst = specc.check("two_tower.spec")
    head = next(layer for layer in inst.layers if layer.name == "head")
    assert head.ctor.args[0].value == 8 * 2 * 16 + 16 * 2 * 16
    summary = _train("two_tower.spec", "epochs=2")
    assert summary["test_accuracy"] > 0.9


def test_finetune_keeps_frozen_backbone_bitwise(spec_dir):
    _train("digits_pretrain.spec", "epochs=2")
    pre = checkpoint.load(spec_dir / "runs" / "digits_pretrain" / "best.pt")["model"]
    torch.manual_seed(0)  # the runner seeds with the spec's seed (0) before building
    initial = specc.build("digits_finetune.spec").state_dict()
    summary = _train("digits_finetune.spec", "epochs=2")
    assert summary["test_accuracy"] > 0.9
    after = checkpoint.load(spec_dir / "runs" / "digits_finetune" / "last.pt")["model"]
    backbone = [k for k in after if k.startswith("backbone.")]
    assert any(k.endswith("running_mean") for k in backbone)
    for k in backbone:  # weights and BatchNorm statistics alike
        assert torch.equal(after[k], pre[k]), k
    head = [k for k in after if k.startswith("head.") and k.endswith("weight")]
    assert head and all(not torch.equal(after[k], initial[k]) for k in head)
    ck = checkpoint.load(spec_dir / "runs" / "digits_finetune" / "last.pt")
    n_groups_params = sum(len(g["params"]) for g in ck["optimizer"]["param_groups"])
    assert n_groups_params == len([k for k in after if k.startswith("head.")])


def test_check_shows_trainable_and_frozen(spec_dir, capsys):
    assert main(["check", "digits_finetune.spec"]) == 0
    out = capsys.readouterr().out
    assert "trainable" in out and "frozen" in out and "4,896" in out


def _finetune_variant(spec_dir, init_line: str, classes: int = 10) -> str:
    text = (spec_dir / "digits_finetune.spec").read_text()
    text = text.replace('init backbone from "runs/digits_pretrain/best.pt"', init_line)
    text = text.replace("model     = Classifier()", f"model     = Classifier({classes})")
    (spec_dir / "variant.spec").write_text(text)
    return "variant.spec"


def test_init_shape_mismatch_names_key_and_shapes(spec_dir, capsys):
    _train("digits_pretrain.spec", "epochs=1")
    # The pretrained head is Linear(512, 10); this model's head is a Sequential: load the
    # whole model, where head.0.weight does not exist -> only the backbone fits...
    spec = _finetune_variant(spec_dir, 'init from "runs/digits_pretrain/best.pt"', classes=12)
    text = (
        (spec_dir / spec)
        .read_text()
        .replace(
            "Sequential(Linear(_, 64), ReLU(), Dropout(0.1), Linear(64, num_classes))",
            "Linear(_, num_classes)",
        )
    )
    (spec_dir / spec).write_text(text)
    code = main(["run", spec, "--set", "epochs=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "`head.weight` has shape [12, 512] in the model but [10, 512]" in err
    assert "skip_mismatched=True" in err
    # The explicit option replaces the head: everything else is loaded, the head is skipped.
    (spec_dir / spec).write_text(text.replace(
        'best.pt"', 'best.pt" (skip_mismatched=True)'))  # fmt: skip
    assert main(["run", spec, "--set", "epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "skipped (shape changed): head.weight, head.bias" in err


def test_param_groups_in_the_spec(spec_dir):
    text = (
        (spec_dir / "digits_pretrain.spec")
        .read_text()
        .replace("    epochs    = 5", '    epochs    = 1\n    group "backbone.*" (lr=0.0001)')
    )
    (spec_dir / "groups.spec").write_text(text)
    _train("groups.spec")
    ck = checkpoint.load(spec_dir / "runs" / "groups" / "last.pt")
    lrs = [g["lr"] for g in ck["optimizer"]["param_groups"]]
    assert lrs == [0.0001, 0.002]


def test_plain_pytorch_plugin_layer_loss_optimizer(spec_dir):
    inst = specc.check("custom_parts.spec")
    conv = next(layer for layer in inst.layers if layer.name == "conv")
    assert conv.ctor.args[0].value == 1  # `_` inferred for a plugin layer
    summary = _train("custom_parts.spec", "epochs=3")
    assert summary["test_accuracy"] > 0.8


def test_no_plugins_refuses_everywhere(spec_dir, capsys):
    assert main(["check", "custom_parts.spec", "--no-plugins"]) == 2
    assert "plugins are disabled" in capsys.readouterr().err
    (spec_dir / "wrapper.spec").write_text('import "custom_parts.spec"\n')
    assert main(["run", "wrapper.spec", "--no-plugins"]) == 2
    assert "plugins are disabled" in capsys.readouterr().err


def test_dsl_loss(spec_dir):
    summary = _train("smooth_loss.spec", "epochs=3")
    assert summary["test_accuracy"] > 0.9


def test_dsl_loss_must_return_a_scalar(spec_dir):
    text = (
        (spec_dir / "smooth_loss.spec")
        .read_text()
        .replace("return ((1 - eps) * nll + eps * smooth).mean()", "return (1 - eps) * nll")
    )
    (spec_dir / "bad_loss.spec").write_text(text)
    with pytest.raises(SpecError, match="must return one scalar"):
        _train("bad_loss.spec", "epochs=1")


def test_init_refuses_hostile_pickle(spec_dir):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').close()",))

    (spec_dir / "runs" / "digits_pretrain").mkdir(parents=True)
    with (spec_dir / "runs" / "digits_pretrain" / "best.pt").open("wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        _train("digits_finetune.spec", "epochs=1")
    assert not (spec_dir / "pwned").exists()
