"""Tiny generated pretraining inputs for the SLURM runs of train/pretrain.py: text files, a fixed WordPiece
vocabulary and a preset derived from train/configs/smoke.yaml.

The tokenizer is written, not trained: runs that are compared parameter by parameter must see identical
token ids, and a trained vocabulary is not guaranteed to number equal-frequency pieces the same way twice.
"""

import random
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORDS = ("the a cat dog sat on mat ran fast slow bird flew over tree house river stone green blue red small "
         "big quiet loud morning evening under near far old young").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Small enough for 2 CPU cores; max_position_embeddings must cover max_seq_length.
MODEL = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128,
         "max_position_embeddings": 64, "max_seq_length": 64}


def write_corpus(folder, seed=0, train_docs=60, valid_docs=8):
    rng = random.Random(seed)

    def document():
        sentences = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
                     for _ in range(rng.randint(3, 6)))
        return "\n".join(sentences)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", train_docs), ("validation", valid_docs)):
        files[split] = folder / f"{split}.txt"
        files[split].write_text("\n\n".join(document() for _ in range(n)) + "\n")  # blank line between documents
    return files


def write_tokenizer(folder):
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted(set("".join(WORDS)) | set("."))
    vocab = SPECIAL + sorted(set(WORDS)) + letters + [f"##{c}" for c in letters]
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return folder


def write_preset(path, tokenizer_dir, **overrides):
    """smoke.yaml with the fixed tokenizer instead of a trained one, the tiny model and `overrides`."""
    preset = yaml.safe_load((REPO / "train" / "configs" / "smoke.yaml").read_text())
    preset.pop("train_tokenizer", None)
    preset.pop("output_dir", None)
    preset.update(MODEL, tokenizer_name=str(tokenizer_dir), **overrides)
    Path(path).write_text(yaml.safe_dump(preset, sort_keys=False))
    return Path(path)
