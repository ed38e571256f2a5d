"""Every user mistake renders as `file:line:col: error: ...`, the line, a caret and a hint,
with exit code 2. Each case is a spec in tests/cases/errors/ with its expected .err file."""

from __future__ import annotations

import pytest
from conftest import CASES

from specc.cli import main

ERROR_CASES = sorted((CASES / "errors").glob("*.spec"))


@pytest.mark.parametrize("spec", ERROR_CASES, ids=lambda p: p.stem)
def test_error_rendering(spec, golden, capsys, monkeypatch):
    monkeypatch.chdir(spec.parent)
    code = main(["check", spec.name])
    _out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith(f"{spec.name}:"), err
    golden(spec.with_suffix(".err"), err)


def test_convnet_9216_points_at_fc1(capsys, monkeypatch):
    monkeypatch.chdir(CASES / "errors")
    assert main(["check", "linear_in_features.spec"]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("linear_in_features.spec:4:")  # fc1's line
    assert "1600" in first and "9216" in first
    assert "Linear(_, 128)" in err


def test_missing_file_is_a_clean_error(capsys, tmp_path):
    assert main(["check", str(tmp_path / "nope.spec")]) == 2
    assert "spec file not found" in capsys.readouterr().err


def test_bad_flag_exits_2(capsys):
    assert main(["check", "--bogus"]) == 2


def test_errors_collected_in_one_run(capsys, monkeypatch):
    monkeypatch.chdir(CASES / "errors")
    main(["check", "unknown_names.spec"])
    err = capsys.readouterr().err
    assert err.count("error:") == 4
