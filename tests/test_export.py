"""`specc export`: ONNX run in onnxruntime, pt2 loaded back with torch.export.load, and
safetensors read back, each against the model at sizes other than the traced ones (so the
batch dimension, and a language model's sequence length, are shown to be dynamic); and
every bad input an exit code 2 with a clear message and nothing written."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from conftest import CASES, SPECS

import specc
from specc.cli import main
from specc.errors import ExportError
from specc.training import checkpoint
from specc.training.build import build_model
from specc.training.config import apply_overrides

onnxruntime = pytest.importorskip("onnxruntime")

# specs/gpt.spec made small: a 16-token context, one block.
GPT_SMALL = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.dropout=0.0",
             "data.train.block_size=16", "data.val.block_size=16"]  # fmt: skip
TOL = 1e-4


def _scrambled(model: torch.nn.Module) -> torch.nn.Module:
    """Weights unlike their init (zero biases, unit norms) but keeping activations near 1,
    so a wrong graph cannot pass and a right one is within 1e-4 (a tied weight once)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            std = p[0].numel() ** -0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def _saved(model: torch.nn.Module, path: Path) -> tuple[torch.nn.Module, Path]:
    checkpoint.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def digits(work):
    """A checkpoint the runner wrote (two steps of specs/digits.spec), and its model."""
    specc.train(SPECS / "digits.spec", ["max_steps=2"], runs_dir=work / "runs", quiet=True)
    ckpt = work / "runs" / "digits" / "last.pt"
    program = specc.load(SPECS / "digits.spec")
    model = build_model(program, specc.train_plan(program))
    model.load_state_dict(checkpoint.load(ckpt)["model"])
    return model.eval(), ckpt


@pytest.fixture(scope="module")
def gpt(work):
    program = apply_overrides(specc.load(SPECS / "gpt.spec"), GPT_SMALL)
    model = _scrambled(build_model(program, specc.train_plan(program)))
    return _saved(model, work / "gpt.pt")


def _small(spec: str, work: Path):
    return _saved(_scrambled(specc.build(SPECS / spec)), work / f"{spec}.pt")


def _onnx_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _close(got: torch.Tensor, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = model(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=TOL, rtol=0), float((got - want).abs().max())


# ---- onnx --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["cifar_net.spec", "digits.spec", "two_tower.spec"])
def test_onnx_runs_in_onnxruntime_at_any_batch_size(spec, work, digits):
    model, ckpt = digits if spec == "digits.spec" else _small(spec, work)
    out = work / f"{spec}.onnx"
    specc.export(SPECS / spec, ckpt, out)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    per_sample = list(session.get_inputs()[0].shape[1:])
    for batch in (2, 5):  # neither the traced size (2 is) nor export's own check's sizes
        x = torch.randn(batch, *per_sample)
        _close(_onnx_outputs(out, x), model, x)


@pytest.mark.slow
def test_gpt_onnx_takes_any_batch_and_any_length_up_to_the_block(work, gpt):
    model, ckpt = gpt
    out = work / "gpt.onnx"
    specc.export(SPECS / "gpt.spec", ckpt, out, overrides=GPT_SMALL)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", "seq"]
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 4):
        for seq in (3, 16):
            idx = torch.randint(0, model.lm_head.out_features, (batch, seq), generator=gen)
            _close(_onnx_outputs(out, idx), model, idx)


# ---- pt2 and safetensors -------------------------------------------------------------------


@pytest.mark.slow
def test_pt2_loads_back_and_takes_any_batch_size(work, digits, capsys):
    model, ckpt = digits
    out = work / "digits.pt2"
    assert main(["export", str(SPECS / "digits.spec"), "--ckpt", str(ckpt), "-o", str(out),
                 "--format", "pt2"]) == 0  # fmt: skip
    summary = capsys.readouterr().out
    assert summary.startswith(f"wrote {out} (torch.export program, ")
    assert "DigitsNet from " in summary and "input x: float32 [batch, 1, 8, 8]" in summary
    assert "checked: torch.export.load gives the model's outputs at batch 1 and 3" in summary
    extra = {"specc.json": ""}
    loaded = torch.export.load(str(out), extra_files=extra).module()
    assert json.loads(extra["specc.json"])["specc.model"] == "DigitsNet"
    for batch in (2, 7):
        x = torch.randn(batch, 1, 8, 8)
        _close(loaded(x), model, x)


@pytest.mark.slow
def test_gpt_pt2_takes_other_lengths(work, gpt):
    model, ckpt = gpt
    out = work / "gpt.pt2"
    specc.export(SPECS / "gpt.spec", ckpt, out, overrides=GPT_SMALL)
    loaded = torch.export.load(str(out)).module()
    for shape in ((2, 5), (3, 16)):
        idx = torch.randint(0, 50, shape)
        _close(loaded(idx), model, idx)


def test_safetensors_stores_a_tied_weight_once_and_reads_back_whole(work, gpt, capsys):
    model, ckpt = gpt
    out = work / "gpt.safetensors"
    args = ["export", str(SPECS / "gpt.spec"), "--ckpt", str(ckpt), "-o", str(out)]
    assert main([*args, *(a for s in GPT_SMALL for a in ("--set", s))]) == 0
    summary = capsys.readouterr().out
    assert "lm_head.weight is transformer.wte.weight, stored once" in summary
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        stored, meta = set(f.keys()), f.metadata()
    own = model.state_dict()
    assert stored == set(own) - {"lm_head.weight"}
    assert json.loads(meta["specc.ties"]) == {"lm_head.weight": "transformer.wte.weight"}
    # the spec's hash as generated code names it, and the arguments the data resolved
    assert meta["specc.spec_sha256"] == specc.load(SPECS / "gpt.spec").sources[0].sha256
    assert json.loads(meta["specc.args"]) == {
        "vocab_size": model.lm_head.out_features, "block_size": 16, "n_layer": 1,
        "n_head": 2, "n_embd": 32, "dropout": 0.0,
    }  # fmt: skip
    back = checkpoint.load(out)["model"]
    assert set(back) == set(own)
    assert all(torch.equal(back[k], v) for k, v in own.items())
    # and it loads where a checkpoint does, both names of the tied weight filled
    assert specc.sample(SPECS / "gpt.spec", out, "The ", max_new_tokens=3, overrides=GPT_SMALL)


def test_safetensors_copies_a_tensor_that_only_overlaps_another(tmp_path):
    base = torch.arange(12.0)
    state = {"a": base.view(3, 4), "b": base.view(3, 4), "c": base[:6], "d": base.view(4, 3).t()}
    ties = checkpoint.save_safetensors(state, tmp_path / "w.safetensors")
    assert ties == (("b", "a"),)
    back = checkpoint.load(tmp_path / "w.safetensors")["model"]
    assert all(torch.equal(back[k], v) for k, v in state.items())


# ---- what cannot be exported -------------------------------------------------------------


def test_data_dependent_plugin_layer_is_named_at_its_line(golden, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(CASES / "export")
    spec = "data_dependent.spec"
    _saved(specc.build(spec), tmp_path / "flip.pt")
    out = tmp_path / "flip.onnx"
    assert main(["export", spec, "--ckpt", str(tmp_path / "flip.pt"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "def forward" not in err  # no trace of torch's own
    golden(CASES / "export" / "data_dependent.err", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flip.pt"]
    # the weights alone need no trace
    assert main(["export", spec, "--ckpt", str(tmp_path / "flip.pt"),
                 "-o", str(tmp_path / "flip.safetensors")]) == 0  # fmt: skip


def test_an_onnx_converter_failure_is_an_export_error(monkeypatch, tmp_path):
    _, ckpt = _small("cifar_net.spec", tmp_path)

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to convert") from NotImplementedError("no ONNX for aten.x")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ExportError, match=r"cannot be converted to ONNX: no ONNX for aten\.x"):
        specc.export(SPECS / "cifar_net.spec", ckpt, tmp_path / "net.onnx")
    assert not (tmp_path / "net.onnx").exists()


# ---- bad inputs: exit code 2, a clear message, nothing written -----------------------------


def _refused(capsys, args: list[str], folder: Path) -> str:
    before = sorted(folder.iterdir())
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sorted(folder.iterdir()) == before
    return err


def test_without_the_export_extra_onnx_says_what_to_install(tmp_path, capsys, monkeypatch):
    _, ckpt = _small("cifar_net.spec", tmp_path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` fails
    err = _refused(capsys, [str(SPECS / "cifar_net.spec"), "--ckpt", str(ckpt),
                            "-o", str(tmp_path / "net.onnx")], tmp_path)  # fmt: skip
    assert "--format onnx needs onnxscript, which is not installed" in err
    assert "pip install 'specc[export]'" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-o", "net.onx", "--format", "onx"], "unknown format `onx`; choose one of onnx, "
         "pt2, safetensors\n  = hint: did you mean `onnx`?"),
        (["-o", "net.bin"], "which format? -o net.bin has no suffix that names one"),
        (["-o", "net.pt2", "--format", "onnx"], "--format onnx but -o net.pt2 names a pt2 file"),
        (["-o", "missing/net.onnx"], "the folder missing does not exist"),
        (["-o", "."], "-o . is a folder"),
        (["-o", "net.onnx", "--ckpt", "nope.pt"], "checkpoint not found: nope.pt"),
        (["-o", "net.pt2", "--model", "Nett"], "no model named `Nett` in the spec"),
    ],
)  # fmt: skip
def test_bad_flags_are_usage_errors(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _small("cifar_net.spec", tmp_path)
    ckpt = [] if "--ckpt" in flags else ["--ckpt", "cifar_net.spec.pt"]
    err = _refused(capsys, [str(SPECS / "cifar_net.spec"), *ckpt, *flags], tmp_path)
    assert message in err


def test_a_corrupt_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    err = _refused(capsys, [str(SPECS / "cifar_net.spec"), "--ckpt", str(tmp_path / "bad.pt"),
                            "-o", str(tmp_path / "net.pt2")], tmp_path)  # fmt: skip
    assert "bad.pt is truncated or corrupt" in err


def test_a_hostile_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').close()",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    err = _refused(capsys, [str(SPECS / "cifar_net.spec"), "--ckpt", str(tmp_path / "evil.pt"),
                            "-o", str(tmp_path / "net.safetensors")], tmp_path)  # fmt: skip
    assert "refused to load" in err and "could run code" in err
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    _, ckpt = _small("digits.spec", tmp_path)
    err = _refused(capsys, [str(SPECS / "cifar_net.spec"), "--ckpt", str(ckpt),
                            "-o", str(tmp_path / "net.onnx")], tmp_path)  # fmt: skip
    assert "does not fit model `Net`: Missing key(s) in state_dict" in err


def test_export_help_does_not_import_torch():
    import subprocess

    code = (
        "import sys; from specc.cli import main; rc = main(['export', '--help']); "
        "assert 'torch' not in sys.modules, 'torch'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--format" in proc.stdout and "safetensors" in proc.stdout
