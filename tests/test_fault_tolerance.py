"""Faults: non-finite losses, kill -9 at random steps, resuming on another process count, bad checkpoints."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, free_port, launch_env, pretrain_args, run_pretrain
from train.common.models import PretrainingObjective

pytestmark = pytest.mark.slow


def tensors(run):
    return load_file(str(run / "final" / "model.safetensors"))


def poison_forward(monkeypatch, bad_calls):
    """Make the objective return a NaN loss on the given forward calls (training calls only)."""
    original = PretrainingObjective.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        sums = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                sums.mlm_nll = sums.mlm_nll * float("nan")
        return sums
    monkeypatch.setattr(PretrainingObjective, "forward", forward)


def test_nan_policy_skip_drops_only_that_update(corpus_dir, tmp_path, monkeypatch, caplog):
    poison_forward(monkeypatch, bad_calls={3})
    run = tmp_path / "skip"
    with caplog.at_level("WARNING"):
        assert run_pretrain(pretrain_args(corpus_dir, run, "--max_train_steps", "6", "--nan_policy", "skip",
                                          "--checkpointing_steps", "none", "--logging_steps", "1")) == 0
    assert "step 3: non-finite loss or gradient (update skipped)" in caplog.text
    assert all(torch.isfinite(t).all() for t in tensors(run).values())
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"split"' not in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_policy_stop_saves_and_stops(corpus_dir, tmp_path, monkeypatch, caplog):
    poison_forward(monkeypatch, bad_calls={4})
    run = tmp_path / "stop"
    with caplog.at_level("ERROR"):
        code = run_pretrain(pretrain_args(corpus_dir, run, "--max_train_steps", "6", "--nan_policy", "stop",
                                          "--checkpointing_steps", "none"))
    assert code == 3 and "non-finite loss or gradient (--nan_policy stop)" in caplog.text
    assert (run / "checkpoints" / "step_000004").is_dir() and not (run / "final").exists()


def checkpoint_weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def without_timing(records: list[dict]) -> list[dict]:
    timed = ("samples_per_second", "tokens_per_second", "mfu", "mfu_dense_head")
    return [{k: v for k, v in r.items() if k not in timed} for r in records]


def test_agreement_waits_for_the_logging_step_and_changes_nothing(corpus_dir, tmp_path, monkeypatch):
    """The ranks' agreement on non-finite values and preemption (a device read, i.e. a host sync) happens at the
    logging steps, not at every optimizer step; metrics and parameters are bit-identical to agreeing every step."""
    from tests.conftest import read_jsonl
    from train.common import loop as loop_module
    args = ("--max_train_steps", "6", "--logging_steps", "3", "--checkpointing_steps", "none")
    calls = []
    real = loop_module.agree_on_flags
    monkeypatch.setattr(loop_module, "agree_on_flags", lambda *a: calls.append(a[1].numel()) or real(*a))
    deferred = tmp_path / "deferred"
    assert run_pretrain(pretrain_args(corpus_dir, deferred, *args)) == 0
    assert calls == [3, 3]  # steps 1-3 at step 3, steps 4-6 at step 6
    calls.clear()
    monkeypatch.setattr(loop_module.TrainLoop, "_optimizer_dropping_on_device", lambda self, optimizer: None)
    every_step = tmp_path / "every_step"
    assert run_pretrain(pretrain_args(corpus_dir, every_step, *args)) == 0
    assert calls == [1] * 6
    assert without_timing(read_jsonl(deferred / "metrics.jsonl")) == without_timing(
        read_jsonl(every_step / "metrics.jsonl"))
    a, b = tensors(deferred), tensors(every_step)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_found_at_the_agreement_stops_with_the_model_before_the_bad_step(corpus_dir, tmp_path, monkeypatch,
                                                                             caplog):
    """A NaN at step 2, seen at the agreement of step 3: the fused optimizer dropped the updates of steps 2 and 3
    on the device, so the checkpoint saved at the stop holds the model as it was after step 1."""
    common = ("--max_train_steps", "6", "--logging_steps", "3")
    reference = tmp_path / "reference"
    assert run_pretrain(pretrain_args(corpus_dir, reference, *common, "--checkpointing_steps", "1",
                                      "--keep_last_n", "0")) == 0
    poison_forward(monkeypatch, bad_calls={2})
    run = tmp_path / "stop"
    with caplog.at_level("WARNING"):
        assert run_pretrain(pretrain_args(corpus_dir, run, *common, "--checkpointing_steps", "none")) == 3
    assert "step 2: non-finite loss or gradient (stopping; the updates of steps 2-3 were dropped)" in caplog.text
    saved = checkpoint_weights(run / "checkpoints" / "step_000003")
    before = checkpoint_weights(reference / "checkpoints" / "step_000001")
    assert all(torch.equal(saved[k], before[k]) for k in before)
    assert not (run / "final").exists()


def test_kill_9_at_random_steps_then_resume(corpus_dir, tmp_path):
    """SIGKILL (no chance to clean up) at random moments, resume each time: same final parameters."""
    args = ("--num_train_epochs", "2", "--checkpointing_steps", "2", "--keep_last_n", "2", "--logging_steps", "1")
    reference = tmp_path / "reference"
    assert run_pretrain(pretrain_args(corpus_dir, reference, *args)) == 0
    total = json.loads((reference / "eval_results.json").read_text())["epochs"][-1]["step"]
    run = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train" / "pretrain.py"),
           *pretrain_args(corpus_dir, run, *args, "--resume_from_checkpoint", "latest")]
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(6):
        if (run / "final").is_dir():
            break
        proc = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        target = rng.randint(1, total - 1)
        # Kill once the run has logged past a random step (its progress since the last checkpoint is lost).
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and kills < 3:
            lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
            if any(json.loads(line).get("step", 0) >= target for line in lines if line.strip()):
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        proc.wait(timeout=300)
    assert kills >= 2, "the runs finished before they could be killed"
    assert (run / "final").is_dir()
    reference_tensors, final = tensors(reference), tensors(run)
    for key in reference_tensors:
        assert torch.equal(reference_tensors[key], final[key]), key
    assert json.loads((run / "eval_results.json").read_text()) == \
        json.loads((reference / "eval_results.json").read_text())


@pytest.mark.multiprocess
def test_resume_on_another_process_count(corpus_dir, tmp_path):
    """A 1-process checkpoint continues on 2 processes with the same global batch (DDP)."""
    common = ("--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--max_train_steps", "8",
              "--checkpointing_steps", "3", "--keep_last_n", "0")
    reference = tmp_path / "reference"
    assert run_pretrain(pretrain_args(corpus_dir, reference, *common, "--per_device_train_batch_size", "8")) == 0
    run = tmp_path / "moved"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("final"))
    for late in ("step_000006", "step_000008"):
        shutil.rmtree(run / "checkpoints" / late, ignore_errors=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
           str(REPO / "train" / "pretrain.py"),
           *pretrain_args(corpus_dir, run, *common, "--per_device_train_batch_size", "4",
                          "--resume_from_checkpoint", "latest")]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = tensors(reference), tensors(run)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_checkpoint_of_another_model_shape_is_refused(corpus_dir, tmp_path):
    from train.common.checkpoint import CheckpointError
    run = tmp_path / "shape"
    assert run_pretrain(pretrain_args(corpus_dir, run, "--max_train_steps", "2", "--checkpointing_steps", "2")) == 0
    other = tmp_path / "other"
    with pytest.raises(CheckpointError, match="different model shape.*hidden_size"):
        run_pretrain(pretrain_args(corpus_dir, other, "--hidden_size", "64", "--max_train_steps", "2",
                                   "--resume_from_checkpoint", str(run / "checkpoints" / "step_000002")))


# ------------------------------------------------------------------ a stop in the middle of deleting a checkpoint


def _interrupting_rmtree(real_rmtree):
    """shutil.rmtree that deletes one file of the folder, then raises as a second Ctrl-C would."""
    def rmtree(path, *args, **kwargs):
        files = sorted(p.path for p in os.scandir(path) if p.is_file()) if os.path.isdir(path) else []
        if files:
            os.unlink(files[0])  # checkpoint.json sorts first: the damage the stop test saw
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)
    return rmtree


@pytest.mark.parametrize("deleting", ["the same step saved again", "pruning"])
def test_a_stop_while_deleting_a_checkpoint_never_leaves_a_visible_incomplete_one(tmp_path, monkeypatch, deleting):
    from accelerate import Accelerator

    from train.common import checkpoint as ck
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(torch.nn.Linear(4, 2), None)
    state = ck.TrainState()
    accelerator.register_for_checkpointing(state)
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        state.step = step
        ck.save_checkpoint(accelerator, folder, state, {}, keep_last_n=0)
    monkeypatch.setattr(ck.shutil, "rmtree", _interrupting_rmtree(shutil.rmtree))
    with pytest.raises(KeyboardInterrupt):
        if deleting == "pruning":
            state.step = 3
            ck.save_checkpoint(accelerator, folder, state, {}, keep_last_n=1)
        else:
            ck.save_checkpoint(accelerator, folder, state, {}, keep_last_n=0)  # step 2 again
    monkeypatch.undo()
    visible = ck.list_checkpoints(folder)
    assert visible, "a complete checkpoint must survive"
    for found in visible:
        ck.validate_checkpoint(found)  # complete, or not visible at all
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(ck.TRASH_PREFIX)]
    assert leftovers  # the interrupted deletion stayed hidden ...
    state.step = 4
    ck.save_checkpoint(accelerator, folder, state, {}, keep_last_n=0)
    assert not [p for p in folder.iterdir() if p.name.startswith(ck.TRASH_PREFIX)]  # ... until the next save
