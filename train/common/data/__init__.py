"""Data: reading corpora and task files, building instances and features, batching them."""
