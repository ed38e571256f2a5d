"""LoRA: the `lora` statement, what trains, checkpoints and the adapter file, PEFT's
folder both ways, and merging. Tiny models: a digits MLP, and specs/gpt.spec made small."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import specc
from specc.cli import main
from specc.training import checkpoint
from specc.training.build import build_model
from specc.training.config import apply_overrides
from specc.training.finetune import apply_train_setup
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
PLAIN = 'lora "body.1", "body.3" (r=4, alpha=8, dropout=0.1)'
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


def _script_and_run(spec: Path) -> tuple[dict, dict]:
    """The weights `python <spec>.py` (from `compile --train`) and `specc run` end with."""
    code = main(["compile", "--train", str(spec), "-o", str(spec.with_suffix(".py"))])
    assert code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, spec.with_suffix(".py").name], cwd=spec.parent,
                          env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = torch.load(spec.with_suffix(".pt"), weights_only=True)
    train(spec, name=spec.stem)
    return script, checkpoint.load(spec.parent / "runs" / spec.stem / "last.pt")["model"]


def test_compile_train_writes_lora_and_trains_as_specc_run(tmp_path, monkeypatch):
    """The script's LoRALinear, freezing and `load=` (here a PEFT folder) end bit for bit
    where `specc run` ends; the tied, text-trained GPT is in test_codegen's SAME_AS_RUN."""
    monkeypatch.chdir(tmp_path)  # `load="peft"` is relative, as the script reads it
    start = mlp(tmp_path, PLAIN, name="start.spec")
    train(start, "max_steps=10", name="start")
    code = main(["export-adapter", str(start), "--ckpt", str(tmp_path / "runs" / "start" /
                 "last.pt"), "-o", str(tmp_path / "peft")])  # fmt: skip
    assert code == 0
    spec = mlp(tmp_path, LORA.replace(")", ', load="peft")'), name="loaded.spec")
    source = spec.with_suffix(".py")
    script, run = _script_and_run(spec)
    text = source.read_text("utf-8")
    assert "class LoRALinear(nn.Module):" in text and "import peft" not in text
    assert 'adapter = load_file("peft/adapter_model.safetensors")' in text
    assert script.keys() == run.keys() and set(ADAPTERS) <= set(run)
    differ = [k for k, v in run.items() if not torch.equal(v, script[k])]
    assert not differ, differ
    started = checkpoint.load(tmp_path / "runs" / "start" / "last.pt")["model"]
    assert not torch.equal(run[ADAPTERS[1]], started[ADAPTERS[1]])  # the adapter trained on
    for key in BASE:
        assert torch.equal(run[key], started[key]), key  # and the base did not


# ---- PEFT's folder, both ways ---------------------------------------------------------

peft = pytest.importorskip("peft")


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def _specc_model(spec: Path, ckpt: Path | None = None) -> torch.nn.Module:
    """The adapted model as `specc run` builds it, with `ckpt`'s weights."""
    program = specc.load(spec)
    plan = resolve(program)
    model = build_model(program, plan)
    apply_train_setup(plan, model, quiet=True)
    if ckpt is not None:
        model.load_state_dict(checkpoint.load(ckpt)["model"])
    return model


def test_export_adapter_loads_in_peft_with_equal_outputs(tmp_path, capsys):
    spec = mlp(tmp_path, PLAIN)
    train(spec)
    last = tmp_path / "runs" / "r" / "last.pt"
    code, _, err = cli(capsys, "export-adapter", str(spec), "--ckpt", str(last),
                         "-o", str(tmp_path / "peft"))  # fmt: skip
    assert code == 0, err
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "r", "lora_alpha", "target_modules",
                                   "use_rslora", "bias")} == {
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["body.1", "body.3"],
        "use_rslora": False, "bias": "none"}  # fmt: skip
    base = specc.build(spec, "Net")
    base.load_state_dict(
        {k: v for k, v in checkpoint.load(last)["model"].items() if "lora_" not in k}
    )
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    ours = _outputs(_specc_model(spec, last))
    torch.testing.assert_close(_outputs(peft_model), ours, atol=1e-5, rtol=0)
    assert checkpoint.load(last)["model"]["body.3.lora_B.weight"].abs().sum() > 0  # trained


def test_a_peft_adapter_loads_into_specc(tmp_path):
    spec = mlp(tmp_path, PLAIN)
    base = specc.build(spec, "Net")
    torch.save({"model": base.state_dict()}, tmp_path / "base.pt")  # before PEFT wraps it
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                             target_modules=["body.1", "body.3"])  # fmt: skip
    peft_model = peft.get_peft_model(base, config)
    with torch.no_grad():  # a trained adapter: B no longer zero
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(str(tmp_path / "from_peft"))
    folder = tmp_path / "from_peft"
    line = PLAIN.replace("dropout=0.1)", f'dropout=0.1, load="{folder}")')
    init = f'init from "{tmp_path / "base.pt"}"\n    '
    loaded = mlp(tmp_path, init + line, name="load.spec")
    ours = _specc_model(loaded)
    torch.testing.assert_close(_outputs(ours), _outputs(peft_model), atol=1e-5, rtol=0)


ADAPTER_MISTAKES = {
    "missing": (lambda d: d / "nowhere", "is not a PEFT adapter folder: it has no"),
    "corrupt": (lambda d: _corrupt(d), "cannot read the PEFT adapter"),
    "other rank": (lambda d: _other_rank(d), "was trained with r 8 (the spec: 4)"),
    "file not named .safetensors": (lambda d: _renamed_adapter(d), "is a file, and a name"),
}


def _renamed_adapter(folder: Path) -> Path:
    """A file whose name does not end in `.safetensors`: by its name (the generated script
    cannot look at the disk) it is a PEFT folder."""
    (folder / "adapter.bin").write_bytes(b"")
    return folder / "adapter.bin"


def _corrupt(folder: Path) -> Path:
    (folder / "bad").mkdir()
    (folder / "bad" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (folder / "bad" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    return folder / "bad"


def _other_rank(folder: Path) -> Path:
    config = peft.LoraConfig(r=8, target_modules=["body.1", "body.3"])
    model = peft.get_peft_model(specc.build(MLP.replace("LORA", ""), "Net"), config)
    model.save_pretrained(str(folder / "r8"))
    return folder / "r8"


@pytest.mark.parametrize("case", list(ADAPTER_MISTAKES))
def test_bad_adapters_are_clear_errors(case, tmp_path, capsys):
    make, message = ADAPTER_MISTAKES[case]
    folder = make(tmp_path)
    if case != "file not named .safetensors":
        (folder if case != "missing" else tmp_path / "nowhere").mkdir(exist_ok=True)
    spec = mlp(tmp_path, PLAIN.replace("dropout=0.1)", f'dropout=0.1, load="{folder}")'))
    code, _, err = cli(capsys, "run", str(spec), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err


# ---- merging --------------------------------------------------------------------------


def test_merge_loads_strictly_without_the_lora_line(tmp_path, capsys):
    spec = mlp(tmp_path)  # with modules_to_save=["head"]: merged from the checkpoint
    train(spec)
    last = tmp_path / "runs" / "r" / "last.pt"
    code, _, err = cli(capsys, "merge", str(spec), "--ckpt", str(last),
                         "-o", str(tmp_path / "merged.safetensors"))  # fmt: skip
    assert code == 0, err
    plain = mlp(tmp_path, "", name="plain.spec")
    model = specc.build(plain, "Net")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(tmp_path / "merged.safetensors")), strict=True)
    torch.testing.assert_close(_outputs(model), _outputs(_specc_model(spec, last)),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_merge_refuses_another_base_and_strips_compiled_prefixes(tmp_path, capsys):
    spec = mlp(tmp_path, PLAIN)
    train(spec)
    last = tmp_path / "runs" / "r" / "last.pt"
    other = mlp(tmp_path, PLAIN, name="wide.spec")
    other.write_text(other.read_text().replace("hidden: int = 32", "hidden: int = 48"))
    out = str(tmp_path / "m.safetensors")
    code, _, err = cli(capsys, "merge", str(other), "--ckpt", str(last), "-o", out)
    assert code == 2
    assert "was trained with" in err and "another base model" in err, err
    assert not Path(out).exists()
    # a compiled model's keys (`_orig_mod.`) load as the model's own
    ck = checkpoint.load(last)
    ck["model"] = {f"_orig_mod.{k}": v for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "compiled.pt")
    code, _, err = cli(capsys, "merge", str(spec), "--ckpt", str(tmp_path / "compiled.pt"),
                       "-o", out)  # fmt: skip
    assert code == 0, err
    # the adapter alone goes on the base the spec's `init` loads: without one, refused
    adapter = str(tmp_path / "runs" / "r" / "adapter.safetensors")
    code, _, err = cli(capsys, "merge", str(spec), "--ckpt", adapter, "-o", out + "2")
    assert code == 2 and "the spec loads no base weights" in err, err
    base = {k: v for k, v in ck["model"].items() if "lora_" not in k}
    torch.save({"model": base}, tmp_path / "base.pt")
    with_base = mlp(tmp_path, f'init from "{tmp_path / "base.pt"}"\n    {PLAIN}', "b.spec")
    code, _, err = cli(capsys, "merge", str(with_base), "--ckpt", adapter, "-o", out + "2")
    assert code == 0, err
    from safetensors.torch import load_file

    a, b = load_file(out), load_file(out + "2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merge_refuses_a_tied_target(tmp_path, capsys):
    """lm_head shares wte's weight: folding B@A in would change the embedding too."""
    spec = gpt(tmp_path, 'lora "lm_head", "attn.c_attn" (r=4)')
    out = tmp_path / "m.safetensors"
    code, _, err = cli(capsys, "merge", str(spec), "--ckpt", str(tmp_path / "last.pt"),
                       "-o", str(out), *(a for s in GPT_SMALL for a in ("--set", s)))  # fmt: skip
    assert code == 2
    assert "cannot merge the adapter of `lm_head`: its weight is tied to " \
           "`transformer.wte.weight`" in err, err  # fmt: skip
    assert not out.exists()


# ---- more than one process -------------------------------------------------------------

NO_DROPOUT = 'lora "body.1", "body.3" (r=4, alpha=8, modules_to_save=["head"])'


def _torchrun(spec: Path, runs: str, *sets: str) -> Path:
    args = [a for s in ("data.batch_size=32", "data.drop_last=True", *sets) for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "specc", "run", str(spec), "--nproc-per-node",
                           "2", "--runs-dir", runs, *args], cwd=spec.parent,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return spec.parent / runs / spec.stem


@pytest.mark.slow
def test_ddp_and_fsdp_train_the_same_adapter_as_one_process(tmp_path):
    """2 workers at batch 32 = 1 worker at 64: the adapters and the saved head agree, the
    base stays bitwise as it was, and each run writes the same adapter file."""
    spec = mlp(tmp_path, NO_DROPOUT)
    ddp = _torchrun(spec, "ddp")
    fsdp = _torchrun(spec, "fsdp", 'strategy="fsdp"')
    specc.train(spec, ["data.batch_size=64", "data.drop_last=True"], runs_dir=tmp_path / "one",
                quiet=True)  # fmt: skip
    one = tmp_path / "one" / "net"
    from safetensors import safe_open

    states, metadata = {}, {}
    for run in (one, ddp, fsdp):
        states[run] = checkpoint.load(run / "last.pt")["model"]
        with safe_open(str(run / "adapter.safetensors"), "pt") as f:
            assert sorted(f.keys()) == sorted(ADAPTERS)
            metadata[run] = json.loads(f.metadata()["specc.lora"])
    assert metadata[ddp] == metadata[fsdp] == metadata[one]
    program = specc.load(spec)
    torch.manual_seed(0)
    start = build_model(program, resolve(program)).state_dict()
    for run in (ddp, fsdp):
        assert list(states[run]) == list(states[one])
        for k, v in states[one].items():
            assert torch.allclose(states[run][k], v, atol=1e-5, rtol=0), (run.parent.name, k)
        for k in BASE:
            assert torch.equal(states[run][k], start[k]), k
    assert not torch.equal(states[fsdp][ADAPTERS[1]], torch.zeros(32, 4))


def test_a_lora_run_samples_and_evaluates_and_export_says_merge(tmp_path, capsys):
    """sample and eval build the adapted model for a LoRA run's checkpoint; a base
    checkpoint fits it too (fresh adapters add nothing); export points to merge."""
    spec = gpt(tmp_path, 'lora "attn.c_attn" (r=4)')
    train(spec, *GPT_SMALL)
    last = tmp_path / "runs" / "r" / "last.pt"
    text = specc.sample(spec, last, "The ", max_new_tokens=20, seed=0, overrides=GPT_SMALL)
    assert text.startswith("The ") and len(text) == 24
    sets = [a for s in GPT_SMALL for a in ("--set", s)]
    code, out, err = cli(capsys, "eval", str(spec), "--ckpt", str(last), *sets)
    assert code == 0 and "val_loss" in out, err
    base = {k: v for k, v in checkpoint.load(last)["model"].items() if "lora_" not in k}
    torch.save({"model": base}, tmp_path / "base.pt")
    code, out, err = cli(capsys, "eval", str(spec), "--ckpt", str(tmp_path / "base.pt"), *sets)
    assert code == 0 and "val_loss" in out, err
    code, _, err = cli(capsys, "export", str(SPECS / "gpt.spec"), "--ckpt", str(last),
                       "-o", str(tmp_path / "m.safetensors"), *sets)  # fmt: skip
    assert code == 2 and "`specc merge` folds its adapters in" in err, err
