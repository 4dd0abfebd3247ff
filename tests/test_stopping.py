"""Stopping is safe: SIGTERM to `accelerate launch` (what a terminal, a container runtime or a scheduler sends)
and Ctrl-C (SIGINT to the whole process group), for the three scripts, launched as a user would.

Each run starts `accelerate launch` in its own session, waits until optimizer steps are being logged and signals
it. Then the launcher and every process it started must be gone within a bound (an orphan that goes on training
fails the test), PREEMPTED names the signal, the checkpoint is complete and `--resume_from_checkpoint latest`
continues (in this process: no second start-up). The resumed runs are short: --max_train_steps is operational.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # an accelerate dependency
import pytest

from tests.conftest import REPO, free_port, launch_env, pretrain_args, read_jsonl, run_pretrain
from tests.test_finetune_classification import cls_args, run_classification, write_sst_trees, write_tiny_bert
from tests.test_finetune_qa import TINY_V1, qa_args, run_qa
from train.common.checkpoint import list_checkpoints, validate_checkpoint
from train.common.loop import MAX_STEPS_BETWEEN_AGREEMENTS

LONG = "100000"      # optimizer steps: far more than a test waits for, so a process that is not stopped keeps going
GONE_WITHIN = 90     # seconds for the launcher and all its descendants to exit after the signal (typically ~5)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert_stop"))


@pytest.fixture(scope="module")
def sst_trees(tmp_path_factory) -> Path:
    return write_sst_trees(tmp_path_factory.mktemp("sst_trees_stop"))


# Each case: (script, arguments for a run in OUTPUT_DIR, in-process main for the resumed run).
def pretrain_case(corpus_dir, tiny_bert, sst_trees):
    return "pretrain.py", lambda out, *extra: pretrain_args(corpus_dir, out, *extra), run_pretrain


def classification_case(corpus_dir, tiny_bert, sst_trees):
    return ("finetune_classification.py", lambda out, *extra: cls_args(tiny_bert, out, *extra, trees=sst_trees),
            run_classification)


def qa_case(corpus_dir, tiny_bert, sst_trees):
    return ("finetune_qa.py", lambda out, *extra: qa_args(tiny_bert, out, "--train_file", str(TINY_V1),
                                                          "--train_articles", "2", "--aux_metrics", "false", *extra),
            run_qa)


CASES = {"pretrain": pretrain_case, "classification": classification_case, "qa": qa_case}


def terminal_sigint(in_python: bool = False) -> None:
    """Ctrl-C as a terminal gives it: SIG_DFL for a child (Python then installs its own handler), Python's
    default_int_handler in this process. A test run in the background (`cmd &` in a script, as CI harnesses do)
    inherits SIGINT ignored, and the scripts rightly keep an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.default_int_handler if in_python else signal.SIG_DFL)


class Launch:
    """`accelerate launch CONFIG train/SCRIPT ARGS` in a new session; output to files (a pipe could fill up)."""

    def __init__(self, script: str, args: list[str], folder: Path, config: str = "cpu.yaml"):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / config), "--main_process_port", str(free_port()),
               str(REPO / "train" / script), *args]
        folder.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = folder / "launch.stdout", folder / "launch.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=out, stderr=err,
                                         start_new_session=True, preexec_fn=terminal_sigint)
        self.pid = self.proc.pid  # also the process group id (new session)
        self.tree: list[psutil.Process] = []

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for_step(self, run: Path, step: int, processes: int = 1, timeout: float = 300) -> None:
        """Until metrics.jsonl has a training line at `step` and all `processes` training processes exist."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"the launcher exited early ({self.proc.returncode}):\n" + \
                self.stderr()[-4000:]
            lines = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
            if any("split" not in line and line.get("step", 0) >= step for line in lines) and \
                    len(self.training_processes()) >= processes:
                # The tree now, while the launcher is alive: after its death the children are reparented.
                self.tree = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
                return
            time.sleep(0.1)
        raise AssertionError(f"no training step {step} within {timeout} s:\n" + self.stderr()[-4000:])

    def training_processes(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p for p in children if _cmdline_has(p, "/train/")]

    def alive(self) -> list[psutil.Process]:
        """Processes of the launcher's tree (as it was before the signal) or group that still run."""
        procs = {p.pid: p for p in self.tree}
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.pid:
                    procs.setdefault(p.pid, p)
            except (ProcessLookupError, PermissionError):
                pass
        return [p for p in procs.values() if _running(p)]

    def assert_all_gone(self, within: float = GONE_WITHIN) -> float:
        started = time.time()
        while time.time() - started < within:
            self.proc.poll()  # reap the launcher
            if not self.alive():
                return time.time() - started
            time.sleep(0.1)
        left = [f"{p.pid}: {' '.join(p.cmdline())[:160]}" for p in self.alive()]
        raise AssertionError(f"still running {within} s after the signal (orphans):\n" + "\n".join(left))

    def kill_leftovers(self) -> None:
        """After a failed test: no process of ours may go on training."""
        for p in self.alive():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline_has(p: psutil.Process, text: str) -> bool:
    try:
        return any(text in arg for arg in p.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@pytest.fixture
def launches():
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.kill_leftovers()


def assert_preempted(run: Path, signal_name: str) -> int:
    """PREEMPTED names the signal, the checkpoint at its step is complete and nothing was exported."""
    marker = json.loads((run / "PREEMPTED").read_text())
    assert marker["signal"] == signal_name, marker
    step = marker["step"]
    checkpoints = list_checkpoints(run / "checkpoints")
    assert checkpoints and checkpoints[0].name == f"step_{step:06d}", checkpoints
    assert validate_checkpoint(checkpoints[0])["step"] == step
    assert not (run / "final").exists()
    return step


def assert_resumes(main, argv: list[str], run: Path, from_step: int) -> None:
    assert main(argv + ["--resume_from_checkpoint", "latest", "--max_train_steps", str(from_step + 2)]) == 0
    assert not (run / "PREEMPTED").exists() and (run / "final").is_dir()
    steps = [line["step"] for line in read_jsonl(run / "metrics.jsonl") if "split" not in line]
    assert steps[-2:] == [from_step + 1, from_step + 2], steps


def assert_no_traceback_from_training(stderr: str) -> None:
    """The launcher may print its own (accelerate does on KeyboardInterrupt); the training processes must not."""
    lines = stderr.splitlines()
    frames = [line for line in lines if line.lstrip().startswith("File ") and f"{REPO}/train/" in line]
    assert not frames, "traceback from a training process:\n" + stderr[-4000:]


# ------------------------------------------------------------------------------------------- the flag by itself


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_which_signal_stops_at_once(restore_signals, monkeypatch):
    from train.common import preemption
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # no PR_SET_PDEATHSIG for pytest itself
    terminal_sigint(in_python=True)  # pytest may run with SIGINT ignored (in the background); restore_signals
    flag = preemption.PreemptionFlag()
    assert signal.getsignal(signal.SIGINT) == flag._handler
    flag._handler(signal.SIGINT, None)
    flag._handler(signal.SIGTERM, None)  # what a dying launcher sends through PR_SET_PDEATHSIG: still the flag
    flag._handler(signal.SIGUSR1, None)
    assert flag.local_flag == 1.0 and flag.signal_name() == "SIGINT"  # the first one is reported
    with pytest.raises(KeyboardInterrupt):
        flag._handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # a third Ctrl-C kills
    # A new flag (the next in-process run) takes SIGINT over from an old one, but keeps an inherited SIG_IGN.
    signal.signal(signal.SIGINT, flag._handler)
    newer = preemption.PreemptionFlag()
    assert signal.getsignal(signal.SIGINT) == newer._handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preemption.PreemptionFlag()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_parent_death_signal_only_under_a_launcher(monkeypatch, tmp_path):
    from train.common import preemption
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert preemption._die_with_launcher() is False  # a script run from a shell keeps nohup's meaning
    assert preemption._is_launcher(os.getpid()) is False  # pytest
    for name, expected in (("accelerate", True), ("torchrun", True), ("my_accelerate_wrapper", False)):
        script = tmp_path / name  # what `accelerate launch` looks like in /proc: python .../bin/accelerate launch
        script.write_text("import time; time.sleep(60)\n")
        proc = subprocess.Popen([sys.executable, str(script), "launch", "x.py"])
        try:
            deadline = time.time() + 30
            while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.time() < deadline:
                time.sleep(0.01)  # empty for a moment after exec
            assert preemption._is_launcher(proc.pid) is expected, name
        finally:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------------ SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_sigterm_to_the_launcher_checkpoints_and_leaves_no_orphan(case, corpus_dir, tiny_bert, sst_trees, tmp_path,
                                                                   launches):
    """accelerate's single-process launcher dies at once on SIGTERM and does not pass it on: the training
    process gets it through PR_SET_PDEATHSIG, saves at the next step and exits."""
    script, args, main = CASES[case](corpus_dir, tiny_bert, sst_trees)
    run = tmp_path / "run"
    argv = args(run, "--max_train_steps", LONG, "--logging_steps", "1", "--checkpointing_steps", "none")
    launch = Launch(script, argv, tmp_path / "logs")
    launches.append(launch)
    launch.wait_for_step(run, 2)
    os.kill(launch.pid, signal.SIGTERM)
    launch.assert_all_gone()
    assert launch.proc.returncode == -signal.SIGTERM
    step = assert_preempted(run, "SIGTERM")
    assert step >= 2
    assert_resumes(main, argv, run, step)


@pytest.mark.slow
def test_launcher_gone_before_the_training_process_is_ready(corpus_dir, tmp_path, launches):
    """SIGTERM while the training process is still importing (nothing is armed yet): it finds itself adopted
    by PID 1 when it installs the flag, and stops at its first step instead of training on as an orphan."""
    run = tmp_path / "run"
    argv = pretrain_args(corpus_dir, run, "--max_train_steps", LONG, "--logging_steps", "1",
                         "--checkpointing_steps", "none")
    launch = Launch("pretrain.py", argv, tmp_path / "logs")
    launches.append(launch)
    deadline = time.time() + 120
    while not launch.training_processes():
        assert launch.proc.poll() is None and time.time() < deadline, launch.stderr()[-4000:]
        time.sleep(0.01)
    launch.tree = [psutil.Process(launch.pid), *launch.training_processes()]
    os.kill(launch.pid, signal.SIGTERM)
    launch.proc.wait(timeout=30)
    if launch.tree[1].ppid() != 1:
        pytest.skip("orphans are adopted by a subreaper here, not by PID 1")
    launch.assert_all_gone()
    assert "the launcher that started this process has exited" in launch.stderr(), launch.stderr()[-4000:]
    assert assert_preempted(run, "SIGTERM") == 1


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_two_processes_stop_together_when_the_launcher_is_signalled(sig, corpus_dir, tmp_path, launches):
    """DDP: the torch elastic agent (the launcher process) forwards SIGTERM to its workers and SIGKILLs them
    after 30 s; an agent killed outright forwards nothing, and then PR_SET_PDEATHSIG is what stops the workers.
    Both ranks stop at the same step either way (the flag is all-reduced)."""
    run = tmp_path / "run"
    argv = pretrain_args(corpus_dir, run, "--max_train_steps", LONG, "--logging_steps", "1",
                         "--checkpointing_steps", "none", "--per_device_train_batch_size", "4")
    launch = Launch("pretrain.py", argv, tmp_path / "logs", config="cpu_ddp.yaml")
    launches.append(launch)
    launch.wait_for_step(run, 2, processes=2)
    os.kill(launch.pid, sig)
    launch.assert_all_gone()
    assert launch.proc.returncode == (1 if sig == signal.SIGTERM else -signal.SIGKILL)  # 1: SignalException
    step = assert_preempted(run, "SIGTERM")
    # One process resumes the 2 x 4 checkpoint with batches of 8 (same global batch).
    assert_resumes(run_pretrain, pretrain_args(corpus_dir, run, "--max_train_steps", LONG, "--logging_steps", "1",
                                               "--checkpointing_steps", "none"), run, step)


# ------------------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_checkpoints_at_the_next_step(corpus_dir, tiny_bert, sst_trees, tmp_path, launches):
    """SIGINT to the process group (what Ctrl-C does): the launcher exits (KeyboardInterrupt), the training
    process takes the SIGINT as the flag, and the SIGTERM from its dying parent changes nothing."""
    script, args, main = classification_case(corpus_dir, tiny_bert, sst_trees)
    run = tmp_path / "run"
    argv = args(run, "--max_train_steps", LONG, "--logging_steps", "1", "--checkpointing_steps", "none")
    launch = Launch(script, argv, tmp_path / "logs")
    launches.append(launch)
    launch.wait_for_step(run, 2)
    os.killpg(launch.pid, signal.SIGINT)
    launch.assert_all_gone()
    step = assert_preempted(run, "SIGINT")
    stderr = launch.stderr()
    assert "Ctrl-C: saving a checkpoint once the ranks agree" in stderr and "interrupted" not in stderr
    assert f"at most {MAX_STEPS_BETWEEN_AGREEMENTS} optimizer steps on" in stderr  # the message keeps up with the loop
    assert_no_traceback_from_training(stderr)
    assert_resumes(main, argv, run, step)


def ctrl_c_twice(pid: int, run: Path, stderr_path: Path, timeout: float = 300) -> None:
    """Ctrl-C just after an optimizer step was logged, and again as soon as the training process reports the
    first one (so the two are not merged into one pending signal): the next step boundary, where the first would
    save, is a whole step away. Steps of 64 micro-batches make that over a second."""
    def train_lines():
        if not (run / "metrics.jsonl").exists():
            return []
        return [line for line in read_jsonl(run / "metrics.jsonl") if "split" not in line]
    deadline = time.time() + timeout
    while len(train_lines()) < 2:  # step 2 logged: the checkpoint of step 1 is complete
        assert time.time() < deadline, "no training steps:\n" + stderr_path.read_text()[-4000:]
        time.sleep(0.1)
    seen = len(train_lines())
    while len(train_lines()) == seen:
        assert time.time() < deadline, "no further training step:\n" + stderr_path.read_text()[-4000:]
        time.sleep(0.005)
    os.killpg(pid, signal.SIGINT)
    deadline = time.time() + 60
    while "Ctrl-C: saving a checkpoint" not in stderr_path.read_text():
        assert time.time() < deadline, "the first Ctrl-C was not reported:\n" + stderr_path.read_text()[-4000:]
        time.sleep(0.005)
    os.killpg(pid, signal.SIGINT)


SLOW_STEPS = ("--max_train_steps", LONG, "--logging_steps", "1", "--per_device_train_batch_size", "2",
              "--gradient_accumulation_steps", "64")  # one step per epoch (68 batches), then the epoch's evaluation


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once_without_traceback(corpus_dir, tmp_path, launches):
    """The second SIGINT raises KeyboardInterrupt in the training process: one line "interrupted", no traceback,
    and whatever is on disk is complete or ignored: `latest` resumes from the newest complete checkpoint."""
    run = tmp_path / "run"
    argv = pretrain_args(corpus_dir, run, *SLOW_STEPS, "--checkpointing_steps", "1", "--keep_last_n", "2")
    launch = Launch("pretrain.py", argv, tmp_path / "logs")
    launches.append(launch)
    ctrl_c_twice(launch.pid, run, launch.err_path)
    assert launch.assert_all_gone(within=30) < 15
    stderr = launch.stderr()
    assert stderr.count("\ninterrupted\n") == 1, stderr[-4000:]
    assert_no_traceback_from_training(stderr)
    assert not (run / "PREEMPTED").exists()  # stopped before the step boundary: no preemption save
    checkpoints = list_checkpoints(run / "checkpoints")
    for folder in checkpoints:
        validate_checkpoint(folder)
    assert_resumes(run_pretrain, argv, run, validate_checkpoint(checkpoints[0])["step"])


@pytest.mark.slow
def test_ctrl_c_twice_without_launcher_dies_by_sigint(corpus_dir, tmp_path):
    """`python train/pretrain.py` (one process needs no launcher): its own exit status is observable here.
    CPython ends an uncaught KeyboardInterrupt by re-raising SIGINT, which a shell reports as status 130."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train" / "pretrain.py"),
           *pretrain_args(corpus_dir, run, *SLOW_STEPS, "--checkpointing_steps", "none")]
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True, preexec_fn=terminal_sigint)
    try:
        ctrl_c_twice(proc.pid, run, err_path)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = err_path.read_text()
    assert proc.returncode == -signal.SIGINT, (proc.returncode, stderr[-4000:])
    assert "Traceback" not in stderr and stderr.count("\ninterrupted\n") == 1, stderr[-4000:]
    assert not (run / "PREEMPTED").exists()
