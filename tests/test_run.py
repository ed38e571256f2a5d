"""`specc run` / `specc eval`: real data in, metrics, checkpoints and clean errors out."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SPECS
from datafiles import write_cifar10

import specc
import specc.training.runner
from specc.cli import main
from specc.errors import CheckpointError, SpecError
from specc.training import checkpoint

DIGITS = SPECS / "digits.spec"


def _run(spec, tmp_path, *overrides, resume=False, name="r"):
    return specc.train(
        spec, list(overrides), runs_dir=tmp_path / "runs", name=name, resume=resume, quiet=True
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[dict, Path]:
    """`specc run specs/digits.spec` as shipped: its summary and run folder (read only)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    return _run(DIGITS, tmp_path), tmp_path / "runs" / "r"


def test_digits_demo_reaches_97_percent(demo):
    summary, run_dir = demo
    assert summary["test_accuracy"] >= 0.97
    assert (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and "step" in r for r in records)
    assert any("test_accuracy" in r and "epoch" in r for r in records)
    ck = checkpoint.load(run_dir / "last.pt")
    assert {"model", "optimizer", "scheduler", "rng", "state", "spec"} <= set(ck)


def test_resume_gives_identical_weights(tmp_path):
    full = _run(DIGITS, tmp_path, "epochs=2", name="full")
    assert full["steps"] == 90
    part = _run(DIGITS, tmp_path, "epochs=2", "max_steps=57", name="part")
    assert part["steps"] == 57  # stopped mid-epoch 2
    _run(DIGITS, tmp_path, "epochs=2", name="part", resume=True)
    a = checkpoint.load(tmp_path / "runs" / "full" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "runs" / "part" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_max_steps_mid_epoch_scores_val_and_keeps_best_until_an_epoch_ends(tmp_path):
    """A run that max_steps stops part way through an epoch scores the val set (logged as
    a partial epoch); its weights are best.pt only while no epoch has ended, and the best
    score is left alone, so resuming ends as an uninterrupted run does."""
    spec = tmp_path / "digits_val.spec"
    spec.write_text(DIGITS.read_text().replace(
        "    test       = Digits(train=False)",
        "    val        = Digits(train=False)\n    test       = Digits(train=False)"))  # fmt: skip
    summary = _run(spec, tmp_path, "epochs=2", "max_steps=20", name="early")  # epoch 1 of 45 steps
    assert "best_epoch" not in summary  # no epoch ended to be best
    early = tmp_path / "runs" / "early"
    (partial,) = [r for r in _records(early) if r.get("partial")]
    assert partial["step"] == 20 and "val_accuracy" in partial
    assert partial["epoch"] == pytest.approx(20 / 45, abs=1e-4)  # where `specc plot` puts it
    assert checkpoint.load(early / "best.pt")["state"]["step"] == 20
    summary = _run(spec, tmp_path, "epochs=2", "max_steps=57", name="later")  # in epoch 2
    later = tmp_path / "runs" / "later"
    (first,) = [r for r in _records(later) if r["split"] == "val" and not r.get("partial")]
    assert summary["best_epoch"] == 1  # the summary names what chose best.pt
    assert summary["best_val_accuracy"] == first["val_accuracy"]
    assert checkpoint.load(later / "best.pt")["state"]["step"] == 45  # the first epoch's
    assert [r["step"] for r in _records(later) if r.get("partial")] == [57]
    # resumed to the end: the weights and the best epoch of a run never stopped
    _run(spec, tmp_path, "epochs=2", name="full")
    _run(spec, tmp_path, "epochs=2", name="early", resume=True)
    full, resumed = (checkpoint.load(tmp_path / "runs" / n / "best.pt") for n in ("full", "early"))
    assert full["state"]["best"] == resumed["state"]["best"]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_set_overrides_reach_optimizer_and_data(tmp_path):
    _run(
        DIGITS, tmp_path, "epochs=1", "optimizer.lr=0.01", "batch_size=64", "scheduler.max_lr=0.01"
    )
    ck = checkpoint.load(tmp_path / "runs" / "r" / "last.pt")
    assert ck["state"]["step"] == 23  # ceil(1437 / 64)
    assert ck["optimizer"]["param_groups"][0]["max_lr"] == 0.01


def test_bad_override_is_a_clean_error(capsys, tmp_path):
    code = main(["run", str(DIGITS), "--set", "epoch=3", "--runs-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown setting `epoch`" in err and "did you mean `epochs`" in err


def test_eval_and_corrupt_checkpoint(tmp_path, capsys, demo):
    shutil.copytree(demo[1], tmp_path / "runs" / "r")  # a copy of the demo's run: no new run
    best = tmp_path / "runs" / "r" / "best.pt"
    assert main(["eval", str(DIGITS), "--ckpt", str(best)]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    last = tmp_path / "runs" / "r" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(last)
    code = main(
        ["run", str(DIGITS), "--resume", "--name", "r", "--runs-dir", str(tmp_path / "runs")]
    )
    assert code == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert checkpoint.load(best)["model"]  # the good checkpoint is still usable


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_hostile_checkpoint_is_refused(in_tmp):
    path = in_tmp / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        checkpoint.load(path)
    assert not (in_tmp / "pwned").exists()


def test_cifar10_tutorial_spec_on_cifar_format_files(in_tmp):
    write_cifar10(in_tmp / "data", n_train=200, n_test=100)
    summary = specc.train(
        SPECS / "cifar10.spec",
        ["cifar.train.verify=False", "cifar.test.verify=False", "epochs=1"],
        runs_dir=in_tmp / "runs",
        quiet=True,
    )
    assert summary["steps"] == 50  # batch 4, as the tutorial
    assert 0.0 <= summary["test_accuracy"] <= 1.0


def test_missing_cifar_is_a_clean_error(in_tmp, capsys):
    assert main(["run", str(SPECS / "cifar10.spec")]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "Traceback" not in err


def test_bf16_precision_runs(tmp_path):
    summary = _run(DIGITS, tmp_path, "epochs=1", 'precision="bf16"')
    assert summary["test_accuracy"] > 0.5


@pytest.mark.slow
def test_compile_true_trains(tmp_path):
    summary = _run(DIGITS, tmp_path, "epochs=1", "compile=True")
    assert summary["test_accuracy"] > 0.5


def test_random_augmentation_keeps_the_fast_path(tmp_path, monkeypatch):
    import specc.training.batches as B

    seen = []
    real = B.batches

    def spy(split, *a, **k):
        seen.append((split.name, split.x is not None, split.augment is not None))
        return real(split, *a, **k)

    monkeypatch.setattr(B, "batches", spy)
    summary = _run(
        DIGITS, tmp_path, "epochs=1", "digits.train_transform=[RandomAffine(degrees=10)]"
    )
    assert ("train", True, True) in seen  # in memory, augmented per batch
    assert ("test", True, False) in seen
    assert summary["test_accuracy"] > 0.5


def test_label_out_of_range_is_reported_before_training(tmp_path, capsys):
    spec = tmp_path / "five.spec"
    spec.write_text(DIGITS.read_text().replace("model     = DigitsNet()",
                                               "model     = DigitsNet(5)"))  # fmt: skip
    assert main(["run", str(spec), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "Digits (train)" in err and "index" in err and "Traceback" not in err


def test_gradient_accumulation_with_onecycle(tmp_path):
    summary = _run(DIGITS, tmp_path, "epochs=2", "accumulate=4")
    assert summary["steps"] == 2 * 12  # ceil(45 batches / 4) optimizer steps per epoch


def _train_small_net(make_opt):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5)
    )
    opt = make_opt(net)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return opt, net.state_dict()


def _optimizer(name: str, kwargs: dict, net: torch.nn.Module) -> torch.optim.Optimizer:
    """The runner's optimizer for `net` from a plan that names `name(**kwargs)`."""
    from specc.training.build import build_optimizer
    from specc.training.kernels import fused_candidate
    from specc.training.plan import Ctor, OptimizerPlan

    ctor = Ctor(name, getattr(torch.optim, name), "torch", (), kwargs)
    names = tuple(n for n, _ in net.named_parameters())
    plan = OptimizerPlan(ctor, (), names, fused_candidate(ctor, [], net))
    return build_optimizer(plan, net)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.01, "momentum": 0.9}),
        ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
        ("SGD", {"lr": 0.01, "momentum": 0.9, "maximize": True}),
        ("Adam", {"lr": 1e-3, "amsgrad": True, "weight_decay": 1e-2}),
        ("AdamW", {"lr": 1e-3, "weight_decay": 0.1}),
    ],
)
def test_cpu_fused_default_is_torchs_algorithm_and_fused_false_is_torchs_default(name, kwargs):
    runner, a = _train_small_net(lambda net: _optimizer(name, kwargs, net))
    assert runner.defaults["fused"] is True
    _, b = _train_small_net(lambda net: getattr(torch.optim, name)(net.parameters(), **kwargs))
    for k in a:  # the same algorithm: rounding differs, nothing else
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    _, c = _train_small_net(lambda net: _optimizer(name, {**kwargs, "fused": False}, net))
    for k in a:  # fused=False in the spec: exactly torch's default step
        assert torch.equal(b[k], c[k]), k


def test_optimizer_implementation_is_left_to_the_spec_and_to_torch():
    net = torch.nn.Linear(3, 2)
    for name, kwargs in [
        ("SGD", {"lr": 0.1, "foreach": False}),
        ("SGD", {"lr": 0.1, "foreach": True}),
        ("Adam", {"lr": 0.1, "fused": False}),
        ("RMSprop", {"lr": 0.1}),  # no fused kernel in torch
    ]:
        opt = _optimizer(name, kwargs, net)
        assert not opt.defaults.get("fused"), (name, kwargs)
        assert opt.defaults["foreach"] == kwargs.get("foreach"), (name, kwargs)
    sparse = torch.nn.Sequential(torch.nn.Embedding(10, 3, sparse=True), torch.nn.Linear(3, 2))
    opt = _optimizer("SGD", {"lr": 0.1}, sparse)
    assert not opt.defaults["fused"]  # torch's fused kernels take no sparse gradients


# ---- convolution kernels ----------------------------------------------------------------


def _mkldnn_enabled() -> bool:
    return torch.backends.mkldnn.enabled


def test_small_convolutions_run_native_kernels_and_the_choice_is_recorded(tmp_path):
    # The choice is made (and recorded) before the first step: a few steps show it.
    small = _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=5", name="b8")
    assert small["conv_kernels"] == "native"  # largest unfold 147,456 elements at batch 8
    ck = checkpoint.load(tmp_path / "runs" / "b8" / "last.pt")
    assert ck["state"]["conv_kernels"] == "native"
    large = _run(DIGITS, tmp_path, "epochs=1", "batch_size=16", "max_steps=5", name="b16")
    assert "conv_kernels" not in large  # 294,912: torch's own choice (oneDNN)
    assert checkpoint.load(tmp_path / "runs" / "b16" / "last.pt")["state"]["conv_kernels"] is None
    assert _mkldnn_enabled()  # the process-wide flag is put back
    loader = _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=5",
                  "digits.in_memory=False", name="loader")  # fmt: skip
    assert loader["conv_kernels"] == "native"  # the DataLoader path probes a collated batch


def test_conv_kernel_choice_draws_no_random_number_and_touches_no_buffer(tmp_path):
    """The shape probe runs the model once: a run that chose native kernels by the rule
    ends with exactly the weights and BatchNorm statistics of one told to use them (20 steps:
    a drawn number would shift every later dropout mask)."""
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=20", name="auto")
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=20", 'conv_kernels="native"',
         name="forced")  # fmt: skip
    a = checkpoint.load(tmp_path / "runs" / "auto" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "runs" / "forced" / "last.pt")["model"]
    assert any("running_mean" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _seen_during_evaluate(monkeypatch, read) -> list:
    """What `read()` returns each time the runner evaluates: the settings in force."""
    seen: list = []
    real = specc.training.runner.evaluate
    monkeypatch.setattr(
        specc.training.runner, "evaluate", lambda *a, **k: seen.append(read()) or real(*a, **k)
    )
    return seen


def test_conv_kernels_torch_keeps_torchs_choice(tmp_path, monkeypatch):
    seen = _seen_during_evaluate(monkeypatch, _mkldnn_enabled)
    # max_steps: stopped mid-epoch, the run evaluates once, at its end
    summary = _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=20",
                   'conv_kernels="torch"')  # fmt: skip
    assert "conv_kernels" not in summary and seen == [True]
    seen.clear()
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=20", name="auto")
    assert seen == [False]  # native kernels: oneDNN off while the run lasts
    assert _mkldnn_enabled()


def test_resume_and_eval_reuse_the_recorded_kernels(tmp_path, capsys):
    # as test_resume_and_eval_keep_the_recorded_thread_count: 40 steps, resumed after 20
    full = _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=40", name="full")
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=20", name="part")
    # Told to use torch's kernels, the resumed run keeps its checkpoint's choice: exactness.
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=8", "max_steps=40", 'conv_kernels="torch"',
         name="part", resume=True)  # fmt: skip
    a = checkpoint.load(tmp_path / "runs" / "full" / "last.pt")
    b = checkpoint.load(tmp_path / "runs" / "part" / "last.pt")
    assert b["state"]["conv_kernels"] == "native"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    result = specc.training.runner.evaluate_checkpoint(
        specc.load(DIGITS), tmp_path / "runs" / "full" / "last.pt", quiet=True
    )
    assert result["loss"] == full["test_loss"]  # evaluated with the kernels it trained with


@pytest.fixture
def two_threads(monkeypatch):
    """torch's two threads and no thread variable set, as on the 2-core machines the thread
    rule was measured on (CI may have one core, or OMP_NUM_THREADS set)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_kernel_settings_are_put_back_when_a_run_fails(tmp_path, monkeypatch, two_threads):
    def fail(*args, **kwargs):
        # failing while native kernels and one thread are in use
        assert not _mkldnn_enabled() and torch.get_num_threads() == 1
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(specc.training.runner, "evaluate", fail)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=5")
    assert _mkldnn_enabled() and torch.get_num_threads() == 2


# ---- CPU threads ------------------------------------------------------------------------


def test_tiny_steps_run_on_one_thread_and_the_choice_is_recorded(
    tmp_path, monkeypatch, two_threads
):
    seen = _seen_during_evaluate(monkeypatch, torch.get_num_threads)
    tiny = _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=20", name="b1")
    assert tiny["threads"] == 1 and set(seen) == {1}  # largest op 2.4 MFLOP
    assert checkpoint.load(tmp_path / "runs" / "b1" / "last.pt")["state"]["threads"] == 1
    assert torch.get_num_threads() == 2  # put back after the run
    seen.clear()
    larger = _run(DIGITS, tmp_path, "epochs=1", "batch_size=2", "max_steps=20", name="b2")
    assert "threads" not in larger and set(seen) == {2}  # 4.7 MFLOP: a second thread pays
    assert checkpoint.load(tmp_path / "runs" / "b2" / "last.pt")["state"]["threads"] is None
    seen.clear()
    kept = _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=20", 'threads="torch"',
                name="torch")  # fmt: skip
    assert "threads" not in kept and set(seen) == {2}
    seen.clear()
    told = _run(DIGITS, tmp_path, "epochs=1", "batch_size=2", "max_steps=20", "threads=3",
                name="three")  # fmt: skip
    assert told["threads"] == 3 and set(seen) == {3}
    assert torch.get_num_threads() == 2


def test_a_thread_count_set_by_the_user_is_left_alone(tmp_path, monkeypatch, two_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    seen = _seen_during_evaluate(monkeypatch, torch.get_num_threads)
    summary = _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=5")
    assert "threads" not in summary and set(seen) == {2}


def test_thread_rule_on_the_tutorial_nets(two_threads):
    from specc.training.kernels import choose_threads, probe

    cifar = specc.build(SPECS / "cifar_net.spec")
    assert choose_threads(probe(cifar, torch.randn(4, 3, 32, 32))) == 1  # 2.8 MFLOP
    assert choose_threads(probe(cifar, torch.randn(6, 3, 32, 32))) is None  # 4.2 MFLOP
    mnist = specc.build(SPECS / "mnist_convnet.spec")
    assert choose_threads(probe(mnist, torch.randn(1, 1, 28, 28))) is None  # 4.5 MFLOP


def test_resume_and_eval_keep_the_recorded_thread_count(tmp_path, monkeypatch, two_threads):
    """Whatever the spec now says: one thread and two can round differently (the CIFAR net
    at batch 4 ends 3e-8 apart after 50 steps), so exactness needs the recorded count."""
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=40", name="full")
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=20", name="part")
    _run(DIGITS, tmp_path, "epochs=1", "batch_size=1", "max_steps=40", 'threads="torch"',
         name="part", resume=True)  # fmt: skip
    a = checkpoint.load(tmp_path / "runs" / "full" / "last.pt")
    b = checkpoint.load(tmp_path / "runs" / "part" / "last.pt")
    assert b["state"]["threads"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    seen = _seen_during_evaluate(monkeypatch, torch.get_num_threads)
    specc.training.runner.evaluate_checkpoint(
        specc.load(DIGITS), tmp_path / "runs" / "full" / "last.pt", quiet=True
    )
    assert seen == [1] and torch.get_num_threads() == 2


def test_bad_thread_counts_are_refused(tmp_path):
    for value in ("0", '"two"', "1.5"):
        with pytest.raises(SpecError, match="number of threads"):
            _run(DIGITS, tmp_path, f"threads={value}")


def test_test_set_is_evaluated_once_when_it_is_the_eval_set(tmp_path, monkeypatch):
    import specc.training.runner

    calls = []
    real = specc.training.runner.evaluate
    monkeypatch.setattr(
        specc.training.runner, "evaluate", lambda *a, **k: calls.append(a[1].name) or real(*a, **k)
    )
    summary = _run(DIGITS, tmp_path, "epochs=1")
    assert calls == ["test"]  # the epoch's evaluation is the final one: nothing changed since
    records = (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
    epoch = next(r for r in map(json.loads, records) if "epoch" in r and "test_loss" in r)
    assert summary["test_loss"] == epoch["test_loss"]
    calls.clear()
    _run(DIGITS, tmp_path, "epochs=2", "max_steps=50", name="partial")  # stops mid-epoch 2
    assert calls == ["test", "test"]
