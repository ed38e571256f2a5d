"""LoRA: the `lora` statement, what trains, checkpoints and the adapter file, PEFT's
folder both ways, and merging. Tiny models: a digits MLP, and specs/gpt.spec made small."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import specc
from specc.cli import main
from specc.training import checkpoint
from specc.training.build import build_model
from specc.training.config import apply_overrides
from specc.training.plan import resolve

SPECS = Path(__file__).resolve().parents[1] / "specs"

MLP = """\
model Net(hidden: int = 32) {
    body = Sequential(Flatten(), Linear(64, hidden), ReLU(), Linear(hidden, hidden), ReLU())
    head = Linear(hidden, 10)
    forward(x: [1, 8, 8]) {
        return head(body(x))
    }
}

data digits {
    train      = Digits(train=True)
    test       = Digits(train=False)
    batch_size = 64
}

train {
    model     = Net()
    data      = digits
    loss      = CrossEntropyLoss()
    optimizer = AdamW(lr=0.01)
    epochs    = 2
    max_steps = 30
    log_every = 10
    LORA
}
"""
LORA = 'lora "body.1", "body.3" (r=4, alpha=8, dropout=0.1, modules_to_save=["head"])'
ADAPTERS = ("body.1.lora_A.weight", "body.1.lora_B.weight",
            "body.3.lora_A.weight", "body.3.lora_B.weight")  # fmt: skip
BASE = ("body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias")

# specs/gpt.spec made small: two blocks, a 16-token context.
GPT_SMALL = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.dropout=0.0",
             "data.train.block_size=16", "data.val.block_size=16", "max_steps=4", "epochs=1",
             "log_every=2"]  # fmt: skip


def mlp(folder: Path, lora: str = LORA, name: str = "net.spec") -> Path:
    path = folder / name
    path.write_text(MLP.replace("LORA", lora), "utf-8")
    return path


def gpt(folder: Path, lora: str) -> Path:
    """specs/gpt.spec with a `lora` line in its train block, next to a copy of gpt2.spec."""
    shutil.copy(SPECS / "gpt2.spec", folder / "gpt2.spec")
    text = (SPECS / "gpt.spec").read_text("utf-8")
    path = folder / "gpt_lora.spec"
    path.write_text(
        text.replace("    seed           = 0\n", f"    seed           = 0\n    {lora}\n")
    )
    return path


def train(spec: Path, *overrides: str, name: str = "r", resume: bool = False) -> dict:
    return specc.train(spec, list(overrides), runs_dir=spec.parent / "runs", name=name,
                       resume=resume, quiet=True)  # fmt: skip


def plan_of(spec: Path, *overrides: str):
    return resolve(apply_overrides(specc.load(spec), list(overrides)))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---- the statement and the plan -------------------------------------------------------


def test_targets_match_like_peft(tmp_path):
    """A name matches a module path exactly or as its `.`-suffix; a glob too; `re:` is a
    regex over the whole path. Only Linear layers are taken by a glob."""
    spec = gpt(tmp_path, 'lora "attn.c_attn", "re:transformer\\\\.h\\\\.1\\\\.mlp\\\\.c_.*"')
    lora = plan_of(spec, *GPT_SMALL).lora
    assert lora.modules == ("transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn",
                            "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj")  # fmt: skip
    glob = plan_of(gpt(tmp_path, 'lora "mlp.*"'), *GPT_SMALL).lora
    assert glob.modules == ("transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
                            "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj")  # fmt: skip
    assert (lora.r, lora.alpha, lora.scale) == (8, 8, 1.0)  # PEFT's defaults


def test_plan_freezes_the_base_and_lists_what_trains(tmp_path):
    plan = plan_of(mlp(tmp_path))
    assert plan.lora.modules == ("body.1", "body.3")
    assert plan.lora.params == 4 * (64 + 32) + 4 * (32 + 32)
    assert plan.frozen == BASE
    assert plan.optimizer.rest == (*ADAPTERS, "head.weight", "head.bias")
    assert plan.lora.trainable == plan.lora.params + 330
    rs = plan_of(mlp(tmp_path, 'lora "body.1" (r=4, alpha=8, rslora=True)')).lora
    assert rs.scale == 4.0  # alpha / sqrt(r)


def test_check_lists_modules_params_and_fraction(tmp_path, capsys):
    code, out, _ = cli(capsys, "check", str(mlp(tmp_path)))
    assert code == 0
    assert ("lora: 2 Linear layers (body.1, body.3), r=4, scale 2; 640 adapter parameters; "
            "trainable 970 of 4,106 (23.62%)") in " ".join(out.split())  # fmt: skip


def test_part_of_a_repeated_block_is_a_warning(tmp_path, capsys):
    spec = gpt(tmp_path, 'lora "h.0.attn.c_attn"')
    code, out, err = cli(capsys, "check", str(spec))  # the spec's 4 blocks
    assert code == 0, err
    assert "warning: lora adapts 1 of the 4 `transformer.h.*.attn.c_attn` layers" in err
    assert "to adapt all of them, target 'attn.c_attn'" in err
    assert "lora: 1 Linear layers (transformer.h.0.attn.c_attn)" in " ".join(out.split())


# spec line -> (the message, the hint's start)
MISTAKES = {
    'lora "body.1", "bdy.3"': ("lora 'bdy.3' matches no module of the model",
                               "did you mean `body.3`?"),
    'lora "body.2"': ("lora 'body.2' matches `body.2`, a ReLU; adapters go on Linear layers",
                      "the model's Linear layers are `body.1`, `body.3`, `head`"),
    'lora "body" (r=4)': ("lora 'body' matches `body`, a Sequential",
                          "name its Linear layers, such as `body.1`, `body.3`"),
    'lora "body.1" (dropot=0.1)': ("lora has no option `dropot`", "did you mean `dropout`?"),
    'lora "body.1" (r=0)': ("lora: `r` is a whole number above 0, such as 8, not 0", None),
    'lora "body.1" (dropout=1.5)': ("lora: `dropout` is a probability in [0, 1)", None),
    'lora "body.1" (modules_to_save=["haed"])': (
        "lora: modules_to_save 'haed' matches no parameter", "did you mean `head`?"),
    'lora "body.1"\n    lora "body.3"': ("a train block has one `lora` statement",
                                        "list every target in the first one"),
}  # fmt: skip


@pytest.mark.parametrize("line", list(MISTAKES))
def test_mistakes_are_located_errors(line, tmp_path, capsys):
    message, hint = MISTAKES[line]
    code, _, err = cli(capsys, "check", str(mlp(tmp_path, line)))
    assert code == 2
    assert "net.spec:" in err and f"error: {message}" in err, err
    assert "Traceback" not in err
    if hint:
        assert f"hint: {hint}" in err, err


def test_a_conv_target_is_refused(tmp_path, capsys):
    spec = tmp_path / "conv.spec"
    spec.write_text(MLP.replace("LORA", 'lora "conv"').replace(
        "body = Sequential(", "conv = Conv2d(1, 1, 3, padding=1)\n    body = Sequential(").replace(
        "head(body(x))", "head(body(conv(x)))"), "utf-8")  # fmt: skip
    code, _, err = cli(capsys, "check", str(spec))
    assert code == 2
    assert "lora 'conv' matches `conv`, a Conv2d; adapters go on Linear layers" in err
    assert "Embedding and Conv layers are not supported yet" in err


def test_compile_train_refuses_lora_for_now(tmp_path, capsys):
    code, _, err = cli(capsys, "compile", "--train", str(mlp(tmp_path)))
    assert code == 2
    assert "error: compile --train does not write LoRA adapters yet" in err


# ---- training -------------------------------------------------------------------------


def test_only_adapters_and_saved_modules_train(tmp_path):
    spec = mlp(tmp_path)
    program = specc.load(spec)
    plan = resolve(program)
    torch.manual_seed(plan.seed)
    start = build_model(program, plan).state_dict()
    train(spec)
    ck = checkpoint.load(tmp_path / "runs" / "r" / "last.pt")
    for key in BASE:
        assert torch.equal(ck["model"][key], start[key]), key  # bitwise unchanged
    assert not torch.equal(ck["model"]["head.weight"], start["head.weight"])
    assert not torch.equal(ck["model"]["body.1.lora_B.weight"], torch.zeros(32, 4))
    # The optimizer holds the trainable parameters alone: its state is that size.
    state = ck["optimizer"]["state"]
    held = sum(s["exp_avg"].numel() for s in state.values())
    assert held == plan.lora.trainable == 970


def test_resume_is_bitwise_and_the_adapter_is_written(tmp_path):
    spec = mlp(tmp_path)
    train(spec, name="full")
    train(spec, "max_steps=13", name="part")
    train(spec, name="part", resume=True)
    a = checkpoint.load(tmp_path / "runs" / "full" / "last.pt")
    b = checkpoint.load(tmp_path / "runs" / "part" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    from safetensors import safe_open

    with safe_open(str(tmp_path / "runs" / "full" / "adapter.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(ADAPTERS)
        assert torch.equal(f.get_tensor(ADAPTERS[0]), a["model"][ADAPTERS[0]])
        meta = f.metadata()
    settings = json.loads(meta["specc.lora"])
    assert (
        settings["r"] == 4
        and settings["alpha"] == 8
        and settings["modules"] == ["body.1", "body.3"]
    )
    assert settings["base_sha256"] == resolve(specc.load(spec)).lora.base_sha256
    assert meta["specc.spec_sha256"] == specc.load(spec).sources[0].sha256
