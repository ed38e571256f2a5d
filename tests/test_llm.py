"""Language-model specs against references no one here wrote: specs/llama.spec (RMSNorm,
rotary embeddings from torch ops, SwiGLU, grouped-query attention) loads a Hugging Face
LlamaForCausalLM state_dict as it is and gives its logits, interpreted and generated."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import SPECS

import specc

LLAMA = SPECS / "llama.spec"


def _generated(spec, tmp_path, model: str | None = None) -> type:
    file = tmp_path / "generated.py"
    file.write_text(specc.compile(spec, model), "utf-8")
    module_spec = importlib.util.spec_from_file_location("generated_llm", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, specc.check(spec, model).model)


def test_llama_spec_is_transformers_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )  # fmt: skip  (the spec's defaults, grouped-query: 4 heads share 2 key/value heads)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    weights = reference.state_dict()
    idx = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(idx).logits
    for module in (specc.build(LLAMA), _generated(LLAMA, tmp_path)()):
        assert sorted(module.state_dict()) == sorted(weights)
        module.load_state_dict(weights, strict=True)
        module.eval()
        with torch.no_grad():
            torch.testing.assert_close(module(idx), want, atol=1e-5, rtol=0)


def test_llama_is_causal(tmp_path):
    """Changing a later token leaves every earlier position's logits alone."""
    model = specc.build(LLAMA).eval()
    idx = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 40:] = (changed[0, 40:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :40], b[:, :40])
    assert not torch.equal(a[:, 40:], b[:, 40:])


def test_decoder_variants_are_conditionals(tmp_path):
    """One DecoderLayer: LayerNorm and a GELU MLP when asked, with their weights only."""
    path = tmp_path / "variant.spec"
    path.write_text(
        f'import "{LLAMA}"\n'
        "model Variant {\n"
        "    layer = DecoderLayer(32, 4, 4, 16, 64, 1e-5, 10000.0, rms=False, swiglu=False)\n"
        "    forward(x: [16, 32]) {\n"
        "        return layer(x)\n"
        "    }\n"
        "}\n"
    )
    keys = list(specc.build(path, "Variant").state_dict())
    assert "layer.input_layernorm.bias" in keys  # LayerNorm has a bias, RMSNorm has none
    assert not any("up_proj" in k for k in keys)
    assert specc.check(path, "Variant").outputs[0].tensor.shape == [16, 32]


def test_llama_check_has_no_warnings():
    assert specc.check(LLAMA).warnings == []
