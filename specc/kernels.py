"""Kernel choices the runner makes for speed. Neither changes the algorithm, only which of
torch's own implementations runs it, so results differ from torch's defaults in the last
bits of rounding at most:

- optimizers: torch's fused SGD/Adam/AdamW step (one kernel for every tensor instead of a
  handful of ops per tensor), unless the spec picks an implementation (`fused=False`,
  `foreach=True`);
- convolutions on CPU (`conv_kernels = "auto"`): torch's native kernels instead of oneDNN
  when every convolution is small, by a rule on shapes (no timing, so every run of a spec
  chooses alike).

`conv_kernels = "torch"` and `fused=False` give torch's defaults exactly. Checkpoints record
the convolution choice and a resumed run reuses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from specc.config import CallSpec

NATIVE = "native"

# torch.optim classes with a fused implementation; options that mean the spec chose one.
_FUSED = {"SGD", "Adam", "AdamW"}
_CHOSEN_BY_SPEC = {"foreach", "fused", "differentiable", "capturable"}


def optimizer_defaults(
    spec: CallSpec, groups: list[dict[str, Any]], model: nn.Module
) -> dict[str, Any]:
    """`fused=True` for torch's SGD, Adam and AdamW when every parameter is a plain float
    tensor on CPU and the spec chose no implementation itself (on CUDA torch picks foreach
    itself; fused there is unmeasured here). On a small model
    the optimizer step is mostly per-tensor overhead: the fused step took 114 against
    160 us for the CIFAR tutorial net's SGD, 349 against 725 us for the digits net's AdamW."""
    if spec.name not in _FUSED:
        return {}
    for options in (spec.kwargs, *groups):  # the spec's arguments, then `group` options
        if _CHOSEN_BY_SPEC & set(options):
            return {}
    if any(getattr(m, "sparse", False) for m in model.modules()
           if isinstance(m, (nn.Embedding, nn.EmbeddingBag))):  # fmt: skip
        return {}  # fused kernels take no sparse gradients
    for g in groups:
        for p in g["params"]:
            # DTensor shards (FSDP) and other subclasses: leave the choice to torch.
            if type(p) is not nn.Parameter or p.device.type != "cpu":
                return {}
            if not p.is_floating_point():
                return {}
    return {"fused": True}


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# A convolution whose unfolded input (im2col: batch x in-channels/groups x kernel area x
# output positions) has at most this many elements runs faster with torch's native kernels
# than with oneDNN, whose fixed cost per call (format reorders) dominates at that size.
# Measured on a 2-core EPYC, forward + backward + step: CIFAR tutorial net 0.80x at batch
# 4 (largest unfold 235k), 1.4-1.9x slower at batch 8 (470k); MNIST convnet 0.84-0.96x at
# batch 4 (139k); digits net 0.94-0.99x at batch 8 (148k), 1.4-2.5x slower at batch 16
# (296k). torch's own choice already prefers native for some inputs under 20,480 elements.
NATIVE_MAX_UNFOLD = 256 * 1024


def conv_unfold_sizes(model: nn.Module, x: Any) -> list[int] | None:
    """The unfolded input size of each Conv2d call in one forward pass on `x` (no grad,
    eval mode, so nothing is updated and no random number drawn); None when the model
    has another kind of convolution, which the measurements above do not cover."""
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if any(type(m) is not nn.Conv2d for m in convs):
        return None
    sizes: list[int] = []

    def record(m: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        batch = out.shape[0] if out.dim() == 4 else 1
        sizes.append(batch * math.prod(m.weight.shape[1:]) * math.prod(out.shape[-2:]))

    hooks = [m.register_forward_hook(record) for m in convs]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return sizes


def choose_conv(model: nn.Module, x: Any) -> str | None:
    """NATIVE when every convolution is small enough (see NATIVE_MAX_UNFOLD), None (torch's
    own choice) otherwise. Shapes only, no timing: two runs of a spec choose alike."""
    sizes = conv_unfold_sizes(model, x)
    if not sizes or max(sizes) > NATIVE_MAX_UNFOLD:
        return None
    return NATIVE


@contextmanager
def restored() -> Iterator[None]:
    """Put back the process-wide flag that `use` sets, however the run ends."""
    saved = torch.backends.mkldnn.enabled
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(saved)


def use(choice: str | None) -> None:
    """Apply a recorded choice (None: leave torch's setting). Callers wrap the run in
    `restored`. torch.backends.mkldnn.flags() would also reset oneDNN's TF32 and
    deterministic settings (and warn about TF32); only the enabled flag is ours."""
    if choice == NATIVE:
        torch._C._set_mkldnn_enabled(False)
