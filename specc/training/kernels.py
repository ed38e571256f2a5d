"""Kernel choices the runner makes for speed. None changes the algorithm, only which of
torch's own implementations runs it and on how many threads, so results differ from
torch's defaults in the last bits of rounding at most:

- optimizers: torch's fused SGD/Adam/AdamW step (one kernel for every tensor instead of a
  handful of ops per tensor), unless the spec picks an implementation (`fused=False`,
  `foreach=True`);
- convolutions on CPU (`conv_kernels = "auto"`): torch's native kernels instead of oneDNN
  when every convolution is small, by a rule on shapes (no timing, so every run of a spec
  chooses alike);
- CPU threads (`threads = "auto"`): one intra-op thread when every op of the step is too
  small for a second to pay, by a rule on the same forward pass.

`conv_kernels = "torch"`, `threads = "torch"` and `fused=False` give torch's defaults
exactly. Checkpoints record the convolution and thread choices and a resumed run reuses them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

NATIVE = "native"

# torch.optim classes with a fused implementation; options that mean the spec chose one.
_FUSED = {"SGD", "Adam", "AdamW"}
_CHOSEN_BY_SPEC = {"foreach", "fused", "differentiable", "capturable"}


def fused_candidate(ctor: Any, group_options: list[dict[str, Any]], model: nn.Module) -> bool:
    """Whether torch's fused step is the runner's choice for this optimizer once its
    parameters are plain tensors on the CPU (see `fused_applies`): torch's SGD, Adam and
    AdamW whose implementation the spec did not choose (`fused=`, `foreach=`, ...), with no
    sparse gradients (the fused kernels take none) and floating-point parameters. On a
    small model the optimizer step is mostly per-tensor overhead: the fused step took 114
    against 160 us for the CIFAR tutorial net's SGD, 349 against 725 us for the digits
    net's AdamW. (On CUDA torch picks foreach itself; fused there is unmeasured here.)"""
    if ctor.origin != "torch" or ctor.name not in _FUSED:
        return False
    for options in (ctor.kwargs, *group_options):  # the spec's arguments, then `group` options
        if _CHOSEN_BY_SPEC & set(options):
            return False
    if any(getattr(m, "sparse", False) for m in model.modules()
           if isinstance(m, (nn.Embedding, nn.EmbeddingBag))):  # fmt: skip
        return False
    return all(p.is_floating_point() for p in model.parameters())


def fused_applies(params: list[torch.Tensor]) -> bool:
    """The parameters are plain tensors on the CPU: DTensor shards (FSDP) and other
    subclasses, and other devices, leave the choice to torch."""
    return all(type(p) is nn.Parameter and p.device.type == "cpu" for p in params)


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def has_conv(model: nn.Module) -> bool:
    return bool(_convs(model))


@dataclass(frozen=True)
class Probe:
    """Sizes seen in one forward pass at the training batch size."""

    conv_unfolds: list[int] | None  # per Conv2d call; None: another kind of convolution
    max_flops: int  # the largest product of matrices, convolution or attention, in FLOPs
    max_numel: int  # the largest tensor any other op read or wrote
    max_param: int  # the largest parameter: the optimizer's step works through each


_aten = torch.ops.aten


def _flops(packet: Any, args: tuple, out: Any) -> int | None:
    """FLOPs of the ops whose work grows faster than their tensors (products of matrices,
    convolutions, attention); None for the rest, whose work is about their tensors' size.
    (torch.utils.flop_counter has these formulas too, but importing it loads triton and
    its LLVM, whose teardown aborted torchrun workers at exit.)"""
    if packet is _aten.convolution:
        x, w, transposed = args[0], args[1], args[6]
        return 2 * (x if transposed else out).numel() * math.prod(w.shape[1:])
    if packet in (_aten.mm, _aten.bmm):  # (.., M, K) @ (.., K, N)
        return 2 * args[0].numel() * args[1].shape[-1]
    if packet in (_aten.addmm, _aten.baddbmm):
        return 2 * args[1].numel() * args[2].shape[-1]
    if "scaled_dot_product" in packet.__name__:  # q, k, v first: QK^T and its product with V
        return 4 * args[0].numel() * args[1].shape[-2]
    return None


class _Settled(Exception):
    """Raised mid-forward once the sizes seen decide every rule asked for."""


class _OpSizes(TorchDispatchMode):
    """Records the sizes the rules read. The rules only compare maxima against bounds, so
    once every asked-for rule's bound is passed the rest of the forward cannot change the
    choice: `_Settled` then stops it (a GPT's first residual add already settles both)."""

    def __init__(self, conv: bool, threads: bool) -> None:
        super().__init__()
        self.conv, self.threads = conv, threads
        self.unfolds: list[int] = []
        self.max_flops = 0
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        flops = _flops(packet, args, out)
        if flops is not None:
            self.max_flops = max(self.max_flops, flops)
        elif not func.is_view:  # a view (a weight's transpose) moves no data
            for t in tree_leaves((args, kwargs, out)):
                if isinstance(t, torch.Tensor):
                    self.max_numel = max(self.max_numel, t.numel())
        if packet is _aten.convolution and args[1].dim() == 4:
            # im2col of a 2-d convolution: batch x in-channels/groups x kernel area x outputs
            self.unfolds.append(
                out.shape[0] * math.prod(args[1].shape[1:]) * math.prod(out.shape[-2:])
            )
        if self._settled():
            raise _Settled
        return out

    def _settled(self) -> bool:
        threads = not self.threads or (
            self.max_flops > ONE_THREAD_MAX_FLOPS or self.max_numel > GRAIN_SIZE
        )
        conv = not self.conv or max(self.unfolds, default=0) > NATIVE_MAX_UNFOLD
        return threads and conv


def probe(model: nn.Module, *inputs: Any, conv: bool = True, threads: bool = True) -> Probe:
    """Run the model once on `inputs` (no grad, eval mode, so nothing is updated and no random
    number drawn) and record the sizes the rules below read: those of `choose_conv` and of
    `choose_threads`, or of one of them (the forward stops once they are decided)."""
    sizes = _OpSizes(conv, threads)
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), sizes:
            try:
                model(*inputs)
            except _Settled:
                pass
    finally:
        model.train(training)
    conv2d_only = all(type(m) is nn.Conv2d for m in _convs(model))
    max_param = max((t.numel() for t in model.parameters()), default=0)
    return Probe(
        sizes.unfolds if conv2d_only else None, sizes.max_flops, sizes.max_numel, max_param
    )


def probe_meta(
    model: nn.Module, instance: Any, batch: int, conv: bool = True, threads: bool = True
) -> Probe | None:
    """`probe` on the meta device: `model` built on meta, inputs of the declared shapes at
    the training batch size. Sizes are what the rules read, and meta tensors have them
    without memory or arithmetic. None when the model does not run so."""
    inputs = [torch.empty(batch, *t.shape, dtype=getattr(torch, t.dtype), device="meta")
              for _, t in instance.inputs]  # fmt: skip
    try:
        return probe(model, *inputs, conv=conv, threads=threads)
    except Exception:  # the training loop reports the model's own errors
        return None


# A convolution whose unfolded input (im2col: batch x in-channels/groups x kernel area x
# output positions) has at most this many elements runs faster with torch's native kernels
# than with oneDNN, whose fixed cost per call (format reorders) dominates at that size.
# Measured on a 2-core EPYC, forward + backward + step: CIFAR tutorial net 0.80x at batch
# 4 (largest unfold 235k), 1.4-1.9x slower at batch 8 (470k); MNIST convnet 0.84-0.96x at
# batch 4 (139k); digits net 0.94-0.99x at batch 8 (148k), 1.4-2.5x slower at batch 16
# (296k). torch's own choice already prefers native for some inputs under 20,480 elements.
NATIVE_MAX_UNFOLD = 256 * 1024


def choose_conv(p: Probe) -> str | None:
    """NATIVE when every convolution is a small Conv2d (see NATIVE_MAX_UNFOLD), None
    (torch's own choice) otherwise."""
    if not p.conv_unfolds or max(p.conv_unfolds) > NATIVE_MAX_UNFOLD:
        return None
    return NATIVE


# torch splits an elementwise op across threads only above this many elements
# (at::internal::GRAIN_SIZE); below it, only convolutions and matrix products use a second
# thread, and their work decides whether it pays.
GRAIN_SIZE = 32768
# The largest forward op, in FLOPs, up to which one intra-op thread is the choice. Measured
# on a 2-core EPYC with `python -m benchmarks.thread_rule` (forward + backward + step on
# the runner's kernels, 4 processes per variant taking turns): one thread's step time
# against two, with the other core idle / while the host shares the two cores: CIFAR
# tutorial net batch 2 (largest op 1.4 MFLOP) 0.99x (1 process per variant) / 0.57x,
# batch 4 (2.8) 1.02x / 0.59x, batch 6 (4.2) 1.17x; MNIST convnet batch 1 (4.5) 1.07x /
# 0.60x; digits net batch 4 (9.4) 1.14x / 0.67x. The bound lies between the last op size
# where one thread costs at most a few percent and the first where it costs over 5%.
ONE_THREAD_MAX_FLOPS = 3_500_000
_THREAD_VARS = {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}  # a count the user set


def choose_threads(p: Probe) -> int | None:
    """1 when every op is too small for a second thread to pay (see ONE_THREAD_MAX_FLOPS),
    None (torch's thread count) otherwise, or when the user set a thread count."""
    if torch.get_num_threads() == 1 or _THREAD_VARS & set(os.environ):
        return None
    # A parameter update costs a few FLOPs per element, like a forward op of that size.
    if max(p.max_flops, 2 * p.max_param) > ONE_THREAD_MAX_FLOPS or p.max_numel > GRAIN_SIZE:
        return None
    return 1


@contextmanager
def restored() -> Iterator[None]:
    """Put back the process-wide settings that `use` changes, however the run ends."""
    saved = torch.backends.mkldnn.enabled, torch.get_num_threads()
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(saved[0])
        if torch.get_num_threads() != saved[1]:
            torch.set_num_threads(saved[1])


def use(conv: str | None, threads: int | None = None) -> None:
    """Apply recorded choices (None: leave torch's setting). Callers wrap the run in
    `restored`. torch.backends.mkldnn.flags() would also reset oneDNN's TF32 and
    deterministic settings (and warn about TF32); only the enabled flag is ours."""
    if conv == NATIVE:
        torch._C._set_mkldnn_enabled(False)
    if threads is not None:
        torch.set_num_threads(threads)
