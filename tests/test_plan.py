"""The train plan (specc.training.plan) is one truth: `specc run` and `specc compile --train`
resolve the same spec to equal plans, a bad train block is a located error from both, and
`best.pt` keeps the epoch the best metric ranks first (the loss lower-is-better)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import specc
import specc.training.plan
import specc.training.runner
from specc.cli import main
from specc.training.plan import TrainPlan

# A small two-part model on the offline digits: `backbone.1.*` and `head.*` are the
# parameters that `group`, `freeze` and `init` name below.
MODEL = """\
model Net(hidden: int = 16, classes: int = 10) {
    backbone = Sequential(Flatten(), Linear(64, hidden), ReLU())
    head     = Linear(hidden, classes)
    forward(x: [1, 8, 8]) {
        return head(backbone(x))
    }
}
"""

SMOOTH_LOSS = """\
model SmoothCrossEntropy(eps: float = 0.1) {
    forward(logits: [C], target: [] long) {
        logp   = log_softmax(logits, -1)
        nll    = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
        smooth = -logp.mean(-1)
        return ((1 - eps) * nll + eps * smooth).mean()
    }
}
"""

BASE = (
    MODEL
    + """
data digits {
    train      = Digits(train=True)
    test       = Digits(train=False)
    batch_size = 64
}

train {
    model     = Net()
    data      = digits
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.01)
    epochs    = 3
    max_steps = 9
    log_every = 1
}
"""
)

# The runner gets these as `--set`; the compile side has them written in the spec, in place
# (same lines and columns), so any difference between the two plans is a real one.
OVERRIDES = ["epochs=1", "max_steps=1"]
WRITTEN = {"epochs    = 3": "epochs    = 1", "max_steps = 9": "max_steps = 1"}


def spec_text(train: str = "", *, models: str = "", data: str = "",
              edits: dict[str, str] | None = None) -> str:  # fmt: skip
    """BASE with lines added to the train (and data) block, models put first, and edits."""
    text = models + BASE
    if data:
        text = text.replace("    batch_size = 64\n", f"    batch_size = 64\n{data}\n")
    if train:
        text = text.replace("    log_every = 1\n", f"    log_every = 1\n{train}\n")
    for old, new in (edits or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def save_weights(path: Path, classes: int = 10) -> None:
    """A specc-style checkpoint of `Net` (with `classes` outputs) at `path`."""
    text = MODEL.replace("classes: int = 10", f"classes: int = {classes}")
    torch.save({"model": specc.build(text, "Net").state_dict()}, path)


def user_facts(plan: TrainPlan) -> dict[str, Any]:
    """What a user reads off a plan: the scheduler's form, the best metric and its direction,
    the loss, the parameter groups, the init statements, the device and the data."""
    sched = plan.scheduler
    return {
        "scheduler": sched.ctor.name if sched.ctor else None,
        "interval": sched.interval,
        "fill_total_steps": sched.fill_total_steps,
        "warmup": sched.warmup,
        "metrics": plan.metrics,
        "best_metric": plan.best_metric,
        "higher_is_better": plan.higher_is_better,
        "loss": (plan.loss.ctor.name, plan.loss.ctor.origin),
        "groups": [g.params for g in plan.optimizer.groups],
        "rest": plan.optimizer.rest,
        "frozen": plan.frozen,
        "inits": [
            (i.target, i.path, i.strict, i.skip_mismatched, i.strip_prefix, i.add_prefix)
            for i in plan.inits
        ],
        "device": plan.device,
        "val_split": plan.data.val_split,
        "transforms": [t.name for t in plan.data.transform],
    }


BACKBONE = ("backbone.1.weight", "backbone.1.bias")
HEAD = ("head.weight", "head.bias")

# name: (spec text, facts of its plan). Every row trains (one step) and compiles.
PLANS = {
    # ---- scheduler forms
    "no_scheduler": (spec_text(),
                     {"scheduler": None, "interval": "epoch", "fill_total_steps": False,
                      "warmup": 0}),
    "step_lr": (spec_text("    scheduler = StepLR(step_size=1)"),
                {"scheduler": "StepLR", "interval": "epoch", "fill_total_steps": False}),
    "one_cycle_fills_total_steps": (spec_text("    scheduler = OneCycleLR(max_lr=0.01)"),
                                    {"scheduler": "OneCycleLR", "interval": "step",
                                     "fill_total_steps": True}),
    "one_cycle_positional_total_steps": (spec_text("    scheduler = OneCycleLR(0.01, 100)"),
                                         {"scheduler": "OneCycleLR", "interval": "step",
                                          "fill_total_steps": False}),
    "one_cycle_keyword_total_steps": (
        spec_text("    scheduler = OneCycleLR(max_lr=0.01, total_steps=100)"),
        {"fill_total_steps": False}),
    # the run's own length wins over OneCycleLR's epochs (as before the plan existed)
    "one_cycle_epochs_given": (
        spec_text("    scheduler = OneCycleLR(max_lr=0.01, epochs=3, steps_per_epoch=10)"),
        {"fill_total_steps": True}),
    "warmup_alone": (spec_text("    warmup    = 5"),
                     {"scheduler": None, "interval": "step", "warmup": 5}),
    "warmup_then_step_scheduler": (
        spec_text('    warmup    = 2\n    scheduler = CosineAnnealingLR(T_max=10)\n'
                  '    scheduler_interval = "step"'),
        {"scheduler": "CosineAnnealingLR", "interval": "step", "warmup": 2}),
    "warmup_then_one_cycle": (spec_text("    warmup    = 2\n    scheduler = OneCycleLR(0.01, 50)"),
                              {"scheduler": "OneCycleLR", "interval": "step", "warmup": 2,
                               "fill_total_steps": False}),
    # ---- metrics and the best metric: the loss is lower-is-better, accuracies higher
    "best_default_is_accuracy": (spec_text(),
                                 {"metrics": ("accuracy",), "best_metric": "accuracy",
                                  "higher_is_better": True}),
    "best_loss": (spec_text('    best_metric = "loss"'),
                  {"metrics": ("accuracy",), "best_metric": "loss",
                   "higher_is_better": False}),
    "best_accuracy": (spec_text('    metrics = [accuracy, top5]\n    best_metric = "accuracy"'),
                      {"metrics": ("accuracy", "top5"), "best_metric": "accuracy",
                       "higher_is_better": True}),
    "best_top5": (spec_text('    metrics = [accuracy, top5]\n    best_metric = "top5"'),
                  {"metrics": ("accuracy", "top5"), "best_metric": "top5",
                   "higher_is_better": True}),
    "only_the_loss": (spec_text("    metrics = [loss]"),
                      {"metrics": (), "best_metric": "loss", "higher_is_better": False}),
    "no_metrics": (spec_text("    metrics = []"),
                   {"metrics": (), "best_metric": "loss", "higher_is_better": False}),
    # ---- losses
    "torch_loss_with_args": (spec_text(edits={"CrossEntropyLoss()":
                                              "CrossEntropyLoss(label_smoothing=0.1)"}),
                             {"loss": ("CrossEntropyLoss", "torch")}),
    "dsl_loss": (spec_text(models=SMOOTH_LOSS + "\n",
                           edits={"CrossEntropyLoss()": "SmoothCrossEntropy(0.1)"}),
                 {"loss": ("SmoothCrossEntropy", "spec")}),
    # ---- parameter groups (first match wins) and freezing
    "one_group": (spec_text('    group "backbone.*" (lr=0.001)'),
                  {"groups": [BACKBONE], "rest": HEAD}),
    "first_match_wins": (spec_text('    group "head.weight" (lr=0.1)\n'
                                   '    group "head*", "backbone" (weight_decay=0.0)'),
                         {"groups": [("head.weight",), (*BACKBONE, "head.bias")], "rest": ()}),
    "group_beside_freeze": (spec_text('    freeze backbone\n    group "head*" (lr=0.1)'),
                            {"groups": [HEAD], "rest": (), "frozen": BACKBONE}),
    # ---- init options (the files are written by the test, in its folder)
    "init_whole_model": (spec_text('    init from "net.pt"'),
                         {"inits": [(None, "net.pt", False, False, None, None)]}),
    "init_sub_module_by_its_name": (spec_text('    init backbone from "net.pt"'),
                                    {"inits": [("backbone", "net.pt", False, False, None,
                                                None)]}),
    "init_strip_prefix_strict": (
        spec_text('    init backbone from "net.pt" (strip_prefix="backbone.", strict=True)'),
        {"inits": [("backbone", "net.pt", True, False, "backbone.", None)]}),
    "init_add_prefix": (spec_text('    init from "head.pt" (add_prefix="head.")'),
                        {"inits": [(None, "head.pt", False, False, None, "head.")]}),
    "init_skip_mismatched": (spec_text('    init from "net12.pt" (skip_mismatched=True)'),
                             {"inits": [(None, "net12.pt", False, True, None, None)]}),
    "init_then_freeze": (spec_text('    init backbone from "net.pt"\n    freeze backbone'),
                         {"frozen": BACKBONE, "rest": HEAD}),
    # ---- device and data
    "device_cpu": (spec_text('    device    = "cpu"'), {"device": "cpu"}),
    "val_split_and_transform": (
        spec_text(data="    val_split  = 0.2\n    transform  = [Normalize(mean=[0.5], std=[0.5])]"),
        {"val_split": 0.2, "transforms": ["Normalize"]}),
}  # fmt: skip


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[TrainPlan]]:
    """Every plan `resolve` returns, by who asked: the runner or `specc compile --train`."""
    seen: dict[str, list[TrainPlan]] = {"run": [], "compile": []}
    real = specc.training.plan.resolve

    def spy(into: str):
        def resolve(*args: Any, **kwargs: Any) -> TrainPlan:
            plan = real(*args, **kwargs)
            seen[into].append(plan)
            return plan

        return resolve

    monkeypatch.setattr(specc.training.runner, "resolve", spy("run"))
    monkeypatch.setattr(specc.training.plan, "resolve", spy("compile"))
    return seen


@pytest.fixture
def weights(in_tmp: Path) -> Path:
    """The checkpoints the init rows load, in the test's working folder."""
    save_weights(in_tmp / "net.pt")
    save_weights(in_tmp / "net12.pt", classes=12)
    head = specc.build(MODEL, "Net").head.state_dict()  # keys `weight`, `bias`
    torch.save(head, in_tmp / "head.pt")
    return in_tmp


@pytest.mark.parametrize("name", list(PLANS))
def test_runner_and_compile_resolve_the_same_plan(name, weights, plans):
    text, facts = PLANS[name]
    spec = weights / "net.spec"
    spec.write_text(text, "utf-8")
    summary = specc.train(spec, OVERRIDES, runs_dir=weights / "runs", quiet=True)
    assert summary["steps"] == 1
    for old, new in WRITTEN.items():
        text = text.replace(old, new)
    spec.write_text(text, "utf-8")
    script = specc.compile(spec, train=True)

    (from_run,), (from_compile,) = plans["run"], plans["compile"]
    assert from_run == from_compile
    assert (from_run.epochs, from_run.max_steps) == (1, 1)
    shown = user_facts(from_run)
    assert {k: shown[k] for k in facts} == facts
    # the script computes OneCycleLR's length exactly when the runner does
    assert ("total_steps=steps_per_epoch * 1" in script) == from_run.scheduler.fill_total_steps


# name: (spec text, the text the error underlines (or: a text on its line, the underlined
# part of it), the message, the start of its hint).
# Each is found by `resolve`, so `specc compile --train` and `specc run` say the same.
MISTAKES = {
    "best_metric_unknown": (spec_text('    best_metric = "acc"'), 'best_metric = "acc"',
                            "unknown best_metric `acc`",
                            "known metrics: accuracy, top5, loss"),
    "best_metric_misspelt": (spec_text('    best_metric = "acuracy"'),
                             'best_metric = "acuracy"', "unknown best_metric `acuracy`",
                             "did you mean `accuracy`?"),
    "best_metric_not_computed": (spec_text('    best_metric = "top5"'), 'best_metric = "top5"',
                                 "best_metric `top5` is not computed: the metrics are loss, "
                                 "accuracy", "add it to `metrics`"),
    "metric_unknown": (spec_text("    metrics = [accuracy, top3]"), "metrics = [accuracy, top3]",
                       "unknown metric `top3`", "did you mean `top5`?"),
    "loss_unknown": (spec_text(edits={"CrossEntropyLoss()": "CrossEntropyLos()"}),
                     "CrossEntropyLos()", "unknown loss `CrossEntropyLos`",
                     "did you mean `CrossEntropyLoss`?"),
    "loss_model_with_one_input": (
        spec_text(models="model Mean() {\n    forward(x: [C]) {\n        return x.mean()\n"
                         "    }\n}\n\n", edits={"CrossEntropyLoss()": "Mean()"}),
        ("loss      = Mean()", "Mean()"),
        "a loss model takes two inputs (output, target); `Mean` takes 1", ""),
    "optimizer_unknown": (spec_text(edits={"SGD(lr=0.01)": "SDG(lr=0.01)"}), "SDG(lr=0.01)",
                          "unknown optimizer `SDG`", "did you mean `SGD`?"),
    "optimizer_arguments": (spec_text(edits={"SGD(lr=0.01)": "SGD(lr=0.01, momentun=0.9)"}),
                            "SGD(lr=0.01, momentun=0.9)",
                            "bad arguments for optimizer `SGD`: got an unexpected keyword "
                            "argument 'momentun'", "the signature is (params, lr=0.001"),
    "scheduler_unknown": (spec_text("    scheduler = StepLr(step_size=1)"), "StepLr(step_size=1)",
                          "unknown scheduler `StepLr`", "did you mean `StepLR`?"),
    "scheduler_arguments": (spec_text("    scheduler = StepLR(gamma=0.5)"), "StepLR(gamma=0.5)",
                            "bad arguments for scheduler `StepLR`: missing a required argument: "
                            "'step_size'", "the signature is (optimizer, step_size"),
    "warmup_with_epoch_scheduler": (
        spec_text("    warmup    = 5\n    scheduler = StepLR(step_size=1)"),
        "StepLR(step_size=1)", "warmup counts optimizer steps", ""),
    "group_matches_nothing": (spec_text('    group "neck.*" (lr=0.1)'),
                              'group "neck.*" (lr=0.1)',
                              "group ['neck.*'] matches no trainable parameter", ""),
    "group_of_frozen_parameters": (spec_text('    freeze head\n    group "head.*" (lr=0.1)'),
                                   'group "head.*" (lr=0.1)',
                                   "group ['head.*'] matches no trainable parameter", ""),
    "freeze_matches_nothing": (spec_text("    freeze backbon"), "freeze backbon",
                               "freeze 'backbon' matches no parameter",
                               "did you mean `backbone.1`?"),
    "init_unknown_option": (spec_text('    init from "net.pt" (strip=True)'),
                            ("(strip=True)", "True"),
                            "init has no option `strip`", "did you mean `strict`?"),
    "init_transpose_matches_nothing": (
        spec_text('    init from "net.pt" (transpose=["*.c_fc.weight"])'), '["*.c_fc.weight"]',
        "init: transpose pattern '*.c_fc.weight' matches no key of the model",
        "patterns name the model's keys, such as backbone.1.weight, backbone.1.bias, "
        "head.weight"),
    "init_transpose_a_bias": (spec_text('    init from "net.pt" (transpose="head.*")'),
                              '"head.*"', "init: transpose pattern 'head.*' matches "
                              "`head.bias`, a 1-D tensor; only 2-D weights can be transposed",
                              "name the 2-D ones alone, e.g. 'head.weight'"),
    "init_ignore_not_patterns": (spec_text('    init from "net.pt" (ignore=3)'), ("ignore=3", "3"),
                                 "init: `ignore` takes a list of key patterns, not 3",
                                 'for example ignore=["*.attn.bias"]'),
    "init_strict_not_a_bool": (spec_text('    init from "net.pt" (strict="yes")'), '"yes"',
                               "init: `strict` is True or False, not 'yes'", ""),
    "init_missing_sub_module": (spec_text('    init bakbone from "net.pt"'),
                                'init bakbone from "net.pt"',
                                "init: the model has no sub-module `bakbone`",
                                "did you mean `backbone`?"),
    "device_unknown": (spec_text('    device    = "gpu"'), 'device    = "gpu"',
                       "unknown device 'gpu'", "use auto, cpu, cuda or mps"),
    "dataset_unknown": (spec_text(edits={"Digits(train=False)": "Digitz(train=False)"}),
                        "Digitz(train=False)", "unknown dataset `Digitz`",
                        "did you mean `Digits`?"),
    "transform_unknown": (spec_text(data="    transform  = [Normalise(mean=[0.5], std=[0.5])]"),
                          "Normalise(mean=[0.5], std=[0.5])", "unknown transform `Normalise`",
                          "did you mean `Normalize`?"),
}  # fmt: skip


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(MISTAKES))
def test_train_block_mistakes_are_located_errors(name, in_tmp, capsys):
    text, where, message, hint = MISTAKES[name]
    (in_tmp / "bad.spec").write_text(text, "utf-8")
    within, underlined = where if isinstance(where, tuple) else (where, where)
    line_no, line = next((i, s) for i, s in enumerate(text.splitlines(), 1) if within in s)
    col = line.index(underlined, line.index(within)) + 1

    compiled = cli(["compile", "--train", "bad.spec"], capsys)
    ran = cli(["run", "bad.spec", "--runs-dir", "runs"], capsys)
    assert compiled == ran
    code, err = compiled
    assert code == 2
    assert err.startswith(f"bad.spec:{line_no}:{col}: error: {message}"), err
    assert f" {line_no} | {line}\n" in err
    assert f"| {' ' * (col - 1)}{'^' * len(underlined)}\n" in err
    assert f"= hint: {hint}" in err if hint else "= hint:" not in err
    assert "Traceback" not in err and "internal error" not in err
    assert not (in_tmp / "runs").exists()  # nothing was started


# name: (train lines, how the best epoch is picked from the val records, and by which key).
# Plain SGD keeps improving; a learning rate multiplied by 10 each epoch makes the first
# epoch the best. Before the plan, a loss ranked "higher is better" kept the worst epoch.
DIVERGING = "    scheduler = StepLR(step_size=1, gamma=10.0)"
BEST_EPOCHS = {
    "loss_improving": ('    metrics = [accuracy]\n    best_metric = "loss"', min, "val_loss"),
    "loss_diverging": (f'    metrics = [accuracy]\n    best_metric = "loss"\n{DIVERGING}',
                       min, "val_loss"),
    "loss_the_only_metric": (f"    metrics = [loss]\n{DIVERGING}", min, "val_loss"),
    "accuracy_diverging": (f'    metrics = [accuracy]\n    best_metric = "accuracy"\n{DIVERGING}',
                           max, "val_accuracy"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BEST_EPOCHS))
def test_best_pt_keeps_the_epoch_the_best_metric_ranks_first(name, in_tmp):
    train, pick, key = BEST_EPOCHS[name]
    edits = {"max_steps = 9\n": "", "SGD(lr=0.01)": "SGD(lr=0.3)"}  # three whole epochs
    text = spec_text(train, data="    val_split  = 0.2", edits=edits)
    (in_tmp / "best.spec").write_text(text, "utf-8")
    specc.train(in_tmp / "best.spec", runs_dir=in_tmp / "runs", quiet=True)

    run = in_tmp / "runs" / "best"
    lines = (run / "metrics.jsonl").read_text("utf-8").splitlines()
    epochs = [r for r in map(json.loads, lines) if key in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    best = pick(epochs, key=lambda r: r[key])  # the first of equals, as the runner keeps it
    state = torch.load(run / "best.pt", weights_only=False)["state"]
    assert (state["best_epoch"], state["best"]) == (best["epoch"], best[key])
