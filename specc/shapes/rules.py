"""Shape rules: the output shape of the common layer, function and operator calls, computed
in Python instead of by torch's meta kernels.

Torch's meta kernels for most layers and operators (addmm, convolution, pooling, batch and
group norm, dropout, pointwise and broadcasting ops) are Python decompositions whose first
call imports sympy and torch._dynamo: about 1 s of every cold check. A shape rule computes
the output shape of the common calls of the layers and functions real specs use. A rule
answers only for a call it fully understands and returns None for anything else (another
rank, channel count or dtype, an odd argument, an in-place call...): the real op then runs,
so torch still decides and reports errors. tests/test_shape_rules.py compares each rule
with torch.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import torch
from torch import nn

SHAPE_RULES = True  # False: every call runs torch's own meta kernel (tests compare the two)

Shape = tuple[int, ...]


def meta_forward(module: Any) -> Any:
    """What runs a torch layer at check time: the module, or its shape rule (`ShapeRule`)."""
    if SHAPE_RULES and type(module) is nn.Embedding:
        return functools.partial(_embedding, module)
    rule = LAYER_RULES.get(type(module)) if SHAPE_RULES else None
    return module if rule is None else ShapeRule(module, functools.partial(rule, module))


def meta_function(qualname: str, fn: Any) -> Any:
    """What runs a function at check time: the function, or its shape rule (`ShapeRule`)."""
    if SHAPE_RULES and qualname == "torch.arange":
        return functools.partial(_arange, fn)
    rule = FUNCTION_RULES.get(qualname) if SHAPE_RULES else None
    return fn if rule is None else ShapeRule(fn, rule, qualname in ANY_STRIDES)


def meta_operator(op: str, fn: Any) -> Any:
    """What runs a binary operator (`x + y`) at check time: `fn`, or its shape rule."""
    return ShapeRule(fn, _elementwise) if SHAPE_RULES and op in OPERATOR_RULES else fn


class ShapeRule:
    """A layer, function or operator on meta by its shape rule, where the rule covers the call.

    The rule takes the call's arguments (its signature mirrors torch's) and returns the output
    shape, or None: not covered. It is asked only when every tensor argument is a contiguous
    floating-point meta tensor of one dtype; the output is a new contiguous tensor of that
    dtype, as torch's is for such inputs.
    """

    def __init__(self, real: Any, rule: Any, any_strides: bool = False) -> None:
        self.real = real
        self.rule = rule
        self.any_strides = any_strides  # torch's output is contiguous whatever the inputs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = [
            t
            for a in (*args, *kwargs.values())
            for t in (a if isinstance(a, (list, tuple)) else (a,))  # cat's list of tensors
            if isinstance(t, torch.Tensor)
        ]
        if tensors and all(_plain(t, tensors[0].dtype, self.any_strides) for t in tensors):
            try:
                shape = self.rule(*args, **kwargs)
            except Exception:  # arguments the rule cannot read (a bad call): torch says why
                shape = None
            if isinstance(shape, torch.Tensor):  # an in-place rule: the input, as torch's
                return shape
            if shape is not None:
                return tensors[0].new_empty(shape)
        return self.real(*args, **kwargs)


def _plain(t: torch.Tensor, dtype: torch.dtype, any_strides: bool = False) -> bool:
    return (
        t.is_meta
        and t.dtype == dtype
        and t.is_floating_point()
        and (any_strides or t.is_contiguous())
    )


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:  # a Python scalar torch takes as is (a huge int overflows)
    return isinstance(v, float) or (_int(v) and -(2**63) <= v < 2**63)


def _ints(v: Any, n: int) -> tuple[int, ...] | None:
    """An int-or-tuple argument (kernel_size, stride...) as n ints, None for anything else."""
    if _int(v):
        return (v,) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(_int(i) for i in v):
        return tuple(v)
    return None


def _same_dtype(m: nn.Module, x: torch.Tensor) -> bool:
    """Do the layer's parameters and buffers have the input's dtype (no mixed-dtype calls)?"""
    tensors = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
    return all(t.dtype == x.dtype for t in tensors if t.is_floating_point())


# -- pointwise: the input's shape --------------------------------------------------------


def _pointwise(input: torch.Tensor, inplace: Any = False) -> Shape | None:
    return tuple(input.shape) if inplace is False else None


def _pointwise_only(input: torch.Tensor) -> Shape:
    return tuple(input.shape)


def _leaky_relu(input: torch.Tensor, negative_slope: Any = 0.01, inplace: Any = False) -> Any:
    return _pointwise(input, inplace) if _number(negative_slope) else None


def _elu(input: torch.Tensor, alpha: Any = 1.0, inplace: Any = False) -> Any:
    return _pointwise(input, inplace) if _number(alpha) else None


def _gelu(input: torch.Tensor, *, approximate: Any = "none") -> Shape | None:
    return tuple(input.shape) if approximate in ("none", "tanh") else None


def _softmax(
    input: torch.Tensor, dim: Any = None, _stacklevel: Any = 3, dtype: Any = None
) -> Shape | None:
    """softmax/log_softmax along a given dim (no dim: torch warns and picks one)."""
    n = max(input.dim(), 1)
    ok = _int(dim) and -n <= dim < n and dtype is None
    return tuple(input.shape) if ok else None


def _dropout(input: torch.Tensor, p: Any = 0.5, training: Any = True, inplace: Any = False) -> Any:
    """Training-mode dropout; p == 0, eval mode and empty inputs return the input itself."""
    ok = _number(p) and 0 < p <= 1 and training is True and inplace is False
    return tuple(input.shape) if ok and input.numel() > 0 else None


def _dropout_layer(m: Any, x: torch.Tensor, ranks: tuple[int, ...] | None = None) -> Any:
    # Dropout1d/2d/3d check (or warn about) the rank themselves: only their own ranks here.
    ok = ranks is None or x.dim() in ranks
    return _dropout(x, m.p, m.training, m.inplace) if ok else None


def _activation(
    m: nn.Module, x: torch.Tensor, numbers: tuple[str, ...] = ()
) -> Shape | torch.Tensor | None:
    """An elementwise activation keeps the shape; in place, it returns its input itself
    (torch's in-place decompositions on meta are slow the first time: 5 s for ReLU6)."""
    if not all(_number(getattr(m, a)) for a in numbers):
        return None
    return x if getattr(m, "inplace", False) else tuple(x.shape)


# -- layers with weights -----------------------------------------------------------------


def _linear(m: nn.Linear, x: torch.Tensor) -> Shape | None:
    ok = x.dim() >= 1 and x.shape[-1] == m.in_features and _same_dtype(m, x)
    return (*x.shape[:-1], m.out_features) if ok else None


def _conv(m: Any, x: torch.Tensor) -> Shape | None:
    """Conv1d/2d/3d, batched or not: per spatial size L, padded by (lo, hi),
    out = (L + lo + hi - dilation * (kernel - 1) - 1) // stride + 1, at least 1."""
    nd = len(m.kernel_size)
    if x.dim() not in (nd + 1, nd + 2) or 0 in x.shape or x.shape[-nd - 1] != m.in_channels:
        return None
    if not _same_dtype(m, x):
        return None
    out = []
    for i, size in enumerate(x.shape[-nd:]):
        k, s, d = m.kernel_size[i], m.stride[i], m.dilation[i]
        if m.padding == "same":  # d * (k - 1) in all, the odd one after
            lo = d * (k - 1) // 2
            hi = d * (k - 1) - lo
        else:
            lo = hi = 0 if m.padding == "valid" else m.padding[i]
        if (m.padding_mode == "reflect" and max(lo, hi) >= size) or (
            m.padding_mode == "circular" and max(lo, hi) > size
        ):
            return None  # F.pad refuses these: torch reports it
        span = size + lo + hi - d * (k - 1)
        if span < 1:
            return None
        out.append((span - 1) // s + 1)
    return (*x.shape[: -nd - 1], m.out_channels, *out)


def _batch_norm(m: Any, x: torch.Tensor, ranks: tuple[int, ...]) -> Shape | None:
    if x.dim() not in ranks or 0 in x.shape or x.shape[1] != m.num_features:
        return None
    # Batch statistics (training, or eval without running stats) need more than one value
    # per channel; eps must be positive (torch takes 0 in eval); momentum=None reads the meta
    # step counter, which fails.
    batch_stats = m.training or m.running_mean is None
    if batch_stats and x.numel() // x.shape[1] < 2:
        return None
    ok = m.momentum is not None and m.eps > 0 and _same_dtype(m, x)
    return tuple(x.shape) if ok else None


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> Shape | None:
    n = len(m.normalized_shape)
    ok = 1 <= n <= x.dim() and tuple(x.shape[x.dim() - n :]) == tuple(m.normalized_shape)
    return tuple(x.shape) if ok and _same_dtype(m, x) else None


def _group_norm(m: nn.GroupNorm, x: torch.Tensor) -> Shape | None:
    if x.dim() < 2 or 0 in x.shape or x.shape[1] != m.num_channels:
        return None
    # F.group_norm wants more than one value per group (_verify_batch_size).
    per_group = x.shape[0] * x.shape[1] // m.num_groups * math.prod(x.shape[2:])
    return tuple(x.shape) if per_group > 1 and _same_dtype(m, x) else None


# -- pooling -------------------------------------------------------------------------------


def _pool(
    x: torch.Tensor,
    nd: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
    whole_kernel: bool = False,
) -> Shape | None:
    """Max and average pooling, batched or not, by torch's pooling_output_shape: per spatial
    size L, out = (L + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1, rounded down, or
    up where ceil_mode is set and the last window starts inside the input or left padding.
    `whole_kernel`: each input size must hold a kernel, padding aside (avg_pool3d)."""
    if stride is None or (isinstance(stride, (tuple, list)) and not stride):
        stride = kernel_size  # no stride (None, []): the kernel size
    k, s, p, d = (_ints(v, nd) for v in (kernel_size, stride, padding, dilation))
    if None in (k, s, p, d) or not isinstance(ceil_mode, bool):
        return None
    if x.dim() not in (nd + 1, nd + 2) or 0 in x.shape:
        return None
    out = []
    for size, ki, si, pi, di in zip(x.shape[-nd:], k, s, p, d, strict=True):
        # torch allows padding up to half the (dilated, for max_pool1d) kernel: stricter here
        if min(ki, si, di) < 1 or not 0 <= pi <= ki // 2 or (whole_kernel and size < ki):
            return None
        n = (size + 2 * pi - di * (ki - 1) - 1 + (si - 1 if ceil_mode else 0)) // si + 1
        if ceil_mode and (n - 1) * si >= size + pi:
            n -= 1
        if n < 1:
            return None
        out.append(n)
    return (*x.shape[:-nd], *out)


def _max_pool(
    nd: int,
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: Any = False,
    return_indices: Any = False,
) -> Shape | None:
    if return_indices is not False:
        return None
    return _pool(input, nd, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool(
    nd: int,
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: Any = False,
    count_include_pad: Any = True,
    divisor_override: Any = None,
) -> Shape | None:
    if not isinstance(count_include_pad, bool) or not (
        divisor_override is None or (_int(divisor_override) and divisor_override != 0)
    ):
        return None
    return _pool(input, nd, kernel_size, stride, padding, 1, ceil_mode, whole_kernel=nd == 3)


def _avg_pool1d(
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: Any = False,
    count_include_pad: Any = True,
) -> Shape | None:  # avg_pool1d takes no divisor_override
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def _adaptive_pool(nd: int, input: torch.Tensor, output_size: Any) -> Shape | None:
    """Adaptive pooling to output_size: an int, or nd entries where None keeps that input
    size (not in 1d)."""
    if input.dim() not in (nd + 1, nd + 2) or 0 in input.shape:
        return None
    sizes = (output_size,) * nd if _int(output_size) else output_size
    if not isinstance(sizes, (tuple, list)) or len(sizes) != nd:
        return None
    out = []
    for want, size in zip(sizes, input.shape[-nd:], strict=True):
        want = size if want is None and nd > 1 else want
        if not (_int(want) and want >= 1):
            return None
        out.append(want)
    return (*input.shape[:-nd], *out)


def _adaptive_max_pool(
    nd: int, input: torch.Tensor, output_size: Any, return_indices: Any = False
) -> Shape | None:
    return _adaptive_pool(nd, input, output_size) if return_indices is False else None


# -- binary operators --------------------------------------------------------------------


def _elementwise(a: Any, b: Any) -> Shape | None:
    """`x + y`, `x * 0.5`...: tensors broadcast (one dtype, checked by `ShapeRule`); a Python
    int or float keeps the tensor's dtype."""
    shapes = []
    for v in (a, b):
        if isinstance(v, torch.Tensor):
            shapes.append(tuple(v.shape))
        elif not _number(v):
            return None
    out = []
    for dims in itertools.zip_longest(*(reversed(s) for s in shapes), fillvalue=1):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None  # these do not broadcast: torch says so
        out.append(sizes.pop() if sizes else 1)
    return tuple(reversed(out))


def _pool_layers(nd: int) -> dict[type, Any]:
    """Rules for the nd-dimensional pooling layers: their functional calls (AvgPool1d's
    has no divisor_override)."""
    avg = getattr(nn, f"AvgPool{nd}d")
    return {
        getattr(nn, f"MaxPool{nd}d"): lambda m, x: _max_pool(
            nd, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
        ),
        avg: lambda m, x: _avg_pool(
            nd,
            x,
            m.kernel_size,
            m.stride,
            m.padding,
            m.ceil_mode,
            m.count_include_pad,
            getattr(m, "divisor_override", None),
        ),  # fmt: skip
        getattr(nn, f"AdaptiveAvgPool{nd}d"): lambda m, x: _adaptive_pool(nd, x, m.output_size),
        getattr(nn, f"AdaptiveMaxPool{nd}d"): lambda m, x: _adaptive_max_pool(
            nd, x, m.output_size, m.return_indices
        ),
    }


def _attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Any = None,
    dropout_p: Any = 0.0,
    is_causal: Any = False,
    scale: Any = None,
    enable_gqa: Any = False,
) -> Shape | None:
    """scaled_dot_product_attention of 4-D (B, heads, L, E) queries over (B, heads, S, E)
    keys and (B, heads, S, Ev) values, without a mask or GQA: (B, heads, L, Ev). On meta
    torch returns it contiguous even for transposed inputs (q, k, v split from one
    projection), hence `ANY_STRIDES`."""
    if attn_mask is not None or enable_gqa is not False or not isinstance(is_causal, bool):
        return None
    if not (_number(dropout_p) and 0 <= dropout_p <= 1) or not (scale is None or _number(scale)):
        return None
    q, k, v = (tuple(t.shape) for t in (query, key, value))
    if not len(q) == len(k) == len(v) == 4 or 0 in (*q, *k, *v):
        return None
    if q[:2] != k[:2] or k[:3] != v[:3] or q[3] != k[3]:
        return None
    return (*q[:3], v[3])


def _arange(real: Any, *args: Any, dtype: Any = None, device: Any = None, **rest: Any) -> Any:
    """`arange(end)`, `arange(start, end[, step])` of ints on meta: an int64 meta tensor of
    ceil((end - start) / step) items, without torch's reference implementation (whose first
    call imports sympy: about 1 s). Not a `ShapeRule`: it takes no tensor. Anything else
    (floats, a dtype, another device, a wrong direction) goes to torch."""
    on_meta = (
        torch.empty(0).device.type == "meta"
        if device is None
        else (torch.device(device).type == "meta")
    )
    if on_meta and not rest and dtype in (None, torch.int64) and 1 <= len(args) <= 3:
        start, end, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
        if all(_int(v) for v in (start, end, step)) and step and (end - start) * step >= 0:
            return torch.empty(-(-(end - start) // step), dtype=torch.int64, device="meta")
    return real(*args, dtype=dtype, device=device, **rest)


def _embedding(m: nn.Embedding, input: Any) -> Any:
    """Embedding of int64 indices on meta: (*input, embedding_dim) in the weight's dtype,
    without torch's reference implementation (whose first call imports sympy). Not a
    `ShapeRule`: its input is an index tensor, its output takes the weight's dtype."""
    plain = isinstance(input, torch.Tensor) and input.is_meta and input.dtype == torch.int64
    if plain and m.weight.is_meta and m.max_norm is None and input.dim() >= 1:
        return m.weight.new_empty((*input.shape, m.embedding_dim))
    return m(input)


def _cat(tensors: Any, dim: Any = 0, *, out: Any = None) -> Shape | None:
    """cat of same-rank tensors (one dtype) that agree on every dim but `dim`."""
    if out is not None or not isinstance(tensors, (list, tuple)) or not tensors:
        return None
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in tensors]
    n = len(shapes[0] or ())
    if None in shapes or not (_int(dim) and -n <= dim < n):
        return None
    d = dim % n
    rest = {s[:d] + s[d + 1 :] for s in shapes}
    if len(rest) != 1 or any(len(s) != n for s in shapes):
        return None
    return (*shapes[0][:d], sum(s[d] for s in shapes), *shapes[0][d + 1 :])


# Layer class -> rule(module, input). Each mirrors the layer's forward (its functional call
# with the layer's attributes); exact classes only, so a subclass with its own forward runs.
LAYER_RULES: dict[type, Any] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    **_pool_layers(1),
    **_pool_layers(2),
    **_pool_layers(3),
    nn.BatchNorm1d: functools.partial(_batch_norm, ranks=(2, 3)),
    nn.BatchNorm2d: functools.partial(_batch_norm, ranks=(4,)),
    nn.BatchNorm3d: functools.partial(_batch_norm, ranks=(5,)),
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.Dropout: _dropout_layer,
    nn.Dropout1d: functools.partial(_dropout_layer, ranks=(2, 3)),
    nn.Dropout2d: functools.partial(_dropout_layer, ranks=(4,)),
    nn.Dropout3d: functools.partial(_dropout_layer, ranks=(4, 5)),
    nn.ReLU: _activation,
    nn.ReLU6: _activation,
    nn.SiLU: _activation,
    nn.Mish: _activation,
    nn.Hardswish: _activation,
    nn.Tanh: _activation,
    nn.Sigmoid: _activation,
    nn.LeakyReLU: functools.partial(_activation, numbers=("negative_slope",)),
    nn.ELU: functools.partial(_activation, numbers=("alpha",)),
    nn.GELU: lambda m, x: _gelu(x, approximate=m.approximate),
    nn.Softmax: lambda m, x: _softmax(x, m.dim),
    nn.LogSoftmax: lambda m, x: _softmax(x, m.dim),
}

# Function qualname -> rule, called with the function's own arguments.
FUNCTION_RULES: dict[str, Any] = {
    "torch.cat": _cat,
    "torch.nn.functional.scaled_dot_product_attention": _attention,
    **{
        f"torch.nn.functional.{name}": rule
        for rule, names in (
            (_pointwise, ("relu", "relu6", "silu", "mish", "hardswish")),
            (_pointwise_only, ("tanh", "sigmoid")),
            (_leaky_relu, ("leaky_relu",)),
            (_elu, ("elu",)),
            (_gelu, ("gelu",)),
            (_softmax, ("softmax", "log_softmax")),
            (_dropout, ("dropout",)),
            (_avg_pool1d, ("avg_pool1d",)),
            *(
                (functools.partial(make, nd), (f"{kind}{nd}d",))
                for nd in (1, 2, 3)
                for kind, make in (
                    ("max_pool", _max_pool),
                    ("avg_pool", _avg_pool),
                    ("adaptive_avg_pool", _adaptive_pool),
                    ("adaptive_max_pool", _adaptive_max_pool),
                )
                if (kind, nd) != ("avg_pool", 1)
            ),
        )
        for name in names
    },
}

# Functions whose rule also takes inputs of any strides (their output is contiguous anyway).
ANY_STRIDES = frozenset({"torch.nn.functional.scaled_dot_product_attention"})

OPERATOR_RULES = frozenset({"add", "sub", "mul", "div"})
