"""What a failed write was: the errno behind it (also when the writer raised something other than an OSError:
safetensors, torch.save), the file it was writing (f.write() does not say), and one line saying what to do."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# What the user can do about a failed write into the run folder, by errno.
WRITE_FIXES = {
    errno.ENOSPC: "free space or choose another --output_dir",
    errno.EDQUOT: "free space (disk quota) or choose another --output_dir",
    errno.EROFS: "choose an --output_dir on a writable filesystem",
    errno.EACCES: "choose another --output_dir or make that one writable",
    errno.EPERM: "choose another --output_dir or make that one writable",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another --output_dir",
    errno.EEXIST: "something else is in the way there; remove it or choose another --output_dir",
    errno.EISDIR: "a folder is in the way there; remove it or choose another --output_dir",
}
WRITE_ERRNOS = frozenset(WRITE_FIXES)
# The same outside the run folder (a cache, /tmp): only errors that nothing but a write raises get a line there.
_ELSEWHERE_FIXES = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (disk quota)",
                    errno.EROFS: "that location must be writable"}


def write_error_line(err: OSError, fallback: Path | None = None, in_run_folder: bool = True) -> str:
    """"cannot write PATH: REASON; FIX" for an OSError of WRITE_ERRNOS."""
    where = err.filename or (f"under {fallback}" if fallback else "a file")
    fix = WRITE_FIXES[err.errno] if in_run_folder else _ELSEWHERE_FIXES[err.errno]
    return f"cannot write {where}: {err.strerror or os.strerror(err.errno)}; {fix}"


def naming(err: OSError, path: Path) -> OSError:
    """The same error naming `path`: a failed f.write() does not say which file it was writing."""
    if err.filename is not None and not str(err.filename).endswith(".tmp"):
        return err
    named = OSError(err.errno, err.strerror, str(path))  # OSError(errno, ...) picks the subclass (PermissionError...)
    named.__cause__ = err
    return named


# Writers that fail without an OSError: safetensors ("... No space left on device (os error 28)") and torch.save,
# whose RuntimeError ("[enforce fail at inline_container.cc:672] . unexpected pos ...") does not say why.
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITER = ("inline_container.cc", "PytorchStreamWriter failed", "iostream error")
_NEARLY_FULL_BYTES = 64 << 20


def _free_bytes(path: Path) -> int | None:
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def write_failure(err: BaseException, where: Path | None) -> OSError | None:
    """The OSError (of WRITE_ERRNOS) behind a failed write under `where` (the run folder, if known), also when the
    writer raised something else (then without a file name); None when it is not one."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        text = str(err)
        code = _OS_ERROR_CODE.search(text)
        if code and int(code.group(1)) in WRITE_ERRNOS:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        if where is not None and any(mark in text for mark in _TORCH_WRITER):
            free = _free_bytes(where)
            if free is not None and free < _NEARLY_FULL_BYTES:  # torch.save does not say why; a full disk does
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        err = err.__cause__ or err.__context__
    return None
