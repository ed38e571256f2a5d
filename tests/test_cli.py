"""The command line as a user meets it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import GOLDEN, SPECS

from specc.cli import main


def test_check_table_golden(golden, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.chdir(SPECS)
    for spec in ("cifar_net.spec", "tower.spec"):
        assert main(["check", spec]) == 0
        golden(GOLDEN / "check" / f"{spec[:-5]}.txt", capsys.readouterr().out)


def test_check_shows_resolved_hole(capsys):
    assert main(["check", str(SPECS / "cifar_net.spec")]) == 0
    out = capsys.readouterr().out
    assert "Linear(400, 120)" in out and "62,006" in out


def test_ir_json_is_valid(capsys):
    assert main(["ir", str(SPECS / "tower.spec")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == ["Residual", "Tower"]


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys; from specc.cli import main; rc = main(['--version']); "
        "rc2 = main(['--help']); "
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'torch'; "
        "sys.exit(rc or rc2)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "specc 0.1.0" in proc.stdout
    assert "check" in proc.stdout and "run" in proc.stdout and "compile" in proc.stdout


@pytest.mark.parametrize("spec", ["tower.spec", "digits.spec", "gpt.spec"])
def test_check_does_not_import_torchvision(spec):
    """Not for models alone, nor for a train block that reads only built-in datasets
    (Digits, a text file): torchvision is imported for its own datasets and transforms."""
    path = str(SPECS / spec)
    code = (
        f"import sys; from specc.cli import main; rc = main(['check', {path!r}]); "
        "assert 'torchvision' not in sys.modules; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_console_script_exit_codes(tmp_path):
    exe = [sys.executable, "-m", "specc"]
    ok = subprocess.run([*exe, "check", str(SPECS / "cifar_net.spec")], capture_output=True)
    assert ok.returncode == 0
    bad = tmp_path / "bad.spec"
    bad.write_text("model M { fc = Linear(4, 2) forward(x: [3]) { return fc(x) } }")
    proc = subprocess.run([*exe, "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "expects 4 input features but receives 3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_resolves_the_train_block_as_run_does(tmp_path, capsys):
    spec = tmp_path / "digits.spec"
    spec.write_text((SPECS / "digits.spec").read_text().replace("AdamW(", "Adamx("))
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "error: unknown optimizer `Adamx`" in err.splitlines()[0]
    assert "Traceback" not in err


def test_check_knows_class_labels_without_the_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no CIFAR files here
    assert main(["check", str(SPECS / "cifar10.spec")]) == 0
    out = capsys.readouterr().out
    assert "train: output [B, 10] -> CrossEntropyLoss <- labels [B] int64" in out
    assert out.splitlines()[-1] == "ok"


def test_written_files_get_the_mode_open_would_give(tmp_path, capsys):
    """Generated code, checkpoints and a text run's tokenizer.json are written through a
    private temporary file; the result has the umask's mode (0644 under umask 022), as a
    file `open` made would."""
    import os

    import torch

    from specc.training import checkpoint, text

    old = os.umask(0o022)
    try:
        out = tmp_path / "net.py"
        assert main(["compile", str(SPECS / "cifar_net.spec"), "-o", str(out)]) in (0, None)
        checkpoint.save({"w": torch.zeros(1)}, tmp_path / "last.pt")
        tokenizer = text.write_tokenizer(text.char_tokens("abc\n"), "char", tmp_path)
    finally:
        os.umask(old)
    for path in (out, tmp_path / "last.pt", tokenizer):
        assert path.stat().st_mode & 0o777 == 0o644, path
