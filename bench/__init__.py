"""Benchmarks: our training/eval/preprocessing code against what users would otherwise run -> JSON."""
