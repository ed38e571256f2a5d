"""Crashes and kills lose nothing; absurd sizes and NaNs are caught with clear errors."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import SPECS

import specc
from specc.cli import main
from specc.errors import SpecError
from specc.training import checkpoint

DIGITS = SPECS / "digits.spec"
RUN = [sys.executable, "-m", "specc", "run", str(DIGITS), "--set", "epochs=2",
       "--set", "checkpoint_every=3"]  # fmt: skip


def test_absurd_sizes_are_refused_at_check_time():
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"about 40\.0 TB in float32"):
        specc.check("model M { fc = Linear(10**12, 10) forward(x: [8]) { return fc(x) } }")
    with pytest.raises(SpecError, match="would create 1,000,000,000 modules"):
        specc.check("model M { b = repeat(10**9, Linear(8, 8)) forward(x: [8]) { return b(x) } }")
    assert time.perf_counter() - t0 < 10


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    ref = specc.train(DIGITS, ["epochs=2", "checkpoint_every=3"], runs_dir=tmp_path / "ref",
                      name="x", quiet=True)  # fmt: skip
    assert ref["steps"] == 90
    runs = tmp_path / "killed"
    rng = random.Random(1234)
    last = runs / "x" / "last.pt"
    # Kill points are drawn in steps, not seconds, so a fast machine cannot finish the run
    # before the kill lands; a random delay of up to a few ms after the step is printed
    # lets the kill fall anywhere, including inside a checkpoint write.
    targets = sorted(rng.sample(range(5, 80), 3))
    kills = 0
    for target in targets:
        cmd = [*RUN, "--set", "log_every=1", "--runs-dir", str(runs), "--name", "x"] + (
            ["--resume"] if last.exists() else [])  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            step = re.search(rb"step (\d+)/", proc.stderr.readline())
            if step and int(step.group(1)) >= target:
                break
        time.sleep(rng.uniform(0.0, 0.005))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stderr.close()
        if last.exists():
            checkpoint.load(last)  # never truncated: always loads
    assert kills == len(targets)
    done = subprocess.run([*RUN, "--runs-dir", str(runs), "--name", "x", "--resume"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    a = checkpoint.load(tmp_path / "ref" / "x" / "last.pt")["model"]
    b = checkpoint.load(last)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not list((runs / "x").glob(".*.tmp"))


@pytest.mark.slow
def test_sigint_stops_at_a_step_boundary_and_saves(tmp_path):
    runs = tmp_path / "runs"
    long = [*RUN, "--set", "epochs=50"]  # long enough to be interrupted mid-way
    proc = subprocess.Popen([*long, "--runs-dir", str(runs), "--name", "x"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    while True:
        line = proc.stderr.readline().decode()
        assert line, "run ended before it reported progress"
        if "step" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "resume with: specc run" in err and "--resume" in err
    ck = checkpoint.load(runs / "x" / "last.pt")
    assert ck["state"]["step"] > 0
    resumed = subprocess.run([*RUN, "--runs-dir", str(runs), "--name", "x", "--resume",
                              "--set", "max_steps=" + str(ck["state"]["step"] + 5)],
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, capsys):
    args = ["run", str(DIGITS), "--runs-dir", str(tmp_path), "--set", "epochs=1",
            "--set", "checkpoint_every=1", "--set", "optimizer.lr=1e30",
            "--set", "scheduler.max_lr=1e30"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "training stopped" in err and "at step" in err
    last = tmp_path / "digits" / "last.pt"
    ck = checkpoint.load(last)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("in_memory", [True, False])
def test_wrong_image_size_is_reported_before_training(tmp_path, capsys, in_memory):
    spec = tmp_path / "wrong.spec"
    spec.write_text(DIGITS.read_text().replace("forward(x: [1, 8, 8])", "forward(x: [1, 16, 16])"))
    args = ["run", str(spec), "--runs-dir", str(tmp_path), "--set", f"data.in_memory={in_memory}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    assert "wrong.spec:22:18: error: Digits (train) sample 0 has shape [1, 8, 8]" in err
    assert "declares `x: [1, 16, 16]`" in err
    assert not (tmp_path / "wrong" / "last.pt").exists()


def test_nan_can_skip_the_step(tmp_path):
    spec = tmp_path / "skip.spec"
    spec.write_text(
        DIGITS.read_text().replace(
            "metrics   = [accuracy]", 'metrics   = [accuracy]\n    on_nan = "skip"'
        )
    )
    summary = specc.train(spec, ["epochs=1", "optimizer.lr=1e30", "scheduler.max_lr=1e30"],
                          runs_dir=tmp_path, quiet=True)  # fmt: skip
    assert summary["epochs"] == 1


def test_run_dir_is_not_a_directory(tmp_path, capsys):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    code = main(["run", str(DIGITS), "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_env_has_no_debug_leak():
    assert os.environ.get("SPECC_DEBUG") is None
