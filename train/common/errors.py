"""Turning expected failures (bad input, bad config) into one clear line instead of a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable


def _expected() -> tuple[type[BaseException], ...]:
    from .args import ConfigError
    from .checkpointing import CheckpointError
    from .distributed import LaunchError
    from .pretraining_data import DataError
    from .run_folder import HubUploadError, RunFolderError
    from .tokenizer import TokenizerError
    from .finetune_common import FinetuneDataError, FinetuneModelError
    from .squad_data import SquadFormatError
    from .sst_data import LeakageError, SSTFormatError
    return (ConfigError, CheckpointError, LaunchError, DataError, RunFolderError, HubUploadError, TokenizerError,
            SSTFormatError, LeakageError, SquadFormatError, FinetuneModelError, FinetuneDataError)


def run_main(main: Callable[[], int]) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        return main()
    except _expected() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
