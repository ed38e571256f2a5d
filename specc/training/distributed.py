"""Scaling out on torch.distributed: torchrun launches the workers, DDP or FSDP2 wraps the
model. specc adds no engine of its own: `specc run --nproc-per-node N` hands the command to
``torch.distributed.run`` (torchrun's own code), and each worker finds its rank in the
environment variables torchrun sets.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from specc.errors import UsageError


@dataclass(frozen=True)
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    strategy: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch(run_args: list[str], *, nproc_per_node: int, nnodes: str = "1",
           node_rank: int = 0, rdzv_endpoint: str | None = None,
           master_addr: str | None = None, master_port: int | None = None) -> int:  # fmt: skip
    """Start `python -m specc run <run_args>` on N local workers through torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    if nproc_per_node < 1:
        raise UsageError("--nproc-per-node must be at least 1")
    argv = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}",
            f"--node-rank={node_rank}"]  # fmt: skip
    if rdzv_endpoint:
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    elif nnodes == "1" and master_addr is None and master_port is None:
        argv += ["--standalone"]
    if master_addr:
        argv.append(f"--master-addr={master_addr}")
    if master_port:
        argv.append(f"--master-port={master_port}")
    # One thread per worker unless the user chose: workers on one machine share its cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    args = get_args_parser().parse_args([*argv, "-m", "specc", "run", *run_args])
    try:
        torchrun(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        why = f"exit code {failure.exitcode}"
        if failure.exitcode is not None and failure.exitcode < 0:
            why = f"signal {-failure.exitcode}"
        print(f"error: worker rank {rank} failed ({why}); the whole job was stopped",
              file=sys.stderr)  # fmt: skip
        return code
    return 0


def from_env(strategy: str) -> Dist:
    """The worker's place in the job (world 1 outside torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(strategy="none")
    return Dist(world=world, rank=int(os.environ.get("RANK", "0")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                strategy=strategy if strategy != "auto" else "ddp")  # fmt: skip


def init(ctx: Dist, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each worker takes its local GPU (nccl), else gloo."""
    import torch.distributed as dist

    if not ctx.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model: nn.Module, ctx: Dist, device: torch.device) -> nn.Module:
    if not ctx.enabled:
        return model
    if ctx.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if ctx.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in shard_units(model):
            fully_shard(unit)
        fully_shard(model)  # the root holds what no unit took: tied weights, buffers
        return model
    raise UsageError(f"unknown strategy {ctx.strategy!r}", hint='use "ddp" or "fsdp"')


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one before the root: every child holding parameters,
    each entry of a repeated stack (`ModuleList`/`Sequential`) on its own, as torchtitan
    shards transformer blocks. A child sharing a parameter with a module outside it (a tied
    `lm_head.weight = wte.weight`) is looked into instead, since FSDP needs both users of
    a parameter in one group: its parts that share nothing become units, the tied weight
    stays with the root."""
    users: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(param), []).append(name)

    def inside(path: str, param: nn.Parameter) -> bool:
        return all(n.startswith(path + ".") for n in users[id(param)])

    def units(module: nn.Module, prefix: str) -> list[nn.Module]:
        found = []
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            params = list(child.parameters())
            if not params:
                continue
            stack = isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) > 1
            if stack or not all(inside(path, p) for p in params):
                found += units(child, path + ".")
            else:
                found.append(child)
        return found

    return units(model, "")


def state_dicts(model: nn.Module, opt: torch.optim.Optimizer | None,
                ctx: Dist) -> tuple[dict, dict | None]:  # fmt: skip
    """Full (unsharded, unwrapped) model and optimizer state; a collective when sharded."""
    if not ctx.enabled:
        return model.state_dict(), opt.state_dict() if opt is not None else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if opt is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=options), None
    return get_state_dict(model, opt, options=options)


def load_state_dicts(model: nn.Module, opt: torch.optim.Optimizer, ctx: Dist,
                     model_state: dict, opt_state: dict) -> None:  # fmt: skip
    if not ctx.enabled:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, opt, model_state_dict=model_state, optim_state_dict=opt_state,
                   options=StateDictOptions(full_state_dict=True,
                                            broadcast_from_rank0=False))  # fmt: skip


def all_sum(values: list[float], ctx: Dist, device: torch.device) -> list[float]:
    if not ctx.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(ctx: Dist, *, failed: bool = False) -> None:
    """Leave the process group together, and tear gloo down here rather than at exit.

    gloo has no shutdown: `destroy_process_group` only unregisters the group, and its backend
    (worker threads, the TCP loop thread, the connections to the peers) lives while anything
    holds the group. Under FSDP2 the sharded modules and their DeviceMesh (which DTensor's
    caches keep alive) do, so the backend lived on into process exit, where the peer's exit
    closed the connection while this worker was exiting too (unlike DDP's, freed with the
    model): the likely source of the intermittent abort at teardown. The caller drops the
    model and optimizer first; `_release_groups` does the rest.
    (No collective is pending here: gloo's barrier waits for all earlier work.)"""
    if ctx.enabled:
        import torch.distributed as dist

        if failed:  # peers may be blocked in a collective: exit and let torchrun stop them
            return
        if dist.is_initialized():
            # Leave together: a worker tearing down gloo while its peer is still in a
            # collective can abort the peer ("terminate called without an active exception").
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()
                _release_groups()


def _release_groups() -> None:
    """Drop what still holds the destroyed groups, so that gloo's backend is torn down here.

    The sharded modules (dropped by the caller) sit in reference cycles: collect them. Their
    DeviceMesh outlives them, kept by DTensor's sharding caches, and it holds the group in
    its registry: empty that (the mesh is unusable once its group is destroyed anyway)."""
    import gc

    gc.collect()
    from torch.distributed.device_mesh import DeviceMesh

    for obj in gc.get_objects():
        if isinstance(obj, DeviceMesh) and isinstance(getattr(obj, "_pg_registry", None), dict):
            obj._pg_registry.clear()


def unwrap(model: Any) -> nn.Module:
    return getattr(model, "module", model)
