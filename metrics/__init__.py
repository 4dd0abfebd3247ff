"""Plain metric functions shared by the training scripts (train/) and the analysis tools (analysis/).

``squad`` (official SQuAD v1.1/v2.0 EM and F1), ``classification`` (accuracy, precision/recall/F1, confusion
matrix), ``text`` (auxiliary BLEU/ROUGE/METEOR) and ``params`` (parameter counts and diffs) compute metrics from
values. This package imports neither ``train`` nor ``analysis`` (tests/test_layout.py checks), so both can import
it; the command lines that read files and print tables are in analysis/.
"""
