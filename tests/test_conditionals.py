"""Static conditionals and indexed repeats, end to end: spec text in, the module's names,
its outputs and the errors a user sees out. Both back ends are compared on
tests/cases/compile/case_cond.spec by test_codegen's table; the torchvision references are
in test_zoo.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import specc
from specc.errors import SpecError

BLOCK = """
model Block(cin: int, cout: int, stride: int = 1) {
    conv = Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    downsample = Sequential(Conv2d(cin, cout, 1, stride=stride, bias=False),
                            BatchNorm2d(cout)) if stride != 1 or cin != cout else None
    forward(x: [C, H, W]) {
        identity = x
        if downsample {
            identity = downsample(x)
        }
        return relu(conv(x) + identity)
    }
}
model Stage(n: int = 3) {
    blocks = repeat(n, i -> Block(8 if i == 0 else 16, 16, 2 if i == 0 else 1))
    forward(x: [8, 16, 16]) {
        return blocks(x)
    }
}
"""


def test_conditional_layer_is_absent_from_the_state_dict(tmp_path):
    path = tmp_path / "stage.spec"
    path.write_text(BLOCK)
    keys = list(specc.build(path).state_dict())
    # torchvision's names: only the first block of a stage projects its shortcut
    assert "blocks.0.downsample.0.weight" in keys
    assert "blocks.0.downsample.1.running_mean" in keys
    assert not any(k.startswith(("blocks.1.downsample", "blocks.2.downsample")) for k in keys)
    inst = specc.check(path)
    assert inst.outputs[0].tensor.shape == [16, 8, 8]


def test_if_block_follows_the_model_arguments(tmp_path):
    path = tmp_path / "act.spec"
    path.write_text(
        """
        model Act(kind: str = "relu") {
            forward(x: [4]) {
                if kind == "relu" {
                    y = relu(x)
                } else if kind == "gelu" and not False {
                    y = gelu(x)
                } else {
                    y = tanh(x)
                }
                return y
            }
        }
        model Both {
            a = Act("gelu")
            b = Act("other")
            forward(x: [4]) {
                return a(x), b(x)
            }
        }
        """
    )
    x = torch.randn(3, 4)
    relu = specc.build(path, "Act")
    assert torch.equal(relu(x), F.relu(x))
    a, b = specc.build(path, "Both")(x)
    assert torch.equal(a, F.gelu(x))
    assert torch.equal(b, torch.tanh(x))


def test_untaken_branch_is_never_checked_or_run(tmp_path):
    """A branch that would be a shape error for this use is left alone, as Python would."""
    path = tmp_path / "pick.spec"
    path.write_text(
        """
        model Pick(wide: bool = False) {
            small = Linear(4, 2)
            big   = Linear(8, 2)
            forward(x: [4]) {
                return (big(x) if wide else small(x))
            }
        }
        """
    )
    inst = specc.check(path)
    assert inst.outputs[0].tensor.shape == [2]
    assert [n.op for n in inst.nodes].count("layer") == 1


def test_condition_on_an_input_size(tmp_path):
    path = tmp_path / "size.spec"
    path.write_text(
        """
        model Fit {
            proj = Linear(6, 4)
            forward(x: [N]) {
                if x.shape[1] != 4 {
                    x = proj(x)
                }
                return x * 2
            }
        }
        model Use {
            a = Fit()
            forward(x: [6]) {
                return a(x)
            }
        }
        """
    )
    assert specc.check(path, "Use").outputs[0].tensor.shape == [4]


def test_constant_expressions_in_layer_arguments(tmp_path):
    path = tmp_path / "args.spec"
    path.write_text(
        """
        model Net(widths: list = [4, 6, 9], heads: int = 4) {
            fc = Linear(widths[len(widths) - 1], max(2, round(sqrt(heads * 16))))
            other = Linear(4, 3 if heads in [2, 4] and widths[0] < 5 else 1)
            forward(x: [9]) {
                return fc(x), other(x[:, :4])
            }
        }
        """
    )
    fc, other = (layer.ctor for layer in specc.check(path).layers)
    assert [a.value for a in fc.args] == [9, 8]
    assert [a.value for a in other.args] == [4, 3]
    source = specc.compile(path)
    assert "widths[len(widths) - 1], max(2, round(math.sqrt(heads * 16)))" in source
    assert "import math" in source


def test_sequential_names_splats_and_optional_entries(tmp_path):
    path = tmp_path / "seq.spec"
    path.write_text(
        """
        model Net(expand: bool = False) {
            features = Sequential(
                Linear(4, 8) if expand else None,
                Linear(8 if expand else 4, 8),
                *repeat(2, i -> Linear(8, 8)),
                ReLU(),
            )
            layers = repeat(2, Linear(8, 8), prefix="encoder_layer_")
            heads  = Sequential(head=Linear(8, 3))
            forward(x: [4]) {
                return heads(layers(features(x)))
            }
        }
        """
    )
    keys = [k for k in specc.build(path).state_dict() if k.endswith("weight")]
    assert keys == [
        "features.0.weight",  # the absent entry is left out and numbering goes on
        "features.1.weight",
        "features.2.weight",
        "layers.encoder_layer_0.weight",
        "layers.encoder_layer_1.weight",
        "heads.head.weight",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("if True { return x }\n return x", "`return` inside an `if` block"),
        ("y = (x if x.sum() > 0 else x)\n return y", "depends on tensor values"),
        ("return cat([x, x], i -> 1)", "only allowed in `repeat(n, i -> ...)`"),
    ],
)
def test_forward_mistakes_are_located_errors(tmp_path, body, message):
    path = tmp_path / "bad.spec"
    path.write_text(f"model M {{\n forward(x: [4]) {{\n {body}\n }}\n}}\n")
    with pytest.raises(SpecError) as exc:
        specc.check(path)
    assert message in exc.value.message
    assert exc.value.diagnostic.location is not None


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ('repeat(2, Linear(4, 4), prefix="2x")', "prefix must start a Python name"),
        ("repeat(2, i -> Linear(4, 4) if i == 0 else None)", "None at index i = 1"),
        ("Sequential(*Linear(4, 4))", "splices the layers of a `repeat"),
        ("Linear(4, 4) if fc else None", "unknown name `fc`"),
        ("Sequential(Linear(4, 4), head=Linear(4, 4))", "not both"),
    ],
)
def test_layer_mistakes_are_located_errors(tmp_path, layer, message):
    path = tmp_path / "bad.spec"
    path.write_text(f"model M {{\n l = {layer}\n forward(x: [4]) {{\n return l(x)\n }}\n}}\n")
    with pytest.raises(SpecError) as exc:
        specc.check(path)
    assert message in exc.value.message
    assert exc.value.diagnostic.location is not None


def test_bare_conditional_assignment_explains_the_parentheses(tmp_path):
    path = tmp_path / "bare.spec"
    path.write_text(
        "model M(c: int = 1) {\n forward(x: [4]) {\n y = x if c else x\n return y\n }\n}\n"
    )
    with pytest.raises(SpecError) as exc:
        specc.load(path)
    assert "y = (a if c else b)" in (exc.value.hint or "")
