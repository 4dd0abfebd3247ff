"""Hugging Face ``evaluate`` modules over the plain metric functions of ``metrics`` (see README.md here).

Each ``<name>/<name>.py`` is a script for ``evaluate.load("analysis/evaluate_modules/<name>")``; the shared
input conversion lives in ``inputs`` so that the scripts stay thin.
"""
