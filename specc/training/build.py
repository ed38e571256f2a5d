"""The train plan's objects: device, model, loss, optimizer and scheduler. The plan has
checked every name and argument; what torch still refuses here (a value out of range) is
reported at the constructor's place in the spec."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import SpecTypeError, UsageError
from specc.training import kernels
from specc.training.plan import Ctor, OptimizerPlan, SchedulerPlan, TrainPlan, spec_loss_instance
from specc.training.sequence import per_token
from specc.values import loc


def pick_device(name: str) -> torch.device:
    """`auto`: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError('device = "cuda" but no CUDA GPU is available here')
    return dev


def autocast(precision: str, device: torch.device):
    """A context factory for the forward pass: autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def construct(ctor: Ctor, *lead: Any, **extra: Any) -> Any:
    """`ctor.cls(*lead, *args, **kwargs, **extra)`, torch's refusal located at the spec."""
    try:
        return ctor.cls(*lead, *ctor.args, **(ctor.kwargs | extra))
    except (TypeError, ValueError) as exc:
        raise SpecTypeError(
            f"{ctor.name}(...) is invalid: {str(exc).splitlines()[0]}", loc(ctor.span)
        ) from None


def build_model(program: ir.Program, plan: TrainPlan) -> nn.Module:
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins

    return build_module(plan.model.instance, load_plugins(program))


def build_trained_model(program: ir.Program, plan: TrainPlan) -> nn.Module:
    """The model a run's checkpoint fits: the spec's model with the LoRA adapters of its
    train block (their weights come from the checkpoint)."""
    model = build_model(program, plan)
    if plan.lora is not None:
        from specc.training.lora import add_adapters

        add_adapters(model, plan.lora)
    return model


def build_loss(program: ir.Program, plan: TrainPlan, label_shape: list[int]) -> nn.Module:
    """The loss; one written as a spec model is checked against the labels' shape. A class
    loss on a [B, T, V] output is scored per token (specc.training.sequence)."""
    if plan.loss.ctor.origin != "spec":
        return per_token(construct(plan.loss.ctor), plan.loss.targets)
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins

    return build_module(spec_loss_instance(program, plan, label_shape), load_plugins(program))


def param_groups(plan: OptimizerPlan, model: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one per `group`, then the other trainable ones."""
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in g.params], **g.options} for g in plan.groups]
    if plan.rest:
        groups.append({"params": [params[n] for n in plan.rest]})
    return groups


def build_optimizer(plan: OptimizerPlan, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(plan, model)
    fused = plan.fused_on_cpu and kernels.fused_applies([p for g in groups for p in g["params"]])
    return construct(plan.ctor, groups, **({"fused": True} if fused else {}))


def build_scheduler(plan: SchedulerPlan, epochs: int, opt: torch.optim.Optimizer,
                    steps_per_epoch: int) -> Any:  # fmt: skip
    """The scheduler, after `warmup` linear steps when there are any; None without both."""
    lr = torch.optim.lr_scheduler
    sched = None
    if plan.ctor is not None:
        extra = {"total_steps": steps_per_epoch * epochs} if plan.fill_total_steps else {}
        sched = construct(plan.ctor, opt, **extra)
    if not plan.warmup:
        return sched
    warm = lr.LinearLR(opt, start_factor=1e-3, total_iters=plan.warmup)
    if sched is None:
        return warm
    return lr.SequentialLR(opt, [warm, sched], milestones=[plan.warmup])
