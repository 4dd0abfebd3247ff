"""Typed options of each task: pretraining (model shape, text), fine-tuning (the model to start from) and one
dataclass per fine-tuning task.

Parsed together with `OptimizationArguments` and `RunArguments` (train/common/config.py) by
`parse_config`, so `--config train/configs/sst_*.yaml | squad_*.yaml` presets and the command line
work as for pretraining. Derived values are methods; parsed values are never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, OptimizationArguments, RunArguments, _choice, _help, _positive

DOC_STRIDE_HELP = ("Context tokens that two consecutive windows of a long context share (the Hugging Face "
                   "tokenizer's `stride`: an OVERLAP, not the step between window starts of the original BERT "
                   "run_squad.py). Must be smaller than max_seq_length - max_query_length - 3.")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

MAX_QUERY_LENGTH_HELP = "Questions longer than this many tokens are cut to their first max_query_length tokens."


@dataclass
class FinetuneModelArguments:
    model_name_or_path: str = _help(
        "Checkpoint to start from: a hub id (bert-base-uncased) or a local folder written by save_pretrained, "
        "e.g. a pretraining run's final/ (its MLM/NSP heads are dropped, the task head is added and initialised "
        "from --seed) or a fine-tuning run's final/ (for --do_train false).", default="bert-base-uncased")
    tokenizer_name: str | None = _help("Tokenizer (hub id or folder); default: the one saved with the model.",
                                          default=None)
    trust_remote_code: bool = _help("Allow model code from the hub repository (only for repositories you trust).",
                                    default=False)
    attn_implementation: str = _help("'sdpa' (fused scaled-dot-product attention) or 'eager'.", default="sdpa")
    hidden_dropout_prob: float | None = _help("Override the checkpoint's dropout on hidden states.", default=None)
    attention_probs_dropout_prob: float | None = _help("Override the checkpoint's attention dropout.",
                                                          default=None)
    classifier_dropout: float | None = _help(
        "Dropout before the task head (default: hidden_dropout_prob, as BERT does).", default=None)
    torch_compile: bool = _help("torch.compile the encoder.", default=False)
    random_init: bool = _help(
        "Take only the config and tokenizer from --model_name_or_path and initialise every weight randomly from "
        "--seed: the control that shows what pretraining adds (same shape, same vocabulary, no learned weights).",
        default=False)

    def __post_init__(self):
        _choice("attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")

    def config_overrides(self) -> dict:
        """Dropout settings given on the command line, to apply on top of the checkpoint's config."""
        names = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


@dataclass
class FinetuneDataArguments:
    """What both tasks share: eval-only mode, sample caps and batching for throughput."""

    do_train: bool = _help("False: no training; evaluate --model_name_or_path as it is (a fine-tuned final/) and "
                           "write the run's predictions and eval_results.json.", default=True)
    group_by_length: bool = _help(
        "Training batches of similar length (less padding): each epoch's seeded permutation is cut into groups "
        "of 50 global batches, each group sorted by length and its batches shuffled. Deterministic per seed and "
        "epoch, so resume replays the same batches.", default=True)
    pad_to_multiple_of: int = _help("Dynamic padding to the longest sequence of a batch, rounded up to this.",
                                    default=8)
    max_train_samples: int | None = _help("Use only the first N training examples (smoke runs).", default=None)
    max_eval_samples: int | None = _help("Use only the first N examples of each evaluation split.", default=None)

    def __post_init__(self):
        _positive("pad_to_multiple_of", self.pad_to_multiple_of)
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))


@dataclass
class ClassificationDataArguments(FinetuneDataArguments):
    """SST-5 sources (exactly one of: --sst_trees_dir, --sst_dir, --train_file, else the hub --dataset_name)
    and the classification protocol (what to train on, seeds, early stopping, class weights)."""

    sst_trees_dir: str | None = _help("Official PTB trees: a folder with train.txt, dev.txt, test.txt (every "
                                         "node labelled 0-4).", default=None)
    sst_dir: str | None = _help("Original release folder: dictionary.txt, sentiment_labels.txt, "
                                   "datasetSentences.txt, datasetSplit.txt.", default=None)
    train_file: str | None = _help("CSV/TSV/JSON/JSONL training sentences with --text_column/--label_column.",
                                      default=None)
    validation_file: str | None = _help("Dev sentences (same format as --train_file).", default=None)
    test_file: str | None = _help("Test sentences (optional).", default=None)
    text_column: str | None = _help("Text column of the files or the hub dataset (default: 'text'; for known "
                                       "hub datasets their own column).", default=None)
    label_column: str | None = _help("Label column: class ids 0..4, sentiment values in [0, 1] or label names "
                                        "(default: 'label').", default=None)
    dataset_name: str | None = _help("Hub dataset with train/validation(/test) splits, used when no local "
                                        "source is given (e.g. SetFit/sst5).", default="SetFit/sst5")
    dataset_config_name: str | None = _help("Hub dataset configuration.", default=None)
    train_on: str = _help("'sentences', or 'phrases' = every labelled phrase of the training sentences (the "
                          "standard fine-grained SST-5 setup; needs the trees or the original release). Evaluation "
                          "is always on dev/test sentences (and, where available, phrases).", default="sentences")
    max_seq_length: int = _help("Tokens per example, [CLS] and [SEP] included (longer texts are truncated).",
                                default=128)
    class_weights: bool = _help("Weight the cross-entropy by inverse class frequency of the training examples.",
                                default=False)
    seeds: str | None = _help("Comma-separated seeds, e.g. 1,2,3: one run per seed in OUTPUT_DIR/seed_N/, then "
                                 "mean and std in OUTPUT_DIR/eval_results.json.", default=None)
    early_stopping_patience: int | None = _help(
        "Stop after N epochs without a better dev sentence accuracy, and evaluate/export the best-dev model.",
        default=None)

    def __post_init__(self):
        super().__post_init__()
        _choice("train_on", self.train_on, ("sentences", "phrases"))
        local = [k for k in ("sst_trees_dir", "sst_dir", "train_file") if getattr(self, k)]
        if len(local) > 1:
            raise ConfigError(f"give one data source, not {' and '.join('--' + k for k in local)}")
        if self.train_file and not self.validation_file:
            raise ConfigError("--train_file needs --validation_file (the dev sentences)")
        if not local and not self.dataset_name:
            raise ConfigError("give a data source: --sst_trees_dir, --sst_dir, --train_file or --dataset_name")
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.early_stopping_patience is not None:
            _positive("early_stopping_patience", self.early_stopping_patience)
        self.seed_list()

    def seed_list(self) -> list[int]:
        if not self.seeds:
            return []
        try:
            seeds = [int(s) for s in str(self.seeds).split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"seeds must be comma-separated integers like 1,2,3; got {self.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must be distinct integers like 1,2,3; got {self.seeds!r}")
        return seeds

    def source(self) -> str:
        return self.sst_trees_dir or self.sst_dir or self.train_file or self.dataset_name

    def unused_options(self) -> list[str]:
        local = self.sst_trees_dir or self.sst_dir or self.train_file
        return ["dataset_name"] if local else []


@dataclass
class QADataArguments(FinetuneDataArguments):
    """SQuAD sources (official JSON files, or the hub's squad / squad_v2) and the window/answer settings."""

    dataset_name: str | None = _help("Hub dataset ('squad' or 'squad_v2') used when no --train_file / "
                                        "--validation_file is given.", default="squad")
    dataset_config_name: str | None = _help("Hub dataset configuration.", default=None)
    train_file: str | None = _help("Official SQuAD JSON (data -> paragraphs -> qas) to train on.", default=None)
    validation_file: str | None = _help("Official SQuAD JSON to evaluate on.", default=None)
    train_articles: int | None = _help(
        "Split --train_file by article: the first N articles train, the remaining ones evaluate (no "
        "--validation_file then). E.g. 40 on dev-v1.1.json trains on 40 articles and evaluates on 8.", default=None)
    version_2_with_negative: bool = _help("SQuAD v2.0: questions may have no answer (predicted as '').",
                                          default=False)
    null_score_diff_threshold: float = _help(
        "v2.0: predict no answer when null score - best span score > this.", default=0.0)
    max_seq_length: int = _help("Tokens per window: [CLS] question [SEP] context [SEP].", default=384)
    doc_stride: int = _help(DOC_STRIDE_HELP, default=128)
    max_query_length: int = _help(MAX_QUERY_LENGTH_HELP, default=64)
    n_best_size: int = _help("Start and end candidates per window, and n-best list length per question.",
                             default=20)
    max_answer_length: int = _help("Longest answer span in tokens.", default=30)
    answer_window: int = _help("An answer not at answer_start is searched within +-N characters (then fixed and "
                               "counted in the data report, else dropped).", default=50)
    aux_metrics: bool = _help("Also report BLEU/ROUGE/METEOR (auxiliary; METEOR needs WordNet: "
                              "python -m analysis.wordnet_setup).", default=True)

    def __post_init__(self):
        super().__post_init__()
        for name in ("max_query_length", "n_best_size", "max_answer_length"):
            _positive(name, getattr(self, name))
        capacity = self.max_seq_length - self.max_query_length - 3
        if capacity <= 0 or not 0 <= self.doc_stride < capacity:
            raise ConfigError(f"doc_stride ({self.doc_stride}) must be >= 0 and below max_seq_length - "
                              f"max_query_length - 3 = {capacity} (the context room of a window)")
        if self.train_articles is not None:
            _positive("train_articles", self.train_articles)
            if not self.train_file:
                raise ConfigError("--train_articles N splits --train_file by article; give --train_file")
            if self.validation_file:
                raise ConfigError("--train_articles evaluates on the remaining articles of --train_file; "
                                  "drop --validation_file (or drop --train_articles)")
        if self.uses_local_files():
            if self.do_train and not self.train_file:
                raise ConfigError("--validation_file alone evaluates only: add --train_file, or --do_train false")
            if not (self.validation_file or self.train_articles):
                raise ConfigError("--train_file needs --validation_file or --train_articles N (what to evaluate on)")
        elif not self.dataset_name:
            raise ConfigError("give --train_file/--validation_file (SQuAD JSON) or --dataset_name (squad, squad_v2)")
        if self.dataset_name == "squad_v2" and not (self.train_file or self.validation_file) \
                and not self.version_2_with_negative:
            raise ConfigError("squad_v2 has unanswerable questions: add --version_2_with_negative")

    def unused_options(self) -> list[str]:
        return ["dataset_name", "dataset_config_name"] if self.uses_local_files() else []

    def uses_local_files(self) -> bool:
        return bool(self.train_file or self.validation_file)

    def version(self) -> str:
        return "2.0" if self.version_2_with_negative else "1.1"


@dataclass
class PretrainingModelArguments:
    """BertConfig sizes; the defaults are bert-base-uncased's (vocab_size comes from the tokenizer)."""

    hidden_size: int = _help("Hidden size.", default=768)
    num_hidden_layers: int = _help("Transformer layers.", default=12)
    num_attention_heads: int = _help("Attention heads.", default=12)
    intermediate_size: int = _help("Feed-forward size.", default=3072)
    max_position_embeddings: int = _help("Position embeddings (>= max_seq_length).", default=512)
    hidden_dropout_prob: float = _help("Dropout on hidden states.", default=0.1)
    attention_probs_dropout_prob: float = _help("Dropout on attention probabilities.", default=0.1)
    initializer_range: float = _help("Std of the truncated-normal initialisation.", default=0.02)
    attn_implementation: str = _help("'sdpa' (fused scaled-dot-product attention) or 'eager'.", default="sdpa")
    sparse_mlm_head: bool = _help("Run the MLM prediction head only at masked positions (same loss, less compute).",
                                  default=True)
    torch_compile: bool = _help("torch.compile the whole objective (encoder, heads and losses) as one graph.",
                                default=False)
    torch_compile_mode: str = _help(
        "torch.compile mode with --torch_compile: 'default', 'reduce-overhead' (CUDA graphs, one per batch shape) "
        "or 'max-autotune-no-cudagraphs' (longer compilation, autotuned kernels).", default="default")
    fused_encoder: bool = _help(
        "Run the encoder as train/common/fused_encoder.py writes it (one QKV GEMM, SDPA, bias+dropout+residual+"
        "LayerNorm for the compiler to fuse, activations in the autocast dtype) over BertForPreTraining's own "
        "weights: same parameters and checkpoints. Meant for GPUs with --torch_compile; off until measured faster.",
        default=False)

    def __post_init__(self):
        _choice("attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        _choice("torch_compile_mode", self.torch_compile_mode, COMPILE_MODES)
        if self.torch_compile_mode != "default" and not self.torch_compile:
            raise ConfigError(f"--torch_compile_mode {self.torch_compile_mode} needs --torch_compile")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                              f"({self.num_attention_heads})")


@dataclass
class PretrainingDataArguments:
    dataset_name: str | None = _help("Hub dataset (used when no --train_file is given).", default="wikitext")
    dataset_config_name: str | None = _help("Hub dataset configuration.", default="wikitext-2-raw-v1")
    train_file: str | None = _help("Local training text (WikiText raw, or plain text with blank lines "
                                      "between documents).", default=None)
    validation_file: str | None = _help("Local validation text.", default=None)
    test_file: str | None = _help("Local test text.", default=None)
    validation_split_percentage: float = _help("Without a validation split, hold out this percentage of the "
                                               "training documents (whole documents).", default=5.0)
    document_boundary: str = _help("'auto', 'wikitext' (' = Title = ' headings start articles) or 'blank_line'.",
                                   default="auto")
    max_seq_length: int = _help("Tokens per instance, [CLS] and [SEP]s included.", default=128)
    short_seq_prob: float = _help("Probability of a shorter target length (as in BERT's data creation).",
                                  default=0.1)
    nsp: bool = _help("Next sentence prediction; --no_nsp trains MLM only.", default=True)
    dupe_factor: int = _help("Cut the training text into instances this many times, each copy with its own "
                             "segment lengths and NSP pairs (BERT's dupe_factor): one epoch passes over all copies. "
                             "Masks are fresh every epoch regardless; more copies keep a small corpus's NSP pairs "
                             "from being memorised.", default=1)
    mlm_probability: float = _help("Fraction of tokens chosen for prediction.", default=0.15)
    whole_word_masking: bool = _help("Mask whole words (all WordPieces of a word together).", default=False)
    pack_sequences: bool = _help("Pack whole instances into rows of --max_seq_length (attention stays within an "
                                 "instance: a block-diagonal mask, or flash varlen attention with --fused_encoder on "
                                 "a GPU in bf16/fp16): fewer padded tokens on corpora of short documents.",
                                 default=False)
    tokenizer_name: str = _help("Tokenizer: a hub id or a local folder.", default="bert-base-uncased")
    train_tokenizer: int | None = _help("Train an uncased WordPiece vocabulary of this size on the training "
                                           "split instead of loading --tokenizer_name.", default=None)
    preprocessing_num_workers: int | None = _help(
        "Processes for building instances (datasets.map); none by default (worth it with many cores).", default=None)
    overwrite_cache: bool = _help("Rebuild the cached preprocessing.", default=False)
    max_train_samples: int | None = _help("Use only the first N training instances.", default=None)
    max_eval_samples: int | None = _help("Use only the first N validation/test instances.", default=None)
    eval_mask_seed: int = _help("Seed of the FIXED evaluation masks (same model -> same perplexity).", default=0)

    def __post_init__(self):
        _choice("document_boundary", self.document_boundary, ("auto", "wikitext", "blank_line"))
        if self.train_file is None and self.dataset_name is None:
            raise ConfigError("give --train_file (local text) or --dataset_name (hub dataset)")
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length must be at least 8, got {self.max_seq_length}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.dupe_factor < 1:
            raise ConfigError(f"dupe_factor must be at least 1 (one copy of the text), got {self.dupe_factor}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ConfigError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 <= self.validation_split_percentage < 100.0:
            raise ConfigError("validation_split_percentage must be in [0, 100)")
        if self.train_tokenizer is not None and self.train_tokenizer < 200:
            raise ConfigError(f"train_tokenizer (vocabulary size) must be at least 200, got {self.train_tokenizer}")

    def uses_local_files(self) -> bool:
        return self.train_file is not None

    def unused_options(self) -> list[str]:
        unused = ["dataset_name", "dataset_config_name"] if self.uses_local_files() else []
        return unused + (["tokenizer_name"] if self.train_tokenizer is not None else [])


def known_dataclasses_for_preset(preset_path) -> tuple[type, ...]:
    """The dataclasses a preset is meant for, from its file name (used to validate presets)."""
    name = Path(preset_path).stem
    if name.startswith(("sst", "classification")):
        from .task_config import ClassificationDataArguments, FinetuneModelArguments
        return (FinetuneModelArguments, ClassificationDataArguments, OptimizationArguments, RunArguments)
    if name.startswith(("squad", "qa")):
        from .task_config import FinetuneModelArguments, QADataArguments
        return (FinetuneModelArguments, QADataArguments, OptimizationArguments, RunArguments)
    return (PretrainingModelArguments, PretrainingDataArguments, OptimizationArguments, RunArguments)


# Help text for the scripts' --doc_stride / --max_query_length flags, so that the meaning is written once.
