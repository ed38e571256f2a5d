"""The CUDA path of a language model: bf16 autocast, fused AdamW, torch.compile, flash
attention, positions made on the input's device, and a CUDA checkpoint sampled on the CPU.

Skipped without CUDA. `SPECC_GPU_TEST_DEVICE=cpu` runs the device-independent parts on the
CPU (everything but flash attention), to check the tests themselves on a machine without
a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import SPECS

import specc
from specc.training import checkpoint

DEVICE = os.environ.get("SPECC_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA"),
]
SMALL = ["model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.dropout=0.0"]


def test_gpt_trains_with_bf16_fused_adamw_and_compile_and_samples_on_the_cpu(tmp_path):
    settings = [*SMALL, "max_steps=30", f'device="{DEVICE}"', 'precision="bf16"',
                "compile=True", "optimizer.fused=True"]  # fmt: skip
    summary = specc.train(SPECS / "gpt.spec", settings, runs_dir=tmp_path, quiet=True)
    assert summary["steps"] == 30
    ck = checkpoint.load(tmp_path / "gpt" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values())  # bf16 did not overflow
    assert all(not k.startswith("_orig_mod.") for k in ck["model"])  # compiled, saved plain
    assert all(v.device.type == "cpu" for v in ck["model"].values())
    cpu = ['device="cpu"', *SMALL]
    text = specc.sample(SPECS / "gpt.spec", tmp_path / "gpt" / "last.pt", "The ",
                        max_new_tokens=30, overrides=cpu)  # fmt: skip
    assert text.startswith("The ") and len(text) > 30


def test_sampling_on_the_device_repeats_with_the_seed(tmp_path):
    specc.train(SPECS / "gpt.spec", [*SMALL, "max_steps=2", f'device="{DEVICE}"'],
                runs_dir=tmp_path, quiet=True)  # fmt: skip
    runs = [specc.sample(SPECS / "gpt.spec", tmp_path / "gpt" / "last.pt", "The ", seed=3,
                         max_new_tokens=40, top_k=10, overrides=[*SMALL, f'device="{DEVICE}"'])
            for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]


@pytest.mark.skipif(DEVICE != "cuda", reason="flash attention is a CUDA kernel")
def test_attention_runs_on_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from specc.training.build import build_model

    program = specc.load(SPECS / "gpt.spec")
    plan = specc.train_plan(program)
    net = build_model(program, plan).to("cuda", torch.bfloat16).eval()
    idx = torch.randint(0, plan.model.args["vocab_size"], (2, plan.model.args["block_size"]),
                        device="cuda")  # fmt: skip
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():  # raises if flash cannot run
        logits = net(idx)
    assert logits.shape == (2, idx.shape[1], plan.model.args["vocab_size"])
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
