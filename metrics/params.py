"""Parameter counts and parameter-change analysis for BERT models.

The command line (``python -m analysis.params A [B]``: tables, JSON and CSV files) is analysis/params.py; the
fine-tuning scripts store ``parameter_summary`` in eval_results.json (train/common/models.py parameter_block).

A model is a folder written by ``save_pretrained`` (``model.safetensors`` or a sharded
``model.safetensors.index.json``, plus ``config.json``), a single ``.safetensors`` file, or a hub
id already in the local Hugging Face cache (looked up with ``local_files_only``; never
downloaded).
Weights are read with safetensors only (pickled ``pytorch_model.bin`` files are refused).
From Python, every function also takes an ``nn.Module`` or a state dict.

Conventions
-----------
* Only floating-point tensors are parameters. Integer buffers that old checkpoints carry
  (``embeddings.position_ids``) are listed under ``skipped`` and never counted.
* Tied weights are counted once. In memory a tie is two names for one tensor (same
  ``Parameter`` object, or same storage in a state dict). In a safetensors file the tied copy
  is usually absent: ``cls.predictions.decoder.weight`` is tied to the word embeddings when
  ``config.tie_word_embeddings`` is true (BertConfig's default) and ``cls.predictions.decoder.bias``
  is always tied to ``cls.predictions.bias``; when a file does hold both copies and they are
  equal, they are treated as tied. Ties are reported as ``[alias, canonical]`` pairs using the
  model's own names; the canonical name is the one kept.
* Alignment across architectures: BertForPreTraining / BertForSequenceClassification /
  BertForQuestionAnswering keep the encoder under ``bert.``, a bare BertModel has no prefix.
  Names are aligned by removing a leading ``bert.`` (and the wrapper prefixes ``module.`` from
  DDP and ``_orig_mod.`` from torch.compile). Aligned names are used for grouping and for the
  ``name`` field of a diff; ``name_a`` / ``name_b`` keep each model's own name. Head names
  (``cls.*``, ``classifier.*``, ``qa_outputs.*``) are unchanged by alignment.
* Grouping: per layer = ``embeddings``, ``encoder.layer.N``, ``pooler``, then one group per head
  (``cls.predictions``, ``cls.seq_relationship``, ``classifier``, ``qa_outputs``); per module
  type = ``embeddings.{word,position,token_type,LayerNorm}``, ``attention.{query,key,value}``,
  ``attention.output`` (dense), ``attention.LayerNorm``, ``ffn.intermediate``, ``ffn.output``,
  ``output.LayerNorm``, ``pooler``, then the head groups. Weight and bias go to the same group.

Diff statistics (computed in float64)
-------------------------------------
Per shared tensor: ``norm_a`` = ||W_A||, ``norm_b`` = ||W_B||, ``delta_norm`` = ||W_B - W_A||
(Frobenius / L2 of the flattened tensor), ``relative_change`` = delta_norm / norm_a,
``cosine`` = <W_A, W_B> / (||W_A|| ||W_B||), ``max_abs_delta``.
Aggregates treat the group as one long vector made of its tensors, so norms combine as the
square root of the sum of squares, ``relative_change`` = sqrt(sum ||dW||^2) / sqrt(sum ||W_A||^2)
and ``cosine`` = sum <W_A, W_B> / (sqrt(sum ||W_A||^2) sqrt(sum ||W_B||^2)); ratios are never
averaged. Degenerate cases: a zero ``norm_a`` gives ``relative_change`` 0 if nothing changed,
else null; ``cosine`` is 1 when the tensors are equal, null when one side is all zeros.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

BASE_PREFIX = "bert."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_GROUPS = ("cls.predictions", "cls.seq_relationship", "classifier", "qa_outputs")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}

_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")
_LAYER_MODULE_TYPES = (
    ("attention.self.query.", "attention.query"),
    ("attention.self.key.", "attention.key"),
    ("attention.self.value.", "attention.value"),
    ("attention.output.dense.", "attention.output"),
    ("attention.output.LayerNorm.", "attention.LayerNorm"),
    ("intermediate.dense.", "ffn.intermediate"),
    ("output.dense.", "ffn.output"),
    ("output.LayerNorm.", "output.LayerNorm"),
)
_EMBEDDING_TYPES = {
    "word_embeddings": "embeddings.word",
    "position_embeddings": "embeddings.position",
    "token_type_embeddings": "embeddings.token_type",
    "LayerNorm": "embeddings.LayerNorm",
}
MODULE_TYPE_ORDER = (
    "embeddings.word", "embeddings.position", "embeddings.token_type", "embeddings.LayerNorm",
    *(t for _, t in _LAYER_MODULE_TYPES), "pooler", *HEAD_GROUPS,
)
ENCODER_MODULE_TYPES = tuple(t for _, t in _LAYER_MODULE_TYPES)


class ParamsError(Exception):
    """A model folder or file that cannot be analysed; the message names the path."""


@dataclass
class ModelParams:
    """Deduplicated floating-point parameters of one model.

    ``tensors`` maps the model's own names to tensors (meta tensors when only shapes were
    read); tied aliases are not in it but listed in ``tied`` as [alias, canonical].
    """

    tensors: dict[str, torch.Tensor]
    tied: list[list[str]] = field(default_factory=list)
    trainable: set[str] | None = None  # None: unknown (a file), assumed all trainable
    skipped: list[str] = field(default_factory=list)
    architecture: str | None = None
    config: dict = field(default_factory=dict)
    source: str = "<memory>"
    notes: list[str] = field(default_factory=list)

    def aligned(self) -> dict[str, str]:
        """Aligned name -> own name."""
        out = {}
        for name in self.tensors:
            key = align_name(name)
            if key in out:
                raise ParamsError(f"{self.source}: {out[key]!r} and {name!r} align to the same name")
            out[key] = name
        return out


# ----------------------------------------------------------------------------- names


def align_name(name: str) -> str:
    """Strip wrapper prefixes and the ``bert.`` base-model prefix."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name[len(BASE_PREFIX):] if name.startswith(BASE_PREFIX) else name


def layer_of(name: str) -> str:
    """Per-layer group of a (raw or aligned) parameter name."""
    name = align_name(name)
    match = _LAYER_RE.match(name)
    if match:
        return f"encoder.layer.{match.group(1)}"
    for group in ("embeddings", "pooler", *HEAD_GROUPS):
        if name == group or name.startswith(group + "."):
            return group
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "cls" and len(parts) > 2 else parts[0]


def module_type_of(name: str) -> str:
    """Per-module-type group of a parameter name (see the module docstring)."""
    name = align_name(name)
    match = _LAYER_RE.match(name)
    if match:
        rest = match.group(2)
        for prefix, kind in _LAYER_MODULE_TYPES:
            if rest.startswith(prefix):
                return kind
        return "encoder.other"
    if name.startswith("embeddings."):
        return _EMBEDDING_TYPES.get(name.split(".")[1], "embeddings.other")
    return layer_of(name)


def _group_sort_key(group: str) -> tuple:
    if group == "embeddings" or group.startswith("embeddings."):
        return (0, 0, MODULE_TYPE_ORDER.index(group) if group in MODULE_TYPE_ORDER else 99, group)
    match = re.match(r"^encoder\.layer\.(\d+)$", group)
    if match:
        return (1, int(match.group(1)), 0, group)
    if group in ENCODER_MODULE_TYPES:
        return (1, 0, ENCODER_MODULE_TYPES.index(group), group)
    if group == "pooler":
        return (2, 0, 0, group)
    if group in HEAD_GROUPS:
        return (3, HEAD_GROUPS.index(group), 0, group)
    return (4, 0, 0, group)


# ----------------------------------------------------------------------------- loading


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read config.json: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: config.json is not a JSON object")
    return data


def _from_hub_cache(name: str) -> Path | None:
    """A hub id (e.g. bert-base-uncased) already in the local cache; never downloads."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name, local_files_only=True,
                                      allow_patterns=["*.safetensors", "*.json"]))
    except Exception:  # not cached, or not a valid id: the caller reports the path
        return None


def _safetensors_files(path: Path) -> tuple[list[Path], dict]:
    if not path.exists():
        cached = _from_hub_cache(str(path))
        if cached is None:
            raise ParamsError(f"model path not found: {path} (not a folder, a .safetensors file "
                              "or a hub id in the local cache)")
        path = cached
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ParamsError(f"{path}: not a .safetensors file (pickled checkpoints are not read)")
        return [path], _read_config(path.parent)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ParamsError(f"{index}: malformed safetensors index: {exc}") from exc
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ParamsError(f"{index}: shards listed but missing: {', '.join(missing)}")
        return files, _read_config(path)
    single = path / "model.safetensors"
    files = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {', '.join(pickles)}; pickled weights are not read)" if pickles else ""
        raise ParamsError(f"no safetensors weights in {path}: expected model.safetensors "
                          f"from save_pretrained{hint}")
    return files, _read_config(path)


def _load_files(files: list[Path], load_data: bool) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if load_data:
                        tensors[key] = handle.get_tensor(key)
                    else:
                        sliced = handle.get_slice(key)
                        dtype = _SAFETENSORS_DTYPES.get(sliced.get_dtype(), torch.float32)
                        tensors[key] = torch.empty(sliced.get_shape(), dtype=dtype, device="meta")
        except ParamsError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise ParamsError(f"{file}: cannot read safetensors file: {exc}") from exc
    return tensors


def _materialise(files: list[Path], name: str) -> torch.Tensor:
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
    raise KeyError(name)


def _file_ties(tensors: dict[str, torch.Tensor], config: dict, files: list[Path]) -> tuple[list, list]:
    """Ties of BERT's MLM head in a saved file: absent copies, or present and equal copies."""
    ties, notes = [], []
    names = set(tensors)
    tie_word = bool(config.get("tie_word_embeddings", True))
    for dense in sorted(n for n in names if n.endswith("predictions.transform.dense.weight")):
        head = dense[: -len("transform.dense.weight")]  # e.g. "cls.predictions."
        words = [n for n in names if align_name(n) == "embeddings.word_embeddings.weight"]
        candidates = [(head + "decoder.weight", words[0] if words else None, tie_word),
                      (head + "decoder.bias", head + "bias" if head + "bias" in names else None, True)]
        for alias, canonical, tied_by_config in candidates:
            if canonical is None:
                continue
            if alias not in names:
                if tied_by_config:
                    ties.append([alias, canonical])
                else:
                    notes.append(f"{alias} absent and tie_word_embeddings is false")
                continue
            a, b = tensors[alias], tensors[canonical]
            if a.is_meta:
                a, b = _materialise(files, alias), _materialise(files, canonical)
            if a.shape == b.shape and torch.equal(a, b):
                ties.append([alias, canonical])
                del tensors[alias]
    return ties, notes


def _dedupe_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict, list]:
    """Collapse names that share storage; prefer the name that is not a decoder alias."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if tensor.is_meta or tensor.numel() == 0:
            key = ("unique", name)
        else:
            key = (tensor.device.type, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(),
                   tensor.dtype)
        groups.setdefault(key, []).append(name)
    order = {n: i for i, n in enumerate(state)}
    tensors, ties = {}, []
    for names in groups.values():
        names = sorted(names, key=lambda n: (".decoder." in n, order[n]))
        tensors[names[0]] = state[names[0]]
        ties.extend([alias, names[0]] for alias in names[1:])
    return dict(sorted(tensors.items(), key=lambda kv: order[kv[0]])), ties


def load_params(source, *, load_data: bool = True) -> ModelParams:
    """Read parameters from a save_pretrained folder / .safetensors file / nn.Module / state dict.

    ``load_data=False`` reads only shapes from files (meta tensors): enough for counting.
    """
    if isinstance(source, ModelParams):
        return source
    if isinstance(source, torch.nn.Module):
        model = source
        config = getattr(model, "config", None)
        config = config.to_dict() if hasattr(config, "to_dict") else {}
        by_id: dict[int, str] = {}
        tensors, ties, trainable, skipped = {}, [], set(), []
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in by_id:
                ties.append([name, by_id[id(param)]])
                continue
            by_id[id(param)] = name
            if not _is_float(param.dtype):
                skipped.append(name)
                continue
            tensors[name] = param.detach()
            if param.requires_grad:
                trainable.add(name)
        return ModelParams(tensors, ties, trainable, skipped, type(model).__name__, config,
                           f"<{type(model).__name__}>")
    if isinstance(source, Mapping):
        floats = {k: v for k, v in source.items() if isinstance(v, torch.Tensor) and _is_float(v.dtype)}
        skipped = [k for k in source if k not in floats]
        tensors, ties = _dedupe_state_dict(floats)
        return ModelParams(tensors, ties, None, skipped, None, {}, "<state_dict>")
    if isinstance(source, (str, Path)):
        path = Path(source)
        files, config = _safetensors_files(path)
        raw = _load_files(files, load_data)
        skipped = [k for k, v in raw.items() if not _is_float(v.dtype)]
        tensors = {k: v for k, v in raw.items() if _is_float(v.dtype)}
        if load_data:
            tensors, ties = _dedupe_state_dict(tensors)
        else:
            ties = []
        more_ties, notes = _file_ties(tensors, config, files)
        ties += [t for t in more_ties if t not in ties]
        arch = (config.get("architectures") or [None])[0]
        if not config:
            notes.append(f"no config.json next to {path}: architecture unknown")
        return ModelParams(tensors, ties, None, skipped, arch, config, str(path), notes)
    raise TypeError(f"cannot read parameters from {type(source).__name__}")


# ----------------------------------------------------------------------------- counting


def count_parameters(model_or_state_dict) -> dict:
    """Parameter counts, tied weights counted once.

    Returns {"source", "architecture", "total", "trainable", "non_trainable",
    "trainable_assumed", "num_tensors", "by_module": {group: count}, "encoder_layers",
    "has_pooler", "tied": [[alias, canonical], ...], "tied_not_counted", "skipped", "notes"}.
    """
    mp = load_params(model_or_state_dict, load_data=False)
    by_module: dict[str, int] = {}
    for name, tensor in mp.tensors.items():
        group = layer_of(name)
        by_module[group] = by_module.get(group, 0) + tensor.numel()
    total = sum(by_module.values())
    if mp.trainable is None:
        trainable = total
    else:
        trainable = sum(t.numel() for n, t in mp.tensors.items() if n in mp.trainable)
    # numel of a tie's alias: that of its canonical tensor.
    tied_numel = sum(mp.tensors[c].numel() for _, c in mp.tied if c in mp.tensors)
    return {
        "source": mp.source,
        "architecture": mp.architecture,
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "trainable_assumed": mp.trainable is None,
        "num_tensors": len(mp.tensors),
        "by_module": dict(sorted(by_module.items(), key=lambda kv: _group_sort_key(kv[0]))),
        "encoder_layers": sum(1 for g in by_module if g.startswith("encoder.layer.")),
        "has_pooler": "pooler" in by_module,
        "tied": [list(t) for t in mp.tied],
        "tied_not_counted": tied_numel,
        "skipped": list(mp.skipped),
        "notes": list(mp.notes),
    }


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def head_changes(before, after) -> dict:
    """What ``after`` adds to and drops from ``before`` (aligned names; tied aliases ignored).

    Returns {"added": {own name in after: numel}, "dropped": {own name in before: numel},
    "resized": {aligned name: {"before": [shape], "after": [shape], "delta": int}},
    "added_shapes", "dropped_shapes": {name: [shape]},
    "added_modules", "dropped_modules": {group: numel},
    "added_total", "dropped_total", "resized_delta",
    "pooler": {"before": bool, "after": bool}}.
    """
    a, b = load_params(before, load_data=False), load_params(after, load_data=False)
    names_a, names_b = a.aligned(), b.aligned()
    out: dict = {"added": {}, "dropped": {}, "resized": {}, "added_shapes": {},
                 "dropped_shapes": {}, "added_modules": {}, "dropped_modules": {}}
    for key, own in names_b.items():
        if key not in names_a:
            t = b.tensors[own]
            out["added"][own], out["added_shapes"][own] = t.numel(), _shape(t)
            group = layer_of(key)
            out["added_modules"][group] = out["added_modules"].get(group, 0) + t.numel()
    for key, own in names_a.items():
        if key not in names_b:
            t = a.tensors[own]
            out["dropped"][own], out["dropped_shapes"][own] = t.numel(), _shape(t)
            group = layer_of(key)
            out["dropped_modules"][group] = out["dropped_modules"].get(group, 0) + t.numel()
        else:
            t_a, t_b = a.tensors[own], b.tensors[names_b[key]]
            if t_a.shape != t_b.shape:
                out["resized"][key] = {"before": _shape(t_a), "after": _shape(t_b),
                                       "delta": t_b.numel() - t_a.numel()}
    out["added_total"] = sum(out["added"].values())
    out["dropped_total"] = sum(out["dropped"].values())
    out["resized_delta"] = sum(r["delta"] for r in out["resized"].values())
    out["pooler"] = {"before": any(layer_of(k) == "pooler" for k in names_a),
                     "after": any(layer_of(k) == "pooler" for k in names_b)}
    return out


def format_shape(shape: list[int]) -> str:
    """A shape as text: "768x5", "scalar" for []."""
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _explain(before: dict, after: dict, changes: dict) -> str:
    delta = after["total"] - before["total"]
    parts = [f"Total parameters went from {before['total']:,} ({before['architecture'] or 'model'}) "
             f"to {after['total']:,} ({after['architecture'] or 'model'}), a change of {delta:+,}."]
    if changes["added"]:
        items = ", ".join(f"{n} [{format_shape(changes['added_shapes'][n])}] = {c:,}"
                          for n, c in changes["added"].items())
        parts.append(f"Added {changes['added_total']:,}: {items}.")
    else:
        parts.append("Nothing was added.")
    if changes["dropped"]:
        mods = ", ".join(f"{g}.* = {c:,}" for g, c in changes["dropped_modules"].items())
        parts.append(f"Dropped {changes['dropped_total']:,}: {mods}.")
    else:
        parts.append("Nothing was dropped.")
    if changes["resized"]:
        items = ", ".join(f"{n} {format_shape(r['before'])} -> {format_shape(r['after'])} ({r['delta']:+,})"
                          for n, r in changes["resized"].items())
        parts.append(f"Resized: {items}.")
    pooler = changes["pooler"]
    if pooler["before"] != pooler["after"]:
        parts.append("The pooler (dense hidden x hidden + bias) is "
                     + ("absent after (add_pooling_layer=False)." if pooler["before"]
                        else "new after."))
    parts.append(f"Check: {before['total']:,} - {changes['dropped_total']:,} + "
                 f"{changes['added_total']:,}"
                 + (f" {changes['resized_delta']:+,}" if changes["resized"] else "")
                 + f" = {after['total']:,}.")
    ties = {a for a, _ in before["tied"]} - {a for a, _ in after["tied"]}
    if ties:
        parts.append("Not counted as dropped because tied (counted once): " + ", ".join(sorted(ties)) + ".")
    return " ".join(parts)


def parameter_summary(before, after) -> dict:
    """Counts before/after plus what was added and dropped, with a plain-English explanation.

    Returns {"before": S, "after": S, "delta", "added": {name: numel}, "dropped": {name: numel},
    "added_modules", "dropped_modules", "resized", "added_total", "dropped_total",
    "explanation"} with S = {"architecture", "source", "total", "trainable", "non_trainable",
    "has_pooler", "tied", "by_module"}. JSON-serialisable (fine-tuning scripts store it in
    eval_results.json under "params").
    """
    a, b = load_params(before, load_data=False), load_params(after, load_data=False)
    counts_a, counts_b = count_parameters(a), count_parameters(b)
    changes = head_changes(a, b)
    keep = ("architecture", "source", "total", "trainable", "non_trainable", "has_pooler", "tied",
            "by_module")
    summary = {
        "before": {k: counts_a[k] for k in keep},
        "after": {k: counts_b[k] for k in keep},
        "delta": counts_b["total"] - counts_a["total"],
        "added": changes["added"],
        "dropped": changes["dropped"],
        "added_modules": changes["added_modules"],
        "dropped_modules": changes["dropped_modules"],
        "resized": changes["resized"],
        "added_total": changes["added_total"],
        "dropped_total": changes["dropped_total"],
        "explanation": _explain(counts_a, counts_b, changes),
    }
    return summary


# ----------------------------------------------------------------------------- diff


class _Acc:
    """Sums of squares and dot products for aggregated statistics."""

    def __init__(self):
        self.numel = self.num = 0
        self.sq_a = self.sq_b = self.sq_d = self.dot = 0.0
        self.max_abs = 0.0

    def add(self, numel, sq_a, sq_b, sq_d, dot, max_abs):
        self.numel += numel
        self.num += 1
        self.sq_a += sq_a
        self.sq_b += sq_b
        self.sq_d += sq_d
        self.dot += dot
        self.max_abs = max(self.max_abs, max_abs)

    def stats(self) -> dict:
        norm_a, norm_b, delta = math.sqrt(self.sq_a), math.sqrt(self.sq_b), math.sqrt(self.sq_d)
        if norm_a > 0:
            rel = delta / norm_a
        else:
            rel = 0.0 if delta == 0 else None
        if delta == 0:
            cos = 1.0
        elif norm_a > 0 and norm_b > 0:
            cos = max(-1.0, min(1.0, self.dot / (norm_a * norm_b)))
        else:
            cos = None
        return {"numel": self.numel, "num_tensors": self.num, "norm_a": norm_a, "norm_b": norm_b,
                "delta_norm": delta, "relative_change": rel, "cosine": cos,
                "max_abs_delta": self.max_abs}


def diff_parameters(state_a, state_b) -> dict:
    """Compare two models tensor by tensor after aligning names (see module docstring).

    Returns {"a": {"source", "architecture", "total", "tied"}, "b": {...}, "alignment",
    "only_in_a": {own name: numel}, "only_in_b": {...},
    "shape_changed": {name: {"a": [shape], "b": [shape]}},
    "tensors": [{"name", "name_a", "name_b", "layer", "module_type", "shape", "numel",
                 "norm_a", "norm_b", "delta_norm", "relative_change", "cosine",
                 "max_abs_delta"}, ...],
    "by_layer": [{"group", ...stats}], "by_module_type": [...],
    "by_layer_module": [{"layer", "module_type", ...stats}], "overall": {...stats}}
    """
    a, b = load_params(state_a), load_params(state_b)
    names_a, names_b = a.aligned(), b.aligned()
    for mp in (a, b):
        if any(t.is_meta for t in mp.tensors.values()):
            raise ParamsError(f"{mp.source}: tensors have no data (meta device)")
    out: dict = {
        "a": {"source": a.source, "architecture": a.architecture,
              "total": sum(t.numel() for t in a.tensors.values()), "tied": a.tied},
        "b": {"source": b.source, "architecture": b.architecture,
              "total": sum(t.numel() for t in b.tensors.values()), "tied": b.tied},
        "alignment": f"names compared without the leading '{BASE_PREFIX}' and wrapper prefixes",
        "only_in_a": {names_a[k]: a.tensors[names_a[k]].numel() for k in names_a if k not in names_b},
        "only_in_b": {names_b[k]: b.tensors[names_b[k]].numel() for k in names_b if k not in names_a},
        "shape_changed": {},
        "tensors": [],
    }
    by_layer: dict[str, _Acc] = {}
    by_type: dict[str, _Acc] = {}
    by_both: dict[tuple[str, str], _Acc] = {}
    overall = _Acc()
    for key, own_a in names_a.items():
        if key not in names_b:
            continue
        own_b = names_b[key]
        ta, tb = a.tensors[own_a], b.tensors[own_b]
        if ta.shape != tb.shape:
            out["shape_changed"][key] = {"a": _shape(ta), "b": _shape(tb)}
            continue
        va = ta.detach().to("cpu", torch.float64).reshape(-1)
        vb = tb.detach().to("cpu", torch.float64).reshape(-1)
        d = vb - va
        sq_a, sq_b, sq_d = float(va @ va), float(vb @ vb), float(d @ d)
        dot = float(va @ vb)
        max_abs = float(d.abs().max()) if d.numel() else 0.0
        one = _Acc()
        one.add(va.numel(), sq_a, sq_b, sq_d, dot, max_abs)
        layer, mtype = layer_of(key), module_type_of(key)
        row = {"name": key, "name_a": own_a, "name_b": own_b, "layer": layer, "module_type": mtype,
               "shape": _shape(ta)}
        stats = one.stats()
        stats.pop("num_tensors")
        row.update(stats)
        out["tensors"].append(row)
        for acc in (by_layer.setdefault(layer, _Acc()), by_type.setdefault(mtype, _Acc()),
                    by_both.setdefault((layer, mtype), _Acc()), overall):
            acc.add(va.numel(), sq_a, sq_b, sq_d, dot, max_abs)
    out["tensors"].sort(key=lambda r: (_group_sort_key(r["layer"]), _group_sort_key(r["module_type"]),
                                      r["name"]))
    out["by_layer"] = [{"group": g, **by_layer[g].stats()}
                       for g in sorted(by_layer, key=_group_sort_key)]
    out["by_module_type"] = [{"group": g, **by_type[g].stats()}
                             for g in sorted(by_type, key=_group_sort_key)]
    out["by_layer_module"] = [{"layer": layer, "module_type": mtype, **by_both[(layer, mtype)].stats()}
                              for layer, mtype in sorted(by_both, key=lambda lm: (_group_sort_key(lm[0]),
                                                                                  _group_sort_key(lm[1])))]
    out["overall"] = overall.stats()
    return out
