"""Preemption: a signal only sets a flag; the loop acts on it at an optimizer-step boundary.

SLURM sends SIGUSR1 (``--signal=B:USR1@N``, forwarded by launch/ scripts) or SIGTERM before it
kills a job. The handler does nothing but record the signal: saving from inside a handler could
interleave with a half-done optimizer step or a collective. Every rank then contributes its flag
to one all-reduce per step, so all ranks stop at the same step even if only one got the signal.

Stopping by hand goes the same way. Ctrl-C (SIGINT) sets the flag too; a second SIGINT raises
KeyboardInterrupt (no traceback: one line "interrupted", then death by SIGINT, shell status 130),
a third kills at once. Checkpoints and markers are written to a temporary name and renamed, so
stopping at any moment leaves nothing half-written that a resume would take for complete.

`accelerate launch` with one process does not pass SIGTERM on: the launcher just dies and its child
would go on training as an orphan. Each training process started by a launcher therefore asks the
kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), which is the flag again.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .run_folder import RunFolder, write_json_atomic

MARKER = RunFolder.PREEMPTED
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# argv[0..2] of the processes that start training processes: accelerate's CLI (console script or -m) and
# the torch elastic agent it runs for multi-process launches (torchrun / -m torch.distributed.run).
LAUNCHER_NAMES = frozenset({"accelerate", "accelerate-launch", "torchrun", "accelerate.commands.launch",
                            "accelerate.commands.accelerate_cli", "torch.distributed.run", "torch.distributed.launch"})
# Set by those launchers in their children's environment. Users set some ACCELERATE_* variables themselves too,
# so "adopted by init" counts as "the launcher died" only with the agent's variable or all of the simple launcher's.
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")
SIMPLE_LAUNCHER_ENV = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU", "ACCELERATE_DYNAMO_BACKEND")

logger = logging.getLogger(__name__)


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM), interrupt: bool = True):
        self.received: int | None = None  # the first signal: what PREEMPTED reports
        self.interrupts = 0
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            signal.signal(sig, self._handler)
        # An inherited SIG_IGN (`cmd &` in a script) is kept: that process was meant to ignore Ctrl-C.
        current = signal.getsignal(signal.SIGINT)
        if interrupt and (current is signal.default_int_handler or isinstance(getattr(current, "__self__", None),
                                                                              PreemptionFlag)):
            signal.signal(signal.SIGINT, self._handler)
            _install_interrupted_hook()
        _die_with_launcher()

    def _handler(self, signum, frame) -> None:
        # SIGTERM/SIGUSR1 never stop at once: PDEATHSIG sends SIGTERM when a launcher that got Ctrl-C dies,
        # and SLURM may send USR1 and TERM for the same job. Only a second SIGINT means "now".
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= 2:
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # a third Ctrl-C kills, even while unwinding
                raise KeyboardInterrupt
            if os.environ.get("RANK", "0") == "0":  # os.write: no locks inside a signal handler
                os.write(2, b"\nCtrl-C: saving a checkpoint once the ranks agree (at most 25 optimizer steps on); "
                         b"Ctrl-C again stops at once\n")
        if self.received is None:
            self.received = signum

    @property
    def local_flag(self) -> float:
        return 1.0 if self.received is not None else 0.0

    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "none"


_hook_installed = False


def _install_interrupted_hook() -> None:
    """An uncaught KeyboardInterrupt (the stack is unwound: finally blocks and with-exits ran) prints one line
    instead of a traceback, and the process dies by SIGINT at once: status 130 to a shell, and a shell script
    that runs it stops too. CPython would re-raise SIGINT itself, but only after the interpreter's shutdown, and
    there, with transformers' model classes imported, something resets that and the status is a plain 1."""
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        print("interrupted", file=sys.stderr, flush=True)
        try:
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        os._exit(128 + signal.SIGINT)  # not reached: a signal sent to oneself is delivered before kill() returns
    sys.excepthook = hook
    _hook_installed = True


def _is_launcher(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
    except OSError:
        return False
    return any(os.path.basename(arg.decode(errors="replace")) in LAUNCHER_NAMES for arg in argv)


def _die_with_launcher() -> bool:
    """Linux: SIGTERM to this process when the launcher that started it dies (the flag, not a kill).
    Only under a launcher: a script run from a shell keeps its nohup semantics. Returns whether armed."""
    if not sys.platform.startswith("linux") or not any(name in os.environ for name in LAUNCHER_ENV):
        return False
    parent = os.getppid()
    if not _is_launcher(parent):
        launched = "TORCHELASTIC_RUN_ID" in os.environ or all(name in os.environ for name in SIMPLE_LAUNCHER_ENV)
        if parent == 1 and launched:  # adopted by init: the launcher died before this point (during the imports)
            logger.warning("the launcher that started this process has exited: stopping at the first optimizer step")
            os.kill(os.getpid(), signal.SIGTERM)
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # it died between getppid() and prctl(): no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def write_marker(output_dir: Path | RunFolder, step: int, signal_name: str) -> None:
    """The batch script requeues the job when it finds this file after the step ends."""
    write_json_atomic(RunFolder.of(output_dir).preempted_marker, {
        "step": step, "signal": signal_name, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def clear_marker(output_dir: Path | RunFolder) -> None:
    try:
        RunFolder.of(output_dir).preempted_marker.unlink()
    except FileNotFoundError:
        pass


def read_marker(output_dir: Path | RunFolder) -> dict | None:
    path = RunFolder.of(output_dir).preempted_marker
    return json.loads(path.read_text()) if path.is_file() else None
