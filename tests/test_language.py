"""The language end to end: spec text in, IR / checked shapes / nn.Module out."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import GOLDEN, SPECS
from torch import nn

import specc
from specc import ir
from specc.errors import SpecError

ALL_SPECS = sorted(SPECS.glob("*.spec"))


class TutorialNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial's Net, written by hand."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def test_cifar_net_shapes_and_params():
    inst = specc.check(SPECS / "cifar_net.spec")
    layers = {layer.name: layer for layer in inst.layers}
    fc1 = layers["fc1"].ctor
    assert isinstance(fc1, ir.TorchCtor) and fc1.args[0].value == 400
    assert inst.params == 62_006
    assert inst.outputs[0].tensor.shape == [10]


def test_handwritten_net_loads_and_matches():
    built = specc.build(SPECS / "cifar_net.spec")
    hand = TutorialNet()
    built.load_state_dict(hand.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(built(x), hand(x))
    assert list(built.state_dict()) == list(hand.state_dict())


def test_same_seed_same_weights_as_handwritten():
    torch.manual_seed(0)
    hand = TutorialNet()
    torch.manual_seed(0)
    built = specc.build(SPECS / "cifar_net.spec")
    for (k1, v1), (k2, v2) in zip(
        hand.state_dict().items(), built.state_dict().items(), strict=False
    ):
        assert k1 == k2 and torch.equal(v1, v2)


def test_shape_check_does_not_touch_the_rng():
    torch.manual_seed(0)
    specc.check(SPECS / "cifar_net.spec")
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_tower_repeat_and_state_dict_names():
    model = specc.build(SPECS / "tower.spec")
    keys = list(model.state_dict())
    assert "blocks.0.body.1.running_mean" in keys
    assert "blocks.2.body.3.weight" in keys
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    # Three independent instances, not one shared three times.
    w = [model.blocks[i].body[0].weight for i in range(3)]
    assert w[0].data_ptr() != w[1].data_ptr() and not torch.equal(w[0], w[1])


def test_mnist_convnet_infers_1600():
    inst = specc.check(SPECS / "mnist_convnet.spec")
    fc1 = next(layer for layer in inst.layers if layer.name == "fc1")
    assert fc1.ctor.args[0].value == 1600


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_ir_json_round_trip(spec):
    program = specc.load(spec)
    text = program.model_dump_json()
    again = ir.Program.model_validate_json(text)
    assert again == program
    assert again.model_dump_json() == text


def test_ir_schema_golden(golden):
    schema = json.dumps(ir.Program.model_json_schema(), indent=2, sort_keys=True) + "\n"
    golden(GOLDEN / "ir_schema.json", schema)


SEQUENTIAL = """
sequential MLP(hidden: int = 32) {
    input(x: [20])
    Linear(_, hidden)
    ReLU()
    Linear(hidden, 5)
}
"""


def test_compact_sequential_form():
    model = specc.build(SEQUENTIAL)
    assert isinstance(model, nn.Sequential)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model(torch.randn(3, 20)).shape == (3, 5)
    assert specc.check(SEQUENTIAL).params == 20 * 32 + 32 + 32 * 5 + 5


MULTI = """
model Encoder(d: int) {
    proj = Linear(_, d)
    forward(x: [T, F]) {
        h = proj(x)
        return h, h.mean(1)
    }
}

model Pair {
    enc  = Encoder(16)
    head = Linear(_, 3)
    forward(a: [5, 8], b: [7, 8], tokens: [7] long) {
        ha, pa = enc(a)
        hb, pb = enc(b)
        z = cat([pa, pb], 1) * 2.0 - 1
        return head(z), hb[:, -1], tokens[..., :3]
    }
}
"""


def test_several_inputs_outputs_named_dims_and_indexing():
    inst = specc.check(MULTI)
    shapes = [v.tensor.shape for v in inst.outputs]
    assert shapes == [[3], [16], [3]]
    model = specc.build(MULTI)
    out = model(torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.zeros(2, 7, dtype=torch.long))
    assert [tuple(o.shape) for o in out] == [(2, 3), (2, 16), (2, 3)]


def test_named_dims_need_sizes_at_top_level():
    spec = "model M { fc = Linear(_, 2)  forward(x: [N]) { return fc(x) } }"
    with pytest.raises(SpecError, match="named dimension `N`"):
        specc.check(spec)
    assert specc.check(spec, inputs={"x": [6]}).layers[0].ctor.args[0].value == 6


def test_twenty_billion_parameters_check_without_allocation():
    spec = """
    model Huge {
        blocks = repeat(20, Linear(32768, 32768))
        forward(x: [32768]) { return blocks(x) }
    }
    """
    t0 = time.perf_counter()
    inst = specc.check(spec)
    elapsed = time.perf_counter() - t0
    assert inst.params == 20 * (32768 * 32768 + 32768)  # 21.5 billion
    assert elapsed < 30  # generous: the benchmark suite holds the real target


def test_arithmetic_and_params_in_arguments():
    spec = """
    model M(ch: int = 4) {
        conv = Conv2d(3, ch * 2, kernel_size=(3, 3), padding=1)
        fc = Linear(ch * 2 * 16, 10 // 2 + 1)
        forward(x: [3, 4, 4]) { return fc(flatten(conv(x), 1)) }
    }
    """
    inst = specc.check(spec)
    assert inst.outputs[0].tensor.shape == [6]
