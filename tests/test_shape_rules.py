"""Shape rules (`LAYER_RULES`, `FUNCTION_RULES`, `OPERATOR_RULES` in specc.shapes.rules)
against torch.

Each call is made twice on meta tensors: by torch, and through the hook `check` uses with the
real op replaced by a sentinel, so a rule that declines is seen declining. A rule either
declines or gives torch's output exactly (shape, dtype, a new contiguous tensor, no warning
lost); where torch raises, every rule declines so torch still reports the error. Ordinary
calls (contiguous floating-point inputs with no empty dimension) must be covered. Checks of
real specs then import neither sympy nor torch._dynamo, and print the same with the rules
on and off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import CASES, SPECS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from specc.cli import main
from specc.registry import function_by_qualname
from specc.shapes import rules as shapes
from specc.values import BINOPS

RULES = settings(
    max_examples=int(os.environ.get("RULE_EXAMPLES", 300)),
    deadline=None,
    derandomize=True,  # the same calls every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _NotCovered(Exception):
    pass


def _decline(*args: Any, **kwargs: Any) -> Any:
    raise _NotCovered


def meta(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def compare(real: Any, hooked: Any, *args: Any, **kwargs: Any) -> str:
    """Run `real` (torch) and `hooked` (a `ShapeRule`, as check builds it) on the same
    arguments; fail on any difference. Returns "covered", "torch refuses" or "declined"."""
    assert isinstance(hooked, shapes.ShapeRule), f"no rule for {real}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            want, refused = real(*args, **kwargs), None
        except Exception as exc:  # torch refuses calls with several exception types
            want, refused = None, exc
    rule = shapes.ShapeRule(_decline, hooked.rule, hooked.any_strides)
    try:
        got = rule(*args, **kwargs)
    except _NotCovered:
        return "torch refuses" if refused is not None else "declined"
    assert refused is None, f"the rule covers a call torch refuses: {refused}"
    assert not caught, f"the rule hides torch's warning: {caught[0].message}"
    assert isinstance(want, torch.Tensor) and want.is_meta
    assert (tuple(got.shape), got.dtype) == (tuple(want.shape), want.dtype)
    assert got.is_meta and got.is_contiguous() and want.is_contiguous(), want.stride()
    assert got.stride() == want.stride()  # the same strides: the same shape-cache keys
    # in place, torch returns its input itself, and so must the rule
    inputs = [a for a in (*args, *kwargs.values()) if want is a]
    assert all(got is a for a in inputs), "torch returns its input; the rule does not"
    assert inputs or all(got is not a for a in (*args, *kwargs.values()))
    return "covered"


def ordinary(*xs: Any) -> bool:
    """Calls every rule must cover when torch takes them: plain tensors, nothing empty."""
    tensors = [x for x in xs if isinstance(x, torch.Tensor)]
    return all(
        x.is_floating_point() and x.is_contiguous() and x.dtype == tensors[0].dtype for x in tensors
    ) and all(x.numel() > 0 for x in tensors)


def expect(status: str, covered: bool) -> None:
    """`covered`: the call is one the rule must cover when torch takes it."""
    if covered:
        assert status != "declined", "an ordinary call falls back to torch"


def layer(cls: type, *args: Any, **kwargs: Any) -> nn.Module | None:
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-size layers warn that init does nothing
            return cls(*args, **kwargs)
    except (ValueError, RuntimeError, TypeError, AssertionError):
        return None  # torch refuses the configuration before any call


def function(name: str) -> tuple[Any, Any]:
    qualname = f"torch.nn.functional.{name}" if name != "cat" else "torch.cat"
    real = function_by_qualname(qualname)
    return real, shapes.meta_function(qualname, real)


def size_or_sizes(lo: int, hi: int, n: int) -> st.SearchStrategy:
    one = st.integers(lo, hi)
    return st.one_of(one, st.tuples(*[one] * n), st.lists(one, min_size=n, max_size=n))


dtypes = st.sampled_from((torch.float32,) * 6 + FLOATS + (torch.int64, torch.bool))


# ---- layers with weights -------------------------------------------------------------------


def check_conv(
    nd, in_ch, out_ch, kernel, stride, padding, dilation, groups, mode, channels, spatial,
    batched=True, dtype=torch.float32, layer_dtype=torch.float32,
) -> str:  # fmt: skip
    conv = layer(
        getattr(nn, f"Conv{nd}d"), in_ch, out_ch, kernel, stride, padding, dilation, groups,
        padding_mode=mode, dtype=layer_dtype,
    )  # fmt: skip
    if conv is None:
        return "torch refuses"
    x = meta(((2,) if batched else ()) + (channels, *spatial), dtype)
    status = compare(conv, shapes.meta_forward(conv), x)
    expect(status, ordinary(x) and dtype == layer_dtype)
    return status


@RULES
@given(st.data())
def test_conv_matches_torch(data):
    nd = data.draw(st.sampled_from((1, 2, 3)))
    groups = data.draw(st.sampled_from((1, 1, 2, 3)))
    in_ch = groups * data.draw(st.integers(1, 2))
    padding = data.draw(st.one_of(size_or_sizes(0, 3, nd), st.sampled_from(("same", "valid"))))
    check_conv(
        nd,
        in_ch,
        groups * data.draw(st.integers(1, 2)),
        data.draw(size_or_sizes(1, 4, nd)),
        data.draw(st.one_of(st.just(1), size_or_sizes(1, 5, nd))),
        padding,
        data.draw(st.one_of(st.just(1), size_or_sizes(1, 3, nd))),
        groups,
        data.draw(st.sampled_from(("zeros", "zeros", "reflect", "replicate", "circular"))),
        data.draw(st.sampled_from((in_ch, in_ch, in_ch, in_ch + 1))),
        data.draw(st.lists(st.integers(0, 9), min_size=nd, max_size=nd)),
        data.draw(st.booleans()),
        data.draw(dtypes),
        data.draw(st.sampled_from((torch.float32, torch.float32, torch.float64))),
    )


@pytest.mark.parametrize(
    ("nd", "in_ch", "out_ch", "kernel", "stride", "padding", "dilation", "groups", "mode",
     "channels", "spatial", "status"),
    [
        (2, 3, 6, 5, 1, 0, 1, 1, "zeros", 3, (32, 32), "covered"),  # cifar_net's conv1
        (2, 16, 16, 3, 1, 1, 1, 1, "zeros", 16, (16, 16), "covered"),  # tower's blocks
        (2, 3, 4, 3, 2, 1, 1, 1, "zeros", 3, (7, 8), "covered"),  # odd sizes, stride 2
        (2, 3, 4, 2, 5, 0, 1, 1, "zeros", 3, (9, 9), "covered"),  # stride > kernel
        (1, 2, 4, 3, 1, 2, 3, 2, "zeros", 2, (7,), "covered"),  # dilation and groups
        (2, 4, 4, 4, 1, "same", 2, 4, "zeros", 4, (5, 6), "covered"),  # even kernel, same
        (3, 2, 2, (1, 2, 3), (1, 2, 3), "valid", 1, 1, "zeros", 2, (3, 4, 5), "covered"),
        (2, 3, 3, 3, 1, 2, 1, 1, "reflect", 3, (3, 3), "covered"),  # reflect pad 2 < 3
        (2, 3, 3, 3, 1, 3, 1, 1, "reflect", 3, (3, 3), "torch refuses"),  # pad 3 >= 3
        (2, 3, 3, 3, 1, 3, 1, 1, "circular", 3, (3, 3), "covered"),  # wraps once
        (2, 3, 3, 3, 1, 4, 1, 1, "circular", 3, (3, 3), "torch refuses"),  # more than once
        (2, 3, 3, 3, 1, 1, 1, 1, "replicate", 3, (1, 1), "covered"),
        (2, 3, 6, 5, 1, 0, 1, 1, "zeros", 3, (4, 32), "torch refuses"),  # kernel > input
        (2, 1, 6, 5, 1, 0, 1, 1, "zeros", 3, (32, 32), "torch refuses"),  # channels differ
        (2, 3, 6, 3, 1, 1, 1, 1, "zeros", 3, (0, 5), "torch refuses"),  # an empty image
    ],
)  # fmt: skip
def test_conv_cases(nd, in_ch, out_ch, kernel, stride, padding, dilation, groups, mode,
                    channels, spatial, status):  # fmt: skip
    assert status == check_conv(
        nd, in_ch, out_ch, kernel, stride, padding, dilation, groups, mode, channels, spatial
    )
    assert check_conv(  # unbatched, (C, *spatial), where torch takes it
        nd, in_ch, out_ch, kernel, stride, padding, dilation, groups, mode, channels, spatial,
        batched=False,
    ) in (status, "torch refuses")  # fmt: skip


@RULES
@given(
    st.integers(0, 4),
    st.integers(0, 3),
    st.sampled_from((0, 3, 5)),
    st.integers(1, 3),
    dtypes,
    st.sampled_from((torch.float32, torch.float64)),
)
def test_linear_matches_torch(rank, width, in_f, out_f, dtype, layer_dtype):
    fc = layer(nn.Linear, in_f, out_f, dtype=layer_dtype)
    x = meta((2, 3, 1)[: max(rank - 1, 0)] + ((in_f if width else 4),) * (rank > 0), dtype)
    status = compare(fc, shapes.meta_forward(fc), x)
    expect(status, ordinary(x) and dtype == layer_dtype)


# ---- pooling -------------------------------------------------------------------------------


def check_pool(kind, nd, kernel, stride, padding, dilation, ceil, spatial, how, extra) -> str:
    """kind max/avg; how: "layer" (nn.MaxPool2d(...)) or "function" (F.max_pool2d(x, ...))."""
    x = meta((2, 3, *spatial) if how != "unbatched" else (3, *spatial))
    kw: dict[str, Any] = {"stride": stride, "padding": padding, "ceil_mode": ceil, **extra}
    if kind == "max":
        kw["dilation"] = dilation
    if how == "function":
        real, hooked = function(f"{kind}_pool{nd}d")
        status = compare(real, hooked, x, kernel, **kw)
    else:
        if isinstance(stride, list) and not stride:
            kw["stride"] = None  # layers take None, functions [] too
        pool = layer(getattr(nn, f"{kind.title()}Pool{nd}d"), kernel, **kw)
        if pool is None:
            return "torch refuses"
        status = compare(pool, shapes.meta_forward(pool), x)
    plain = not extra.get("return_indices") and extra.get("divisor_override") != 0
    # torch lets max_pool1d pad by half the dilated kernel; the rules stop at half the kernel
    halves = all(p <= k // 2 for p, k in zip(_seq(padding, nd), _seq(kernel, nd), strict=True))
    expect(status, ordinary(x) and plain and halves)
    return status


def _seq(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


@RULES
@given(st.data())
def test_pooling_matches_torch(data):
    nd = data.draw(st.sampled_from((1, 2, 3)))
    kind = data.draw(st.sampled_from(("max", "avg")))
    extra: dict[str, Any] = {}
    if kind == "max" and data.draw(st.integers(0, 5)) == 0:
        extra["return_indices"] = True
    if kind == "avg":
        extra["count_include_pad"] = data.draw(st.booleans())
        if nd > 1:
            extra["divisor_override"] = data.draw(st.sampled_from((None, None, 0, 1, 3)))
    check_pool(
        kind,
        nd,
        data.draw(size_or_sizes(1, 4, nd)),
        data.draw(st.one_of(st.none(), st.just([]), size_or_sizes(1, 5, nd))),
        data.draw(st.one_of(st.just(0), size_or_sizes(0, 2, nd))),
        data.draw(st.one_of(st.just(1), size_or_sizes(1, 3, nd))),
        data.draw(st.booleans()),
        data.draw(st.lists(st.integers(0, 11), min_size=nd, max_size=nd)),
        data.draw(st.sampled_from(("layer", "function", "unbatched"))),
        extra,
    )


@pytest.mark.parametrize("how", ["layer", "function", "unbatched"])
@pytest.mark.parametrize(
    ("kind", "nd", "kernel", "stride", "padding", "dilation", "ceil", "spatial", "status"),
    [
        ("max", 2, 2, 2, 0, 1, False, (28, 28), "covered"),  # cifar_net, mnist_convnet
        ("max", 2, 2, None, 0, 1, False, (7, 9), "covered"),  # odd sizes round down
        ("max", 2, 3, 2, 1, 1, True, (8, 8), "covered"),  # ceil_mode adds a window
        ("max", 1, 2, 2, 1, 1, True, (5,), "covered"),  # ceil window starting in the pad
        ("max", 2, 2, 5, 0, 1, True, (9, 7), "covered"),  # stride > kernel
        ("max", 2, 3, 1, 1, 2, False, (6, 6), "covered"),  # dilation
        ("max", 3, (1, 2, 3), (1, 2, 3), (0, 1, 1), 1, True, (4, 5, 7), "covered"),
        ("avg", 2, 3, 3, 1, 1, True, (10, 11), "covered"),
        ("avg", 1, 4, 1, 2, 1, False, (3,), "covered"),
        ("max", 2, 2, 2, 2, 1, False, (8, 8), "torch refuses"),  # padding > kernel / 2
        ("max", 2, 5, 1, 0, 1, False, (4, 8), "torch refuses"),  # kernel > input
        ("avg", 2, 2, 2, 0, 1, False, (0, 4), "torch refuses"),  # an empty image
    ],
)  # fmt: skip
def test_pooling_cases(kind, nd, kernel, stride, padding, dilation, ceil, spatial, status, how):
    assert check_pool(kind, nd, kernel, stride, padding, dilation, ceil, spatial, how, {}) == status


@RULES
@given(st.data())
def test_adaptive_pooling_matches_torch(data):
    nd = data.draw(st.sampled_from((1, 2, 3)))
    kind = data.draw(st.sampled_from(("avg", "max")))
    entry = st.one_of(st.integers(0, 6), st.none())
    size = data.draw(st.one_of(st.integers(0, 6), st.lists(entry, min_size=nd, max_size=nd)))
    spatial = data.draw(st.lists(st.integers(0, 8), min_size=nd, max_size=nd))
    x = meta((2, 4, *spatial) if data.draw(st.booleans()) else (4, *spatial))
    indices = kind == "max" and data.draw(st.integers(0, 4)) == 0
    extra = {"return_indices": True} if indices else {}
    if data.draw(st.booleans()):
        real, hooked = function(f"adaptive_{kind}_pool{nd}d")
        status = compare(real, hooked, x, size, **extra)
    else:
        pool = layer(getattr(nn, f"Adaptive{kind.title()}Pool{nd}d"), size, **extra)
        status = compare(pool, shapes.meta_forward(pool), x) if pool else "torch refuses"
    sizes = [size] if isinstance(size, int) else size
    plain = not indices and 0 not in sizes and (nd > 1 or None not in sizes)
    expect(status, ordinary(x) and plain)


def test_adaptive_pooling_cases():
    real, hooked = function("adaptive_avg_pool2d")
    assert compare(real, hooked, meta((2, 16, 16, 16)), 1) == "covered"  # tower's head
    assert compare(real, hooked, meta((2, 3, 5, 7)), (None, 3)) == "covered"
    assert compare(real, hooked, meta((2, 3, 5, 7)), (9, 9)) == "covered"  # upsampling sizes
    assert compare(real, hooked, meta((2, 3, 5)), 2) == "covered"  # unbatched
    assert compare(real, hooked, meta((3, 5)), 2) == "torch refuses"
    real, hooked = function("adaptive_avg_pool1d")
    assert compare(real, hooked, meta((2, 3, 5)), [None]) == "torch refuses"


# ---- normalisation and dropout ------------------------------------------------------------


@RULES
@given(st.data())
def test_batch_norm_matches_torch(data):
    nd = data.draw(st.sampled_from((1, 2, 3)))
    rank = data.draw(st.integers(1, 6))
    shape = tuple(data.draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank)))
    features = data.draw(st.sampled_from([shape[1]] * 3 + [5] if rank > 1 else [3]))
    kwargs = {
        "momentum": data.draw(st.sampled_from((0.1, 0.1, None))),
        "eps": data.draw(st.sampled_from((1e-5, 1e-5, 0.0))),
        "affine": data.draw(st.booleans()),
        "track_running_stats": data.draw(st.booleans()),
    }
    bn = layer(getattr(nn, f"BatchNorm{nd}d"), features, **kwargs)
    if not data.draw(st.integers(0, 3)):
        bn.eval()
    x = meta(shape, data.draw(dtypes))
    status = compare(bn, shapes.meta_forward(bn), x)
    plain = rank > 1 and shape[1] == features and kwargs["momentum"] and kwargs["eps"]
    expect(status, ordinary(x) and x.dtype == torch.float32 and bool(plain))


@pytest.mark.parametrize(
    ("cls", "args", "kwargs", "train", "shape", "status"),
    [
        (nn.BatchNorm2d, (16,), {}, True, (2, 16, 16, 16), "covered"),  # tower, digits
        (nn.BatchNorm1d, (3,), {}, True, (2, 3), "covered"),
        (nn.BatchNorm1d, (3,), {}, True, (1, 3), "torch refuses"),  # one value per channel
        (nn.BatchNorm1d, (3,), {}, False, (1, 3), "covered"),  # eval: running stats
        (nn.BatchNorm1d, (3,), {"track_running_stats": False}, False, (1, 3), "torch refuses"),
        (nn.BatchNorm2d, (3,), {}, True, (1, 3, 1, 1), "torch refuses"),
        (nn.BatchNorm2d, (3,), {"momentum": None}, True, (2, 3, 4, 4), "torch refuses"),
        (nn.BatchNorm2d, (3,), {"eps": 0.0}, True, (2, 3, 4, 4), "torch refuses"),
        (nn.BatchNorm2d, (3,), {}, True, (2, 3, 4), "torch refuses"),  # rank
        (nn.BatchNorm3d, (4,), {}, True, (2, 5, 2, 2, 2), "torch refuses"),  # channels
        (nn.GroupNorm, (2, 4), {}, True, (2, 4, 3), "covered"),
        (nn.GroupNorm, (4, 4), {}, True, (1, 4), "torch refuses"),  # one value per group
        (nn.GroupNorm, (2, 4), {}, True, (2, 6, 3), "torch refuses"),
        (nn.LayerNorm, ([4, 5],), {}, True, (2, 3, 4, 5), "covered"),
        (nn.LayerNorm, ([4, 5],), {}, True, (2, 3, 5, 4), "torch refuses"),
        (nn.LayerNorm, (5,), {"bias": False}, True, (5,), "covered"),
    ],
)
def test_norm_cases(cls, args, kwargs, train, shape, status):
    norm = layer(cls, *args, **kwargs).train(train)
    assert compare(norm, shapes.meta_forward(norm), meta(shape)) == status


@RULES
@given(st.data())
def test_layer_and_group_norm_match_torch(data):
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank)))
    x = meta(shape, data.draw(dtypes))
    channels_match = True
    if data.draw(st.booleans()):
        n = data.draw(st.integers(1, rank))
        normalized = list(shape[rank - n :])
        if data.draw(st.integers(0, 4)) == 0:
            normalized[0] += 1
        norm = layer(nn.LayerNorm, normalized, elementwise_affine=data.draw(st.booleans()))
    else:
        channels = shape[1] if rank > 1 and data.draw(st.integers(0, 4)) else 4
        groups = data.draw(st.sampled_from([g for g in (1, 2, 4) if channels % g == 0] or [1]))
        norm = layer(nn.GroupNorm, groups, channels, affine=data.draw(st.booleans()))
        # without weights torch takes any channel count divisible by the groups
        channels_match = rank > 1 and shape[1] == channels
    if norm is None:
        return
    status = compare(norm, shapes.meta_forward(norm), x)
    expect(status, ordinary(x) and x.dtype == torch.float32 and channels_match)


@RULES
@given(
    st.sampled_from(("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "dropout")),
    st.sampled_from((0.0, 0.25, 0.5, 1.0)),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=5),
    dtypes,
)
def test_dropout_matches_torch(name, p, training, inplace, shape, dtype):
    x = meta(tuple(shape), dtype)
    if name == "dropout":
        real, hooked = function("dropout")
        status = compare(real, hooked, x, p, training=training, inplace=inplace)
    else:
        drop = layer(getattr(nn, name), p, inplace=inplace)
        drop.train(training)
        status = compare(drop, shapes.meta_forward(drop), x)
    ranks = {"Dropout1d": (2, 3), "Dropout2d": (4,), "Dropout3d": (4, 5)}.get(name)
    plain = p > 0 and training and not inplace and (ranks is None or x.dim() in ranks)
    expect(status, ordinary(x) and plain)


# ---- activations ---------------------------------------------------------------------------

ACTIVATIONS = [
    # (layer, functional name, arguments) as a spec writes them
    (nn.ReLU, "relu", {}),
    (nn.ReLU, "relu", {"inplace": True}),
    (nn.ReLU6, "relu6", {}),
    (nn.GELU, "gelu", {}),
    (nn.GELU, "gelu", {"approximate": "tanh"}),
    (nn.GELU, "gelu", {"approximate": "bogus"}),
    (nn.SiLU, "silu", {}),
    (nn.Mish, "mish", {}),
    (nn.Hardswish, "hardswish", {}),
    (nn.Tanh, "tanh", {}),
    (nn.Sigmoid, "sigmoid", {}),
    (nn.LeakyReLU, "leaky_relu", {"negative_slope": 0.2}),
    (nn.LeakyReLU, "leaky_relu", {"negative_slope": "steep"}),
    (nn.ELU, "elu", {"alpha": 2}),
    (nn.ELU, "elu", {"alpha": 1.0, "inplace": True}),
    (nn.Softmax, "softmax", {"dim": 1}),
    (nn.Softmax, "softmax", {"dim": -1}),
    (nn.Softmax, "softmax", {"dim": 3}),
    (nn.Softmax, "softmax", {"dim": None}),  # torch warns and picks a dim itself
    (nn.LogSoftmax, "log_softmax", {"dim": 1}),
    (nn.LogSoftmax, "log_softmax", {"dim": -2}),
]


@pytest.mark.parametrize(
    "shape", [(2, 10), (2, 3, 5, 5), (7,), (), (2, 0, 3)], ids=lambda s: str(list(s))
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64])
@pytest.mark.parametrize(("cls", "name", "kwargs"), ACTIVATIONS, ids=lambda a: str(a))
def test_activations_match_torch(cls, name, kwargs, shape, dtype):
    x = meta(shape, dtype)
    dim, n = kwargs.get("dim", 0), max(len(shape), 1)
    # torch's meta softmax takes any dim (its CPU kernel does not): the rule only real ones
    odd = kwargs.get("inplace") or dim is None or not -n <= dim < n
    odd = odd or "bogus" in kwargs.values() or kwargs.get("negative_slope") == "steep"
    act = layer(cls, **kwargs)
    if act is not None:
        expect(compare(act, shapes.meta_forward(act), x), x.is_floating_point() and not odd)
    real, hooked = function(name)
    status = compare(real, hooked, x, **kwargs)
    expect(status, x.is_floating_point() and not odd)
    if "dim" in kwargs:  # softmax(x, 1): the dim also passed by position
        compare(real, hooked, x, kwargs["dim"])
        assert compare(real, hooked, x, kwargs["dim"], dtype=torch.float64) != "covered"
    if name == "gelu":  # approximate is keyword-only
        assert compare(real, hooked, x, "tanh") == "torch refuses"


@pytest.mark.parametrize(
    ("name", "args", "status"),
    [
        ("relu", (False,), "covered"),
        ("relu", (True,), "declined"),  # inplace, by position
        ("leaky_relu", (0.1, False), "covered"),
        ("leaky_relu", (0.1, True), "declined"),
        ("elu", (2.0, True), "declined"),
        ("dropout", (0.5, True, False), "covered"),
        ("dropout", (0.5, True, True), "declined"),
        ("dropout", (0.5, False), "declined"),  # eval: torch returns the input itself
        ("dropout", (1, True), "covered"),
        ("dropout", (1.5,), "torch refuses"),
    ],
)
def test_functions_with_positional_flags(name, args, status):
    real, hooked = function(name)
    assert compare(real, hooked, meta((2, 4)), *args) == status


# ---- binary operators ----------------------------------------------------------------------


@st.composite
def broadcast_pair(draw) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that mostly broadcast: one drawn, the other from it dim by dim (kept, 1,
    dropped from the front, or another size)."""
    a = draw(st.lists(st.sampled_from((0, 1, 2, 3, 5)), max_size=4))
    b = [draw(st.sampled_from((d, d, 1, 0, 2))) for d in a]
    b = b[draw(st.integers(0, len(b))) :] if draw(st.booleans()) else b
    if draw(st.booleans()):
        b = [draw(st.sampled_from((1, 3)))] * draw(st.integers(1, 2)) + b
    return tuple(a), tuple(b)


@RULES
@given(
    st.sampled_from(("add", "sub", "mul", "div")),
    broadcast_pair(),
    st.sampled_from((torch.float32,) * 4 + FLOATS + (torch.int64,)),
    st.sampled_from((torch.float32,) * 4 + FLOATS + (torch.int64,)),
    st.booleans(),
)
def test_binary_operators_match_torch(op, shapes_ab, dtype_a, dtype_b, swap):
    a, b = meta(shapes_ab[0], dtype_a), meta(shapes_ab[1], dtype_b)
    a, b = (b, a) if swap else (a, b)
    fn = BINOPS[op]
    expect(compare(fn, shapes.meta_operator(op, fn), a, b), dtype_a == dtype_b and ordinary(a))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("scalar", [2, 0.5, -1, 0, float("inf"), True, 2**62, 10**30, 1j], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_operators_with_a_python_number(op, scalar, dtype):
    fn = BINOPS[op]
    hooked = shapes.meta_operator(op, fn)
    x = meta((2, 3), dtype)
    plain = not isinstance(scalar, (bool, complex)) and abs(scalar) < 2**63
    expect(compare(fn, hooked, x, scalar), plain)
    expect(compare(fn, hooked, scalar, x), plain)


def test_operator_cases():
    fn = BINOPS["add"]
    add = shapes.meta_operator("add", fn)
    assert compare(fn, add, meta((2, 16, 16, 16)), meta((2, 16, 16, 16))) == "covered"  # tower
    assert compare(fn, add, meta((2, 6, 28, 28)), meta((2, 3, 32, 32))) == "torch refuses"
    assert compare(fn, add, meta((2, 0, 3)), meta((1, 3))) == "covered"
    assert compare(fn, add, meta((0,)), meta((2,))) == "torch refuses"
    assert compare(fn, add, meta(()), meta((2, 1, 3))) == "covered"
    matmul = BINOPS["matmul"]
    assert shapes.meta_operator("matmul", matmul) is matmul


# ---- cat -----------------------------------------------------------------------------------


@RULES
@given(
    st.lists(st.lists(st.sampled_from((0, 1, 2, 3)), max_size=3), max_size=3),
    st.integers(-4, 3),
    st.booleans(),
)
def test_cat_matches_torch(shape_list, dim, as_tuple):
    xs = [meta(tuple(s)) for s in shape_list]
    real, hooked = function("cat")
    status = compare(real, hooked, tuple(xs) if as_tuple else xs, dim)
    compare(real, hooked, xs, dim=dim)
    expect(status, bool(xs) and ordinary(*xs))


def test_cat_cases():
    real, hooked = function("cat")
    pair = [meta((2, 256)), meta((2, 512))]
    assert compare(real, hooked, pair, 1) == "covered"  # two_tower
    assert compare(real, hooked, pair, 0) == "torch refuses"
    assert compare(real, hooked, [meta((2, 3)), meta((0,))], 0) == "declined"  # torch skips (0,)
    assert compare(real, hooked, [meta((2, 3)), meta((2, 3), torch.float64)], 0) == "declined"
    assert compare(real, hooked, [meta((2, 3)), meta((2, 3))], 0, out=meta((4, 3))) != "covered"


# ---- GPT-2's calls: attention, positions, token embeddings -----------------------------


def _heads(b: int, h: int, t: int, e: int, transposed: bool = False) -> torch.Tensor:
    """(b, h, t, e), or the same shape split from one projection: (b, t, h, e) transposed."""
    return meta((b, t, h, e)).transpose(1, 2) if transposed else meta((b, h, t, e))


@pytest.mark.parametrize(
    ("q", "k", "v", "kwargs", "status"),
    [
        ((2, 4, 16, 8, True),) * 3 + ({"is_causal": True}, "covered"),
        ((2, 4, 16, 8), (2, 4, 10, 8), (2, 4, 10, 6), {}, "covered"),
        ((2, 4, 16, 8), (2, 4, 10, 8), (2, 4, 10, 6), {"dropout_p": 0.1, "scale": 0.5}, "covered"),
        ((2, 4, 16, 8), (2, 4, 10, 8), (2, 4, 9, 6), {}, "torch refuses"),
        ((2, 4, 16, 8), (2, 4, 10, 7), (2, 4, 10, 6), {}, "torch refuses"),
        ((2, 4, 16, 8), (2, 2, 16, 8), (2, 2, 16, 8), {"enable_gqa": True}, "declined"),
        ((2, 4, 16, 8), (2, 4, 16, 8), (2, 4, 16, 8), {"is_causal": 1}, "torch refuses"),
    ],
)
def test_attention_matches_torch(q, k, v, kwargs, status):
    real, hooked = function("scaled_dot_product_attention")
    assert compare(real, hooked, _heads(*q), _heads(*k), _heads(*v), **kwargs) == status


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((16,), {}), ((2, 17, 3), {}), ((5, 5), {}), ((9, 0, -2), {}), ((4.0,), {}),
     ((4,), {"dtype": torch.float32}), ((5, 1), {})],
)  # fmt: skip
def test_arange_matches_torch(args, kwargs):
    hooked = shapes.meta_function("torch.arange", torch.arange)
    try:
        want = torch.arange(*args, device="meta", **kwargs)
    except RuntimeError:  # a range in the wrong direction: torch's own error
        with pytest.raises(RuntimeError):
            hooked(*args, device="meta", **kwargs)
        return
    got = hooked(*args, device="meta", **kwargs)
    assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device)


def test_embedding_of_indices_matches_torch():
    emb = layer(nn.Embedding, 100, 8)
    tokens = meta((2, 16), torch.int64)
    for idx in (tokens, tokens.t(), meta((3,), torch.int64)):
        got, want = shapes.meta_forward(emb)(idx), emb(idx)
        assert (got.shape, got.dtype, got.stride()) == (want.shape, want.dtype, want.stride())
    with pytest.raises(RuntimeError):  # float indices: torch's own error
        shapes.meta_forward(emb)(meta((2, 16)))


# ---- what rules never see ------------------------------------------------------------------


def test_unusual_tensors_run_the_real_op():
    """Rules see only contiguous floating-point meta tensors: the rest goes to torch."""
    with torch.device("meta"):
        fc = nn.Linear(4, 3)
    for x in (
        meta((4, 2)).t(),  # not contiguous
        meta((2, 4), torch.int64),
        torch.zeros(2, 4),  # a real tensor (a plugin's fallback)
        meta((2, 4)).to(memory_format=torch.contiguous_format)[:, None, :].expand(2, 3, 4),
    ):
        assert compare(fc, shapes.meta_forward(fc), x) != "covered"
    assert compare(*function("relu"), 3.0, meta((2, 4))) == "torch refuses"  # rule can't read
    assert compare(*function("softmax"), dim=1, input=meta((2, 4))) == "covered"
    relu = layer(nn.ReLU, inplace=True)
    x = meta((2, 4))
    assert shapes.meta_forward(relu)(x) is x  # in place: torch's own result


def test_contiguous_inputs_with_odd_strides_give_torch_strides():
    x = meta((2, 1, 8)).transpose(0, 1)  # contiguous, strides (8, 8, 1) where 16 would do
    assert x.is_contiguous() and x.stride() != meta((1, 2, 8)).stride()
    fc, relu = layer(nn.Linear, 8, 4), function("relu")
    assert compare(fc, shapes.meta_forward(fc), x) == "covered"
    assert compare(*relu, x) == "covered"
    add = BINOPS["add"]
    assert compare(add, shapes.meta_operator("add", add), x, x) == "covered"


def test_layers_without_rules_are_left_alone():
    for module in (nn.Identity(), nn.Flatten(), layer(nn.PReLU), layer(nn.LSTM, 4, 4)):
        assert shapes.meta_forward(module) is module
    fn = function_by_qualname("torch.flatten")
    assert shapes.meta_function("torch.flatten", fn) is fn


def test_switch_turns_every_rule_off(monkeypatch):
    monkeypatch.setattr(shapes, "SHAPE_RULES", False)
    fc = layer(nn.Linear, 4, 3)
    assert shapes.meta_forward(fc) is fc
    relu = function_by_qualname("torch.nn.functional.relu")
    assert shapes.meta_function("torch.nn.functional.relu", relu) is relu
    assert shapes.meta_operator("add", BINOPS["add"]) is BINOPS["add"]


# ---- real specs ----------------------------------------------------------------------------


REAL_SPECS = ["cifar_net", "tower", "digits", "mnist_convnet", "two_tower", "gpt2"]


@pytest.fixture(scope="module")
def fresh_checks() -> Iterator[dict[str, subprocess.Popen]]:
    """`specc.check` of each real spec in a fresh interpreter of its own, all started at
    once: mostly cold imports, which would leave a second core idle one at a time."""
    procs = {}
    for spec in REAL_SPECS:
        code = (
            "import sys, specc; specc.check({!r}); "
            "print([m for m in ('sympy', 'torch._dynamo') if m in sys.modules])"
        ).format(str(SPECS / f"{spec}.spec"))
        procs[spec] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)  # fmt: skip
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("spec", REAL_SPECS)
def test_checking_real_specs_imports_no_sympy_or_dynamo(spec, fresh_checks):
    proc = fresh_checks[spec]
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "[]"


ALL_SPECS = sorted(SPECS.rglob("*.spec")) + sorted((CASES / "errors").glob("*.spec"))


def _check_output(spec, capsys) -> tuple[Any, ...]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["check", spec.name])
    out, err = capsys.readouterr()
    return code, out, err, [str(w.message) for w in caught]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_check_prints_the_same_with_rules_on_and_off(spec, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.chdir(spec.parent)
    on = _check_output(spec, capsys)
    monkeypatch.setattr(shapes, "SHAPE_RULES", False)
    assert _check_output(spec, capsys) == on


def test_functional_forms_exist():
    """Every function a rule names is one a forward may call."""
    for qualname in shapes.FUNCTION_RULES:
        function_by_qualname(qualname)
    assert F.max_pool2d is function_by_qualname("torch.nn.functional.max_pool2d")
