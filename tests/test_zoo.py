"""Reference networks no one here wrote: torchvision's models as specs (specs/zoo/). Each
spec's module, interpreted and generated, holds torchvision's state_dict keys in order,
loads its weights strictly and gives its outputs; the generated source is ruff-clean."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import SPECS

import specc

ZOO = sorted((SPECS / "zoo").glob("*.spec"))
RUFF = Path(sys.executable).parent / "ruff"


def _generated_class(spec: Path, tmp_path: Path) -> type:
    file = tmp_path / f"{spec.stem}_generated.py"
    file.write_text(specc.compile(spec), "utf-8")
    module_spec = importlib.util.spec_from_file_location(f"zoo_{spec.stem}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, specc.check(spec).model)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", ZOO, ids=lambda p: p.stem)
def test_zoo_spec_is_torchvisions_model(spec, image, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, spec.stem)().eval()  # weights=None: offline
    weights = reference.state_dict()
    with torch.no_grad():
        want = reference(image)
    del reference
    for module in (specc.build(spec), _generated_class(spec, tmp_path)()):
        assert list(module.state_dict()) == list(weights)
        module.load_state_dict(weights, strict=True)
        module.eval()
        with torch.no_grad():
            got = module(image)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        del module


@pytest.mark.parametrize("spec", ZOO, ids=lambda p: p.stem)
def test_zoo_generated_source_is_ruff_clean(spec, tmp_path):
    if not RUFF.is_file():
        pytest.skip("ruff is not installed in this environment")
    file = tmp_path / f"{spec.stem}.py"
    file.write_text(specc.compile(spec), "utf-8")
    for args in (["check"], ["format", "--check", "--diff"]):
        done = subprocess.run(
            [str(RUFF), *args, "--isolated", "--no-cache", str(file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_zoo_has_the_three_references():
    assert {p.stem for p in ZOO} >= {"resnet50", "mobilenet_v2", "vit_b_16"}
