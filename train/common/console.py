"""What a run prints: our lines first, the libraries' noise silenced, progress bars, the end-of-run summary.

Libraries log at WARNING (accelerate writes 8 INFO lines per checkpoint; transformers warns at every save
that the tied decoder was "removed" from the file, which is how tied weights are saved). `--log_level debug`
brings everything back. Progress bars (tqdm) only on the main process and only on a terminal; elsewhere
(a log file, SLURM, `--disable_progress_bar`) the same information comes as plain lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from .run_folder import RunFolder

OUR_LOGGERS = ("__main__", "train", "analysis", "launch")
LIBRARY_LOGGERS = ("accelerate", "transformers", "datasets", "huggingface_hub", "DeepSpeed", "deepspeed",
                   "torch", "urllib3", "filelock", "fsspec", "tensorboard", "matplotlib", "PIL")
# Messages that repeat at every save or start and say nothing actionable.
NOISE = ("Removed shared tensor", "were not used when initializing", "Setting accelerator to")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in NOISE)


class _OurNames(logging.Filter):
    """'pretrain' instead of '__main__', and no '[RANK 0]' (accelerate's prefix) when there is one process."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "__main__":
            record.name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or record.name
        if isinstance(record.msg, str) and record.msg.startswith("[RANK 0] ") and \
                int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            record.msg = record.msg[len("[RANK 0] "):]
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (a test's capture, a redirected stream), not the one at set-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: str = "info", bars: bool = True) -> None:
    """Our loggers at `level`, the libraries' at WARNING (all at DEBUG with level 'debug'); the libraries' own
    progress bars (datasets' "Generating train split") only on a terminal and unless bars are off."""
    debug = level.lower() == "debug"
    ours = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_ours", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._ours = True  # type: ignore[attr-defined]
        handler.addFilter(_OurNames())
        if not debug:
            handler.addFilter(_DropNoise())
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.setLevel(logging.DEBUG if debug else logging.WARNING)
        if not debug and not any(isinstance(f, _DropNoise) for f in lib.filters):
            # On the logger, not only the root handler: transformers and DeepSpeed install handlers of their own
            # (DeepSpeed when first imported, often at the first save), and a logger's filters outlive that.
            lib.addFilter(_DropNoise())
    if not show_bars(not bars):
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when datasets is imported ...
        disable = getattr(sys.modules.get("datasets"), "disable_progress_bars", None)
        if disable is not None:  # ... and it usually is imported by now
            disable()
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
        try:
            import transformers
            transformers.utils.logging.set_verbosity_warning()
            transformers.utils.logging.disable_progress_bar()  # "Writing model shards" at every export
        except ImportError:
            pass


@contextlib.contextmanager
def quiet_model_loading():
    """Silence transformers' load report (a table of every missing and unused key, at WARNING) and its progress bar
    during from_pretrained: the caller reads `output_loading_info` and says what matters in one line of its own.
    At --log_level debug the report stays."""
    from transformers.utils import logging as hf_logging
    verbosity, progress_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if verbosity > logging.DEBUG:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bar:
            hf_logging.enable_progress_bar()


def fmt(value: Any, digits: int = 4) -> str:
    """Floats rounded for the terminal (the files keep full precision)."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 10 ** 7):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 10 ** digits else f"{round(value, digits)}"
    return str(value)


def show_bars(disabled: bool) -> bool:
    return not disabled and sys.stderr.isatty()


class StepProgress:
    """A bar over optimizer steps with ETA, loss and tokens/s; plain log lines when there is no terminal."""

    def __init__(self, total: int, initial: int, enabled: bool, is_main: bool, logger, desc: str = "train"):
        self.enabled, self.is_main, self.logger = enabled and is_main, is_main, logger
        self.total = total
        self.bar = None
        if self.enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """A logging step: the bar shows the values; without a bar they become one line."""
        shown = {k: v for k, v in values.items() if v is not None}
        if self.bar is not None:
            self.bar.set_postfix({k: fmt(v, 3) for k, v in shown.items()}, refresh=True)
        elif self.is_main:
            self.logger.info(f"step {step}/{self.total} " + " ".join(f"{k} {fmt(v)}" for k, v in shown.items()))

    def write(self, line: str) -> None:
        """A line (an evaluation result) that must not be overwritten by the bar."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self.logger.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def eval_batches(dataloader, enabled: bool, is_main: bool, desc: str):
    """Evaluation batches, with a transient bar on a terminal."""
    if not (enabled and is_main):
        return dataloader
    from tqdm.auto import tqdm
    return tqdm(dataloader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


class RunClock:
    def __init__(self):
        self.start = time.monotonic()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.start)
        hours, rest = divmod(seconds, 3600)
        return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def print_summary(title: str, clock: RunClock, metrics: dict[str, Any], paths: dict[str, Any],
                  output_dir, is_main: bool, notes: list[str] | None = None) -> None:
    """The end-of-run block: wall time, final metrics, where things are, how to look at the curves."""
    if not is_main:
        return
    lines = [f"== {title}: done in {clock.elapsed()} =="]
    for name, value in metrics.items():
        if value is not None:
            lines.append(f"  {name:<26} {fmt(value)}")
    for name, path in paths.items():
        if path is not None:
            lines.append(f"  {name:<26} {path}")
    for note in notes or []:
        lines.append(f"  note: {note}")
    folder = RunFolder.of(output_dir)
    if folder.tensorboard_dir.is_dir():
        lines.append(f"  {'curves':<26} tensorboard --logdir {folder.root}")
    print("\n".join(lines), file=sys.stderr, flush=True)
