"""Loading a tokenizer (hub id or local folder) or training an uncased WordPiece vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TokenizerError(ValueError):
    pass


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        hint = ("it is not a local folder, and the Hugging Face Hub could not provide it "
                "(offline? set --tokenizer_name to a local folder or use --train_tokenizer N)")
        raise TokenizerError(f"tokenizer {name_or_path!r}: {hint}\n  cause: {err}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(f"tokenizer {name_or_path!r} is not a fast tokenizer; offset mappings and batched "
                             "preprocessing need one")
    missing = [t for t in ("cls_token", "sep_token", "mask_token", "pad_token") if getattr(tokenizer, t) is None]
    if missing:
        raise TokenizerError(f"tokenizer {name_or_path!r} lacks BERT special tokens: {', '.join(missing)}")
    return tokenizer


def train_wordpiece(texts: Iterable[str], vocab_size: int, save_dir: str | Path) -> BertTokenizerFast:
    """Train an uncased WordPiece vocabulary (BERT's normaliser and pre-tokeniser) and save it."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                limit_alphabet=1000, show_progress=False)
    # tokenizer_object, not vocab_file: BertTokenizerFast(vocab_file=...) silently builds a
    # 5-token vocabulary in transformers 5.
    tokenizer = BertTokenizerFast(tokenizer_object=trainer._tokenizer, do_lower_case=True, unk_token="[UNK]",
                                  sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tokenizer.save_pretrained(str(save_dir))
    return tokenizer
