"""specs/gpt2.spec against Hugging Face transformers: a folder written by `save_pretrained`
loads through an `init` line (in the runner and in the generated training script) with
strict keys and the same logits; the 124M configuration's parameter count; init mistakes
as located errors.

The spec that loads it is tests/cases/compile/case_init_hf.spec (also a `compile --train`
golden): GPT(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32).
"""

from __future__ import annotations

import fnmatch
import resource
import time
from pathlib import Path

import pytest
import torch
from conftest import CASES, SPECS

import specc
from specc.codegen.train import TrainScript
from specc.errors import CheckpointError
from specc.training.build import build_model
from specc.training.finetune import load_init
from specc.training.plan import resolve

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

CASE = CASES / "compile" / "case_init_hf.spec"
SIZES = {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 100, "n_positions": 16}
INIT_LINE = 'init from "gpt2-tiny" ('


@pytest.fixture(scope="module")
def hf_models() -> dict[str, torch.nn.Module]:
    """A tiny random GPT2LMHeadModel and its GPT2Model (the same weights), in eval mode."""
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SIZES)).eval()
    return {"lm": lm, "base": lm.transformer}


@pytest.fixture
def folder(in_tmp: Path, hf_models) -> Path:
    """`gpt2-tiny/` as save_pretrained writes it from GPT2LMHeadModel."""
    hf_models["lm"].save_pretrained(in_tmp / "gpt2-tiny")
    return in_tmp / "gpt2-tiny"


def case_program(in_tmp: Path, edits: dict[str, str] | None = None):
    """The case spec, edited, written beside a copy of gpt2.spec in the test's folder."""
    (in_tmp / "gpt2.spec").write_text((SPECS / "gpt2.spec").read_text("utf-8"), "utf-8")
    text = CASE.read_text("utf-8").replace('"../../../specs/gpt2.spec"', '"gpt2.spec"')
    for old, new in (edits or {}).items():
        assert old in text
        text = text.replace(old, new)
    (in_tmp / "case.spec").write_text(text, "utf-8")
    return specc.load(in_tmp / "case.spec")


def loaded_by_runner(program) -> tuple[torch.nn.Module, dict[str, list]]:
    plan = resolve(program)
    model = build_model(program, plan).eval()
    return model, load_init(model, plan.inits[0], quiet=True)


def loaded_by_script(program) -> torch.nn.Module:
    """The generated script's init statements, run on a freshly built model."""
    plan = resolve(program)
    model = build_model(program, plan).eval()
    code = "\n".join(TrainScript(program, plan).init_statements(plan.inits[0]))
    names = {"model": model, "torch": torch, "fnmatch": fnmatch, "load_file": load_file}
    exec(code, names | {"device": "cpu"})
    return model


def same_logits(hf: torch.nn.Module, model: torch.nn.Module) -> float:
    idx = torch.randint(0, SIZES["vocab_size"], (3, SIZES["n_positions"]))
    with torch.no_grad():
        return (hf(idx).logits - model(idx)).abs().max().item()


def test_save_pretrained_folder_loads_strictly_with_equal_logits(folder, in_tmp, hf_models):
    model, result = loaded_by_runner(case_program(in_tmp))
    assert result["missing"] == result["unexpected"] == result["skipped"] == []
    assert set(result["loaded"]) == set(model.state_dict())  # lm_head.weight through its tie
    assert same_logits(hf_models["lm"], model) < 1e-4
    assert same_logits(hf_models["lm"], loaded_by_script(case_program(in_tmp))) < 1e-4


def test_gpt2model_file_with_old_mask_buffers(in_tmp, hf_models):
    """A GPT2Model file (no `transformer.` prefix) that also holds the causal-mask buffers
    older transformers versions saved: add_prefix= and ignore= make it load strictly."""
    state = {k: v.contiguous() for k, v in hf_models["base"].state_dict().items()}
    for i in range(SIZES["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
    (in_tmp / "base").mkdir()
    save_file(state, in_tmp / "base" / "model.safetensors")
    edits = {INIT_LINE: 'init from "base/" (add_prefix="transformer.", '}
    model, result = loaded_by_runner(case_program(in_tmp, edits))
    assert result["unexpected"] == [] and "transformer.h.1.attn.bias" not in result["loaded"]
    assert same_logits(hf_models["lm"], model) < 1e-4


def test_parameter_count_of_the_124m_config_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    inst = specc.check(SPECS / "gpt2.spec")
    elapsed = time.perf_counter() - t0
    assert inst.params == 124_439_808  # GPT-2 small, lm_head tied to wte
    # 124M float32 parameters would be 500 MB; KiB on Linux
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000
    assert elapsed < 30  # generous on a shared host: the benchmark holds the real target


# name: (edits of the case spec, the message's start, the hint's start). Each is found while
# loading the file, and points at the init line.
LOAD_MISTAKES = {
    "weight_left_out_of_transpose": (
        {', "*.c_fc.weight"]': "]"},
        "init: `transformer.h.0.mlp.c_fc.weight` has shape [128, 32] in the model but "
        "[32, 128] in gpt2-tiny/model.safetensors",
        "`transformer.h.0.mlp.c_fc.weight` is stored transposed ([in, out], as HF's Conv1D "
        'stores it): add it to transpose=, e.g. transpose=["*.c_fc.weight"]'),
    "prefix_missing_under_strict": (
        {"transpose=": 'strip_prefix="transformer.", transpose='},
        "init (strict=True): ",
        'the file\'s keys lack a prefix: add_prefix="transformer."'),
    "folder_without_safetensors": (
        {INIT_LINE: 'init from "empty" ('},
        "init from 'empty': the folder holds no model.safetensors (it has: notes.txt)",
        "save it with save_pretrained(..., safe_serialization=True), or name the file"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LOAD_MISTAKES))
def test_load_mistakes_are_located_errors(name, folder, in_tmp):
    edits, message, hint = LOAD_MISTAKES[name]
    (in_tmp / "empty").mkdir()
    (in_tmp / "empty" / "notes.txt").write_text("", "utf-8")
    program = case_program(in_tmp, edits)
    with pytest.raises(CheckpointError) as info:
        loaded_by_runner(program)
    text = info.value.with_source({str(in_tmp / "case.spec"): (in_tmp / "case.spec").read_text()})
    rendered = text.render()
    line = next(i for i, s in enumerate((in_tmp / "case.spec").read_text().splitlines(), 1)
                if "init from" in s)  # fmt: skip
    assert rendered.startswith(f"{in_tmp / 'case.spec'}:{line}:5: error: {message}"), rendered
    assert f"= hint: {hint}" in rendered
