"""Is the Hugging Face Hub reachable? Asked once, in seconds, before the libraries retry for half a minute.

Offline, `datasets` and `huggingface_hub` retry each request several times (23-53 s before the first error).
One short request answers the question up front; when the Hub does not answer, the libraries are switched to
their offline mode, so what the local cache holds still loads and what it lacks fails at once with our message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

OFFLINE_HINT = ("Offline? `accelerate launch train/pretrain.py --config train/configs/smoke.yaml` runs on the "
                "repository's embedded sample; your own text: --train_file (README); HF_HUB_OFFLINE=1 uses the "
                "local Hugging Face cache without asking the Hub")
FINETUNE_HINT = ("--model_name_or_path takes a local folder too (a pretraining run's final/); HF_HUB_OFFLINE=1 "
                 "uses the local Hugging Face cache without asking the Hub")
_reachable: bool | None = None


class HubUnreachableError(RuntimeError):
    pass


def offline_mode() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 4.0) -> bool:
    """One HEAD request to the endpoint (proxies from the environment are honoured)."""
    global _reachable
    if _reachable is None:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
            _reachable = True
        except urllib.error.HTTPError:
            _reachable = True  # it answered
        except (OSError, ValueError):
            _reachable = False
    return _reachable


def finetune_hub_resources(model_args, data_args, *_) -> list[tuple[str | None, str]]:
    """What a fine-tuning run may fetch from the Hub: the model, its tokenizer, the dataset unless local files
    replace it."""
    return [(model_args.model_name_or_path, "model"), (model_args.tokenizer_name, "model"),
            (None if data_args.unused_options() else data_args.dataset_name, "dataset")]


def hub_names(resources: Iterable[tuple[str | None, str]]) -> list[tuple[str, str]]:
    """The (name, kind) pairs that would be fetched from the Hub: not None and not a local path."""
    return [(name, kind) for name, kind in resources if name and looks_like_hub_id(name)]


def looks_like_hub_id(name: str) -> bool:
    """'bert-base-uncased', 'SetFit/sst5': not a path that exists, and not shaped like one (a missing local
    folder is the loader's error to report, not the Hub's)."""
    return (not Path(name).expanduser().exists() and not name.startswith(("/", ".", "~"))
            and name.count("/") <= 1)


def in_local_cache(name: str, kind: str) -> bool:
    """Whether the Hugging Face caches hold anything for `name` (a model/tokenizer id or a dataset name).
    A cheap look at the cache folders: what exactly is there is the loaders' business."""
    from huggingface_hub import constants
    folder = name.replace("/", "--")
    hub_cache = Path(constants.HF_HUB_CACHE)
    if kind == "model":
        return (hub_cache / f"models--{folder}").is_dir()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    short = name.split("/")[-1]
    return any(hub_cache.glob(f"datasets--*{short}")) or any(datasets_cache.glob(f"*{short}"))


def _describe(resources: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name!r} ({'dataset' if kind == 'dataset' else 'model/tokenizer'})" for name, kind in resources)


def go_offline_if_unreachable(resources: list[tuple[str, str]], hint: str = OFFLINE_HINT) -> bool:
    """Call before loading `resources` from the Hub. Returns False when the run goes on offline (from the
    cache); raises HubUnreachableError at once when the cache cannot help either."""
    if not resources:
        return True
    if not offline_mode() and hub_reachable():
        return True
    missing = [(name, kind) for name, kind in resources if not in_local_cache(name, kind)]
    if missing:
        why = "HF_HUB_OFFLINE is set" if offline_mode() else "the Hugging Face Hub does not answer"
        raise HubUnreachableError(f"{why} and the local cache has no {_describe(missing)}. {hint}")
    if offline_mode():
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # The libraries read the variable when imported (transformers asks huggingface_hub): patch those already in.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True
    if int(os.environ.get("RANK", "0")) == 0:  # before the accelerator exists: plain logging, rank 0 only
        logging.getLogger(__name__).warning(f"the Hugging Face Hub does not answer: {_describe(resources)} "
                                            "from the local cache only")
    return False


def preflight(argument_types: Sequence[type], description: str, resources: Callable[..., list],
              hint: str = OFFLINE_HINT, argv=None) -> None:
    """Before a script's slow imports: answer --help at once, and ask the Hub once whether it is there; when
    neither the Hub nor the cache can provide what the run needs, say so now (one line, exit 2).

    Anything wrong with the options is left to the script's own parsing (one error message, not two)."""
    from .config import parse_config
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        parse_config(argument_types, argv, description=description)  # prints the help and exits
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = parse_config(argument_types, argv, description=description)
    except (SystemExit, Exception):
        return
    try:
        go_offline_if_unreachable(hub_names(resources(*parsed)), hint)
    except HubUnreachableError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
