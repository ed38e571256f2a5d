"""Shared fixtures: the repo layout and golden-file comparison (`--update-goldens`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
CASES = Path(__file__).resolve().parent / "cases"
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="rewrite every golden file (compile, train, check, errors, IR schema) from the "
        "current output; SPECC_UPDATE_GOLDENS=1 does the same",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """golden(path, text): compare `text` with the checked-in file, or rewrite it."""
    update = (
        request.config.getoption("--update-goldens")
        or os.environ.get("SPECC_UPDATE_GOLDENS") == "1"
    )

    def compare(path: Path, text: str) -> None:
        if not path.exists() and not update:
            pytest.fail(f"missing golden file {path}; run pytest --update-goldens")
        if update:
            if not path.exists() or path.read_text("utf-8") != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, "utf-8")
            return
        assert text == path.read_text("utf-8"), f"output differs from {path} (--update-goldens)"

    return compare


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
