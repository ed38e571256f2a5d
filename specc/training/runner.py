"""Stage 5: the runner. Instantiates a train plan (specc.training.plan) and trains it.

`Trainer` builds the plan's objects, then `fit` runs the loop: one flat pass per epoch
over the batches, with the forward/backward, the optimizer step, the end-of-epoch
evaluation and checkpointing in methods named for what they do. Checkpoints hold
everything needed to resume bit-for-bit on CPU: model, optimizer, scheduler, scaler, RNG
states, and the position in the epoch.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import CheckpointError, DataError, SpecError, SpecTypeError, UsageError
from specc.lang.loader import source_texts
from specc.shapes.report import print_warnings, render_warnings
from specc.training import checkpoint, distributed, kernels, lora
from specc.training.batches import (
    Split,
    batches_per_epoch,
    check_input_shapes,
    check_label_ranges,
    make_splits,
    shard,
)
from specc.training.build import (
    autocast,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    build_trained_model,
    pick_device,
)
from specc.training.config import apply_overrides
from specc.training.data import TEXT_KINDS, save_tokenizer
from specc.training.finetune import apply_train_setup
from specc.training.logs import Progress, RunLog, print_summary
from specc.training.plan import TrainPlan, resolve
from specc.training.sequence import (
    EvalSums,
    TokenLimits,
    check_before_training,
    checked_batches,
    is_sequence,
    split_label,
    split_span,
    units,
)
from specc.values import loc

# ---- evaluation -----------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, loss_fn: nn.Module, plan: TrainPlan,
             device: torch.device, amp, ctx: Any = None,
             limits: TokenLimits | None = None) -> dict[str, float]:  # fmt: skip
    """The mean loss and each metric of `model` on `split` (summed over the workers); for
    a sequence loss per counted token."""
    from specc.training import batches as B

    was_training = model.training
    model.eval()
    sums = EvalSums(plan.metrics, plan.loss.targets)
    if ctx is not None and ctx.enabled:
        split = shard(split, ctx.rank, ctx.world)
    data = plan.data
    batches = B.batches(split, data.eval_batch_size, perm=None, start=0, workers=data.workers,
                        drop_last=False, device=device)  # fmt: skip
    if limits is not None and split.x is None:
        batches = checked_batches(batches, limits, split_label(plan, split.name),
                                  split_span(plan, split.name))  # fmt: skip
    for x, y in batches:
        with amp():
            out = model(x)
            loss = loss_fn(out, y)
        sums.add(out, y, loss)
    model.train(was_training)
    if ctx is not None and ctx.enabled:
        return sums.result(distributed.all_sum(sums.values(), ctx, device))
    return sums.result()


# ---- the run's state ------------------------------------------------------------------


@dataclass
class State:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches consumed in the current epoch
    best: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    conv_kernels: str | None = None  # what `conv_kernels` chose (see kernels); None: torch
    threads: int | None = None  # what `threads` chose; None: torch's count


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Window:
    """What the log line reports since the previous one."""

    start: float = field(default_factory=time.perf_counter)
    units: int = 0  # samples, or tokens for a sequence loss
    loss: float = 0.0


# ---- the trainer ----------------------------------------------------------------------


class Trainer:
    """One run of a train plan: `__init__` builds everything, `run` trains and reports."""

    def __init__(self, program: ir.Program, plan: TrainPlan, *, out_dir: Path, resume: bool,
                 quiet: bool) -> None:  # fmt: skip
        self.program, self.plan = program, plan
        self.out_dir = out_dir
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.ctx = distributed.from_env(plan.strategy)
        self.device = distributed.init(self.ctx, pick_device(plan.device))
        self.quiet = quiet or not self.ctx.is_main  # rank 0 alone prints, logs and saves
        torch.manual_seed(plan.seed)
        random.seed(plan.seed)
        self._build_model()
        self._load_data()
        self._build_optimization()
        self.state = self._resumed() if resume else State()
        self._prepare_loop(resume)

    # ---- set-up -----------------------------------------------------------------------
    def _build_model(self) -> None:
        self.base_model = build_model(self.program, self.plan).to(self.device)
        apply_train_setup(self.plan, self.base_model, quiet=self.quiet)
        self.model = distributed.wrap(self.base_model, self.ctx, self.device)

    def _load_data(self) -> None:
        plan, data = self.plan, self.plan.data
        self.splits = make_splits(data, self.device, plan.seed)
        self.train = self.splits["train"]
        if len(self.train) == 0:
            raise DataError("the training set is empty", loc(data.train.span))
        self.eval_split = self.splits.get("val") or self.splits.get("test")
        n = len(self.train)
        self.per_epoch = batches_per_epoch(n, data.batch_size, data.drop_last, self.ctx.world)
        if self.ctx.enabled and self.per_epoch == 0:
            raise DataError(
                f"{n} training samples are fewer than one global batch "
                f"({data.batch_size} x {self.ctx.world} workers)",
                loc(data.train.span),
            )
        check_input_shapes(self.splits, plan.model.instance, data)
        check_label_ranges(self.splits, plan.model.instance, data)
        # the ids streamed batches are checked against (in-memory splits are, here)
        self.limits = check_before_training(plan, self.splits)

    def _build_optimization(self) -> None:
        plan = self.plan
        # the last accumulation group of an epoch may be short
        steps_per_epoch = max(math.ceil(self.per_epoch / plan.accumulate), 1)
        label_shape = list(self.train.y.shape[1:]) if self.train.y is not None else []
        self.loss_fn = build_loss(self.program, plan, label_shape).to(self.device)
        self.opt = build_optimizer(plan.optimizer, self.base_model)
        self.sched = build_scheduler(plan.scheduler, plan.epochs, self.opt, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=plan.precision == "fp16")
        self.scaling = self.scaler.is_enabled()
        self.amp = autocast(plan.precision, self.device)

    def _resumed(self) -> State:
        if not self.last_path.exists():
            raise CheckpointError(
                f"--resume: no checkpoint at {self.last_path}",
                hint="run without --resume to start fresh",
            )
        ck = checkpoint.load(self.last_path)
        try:
            distributed.load_state_dicts(self.model, self.opt, self.ctx, ck["model"],
                                         ck["optimizer"])  # fmt: skip
            if self.sched is not None and ck.get("scheduler") is not None:
                self.sched.load_state_dict(ck["scheduler"])
            self.scaler.load_state_dict(ck["scaler"])
            _set_rng_state(ck["rng"])
            return State(**ck["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{self.last_path} does not match this spec: {str(exc).splitlines()[0][:300]}"
            ) from None

    def _prepare_loop(self, resume: bool) -> None:
        plan, state = self.plan, self.state
        total = self.per_epoch * plan.epochs
        if plan.max_steps:
            total = min(total, plan.max_steps * plan.accumulate)
        self.unit = "tokens" if is_sequence(plan.loss.targets) else "samples"
        self.progress = Progress(total, plan.log_every, self.quiet, self.unit)
        if self.ctx.is_main:
            for stale in self.out_dir.glob(".*.tmp"):  # left by a run killed while saving
                stale.unlink(missing_ok=True)
        self.log = RunLog(self.out_dir, self.ctx.is_main)
        if self.ctx.is_main and plan.data.train.kind in TEXT_KINDS:
            save_tokenizer(plan.data.train, self.out_dir)  # for fine-tunes and sampling
        self.stop_signal: int | None = None
        self.old_handler = (signal.signal(signal.SIGINT, self._on_sigint)
                            if _main_thread() else None)  # fmt: skip
        self.model.train()
        self.step_model = self._compiled()
        if not resume:  # a resumed run keeps the kernels its checkpoint recorded
            cpu = self.device.type == "cpu"
            state.conv_kernels, state.threads = plan.kernels.for_run(cpu, self.ctx.enabled)
        kernels.use(state.conv_kernels, state.threads)
        self.t_start = time.perf_counter()
        self.seen = 0
        self.batch_no = state.epoch * self.per_epoch + state.batch
        self.test_eval: tuple[int, dict[str, float]] | None = None  # (at step, metrics)
        self.interrupted = False

    def _compiled(self) -> Any:
        if not self.plan.compile:
            return self.model
        if self.train.x is None:
            self.progress.message(
                "warning: compile = True needs the in-memory fast path; eager mode"
            )
            return self.model
        try:
            compiled = torch.compile(self.model)
            with torch.no_grad():
                compiled.eval()
                compiled(self.train.x[:2])
                compiled.train()
            return compiled
        except Exception as exc:  # any backend failure: fall back rather than lose the run
            self.progress.message(
                f"warning: torch.compile failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}); training in eager mode"
            )
            return self.model

    def _on_sigint(self, signum, frame) -> None:  # stop at the next step boundary, then save
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.progress.message(
            "interrupt: finishing this step and saving a checkpoint (press Ctrl-C again to abort)"
        )

    # ---- the loop ---------------------------------------------------------------------
    def fit(self) -> None:
        """Train to the end of the plan, or to max_steps, early stopping or Ctrl-C."""
        plan, state = self.plan, self.state
        while state.epoch < plan.epochs:
            epoch = state.epoch + 1
            self.window = _Window()
            for x, y in self.epoch_batches(epoch):
                loss = self.forward_backward(x, y, epoch)
                if loss is None:  # non-finite and skipped (on_nan = "skip")
                    continue
                # the last batch of an accumulation group (or of the epoch): step
                if state.batch % plan.accumulate == 0 or state.batch == self.per_epoch:
                    self.optimizer_step(epoch)
                if self.progress.due(self.batch_no):
                    self.progress.step(self.batch_no, epoch, loss, self.lr(), self.throughput())
                if self.should_stop():
                    break
            else:
                if self.end_epoch():  # True: early stop
                    break
                continue
            if self.interrupted:  # resuming finishes the epoch
                self.save(self.last_path)
            elif state.batch == self.per_epoch:  # max_steps on the epoch's last batch
                self.end_epoch()
            else:  # max_steps, in the middle of an epoch
                self.end_early(epoch)
                self.save(self.last_path)
            break

    def epoch_batches(self, epoch: int):
        """This epoch's batches from where the run stands, in its seeded order."""
        from specc.training import batches as B

        data = self.plan.data
        gen = torch.Generator().manual_seed(self.plan.seed * 1000003 + epoch)
        perm = torch.randperm(len(self.train), generator=gen) if data.shuffle else None
        batches = B.batches(self.train, data.batch_size, perm=perm, start=self.state.batch,
                            workers=data.workers, drop_last=data.drop_last, device=self.device,
                            augment=True, rank=self.ctx.rank, world=self.ctx.world,
                            generator=gen)  # fmt: skip
        if self.limits is not None and self.train.x is None:
            return checked_batches(batches, self.limits, split_label(self.plan, "train"),
                                   data.train.span)  # fmt: skip
        return batches

    def forward_backward(self, x: Any, y: torch.Tensor, epoch: int) -> float | None:
        """The loss of one batch and its gradients; None when it was not finite and the
        plan skips such batches."""
        state, plan = self.state, self.plan
        with self.amp():
            out = self.step_model(x)
            loss = self.loss_fn(out, y)
        value = loss.item()
        state.batch += 1
        self.batch_no += 1
        if not math.isfinite(value):
            self.non_finite(value, epoch)
            return None
        # Dividing by 1 and scaling by a disabled scaler would each add an op (and its
        # backward) to every step without changing a bit.
        if plan.accumulate != 1:
            loss = loss / plan.accumulate
        (self.scaler.scale(loss) if self.scaling else loss).backward()
        done = units(y, plan.loss.targets)  # tokens for a sequence loss, else samples
        self.seen += done
        self.window.units += done
        self.window.loss += value
        return value

    def non_finite(self, value: float, epoch: int) -> None:
        state = self.state
        if self.plan.on_nan == "skip":
            self.opt.zero_grad(set_to_none=True)
            self.progress.message(f"warning: non-finite loss at step {state.step}; skipped")
            return
        where = f"loss became {value} at step {state.step + 1} (epoch {epoch}); training stopped"
        raise SpecTypeError(
            f"{where}. The last good checkpoint is {self.last_path}"
            if self.last_path.exists()
            else f"{where} before any checkpoint was written",
            hint='lower the learning rate, add clip_grad_norm, or set on_nan = "skip"',
        )

    def optimizer_step(self, epoch: int) -> None:
        plan, state = self.plan, self.state
        if plan.clip_grad_norm:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), plan.clip_grad_norm)
        if self.scaling:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        state.step += 1
        if self.sched is not None and plan.scheduler.interval == "step":
            self.sched.step()
        if state.step % plan.log_every == 0:
            self.log_window(epoch)
        if plan.checkpoint_every and state.step % plan.checkpoint_every == 0:
            self.save(self.last_path)

    def log_window(self, epoch: int) -> None:
        now, w = time.perf_counter(), self.window
        self.log.write({
            "step": self.state.step,
            "epoch": epoch,
            "loss": w.loss / max(self.plan.log_every * self.plan.accumulate, 1),
            "lr": self.lr(),
            f"{self.unit}_per_s": w.units / max(now - w.start, 1e-9),
        })  # fmt: skip
        self.window = _Window(start=now)

    def should_stop(self) -> bool:
        stopping = self.stop_signal is not None
        if self.ctx.enabled:  # every worker must stop at the same step
            stopping = distributed.all_sum([float(stopping)], self.ctx, self.device)[0] > 0
        self.interrupted = stopping
        return stopping or bool(self.plan.max_steps and self.state.step >= self.plan.max_steps)

    def end_epoch(self) -> bool:
        """Step an epoch scheduler, evaluate, checkpoint; True when early stopping."""
        plan, state = self.plan, self.state
        state.epoch += 1
        state.batch = 0
        if self.sched is not None and plan.scheduler.interval == "epoch":
            self.sched.step()
        record: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
        improved = False
        if self.eval_split is not None:
            improved = self.evaluate_epoch(record)
        state.history.append(record)
        self.log.write(record)
        self.save(self.last_path)
        if improved:
            self.save(self.best_path)
        if plan.early_stop and state.stale_epochs >= plan.early_stop:
            self.progress.message(f"early stop: no improvement in {plan.early_stop} epochs")
            return True
        return False

    def end_early(self, epoch: int) -> None:
        """max_steps ended epoch `epoch` part way: score what it trained on the val (else
        test) set, logged as a partial epoch (at the fraction of epochs done, as HF's
        Trainer logs them), and keep these weights as best.pt while no epoch has ended (so
        `specc sample --ckpt best.pt` finds a file). The best score and early stopping's
        count are left alone: a resumed run decides as an uninterrupted one does."""
        if self.eval_split is None:
            return
        done = round(epoch - 1 + self.state.batch / self.per_epoch, 4)
        record: dict[str, Any] = {"epoch": done, "step": self.state.step, "partial": True}
        ev = self.scores(record)
        self.log.write(record)
        self.progress.message(f"step {self.state.step} (max_steps, in epoch {epoch}): "
                              + _scores_text(self.eval_split.name, ev))  # fmt: skip
        if self.state.best is None:
            self.save(self.best_path)

    def scores(self, record: dict[str, Any]) -> dict[str, float]:
        """The model's metrics on the val (else test) set, also written into `record`."""
        plan, state, split = self.plan, self.state, self.eval_split
        ev = evaluate(self.model, split, self.loss_fn, plan, self.device, self.amp, self.ctx,
                      self.limits)  # fmt: skip
        if split.name == "test":
            self.test_eval = (state.step, ev)
        record.update({f"{split.name}_{k}": v for k, v in ev.items()})
        return ev

    def evaluate_epoch(self, record: dict[str, Any]) -> bool:
        """Evaluate on the val (else test) set into `record`; True when the best metric
        improved (higher is better for the accuracies, lower for the others)."""
        plan, state = self.plan, self.state
        ev = self.scores(record)
        value = ev[plan.best_metric]
        improved = state.best is None or (
            value > state.best if plan.higher_is_better else value < state.best
        )
        if improved:
            state.best, state.best_epoch, state.stale_epochs = value, state.epoch, 0
        else:
            state.stale_epochs += 1
        self.progress.message(f"epoch {state.epoch}: " + _scores_text(self.eval_split.name, ev))
        return improved

    def save(self, path: Path) -> None:
        model_state, opt_state = distributed.state_dicts(self.model, self.opt, self.ctx)
        if not self.ctx.is_main:
            return
        checkpoint.save(
            {
                "model": model_state,
                "optimizer": opt_state,
                "scheduler": self.sched.state_dict() if self.sched is not None else None,
                "scaler": self.scaler.state_dict(),
                "rng": _rng_state(),
                "state": self.state.__dict__,
                "spec": self.program.sources[0].text,
                "model_name": self.plan.model.call.name,
                **({"lora": lora.settings(self.plan.lora)} if self.plan.lora else {}),
            },
            path,
        )
        if self.plan.lora is not None and path == self.last_path:
            lora.write_adapter(model_state, self.plan.lora, self.out_dir / lora.ADAPTER_FILE,
                               self.program.sources[0].sha256)  # fmt: skip

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def throughput(self) -> float:
        return self.seen / max(time.perf_counter() - self.t_start, 1e-9)

    # ---- the end ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, then the summary (the test set's metrics, on the best weights when a
        val set chose them)."""
        try:
            self.fit()
        except BaseException:
            self._stop_showing()
            distributed.shutdown(self.ctx, failed=True)
            self.log.close()
            raise
        self._stop_showing()
        if self.interrupted:
            self.log.close()
            self._shutdown()
            return self._interrupted()
        summary = self._summary()
        self.log.close()
        self._shutdown()
        if not self.quiet:
            print_summary(summary)
        return summary

    def _shutdown(self) -> None:
        """Leave the process group. What holds it goes first (FSDP2's sharded modules do), so
        that `distributed.shutdown` tears gloo down now rather than at interpreter exit."""
        del self.model, self.step_model, self.base_model, self.opt, self.sched
        distributed.shutdown(self.ctx)

    def _stop_showing(self) -> None:
        self.progress.close()
        if self.old_handler is not None:
            signal.signal(signal.SIGINT, self.old_handler)

    def _interrupted(self) -> dict[str, Any]:
        if not self.ctx.is_main:
            return {"interrupted": True, "step": self.state.step}
        print(
            f"stopped at step {self.state.step}; checkpoint saved to {self.last_path}\n"
            f"resume with: specc run {self.program.sources[0].path} --resume",
            file=sys.stderr,
        )
        return {"interrupted": True, "step": self.state.step, "checkpoint": str(self.last_path)}

    def _summary(self) -> dict[str, Any]:
        state = self.state
        summary: dict[str, Any] = {
            "steps": state.step,
            "epochs": state.epoch,
            "seconds": time.perf_counter() - self.t_start,
            "run_dir": str(self.out_dir),
        }
        if state.conv_kernels is not None:
            summary["conv_kernels"] = state.conv_kernels
        if state.threads is not None:
            summary["threads"] = state.threads
        if "val" in self.splits and state.best is not None:  # what chose best.pt
            summary[f"best_val_{self.plan.best_metric}"] = state.best
            summary["best_epoch"] = state.best_epoch
        if "test" not in self.splits:
            return summary
        if self.best_path.exists() and "val" in self.splits and not self.ctx.enabled:
            self.model.load_state_dict(checkpoint.load(self.best_path)["model"])
        if self.test_eval is not None and self.test_eval[0] == state.step:
            test = self.test_eval[1]  # the model has not changed since the last epoch's test
        else:
            test = evaluate(self.model, self.splits["test"], self.loss_fn, self.plan,
                            self.device, self.amp, self.ctx, self.limits)  # fmt: skip
        summary.update({f"test_{k}": v for k, v in test.items()})
        self.log.write({"final": True, **{f"test_{k}": v for k, v in test.items()}})
        return summary


def _scores_text(split: str, ev: dict[str, float]) -> str:
    return "  ".join(f"{split} {k} {v:.4f}" for k, v in ev.items())


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---- the verbs ------------------------------------------------------------------------


def run(
    program: ir.Program,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    name: str | None = None,
    runs_dir: Path | str = "runs",
    quiet: bool = False,
    train_name: str | None = None,
) -> dict[str, Any]:
    """Train the program's train block; returns the final summary (metrics, paths)."""
    texts = source_texts(program)
    try:
        with kernels.restored():
            program = apply_overrides(program, overrides or [])
            plan = resolve(program, train_name)
            if not quiet and os.environ.get("RANK", "0") == "0":  # once, not per worker
                print_warnings(plan.model.instance, program)
                print_lora(plan, program)
            out_dir = Path(runs_dir) / (name or Path(program.sources[0].path).stem)
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create the run folder {out_dir}: {exc.strerror}",
                                 hint="choose another place with --runs-dir") from None  # fmt: skip
            return Trainer(program, plan, out_dir=out_dir, resume=resume, quiet=quiet).run()
    except SpecError as err:
        raise err.with_source(texts) from None


def print_lora(plan: TrainPlan, program: ir.Program, *, summary: bool = True) -> None:
    """The warnings of the `lora` targets and the adapters' summary line, on stderr."""
    if plan.lora is None:
        return
    if plan.lora.warnings:
        texts = source_texts(program)
        print(render_warnings(list(plan.lora.warnings), texts) + "\n", file=sys.stderr)
    if summary:
        print(plan.lora.summary(), file=sys.stderr)


def evaluate_checkpoint(
    program: ir.Program, ckpt: Path, overrides: list[str] | None = None, quiet: bool = False
) -> dict[str, float]:
    """`specc eval`: load a checkpoint into the spec's model and evaluate on test data."""
    texts = source_texts(program)
    try:
        program = apply_overrides(program, overrides or [])
        plan = resolve(program)
        device = pick_device(plan.device)
        model = build_trained_model(program, plan).to(device)
        state = checkpoint.load_into(model, ckpt, plan.model.call.name)
        splits = make_splits(plan.data, device, plan.seed)
        split = splits.get("test") or splits.get("val")
        if split is None:
            raise UsageError("the data block has no `test` set to evaluate on")
        check_input_shapes({split.name: split}, plan.model.instance, plan.data)
        limits = check_before_training(plan, {split.name: split})
        label_shape = list(split.y.shape[1:]) if split.y is not None else []
        loss_fn = build_loss(program, plan, label_shape).to(device)
        with kernels.restored():  # the kernels the run trained with
            recorded = state.get("state") or {}
            kernels.use(recorded.get("conv_kernels"), recorded.get("threads"))
            result = evaluate(model, split, loss_fn, plan, device,
                              autocast(plan.precision, device), limits=limits)  # fmt: skip
    except SpecError as err:
        raise err.with_source(texts) from None
    if not quiet:
        print("  ".join(f"{split.name}_{k} {v:.4f}" for k, v in result.items()))
    return result
