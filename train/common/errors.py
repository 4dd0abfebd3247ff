"""Turning expected failures (bad input, bad config, an output folder that cannot be written) into one clear line
instead of a traceback, also under `accelerate launch`."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _expected() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.loaders import TrainingDataError
    from .data.pretraining import DataError
    from .data.squad import SquadFormatError
    from .data.sst import LeakageError, SSTFormatError
    from .distributed import LaunchError
    from .hub_access import HubUnreachableError
    from .models import FinetuneModelError
    from .run_folder import HubUploadError, RunFolderError
    from .tokenizer import TokenizerError
    return (ConfigError, CheckpointError, LaunchError, DataError, RunFolderError, HubUploadError, TokenizerError,
            SSTFormatError, LeakageError, SquadFormatError, FinetuneModelError, TrainingDataError,
            HubUnreachableError)


def run_main(main: Callable[[], int]) -> int:
    from .console import configure_logging
    configure_logging("debug" if _log_level_from_argv() == "debug" else "info",
                      bars="--disable_progress_bar" not in sys.argv[1:])
    from .run_folder import forget_output_dirs
    forget_output_dirs()  # an earlier in-process run's folders are not this run's to clean up
    try:
        code = main()
    except _expected() as err:
        return _fail(str(err))
    except Exception as err:
        line = _write_error_line(err)
        if line is not None:
            return _fail(line)
        line = _peer_stopped_line(err)
        if line is None:
            raise  # not a known failure: the traceback is what helps
        return _fail(line, root_cause=False)
    _close_process_group()
    return code


def _close_process_group() -> None:
    """A finished run closes its process group: left to the interpreter's exit, gloo's threads were seen to abort
    a rank (SIGABRT, "terminate called without an active exception") after everything had been written."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _fail(message: str, root_cause: bool = True) -> int:
    print(f"error: {message}", file=sys.stderr)
    if os.environ.get("RANK", "0") == "0":
        from .run_folder import discard_failed_writes
        discard_failed_writes()
    _record_for_torchelastic(message, root_cause)
    _note_simple_launcher()
    return 2


def _within(path: Path, folders: list[Path]) -> bool:
    candidates = {Path(os.path.abspath(path)), Path(path).resolve()}
    return any(folder == p or folder in p.parents for p in candidates for folder in folders)


def _write_error_line(err: BaseException) -> str | None:
    """One line for a failed write: always for a full disk or a read-only filesystem (nothing but a write fails
    so), for the other errnos (EACCES, ENOTDIR, ...) only inside the output folder: elsewhere they may be reads."""
    from .run_folder import checked_output_dirs
    from .safe_write import write_error_line, write_failure
    folders = checked_output_dirs()
    failure = write_failure(err, folders[-1] if folders else None)
    if failure is None:
        return None
    inside = failure.filename is None or _within(Path(failure.filename), folders)
    if not inside and failure.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return None
    return write_error_line(failure, folders[-1] if folders else None, in_run_folder=inside)


# How torch.distributed reports, on the other ranks, a rank that exited: its own error line comes before.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited")


def _peer_stopped_line(err: BaseException) -> str | None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(err, RuntimeError):
        return None
    mark = next((mark for mark in _PEER_GONE if mark in str(err)), None)
    if mark is None:
        return None
    return (f"process {os.environ.get('RANK', '?')} stopped: another process left the process group ({mark}); "
            "that process's error comes before this line")


def _record_for_torchelastic(message: str, root_cause: bool) -> None:
    """torchrun / `accelerate launch` with several processes print, in the "Root Cause" section of their
    ChildFailedError, the error file the failed rank wrote (format of torch's ErrorHandler.record_exception);
    without one it says only "To enable traceback see: ...". Written for the expected errors only."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # The root cause is the failure with the smallest timestamp, in whole seconds. A rank that failed because this
    # one stopped (no error file, or `root_cause` False) is stamped now or later, often in the same second: one
    # second earlier keeps ours first.
    stamp = int(time.time()) - (1 if root_cause else 0)
    data = {"message": {"message": f"error: {message}",
                        "extraInfo": {"py_callstack": f"error: {message}", "timestamp": str(stamp)}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass  # the message is on stderr already


def _note_simple_launcher() -> None:
    """accelerate's one-process launcher answers our exit status with a CalledProcessError traceback of its own
    (unless `accelerate launch --quiet`), printed after our line: say so, once, so the line above is read as the
    cause. Nothing is printed without that launcher or with --quiet."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE") or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return  # torchrun's agent (the Root Cause section shows our line), or no accelerate launcher at all
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return
    # `accelerate launch ...` or `python -m accelerate.commands.launch ...`; its own options end at the script
    start = next((i + 1 for i, a in enumerate(argv) if a == "accelerate.commands.launch"
                  or (a == "launch" and i > 0 and Path(argv[i - 1]).name == "accelerate")), None)
    if start is None:
        return
    options = argv[start:]
    options = options[:next((i for i, a in enumerate(options) if a.endswith(".py")), len(options))]
    if "--quiet" in options or "-q" in options:
        return
    print("note: accelerate launch reports this exit (status 2) with a CalledProcessError traceback below; the "
          "error is the line above (`accelerate launch --quiet` leaves the traceback out)", file=sys.stderr)


def _log_level_from_argv() -> str:
    # Read before parsing: the libraries' start-up lines come before the options are parsed.
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg.startswith("--log_level="):
            return arg.split("=", 1)[1]
        if arg == "--log_level" and i + 1 < len(argv):
            return argv[i + 1]
    return "info"
