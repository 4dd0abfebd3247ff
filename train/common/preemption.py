"""Preemption: a signal only sets a flag; the loop acts on it at an optimizer-step boundary.

SLURM sends SIGUSR1 (``--signal=B:USR1@N``, forwarded by launch/ scripts) or SIGTERM before it
kills a job. The handler does nothing but record the signal: saving from inside a handler could
interleave with a half-done optimizer step or a collective. Every rank then contributes its flag
to one all-reduce per step, so all ranks stop at the same step even if only one got the signal.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import threading
from pathlib import Path
from typing import Optional

MARKER = "PREEMPTED"


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.received: Optional[int] = None
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.received = signum

    @property
    def local_flag(self) -> float:
        return 1.0 if self.received is not None else 0.0

    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "none"


def write_marker(output_dir: Path, step: int, signal_name: str) -> None:
    """The batch script requeues the job when it finds this file after the step ends."""
    from .run_folder import write_json_atomic
    write_json_atomic(output_dir / MARKER, {
        "step": step, "signal": signal_name, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def clear_marker(output_dir: Path) -> None:
    try:
        (output_dir / MARKER).unlink()
    except FileNotFoundError:
        pass


def read_marker(output_dir: Path) -> Optional[dict]:
    path = output_dir / MARKER
    return json.loads(path.read_text()) if path.is_file() else None
